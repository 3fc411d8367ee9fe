"""Exceptions the event loop throws into the Persister's coroutines (compiled or not).

A failed thread or a cancelled task reaches a coroutine through the event loop (the error is
thrown in at its ``await``), not as a plain raise: what the persister catches there must stay
caught on the way out of its ``try``/``finally`` blocks (see ``localsync.sync.awaiting``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.awaiting import await_then
from localsync.sync.persister import Status, create_custom_persister

pytestmark = pytest.mark.timeout(30)


def _fail_on_disk() -> None:
    raise OSError("disk full")


def test_a_save_hook_failing_in_a_thread_is_reported_not_raised() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        store = create_mergeable_store()

        async def set_persisted(get_content: Any, changes: Any = None) -> None:
            await asyncio.to_thread(_fail_on_disk)

        persister = create_custom_persister(
            store,
            lambda: None,
            set_persisted,
            lambda listener: None,
            lambda handle: None,
            on_ignored_error=errors.append,
        )
        store.set_value("v", 1)
        await persister.save()  # does not raise: the error goes to on_ignored_error
        await persister.start_auto_save()  # (its first save fails the same way)
        assert [str(error) for error in errors] == ["disk full", "disk full"]
        assert persister.get_status() == Status.IDLE
        assert persister.get_stats()["save_failures"] == 2
        assert persister.is_auto_saving()
        await persister.destroy()
        assert not persister.is_auto_saving()

    asyncio.run(main())


def test_destroy_awaits_the_listener_task_it_cancels() -> None:
    async def main() -> None:
        store = create_mergeable_store()
        closed: list[str] = []

        async def watch() -> None:
            await asyncio.Event().wait()  # a storage watcher: runs until cancelled

        async def add_listener(listener: Any) -> asyncio.Task[None]:
            await asyncio.sleep(0)
            return asyncio.get_running_loop().create_task(watch())

        async def close(task: asyncio.Task[None]) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the event loop throws the task's CancelledError in here
            await asyncio.sleep(0)  # (closing a connection after it)
            closed.append("closed")

        def del_listener(task: asyncio.Task[None]) -> Any:
            task.cancel()
            return close(task)

        persister = create_custom_persister(
            store, lambda: None, lambda get_content, changes=None: None, add_listener, del_listener
        )
        await persister.start_auto_persisting()
        assert persister.is_auto_loading()
        await persister.destroy()  # does not raise CancelledError
        assert closed == ["closed"]
        assert not persister.is_auto_loading() and not persister.is_auto_saving()

    asyncio.run(main())


def test_await_then_runs_the_cleanup_once_either_way() -> None:
    async def main() -> None:
        cleanups: list[str] = []

        async def cleanup() -> None:
            await asyncio.sleep(0)
            cleanups.append("done")

        async def value() -> int:
            await asyncio.sleep(0)
            return 7

        async def fail() -> None:
            await asyncio.to_thread(_fail_on_disk)

        assert await await_then(value(), cleanup) == 7
        with pytest.raises(OSError, match="disk full"):
            await await_then(fail(), cleanup)
        assert cleanups == ["done", "done"]

    asyncio.run(main())
