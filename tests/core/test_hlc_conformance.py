"""Every case of TinyBase 10.0.1's hlc.json through ``get_hlc_functions``, plus properties.

HLC strings decide which write wins a conflict, so ours must be TinyBase's string for string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localsync import get_hash, get_hlc_functions
from localsync.core.codec import ENCODE
from localsync.core.hlc import (
    HLC_MAX_FUTURE_OFFSET,
    clock_with_deferred_seen,
    encode_hlc_parts,
    is_hlc,
)

VECTORS = Path(__file__).parents[1] / "conformance"
HLC_CASES: list[dict[str, Any]] = json.loads((VECTORS / "hlc.json").read_text("utf-8"))


def _case_id(index: int, case: dict[str, Any]) -> str:
    kind = case["kind"]
    if kind == "sequence":
        detail = case["name"]
    elif kind == "encodeHlc":
        detail = f"{case['logical_time']}-{case['counter']}-{case['client_unique_id']}"
    elif kind == "decodeHlc":
        detail = case["hlc"] or "empty"
    else:
        detail = case["unique_id"] or "empty"
    return f"{index}-{kind}-" + detail.encode("ascii", "backslashreplace").decode("ascii")[:30]


class FakeClock:
    def __init__(self, now: float = 0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("case", HLC_CASES, ids=[_case_id(i, c) for i, c in enumerate(HLC_CASES)])
def test_hlc_vector(case: dict[str, Any]) -> None:
    kind = case["kind"]
    if kind == "clientId":
        if "fnv1a_hash" in case:
            assert get_hash(case["unique_id"]) == case["fnv1a_hash"]
        functions = get_hlc_functions(case["unique_id"])
        assert functions[6]() == case["expected"]
        assert functions.get_client_id() == case["expected"]
    elif kind == "encodeHlc":
        encode_hlc = get_hlc_functions(case["store_unique_id"])[2]
        args = [case["logical_time"], case["counter"]]
        if case["client_unique_id"] is not None:
            args.append(case["client_unique_id"])
        assert encode_hlc(*args) == case["expected"]
    elif kind == "decodeHlc":
        decode_hlc = get_hlc_functions("any")[3]
        assert list(decode_hlc(case["hlc"])) == case["expected"]
    elif kind == "sequence":
        clock = FakeClock()
        (
            get_next_hlc,
            seen_hlc,
            _encode,
            _decode,
            get_last_logical_time,
            get_last_counter,
            _client,
        ) = get_hlc_functions(case["unique_id"], clock)
        for step in case["steps"]:
            clock.now = step["now"]
            if step["call"] == "getNextHlc":
                assert get_next_hlc() == step["expected"], step
            else:
                assert step["call"] == "seenHlc"
                seen_hlc(step["remote_hlc"])
            assert get_last_logical_time() == step["last_logical_time"], step
            assert get_last_counter() == step["last_counter"], step
    else:  # pragma: no cover - a new vector kind must not pass silently
        pytest.fail(f"unknown vector kind {kind}")


def test_random_client_id_without_unique_id() -> None:
    client_ids = {get_hlc_functions().get_client_id() for _ in range(50)}
    assert all(len(c) == 5 and set(c) <= set(ENCODE) for c in client_ids)
    assert len(client_ids) > 1


def test_default_clock_is_real_milliseconds() -> None:
    import time

    before = time.time_ns() // 1_000_000
    hlc = get_hlc_functions("a").get_next_hlc()
    after = time.time_ns() // 1_000_000
    logical_time = get_hlc_functions("b").decode_hlc(hlc)[0]
    assert before <= logical_time <= after


_TIMES = st.integers(min_value=0, max_value=2**42 - 1)
_COUNTERS = st.integers(min_value=0, max_value=2**24 - 1)


@settings(max_examples=300, deadline=None)
@given(_TIMES, _COUNTERS, st.text(min_size=0, max_size=8))
def test_encode_decode_round_trip(logical_time: int, counter: int, unique_id: str) -> None:
    functions = get_hlc_functions(unique_id)
    hlc = functions.encode_hlc(logical_time, counter)
    assert len(hlc) == 16 and is_hlc(hlc, 2**42)
    assert functions.decode_hlc(hlc) == (logical_time, counter, functions.get_client_id())


@settings(max_examples=300, deadline=None)
@given(st.tuples(_TIMES, _COUNTERS), st.tuples(_TIMES, _COUNTERS))
def test_string_order_is_time_then_counter_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    """Conflict resolution compares HLC strings, so string order must be numeric order."""
    encode_hlc = get_hlc_functions("x").encode_hlc
    assert (encode_hlc(*a) < encode_hlc(*b)) == (a < b)


_STEPS = st.lists(
    st.tuples(
        st.integers(min_value=-5, max_value=400_000),  # clock moves (also backwards)
        st.one_of(
            st.none(),  # getNextHlc
            st.tuples(  # seenHlc of a remote clock near ours
                st.integers(min_value=-1000, max_value=400_000),
                st.integers(min_value=0, max_value=2**24 - 1),
            ),
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_STEPS)
def test_next_hlc_is_strictly_increasing_and_after_everything_seen(
    steps: list[tuple[int, tuple[int, int] | None]],
) -> None:
    base = 1_700_000_000_000
    clock = FakeClock(base)
    functions = get_hlc_functions("local", clock)
    remote = get_hlc_functions("remote")
    previous = ""
    latest_seen = ""
    for delta, seen in steps:
        clock.now = base + delta
        if seen is None:
            hlc = functions.get_next_hlc()
            assert hlc > previous
            assert hlc[:11] > latest_seen[:11]
            assert functions.decode_hlc(hlc)[0] >= clock.now
            previous = hlc
        else:
            remote_hlc = remote.encode_hlc(base + seen[0], seen[1])
            functions.seen_hlc(remote_hlc)
            if base + seen[0] <= clock.now + HLC_MAX_FUTURE_OFFSET:
                latest_seen = max(latest_seen, remote_hlc)


def test_counter_carry_keeps_order_at_the_2_24_boundary() -> None:
    clock = FakeClock(1_700_000_000_000)
    functions = get_hlc_functions("s", clock)
    functions.seen_hlc(functions.encode_hlc(clock.now, 2**24 - 2, "r"))
    first, second, third = (functions.get_next_hlc() for _ in range(3))
    assert first < second < third
    assert functions.decode_hlc(third)[:2] == (clock.now + 1, 1)


def test_zero_clock_quirk_matches_tinybase() -> None:
    """With a clock at 0, TinyBase's seenHlc() ties with its [0, 0] and starts at counter 1."""
    functions = get_hlc_functions("s", lambda: 0)
    assert functions.decode_hlc(functions.get_next_hlc())[:2] == (0, 1)
    assert functions.decode_hlc(functions.get_next_hlc())[:2] == (0, 2)


