"""Replay TinyBase's store/merge/diff vectors through localsync's public API.

Shared by the store conformance tests and by the sync-engine tests: a vector step names a
TinyBase method (``setCell``, ``applyMergeableChanges``, ``["transaction", [...]]``); these
helpers run it on a MergeableStore with a fake clock and take the same snapshot the vector
generator took, so the two can be compared field by field.

Comparison is strict about JSON types (``True`` is not ``1``; ``1`` and ``1.0`` are the same
JavaScript number) and ignores dict key order, which the vectors' README says is not canonical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from localsync import create_mergeable_store

CONFORMANCE = Path(__file__).parent / "conformance"

__all__ = [
    "CONFORMANCE",
    "Clock",
    "Replica",
    "assert_same",
    "diff_paths",
    "load_cases",
    "run_op",
    "snake",
    "snapshot",
]


def load_cases(name: str) -> list[dict[str, Any]]:
    """The cases of one vector file (``store_traces.json`` ...)."""
    with (CONFORMANCE / name).open(encoding="utf-8") as file:
        return json.load(file)


def snake(name: str) -> str:
    """TinyBase method name in Python spelling: ``getRowIds`` -> ``get_row_ids``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Clock:
    """A settable fake clock (milliseconds), as the vector generator used."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def run_op(store: Any, op: list[Any]) -> Any:
    """Run one vector op: ``[methodName, *args]`` or ``["transaction", [op, ...]]``."""
    name, *args = op
    if name == "transaction":
        with store.transaction():
            for sub_op in args[0]:
                run_op(store, sub_op)
        return store
    return getattr(store, snake(name))(*args)


def snapshot(store: Any) -> dict[str, Any]:
    """The ``after`` fields of a vector step, read through the public API."""
    return {
        "content": store.get_mergeable_content(),
        "content_hashes": store.get_mergeable_content_hashes(),
        "table_hashes": store.get_mergeable_table_hashes(),
        "value_hashes": store.get_mergeable_value_hashes(),
        "tables": store.get_tables(),
        "values": store.get_values(),
    }


class Replica:
    """A MergeableStore with its own fake clock and a record of finished transactions."""

    def __init__(self, unique_id: str, now: int, with_hashes: bool = True) -> None:
        self.clock = Clock(now)
        self.store = create_mergeable_store(unique_id, self.clock)
        self.transactions: list[Any] = []
        self.last_changes: Any = None
        self._with_hashes = with_hashes
        self.store.add_did_finish_transaction_listener(self._on_finish)

    def _on_finish(self, store: Any) -> None:
        changes = store.get_transaction_mergeable_changes()
        if self._with_hashes:
            self.transactions.append(
                {
                    "changes": changes,
                    "changes_with_hashes": store.get_transaction_mergeable_changes(True),
                }
            )
        else:
            self.transactions.append(changes)
        if changes[0][0] or changes[1][0]:
            self.last_changes = changes


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def diff_paths(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Where two JSON-shaped values differ (empty when equal); dict order is ignored."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r:.200}"]
        out: list[str] = []
        for key in expected.keys() | actual.keys():
            if key not in actual:
                out.append(f"{path}.{key}: missing")
            elif key not in expected:
                out.append(f"{path}.{key}: unexpected {actual[key]!r:.200}")
            else:
                out.extend(diff_paths(actual[key], expected[key], f"{path}.{key}"))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list | tuple):
            return [f"{path}: expected an array, got {actual!r:.200}"]
        if len(actual) != len(expected):
            return [f"{path}: expected {expected!r:.300}, got {actual!r:.300}"]
        out = []
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            out.extend(diff_paths(a, e, f"{path}[{index}]"))
        return out
    if not _same_scalar(actual, expected):
        return [f"{path}: expected {expected!r:.200}, got {actual!r:.200}"]
    return []


def assert_same(actual: Any, expected: Any, what: str = "") -> None:
    differences = diff_paths(actual, expected)
    assert not differences, f"{what}: " + "; ".join(differences[:10])
