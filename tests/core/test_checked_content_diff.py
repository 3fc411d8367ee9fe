"""A received ContentDiff is checked once for the protocol and, on the way, for the store.

``check_content_diff`` must give exactly TinyBase's message verdict, and merging the
``CheckedChanges`` it returns must leave a store exactly as merging the plain body (which
the store validates again in full) would: same content, hashes, clock and ignored count.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync import create_mergeable_store
from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import JSON_PREFIX, UNDEFINED
from localsync.core.hlc import encode_hlc_parts
from localsync.core.validation import (
    CONTENT_DIFF,
    RESPONSE,
    TABLE_DIFF,
    VALUE_DIFF,
    check_content_diff,
    check_response,
    is_protocol_message_valid,
)
from localsync.sync.engine import PullFinished, SyncEngine
from tests.helpers import engine_events

NOW = 1_700_000_000_000


def hlc_at(ms: int, counter: int = 0) -> str:
    return encode_hlc_parts(ms, counter, "abcde")


hlcs = st.one_of(
    st.integers(-60_000, 60_000).map(lambda d: hlc_at(NOW + d)),  # near now
    st.integers(6 * 60_000, 10**9).map(lambda d: hlc_at(NOW + d)),  # beyond the 5 min limit
    st.just(""),
    st.sampled_from(["short", "abcdefghijklmno!", "ABCDEFGHIJKLMNOPQ", "a" * 16]),
    st.integers(),  # not even a string
)
values = st.one_of(
    st.integers(-(2**60), 2**60),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**1023, 2**1024 - 1, 2**1024, 2**2000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -9.1e15, 2.0**53, 0.5, -0.0]),
    st.text(max_size=5),
    st.sampled_from(
        [
            JSON_PREFIX + '{"a":[1,2]}',
            JSON_PREFIX + "[1]",
            JSON_PREFIX + "not json",
            JSON_PREFIX + "3",
            UNDEFINED,
            "\ufffc",
        ]
    ),
    st.booleans(),
    st.none(),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    st.lists(st.integers(0, 9), max_size=2),
    st.just((1, 2)),
    st.just({1: "non-str key"}),
    st.just({"k": float("nan")}),
)


def stamps(thing: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(thing, hlcs).map(list),
        st.tuples(thing).map(list),
        st.tuples(thing, hlcs, st.integers(0, 2**32)).map(list),  # with a hash
        st.just([]),
    )


ids = st.sampled_from(["t", "r", "c", "d", ""]) | st.integers(0, 3)
leaves = st.dictionaries(ids, stamps(values), max_size=4)
rows = st.dictionaries(ids, stamps(leaves), max_size=3)
tables = st.dictionaries(ids, stamps(rows), max_size=2)
bodies = st.one_of(
    st.tuples(stamps(tables), stamps(leaves), st.just(1)).map(list),
    st.tuples(stamps(tables), stamps(leaves)).map(list),
    st.tuples(stamps(tables), stamps(leaves), st.sampled_from([0, 2, 1.0, True])).map(list),
    st.just("nope"),
)


def merged(body: Any) -> tuple[Any, ...]:
    store = create_mergeable_store("x", get_now=lambda: NOW)
    store.set_cell("t", "r", "c", "old")  # something to merge over
    store.apply_encoded_mergeable_changes(body)
    return (
        store.get_mergeable_content(),
        store.get_mergeable_content_hashes(),
        store.get_content(),
        store.ignored_count,
        store._hlc_functions.get_next_hlc()[:7],
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_the_fused_check_gives_the_protocol_verdict_and_the_same_merge(body: Any) -> None:
    original = copy.deepcopy(body)
    checked = check_content_diff(body)
    assert (checked is not None) == is_protocol_message_valid(None, CONTENT_DIFF, body)
    assert body == original  # nothing was changed on the way
    if checked is not None:
        assert type(checked) is CheckedChanges and list(checked) == body
        assert merged(checked) == merged(copy.deepcopy(body))


def test_a_valid_diff_with_every_kind_of_special_value() -> None:
    hlc = hlc_at(NOW)
    body = [
        [
            {
                "t": [
                    {
                        "r": [
                            {
                                "obj": [JSON_PREFIX + '{"a":1}', hlc],
                                "big": [2**60, hlc],
                                "float": [1e300, hlc],
                                "gone": [UNDEFINED, hlc],
                                "plain": [1, hlc],
                            },
                            hlc,
                        ]
                    },
                    hlc,
                ]
            },
            hlc,
        ],
        [{"v": [[1, 2], hlc]}, hlc],
        1,
    ]
    checked = check_content_diff(body)
    assert checked is not None
    assert sorted(map(repr, checked.special)) == sorted(
        map(repr, [JSON_PREFIX + '{"a":1}', 2**60, 1e300, [1, 2]])
    )
    assert len(checked.hlcs) == 10  # 6 leaves, a row, a table, and both roots
    assert merged(checked) == merged(copy.deepcopy(body))
    far = copy.deepcopy(body)
    far[0][0]["t"][0]["r"][1] = hlc_at(NOW + 10 * 60_000)  # a row HLC in the far future
    checked_far = check_content_diff(far)
    assert checked_far is not None  # a valid message...
    assert merged(checked_far)[3] == 1  # ...whose changes the store ignores, as in full


responses = st.one_of(
    bodies,
    st.tuples(stamps(tables), st.dictionaries(ids, st.integers(0, 2**32), max_size=2)).map(list),
    st.tuples(stamps(tables), st.just({"t": {"r": 7}})).map(list),
    st.tuples(st.integers(0, 2**32), st.integers(0, 2**32)).map(list),
    stamps(leaves),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses)
def test_the_gathering_response_check_gives_the_protocol_verdict(body: Any) -> None:
    valid, gathered = check_response(body)
    assert valid == is_protocol_message_valid("id", RESPONSE, body)
    if gathered is not None:
        assert valid and isinstance(body, list) and type(body[1]) is dict


def pulled(table_body: Any, value_body: Any, checked: bool) -> tuple[Any, ...]:
    """Drive a pull by hand: a peer answers a table diff and a value diff."""
    store = create_mergeable_store("x", get_now=lambda: NOW)
    store.set_cell("t", "r", "c", "old")
    engine = SyncEngine(store, request_timeout_seconds=5.0)
    results = engine_events(engine, PullFinished)
    engine.pull("P", [1, 1])  # hashes that differ from ours in both halves
    [(_, rid, message, _)] = engine.data_to_send()
    assert message == TABLE_DIFF
    engine.receive("P", rid, RESPONSE, table_body)
    out = engine.data_to_send()
    if out:
        [(_, rid, message, _)] = out
        assert message == VALUE_DIFF
        engine.receive("P", rid, RESPONSE, value_body)
    if results() and results()[0] is not None:
        changes = results()[0]
        store.apply_encoded_mergeable_changes(changes if checked else list(changes))
    return (
        len(results()),
        store.get_mergeable_content(),
        store.get_mergeable_content_hashes(),
        store.ignored_count,
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stamps(tables), stamps(leaves))
def test_a_pulled_table_and_value_diff_merge_as_the_fully_checked_changes(
    tables_stamp: Any, values_stamp: Any
) -> None:
    table_body = [tables_stamp, {}]
    assert pulled(table_body, values_stamp, True) == pulled(
        copy.deepcopy(table_body), copy.deepcopy(values_stamp), False
    )


def test_a_joiners_pull_hands_the_store_checked_changes() -> None:
    """Table diff + value diff (what a joiner gets) arrive as CheckedChanges; rows merged in
    from a row diff fall back to the store's full check."""
    holder = create_mergeable_store("h", get_now=lambda: NOW)
    holder.set_row("t", "r", {"a": 1, "o": {"k": [1]}})
    holder.set_value("v", 2**60)
    joiner = create_mergeable_store("j", get_now=lambda: NOW)
    engine = SyncEngine(joiner, request_timeout_seconds=5.0)
    results = engine_events(engine, PullFinished)
    engine.pull("H", holder.get_mergeable_content_hashes())
    [(_, rid, message, body)] = engine.data_to_send()
    engine.receive("H", rid, RESPONSE, holder.get_mergeable_table_diff(body))
    [(_, rid, message, body)] = engine.data_to_send()
    assert message == VALUE_DIFF
    engine.receive("H", rid, RESPONSE, holder.get_mergeable_value_diff(body))
    [changes] = results()
    assert type(changes) is CheckedChanges
    assert len(changes.special) == 2  # the object cell and the big number
    joiner.apply_encoded_mergeable_changes(changes)
    assert joiner.get_mergeable_content_hashes() == holder.get_mergeable_content_hashes()