def test_an_integer_clock_stays_integer_in_either_build() -> None:
    """The real clock gives whole milliseconds: the clock must keep them as ints, compiled
    or not. (The mypyc build once turned them into floats at ``float`` annotations, which
    also sent every new millisecond's HLC prefix down the slow float encoding.)"""
    for functions in (get_hlc_functions("s"), get_hlc_functions("s", lambda: 1_700_000_000_000)):
        hlc = functions.get_next_hlc()
        assert type(functions.get_last_logical_time()) is int
        assert functions.decode_hlc(hlc)[0] == functions.get_last_logical_time()
    assert encode_hlc_parts(1_700_000_000_000, 5, "abcde") == encode_hlc_parts(
        1_700_000_000_000.0, 5.0, "abcde"
    )


@pytest.mark.parametrize(
    "hlc",
    ["", "zzzzzzzzzzzzzzzz", "NjEtLV-----7JQY8\n", "NjEtLV-----7JQY", "NjEtLV-----7JQY!", 5, None],
)
def test_seen_hlc_of_invalid_or_empty_leaves_a_running_clock_alone(hlc: Any) -> None:
    clock = FakeClock(1_700_000_000_000)
    functions = get_hlc_functions("s", clock)
    functions.get_next_hlc()
    state = (functions.get_last_logical_time(), functions.get_last_counter())
    functions.seen_hlc(hlc)
    assert (functions.get_last_logical_time(), functions.get_last_counter()) == state


# --------------------------------------------------------------------------- against TinyBase

_TINYBASE_HLC_SCRIPT = r"""
import {getHlcFunctions} from 'tinybase';
import {readFileSync} from 'node:fs';
const sequences = JSON.parse(readFileSync(0, 'utf8'));
const results = sequences.map(({uniqueId, steps}) => {
  let now = 0;
  const [getNextHlc, seenHlc, , , getLastLogicalTime, getLastCounter] =
    getHlcFunctions(uniqueId, () => now);
  return steps.map(([stepNow, remote]) => {
    now = stepNow;
    const hlc = remote === null ? getNextHlc() : (seenHlc(remote), null);
    return [hlc, getLastLogicalTime(), getLastCounter()];
  });
});
console.log(JSON.stringify(results));
"""


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_random_clock_sequences_match_tinybase(tmp_path: Path) -> None:
    """Random clocks, remote HLCs (valid, far-future, malformed) and overflow: vs TinyBase."""
    import random

    from tests import npm_env

    npm_env.require_node()
    rng = random.Random(7)
    base = 1_700_000_000_000
    encode_hlc = get_hlc_functions("remote").encode_hlc
    sequences = []
    for index in range(300):
        steps: list[list[Any]] = []
        now = base
        for _ in range(rng.randrange(1, 40)):
            now += rng.choice([0, 0, 0, 1, 2, -3, 1000, -400_000, 300_000])
            roll = rng.random()
            if roll < 0.55:
                remote = None
            elif roll < 0.85:
                remote_time = now + rng.choice([-5, 0, 0, 1, 299_999, 300_000, 300_001])
                counter = rng.choice([0, 1, 2**24 - 2, 2**24 - 1, rng.randrange(2**24)])
                remote = encode_hlc(remote_time, counter)
            else:
                remote = rng.choice(["", "short", "zzzzzzzzzzzzzzzz", "NjEtLV-----7JQY!", "x" * 17])
            steps.append([now, remote])
        sequences.append({"uniqueId": f"s{index}", "steps": steps})
    script = tmp_path / "localsync_hlc_oracle.mjs"
    script.write_text(_TINYBASE_HLC_SCRIPT)
    expected = npm_env.run_node_json(script, stdin=json.dumps(sequences), timeout=120)
    for sequence, tinybase_steps in zip(sequences, expected, strict=True):
        clock = FakeClock()
        functions = get_hlc_functions(sequence["uniqueId"], clock)
        for (now, remote), tinybase_step in zip(sequence["steps"], tinybase_steps, strict=True):
            clock.now = now
            hlc = functions.get_next_hlc() if remote is None else functions.seen_hlc(remote)
            ours = [hlc, functions.get_last_logical_time(), functions.get_last_counter()]
            assert ours == tinybase_step, (sequence["uniqueId"], now, remote)


