"""Scenario 6: a persisting process keeping up with a sustained write rate.

One writer process writes row transactions (10 cells each) at a fixed target rate for a fixed
time, then stops ("quiescence"). Measured: the rate it actually sustained (a persister that
cannot keep up shows here as backpressure only if it slows the writer; otherwise it shows in
the next figure) and the time from quiescence until everything written is durable on disk.

``localsync``: the writer is a channel participant; a
:class:`localsync.channel.coordinator.Coordinator` (SQLite) in another process persists the
channel; durable = the writer's
``wait_acknowledged()`` returned (the coordinator announced the hashes of saved content equal
to the writer's content).
``raw zmq -> sqlite``: the same rows as msgpack through the same XSUB/XPUB proxy to a sink
process that drains whatever has arrived, upserts it into SQLite (WAL, synchronous=FULL) and
commits, in a loop; durable = the commit that included the writer's last row.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from .common import (
    CELLS_PER_ROW,
    CTX,
    TABLE,
    Proxy,
    collect,
    join_all,
    row_cells,
    run_group,
    scratch_dir,
)


def _pace(start: float, row: int, rate: float) -> float:
    """Seconds to wait before row ``row`` so the writer holds ``rate`` cells/s."""
    return start + row * CELLS_PER_ROW / rate - time.monotonic()


# --- raw baseline ------------------------------------------------------------------------------


def _raw_sink(endpoint: str, db_path: str, queue: Any, timeout: float) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE cells (t TEXT, r TEXT, c TEXT, v, PRIMARY KEY (t, r, c))")
    decode = msgspec.msgpack.Decoder().decode
    ready = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        batch: list[tuple[str, str, str, Any]] = []
        end = False
        while True:  # drain what has arrived: one commit per burst, as a coordinator does
            try:
                tag, payload = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if tag == b"P":
                if not ready:
                    ready = True
                    queue.put(("ready", 0))
            elif tag == b"E":
                end = True
            else:
                for table_id, rows in decode(payload).items():
                    for row_id, cells in rows.items():
                        batch += [(table_id, row_id, c, v) for c, v in cells.items()]
        if batch:
            db.executemany("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?)", batch)
            db.commit()
        if end:
            count = db.execute("SELECT count(*) FROM cells").fetchone()[0]
            queue.put(("durable", time.monotonic_ns(), count))
            break
    db.close()
    sub.close(0)
    ctx.term()


def _raw_writer(endpoint: str, rate: float, seconds: float, go: Any, queue: Any) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(endpoint)
    encode = msgspec.msgpack.Encoder().encode
    while not go.wait(0.005):
        pub.send_multipart([b"P", b""])
    rows = int(rate * seconds / CELLS_PER_ROW)
    start = time.monotonic()
    for i in range(rows):
        wait = _pace(start, i, rate)
        if wait > 0:
            time.sleep(wait)
        pub.send_multipart([b"D", encode({TABLE: {f"r{i}": row_cells(i)}})])
    quiet = time.monotonic_ns()
    pub.send_multipart([b"E", b""])
    queue.put(("quiet", quiet, rows * CELLS_PER_ROW / (quiet / 1e9 - start)))
    time.sleep(0.5)
    pub.close(0)
    ctx.term()


def raw(rate: float, seconds: float, timeout: float = 60.0) -> dict[str, Any] | None:
    folder = scratch_dir("lsb-")
    proxy = Proxy(folder)
    queue, go = CTX.Queue(), CTX.Event()
    deadline = time.monotonic() + timeout
    procs = run_group(_raw_sink, [(proxy.sub_endpoint, str(folder / "raw.sqlite"), queue,
                                   timeout)], timeout)
    procs += run_group(_raw_writer, [(proxy.pub_endpoint, rate, seconds, go, queue)], timeout)
    try:
        if not collect(queue, 1, min(deadline, time.monotonic() + 30)):
            return None
        go.set()
        events = {e[0]: e for e in collect(queue, 2, deadline)}
        if "quiet" not in events or "durable" not in events:
            return None
        expected = int(rate * seconds / CELLS_PER_ROW) * CELLS_PER_ROW
        if events["durable"][2] != expected:
            return None
        return {"achieved_rate": events["quiet"][2],
                "quiescence_to_durable": (events["durable"][1] - events["quiet"][1]) / 1e9}
    finally:
        go.set()
        join_all(procs, time.monotonic() + 5)
        proxy.close()


# --- localsync: channel writer + coordinator -----------------------------------------------------


def _coordinator(name: str, folder: str, data: str, stop: Any, queue: Any) -> None:
    async def main() -> None:
        from localsync.channel.coordinator import Coordinator

        coordinator = Coordinator(name, data, "sqlite", runtime_dir=folder)
        await coordinator.start()
        queue.put(("ready", "coordinator"))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await coordinator.stop()
        queue.put(("saves", coordinator.saves))

    asyncio.run(main())


def _ls_writer(name: str, folder: str, rate: float, seconds: float, go: Any, stop: Any,
               queue: Any, timeout: float) -> None:
    async def main() -> None:
        from localsync import create_channel_synchronizer, create_mergeable_store

        store = create_mergeable_store()
        sync = create_channel_synchronizer(store, name, runtime_dir=folder)
        try:
            await sync.start_sync()
            queue.put(("ready", "writer"))
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            rows = int(rate * seconds / CELLS_PER_ROW)
            start = time.monotonic()
            for i in range(rows):
                wait = _pace(start, i, rate)
                # yield to the loop at least every 100 rows even when behind: sends, acks
                if wait > 0 or i % 100 == 0:
                    await asyncio.sleep(max(0.0, wait))
                store.set_row(TABLE, f"r{i}", row_cells(i))
            quiet = time.monotonic_ns()
            achieved = rows * CELLS_PER_ROW / (quiet / 1e9 - start)
            try:
                await sync.wait_acknowledged(timeout)
                queue.put(("durable", quiet, time.monotonic_ns(), achieved))
            except TimeoutError:
                queue.put(("durable", quiet, None, achieved))
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        finally:
            await sync.destroy()

    asyncio.run(main())


def localsync(rate: float, seconds: float, timeout: float = 60.0) -> dict[str, Any] | None:
    """None when the writer's ``wait_acknowledged`` did not return within ``timeout / 4``."""
    folder = scratch_dir("lsb-")
    data = Path(folder) / "data"
    name = "persist"
    queue, go, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    deadline = time.monotonic() + timeout
    procs = run_group(_coordinator, [(name, str(folder), str(data), stop, queue)], timeout)
    try:
        if not collect(queue, 1, min(deadline, time.monotonic() + 60)):
            return None
        procs += run_group(_ls_writer, [(name, str(folder), rate, seconds, go, stop, queue,
                                         timeout / 4)], timeout)
        if not collect(queue, 1, min(deadline, time.monotonic() + 60)):
            return None
        go.set()
        got = collect(queue, 1, deadline)
        if not got or got[0][2] is None:
            return None
        _, quiet, durable, achieved = got[0]
        stop.set()
        saves = collect(queue, 1, time.monotonic() + 15)
        return {"achieved_rate": achieved, "quiescence_to_durable": (durable - quiet) / 1e9,
                "coordinator_saves": saves[0][1] if saves else None}
    finally:
        go.set()
        stop.set()
        join_all(procs, time.monotonic() + 15)
