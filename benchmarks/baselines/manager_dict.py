"""``multiprocessing.Manager().dict()``: what a Python programmer reaches for first.

The writer ``update()``s one row's cells per call (a row transaction = one round trip to the
manager); readers poll ``len()`` until they see every key, then take a full copy (seeing the
data, not just a count). Flat keys ``"row/cell"``, since a Manager dict's nested values are
copies, not shared.
"""

from __future__ import annotations

import time
from typing import Any

from .common import CTX, FanoutResult, collect, iter_rows, join_all, run_group, summarize


def _writer(shared: Any, cells: int, go: Any, queue: Any) -> None:
    go.wait()
    start = time.monotonic_ns()
    for row, row_cells in iter_rows(cells):
        shared.update({f"{row}/{cell}": value for cell, value in row_cells.items()})
    queue.put(("start", start))


def _reader(shared: Any, cells: int, index: int, go: Any, queue: Any, timeout: float) -> None:
    queue.put(("ready", index))
    go.wait()
    deadline = time.monotonic() + timeout
    while len(shared) < cells and time.monotonic() < deadline:
        time.sleep(0.001)
    ok = len(shared.copy()) >= cells
    queue.put(("done", index, time.monotonic_ns() if ok else None))


def fanout(readers: int, cells: int, timeout: float = 120.0) -> FanoutResult:
    deadline = time.monotonic() + timeout
    with CTX.Manager() as manager:
        shared = manager.dict()
        queue = CTX.Queue()
        go = CTX.Event()
        procs = run_group(_reader, [(shared, cells, i, go, queue, timeout)
                                    for i in range(readers)], timeout)
        procs += run_group(_writer, [(shared, cells, go, queue)], timeout)
        try:
            if len(collect(queue, readers, min(deadline, time.monotonic() + 30))) < readers:
                return FanoutResult(None, [None] * readers, "readers did not start")
            go.set()
            events = collect(queue, readers + 1, deadline)
            start = next((e[1] for e in events if e[0] == "start"), None)
            finishes: list[int | None] = [None] * readers
            for e in events:
                if e[0] == "done":
                    finishes[e[1]] = e[2]
            return summarize(start, finishes, readers)
        finally:
            join_all(procs, time.monotonic() + 5)


def join(cells: int, timeout: float = 120.0) -> float | None:
    """Seconds for a new process to copy a Manager dict holding N cells."""
    with CTX.Manager() as manager:
        shared = manager.dict()
        for row, row_cells in iter_rows(cells):
            shared.update({f"{row}/{cell}": value for cell, value in row_cells.items()})
        queue = CTX.Queue()
        procs = run_group(_joiner, [(shared, cells, queue)], timeout)
        try:
            got = collect(queue, 1, time.monotonic() + timeout)
            return got[0] if got else None
        finally:
            join_all(procs, time.monotonic() + 5)


def _joiner(shared: Any, cells: int, queue: Any) -> None:
    start = time.monotonic_ns()
    copy = shared.copy()
    queue.put((time.monotonic_ns() - start) / 1e9 if len(copy) >= cells else None)
