"""Coalesced ContentDiffs: transactions waiting for the loop travel together; nothing else changes.

The bursts here are made deterministic by holding the loop thread busy (a callback that waits
on an Event) while another thread writes: every transaction is then known to be waiting when
the loop resumes, so message counts can be asserted exactly, without timing.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from localsync import create_custom_synchronizer, create_mergeable_store
from localsync.core.codec import UNDEFINED
from localsync.sync import event_loop
from localsync.sync.blocking import BlockingSynchronizer, blocking
from localsync.sync.coalesce import coalesce_changes
from localsync.sync.engine import CONTENT_DIFF, is_protocol_message_valid
from localsync.sync.local import create_local_synchronizer

pytestmark = pytest.mark.timeout(60)


def same(a: Any, b: Any) -> bool:
    return (
        a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
        and a.get_mergeable_content() == b.get_mergeable_content()
        and a.get_tables() == b.get_tables()
        and a.get_values() == b.get_values()
    )


def random_transaction(store: Any, rng: random.Random) -> None:
    """A transaction of a few sets and deletions over a small id space (so they collide)."""
    with store.transaction():
        for _ in range(rng.randint(1, 4)):
            table, row = f"t{rng.randint(0, 1)}", f"r{rng.randint(0, 3)}"
            cell, value = f"c{rng.randint(0, 2)}", f"v{rng.randint(0, 1)}"
            action = rng.randint(0, 9)
            if action < 5:
                store.set_cell(table, row, cell, rng.choice([1, 2.5, "x", True, {"k": [1]}]))
            elif action == 5:
                store.del_cell(table, row, cell)
            elif action == 6:
                store.del_row(table, row)
            elif action == 7:
                store.set_value(value, rng.randint(0, 9))
            elif action == 8:
                store.del_value(value)
            else:
                store.set_row(table, row, {"a": rng.randint(0, 9), "b": "y"})


def recorded_transactions(seed: int, count: int) -> tuple[Any, list[Any]]:
    writer = create_mergeable_store()
    recorded: list[Any] = []
    writer.add_did_finish_transaction_listener(
        lambda s: recorded.append(s.get_encoded_transaction_mergeable_changes())
    )
    rng = random.Random(seed)
    for _ in range(count):
        random_transaction(writer, rng)
    return writer, [c for c in recorded if c[0][0] or c[1][0]]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_stamps", [1, 5, 4096])
def test_merged_diffs_leave_a_receiver_as_the_separate_ones_do(seed: int, max_stamps: int) -> None:
    writer, batch = recorded_transactions(seed, 60)
    before = copy.deepcopy(batch)
    merged = coalesce_changes(batch, max_stamps=max_stamps)
    assert batch == before  # inputs untouched: an on_send observer may still hold them
    if max_stamps == 4096:
        assert len(merged) == 1
    else:
        assert 1 <= len(merged) <= len(batch)
    one_by_one, coalesced = create_mergeable_store(), create_mergeable_store()
    for changes in batch:
        one_by_one.apply_encoded_mergeable_changes(changes)
    for body in merged:
        assert is_protocol_message_valid("id", CONTENT_DIFF, body)
        assert len(body) == 3 and body[2] == 1
        coalesced.apply_encoded_mergeable_changes(body)
    assert same(one_by_one, writer)
    assert same(coalesced, writer)


def test_the_newest_stamp_wins_including_deletions() -> None:
    store = create_mergeable_store()
    recorded: list[Any] = []
    store.add_did_finish_transaction_listener(
        lambda s: recorded.append(s.get_encoded_transaction_mergeable_changes())
    )
    store.set_cell("t", "r", "c", 1)
    store.set_value("v", 1)
    store.del_cell("t", "r", "c")
    store.del_value("v")
    store.set_cell("t", "r", "d", 2)
    (merged,) = coalesce_changes(recorded)
    cells = merged[0][0]["t"][0]["r"][0]
    assert cells["c"] == recorded[2][0][0]["t"][0]["r"][0]["c"]
    assert cells["c"][0] == UNDEFINED
    assert cells["d"] == recorded[4][0][0]["t"][0]["r"][0]["d"]
    assert merged[1][0]["v"] == recorded[3][1][0]["v"]

    # row, table and tables HLCs (when the changes carry any): the latest of them all
    def hlc(stamp: Any) -> str:
        return stamp[1] if len(stamp) > 1 else ""

    with_rows = [c for c in recorded if c[0][0]]
    assert hlc(merged[0][0]["t"][0]["r"]) == max(hlc(c[0][0]["t"][0]["r"]) for c in with_rows)
    assert hlc(merged[0][0]["t"]) == max(hlc(c[0][0]["t"]) for c in with_rows)
    assert hlc(merged[0]) == max(hlc(c[0]) for c in recorded)
    assert hlc(merged[1]) == max(hlc(c[1]) for c in recorded)


def test_caps_split_a_run_but_never_a_transaction() -> None:
    _, batch = recorded_transactions(3, 40)
    merged = coalesce_changes(batch, max_stamps=3)
    sizes = [sum(len(r[0]) for t in b[0][0].values() for r in t[0].values()) for b in merged]
    singles = {id(c) for c in batch}
    for body, stamps in zip(merged, sizes, strict=True):
        # a body over the cap is one transaction passed through as it was
        assert stamps + len(body[1][0]) <= 3 or id(body) in singles
    assert coalesce_changes(batch[:1]) == batch[:1]
    assert coalesce_changes([]) == []
    tiny = coalesce_changes(batch, max_bytes=1)
    assert len(tiny) == len(batch)  # every transaction is over the byte cap: none merged


def touched_transactions(seed: int, count: int) -> tuple[Any, list[Any], list[Any]]:
    """A writer, what each of its transactions touched, and each one's own change record."""
    writer = create_mergeable_store()
    touched: list[Any] = []
    recorded: list[Any] = []

    def listener(store: Any) -> None:
        touched.append(store.get_transaction_touched())
        recorded.append(store.get_encoded_transaction_mergeable_changes())

    writer.add_did_finish_transaction_listener(listener)
    rng = random.Random(seed)
    for _ in range(count):
        random_transaction(writer, rng)
    return (
        writer,
        [t for t in touched if t[0] or t[1]],
        [c for c in recorded if c[0][0] or c[1][0]],
    )


