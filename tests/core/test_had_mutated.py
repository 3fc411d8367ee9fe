"""TinyBase's ``hadMutated``: what mutator listeners derive from loaded data is saved.

A mutator listener may change data while a load or a peer's changes are being applied. Those
writes are stamped as the store's own, but the transaction is a load, which persisters never
save back; TinyBase therefore asks the store ``hadMutated()`` after each load and saves when it
says yes. Without it a synchronizer keeps a derived cell to itself (its peers only learn of it
at the next local write or anti-entropy round) and a file keeps the underived content.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from localsync import create_mergeable_store
from localsync.persisters.file import create_file_persister
from localsync.sync.local import create_local_synchronizer
from tests.helpers import derive_double, eventually


def _peer_changes(cells: dict[str, Any]) -> list[Any]:
    source = create_mergeable_store()
    for cell_id, value in cells.items():
        source.set_cell("t", "r", cell_id, value)
    return source.get_mergeable_content()


def test_the_store_reports_mutator_writes_once() -> None:
    store = create_mergeable_store()
    derive_double(store)
    assert store.had_mutated() is False
    store.set_cell("t", "r", "other", 1)  # no mutator involved
    assert store.had_mutated() is False

    store.apply_mergeable_changes(_peer_changes({"c": 21}))
    assert store.get_cell("t", "r", "double") == 42
    # the derived cell carries this store's own stamp, like any local write
    stamp = store.get_mergeable_content()[0][0]["t"][0]["r"][0]["double"]
    assert stamp[1].endswith(store.get_client_id())
    assert store.had_mutated() is True
    assert store.had_mutated() is False  # asking resets it, as in TinyBase

    # applying what we already hold changes nothing, so no mutator write happens
    store.apply_mergeable_changes(_peer_changes({"c": 21}))
    assert store.had_mutated() is False


def test_a_rolled_back_transaction_forgets_its_mutations() -> None:
    store = create_mergeable_store()
    derive_double(store)
    store.transaction(lambda: store.set_cell("t", "r", "c", 1), lambda *_: True)
    assert store.get_cell("t", "r", "double") is None
    assert store.had_mutated() is False
    store.transaction(lambda: store.set_cell("t", "r", "c", 2))
    assert store.had_mutated() is True


def test_a_synchronizer_sends_what_a_mutator_derived_from_a_peers_change() -> None:
    async def main() -> None:
        plain, deriving = create_mergeable_store(), create_mergeable_store()
        derive_double(deriving)
        # no anti-entropy: only the save after the mutation can bring the derived cell back
        sa = await create_local_synchronizer(plain).start_sync()
        sb = await create_local_synchronizer(deriving).start_sync()
        try:
            for sync in (sa, sb):  # the start-up exchange is over: nothing else will pull
                assert await sync.wait_until_idle(timeout=10)
            await asyncio.sleep(0.05)
            plain.set_cell("t", "r", "c", 5)
            await eventually(lambda: plain.get_cell("t", "r", "double") == 10, timeout=2)
            assert deriving.get_cell("t", "r", "double") == 10
            assert plain.get_cell("t", "r", "double") == 10
            assert plain.get_mergeable_content_hashes() == deriving.get_mergeable_content_hashes()
        finally:
            await sa.destroy()
            await sb.destroy()

    asyncio.run(main())


def test_a_file_persister_saves_what_a_mutator_derived_during_a_load(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "store.json"
        store = create_mergeable_store()
        derive_double(store)
        persister = create_file_persister(store, path)
        await persister.start_auto_save()  # (saves the empty store first)
        try:
            # another process writes the file meanwhile
            writer = create_mergeable_store()
            writer.set_cell("t", "r", "c", 4)
            await create_file_persister(writer, path).save()
            await persister.load()  # the mutator derives "double" while the file loads
            assert store.get_cell("t", "r", "double") == 8
            saved = json.loads(path.read_text())
            assert saved[0][0]["t"][0]["r"][0]["double"][0] == 8
            reloaded = create_mergeable_store()
            await create_file_persister(reloaded, path).load()
            assert reloaded.get_cell("t", "r", "double") == 8
            assert reloaded.get_mergeable_content() == store.get_mergeable_content()
        finally:
            await persister.destroy()

    asyncio.run(main())
