"""Every case of TinyBase 10.0.1's store_traces.json, replayed through the public API.

Each step sets the fake clock, runs the op and compares what TinyBase recorded: the changes
each finished transaction reported (with and without hashes), the mergeable content and its
hashes, and the plain tables and values. No step of these vectors threw in TinyBase; a step
that did would carry ``error`` and must raise here too.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance_replay import Replica, assert_same, load_cases, run_op, snapshot

CASES = load_cases("store_traces.json")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_store_trace(case: dict[str, Any]) -> None:
    replica = Replica(case["unique_id"], case["initial_now"])
    for index, step in enumerate(case["steps"]):
        where = f"{case['name']} step {index} {step['op'][0]}"
        replica.clock.now = step["now"]
        replica.transactions.clear()
        if "error" in step:
            with pytest.raises((TypeError, ValueError, RuntimeError)):
                run_op(replica.store, step["op"])
        else:
            run_op(replica.store, step["op"])
        assert_same(replica.transactions, step["transactions"], f"{where} transactions")
        assert_same(snapshot(replica.store), step["after"], f"{where} after")
