"""The message check and the store's check share one walk: the cases where they must differ.

A protocol message takes TinyBase's ``isStamp`` stamps only; a store also takes stamps with
hashes (content: only those), refuses values it cannot hold (tuples, ints beyond any
JavaScript number, undecodable encoded objects) and HLCs beyond its future limit, and takes
only exact lists and tuples where a message takes their subclasses too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.core.codec import ALPHABET_PATTERN, JSON_PREFIX
from localsync.core.hlc import encode_hlc_parts
from localsync.core.validation import CONTENT_DIFF, is_protocol_message_valid

HLC = encode_hlc_parts(1_000, 0, "abcde")
FAR = encode_hlc_parts(10**12, 0, "abcde")  # far beyond any store's future limit


class _List(list):  # type: ignore[type-arg]
    pass


def _changes(cell_stamp: Any, values: Any = None) -> list[Any]:
    tables = [{"t": [{"r": [{"c": cell_stamp}, HLC]}, HLC]}, HLC]
    return [tables, [values or {}, HLC], 1]


def _message_ok(body: Any) -> bool:
    return is_protocol_message_valid(None, CONTENT_DIFF, body)


def _store_ok(body: Any, encoded: bool = False) -> bool:
    store = create_mergeable_store("s", get_now=lambda: 2_000)
    if encoded:
        store.apply_encoded_mergeable_changes(body)
    else:
        store.apply_mergeable_changes(body)
    return store.ignored_count == 0


@pytest.mark.parametrize(
    ("cell_stamp", "message", "store"),
    [
        ([1, HLC], True, True),
        ([1], True, True),
        ([1, HLC, 5], False, True),  # a hash: the store's stamps only
        ([1, HLC, 5.5], False, True),
        ([1, HLC, float("nan")], False, False),
        ([1, HLC, True], False, False),
        ([(1, 2), HLC], True, False),  # a tuple value: a message's only
        ([2**1024 - 1, HLC], True, False),  # rounds to 2**1024: no JavaScript number
        ([2**1023, HLC], True, True),
        ([2**1024, HLC], False, False),
        ([float("inf"), HLC], False, False),
        ([{"a": 1}, HLC], True, True),
        ([1, FAR], True, False),  # the store's future limit
        ([1, HLC[:15] + "!"], False, False),  # outside the alphabet
        ([1, HLC[:15]], False, False),
        ([1, ""], True, True),
        ([], False, False),
        ([1, HLC, 5, 6], False, False),
        (_List([1, HLC]), False, False),  # leaf stamps: exact lists and tuples only
    ],
)
def test_message_and_store_verdicts(cell_stamp: Any, message: bool, store: bool) -> None:
    body = _changes(cell_stamp)
    assert _message_ok(body) is message
    assert _store_ok(body) is store


def test_list_subclasses_above_the_cells_are_a_messages_only() -> None:
    body = _changes([1, HLC])
    body[0] = _List(body[0])
    assert _message_ok(body)
    assert not _store_ok(body)


def test_encoded_object_cells_must_decode_in_a_store() -> None:
    good = _changes([JSON_PREFIX + '{"a":1}', HLC])
    bad = _changes([JSON_PREFIX + "{", HLC])
    assert _message_ok(good) and _message_ok(bad)
    assert _store_ok(good, encoded=True)
    assert not _store_ok(bad, encoded=True)
    assert not _store_ok(good, encoded=False)  # (decoded changes hold no encoded cells)


def test_content_takes_only_stamps_with_hashes() -> None:
    hashed = [[{"t": [{"r": [{"c": [1, HLC, 7]}, HLC, 0]}, HLC, 0]}, HLC, 0], [{}, HLC, 0]]
    store = create_mergeable_store("s", get_now=lambda: 2_000)
    store.set_mergeable_content(hashed)
    assert store.ignored_count == 0
    unhashed = [[{"t": [{"r": [{"c": [1, HLC]}, HLC, 0]}, HLC, 0]}, HLC, 0], [{}, HLC, 0]]
    store.set_mergeable_content(unhashed)
    assert store.ignored_count == 1
    store.set_mergeable_content([*hashed, 1])  # (no third element in content)
    assert store.ignored_count == 2


def test_the_alphabet_pattern_is_the_hlc_alphabet() -> None:
    pattern = re.compile(ALPHABET_PATTERN)
    legacy = re.compile(r"[-0-9A-Z_a-z]")
    for code in range(0x3000):
        char = chr(code)
        assert bool(pattern.fullmatch(char)) is bool(legacy.fullmatch(char)), char
