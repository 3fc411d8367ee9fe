"""The sans-I/O engine on its own: feed messages and time, assert on what it emits."""

from __future__ import annotations

from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.engine import (
    CONTENT_DIFF,
    CONTENT_HASHES,
    GET_CONTENT_HASHES,
    RESPONSE,
    TABLE_DIFF,
    VALUE_DIFF,
    ContentDiffReceived,
    Outgoing,
    PeerChangesPulled,
    PullFinished,
    SyncEngine,
)
from tests.helpers import engine_events

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(store: Any = None, **kw: Any) -> tuple[SyncEngine, list[BaseException], Clock, Any]:
    clock = Clock()
    errors: list[BaseException] = []
    store = (
        store if store is not None else create_mergeable_store(get_now=lambda: 1_700_000_000_000)
    )
    engine = SyncEngine(
        store, request_timeout_seconds=1.0, clock=clock, on_ignored_error=errors.append, **kw
    )
    return engine, errors, clock, store


def codes(errors: list[BaseException]) -> list[str]:
    return [getattr(e, "code", repr(e)) for e in errors]


def test_get_content_hashes_is_answered_only_while_syncing() -> None:
    engine, errors, _, store = make()
    store.set_cell("t", "r", "c", 1)
    engine.receive("B", "x.y", GET_CONTENT_HASHES, "")
    assert engine.data_to_send() == []
    engine.start()
    engine.receive("B", "x.y", GET_CONTENT_HASHES, "")
    assert engine.data_to_send() == [
        Outgoing("B", "x.y", RESPONSE, store.get_mergeable_content_hashes())
    ]
    assert engine.receives == 2 and engine.sends == 1 and not errors


def test_diff_requests_are_answered_even_when_stopped_as_in_tinybase() -> None:
    engine, _, _, store = make()
    store.set_value("v", "x")
    engine.receive("B", "q", VALUE_DIFF, {})
    [(to, rid, msg, body)] = engine.data_to_send()
    assert (to, rid, msg) == ("B", "q", RESPONSE)
    assert body == store.get_mergeable_value_diff({})


def test_full_pull_between_two_stores_by_hand() -> None:
    """Play the peer ourselves with another store's methods and watch the state machine."""
    engine, errors, _, store = make()
    other = create_mergeable_store(unique_id="other", get_now=lambda: 1_700_000_000_000)
    other.set_row("t", "r", {"a": 1, "b": "two"})
    other.set_value("v", True)
    results = engine_events(engine, PullFinished)
    engine.pull()
    [(to, rid, msg, body)] = engine.data_to_send()
    assert (to, msg, body) == (None, GET_CONTENT_HASHES, "")
    tx = rid.split(".")[0]
    assert len(tx) == 11 and len(rid) == 16
    engine.receive("P", rid, RESPONSE, other.get_mergeable_content_hashes())
    [(to, rid2, msg, body)] = engine.data_to_send()
    assert (to, msg) == ("P", TABLE_DIFF) and rid2.startswith(tx + ".")
    assert body == store.get_mergeable_table_hashes()
    engine.receive("P", rid2, RESPONSE, other.get_mergeable_table_diff(body))
    # a brand-new table comes whole with the table diff; values still differ
    [(to, rid3, msg, body)] = engine.data_to_send()
    assert (to, msg) == ("P", VALUE_DIFF)
    engine.receive("P", rid3, RESPONSE, other.get_mergeable_value_diff(body))
    assert engine.data_to_send() == []
    [changes] = results()
    store.apply_encoded_mergeable_changes(changes)
    assert store.get_mergeable_content_hashes() == other.get_mergeable_content_hashes()
    assert store.get_tables() == other.get_tables() and store.get_values() == other.get_values()
    assert not errors and engine.pending_request_count() == 0


def test_response_from_the_wrong_peer_is_ignored() -> None:
    engine, _, _, _store = make()
    other = create_mergeable_store(unique_id="o", get_now=lambda: 1_700_000_000_000)
    other.set_cell("t", "r", "c", 1)
    results = engine_events(engine, PullFinished)
    engine.pull("P", other.get_mergeable_content_hashes())
    [(_, rid, msg, body)] = engine.data_to_send()
    assert msg == TABLE_DIFF
    engine.receive("Q", rid, RESPONSE, other.get_mergeable_table_diff(body))
    assert results() == [] and engine.pending_request_count() == 1
    engine.receive("P", rid, RESPONSE, other.get_mergeable_table_diff(body))
    assert len(results()) == 1 and engine.pending_request_count() == 0
    # a duplicate of the same response changes nothing
    engine.receive("P", rid, RESPONSE, other.get_mergeable_table_diff(body))
    assert len(results()) == 1 and engine.data_to_send() == []


