"""Persister.get_stats beyond TinyBase's loads/saves: failures of the hooks and the age of the
oldest change not yet saved, on custom persisters whose storage is a dict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from localsync import create_mergeable_store
from localsync.sync.persister import create_custom_persister
from tests.helpers import eventually, run


class Storage:
    """A dict-backed storage whose writes can be made to fail or to wait."""

    def __init__(self) -> None:
        self.content: Any = None
        self.fail = False
        self.hold: asyncio.Event | None = None
        self.writes = 0

    async def get(self) -> Any:
        if self.fail:
            raise OSError("storage unavailable")
        return self.content

    async def set(self, get_content: Callable[[], Any], _changes: Any = None) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise OSError("disk full")
        self.content = get_content()
        self.writes += 1

    def set_sync(self, get_content: Callable[[], Any], _changes: Any = None) -> None:
        if self.fail:
            raise OSError("disk full")
        self.content = get_content()
        self.writes += 1


def test_queued_saves_lag_and_failures() -> None:
    async def scenario() -> None:
        storage = Storage()
        store = create_mergeable_store()
        errors: list[BaseException] = []
        p = create_custom_persister(
            store, storage.get, storage.set, lambda _l: None, lambda _h: None, errors.append
        )
        await p.start_auto_save()
        assert p.get_stats()["unsaved_seconds"] == 0.0
        # a write waits in the storage: the change is unsaved and its age grows
        storage.hold = asyncio.Event()
        store.set_cell("t", "r", "c", 1)
        await asyncio.sleep(0.05)
        first = p.get_stats()["unsaved_seconds"]
        assert first > 0
        store.set_cell("t", "r", "c", 2)  # (queued behind: the oldest change still counts)
        await asyncio.sleep(0.05)
        assert p.get_stats()["unsaved_seconds"] > first
        storage.hold.set()
        storage.hold = None
        await eventually(lambda: p.get_stats()["unsaved_seconds"] == 0.0)
        assert storage.content == store.get_encoded_mergeable_content()
        assert p.get_stats()["save_failures"] == 0
        # a failing write is counted and leaves the change unsaved...
        storage.fail = True
        store.set_cell("t", "r", "c", 3)
        await eventually(lambda: p.get_stats()["save_failures"] == 1)
        await asyncio.sleep(0.02)
        assert p.get_stats()["unsaved_seconds"] > 0
        assert any("disk full" in str(e) for e in errors)
        # ...until a later save succeeds
        storage.fail = False
        store.set_cell("t", "r", "c", 4)
        await eventually(lambda: p.get_stats()["unsaved_seconds"] == 0.0)
        assert p.get_stats()["save_failures"] == 1
        await p.destroy()

    run(scenario())


def test_inline_saves_failures_and_load_failures() -> None:
    async def scenario() -> None:
        storage = Storage()
        store = create_mergeable_store()
        p = create_custom_persister(
            store, storage.get, storage.set_sync, lambda _l: None, lambda _h: None, lambda _e: None
        )
        await p.start_auto_save()
        store.set_cell("t", "r", "c", 1)  # (a plain hook: saved inside the transaction)
        assert p.get_stats()["unsaved_seconds"] == 0.0
        storage.fail = True
        store.set_cell("t", "r", "c", 2)
        stats = p.get_stats()
        assert stats["save_failures"] == 1
        await asyncio.sleep(0.02)
        assert p.get_stats()["unsaved_seconds"] > 0
        storage.fail = False
        store.set_cell("t", "r", "c", 3)
        assert p.get_stats()["unsaved_seconds"] == 0.0
        # loads: storage errors and content that is not a store's both count
        storage.fail = True
        await p.load()
        assert p.get_stats()["load_failures"] == 1
        storage.fail = False
        storage.content = {"not": "content"}
        await p.load()
        stats = p.get_stats()
        assert (stats["loads"], stats["load_failures"]) == (2, 2)
        await p.destroy()

    run(scenario())
