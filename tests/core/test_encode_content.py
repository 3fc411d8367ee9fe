"""``MergeableStore.encode_mergeable_content`` gives the bytes of encoding
``get_encoded_mergeable_content()``: what a channel snapshot's owner writes is what a joiner
would have decoded from the copied content, for merged and locally written stores alike."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync import create_mergeable_store
from tests.core.test_bulk_install import CONTENT, NOW

_ENCODERS = (msgspec.msgpack.encode, msgspec.json.encode)


def _same_bytes(store: Any) -> None:
    for encode in _ENCODERS:
        assert store.encode_mergeable_content(encode) == encode(
            store.get_encoded_mergeable_content()
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONTENT)
def test_merged_content_encodes_as_its_copy(content: Any) -> None:
    store = create_mergeable_store("s", lambda: NOW)
    store.set_mergeable_content(content)
    _same_bytes(store)


_CELL = (
    st.integers(-5, 5)
    | st.text(max_size=2)
    | st.booleans()
    | st.none()
    | st.just({"a": [1, {"b": None}]})
)
_OP = st.tuples(
    st.sampled_from(["set", "del", "value", "delvalue"]),
    st.sampled_from("ab"),
    st.sampled_from("xy"),
    _CELL,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OP, max_size=20))
def test_local_writes_encode_as_their_copy(ops: list[Any]) -> None:
    store = create_mergeable_store("w", lambda: NOW)
    for kind, row, cell, thing in ops:
        if kind == "set":
            store.set_cell("t", row, cell, thing)
        elif kind == "del":
            store.del_cell("t", row, cell)
        elif kind == "value":
            store.set_value(cell, thing)
        else:
            store.del_value(cell)
    _same_bytes(store)


def test_unsettled_hashes_are_settled_first() -> None:
    store = create_mergeable_store("w", lambda: NOW)
    store.set_row("t", "r", {"a": 1, "b": "x"})
    # nothing has asked for a hash yet: the stamps still hold pending ones
    payload = store.encode_mergeable_content(msgspec.msgpack.encode)
    decoded = msgspec.msgpack.decode(payload)
    assert [decoded[0][2], decoded[1][2]] == store.get_mergeable_content_hashes()
    assert json.dumps(decoded) == json.dumps(store.get_encoded_mergeable_content())