def body_keys(body: Any) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = {
        (t, r, c) for t, table in body[0][0].items() for r, row in table[0].items() for c in row[0]
    }
    return keys | {(v,) for v in body[1][0]}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_stamps", [1, 5, 4096])
def test_bodies_built_from_what_transactions_touched_equal_the_merged_records(
    seed: int, max_stamps: int
) -> None:
    """The writer's path: queue what each transaction touched, build the diffs at once."""
    writer, touched, recorded = touched_transactions(seed, 60)
    bodies = writer.get_encoded_mergeable_changes_of(touched, max_stamps, 1 << 20)
    if max_stamps == 4096:
        assert len(bodies) == 1
        # the same diff the per-transaction records merge into (same stamps, same HLCs)
        assert bodies == coalesce_changes(recorded)
    receiver = create_mergeable_store()
    for body in bodies:
        assert is_protocol_message_valid("id", CONTENT_DIFF, body)
        receiver.apply_encoded_mergeable_changes(body)
    assert same(receiver, writer)
    # bodies are cut between transactions only: each transaction's stamps travel together
    # (a cell touched again later may travel again in a later body)
    for cells, values in touched:
        wanted = set(cells) | {(v,) for v in values}
        assert any(wanted <= body_keys(body) for body in bodies)
    if max_stamps == 1:
        assert len(bodies) == len(touched)


def test_built_bodies_carry_object_cells_values_and_deletions() -> None:
    writer = create_mergeable_store()
    touched: list[Any] = []
    writer.add_did_finish_transaction_listener(
        lambda s: touched.append(s.get_transaction_touched())
    )
    writer.set_cell("t", "r", "obj", {"k": [1, 2]})
    writer.set_cell("t", "r", "gone", 1)
    writer.del_cell("t", "r", "gone")
    writer.set_value("v", "x")
    [body] = writer.get_encoded_mergeable_changes_of(touched, 4096, 1 << 20)
    assert body[0][0]["t"][0]["r"][0]["gone"][0] == UNDEFINED  # a deletion is a stamp too
    receiver = create_mergeable_store()
    receiver.apply_encoded_mergeable_changes(body)
    assert receiver.get_cell("t", "r", "obj") == {"k": [1, 2]}
    assert not receiver.has_cell("t", "r", "gone") and receiver.get_value("v") == "x"
    assert same(receiver, writer)


