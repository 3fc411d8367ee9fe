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
from localsync.codec import JSON_PREFIX, UNDEFINED
from localsync.hlc import encode_hlc_parts
from localsync.mergeable_store import CheckedChanges
from localsync.protocol import CONTENT_DIFF, check_content_diff, is_protocol_message_valid

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
    store._apply_encoded_mergeable_changes(body)
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