def test_request_times_out_with_tinybase_3_and_deadline() -> None:
    engine, errors, clock, _ = make()
    results = engine_events(engine, PullFinished)
    engine.pull()
    [(_, rid, _, _)] = engine.data_to_send()
    assert engine.next_deadline() == clock.now + 1.0
    clock.now += 0.5
    engine.tick()
    assert results() == [] and errors == []
    clock.now += 0.5
    engine.tick()
    assert results() == [None]
    assert codes(errors) == ["tinybase:3"]
    assert str(errors[0]) == f"tinybase:3:.{rid}.{GET_CONTENT_HASHES}"
    assert engine.next_deadline() is None
    # a late answer is ignored
    engine.receive("P", rid, RESPONSE, [0, 0])
    assert results() == [None]


def test_more_than_100_pending_requests_overflow_with_tinybase_15() -> None:
    engine, errors, _, _ = make()
    results = engine_events(engine, PullFinished)
    for _ in range(101):
        engine.pull()
    assert engine.pending_request_count() == 100
    assert results() == [None]
    assert codes(errors) == ["tinybase:15"]


def test_content_diff_and_hashes_are_handed_back_as_events() -> None:
    engine, _, _, store = make()
    pushed = engine_events(engine, ContentDiffReceived, PeerChangesPulled)
    diff = [[{"t": [{"r": [{"c": [1, "NjEtLV-----s4Fx8"]}]}]}], [{}], 1]
    engine.receive("P", "tx", CONTENT_DIFF, diff)
    assert pushed() == []  # not syncing: ignored, as TinyBase does
    engine.start()
    engine.receive("P", "tx", CONTENT_DIFF, diff)
    assert pushed() == [diff]
    # equal hashes: nothing to pull, nothing to apply
    engine.receive("P", "tx2", CONTENT_HASHES, store.get_mergeable_content_hashes())
    assert engine.data_to_send() == [] and pushed() == [diff]
    # different hashes: a pull in the announcer's transaction
    engine.receive("P", "tx3", CONTENT_HASHES, [1, 0])
    [(to, rid, msg, _)] = engine.data_to_send()
    assert (to, msg) == ("P", TABLE_DIFF) and rid.startswith("tx3.")


def test_destroyed_engine_ignores_everything_and_fails_pending() -> None:
    engine, _errors, _, _ = make()
    results = engine_events(engine, PullFinished)
    engine.pull()
    engine.data_to_send()
    engine.destroyed = True
    engine.reject_pending_requests(RuntimeError("gone"))
    assert results() == [None]
    engine.receive("P", None, GET_CONTENT_HASHES, "")
    assert engine.receives == 0 and engine.data_to_send() == []


def test_a_pull_after_destroy_fails_at_once_instead_of_waiting_for_ever() -> None:
    """A destroyed synchronizer has no timer: a request made after destroy (a pull still
    under way) would never time out, and whoever awaits that pull would hang."""
    engine, errors, clock, _ = make()
    engine.destroyed = True
    results = engine_events(engine, PullFinished)
    engine.pull()
    assert results() == [None]
    assert codes(errors) == ["tinybase:3"]
    assert engine.pending_request_count() == 0 and engine.data_to_send() == []
    clock.now += 60
    engine.tick()
    assert results() == [None]


def test_anti_entropy_is_quiet_when_everyone_agrees() -> None:
    engine, _, clock, store = make(anti_entropy_seconds=5.0, heartbeat_every=4)
    engine.start()
    assert engine.next_deadline() == clock.now + 5.0
    engine.send_content_hashes()
    engine.data_to_send()
    hashes = store.get_mergeable_content_hashes()
    engine.receive("P", "t", CONTENT_HASHES, hashes)
    sent_per_period = []
    for _ in range(8):
        clock.now += 5.0
        engine.tick()
        sent_per_period.append(len(engine.data_to_send()))
    assert sent_per_period == [0, 0, 0, 2, 0, 0, 0, 2]  # heartbeats: announcement + probe
    # a local change (or a peer seen with other hashes) is announced at the next period
    store.set_cell("t", "r", "c", 1)
    clock.now += 5.0
    engine.tick()
    [(to, _, msg, body)] = engine.data_to_send()
    assert (to, msg, body) == (None, CONTENT_HASHES, store.get_mergeable_content_hashes())
    engine.receive("P", "t2", CONTENT_HASHES, [1, 2])
    engine.data_to_send()  # (the pull it starts)
    clock.now += 5.0
    engine.tick()
    assert [m.message for m in engine.data_to_send()] == [CONTENT_HASHES]