@contextmanager
def loop_held(sync: BlockingSynchronizer) -> Iterator[None]:
    """Keep the synchronizer's loop thread busy for the duration of the block."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    sync.background_loop.loop.call_soon_threadsafe(hold)
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()


def recorder(log: list[tuple[int, Any]]) -> Callable[..., None]:
    def on_send(to: str | None, request_id: str | None, message: int, body: Any) -> None:
        log.append((message, body))

    return on_send


def assert_no_echo(diffs: list[Any], own: str) -> None:
    """Every cell and value stamp in ``diffs`` was made by the clock of client ``own``."""
    for body in diffs:
        for table in body[0][0].values():
            for row in table[0].values():
                assert {stamp[1][11:] for stamp in row[0].values()} == {own}
        assert {stamp[1][11:] for stamp in body[1][0].values()} <= {own}


def converge(sync: BlockingSynchronizer, a: Any, b: Any) -> None:
    async def wait() -> bool:
        for _ in range(4000):
            if same(a, b):
                return True
            await asyncio.sleep(0.002)
        return False

    assert sync.background_loop.run(wait(), timeout=30)


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_burst_from_a_thread_is_one_diff(coalesce: bool) -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    sent: list[tuple[int, Any]] = []
    with (
        blocking(create_local_synchronizer, a, on_send=recorder(sent), timeout=10) as sa,
        blocking(create_local_synchronizer, b, loop=sa.background_loop, timeout=10) as sb,
    ):
        sa.synchronizer._coalesce_saves = coalesce  # the private switch the benchmark uses
        sent.clear()
        received_before = sb.get_synchronizer_stats()["receives"]
        with loop_held(sa):
            for i in range(200):
                a.set_row("t", f"r{i}", {"n": i, "s": f"row {i}"})
            a.set_value("done", True)
        converge(sa, a, b)
        diffs = [body for message, body in sent if message == CONTENT_DIFF]
        if coalesce:
            assert len(diffs) == 1  # 401 stamps: far below the cap
            assert len(diffs[0][0][0]["t"][0]) == 200
            assert sa.synchronizer.coalesced_transactions == 200
            assert sb.get_synchronizer_stats()["receives"] - received_before == 1
        else:
            assert len(diffs) == 201
            assert sa.synchronizer.coalesced_transactions == 0
        assert sb.get_status() == 0


def test_a_lone_write_from_a_thread_leaves_on_the_next_loop_turn() -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    sent: list[tuple[int, Any]] = []
    with (
        blocking(create_local_synchronizer, a, on_send=recorder(sent), timeout=10) as sa,
        blocking(create_local_synchronizer, b, loop=sa.background_loop, timeout=10),
    ):
        for i in range(3):
            sent.clear()
            a.set_cell("t", "r", "c", i)
            # the write handed itself to the loop before this call did, so it ran first:
            # the diff is already out, not waiting for company or a timer
            seen = sa.call(lambda: [m for m, _ in sent])
            assert seen == [CONTENT_DIFF]
            assert sent[0][1][0][0]["t"][0]["r"][0]["c"][0] == i
        converge(sa, a, b)


def test_writes_queued_behind_a_load_are_merged_and_sent_after_it() -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        b.set_row("t", "from-b", {"x": 1})
        sent: list[tuple[int, Any]] = []
        sb = await create_local_synchronizer(b).start_sync()
        sa = await create_local_synchronizer(a, on_send=recorder(sent)).start_sync()
        assert same(a, b)
        b.set_row("t", "from-b", {"x": 2})
        loading = asyncio.ensure_future(sa.load())  # an explicit pull, run on the schedule
        for _ in range(100):
            if sa.get_status() == 1:
                break
            await asyncio.sleep(0)
        assert sa.get_status() == 1  # the pull is in flight
        sent.clear()
        for i in range(5):
            a.set_cell("t", "from-a", f"c{i}", i)  # all in this one loop turn
        assert not [m for m, _ in sent if m == CONTENT_DIFF]  # they wait behind the load
        await loading
        await sa.wait_until_idle(timeout=10)
        for _ in range(2000):
            if same(a, b):
                break
            await asyncio.sleep(0.002)
        assert same(a, b)
        diffs = [body for message, body in sent if message == CONTENT_DIFF]
        # b's row arrived by the pull and was not echoed; a's five writes went as one diff
        assert len(diffs) == 1
        assert set(diffs[0][0][0]["t"][0]) == {"from-a"}
        assert len(diffs[0][0][0]["t"][0]["from-a"][0]) == 5
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_interleaved_local_and_remote_bursts_converge_without_echoes() -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    sent_a: list[tuple[int, Any]] = []
    sent_b: list[tuple[int, Any]] = []
    with (
        blocking(create_local_synchronizer, a, on_send=recorder(sent_a), timeout=10) as sa,
        blocking(
            create_local_synchronizer,
            b,
            on_send=recorder(sent_b),
            loop=sa.background_loop,
            timeout=10,
        ) as sb,
    ):
        sent_a.clear()
        sent_b.clear()
        rng_a, rng_b = random.Random(1), random.Random(2)

        def write_b() -> None:
            for _ in range(150):
                random_transaction(b, rng_b)

        for round_ in range(4):
            thread = threading.Thread(target=write_b)
            if round_ % 2:
                with loop_held(sa):  # a burst on each side, b's from another thread
                    thread.start()
                    for _ in range(150):
                        random_transaction(a, rng_a)
                    thread.join(30)
            else:
                thread.start()
                for _ in range(150):
                    random_transaction(a, rng_a)
                thread.join(30)
            # on-loop writes in between, applied with the peers' diffs in flight
            sa.call(lambda: random_transaction(a, rng_a))
        converge(sa, a, b)
        for log, sync in ((sent_a, sa), (sent_b, sb)):
            diffs = [body for message, body in log if message == CONTENT_DIFF]
            assert_no_echo(diffs, sync.synchronizer.get_store().get_client_id())
            assert len(diffs) + sync.synchronizer.coalesced_transactions <= 4 * 150 + 4
        assert sa.synchronizer.coalesced_transactions > 0
        assert sb.synchronizer.coalesced_transactions > 0


def test_a_write_after_a_quiet_spell_leaves_at_once_and_the_ones_behind_it_together() -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sent: list[tuple[int, Any]] = []
        sb = await create_local_synchronizer(b).start_sync()
        sa = await create_local_synchronizer(a, on_send=recorder(sent)).start_sync()
        await sa.wait_until_idle(timeout=10)
        quiet = 0.3  # (wide, so that a loaded machine writes ten cells well within it)
        sa._inline_idle = quiet
        await asyncio.sleep(quiet * 1.2)
        sent.clear()
        loop = asyncio.get_running_loop()
        scheduled: list[Any] = []
        call_soon = loop.call_soon
        loop.call_soon = lambda fn, *args, **kw: (  # type: ignore[method-assign]
            scheduled.append(fn),
            call_soon(fn, *args, **kw),
        )[1]
        try:
            a.set_cell("t", "r", "c", 1)
        finally:
            del loop.call_soon  # type: ignore[method-assign]
        # a lone write is sent from inside the transaction listener, as TinyBase does, and
        # leaves its synchronizer nothing to run afterwards (no extra loop iteration for the
        # writer; the local transport's own delivery callback is all that was scheduled)
        assert [m for m, _ in sent] == [CONTENT_DIFF]
        assert [fn for fn in scheduled if getattr(fn, "__self__", None) is sa] == []
        assert scheduled
        await asyncio.sleep(quiet * 1.2)
        sent.clear()
        for i in range(10):
            a.set_cell("t", "r", f"c{i}", i)
        assert [m for m, _ in sent] == [CONTENT_DIFF]  # the first write after the quiet...
        assert list(sent[0][1][0][0]["t"][0]["r"][0]) == ["c0"]
        await asyncio.sleep(0)
        # ...then the nine right behind it in one diff on the next turn
        assert [m for m, _ in sent] == [CONTENT_DIFF, CONTENT_DIFF]
        assert list(sent[1][1][0][0]["t"][0]["r"][0]) == [f"c{i}" for i in range(1, 10)]
        # a writer that sent within the idle time keeps one merged diff per turn
        sa._inline_idle = 60.0
        await asyncio.sleep(0)
        sent.clear()
        for i in range(10):
            a.set_cell("t", "r2", f"c{i}", i)
        assert sent == []
        await asyncio.sleep(0)
        assert [m for m, _ in sent] == [CONTENT_DIFF]
        assert len(sent[0][1][0][0]["t"][0]["r2"][0]) == 10
        for _ in range(2000):
            if same(a, b):
                break
            await asyncio.sleep(0.002)
        assert same(a, b)
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


@pytest.mark.parametrize("ending", ["stop_sync", "destroy"])
def test_writes_just_before_stop_or_destroy_still_go_out(ending: str) -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sent: list[tuple[int, Any]] = []
        sb = await create_local_synchronizer(b).start_sync()
        sa = await create_local_synchronizer(a, on_send=recorder(sent)).start_sync()
        await sa.wait_until_idle(timeout=10)
        sent.clear()
        a.set_row("t", "r", {"x": 1})
        a.set_value("v", 2)
        await getattr(sa, ending)()  # in the same turn as the writes
        # the first at once, the second (queued for the next turn) before stopping
        assert [m for m, _ in sent] == [CONTENT_DIFF, CONTENT_DIFF]
        assert sent[1][1][1][0] == {"v": sent[1][1][1][0]["v"]} and not sent[1][1][0][0]
        for _ in range(2000):
            if same(a, b):
                break
            await asyncio.sleep(0.002)
        assert same(a, b)
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


async def started_pair(sent: list[tuple[int, Any]]) -> tuple[Any, Any, Any, Any]:
    """Two stores on started local synchronizers (the first's sends recorded), idle."""
    a, b = create_mergeable_store(), create_mergeable_store()
    sb = await create_local_synchronizer(b).start_sync()
    sa = await create_local_synchronizer(a, on_send=recorder(sent)).start_sync()
    await sa.wait_until_idle(timeout=10)
    return a, b, sa, sb


async def until_same(a: Any, b: Any) -> bool:
    for _ in range(2000):
        if same(a, b):
            return True
        await asyncio.sleep(0.002)
    return False


def test_a_burst_that_never_yields_streams_full_diffs_in_order_while_it_runs() -> None:
    async def main() -> None:
        sent: list[tuple[int, Any]] = []
        a, b, sa, sb = await started_pair(sent)
        sa._inline_idle = math.inf  # (no write goes out alone: the counts are exact)
        sa._flush_stamps = 30  # three 10-cell rows make a full diff
        sent.clear()
        seen_during: list[int] = []
        for i in range(10):  # the loop never runs in between
            a.set_row("t", f"r{i}", {f"c{j}": i * 10 + j for j in range(10)})
            seen_during.append(len(sent))
        # every fourth row finds three queued (30 stamps) and sends them before queueing itself
        assert seen_during == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
        await asyncio.sleep(0)  # the loop's turn sends the last row
        assert [m for m, _ in sent] == [CONTENT_DIFF] * 4
        rows = [list(body[0][0]["t"][0]) for _, body in sent]
        assert rows == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6", "r7", "r8"], ["r9"]]
        assert await until_same(a, b)
        await sa.destroy()
        await sb.destroy()

    asyncio.run(main())


def test_a_burst_from_a_thread_is_not_flushed_from_the_writers_thread() -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    sent: list[tuple[int, Any]] = []
    with (
        blocking(create_local_synchronizer, a, on_send=recorder(sent), timeout=10) as sa,
        blocking(create_local_synchronizer, b, loop=sa.background_loop, timeout=10),
    ):
        sa.synchronizer._flush_stamps = 5
        sent.clear()
        with loop_held(sa):
            for i in range(10):
                a.set_row("t", f"r{i}", {"c": i, "d": i})
        converge(sa, a, b)
        # off the loop thread the queue leaves on the loop's turn, in bodies cut only by the
        # coalescing caps: the early flush is for the loop's own thread
        diffs = [body for message, body in sent if message == CONTENT_DIFF]
        assert len(diffs) == 1
        assert list(diffs[0][0][0]["t"][0]) == [f"r{i}" for i in range(10)]


def test_a_peers_change_applied_before_queued_writes_leave_is_not_sent_back() -> None:
    """Queued local writes leave before a peer's change is applied (as TinyBase sends each
    transaction's diff inside its listener), so a peer's newer stamp for a cell we wrote is
    never built into our diff and sent back to it."""

    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sent: list[tuple[int, Any]] = []
        receivers: list[Callable[..., None]] = []
        sa = create_custom_synchronizer(a, recorder(sent), receivers.append, lambda: None, 1.0)
        await sa.start_sync()
        sa._inline_idle = 60.0  # (every write queues: none leaves from its listener)
        sa._last_drain = time.monotonic()
        a.set_cell("t", "r", "c", "ours")  # queued; leaves at the loop's next turn
        a.set_cell("t", "r", "d", "ours")
        # meanwhile, before that turn, the peer's newer write of "c" arrives
        b.apply_mergeable_changes(a.get_mergeable_content())
        touched: list[Any] = []
        b.add_did_finish_transaction_listener(lambda s: touched.append(s.get_transaction_touched()))
        b.set_cell("t", "r", "c", "theirs")
        [body] = b.get_encoded_mergeable_changes_of(touched, 4096, 1 << 20)
        receivers[0]("B" * 16, None, CONTENT_DIFF, body)
        await asyncio.sleep(0.05)
        assert a.get_cell("t", "r", "c") == "theirs"
        diffs = [body for message, body in sent if message == CONTENT_DIFF]
        assert diffs
        assert_no_echo(diffs, a.get_client_id())
        assert {c for d in diffs for c in d[0][0]["t"][0]["r"][0]} == {"c", "d"}
        await sa.destroy()

    event_loop.run(main())
