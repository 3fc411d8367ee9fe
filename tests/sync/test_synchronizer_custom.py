"""create_custom_synchronizer over hand-made transports: loss + anti-entropy, faults, threads."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.engine import CONTENT_DIFF
from localsync.sync.synchronizer import Synchronizer, create_custom_synchronizer
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    await eventually(predicate, timeout, poll=0.002)


class LossyBus:
    """Delivers on a later loop turn; ``drop(message)`` decides what is lost."""

    def __init__(self, drop: Callable[[str, int], bool] = lambda sender, message: False) -> None:
        self.receivers: dict[str, Any] = {}
        self.drop = drop
        self.dropped = 0

    def make(self, store: Any, client_id: str, **kw: Any) -> Synchronizer:
        def send(to: str | None, request_id: str | None, message: int, body: Any) -> None:
            if self.drop(client_id, message):
                self.dropped += 1
                return
            loop = asyncio.get_running_loop()
            for other, receive in list(self.receivers.items()):
                if other != client_id and to in (None, other):
                    loop.call_soon(receive, client_id, request_id, message, body)

        def register(receive: Any) -> None:
            self.receivers[client_id] = receive

        return create_custom_synchronizer(
            store, send, register, lambda: self.receivers.pop(client_id, None), 0.2, **kw
        )


def same(a: Any, b: Any) -> bool:
    return (
        a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
        and a.get_tables() == b.get_tables()
        and a.get_values() == b.get_values()
    )


def test_anti_entropy_repairs_lost_content_diffs() -> None:
    async def main() -> None:
        lose_diffs = {"on": False}
        bus = LossyBus(lambda sender, message: lose_diffs["on"] and message == CONTENT_DIFF)
        a, b = create_mergeable_store(), create_mergeable_store()
        sa = bus.make(a, "A", anti_entropy_seconds=0.05)
        sb = bus.make(b, "B", anti_entropy_seconds=0.05)
        sa._inline_idle = sb._inline_idle = math.inf  # none goes out alone: counts are exact
        await sa.start_sync()
        await sb.start_sync()
        lose_diffs["on"] = True  # from now on every ContentDiff is lost
        for i in range(10):
            a.set_cell("t", f"r{i}", "c", i)
        b.set_value("v", "from b")
        await asyncio.sleep(0)  # the diffs leave on the next loop turn...
        assert bus.dropped == 2  # ...a's ten writes of one turn merged into one
        await wait_for(lambda: same(a, b))
        assert b.get_cell("t", "r9", "c") == 9 and a.get_value("v") == "from b"
        assert sa.engine.anti_entropy_announcements + sb.engine.anti_entropy_announcements > 0
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_without_anti_entropy_the_loss_is_permanent() -> None:
    """Control for the test above: the repair really is anti-entropy's doing."""

    async def main() -> None:
        lose_diffs = {"on": False}
        bus = LossyBus(lambda sender, message: lose_diffs["on"] and message == CONTENT_DIFF)
        a, b = create_mergeable_store(), create_mergeable_store()
        sa, sb = bus.make(a, "A"), bus.make(b, "B")
        await sa.start_sync()
        await sb.start_sync()
        lose_diffs["on"] = True
        a.set_cell("t", "r", "c", 1)
        await asyncio.sleep(0.3)
        assert not b.has_cell("t", "r", "c")
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_failing_send_is_reported_and_sync_goes_on() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        store = create_mergeable_store()
        fail = {"on": True}

        def send(*_: Any) -> None:
            if fail["on"]:
                raise ConnectionError("socket closed")

        sync = create_custom_synchronizer(
            store, send, lambda receive: None, None, 0.05, on_ignored_error=errors.append
        )
        await sync.start_sync()
        kinds = [type(e).__name__ for e in errors]
        assert "ConnectionError" in kinds  # the send failed and was reported...
        assert any(getattr(e, "code", "") == "tinybase:3" for e in errors)  # ...then timed out
        fail["on"] = False
        store.set_cell("t", "r", "c", 1)  # still sends (on the next loop turn)
        await asyncio.sleep(0)
        assert sync.get_synchronizer_stats()["sends"] >= 3
        await sync.destroy()

    asyncio.run(main())