def test_anti_entropy_jitter_varies_each_period_within_bounds() -> None:
    """Jittered periods keep participants started together from staying in step; without
    jitter the periods are exact (as every other test here assumes)."""
    engine, _, clock, _store = make(anti_entropy_seconds=4.0)
    draws = iter([0.0, 1.0, 0.5, 0.25])
    engine.anti_entropy_jitter = 0.25
    engine.random = lambda: next(draws)
    engine.start()
    assert engine.next_deadline() == pytest.approx(clock.now + 3.0)  # 4 * (1 - 0.25)
    deadlines = []
    for _ in range(3):
        clock.now = engine.next_deadline()  # type: ignore[assignment]
        engine.tick()
        deadlines.append(engine.next_deadline() - clock.now)  # type: ignore[operator]
    assert deadlines == pytest.approx([5.0, 4.0, 3.5])  # 4 * (1 + 0.25 * (2r - 1))
    exact, _, clock2, _ = make(anti_entropy_seconds=4.0)
    exact.start()
    assert exact.next_deadline() == clock2.now + 4.0


def test_channel_synchronizers_jitter_their_anti_entropy(tmp_path: Any) -> None:
    from localsync.channel.synchronizer import ANTI_ENTROPY_JITTER, create_channel_synchronizer

    sync = create_channel_synchronizer(create_mergeable_store(), "jitter", runtime_dir=tmp_path)
    assert sync.engine.anti_entropy_jitter == ANTI_ENTROPY_JITTER > 0


def test_anti_entropy_waits_while_content_diffs_stream_but_not_forever() -> None:
    """Mid-burst hashes always differ; a round then would only make everyone settle hashes
    and pull rows already on their way. Postponed at most MAX_POSTPONED_ROUNDS times."""
    from localsync.sync.engine import MAX_POSTPONED_ROUNDS

    engine, _, clock, store = make(anti_entropy_seconds=1.0, heartbeat_every=100)
    engine.start()
    announced = []
    for n in range(MAX_POSTPONED_ROUNDS + 2):
        store.set_cell("t", "r", "c", n)  # a local change every period: hashes keep moving
        engine.send_content_diff(store.get_transaction_mergeable_changes())
        engine.data_to_send()
        clock.now += 1.0
        engine.tick()
        announced.append([m.message for m in engine.data_to_send()])
    assert announced[:MAX_POSTPONED_ROUNDS] == [[]] * MAX_POSTPONED_ROUNDS
    assert announced[MAX_POSTPONED_ROUNDS] == [CONTENT_HASHES]  # the cap lets one through
    assert engine.anti_entropy_postponed == MAX_POSTPONED_ROUNDS + 1
    # received diffs count as streaming too; once quiet, the next period announces at once
    engine.receive("P", "t9", CONTENT_DIFF, store.get_transaction_mergeable_changes())
    clock.now += 1.0
    engine.tick()
    assert engine.data_to_send() == []
    clock.now += 1.0
    engine.tick()
    assert [m.message for m in engine.data_to_send()] == [CONTENT_HASHES]


def test_anti_entropy_needs_a_positive_period() -> None:
    with pytest.raises(ValueError):
        make(anti_entropy_seconds=0)


def test_anti_entropy_forgets_a_peer_that_went_silent() -> None:
    engine, _, clock, store = make(anti_entropy_seconds=1.0, heartbeat_every=4)
    engine.start()
    engine.send_content_hashes()
    engine.data_to_send()
    engine.receive("gone", "t", CONTENT_HASHES, [1, 2])  # differs, then never heard again
    engine.data_to_send()
    announced = []
    for _ in range(24):
        clock.now += 1.0
        engine.tick()
        announced.append(len([m for m in engine.data_to_send() if m.message == CONTENT_HASHES]))
    # announced every period while the peer might still be there, then heartbeats only
    assert announced[:10] == [1] * 10
    assert announced[-8:] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert store.get_mergeable_content_hashes() == [0, 0]


