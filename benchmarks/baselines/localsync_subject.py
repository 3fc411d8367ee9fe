"""localsync itself, driven through its public API with exactly the baselines' workload.

Kept beside the baselines (rather than in the per-area benchmark modules) so that the subject
and its baselines share one workload, one readiness handshake and one clock; the per-area
modules (``benchmarks/channel.py`` etc.) are run by the suite as well, for their own figures.

Each process runs its own asyncio loop. Readiness = ``start_sync()`` returned (the channel has
proved its path through the hub), so no write can be lost to a slow joiner before the clock
starts; anything dropped later is healed by anti-entropy and costs time, which is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from .common import (
    CELLS_PER_ROW,
    CTX,
    TABLE,
    FanoutResult,
    collect,
    iter_rows,
    join_all,
    rows_for,
    run_group,
    scratch_dir,
    summarize,
)


def _arun(coro: Any, role: str) -> None:
    """asyncio.run, under cProfile when $LOCALSYNC_BENCH_PROFILE names a folder for the stats.

    Profiling is how the report explains *where* localsync loses to a baseline; it is off by
    default because it slows the measured process.
    """
    folder = os.environ.get("LOCALSYNC_BENCH_PROFILE")
    if not folder:
        asyncio.run(coro)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(coro)
    finally:
        profiler.disable()
        os.makedirs(folder, exist_ok=True)
        profiler.dump_stats(os.path.join(folder, f"{role}-{os.getpid()}.prof"))


def available() -> str | None:
    """None when the public names this subject needs import; otherwise why not."""
    try:
        import localsync

        localsync.create_mergeable_store  # noqa: B018 - lazy export, import now
        localsync.create_channel_synchronizer  # noqa: B018
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _has_all(store: Any, rows: int) -> bool:
    """Cheap test first (the last row is there), exact count only then."""
    if not store.has_row(TABLE, f"r{rows - 1}"):
        return False
    return len(store.get_row_ids(TABLE)) >= rows


async def _wait(event: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait)


def _reader(name: str, folder: str, cells: int, index: int, go: Any, stop: Any, queue: Any,
            timeout: float) -> None:
    _arun(_reader_main(name, folder, cells, index, go, stop, queue, timeout), "reader")


async def _reader_main(name: str, folder: str, cells: int, index: int, go: Any, stop: Any,
                       queue: Any, timeout: float) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    rows = rows_for(cells)
    store = create_mergeable_store()
    done = asyncio.Event()
    finish: list[int] = []

    def on_transaction(_store: Any) -> None:
        if not finish and _has_all(store, rows):
            finish.append(time.monotonic_ns())
            done.set()

    store.add_did_finish_transaction_listener(on_transaction)
    sync = create_channel_synchronizer(store, name, runtime_dir=folder)
    try:
        await sync.start_sync()
        queue.put(("ready", index))
        await _wait(go)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        ok = bool(finish) and len(store.get_row_ids(TABLE)) * CELLS_PER_ROW >= cells
        queue.put(("done", index, finish[0] if ok else None))
        await _wait(stop)  # stay on the channel until everyone is done (hub may live here)
    finally:
        await sync.destroy()


def _writer(name: str, folder: str, cells: int, go: Any, stop: Any, queue: Any) -> None:
    _arun(_writer_main(name, folder, cells, go, stop, queue), "writer")


async def _writer_main(name: str, folder: str, cells: int, go: Any, stop: Any, queue: Any
                       ) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    store = create_mergeable_store()
    sync = create_channel_synchronizer(store, name, runtime_dir=folder)
    try:
        await sync.start_sync()
        queue.put(("ready", -1))
        await _wait(go)
        start = time.monotonic_ns()
        for row, row_cells in iter_rows(cells):
            store.set_row(TABLE, row, row_cells)  # one transaction per row, as everywhere
        queue.put(("start", start))
        await _wait(stop)
    finally:
        await sync.destroy()


def _run(procs_args: list[tuple[Any, list[tuple[Any, ...]]]], expected_ready: int, go: Any,
         stop: Any, queue: Any, collect_count: int, timeout: float) -> list[Any] | None:
    """Start participants one at a time, each after the previous said ready, then ``go``.

    One at a time because joining is not what these scenarios measure, and simultaneous
    joins hit a start-up race in the channel (a ``start_sync`` that waits out the 30 s
    request timeout; reported to the channel's owner). ``expected_ready`` participants
    report ready; the others (a joiner) are started after them and wait for ``go``.
    """
    deadline = time.monotonic() + timeout
    procs = []
    try:
        ready = 0
        for target, arg_sets in procs_args:
            for args in arg_sets:
                procs += run_group(target, [args], timeout)
                if ready < expected_ready:
                    if not collect(queue, 1, min(deadline, time.monotonic() + 60)):
                        return None
                    ready += 1
        go.set()
        return collect(queue, collect_count, deadline)
    finally:
        go.set()
        stop.set()
        join_all(procs, time.monotonic() + 10)


def fanout(readers: int, cells: int, timeout: float = 120.0) -> FanoutResult:
    folder = str(scratch_dir("lsb-"))
    name = "fanout"
    queue, go, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    events = _run(
        [(_reader, [(name, folder, cells, i, go, stop, queue, timeout) for i in range(readers)]),
         (_writer, [(name, folder, cells, go, stop, queue)])],
        readers + 1, go, stop, queue, readers + 1, timeout)
    if events is None:
        return FanoutResult(None, [None] * readers, "channel did not start")
    start = next((e[1] for e in events if e[0] == "start"), None)
    finishes: list[int | None] = [None] * readers
    for e in events:
        if e[0] == "done":
            finishes[e[1]] = e[2]
    return summarize(start, finishes, readers)


# --- one-way latency of a single-cell change ---------------------------------------------------


def _lat_reader(name: str, folder: str, samples: int, index: int, go: Any, stop: Any,
                queue: Any, timeout: float) -> None:
    _arun(_lat_reader_main(name, folder, samples, index, go, stop, queue, timeout),
          "lat-reader")


async def _lat_reader_main(name: str, folder: str, samples: int, index: int, go: Any,
                           stop: Any, queue: Any, timeout: float) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    store = create_mergeable_store()
    deltas: list[int] = []
    done = asyncio.Event()

    def on_cell(*args: Any) -> None:
        # TinyBase order: store, table_id, row_id, cell_id, new_cell, old_cell, ...
        value = args[4]
        if isinstance(value, str) and value.startswith("t"):
            deltas.append(time.monotonic_ns() - int(value[1:]))
            if len(deltas) >= samples:
                done.set()

    store.add_cell_listener(TABLE, "r0", "c0", on_cell)
    sync = create_channel_synchronizer(store, name, runtime_dir=folder)
    try:
        await sync.start_sync()
        queue.put(("ready", index))
        await _wait(go)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        queue.put(("done", index, deltas))
        await _wait(stop)
    finally:
        await sync.destroy()


def _lat_writer(name: str, folder: str, samples: int, gap: float, go: Any, stop: Any,
                queue: Any) -> None:
    _arun(_lat_writer_main(name, folder, samples, gap, go, stop, queue), "lat-writer")


async def _lat_writer_main(name: str, folder: str, samples: int, gap: float, go: Any,
                           stop: Any, queue: Any) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    store = create_mergeable_store()
    sync = create_channel_synchronizer(store, name, runtime_dir=folder)
    try:
        await sync.start_sync()
        queue.put(("ready", -1))
        await _wait(go)
        for _ in range(samples):
            # the send time travels in the value itself (a string: ns exceed JS-safe ints)
            store.set_cell(TABLE, "r0", "c0", f"t{time.monotonic_ns()}")
            await asyncio.sleep(gap)
        queue.put(("start", 0))
        await _wait(stop)
    finally:
        await sync.destroy()


def latency(readers: int, samples: int, gap: float = 0.002, timeout: float = 60.0
            ) -> list[float] | None:
    """Pooled one-way latencies in microseconds (sorted), None when a reader missed some."""
    folder = str(scratch_dir("lsb-"))
    name = "latency"
    queue, go, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    events = _run(
        [(_lat_reader, [(name, folder, samples, i, go, stop, queue, timeout)
                        for i in range(readers)]),
         (_lat_writer, [(name, folder, samples, gap, go, stop, queue)])],
        readers + 1, go, stop, queue, readers + 1, timeout)
    if events is None:
        return None
    pooled: list[float] = []
    for e in events:
        if e[0] == "done":
            if len(e[2]) < samples:
                return None
            pooled += [d / 1000 for d in e[2]]
    return sorted(pooled) if len(pooled) == samples * readers else None


# --- join: a newcomer on a channel already holding N cells -------------------------------------


def _holder(name: str, folder: str, cells: int, go: Any, stop: Any, queue: Any) -> None:
    _arun(_holder_main(name, folder, cells, stop, queue), "holder")


async def _holder_main(name: str, folder: str, cells: int, stop: Any, queue: Any) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    store = create_mergeable_store()
    with store.transaction():
        for row, row_cells in iter_rows(cells):
            store.set_row(TABLE, row, row_cells)
    sync = create_channel_synchronizer(store, name, runtime_dir=folder)
    try:
        await sync.start_sync()
        queue.put(("ready", -1))
        await _wait(stop)
    finally:
        await sync.destroy()


def _joiner(name: str, folder: str, cells: int, go: Any, stop: Any, queue: Any,
            timeout: float, snapshots: bool = True) -> None:
    _arun(_joiner_main(name, folder, cells, go, queue, timeout, snapshots), "joiner")


async def _joiner_main(name: str, folder: str, cells: int, go: Any, queue: Any,
                       timeout: float, snapshots: bool) -> None:
    from localsync import create_channel_synchronizer, create_mergeable_store

    await _wait(go)
    rows = rows_for(cells)
    start = time.monotonic_ns()
    store = create_mergeable_store()
    done = asyncio.Event()
    store.add_did_finish_transaction_listener(
        lambda _s: done.set() if _has_all(store, rows) else None)
    sync = create_channel_synchronizer(store, name, runtime_dir=folder, snapshots=snapshots)
    try:
        await sync.start_sync()
        if not _has_all(store, rows):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        ok = _has_all(store, rows)
        queue.put(("done", (time.monotonic_ns() - start) / 1e9 if ok else None))
    finally:
        await sync.destroy()


def join(cells: int, timeout: float = 120.0, snapshots: bool = True) -> float | None:
    """Seconds from a newcomer opening the channel to holding all N cells (``snapshots``:
    the channel's default shared-memory snapshot join, else the hash-tree exchange)."""
    folder = str(scratch_dir("lsb-"))
    name = "join"
    queue, go, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    events = _run(
        [(_holder, [(name, folder, cells, go, stop, queue)]),
         (_joiner, [(name, folder, cells, go, stop, queue, timeout, snapshots)])],
        1, go, stop, queue, 1, timeout)
    if not events:
        return None
    return events[0][1]
