"""Content set into an empty store is installed directly (``MergeableStore._install``).

The install must leave exactly what the merge path (``core.merge.receive``) leaves for the
same content: stamps and hashes at every level, data and its order, cell ids, the clock, the
change records listeners and transaction getters see, and the verdict on invalid content.
The reference store takes the merge path because it has an id listener (which the install
leaves to ``receive``); everything else about the two stores is the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync import create_mergeable_store
from localsync.core.codec import UNDEFINED
from localsync.core.hash import get_value_hash
from localsync.core.hlc import encode_hlc_parts
from tests.helpers import hash_tree

NOW = 1_700_000_000_000

# HLCs of a few clients at a few times (all within the future limit of NOW)
_HLCS = [
    encode_hlc_parts(NOW - ms, counter, client)
    for ms in (0, 7, 900)
    for counter in (0, 3)
    for client in ("AAAAA", "zzzzz")
]
_HLC = st.sampled_from(["", *_HLCS])
_STAMP_HLC = st.sampled_from(_HLCS)
# ids in and out of JavaScript's index order ("10" sorts before "b" but after "2")
_ID = st.sampled_from(["a", "b", "0", "2", "10", "é", "x y"])
_THING = (
    st.text(max_size=3)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | st.booleans()
    | st.none()
    | st.just(UNDEFINED)
)
# trusted hashes: any 32-bit number (the store takes them on trust), sometimes as a float
_HASH = st.integers(0, 2**32 - 1) | st.integers(0, 2**20).map(float)


def _stamp(children: Any) -> Any:
    return st.tuples(children, _HLC, _HASH).map(list)


_CELL = st.tuples(_THING, _STAMP_HLC, _HASH).map(list)
_ROW = _stamp(st.dictionaries(_ID, _CELL, max_size=4))
_TABLE = _stamp(st.dictionaries(_ID, _ROW, max_size=3))
_TABLES = _stamp(st.dictionaries(_ID, _TABLE, max_size=3))
_VALUES = _stamp(st.dictionaries(_ID, _CELL, max_size=3))
CONTENT = st.tuples(_TABLES, _VALUES).map(list)


class Seen:
    """What did-finish listeners of a store saw, and every cell listener call."""

    def __init__(self) -> None:
        self.finished: list[Any] = []
        self.cells: list[Any] = []


def _store(reference: bool, cell_listener: bool = False) -> tuple[Any, Seen]:
    store = create_mergeable_store("s", lambda: NOW)
    seen = Seen()
    if reference:
        store.add_table_ids_listener(lambda *args: None)  # (ids tracked: the merge path)
    if cell_listener:

        def on_cell(_s: Any, t: str, r: str, c: str, new: Any, old: Any, change: Any) -> None:
            seen.cells.append((t, r, c, new, old, change(t, r, c)))

        store.add_cell_listener(None, None, None, on_cell)

    def finished(s: Any) -> None:
        seen.finished.append(
            (
                s.get_transaction_changes(),
                s.get_encoded_transaction_changes(),
                s.get_transaction_mergeable_changes(True),
                list(s.get_transaction_touched()[0].items()),
            )
        )

    store.add_did_finish_transaction_listener(finished)
    return store, seen


def _state(store: Any) -> Any:
    return (
        store.get_mergeable_content(),
        store.get_encoded_mergeable_content(),
        *hash_tree(store),
        store.get_tables(),
        list(store.get_tables()),
        {t: store.get_row_ids(t) for t in store.get_table_ids()},
        {t: store.get_table_cell_ids(t) for t in store.get_table_ids()},
        store.get_values(),
        store.get_json(),
        store.ignored_count,
        store._hlc_functions.get_next_hlc(),
    )


def _both(content: Any, encoded: bool, cell_listener: bool = False) -> tuple[Any, Any]:
    results = []
    for reference in (False, True):
        store, seen = _store(reference, cell_listener)
        setter = store.set_encoded_mergeable_content if encoded else store.set_mergeable_content
        setter(content)
        results.append((_state(store), seen.finished, seen.cells))
    return results[0], results[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONTENT, st.booleans())
def test_install_equals_the_merge_path(content: Any, encoded: bool) -> None:
    installed, merged = _both(content, encoded)
    assert installed == merged


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONTENT)
def test_install_with_cell_listeners_calls_them_as_the_merge_path(content: Any) -> None:
    installed, merged = _both(content, True, cell_listener=True)
    assert installed == merged


def _real_content(rows: int) -> Any:
    """Content of a store written locally: real HLCs and hashes, objects and deletions."""
    source = create_mergeable_store("w", lambda: NOW)
    with source.transaction():
        for i in range(rows):
            source.set_row("t", f"r{i}", {"n": i, "s": f"v{i}", "o": {"k": [i]}, "b": i % 2 == 0})
        for i in range(0, rows, 7):
            source.del_cell("t", f"r{i}", "s")
        source.set_values({"v": 1, "w": "x"})
        source.del_value("w")
    return source.get_encoded_mergeable_content()


@pytest.mark.parametrize("rows", [1, 150, 2000])
def test_real_content_installs_as_it_merges(rows: int) -> None:
    """Object cells make content not plain: the merge path; plain content: the install."""
    content = _real_content(rows)
    assert _both(content, True)[0] == _both(content, True)[1]
    plain = [
        [
            {
                "t": [
                    {
                        r: [{c: s for c, s in cells.items() if c != "o"}, *rest]
                        for r, (cells, *rest) in content[0][0]["t"][0].items()
                    },
                    *content[0][0]["t"][1:],
                ]
            },
            *content[0][1:],
        ],
        content[1],
    ]
    installed, merged = _both(plain, True)
    assert installed == merged


def test_invalid_content_is_ignored_and_counted_as_before() -> None:
    valid = [
        [{"t": [{"r": [{"c": [1, _HLCS[0], get_value_hash(1, _HLCS[0])]}, "", 0]}, "", 0]}, "", 0],
        [{}, "", 0],
    ]
    bad_hlc = [
        [{"t": [{"r": [{"c": [1, "not an hlc at all", 0]}, "", 0]}, "", 0]}, "", 0],
        [{}, "", 0],
    ]
    future = [
        [
            {
                "t": [
                    {"r": [{"c": [1, encode_hlc_parts(NOW + 3_600_000, 0, "AAAAA"), 0]}, "", 0]},
                    "",
                    0,
                ]
            },
            "",
            0,
        ],
        [{}, "", 0],
    ]
    no_hash = [[{"t": [{"r": [{"c": [1, _HLCS[0]]}, "", 0]}, "", 0]}, "", 0], [{}, "", 0]]
    for content in (bad_hlc, future, no_hash):
        installed, merged = _both(content, True)
        assert installed == merged
        store, _ = _store(False)
        store.set_encoded_mergeable_content(content)
        assert store.ignored_count == 1 and store.get_tables() == {}
        assert store.get_mergeable_content_hashes() == [0, 0]
    store, _ = _store(False)
    store.set_encoded_mergeable_content(valid)
    assert store.get_tables() == {"t": {"r": {"c": 1}}} and store.ignored_count == 0


def test_a_failed_install_rolls_back_to_the_empty_store() -> None:
    """A will-finish listener that raises rolls the transaction back (records built then)."""
    content = _real_content(50)
    store = create_mergeable_store("s", lambda: NOW)

    def fail(_store: Any) -> None:
        raise RuntimeError("no")

    store.add_will_finish_transaction_listener(fail)
    with pytest.raises(RuntimeError):
        store.set_encoded_mergeable_content(content)
    assert store.get_tables() == {} and store.get_values() == {}
    assert store.get_mergeable_content() == [[{}, "", 0], [{}, "", 0]]


def test_a_store_that_holds_data_takes_the_merge_path() -> None:
    """Content replaces everything: a store with data is not empty, so nothing is skipped."""
    content = _real_content(20)
    store = create_mergeable_store("s", lambda: NOW)
    store.set_cell("old", "r", "c", 1)
    deleted: list[Any] = []
    store.add_cell_listener(None, None, None, lambda _s, t, *args: deleted.append((t, args[2])))
    store.set_encoded_mergeable_content(content)
    assert "old" not in store.get_tables() and deleted[0] == ("old", UNDEFINED)
    fresh = create_mergeable_store("s", lambda: NOW)
    fresh.set_encoded_mergeable_content(content)
    assert store.get_mergeable_content() == fresh.get_mergeable_content()
    assert store.get_tables() == fresh.get_tables()
