"""What supervision and a synchronized store cost a worker, against bare processes.

Run: ``python -m benchmarks.workers`` (``--workers 4 --repeat 3``). Prints a table and writes
``benchmarks/results/workers.json``.

Scenarios, each timed from the call until every worker's result is back in the parent:

bare processes   ``multiprocess`` (spawn) Process + Pipe per worker, the function sends its
                 result and exits: the floor any process library pays (interpreter start,
                 imports, dill).
pool             ``run_workers`` with the same function: adds the supervisor thread, the
                 report pipes, signal handlers and the flush/exit protocol.
pool + channel   ``run_workers(..., channel=...)`` on a fresh channel: each worker also
                 creates a MergeableStore, joins the channel (hub election, path proof,
                 initial sync) and flushes at exit; all of them start at the same moment.
pool + running channel
                 the same, but this process already holds the channel (hub and a peer), as
                 when a coordinator is running: the usual deployment.
restart          a running worker is SIGKILLed with zero backoff; time until its next attempt
                 reports "running" (the supervisor's reaction plus a fresh start).

Ratios (best against best) are against "bare processes" measured in the same run; the
worst run is shown too, because a start-up stall is exactly what a best-of hides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import multiprocess

from workers import WorkerPool, run_workers
from workers.link import open_link

RESULTS = Path(__file__).resolve().parent / "results"


def square(ctx: Any) -> int:
    return ctx.index * ctx.index


def _bare_child(index: int, conn: Any) -> None:
    conn.send(index * index)
    conn.close()


def bare(count: int) -> float:
    mp = multiprocess.get_context("spawn")
    start = time.perf_counter()
    pipes = []
    processes = []
    for index in range(count):
        reader, writer = mp.Pipe(duplex=False)
        process = mp.Process(target=_bare_child, args=(index, writer))
        process.start()
        writer.close()
        pipes.append(reader)
        processes.append(process)
    results = [reader.recv() for reader in pipes]
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - start
    assert results == [i * i for i in range(count)]
    return elapsed


def pool(count: int, channel: str | None) -> float:
    start = time.perf_counter()
    results = run_workers(square, count, channel=channel, timeout=120)
    elapsed = time.perf_counter() - start
    assert results == [i * i for i in range(count)]
    return elapsed


def wait_forever(ctx: Any) -> None:
    while ctx.sleep(0.05):
        pass


def restart_latency() -> float:
    with WorkerPool(wait_forever, 1, backoff=(0.0, 0.0)) as workers:
        assert workers.wait_running(60)
        start = time.perf_counter()
        workers.kill(0, signal.SIGKILL)
        assert workers.wait_for(
            lambda p: p.workers[0].attempt == 2 and p.workers[0].state == "running", 60
        )
        return time.perf_counter() - start


def best(fn: Any, repeat: int) -> tuple[float, float]:
    """Best and worst of ``repeat`` runs: the worst shows stalls that the best would hide."""
    times = [fn() for _ in range(repeat)]
    return min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.workers, args.repeat
    channel = f"bench-workers-{uuid.uuid4().hex[:8]}"
    bare(n)  # warm-up: the first interpreter starts pay for cold file caches
    rows = [
        ("bare processes", best(lambda: bare(n), repeat)),
        ("pool", best(lambda: pool(n, None), repeat)),
        ("pool + channel", best(lambda: pool(n, f"{channel}-{uuid.uuid4().hex[:6]}"), repeat)),
    ]
    held = open_link(channel, {}, 30.0)
    try:
        rows.append(("pool + running channel", best(lambda: pool(n, channel), repeat)))
    finally:
        held.close()
    rows.append(("restart after SIGKILL (1 worker)", best(restart_latency, repeat)))
    baseline = rows[0][1][0]
    print(f"{n} workers, {repeat} runs each, {os.cpu_count()} CPUs")
    print(f"{'scenario':<34} {'best s':>8} {'x bare':>7} {'worst s':>8}")
    for name, (seconds, worst) in rows:
        print(f"{name:<34} {seconds:>8.3f} {seconds / baseline:>7.2f} {worst:>8.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "workers": n,
        "repeat": repeat,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": [
            {
                "scenario": name,
                "seconds": seconds,
                "worst_seconds": worst,
                "ratio_vs_bare": seconds / baseline,
            }
            for name, (seconds, worst) in rows
        ],
    }
    (RESULTS / "workers.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
