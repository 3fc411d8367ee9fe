"""Resident memory per cell, each subject measured alone in a fresh spawned process.

RSS growth (``/proc/self/statm``) after building the content is used for every Python subject
so that C-level allocations (msgspec, hashes, interned strings) count the same way for all of
them; the runner's own memory never enters the figure.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from .common import CTX, TABLE, collect, iter_rows, join_all, run_group

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _build(kind: str, cells: int, queue: Any) -> None:
    try:
        holder: Any
        if kind == "dict":
            gc.collect()
            before = _rss()
            holder = {TABLE: {}}
            table = holder[TABLE]
            for row, row_cells in iter_rows(cells):
                table[row] = dict(row_cells)
        else:
            import localsync

            factory = (localsync.create_mergeable_store if kind == "localsync_mergeable"
                       else localsync.create_store)
            warm = factory()
            warm.set_cell("x", "x", "x", 1)  # imports and first-store costs outside the delta
            if kind == "localsync_mergeable":
                warm.get_mergeable_content_hashes()
            gc.collect()
            before = _rss()
            holder = factory()
            for row, row_cells in iter_rows(cells):
                holder.set_row(TABLE, row, row_cells)
            if kind == "localsync_mergeable":
                holder.get_mergeable_content_hashes()  # hashes settled, as after any sync
        gc.collect()
        queue.put(("ok", (_rss() - before) / cells))
    except Exception as error:  # reported as "not available" with the reason
        queue.put(("error", f"{type(error).__name__}: {error}"))


def bytes_per_cell(kind: str, cells: int, timeout: float = 300.0) -> float:
    """``kind``: "dict", "localsync_store" or "localsync_mergeable"."""
    queue = CTX.Queue()
    procs = run_group(_build, [(kind, cells, queue)], timeout)
    try:
        got = collect(queue, 1, time.monotonic() + timeout)
    finally:
        join_all(procs, time.monotonic() + 5)
    if not got:
        raise TimeoutError(f"memory measurement of {kind} timed out")
    status, value = got[0]
    if status != "ok":
        raise RuntimeError(value)
    return float(value)
