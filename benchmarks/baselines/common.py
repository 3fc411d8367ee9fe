"""Shared workload and process plumbing for every fan-out / latency / join subject.

Every subject (raw pyzmq, Manager dict, pycrdt, TinyBase, localsync) must write *the same*
cells in *the same* transactions, or the ratios in the report would compare different work.
The workload lives here once: table ``t``, rows ``r<i>``, ``CELLS_PER_ROW`` integer cells
``c<j>`` per row, one transaction per row.

Timestamps are ``time.monotonic_ns()``: on Linux that is CLOCK_MONOTONIC, one clock for every
process on the machine, so a writer's start and a reader's finish can be subtracted across
processes without clock-sync error.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

CELLS_PER_ROW = 10
TABLE = "t"

# Children come from a fork server, not from a fork of the runner: a plain fork would inherit
# the runner's ZeroMQ contexts and threads (undefined behaviour for libzmq), while "spawn"
# pays a fresh interpreter and imports per process. The server preloads the heavy imports
# once (a module that fails to import is skipped by multiprocessing, not fatal).
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["benchmarks.baselines.common", "msgspec", "zmq", "pycrdt",
                            "localsync.core.mergeable_store", "localsync.channel.synchronizer",
                            "localsync.sync.synchronizer", "localsync.channel.coordinator"])


def rows_for(cells: int) -> int:
    """Rows needed to hold ``cells`` cells (cells is a multiple of CELLS_PER_ROW in the suite)."""
    return max(1, cells // CELLS_PER_ROW)


def row_cells(row: int) -> dict[str, int]:
    """The cells of row ``row``: values are distinct so no subject can dedupe them away."""
    base = row * CELLS_PER_ROW
    return {f"c{j}": base + j for j in range(CELLS_PER_ROW)}


def iter_rows(cells: int) -> Iterator[tuple[str, dict[str, int]]]:
    for i in range(rows_for(cells)):
        yield f"r{i}", row_cells(i)


@dataclass
class FanoutResult:
    """Outcome of one fan-out run; ``seconds`` is None when it did not converge in time."""

    seconds: float | None
    per_reader: list[float | None]
    note: str = ""


def scratch_dir(prefix: str) -> Path:
    """A private (0700) scratch folder short enough for ipc:// paths (~100 byte limit)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    atexit.register(shutil.rmtree, path, True)
    return path


class Proxy:
    """XSUB/XPUB forwarder on ipc:// sockets, run in a thread of the calling process.

    It is the same broker shape the localsync channel uses, so the raw baselines pay the same
    extra hop as localsync does; the first reader process hosts it, as the first process on a
    localsync channel hosts the hub (placement alone moves a latency p50 by a few percent).
    """

    def __init__(self, folder: Path) -> None:
        self.pub_endpoint, self.sub_endpoint = self.endpoints(folder)
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(5)

    @staticmethod
    def endpoints(folder: Path) -> tuple[str, str]:
        """(publishers connect here, subscribers connect here) for a proxy in ``folder``."""
        return f"ipc://{folder}/xsub", f"ipc://{folder}/xpub"

    def _run(self) -> None:
        xsub = self._ctx.socket(zmq.XSUB)
        xpub = self._ctx.socket(zmq.XPUB)
        for s in (xsub, xpub):
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
        xsub.bind(self.pub_endpoint)
        xpub.bind(self.sub_endpoint)
        self._ready.set()
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:
            pass
        finally:
            xsub.close(0)
            xpub.close(0)

    def close(self) -> None:
        # terminating the context makes zmq.proxy raise ETERM in its thread, which then
        # closes its sockets and lets term() return: the classic pyzmq shutdown of a proxy
        self._ctx.term()
        self._thread.join(5)


def run_group(
    target: Callable[..., None],
    arg_sets: list[tuple[Any, ...]],
    timeout: float,
) -> list[mp.Process]:
    """Start one spawned process per argument tuple; the caller joins them."""
    procs = [CTX.Process(target=target, args=args, daemon=True) for args in arg_sets]
    for p in procs:
        p.start()
    return procs


def join_all(procs: list[mp.Process], deadline: float) -> None:
    """Join within ``deadline`` (monotonic); kill stragglers so nothing outlives the run."""
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(2)


def collect(queue: Any, count: int, deadline: float) -> list[Any]:
    """Take ``count`` items from a multiprocessing queue, or fewer at the deadline."""
    out: list[Any] = []
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            out.append(queue.get(timeout=min(remaining, 1.0)))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
    return out


def summarize(start_ns: int | None, finishes: list[int | None], readers: int) -> FanoutResult:
    """Convergence = last reader's finish minus the writer's start."""
    if start_ns is None:
        return FanoutResult(None, [None] * readers, "writer did not start")
    per = [None if f is None else (f - start_ns) / 1e9 for f in finishes]
    per += [None] * (readers - len(per))
    if any(p is None for p in per):
        return FanoutResult(None, per, "not all readers converged before the timeout")
    return FanoutResult(max(p for p in per if p is not None), per)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile; enough samples make interpolation moot."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def env_with_pythonpath() -> dict[str, str]:
    """Child environment that can import this repository's packages (for subprocess runs)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
