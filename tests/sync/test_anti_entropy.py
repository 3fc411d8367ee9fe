"""Anti-entropy heals any network misbehaviour (hypothesis, simulated clock, engine only).

2-6 replicas write at random while the network drops up to 30% of messages, duplicates and
reorders them. Then the network heals (every message is delivered once, in order) and we count
anti-entropy rounds until every replica holds the same content and the same hashes. The worst
case is printed; with ``LOCALSYNC_RECORD_STATS=1`` it is also written to
``benchmarks/results/anti_entropy_test.json`` (``LOCALSYNC_AE_EXAMPLES=1500`` for a long run).

Each replica drives the sans-I/O :class:`SyncEngine` the way the asyncio Synchronizer does
(apply pushed changes without echoing them, broadcast each local transaction), but all time is
simulated, so nothing here waits.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync import create_mergeable_store
from localsync.sync.engine import PullFinished, SyncEngine

pytestmark = pytest.mark.timeout(600)

BASE_MS = 1_700_000_000_000
PERIOD = 5.0
TIMEOUT = 1.0
MAX_ROUNDS = 6  # the heartbeat (every 4th period) bounds the worst case
STATS: dict[str, Any] = {"examples": 0, "worst_rounds": 0, "rounds_histogram": {}}


class Replica:
    def __init__(self, sim: Sim, client_id: str) -> None:
        self.sim = sim
        self.client_id = client_id
        self.store = create_mergeable_store(
            unique_id=f"store-{client_id}", get_now=lambda: BASE_MS + int(sim.now * 1000)
        )
        self.errors: list[BaseException] = []
        self.engine = SyncEngine(
            self.store,
            request_timeout_seconds=TIMEOUT,
            clock=lambda: sim.now,
            anti_entropy_seconds=PERIOD,
            on_ignored_error=self.errors.append,
        )
        self.applying = False
        self.store.add_did_finish_transaction_listener(self.on_transaction)

    def handle_events(self) -> None:
        """What the Synchronizer does with the engine's events: apply, or reload."""
        for event in self.engine.events_received():
            if isinstance(event, PullFinished):
                if event.changes is not None:
                    self.pushed(event.changes)
            elif event.changes is None:
                self.load()
            else:
                self.pushed(event.changes)

    def pushed(self, changes: Any) -> None:
        self.applying = True
        try:
            self.store.apply_encoded_mergeable_changes(changes)
        finally:
            self.applying = False

    def load(self) -> None:
        self.engine.pull()

    def on_transaction(self, store: Any) -> None:
        if self.applying:
            return
        changes = store.get_encoded_transaction_mergeable_changes(False)
        if changes[0][0] or changes[1][0]:
            self.engine.send_content_diff(changes)

    def start(self) -> None:
        self.engine.start()
        self.load()
        self.engine.send_content_hashes()


class Sim:
    def __init__(self, n: int, rnd: random.Random, drop: float, dup: float) -> None:
        self.now = 0.0
        self.rnd = rnd
        self.drop = drop
        self.dup = dup
        self.reorder = True
        self.flight: list[tuple[str, str, str | None, int, Any]] = []
        self.replicas = {f"P{i}": Replica(self, f"P{i}") for i in range(n)}
        self.delivered = 0

    def flush(self) -> None:
        for replica in self.replicas.values():
            for to, request_id, message, body in replica.engine.data_to_send():
                recipients = (
                    [to] if to is not None else [c for c in self.replicas if c != replica.client_id]
                )
                for recipient in recipients:
                    if self.rnd.random() < self.drop:
                        continue
                    copies = 2 if self.rnd.random() < self.dup else 1
                    for _ in range(copies):
                        self.flight.append(
                            (recipient, replica.client_id, request_id, message, body)
                        )

    def deliver_one(self) -> None:
        index = self.rnd.randrange(len(self.flight)) if self.reorder else 0
        to, sender, request_id, message, body = self.flight.pop(index)
        self.replicas[to].engine.receive(sender, request_id, message, body)
        self.replicas[to].handle_events()
        self.delivered += 1
        self.flush()

    def advance_to(self, when: float) -> None:
        self.now = max(self.now, when)
        for replica in self.replicas.values():
            replica.engine.tick(self.now)
            replica.handle_events()
        self.flush()

    def pending_deadline(self) -> float | None:
        deadlines = [
            min(d for d, rid in r.engine._deadlines if rid in r.engine._pending)
            for r in self.replicas.values()
            if r.engine.pending_request_count()
        ]
        return min(deadlines) if deadlines else None

    def settle(self, limit: int = 100_000) -> None:
        """Deliver everything, letting overdue requests time out, until nothing moves."""
        for _ in range(limit):
            if self.flight:
                self.deliver_one()
                continue
            deadline = self.pending_deadline()
            if deadline is None:
                return
            self.advance_to(deadline)
        raise AssertionError("network never went quiet")

    def converged(self) -> bool:
        replicas = list(self.replicas.values())
        first = replicas[0].store
        hashes = first.get_mergeable_content_hashes()
        content = first.get_mergeable_content()
        return all(
            r.store.get_mergeable_content_hashes() == hashes
            and r.store.get_mergeable_content() == content
            for r in replicas[1:]
        )


