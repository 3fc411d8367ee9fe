"""Message validation against TinyBase 10.0.1's own verdicts (invalid_messages.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localsync.core.validation import is_protocol_message_valid
from localsync.sync.engine import SyncEngine

CASES = [
    case
    for case in json.loads(
        (Path(__file__).parents[1] / "conformance" / "invalid_messages.json").read_text("utf-8")
    )
    if case["layer"] == "message"
]


class _NoStore:
    """Answers nothing: validation must decide before the store is ever touched."""

    def __getattr__(self, name: str) -> Any:
        def answer(*_args: Any) -> Any:
            return [0, 0] if name == "get_mergeable_content_hashes" else [{}]

        return answer


def test_there_are_message_cases() -> None:
    assert len(CASES) > 50
    assert {c["valid"] for c in CASES} == {True, False}


@pytest.mark.parametrize("case", CASES, ids=[c["label"] for c in CASES])
def test_verdict_matches_tinybase(case: dict[str, Any]) -> None:
    assert (
        is_protocol_message_valid(case["request_id"], case["message"], case["body"])
        is (case["valid"])
    )


@pytest.mark.parametrize("case", CASES, ids=[c["label"] for c in CASES])
def test_engine_counts_and_reports_invalid(case: dict[str, Any]) -> None:
    errors: list[BaseException] = []
    engine = SyncEngine(_NoStore(), request_timeout_seconds=1, on_ignored_error=errors.append)
    engine.receive("peer", case["request_id"], case["message"], case["body"])
    if case["valid"]:
        assert engine.receives == 1
        assert not [e for e in errors if str(e).startswith("tinybase:14")]
    else:
        assert engine.receives == 0
        assert [getattr(e, "code", None) for e in errors] == [case["error"]]
        assert engine.data_to_send() == []


def test_python_only_shapes_are_rejected() -> None:
    # bool is not a number in JavaScript; non-string keys cannot come from JSON
    assert not is_protocol_message_valid(None, True, "")
    assert not is_protocol_message_valid(None, 2, [True, 0])
    assert not is_protocol_message_valid(None, 4, {1: 5})
    assert not is_protocol_message_valid(None, 3, [[{}], [{"v": [float("nan"), ""]}]])
    assert not is_protocol_message_valid(None, 3, [[{}], [{"v": [b"x", ""]}]])
    assert not is_protocol_message_valid(None, 3, [[{}], [{"v": [2**1100, ""]}]])  # not a double
    assert not is_protocol_message_valid(None, 3, [[{"t": [{"r": [{"c": [{1, 2}]}]}]}], [{}]])
    assert is_protocol_message_valid(None, 3, [[{"t": [{"r": [{"c": [2**53]}]}]}], [{}]])
    assert is_protocol_message_valid(None, 1.0, "")


@pytest.mark.parametrize("message", [10**400, -(10**400), 2**1024])
def test_a_message_number_past_float_range_is_invalid_not_an_error(message: int) -> None:
    # JSON decoders give such numbers as Python ints; TinyBase's Number() makes them Infinity
    assert is_protocol_message_valid(None, message, [0, 0]) is False
    errors: list[BaseException] = []
    engine = SyncEngine(_NoStore(), request_timeout_seconds=1, on_ignored_error=errors.append)
    engine.receive("peer", None, message, [0, 0])
    assert engine.receives == 0
    assert [getattr(e, "code", None) for e in errors] == ["tinybase:14"]