def test_receive_from_another_thread_is_handled_on_the_loop_thread() -> None:
    async def main() -> None:
        store = create_mergeable_store()
        receivers: list[Any] = []
        seen_on: list[str] = []
        sync = create_custom_synchronizer(
            store,
            lambda *m: None,
            receivers.append,
            None,
            0.05,
            on_receive=lambda *m: seen_on.append(threading.current_thread().name),
            on_ignored_error=lambda e: None,
        )
        await sync.start_sync()
        diff = [[{"t": [{"r": [{"c": ["from thread", "NjEtLV-----s4Fx8"]}]}]}], [{}], 1]
        thread = threading.Thread(
            target=receivers[0], args=("peer", "tx", CONTENT_DIFF, diff), name="transport-thread"
        )
        thread.start()
        thread.join()
        await wait_for(lambda: store.has_cell("t", "r", "c"))
        assert seen_on == [threading.current_thread().name]
        await sync.destroy()

    asyncio.run(main())


def test_far_future_changes_from_a_peer_are_ignored_and_reported() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        store = create_mergeable_store()
        receivers: list[Any] = []
        sent: list[int] = []
        sync = create_custom_synchronizer(
            store,
            lambda to, rid, msg, body: sent.append(msg),
            receivers.append,
            None,
            0.05,
            on_ignored_error=errors.append,
        )
        await sync.start_sync()
        errors.clear()
        sent.clear()
        far = [[{"t": [{"r": [{"c": ["x", "zzzzzzzzzzzzzzzz"]}]}]}], [{}], 1]
        receivers[0]("peer", "tx", CONTENT_DIFF, far)
        assert not store.has_tables()
        assert [getattr(e, "code", None) for e in errors] == ["tinybase:1"]
        assert sent == []  # nothing echoed
        # a message that is not even valid is reported as tinybase:14 and counted nowhere else
        receives = sync.get_synchronizer_stats()["receives"]
        receivers[0]("peer", 5, CONTENT_DIFF, far)
        assert getattr(errors[-1], "code", None) == "tinybase:14"
        assert sync.get_synchronizer_stats()["receives"] == receives
        await sync.destroy()

    asyncio.run(main())


def test_on_send_and_on_receive_see_tinybase_arguments() -> None:
    async def main() -> None:
        bus = LossyBus()
        sends: list[tuple[Any, ...]] = []
        receives: list[tuple[Any, ...]] = []
        a, b = create_mergeable_store(), create_mergeable_store()
        sa = bus.make(a, "A", on_send=lambda *m: sends.append(m))
        sb = bus.make(b, "B", on_receive=lambda *m: receives.append(m))
        await sa.start_sync()
        await sb.start_sync()
        await wait_for(lambda: not sa.engine.pending_request_count() and sa.get_status() == 0)
        sends.clear()
        receives.clear()
        a.set_value("v", 1)
        await wait_for(lambda: b.get_value("v") == 1)
        [(to, request_id, message, body)] = [m for m in sends if m[2] == CONTENT_DIFF]
        assert to is None and message == CONTENT_DIFF and len(request_id) == 11
        assert body == [[{}], [{"v": [1, a.get_mergeable_content()[1][0]["v"][1]]}], 1]
        assert ("A", request_id, CONTENT_DIFF, body) in receives
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_destroy_during_the_first_load_does_not_wait_for_the_time_out() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        store = create_mergeable_store()
        sync = create_custom_synchronizer(
            store, lambda *m: None, lambda r: None, None, 3600, on_ignored_error=errors.append
        )
        starting = asyncio.ensure_future(sync.start_sync())
        await wait_for(lambda: sync.engine.pending_request_count() == 1)
        await asyncio.wait_for(sync.destroy(), 10)  # an hour-long request must not hold it
        await asyncio.wait_for(starting, 10)
        assert [str(e) for e in errors] == ["tinybase:3:destroyed"]
        assert not sync.is_syncing() and not sync.is_auto_loading()
        assert sync.get_status() == 0

    asyncio.run(main())
