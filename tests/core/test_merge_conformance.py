"""Every case of TinyBase 10.0.1's merge_traces.json, replayed through the public API.

Several stores, each with its own clock, write and then exchange content, last changes or
``merge``; after every step each store's content, hashes, plain data and the changes its
transaction listener saw must equal TinyBase's. The inputs TinyBase passed between stores
(``input``, ``input_this``, ``input_other``) are compared too, since the sync engine sends
exactly those.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance_replay import Replica, assert_same, load_cases, run_op, snapshot

CASES = load_cases("merge_traces.json")


def run_merge_step(replicas: dict[str, Replica], step: dict[str, Any], where: str) -> None:
    """One merge_traces step (also the setup steps of diff_traces)."""
    replica = replicas[step["store"]]
    replica.clock.now = step["now"]
    if "op" in step:
        run_op(replica.store, step["op"])
        return
    kind, other_name = step["sync"]
    other = replicas[other_name]
    if kind == "applyContentOf":
        content = other.store.get_mergeable_content()
        if "input" in step:
            assert_same(content, step["input"], f"{where} input")
        replica.store.apply_mergeable_changes(content)
    elif kind == "applyLastChangesOf":
        changes = other.last_changes
        if "input" in step:
            assert_same(changes, step["input"], f"{where} input")
        replica.store.apply_mergeable_changes(changes)
    elif kind == "merge":
        other.clock.now = step["now"]
        if "input_this" in step:
            assert_same(replica.store.get_mergeable_content(), step["input_this"], where)
            assert_same(other.store.get_mergeable_content(), step["input_other"], where)
        replica.store.merge(other.store)
    else:  # pragma: no cover - a vector kind this replay does not know
        raise AssertionError(f"unknown sync kind {kind}")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_merge_trace(case: dict[str, Any]) -> None:
    replicas = {
        name: Replica(unique_id, case["initial_now"], with_hashes=False)
        for name, unique_id in case["stores"].items()
    }
    for index, step in enumerate(case["steps"]):
        where = f"{case['name']} step {index} {step.get('op', step.get('sync'))[0]}"
        for replica in replicas.values():
            replica.transactions.clear()
        run_merge_step(replicas, step, where)
        for name, expected in step["after"].items():
            replica = replicas[name]
            expected = dict(expected)
            assert_same(replica.transactions, expected.pop("transactions"), f"{where} {name} tx")
            assert_same(snapshot(replica.store), expected, f"{where} {name}")