def test_anti_entropy_probe_pulls_from_every_peer_that_differs() -> None:
    engine, _, clock, store = make(anti_entropy_seconds=1.0, heartbeat_every=1)
    engine.start()
    clock.now += 1.0
    engine.tick()
    out = engine.data_to_send()
    assert [m.message for m in out] == [CONTENT_HASHES, GET_CONTENT_HASHES]
    probe = out[1]
    assert probe.to is None and probe.body == ""
    # every answer counts, not just the first; an agreeing peer costs nothing more
    engine.receive("P", probe.request_id, RESPONSE, store.get_mergeable_content_hashes())
    assert engine.data_to_send() == []
    engine.receive("Q", probe.request_id, RESPONSE, [5, 0])
    [pull] = engine.data_to_send()
    assert (pull.to, pull.message) == ("Q", TABLE_DIFF)
    engine.receive("R", probe.request_id, RESPONSE, [0, 7])
    [pull] = engine.data_to_send()
    assert (pull.to, pull.message) == ("R", VALUE_DIFF)
    # answers to a probe that expired are ignored
    clock.now += 10.0
    engine.tick()
    engine.data_to_send()
    engine.receive("S", probe.request_id, RESPONSE, [5, 0])
    assert engine.data_to_send() == []


def test_a_response_of_the_wrong_shape_fails_the_pull_not_the_engine() -> None:
    engine, errors, _, store = make()
    results = engine_events(engine, PullFinished)
    engine.pull("P", [1, 0])
    [(_, rid, msg, _)] = engine.data_to_send()
    assert msg == TABLE_DIFF
    engine.receive("P", rid, RESPONSE, [7, 8])  # valid message, but content hashes here
    assert results() == [None]
    assert codes(errors) == ["tinybase:14"]
    assert engine.pending_request_count() == 0
    # and the engine still answers
    engine.receive("P", "q", VALUE_DIFF, {})
    assert [m.message for m in engine.data_to_send()] == [RESPONSE]
    assert store.get_tables() == {}


def test_a_pull_whose_peer_leaves_asks_everyone_again_and_finishes_from_another() -> None:
    """A joiner's first answerer exits mid-sequence: the pull starts over, no time-out."""
    engine, errors, clock, store = make()
    engine.request_timeout_seconds = 30.0
    other = create_mergeable_store(unique_id="o", get_now=lambda: 1_700_000_000_000)
    other.set_row("t", "r", {"a": 1})
    results = engine_events(engine, PullFinished)
    engine.pull()
    [(_, rid, _, _)] = engine.data_to_send()
    engine.receive("GONE", rid, RESPONSE, [123, 0])  # the leaver answered first
    [(to, rid2, msg, _)] = engine.data_to_send()
    assert (to, msg) == ("GONE", TABLE_DIFF)
    clock.now += 1.0
    assert engine.awaited_peers(0.5) == {"GONE"} and engine.awaited_peers(2.0) == set()
    engine.peer_left("GONE")
    [(to, rid3, msg, body)] = engine.data_to_send()
    assert (to, msg, body) == (None, GET_CONTENT_HASHES, "")
    assert rid3.split(".")[0] == rid.split(".")[0] and rid3 != rid  # same transaction
    straggler = other.get_mergeable_table_diff(store.get_mergeable_table_hashes())
    engine.receive("GONE", rid2, RESPONSE, straggler)  # a straggler changes nothing
    assert engine.data_to_send() == []
    # another peer carries the pull to the end
    engine.receive("P", rid3, RESPONSE, other.get_mergeable_content_hashes())
    [(to, rid4, msg, body)] = engine.data_to_send()
    assert (to, msg) == ("P", TABLE_DIFF)
    engine.receive("P", rid4, RESPONSE, other.get_mergeable_table_diff(body))
    assert engine.data_to_send() == []  # values agree: done
    [changes] = results()
    store.apply_encoded_mergeable_changes(changes)
    assert store.get_tables() == other.get_tables()
    assert store.get_mergeable_content_hashes() == other.get_mergeable_content_hashes()
    assert errors == [] and engine.pending_request_count() == 0


