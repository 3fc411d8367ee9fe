"""Every case of TinyBase 10.0.1's diff_traces.json, replayed through the public API.

Two stores are built with the setup steps; then each hash/diff call the synchronizer would
make (A pulling from B, B pulling from A) and the hand-made ``adhoc`` calls must return
exactly what TinyBase returned for the same input.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance_replay import Replica, assert_same, load_cases, snake
from tests.core.test_merge_conformance import run_merge_step

CASES = load_cases("diff_traces.json")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_diff_trace(case: dict[str, Any]) -> None:
    initial_now = case["setup_steps"][0]["now"] if case["setup_steps"] else 0
    replicas = {
        name: Replica(unique_id, initial_now, with_hashes=False)
        for name, unique_id in case["stores"].items()
    }
    for index, step in enumerate(case["setup_steps"]):
        run_merge_step(replicas, step, f"{case['name']} setup {index}")
    for name, content in case["content"].items():
        assert_same(replicas[name].store.get_mergeable_content(), content, f"content {name}")
    calls = case["a_pulls_from_b"]["calls"] + case["b_pulls_from_a"]["calls"] + case["adhoc"]
    assert calls
    for index, call in enumerate(calls):
        method = getattr(replicas[call["store"]].store, snake(call["method"]))
        output = method() if call["input"] is None else method(call["input"])
        assert_same(output, call["output"], f"call {index} {call['store']}.{call['method']}")