IDS = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(
    st.integers(-5, 5),
    # U+FFFC and U+FFFD are reserved by TinyBase's encoding (the store rejects them)
    st.text(st.characters(exclude_characters="\ufffc\ufffd"), max_size=3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    # object and array cells travel encoded ("\ufffd" + JSON); index-like keys test key order
    st.dictionaries(st.sampled_from(["x", "1", "y"]), st.integers(0, 3), max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)
OPS = st.tuples(
    st.integers(0, 5),  # replica (modulo n)
    st.sampled_from(["set_cell", "del_cell", "set_value", "del_value", "del_row"]),
    IDS,
    IDS,
    IDS,
    SCALARS,
    st.integers(0, 6),  # messages delivered afterwards
    st.floats(0, 3),  # seconds passing before the op
)


def apply_op(sim: Sim, op: tuple[Any, ...]) -> None:
    index, kind, t, r, c, value, deliveries, dt = op
    sim.advance_to(sim.now + dt)
    replica = list(sim.replicas.values())[index % len(sim.replicas)]
    store = replica.store
    if kind == "set_cell":
        store.set_cell("t" + t, r, c, value)
    elif kind == "del_cell":
        store.del_cell("t" + t, r, c)
    elif kind == "set_value":
        store.set_value(c, value)
    elif kind == "del_value":
        store.del_value(c)
    else:
        store.del_row("t" + t, r)
    sim.flush()
    for _ in range(deliveries):
        if sim.flight:
            sim.deliver_one()


@pytest.fixture(scope="module", autouse=True)
def record_stats() -> Any:
    yield
    print(f"\nanti-entropy: {STATS}")
    if os.environ.get("LOCALSYNC_RECORD_STATS") == "1":
        out = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "anti_entropy_test.json").write_text(json.dumps(STATS, indent=2) + "\n")


@settings(
    max_examples=int(os.environ.get("LOCALSYNC_AE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.integers(2, 6),
    drop=st.floats(0, 0.3),
    dup=st.floats(0, 0.3),
    ops=st.lists(OPS, min_size=1, max_size=25),
    rnd=st.randoms(use_true_random=False),
)
def test_replicas_converge_after_healing(
    n: int, drop: float, dup: float, ops: list[tuple[Any, ...]], rnd: random.Random
) -> None:
    sim = Sim(n, rnd, drop, dup)
    for replica in sim.replicas.values():
        replica.start()
    sim.flush()
    for op in ops:
        apply_op(sim, op)
    # heal: nothing lost or duplicated any more, FIFO delivery
    sim.drop = sim.dup = 0.0
    sim.reorder = False
    sim.settle()
    rounds = 0
    while not sim.converged():
        rounds += 1
        assert rounds <= MAX_ROUNDS, "anti-entropy did not converge"
        sim.advance_to(sim.now + PERIOD)
        sim.settle()
    STATS["examples"] += 1
    STATS["worst_rounds"] = max(STATS["worst_rounds"], rounds)
    hist = STATS["rounds_histogram"]
    hist[str(rounds)] = hist.get(str(rounds), 0) + 1
    # and once converged, a quiet network stays quiet apart from heartbeats
    before = sim.delivered
    sim.advance_to(sim.now + PERIOD)
    sim.settle()
    assert sim.converged()
    assert sim.delivered - before <= 3 * n * (n - 1)  # announcement, probe, answers
    # nothing invalid was ever sent between our own engines
    for replica in sim.replicas.values():
        assert not [e for e in replica.errors if getattr(e, "code", "") == "tinybase:14"]


def test_no_anti_entropy_means_a_lost_message_stays_lost() -> None:
    """The control experiment: without anti-entropy, a dropped ContentDiff is never repaired."""
    sim = Sim(2, random.Random(1), 0.0, 0.0)
    for replica in sim.replicas.values():
        replica.engine.anti_entropy_seconds = None
        replica.start()
    sim.settle()
    sim.drop = 1.0
    sim.replicas["P0"].store.set_cell("t", "r", "c", 1)
    sim.flush()
    sim.drop = 0.0
    for _ in range(5):
        sim.advance_to(sim.now + PERIOD)
        sim.settle()
    assert not sim.converged()
    for replica in sim.replicas.values():
        replica.engine.anti_entropy_seconds = PERIOD
        replica.engine.start()
    sim.advance_to(sim.now + PERIOD)
    sim.settle()
    assert sim.converged()
