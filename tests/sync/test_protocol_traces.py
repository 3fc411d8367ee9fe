"""Replay TinyBase 10.0.1's own protocol traces (protocol_traces.json, "bus" cases).

Each store gets a real :class:`Synchronizer` (asyncio) on an in-memory FIFO bus, exactly as the
trace generator did: messages are delivered one at a time in send order, and after every
delivery the event loop is allowed to settle (JavaScript runs its microtasks between two
deliveries). The engines run on a virtual clock that jumps to the next request time-out only
when nothing else can happen, so the replay is deterministic and never waits. We compare
every message (sender, addressee, number, body and the *structure* of the random request
ids), the final contents and the ignored errors.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.engine import SyncEngine
from localsync.sync.synchronizer import Synchronizer
from localsync.sync.transport import FunctionTransport

pytestmark = pytest.mark.timeout(60)

CASES = [
    case
    for case in json.loads(
        (Path(__file__).parents[1] / "conformance" / "protocol_traces.json").read_text("utf-8")
    )
    if case["type"] == "bus"
]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def run_op(store: Any, op: list[Any]) -> None:
    name, *args = op
    if name == "transaction":
        with store.transaction():
            for inner in args[0]:
                run_op(store, inner)
        return
    getattr(store, snake(name))(*args)


class Normaliser:
    """Rename random ids to T<n> / T<n>.R<m> by first appearance, as the vectors do."""

    def __init__(self) -> None:
        self.tx: dict[str, str] = {}
        self.req: dict[str, str] = {}

    def __call__(self, request_id: str | None) -> str | None:
        if request_id is None:
            return None
        tx, _, suffix = request_id.partition(".")
        t = self.tx.setdefault(tx, f"T{len(self.tx) + 1}")
        if not suffix:
            return t
        r = self.req.setdefault(request_id, f"R{len(self.req) + 1}")
        return f"{t}.{r}"


class FifoBus:
    def __init__(self) -> None:
        self.queue: deque[tuple[str, str, str | None, int, Any]] = deque()
        self.receivers: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []

    def transport(self, client_id: str) -> tuple[Any, Any, Any]:
        def send(to: str | None, request_id: str | None, message: int, body: Any) -> None:
            self.log.append(
                {
                    "from": client_id,
                    "to": to,
                    "requestId": request_id,
                    "message": message,
                    "body": json.loads(json.dumps(body)),
                }
            )
            recipients = [to] if to is not None else [c for c in self.receivers if c != client_id]
            for recipient in recipients:
                self.queue.append((recipient, client_id, request_id, message, body))

        def register_receive(receive: Any) -> None:
            self.receivers[client_id] = receive

        return send, register_receive, lambda: self.receivers.pop(client_id, None)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def pump(
        self, running: list[asyncio.Future[Any]], syncs: list[Synchronizer], clock: VirtualClock
    ) -> None:
        while True:
            await self.settle()
            if self.queue:
                to, sender, request_id, message, body = self.queue.popleft()
                receive = self.receivers.get(to)
                if receive is not None:
                    receive(sender, request_id, message, body)
                continue
            if all(task.done() for task in running):
                break
            # only a request time-out can move things on: jump the engines' clock to it
            deadlines = [d for s in syncs if (d := s.engine.next_deadline()) is not None]
            assert deadlines, "stuck: tasks waiting with nothing in flight"
            clock.now = min(deadlines)
            for sync in syncs:
                sync.engine.tick(clock.now)
                sync._after_engine()
        for task in running:
            task.result()


class VirtualClock:
    """The engines' time (seconds): it moves only when the bus is idle, so no test waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def replay(case: dict[str, Any]) -> None:
    now = {"ms": 0}
    clock = VirtualClock()
    bus = FifoBus()
    errors: list[str] = []
    stores: dict[str, Any] = {}
    syncs: dict[str, Synchronizer] = {}
    for name, unique_id in case["stores"].items():
        stores[name] = create_mergeable_store(unique_id=unique_id, get_now=lambda: now["ms"])
        client_id = case["client_ids"][name]
        send, register_receive, destroy = bus.transport(client_id)
        syncs[name] = Synchronizer(
            stores[name],
            FunctionTransport(send, register_receive, destroy),
            case["request_timeout_seconds"],
            on_ignored_error=lambda error: errors.append(getattr(error, "code", repr(error))),
            engine=SyncEngine(
                stores[name],
                request_timeout_seconds=case["request_timeout_seconds"],
                clock=clock,
            ),
        )
    normalise = Normaliser()
    for index, step in enumerate(case["steps"]):
        now["ms"] = step["now"]
        bus.log.clear()
        running: list[asyncio.Future[Any]] = []
        store_name = step["store"]
        if step["action"] == "op":
            run_op(stores[store_name], step["op"])
        elif step["action"] == "startSync":
            running.append(asyncio.ensure_future(syncs[store_name].start_sync()))
        elif step["action"] == "stopSync":
            running.append(asyncio.ensure_future(syncs[store_name].stop_sync()))
        else:  # pragma: no cover - a new kind of step in the vectors
            raise AssertionError(step["action"])
        await bus.pump(running, list(syncs.values()), clock)
        got = [dict(m, requestId=normalise(m["requestId"])) for m in bus.log]
        expected = [
            {k: m[k] for k in ("from", "to", "requestId", "message", "body")}
            for m in step["messages"]
        ]
        assert got == expected, f"step {index} ({step['action']} {store_name})"
        for name, after in step["after"].items():
            store = stores[name]
            assert store.get_mergeable_content() == after["content"], f"step {index} {name}"
            assert store.get_tables() == after["tables"]
            assert store.get_values() == after["values"]
    for sync in syncs.values():
        await sync.destroy()
    assert errors == case["ignored_errors"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bus_trace(case: dict[str, Any]) -> None:
    asyncio.run(replay(case))
