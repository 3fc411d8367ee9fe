"""Empty rows and tables (no children, no HLC: hash 0) merged again must not split hashes.

Issue 16 item 4. TinyBase folds a row into its table's hash with ``H(rowId:oldHash)``
removed and ``H(rowId:newHash)`` added, but skips the removal when the old hash is 0 (taking
0 to mean "a stamp this merge just created"). A row stamp that exists with no cells and no
HLC has hash 0 too, so merging it again (or writing into it) adds a second ``H(rowId:0)``
instead of replacing the first: the table hash toggles with every receipt, and replicas that
received the same data an odd and an even number of times disagree for good (TinyBase 10.0.1
does the same; a fresh replica given its content disagrees with it). Over our anti-entropy
that means pulls every period, forever. The same holds one level up for an empty table.

We skip the removal only for a stamp that is really absent from its parent's hash (created
by this merge, or written locally and not yet settled), so a table's hash is again a
function of its rows' stamps.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.core.hlc import encode_hlc_parts, get_client_id_from_unique_id
from localsync.sync.engine import CELL_DIFF, CONTENT_DIFF, ROW_DIFF, TABLE_DIFF, VALUE_DIFF
from localsync.sync.local import create_local_synchronizer
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)

GHOST = [[{"t": [{"ghost": [{}]}]}], [{}], 1]
EMPTY_TABLE = [[{"t": [{}]}], [{}], 1]
T0 = 1_700_000_000_000
PULLS = {CONTENT_DIFF, TABLE_DIFF, ROW_DIFF, CELL_DIFF, VALUE_DIFF}
PEER_HLC = encode_hlc_parts(T0, 0, get_client_id_from_unique_id("peer"))


def _apply(store: Any, data: Any) -> Any:
    return store.apply_mergeable_changes(data)


def replica_of(store: Any, apply: Callable[[Any, Any], Any] = _apply) -> Any:
    """A fresh store that received ``store``'s content as changes (hashes recomputed)."""
    fresh = create_mergeable_store("fresh", lambda: T0 + 10)
    apply(fresh, store.get_mergeable_content())
    return fresh


def test_three_local_synchronizers_agree_after_an_empty_row_applied_twice() -> None:
    """The issue's steps: 3 stores on local synchronizers (with anti-entropy), the empty row
    applied twice on store 0. All end with the same hashes and the same mergeable content,
    and the idle traffic dies down to heartbeats."""

    async def main() -> None:
        stores = [create_mergeable_store() for _ in range(3)]
        pulls = [0]

        def count(_to: Any, _request_id: Any, message: int, _body: Any) -> None:
            if message in PULLS:
                pulls[0] += 1

        syncs = [
            create_local_synchronizer(store, on_send=count, anti_entropy_seconds=0.05)
            for store in stores
        ]
        try:
            for sync in syncs:
                await sync.start_sync()
            await asyncio.sleep(0.1)
            stores[0].apply_mergeable_changes(copy.deepcopy(GHOST))
            stores[0].apply_mergeable_changes(copy.deepcopy(GHOST))

            def agreed() -> bool:
                contents = [store.get_mergeable_content() for store in stores]
                return contents[1] == contents[0] and contents[2] == contents[0]

            await eventually(agreed, timeout=10)
            hashes = {tuple(store.get_mergeable_content_hashes()) for store in stores}
            assert len(hashes) == 1
            assert len({store.get_mergeable_table_hashes()["t"] for store in stores}) == 1
            assert stores[0].get_mergeable_content()[0][0]["t"][0] == {"ghost": [{}, "", 0]}
            # settled: the idle traffic is heartbeats only, no more pulls (an endless split
            # pulls from every peer every period: 135-235 messages per 10 s at 1 s periods)
            await asyncio.sleep(0.2)
            pulls[0] = 0
            await asyncio.sleep(1.0)
            assert pulls[0] == 0
            assert all(tuple(store.get_mergeable_content_hashes()) in hashes for store in stores)
        finally:
            for sync in syncs:
                await sync.destroy()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (GHOST, GHOST),
        (EMPTY_TABLE, EMPTY_TABLE),
        (GHOST, EMPTY_TABLE),
        (EMPTY_TABLE, GHOST),
        (GHOST, [[{"t": [{"ghost": [{}, ""]}, ""]}, ""], [{}, ""], 1]),
        (GHOST, [[{"t": [{"ghost": [{}]}], "u": [{}]}], [{}], 1]),
    ],
    ids=["row-row", "table-table", "row-table", "table-row", "row-empty-hlcs", "row-table2"],
)
def test_merging_an_empty_stamp_again_changes_nothing(first: Any, again: Any) -> None:
    store = create_mergeable_store("s", lambda: T0)
    store.apply_mergeable_changes(copy.deepcopy(first))
    content = store.get_mergeable_content()
    store.apply_mergeable_changes(copy.deepcopy(first))
    assert store.get_mergeable_content() == content
    store.apply_mergeable_changes(copy.deepcopy(again))
    after = store.get_mergeable_content()
    assert after == replica_of(store).get_mergeable_content()
    assert store.ignored_count == 0


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("shape", [GHOST, EMPTY_TABLE], ids=["row", "table"])
@pytest.mark.parametrize("then", ["local", "merge", "merge-lazy-twice", "transaction"])
def test_writing_into_an_empty_stamp_keeps_hashes_a_function_of_content(
    shape: Any, then: str, reference: bool
) -> None:
    """A received empty row/table, then cells written into it (locally or by a peer): a
    replica that only ever saw the result has the same hashes (TinyBase keeps a stale
    ``H(id:0)`` term here)."""
    from tests.core import oracle

    apply = oracle.apply if reference else _apply  # reference: receive through the oracle
    store = create_mergeable_store("s", lambda: T0 + 5)
    apply(store, copy.deepcopy(shape))
    cells = [[{"t": [{"ghost": [{"c": [1, PEER_HLC]}]}]}], [{}], 1]
    if then == "local":
        store.set_cell("t", "ghost", "c", 1)
        store.set_cell("t", "other", "c", 2)
    elif then == "merge":
        apply(store, cells)
    elif then == "merge-lazy-twice":
        with store.transaction():
            apply(store, copy.deepcopy(cells))
            apply(store, copy.deepcopy(shape))
            store.set_cell("t", "ghost", "d", 2)
    else:
        with store.transaction():
            store.set_cell("t", "ghost", "c", 1)
            apply(store, copy.deepcopy(shape))
    assert store.get_mergeable_content() == replica_of(store, apply).get_mergeable_content()
    # and a rolled-back write into the empty stamp restores the hashes exactly
    before = store.get_mergeable_content()
    with pytest.raises(ZeroDivisionError), store.transaction():
        apply(store, copy.deepcopy(EMPTY_TABLE))
        store.set_cell("t", "ghost2", "c", 3)
        1 / 0  # noqa: B018
    assert store.get_mergeable_content() == before
