"""Bounded fuzzing of the store's receive path and of the sync engine's ``receive``.

Hypothesis generates mergeable changes and content (well-formed, malformed, and real ones
with random mutations: a node replaced, an element dropped or added, an HLC or a hash
changed) and feeds them to ``apply_mergeable_changes``, ``set_mergeable_content``, ``merge``
and to ``SyncEngine.receive`` (as ContentDiffs, ContentHashes, requests and responses to the
engine's own pending requests). After every input:

* nothing raises (peer data is never API misuse: invalid sets are ignored, as in TinyBase;
  the engine reports what it drops as ``tinybase:`` errors and raises nothing);
* an ignored set (``ignored_count`` went up) left the store exactly as it was;
* the store is not corrupted: a fresh store given its ``get_mergeable_content()`` has the
  same content, hashes and data; and, unless the store trusted hashes from a content set,
  every row, table, tables and values hash is the XOR of one term per child stamp, as a
  replica that received each stamp once computes it (issue 16 item 4: re-merged empty rows
  and tables added a second term).

Each test runs Hypothesis in rounds until its share of the time budget is spent:
``LOCALSYNC_FUZZ_SECONDS`` (default 24, split over the tests) runs it longer.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync import UNDEFINED, create_mergeable_store
from localsync.core.hash import get_hash, get_value_in_values_hash
from localsync.core.hlc import encode_hlc_parts, get_client_id_from_unique_id
from localsync.sync.engine import (
    CELL_DIFF,
    CONTENT_DIFF,
    CONTENT_HASHES,
    RESPONSE,
    ROW_DIFF,
    TABLE_DIFF,
    VALUE_DIFF,
    PullFinished,
    SyncEngine,
)
from localsync.sync.persister import TinyBaseError

BUDGET = float(os.environ.get("LOCALSYNC_FUZZ_SECONDS", "24"))
TESTS = 3
pytestmark = pytest.mark.timeout(max(120, int(BUDGET * 3)))

T0 = 1_700_000_000_000
FAR = T0 + 10**9
PEER = get_client_id_from_unique_id("peer")
SETTINGS = settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def run_for(share: float, test: Callable[[], None]) -> None:
    """Run a Hypothesis test in rounds until ``share`` of the budget is spent (at least one)."""
    deadline = time.monotonic() + BUDGET * share
    test()
    while time.monotonic() < deadline:
        test()


# ------------------------------------------------------------------------ strategies

ids = st.sampled_from(["t", "u", "ghost", "0", "1", "", "c", "d", "v", "__proto__", "é"])
good_hlcs = st.builds(
    lambda ms, counter, client: encode_hlc_parts(T0 + ms, counter, client),
    st.integers(-5, 3),
    st.integers(0, 3),
    st.sampled_from([PEER, get_client_id_from_unique_id("other")]),
)
hlcs = st.one_of(
    st.just(""),
    good_hlcs,
    good_hlcs,
    st.just(encode_hlc_parts(T0 + 10**7, 0, PEER)),  # far in the future: the set is ignored
    st.text(max_size=17),
    st.none(),
    st.integers(),
)
hashes = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
)
json_leaves = st.one_of(
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)
things = st.one_of(
    json_leaves,
    st.just(UNDEFINED),
    st.sampled_from(["\ufffd{}", "\ufffd[1]", "\ufffdnot json", "\ufffc", "\ufffd"]),
    st.recursive(
        json_leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=5,
    ),
)


def stamps(child: st.SearchStrategy[Any], with_hashes: bool) -> st.SearchStrategy[Any]:
    """A stamp around ``child``: mostly well-formed, sometimes not."""
    if with_hashes:
        good = st.tuples(child, hlcs, hashes).map(list)
    else:
        good = st.one_of(
            st.tuples(child).map(list),
            st.tuples(child, hlcs).map(list),
            st.tuples(child, hlcs, hashes).map(list),
        )
    return st.one_of(
        good,
        good,
        good,
        st.tuples(child, hlcs, hashes, hashes).map(list),
        st.tuples(child, hlcs).map(tuple),
        st.just([]),
        child,
    )


def mergeable(with_hashes: bool) -> st.SearchStrategy[Any]:
    cells = st.dictionaries(ids, stamps(things, with_hashes), max_size=3)
    rows = st.dictionaries(ids, stamps(cells, with_hashes), max_size=3)
    tables = st.dictionaries(ids, stamps(rows, with_hashes), max_size=2)
    values = st.dictionaries(ids, stamps(things, with_hashes), max_size=3)
    parts = st.tuples(stamps(tables, with_hashes), stamps(values, with_hashes))
    if with_hashes:
        return st.one_of(parts.map(list), parts.map(lambda p: [*p, 1]), st.just([]))
    return st.one_of(
        parts.map(lambda p: [*p, 1]),
        parts.map(lambda p: [*p, 1]),
        parts.map(list),
        parts.map(lambda p: [*p, 2]),
        st.just([[{}], [{}], 1]),
        things,
    )


def mutate(draw: Callable[..., Any], thing: Any, depth: int = 0) -> Any:
    """``thing`` (real changes or content) with one random edit somewhere inside."""
    if isinstance(thing, (list, dict)) and thing and depth < 8 and draw(st.integers(0, 4)):
        keys = list(range(len(thing))) if isinstance(thing, list) else list(thing)
        key = draw(st.sampled_from(keys))
        thing[key] = mutate(draw, thing[key], depth + 1)
        return thing
    edit = draw(st.integers(0, 5))
    if edit == 0:
        return draw(st.one_of(things, hlcs, hashes))
    if edit == 1 and isinstance(thing, list) and thing:
        del thing[draw(st.integers(0, len(thing) - 1))]
        return thing
    if edit == 2 and isinstance(thing, list):
        thing.append(draw(st.one_of(hashes, hlcs)))
        return thing
    if edit == 3 and isinstance(thing, dict):
        thing[draw(ids)] = draw(stamps(things, False))
        return thing
    if edit == 4:
        return draw(hlcs)
    return draw(hashes)


# ------------------------------------------------------------------------ invariants


def _things_hash(things: dict[str, Any], hlc: str) -> int:
    """A row's (or the values') hash from its children's stamps: what TinyBase's folds add
    up to (each child ``H(id:0) ^ H(id:hash)``, the legacy first term included)."""
    result = get_hash(hlc) if hlc else 0
    for thing_id, stamp in things.items():
        result ^= get_value_in_values_hash(thing_id, 0)
        result ^= get_value_in_values_hash(thing_id, stamp[2])
    return result


def content_hashes(content: Any) -> list[int]:
    """The tables and values hashes recomputed from the cell and value stamps, checking each
    row's and table's hash on the way: a parent's hash holds one ``H(id:hash)`` term per child
    stamp. (A cell hash is taken as stored: TinyBase hashes a locally written object cell
    in its stored form and a received one decoded.)"""
    tables, tables_hlc, _ = content[0]
    tables_hash = get_hash(tables_hlc) if tables_hlc else 0
    for table_id, (rows, table_hlc, table_hash) in tables.items():
        expected_table = get_hash(table_hlc) if table_hlc else 0
        for row_id, (cells, row_hlc, row_hash) in rows.items():
            assert row_hash == _things_hash(cells, row_hlc), (table_id, row_id)
            expected_table ^= get_value_in_values_hash(row_id, row_hash)
        assert table_hash == expected_table, table_id
        tables_hash ^= get_value_in_values_hash(table_id, table_hash)
    values, values_hlc, _ = content[1]
    return [tables_hash, _things_hash(values, values_hlc)]


class Subject:
    """A store under test, with what it has trusted."""

    def __init__(self, unique_id: str = "s") -> None:
        self.store = create_mergeable_store(unique_id, lambda: T0)
        self.trusted = False

    def check(self) -> None:
        store = self.store
        content = store.get_mergeable_content()
        assert store.get_mergeable_content_hashes() == [content[0][2], content[1][2]]
        assert store.get_mergeable_table_hashes() == {
            table_id: stamp[2] for table_id, stamp in content[0][0].items()
        }
        copied = create_mergeable_store("copied", lambda: FAR)
        copied.set_mergeable_content(copy.deepcopy(content))
        assert copied.ignored_count == 0
        assert copied.get_mergeable_content() == content
        assert copied.get_tables() == store.get_tables()
        assert copied.get_values() == store.get_values()
        if not self.trusted:
            assert content_hashes(content) == [content[0][2], content[1][2]]

    def feed(self, action: str, data: Any, other: Subject | None = None) -> None:
        store = self.store
        before = store.get_mergeable_content()
        ignored = store.ignored_count
        if action == "changes":
            store.apply_mergeable_changes(data)
        elif action == "content":
            store.set_mergeable_content(data)
        else:
            assert other is not None
            store.merge(other.store)
            other.check()
        if store.ignored_count != ignored:
            assert store.ignored_count == ignored + 1
            assert store.get_mergeable_content() == before
        elif action == "content":
            self.trusted = True  # (its hashes are whatever the content said)
        self.check()


# sets of empty rows and tables, some of which ``seeded`` stores already hold
EMPTY_STAMPS: list[Any] = [
    [[{"t": [{"ghost": [{}], "r": [{}]}], "e": [{}]}], [{}], 1],
    [[{"t": [{"r": [{}, ""]}, ""]}, ""], [{}, ""], 1],
    [[{"e": [{}]}], [{}], 1],
    [[{"n": [{"new": [{}]}]}], [{}], 1],
]


def seeded(subject: Subject) -> None:
    store = subject.store
    store.set_cell("t", "ghost", "c", 1)
    store.set_row("u", "0", {"c": "x", "d": {"o": [1]}})
    store.set_value("v", True)
    store.del_cell("u", "0", "c")
    store.apply_mergeable_changes([[{"t": [{"ghost": [{}], "r": [{}]}], "e": [{}]}], [{}], 1])


# ------------------------------------------------------------------------ store receive


@SETTINGS
@given(st.data())
def _store_round(data: st.DataObject) -> None:
    subject = Subject()
    if data.draw(st.booleans()):
        seeded(subject)
    peer = Subject("peer")
    seeded(peer)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.integers(0, 6))
        if kind <= 1:
            subject.feed("changes", data.draw(mergeable(False)))
        elif kind == 2:
            subject.feed("content", data.draw(mergeable(True)))
        elif kind == 3:
            changes = peer.store.get_transaction_mergeable_changes()
            real = [*copy.deepcopy(peer.store.get_mergeable_content()), 1]
            subject.feed("changes", mutate(data.draw, data.draw(st.sampled_from([real, changes]))))
        elif kind == 4:
            content = copy.deepcopy(peer.store.get_mergeable_content())
            subject.feed("content", mutate(data.draw, content))
        elif kind == 5:
            subject.feed("merge", None, peer)
        else:
            subject.feed("changes", copy.deepcopy(peer.store.get_mergeable_content()))


def test_store_receive_fuzz() -> None:
    run_for(1 / TESTS, _store_round)


# ------------------------------------------------------------------------ engine receive

messages = st.one_of(
    st.integers(0, 7),
    st.integers(0, 7),
    st.integers(-1, 9),
    st.floats(),
    st.text(max_size=2),
    st.none(),
)
request_ids = st.one_of(st.none(), st.text(max_size=12), st.just("abc.def"), st.integers())


def bodies(message: Any) -> st.SearchStrategy[Any]:
    tables_hashes = st.dictionaries(ids, st.one_of(hashes, st.dictionaries(ids, hashes)))
    if message == CONTENT_DIFF:
        return st.one_of(st.sampled_from(EMPTY_STAMPS), mergeable(False))
    if message == CONTENT_HASHES:
        return st.one_of(st.tuples(hashes, hashes).map(list), things)
    if message == RESPONSE:
        return st.one_of(
            st.tuples(hashes, hashes).map(list),
            st.tuples(mergeable(False), tables_hashes).map(list),
            mergeable(False),
            things,
        )
    if message in (TABLE_DIFF, ROW_DIFF, CELL_DIFF, VALUE_DIFF):
        return st.one_of(tables_hashes, things)
    return st.one_of(st.just(""), things)


class EngineSubject(Subject):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []
        self.now = 100.0
        engine = SyncEngine(
            self.store,
            request_timeout_seconds=1.0,
            clock=lambda: self.now,
            on_ignored_error=self.errors.append,
            anti_entropy_seconds=5.0,
        )
        engine.start()
        self.engine = engine

    def apply_events(self) -> None:
        # what a Synchronizer does with the changes the engine hands back (synchronizer.py)
        for event in self.engine.events_received():
            if not isinstance(event, PullFinished) and event.changes is not None:
                self.store.apply_encoded_mergeable_changes(event.changes)


@SETTINGS
@given(st.data())
def _engine_round(data: st.DataObject) -> None:
    subject = EngineSubject()
    if data.draw(st.booleans()):
        seeded(subject)
    engine = subject.engine
    requests: list[str] = []
    for _ in range(data.draw(st.integers(1, 8))):
        message = data.draw(st.one_of(st.just(CONTENT_DIFF), messages))
        request_id = data.draw(request_ids)
        if message == RESPONSE and requests and data.draw(st.booleans()):
            request_id = data.draw(st.sampled_from(requests))
        body = data.draw(bodies(message))
        before = subject.store.get_mergeable_content()
        ignored = subject.store.ignored_count
        engine.receive(data.draw(st.sampled_from(["A", "B"])), request_id, message, body)
        subject.apply_events()
        if subject.store.ignored_count != ignored:
            assert subject.store.get_mergeable_content() == before
        for out in engine.data_to_send():
            if out.request_id is not None and out.message != RESPONSE:
                requests.append(out.request_id)
        subject.now += data.draw(st.sampled_from([0.0, 0.5, 2.0, 6.0]))
        engine.tick()
        engine.data_to_send()
        for error in subject.errors:
            assert isinstance(error, TinyBaseError), repr(error)
        subject.check()


def test_engine_receive_fuzz() -> None:
    run_for(1 / TESTS, _engine_round)


# ------------------------------------------------------------------------ empty stamps


@SETTINGS
@given(st.data())
def _replicas_round(data: st.DataObject) -> None:
    """Replicas receiving the same sets (empty rows and tables likely, no HLCs above the
    cells) in any order and any number of times agree once each has received each set."""
    # (a cell's value follows from its HLC: equal HLCs never carry different values)
    cells = st.dictionaries(
        st.sampled_from(["c", "d"]),
        good_hlcs.map(lambda hlc: [hash(hlc) % 7, hlc]),
        max_size=1,
    )

    def no_hlc(thing: Any) -> Any:
        return st.sampled_from([[thing], [thing, ""]])

    rows = st.dictionaries(st.sampled_from(["ghost", "r"]), cells.flatmap(no_hlc), max_size=2)
    tables = st.dictionaries(st.sampled_from(["t", "u"]), rows.flatmap(no_hlc), max_size=2)
    sets = data.draw(
        st.lists(tables.flatmap(no_hlc).map(lambda t: [t, [{}], 1]), min_size=1, max_size=4)
    )
    replicas = [Subject(f"r{i}") for i in range(3)]
    for replica in replicas:
        extra = data.draw(st.lists(st.sampled_from(sets), max_size=4))
        for changes in data.draw(st.permutations(sets + extra)):
            replica.feed("changes", copy.deepcopy(changes))
        if replica.store.has_row("t", "ghost") or data.draw(st.booleans()):
            pass
        elif "ghost" in replica.store.get_mergeable_content()[0][0].get("t", [{}])[0]:
            replica.store.set_cell("t", "ghost", "x", 1)  # a local write into an empty row
            replica.store.del_cell("t", "ghost", "x")
    for replica in replicas:
        assert replica.store.ignored_count == 0
    first = replicas[0].store.get_mergeable_content()[0][0]
    for replica in replicas[1:]:
        other = replica.store.get_mergeable_content()[0][0]
        # (the local write leaves replica-specific stamps in t/ghost/x only)
        for content in (first, other):
            row = content.get("t", [{}])[0].get("ghost")
            if row is not None:
                row[0].pop("x", None)
        assert _without_x_hashes(other) == _without_x_hashes(first)


def _without_x_hashes(tables: dict[str, Any]) -> Any:
    """Tables stamps with t/ghost's row hash and its parents' dropped (they cover the x
    cells that local writes left); all the rest must agree exactly."""
    out = copy.deepcopy(tables)
    table = out.get("t")
    if table is not None and "ghost" in table[0]:
        table[0]["ghost"][2] = None
        table[2] = None
    return out


def test_replicas_converge_fuzz() -> None:
    run_for(1 / TESTS, _replicas_round)
