"""Local synchronizers with real asyncio: convergence, start/stop, status, no echoes, threads."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.blocking import BlockingSynchronizer, blocking
from localsync.sync.engine import CONTENT_DIFF, CONTENT_HASHES
from localsync.sync.local import create_local_synchronizer
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    await eventually(predicate, timeout, poll=0.002)


def same(a: Any, b: Any) -> bool:
    return (
        a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
        and a.get_tables() == b.get_tables()
        and a.get_values() == b.get_values()
    )


def test_two_stores_converge_both_ways() -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        a.set_tables({"pets": {"fido": {"species": "dog", "legs": 4}}})
        a.set_value("open", True)
        b.set_row("pets", "felix", {"species": "cat", "meta": {"lives": 9}})
        sa, sb = create_local_synchronizer(a), create_local_synchronizer(b)
        await sa.start_sync()
        await sb.start_sync()
        await wait_for(lambda: same(a, b))
        assert a.get_row("pets", "felix") == {"species": "cat", "meta": {"lives": 9}}
        assert b.get_value("open") is True
        # live changes, both directions, including deletions and a transaction
        b.set_cell("pets", "fido", "legs", 3)
        with a.transaction():
            a.del_row("pets", "felix")
            a.set_value("count", 1)
        await wait_for(lambda: same(a, b) and b.get_value("count") == 1)
        assert a.get_cell("pets", "fido", "legs") == 3
        assert not b.has_row("pets", "felix")
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_received_changes_are_not_echoed() -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sent_by_a: list[int] = []
        sent_by_b: list[int] = []
        sa = create_local_synchronizer(a, on_send=lambda to, rid, msg, body: sent_by_a.append(msg))
        sb = create_local_synchronizer(b, on_send=lambda to, rid, msg, body: sent_by_b.append(msg))
        await sa.start_sync()
        await sb.start_sync()
        sa._inline_idle = math.inf  # no write goes out alone: the counts are exact
        await wait_for(lambda: sa.get_status() == 0 and sb.get_status() == 0)
        sent_by_a.clear()
        sent_by_b.clear()
        receives_before = sb.get_synchronizer_stats()["receives"]
        for i in range(20):
            a.set_cell("t", f"r{i}", "c", i)
            if i % 5 == 4:
                await asyncio.sleep(0)  # four loop turns: four coalesced diffs
        await wait_for(lambda: same(a, b) and len(b.get_row_ids("t")) == 20)
        await asyncio.sleep(0.02)
        assert CONTENT_DIFF not in sent_by_b
        assert sent_by_a.count(CONTENT_DIFF) == 4
        assert sa.coalesced_transactions == 16
        assert sb.get_synchronizer_stats()["receives"] - receives_before >= 4
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_stop_and_restart_catches_up_and_status_is_reported() -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sa, sb = create_local_synchronizer(a), create_local_synchronizer(b)
        statuses: list[int] = []
        sb.add_status_listener(lambda persister, status: statuses.append(status))
        await sa.start_sync()
        await sb.start_sync()
        assert sb.is_syncing() and sb.is_auto_loading() and sb.is_auto_saving()
        assert statuses[:4] == [1, 0, 2, 0]  # load from peers, then announce our hashes
        # let A finish pulling after B's announcement: a stopped synchronizer still answers
        # diff requests (as TinyBase's does), so a pull in flight would carry later writes
        await asyncio.sleep(0.05)
        await wait_for(lambda: not sa.engine.pending_request_count())
        await sb.stop_sync()
        assert not sb.is_syncing() and not sb.is_auto_saving()
        a.set_cell("t", "r", "c", "while stopped")
        b.set_cell("t", "r", "d", "b while stopped")
        await asyncio.sleep(0.05)
        assert not b.has_cell("t", "r", "c")
        assert not a.has_cell("t", "r", "d")
        await sb.start_sync()
        await wait_for(lambda: same(a, b))
        assert b.get_cell("t", "r", "c") == "while stopped"
        assert a.get_cell("t", "r", "d") == "b while stopped"
        assert sb.get_stats()["loads"] >= 2 and sb.get_stats()["saves"] >= 2
        assert statuses[-1] == 0
        await sa.destroy()
        await sb.destroy()
        await sb.destroy()  # idempotent

    asyncio.run(main())


def test_alone_the_first_load_times_out_with_tinybase_3() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        store = create_mergeable_store()
        sync = create_local_synchronizer(store, on_ignored_error=errors.append)
        await sync.start_sync(initial_content=[{"t": {"r": {"c": 1}}}, {"v": 2}])
        assert [getattr(e, "code", None) for e in errors] == ["tinybase:3"]
        # nobody had anything: the initial content is used, as in TinyBase
        assert store.get_tables() == {"t": {"r": {"c": 1}}}
        assert store.get_values() == {"v": 2}
        await sync.destroy()

    asyncio.run(main())


def test_destroyed_synchronizer_leaves_the_others_working() -> None:
    async def main() -> None:
        stores = [create_mergeable_store() for _ in range(3)]
        syncs = [create_local_synchronizer(s) for s in stores]
        for sync in syncs:
            await sync.start_sync()
        await syncs[1].destroy()
        stores[0].set_value("x", 1)
        await wait_for(lambda: stores[2].get_value("x") == 1)
        await asyncio.sleep(0.02)
        assert not stores[1].has_value("x")
        for sync in (syncs[0], syncs[2]):
            await sync.destroy()

    asyncio.run(main())


def test_hashes_are_announced_once_on_start() -> None:
    async def main() -> None:
        store = create_mergeable_store()
        sent: list[int] = []
        peer_store = create_mergeable_store()
        peer = create_local_synchronizer(peer_store)
        await peer.start_sync()
        sync = create_local_synchronizer(store, on_send=lambda *m: sent.append(m[2]))
        await sync.start_sync()
        assert sent.count(CONTENT_HASHES) == 1
        await sync.destroy()
        await peer.destroy()

    asyncio.run(main())


def test_blocking_facade_writes_from_a_plain_thread() -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    with (
        BlockingSynchronizer(create_local_synchronizer, a, timeout=10) as sa,
        blocking(create_local_synchronizer, b, loop=sa.background_loop, timeout=10) as sb,
    ):
        assert threading.current_thread() is not sa.background_loop.thread
        for i in range(50):
            a.set_cell("t", str(i), "n", i)  # this thread, not the loop's
        b.set_value("from_b", "hi")

        async def converged() -> bool:
            for _ in range(2000):
                if same(a, b) and len(b.get_row_ids("t")) == 50 and a.has_value("from_b"):
                    return True
                await asyncio.sleep(0.005)
            return False

        assert sa.background_loop.run(converged(), timeout=20)
        assert sb.wait_until_idle(timeout=10)
        assert sa.get_status() == 0
        assert sb.get_synchronizer_stats()["receives"] > 0
        assert sb.is_syncing()  # forwarded to the synchronizer, on the loop thread
    assert not sa.background_loop.thread.is_alive()


def test_many_writer_threads_while_syncing() -> None:
    """Transactions on several threads at once: each is broadcast once, none is lost."""
    a, b = create_mergeable_store(), create_mergeable_store()
    sent: list[int] = []
    with (
        blocking(
            create_local_synchronizer,
            a,
            on_send=lambda to, request_id, message, body: sent.append(message),
            timeout=10,
        ) as sa,
        blocking(create_local_synchronizer, b, loop=sa.background_loop, timeout=10) as sb,
    ):

        def writer(n: int) -> None:
            for i in range(100):
                with a.transaction():
                    a.set_cell("t", f"{n}-{i}", "n", i)
                    a.set_value(f"last-{n}", i)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        b.set_value("concurrent", True)  # and one on the main thread, on the other store
        for thread in threads:
            thread.join(30)

        async def converged() -> bool:
            for _ in range(4000):
                if len(b.get_row_ids("t")) == 400 and same(a, b):
                    return True
                await asyncio.sleep(0.005)
            return False

        assert sa.background_loop.run(converged(), timeout=30)
        assert a.get_value("concurrent") is True
        assert {b.get_value(f"last-{n}") for n in range(4)} == {99}
        # every transaction went out exactly once: alone, or merged into another's diff
        diffs = [m for m in sent if m == 3]
        assert len(diffs) + sa.synchronizer.coalesced_transactions == 400
        assert sb.get_status() == 0