def test_a_pull_from_a_named_peer_that_leaves_fails_at_once() -> None:
    engine, errors, _, _ = make()
    engine.request_timeout_seconds = 30.0
    results = engine_events(engine, PullFinished)
    engine.pull("GONE", [1, 2])
    [(to, _rid, msg, _)] = engine.data_to_send()
    assert (to, msg) == ("GONE", TABLE_DIFF)
    engine.peer_left("SOMEONE-ELSE")
    assert results() == [] and engine.pending_request_count() == 1
    engine.peer_left("GONE")
    assert results() == [None] and engine.data_to_send() == []
    assert codes(errors) == ["tinybase:3"] and "left" in str(errors[0])
    assert engine.pending_request_count() == 0


def test_a_pull_starts_over_a_bounded_number_of_times() -> None:
    from localsync.sync.engine import MAX_PULL_RESTARTS

    engine, errors, _, _ = make()
    results = engine_events(engine, PullFinished)
    engine.pull()
    [(_, rid, _, _)] = engine.data_to_send()
    for n in range(MAX_PULL_RESTARTS + 1):
        engine.receive(f"L{n}", rid, RESPONSE, [n + 1, 0])
        [(to, _, msg, _)] = engine.data_to_send()
        assert (to, msg) == (f"L{n}", TABLE_DIFF)
        engine.peer_left(f"L{n}")
        out = engine.data_to_send()
        if n < MAX_PULL_RESTARTS:
            [(to, rid, msg, _)] = out
            assert (to, msg) == (None, GET_CONTENT_HASHES) and results() == []
        else:
            assert out == [] and results() == [None] and codes(errors) == ["tinybase:3"]


def test_broadcast_hashes_request_can_have_a_shorter_time_out() -> None:
    engine, _errors, clock, _ = make()
    engine.request_timeout_seconds = 30.0
    engine.broadcast_hashes_timeout_seconds = 2.0
    results = engine_events(engine, PullFinished)
    engine.pull()
    engine.data_to_send()
    assert engine.next_deadline() == clock.now + 2.0
    engine.pull("P", [1, 0])  # directed steps keep the long time-out
    assert engine.data_to_send()[0].message == TABLE_DIFF
    clock.now += 2.0
    engine.tick()
    assert results() == [None] and engine.pending_request_count() == 1
    assert engine.next_deadline() == clock.now - 2.0 + 30.0


def test_repeated_announcements_from_a_peer_start_one_pull_at_a_time() -> None:
    """Anti-entropy re-announces every period while hashes differ: each announcement must
    not add a pull (and another big diff in flight) while one from that peer is running."""
    engine, errors, clock, store = make()
    other = create_mergeable_store(get_now=lambda: 1_700_000_000_000)
    other.set_cell("t", "r", "c", 1)
    engine.start()
    hashes = other.get_mergeable_content_hashes()
    for n in range(3):
        engine.receive("P", f"announce{n}", CONTENT_HASHES, hashes)
    out = engine.data_to_send()
    assert [(o.to, o.message) for o in out] == [("P", TABLE_DIFF)]
    # the running pull finishes (its steps answered): the next announcement pulls again
    rid, body = out[0].request_id, out[0].body
    engine.receive("P", rid, RESPONSE, other.get_mergeable_table_diff(body))
    while steps := engine.data_to_send():
        for step in steps:
            assert step.message != TABLE_DIFF  # (no second pull while this one runs)
            engine.receive("P", step.request_id, RESPONSE, _answer(other, step))
    store.set_cell("t", "r", "c", 0)  # (differs again)
    engine.receive("P", "announce3", CONTENT_HASHES, hashes)
    assert [o.message for o in engine.data_to_send()] == [TABLE_DIFF]
    # a pull that times out also makes way for the next one
    clock.now += 5
    engine.tick()
    engine.receive("P", "announce4", CONTENT_HASHES, hashes)
    assert [o.message for o in engine.data_to_send()] == [TABLE_DIFF]
    assert codes(errors) == ["tinybase:3"]


def _answer(other: Any, step: Outgoing) -> Any:
    from localsync.sync.engine import CELL_DIFF, ROW_DIFF

    if step.message == ROW_DIFF:
        return other.get_mergeable_row_diff(step.body)
    if step.message == CELL_DIFF:
        return other.get_mergeable_cell_diff(step.body)
    if step.message == VALUE_DIFF:
        return other.get_mergeable_value_diff(step.body)
    raise AssertionError(step)