def _reference_time(hlc: str) -> int:
    """decodeHlcTime exactly as TinyBase writes it: seven digits, unknown/missing as 0."""
    digits = [ENCODE.find(hlc[i]) if i < len(hlc) else 0 for i in range(7)]
    return sum(max(d, 0) << (36 - 6 * i) for i, d in enumerate(digits))


_HLC_LIKE = st.text(st.sampled_from(ENCODE + "~ é"), min_size=0, max_size=18) | st.builds(
    lambda t, c: get_hlc_functions("x").encode_hlc(t, c), _TIMES, _COUNTERS
)
_LIMITS = (
    _TIMES
    | st.integers(min_value=-(2**43), max_value=2**43)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2**42 - 1, 2**42, -1, 0, 0.5, -0.5])
)


@settings(max_examples=500, deadline=None)
@given(_HLC_LIKE, _LIMITS)
def test_is_hlc_and_decode_match_the_reference_definition(hlc: str, limit: float) -> None:
    from localsync.core.hlc import decode_hlc, decode_hlc_time

    assert decode_hlc_time(hlc) == _reference_time(hlc)
    counter_digits = [ENCODE.find(hlc[i]) if i < len(hlc) else 0 for i in range(7, 11)]
    counter = sum(max(d, 0) << (18 - 6 * i) for i, d in enumerate(counter_digits))
    assert decode_hlc(hlc) == (_reference_time(hlc), counter, hlc[11:])
    valid = len(hlc) == 16 and set(hlc) <= set(ENCODE)
    assert is_hlc(hlc, limit) == (hlc == "" or (valid and _reference_time(hlc) <= limit))
    # the limit cache must not leak between calls with different limits
    assert is_hlc(hlc, -1) == (hlc == "")


_BASE = 1_700_000_000_000
_ODD_NOWS = [float("nan"), 0, _BASE + 0.5, float("inf")]  # (inf ends every difference: rare)
# mostly steps forward, repeats and steps back; now and then a clock gone odd
_NOWS = st.integers(0, 80).map(lambda i: _BASE - 5 + i if i < 77 else _ODD_NOWS[i - 77])
_REMOTE = st.one_of(
    st.just(""),
    st.builds(
        lambda offset, counter, peer: encode_hlc_parts(_BASE + offset, counter, peer),
        st.sampled_from(
            [-3, 0, 1, 2, 3, 5, 10, 20, 40, HLC_MAX_FUTURE_OFFSET, HLC_MAX_FUTURE_OFFSET + 30]
        ),
        st.integers(0, 3),
        st.sampled_from(["PeerA", "PeerB"]),
    ),
)
_OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["seen", "seen", "seen", "next", "time", "counter", "public"]),
        _REMOTE,
        _NOWS,
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(_OPERATIONS)
def test_deferred_seen_is_indistinguishable_from_seen_hlc(
    operations: list[tuple[str, str, float]],
) -> None:
    """A store's merges note remote HLCs with ``seen_hlc_later`` (validated already) and the
    clock folds them in at its next use: every HLC and getter must equal seen_hlc's."""
    eager_clock, lazy_clock = FakeClock(_BASE), FakeClock(_BASE)
    eager = get_hlc_functions("same-id", eager_clock)
    lazy, seen_later = clock_with_deferred_seen("same-id", lazy_clock)
    for kind, remote, now in operations:
        eager_clock.now = lazy_clock.now = now
        if kind == "seen":
            eager.seen_hlc(remote)
            seen_later(remote)
        elif kind == "public":
            eager.seen_hlc(remote)
            lazy.seen_hlc(remote)
        elif kind == "next":
            assert lazy.get_next_hlc() == eager.get_next_hlc()
        elif kind == "time":
            assert repr(lazy.get_last_logical_time()) == repr(eager.get_last_logical_time())
        else:
            assert lazy.get_last_counter() == eager.get_last_counter()
    assert repr(lazy.get_last_logical_time()) == repr(eager.get_last_logical_time())
    assert lazy.get_last_counter() == eager.get_last_counter()
    assert lazy.get_next_hlc() == eager.get_next_hlc()
