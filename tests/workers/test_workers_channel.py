"""Workers whose stores are synchronized over a real channel (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers import WorkerContext, WorkerPool

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = 40


def write_and_read_everyone(ctx: WorkerContext, rows: int, deadline_s: float) -> dict:
    """Write own rows and a conflicting cell, then wait to hold every worker's rows."""
    store = ctx.store
    store.set_cell("shared", "conflict", "writer", ctx.index)
    for n in range(rows):
        with store.transaction():
            store.set_row("t", f"w{ctx.index}-{n:03d}", {"worker": ctx.index, "n": n})
    store.set_value(f"done{ctx.index}", True)
    deadline = time.monotonic() + deadline_s
    wanted = ctx.count * rows

    def complete() -> bool:
        return len(store.get_row_ids("t")) == wanted and all(
            store.get_value(f"done{i}") for i in range(ctx.count)
        )

    while not complete() and time.monotonic() < deadline:
        ctx.sleep(0.02)
    # wait for the slowest peer too, so nobody leaves while another still needs its data
    store.set_value(f"seen{ctx.index}", True)
    while time.monotonic() < deadline and not all(
        store.get_value(f"seen{i}") for i in range(ctx.count)
    ):
        ctx.sleep(0.02)
    return {
        "rows": len(store.get_row_ids("t")),
        "others": sorted({row["worker"] for row in store.get_table("t").values()}),
        "hashes": list(store.get_mergeable_content_hashes()),
        "content": store.get_content(),
    }


def test_workers_writing_to_their_stores_converge_through_the_channel() -> None:
    channel = f"workers-test-{uuid.uuid4().hex[:12]}"
    with WorkerPool(write_and_read_everyone, 4, channel=channel, args=(ROWS, 30.0)) as pool:
        assert pool.join(60)
    # every worker joined the fresh channel at its first attempt although all start at once
    # (a start-up stall of the hub host, since fixed in the channel, showed up here as a
    # setup time-out and a restart)
    assert pool.errors == [], "\n".join(map(str, pool.errors))
    results = pool.results
    assert [r["rows"] for r in results] == [4 * ROWS] * 4
    assert all(r["others"] == [0, 1, 2, 3] for r in results)
    # identical content and identical TinyBase hashes in every process (one CI run on a
    # loaded machine found the values apart, most likely the last worker's "seen" lost as
    # it exited before ZeroMQ sent it; destroy now waits for the hub: ChannelTransport.flush)
    assert len({json.dumps(r["hashes"]) for r in results}) == 1, [
        (r["hashes"], r["content"][1]) for r in results
    ]
    assert all(r["content"] == results[0]["content"] for r in results)
    tables, _values = results[0]["content"]
    assert tables["shared"]["conflict"]["writer"] in (0, 1, 2, 3)


def append_rows(ctx: WorkerContext, rows: int) -> int:
    for n in range(rows):
        ctx.store.set_row("orders", f"w{ctx.index}-a{ctx.attempt}-{n:03d}", {"n": n})
    return rows


@contextlib.contextmanager
def coordinator_process(channel: str, data: Path) -> Iterator[subprocess.Popen[str]]:
    """A ``localsync coordinator`` child, SIGKILLed on exit (no final save)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "coordinator",
            "--channel",
            channel,
            "--data",
            str(data),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        yield process
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def write_then_fail(ctx: WorkerContext, rows: int) -> None:
    for n in range(rows):
        ctx.store.set_row("orders", f"w{ctx.index}-{n:03d}", {"n": n})
    raise RuntimeError("failed after writing")


def test_changes_written_before_an_exception_are_still_flushed(tmp_path: Path) -> None:
    from localsync.channel.coordinator import data_file

    channel = f"workers-exc-{uuid.uuid4().hex[:12]}"
    with coordinator_process(channel, tmp_path):
        with WorkerPool(
            write_then_fail,
            2,
            channel=channel,
            args=(25,),
            flush="acknowledged",
            flush_timeout=30,
            restart="never",
        ) as pool:
            assert pool.join(60)
        assert [(e.kind, e.exit_code) for e in pool.errors] == [("exception", 1)] * 2
        assert all("failed after writing" in e.traceback for e in pool.errors)
    saved = _load(data_file(channel, tmp_path))
    assert sorted(saved) == sorted(f"w{i}-{n:03d}" for i in range(2) for n in range(25))


def _load(path: Path) -> dict:
    from localsync.core.mergeable_store import create_mergeable_store
    from localsync.persisters.sqlite import create_sqlite_persister

    store = create_mergeable_store()
    persister = create_sqlite_persister(store, str(path))
    asyncio.run(persister.load())
    return store.get_table("orders")


def test_acknowledged_flush_means_the_coordinator_saved_everything(tmp_path: Path) -> None:
    """Workers exit normally; killing the coordinator right after loses none of their rows."""
    from localsync.channel.coordinator import data_file

    channel = f"workers-ack-{uuid.uuid4().hex[:12]}"
    # leaving the block SIGKILLs the coordinator: no final save, only what was acknowledged
    with coordinator_process(channel, tmp_path):
        with WorkerPool(
            append_rows, 3, channel=channel, args=(50,), flush="acknowledged", flush_timeout=30
        ) as pool:
            assert pool.join(60)
        assert pool.exit_codes == [0, 0, 0], pool.errors
    saved = _load(data_file(channel, tmp_path))
    assert sorted(saved) == sorted(f"w{i}-a1-{n:03d}" for i in range(3) for n in range(50))


def finish_early_or_keep_writing(ctx: WorkerContext, rows: int) -> int:
    """Worker 0 writes ``rows`` rows and leaves; the others write until they are stopped.

    Worker 0 first waits (bounded) until it sees another worker's rows, so that its flush
    really happens while the store keeps changing, however slowly the processes start."""
    if ctx.index == 0:
        for _ in range(3000):
            if any(row.startswith("w1-") for row in ctx.store.get_row_ids("orders")):
                break
            ctx.sleep(0.01)
        else:
            raise AssertionError("worker 1 never started writing")
    n = 0
    while (n < rows) if ctx.index == 0 else not ctx.stopping:
        ctx.store.set_row("orders", f"w{ctx.index}-a{ctx.attempt}-{n:03d}", {"n": n})
        n += 1
        if ctx.index:
            ctx.sleep(0.002)
    return n


def test_acknowledged_flush_completes_while_other_workers_keep_writing(tmp_path: Path) -> None:
    """A worker leaving early gets its acknowledgement even though the store never goes quiet."""
    from localsync.channel.coordinator import data_file

    channel = f"workers-busy-{uuid.uuid4().hex[:12]}"
    with coordinator_process(channel, tmp_path):
        with WorkerPool(
            finish_early_or_keep_writing,
            2,
            channel=channel,
            args=(30,),
            flush="acknowledged",
            flush_timeout=20,
            restart="never",
        ) as pool:
            assert pool.wait_for(lambda p: p.workers[0].state in ("finished", "failed"), 60)
            assert pool.workers[1].state == "running"  # still writing all along
            assert pool.workers[0].state == "finished", pool.errors
            pool.stop(grace=20)
        assert pool.exit_codes == [0, 0], pool.errors
    saved = _load(data_file(channel, tmp_path))
    assert {f"w0-a1-{n:03d}" for n in range(30)} <= set(saved)
    assert len([row for row in saved if row.startswith("w1-")]) == pool.results[1]
