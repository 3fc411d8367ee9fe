"""Where a one-cell change's latency goes: ``python -m benchmarks.latency_split``.

Why: ``benchmarks.channel`` reports the channel's one-way latency beside raw pyzmq+msgspec,
which says how much slower the channel is but not on which side. This benchmark mixes the
two ends: a raw publisher can feed a channel reader (its body is a valid ContentDiff with
increasing HLCs, sent on a broadcast topic) and a channel writer can feed a raw subscriber
(which reads the cell from the decoded body), so each difference below is one end's cost,
measured on the same sockets, in the same run, in alternating rounds:

* writer: channel writer -> raw reader, minus raw -> raw (store transaction, synchronizer,
  engine and encoding on the sending side);
* reader, in steps: raw reader in the channel's event loop (``add_reader`` on the ZeroMQ
  descriptor; :mod:`localsync.sync.event_loop`: uvloop where installed) minus the blocking raw
  reader; the channel transport delivering to a bare function
  (frames, dispatch, decode) minus that; the full channel reader (engine check, store merge,
  listener dispatch) minus the transport alone.

Every reader hosts the hub (a :class:`localsync.channel.hub.LocalHub` on the channel's paths), as in
``benchmarks.channel``. It has no target of its own: it tells which end to shorten.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.channel import (
    Bench,
    _channel_writer,
    _collect,
    _ctx,
    _host_raw_proxy,
    _join_all,
    _open,
    _p50_p99,
)
from localsync.sync import event_loop

RESULTS = Path(__file__).resolve().parent / "results" / "latency_split.json"
WRITERS = ("raw", "channel")
READERS = ("raw", "raw-loop", "channel-transport", "channel")
#: the raw publisher's client id (16 characters of the id alphabet, like a channel's)
RAW_ID = "rawpublisher0000"
WARM_UP = 50
GAP_SECONDS = 0.002


def _cell_of(decoder: msgspec.msgpack.Decoder[Any], payload: bytes) -> int | None:
    """The latency cell's value in a ContentDiff message, None for any other message."""
    try:
        value = decoder.decode(payload)[3][0][0]["lat"][0]["r"][0]["c"][0]
    except (msgspec.DecodeError, LookupError, TypeError):
        return None
    return value if type(value) is int else None


def _raw_read(kind: str, rundir: str, channel: str, count: int, out: Any) -> list[float]:
    import zmq

    from localsync.channel.runtime import channel_paths

    paths = channel_paths(channel, rundir)
    hub = _host_raw_proxy(paths)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(paths.outbound_endpoint)
    sub.subscribe(b"*")  # (every broadcast topic starts with it)
    decoder = msgspec.msgpack.Decoder()
    latencies: list[float] = []
    try:
        if kind == "raw":
            out.put(("ready", None))
            while len(latencies) < count:
                value = _cell_of(decoder, sub.recv_multipart()[1])
                if value is not None:
                    latencies.append((time.monotonic_ns() - value) / 1e6)
            return latencies

        async def run() -> None:
            done = asyncio.Event()

            def on_readable() -> None:
                while sub.get(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator]
                    value = _cell_of(decoder, sub.recv_multipart(zmq.NOBLOCK)[1])
                    if value is not None:
                        latencies.append((time.monotonic_ns() - value) / 1e6)
                        if len(latencies) >= count:
                            done.set()

            loop = asyncio.get_running_loop()
            loop.add_reader(sub.getsockopt(zmq.FD), on_readable)
            loop.call_soon(on_readable)
            out.put(("ready", None))
            await done.wait()

        event_loop.run(run())
        return latencies
    finally:
        sub.close(linger=0)
        hub.stop()


def _reader(kind: str, rundir: str, channel: str, count: int, out: Any) -> None:
    if kind.startswith("raw"):
        out.put(("done", _raw_read(kind, rundir, channel, count, out)))
        return

    async def run() -> None:
        store, sync = await _open(rundir, channel)
        latencies: list[float] = []
        done = asyncio.Event()

        def note(value: Any) -> None:
            if type(value) is int:
                latencies.append((time.monotonic_ns() - value) / 1e6)
                if len(latencies) >= count:
                    done.set()

        if kind == "channel":
            store.add_cell_listener(
                "lat", "r", "c", lambda _s, _t, _r, _c, value, *_rest: note(value)
            )
        else:  # the transport alone: decoded messages go to this instead of the engine

            def bare(_from: str, _request: Any, _message: int, body: Any) -> None:
                with contextlib.suppress(LookupError, TypeError):  # (not a ContentDiff)
                    note(body[0][0]["lat"][0]["r"][0]["c"][0])

            sync.transport.register_receive(bare)
        out.put(("ready", None))
        await done.wait()
        out.put(("done", latencies))
        await sync.destroy()

    event_loop.run(run())


def _raw_writer(rundir: str, channel: str, go: Any, n: int) -> None:
    import zmq

    from localsync import create_mergeable_store
    from localsync.channel.runtime import channel_paths

    # HLCs that increase, minted before the loop so that the loop does what raw does: a
    # channel reader ignores a cell whose stamp is not newer than the one it holds
    minter = create_mergeable_store()
    stamps = []
    for i in range(n):
        minter.set_cell("x", "r", "c", i)
        stamps.append(minter.get_mergeable_content()[0][0]["x"][0]["r"][0]["c"][1])
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.connect(channel_paths(channel, rundir).inbound_endpoint)
    encoder = msgspec.msgpack.Encoder()
    topic = b"*" + RAW_ID.encode()
    go.get()
    time.sleep(0.3)  # (the hub's subscriptions reach this new publisher meanwhile)
    for stamp in stamps:
        body = [[{"lat": [{"r": [{"c": [time.monotonic_ns(), stamp]}]}]}], [{}], 1]
        pub.send_multipart([topic, encoder.encode((RAW_ID, None, 3, body))])
        time.sleep(GAP_SECONDS)
    time.sleep(0.3)
    pub.close()


def _writer(kind: str, rundir: str, channel: str, go: Any, n: int, out: Any) -> None:
    if kind == "raw":
        _raw_writer(rundir, channel, go, n)
    else:  # (benchmarks.channel's latency writer: a set_cell every 2 ms, as GAP_SECONDS)
        _channel_writer(rundir, channel, go, "latency", n, out)


def samples(bench: Bench, writer: str, reader: str, count: int) -> list[float]:
    """``count`` one-way latencies (ms) from ``writer`` to ``reader``, after a warm-up."""
    out, go = _ctx.Queue(), _ctx.Queue()
    channel, rundir = bench.channel(), str(bench.rundir)
    total = count + WARM_UP
    read = _ctx.Process(target=_reader, args=(reader, rundir, channel, total, out))
    read.start()
    _collect(out, "ready", 1, 60)
    # (the writer sends more than the reader waits for: the first few may precede its
    # subscriptions)
    write = _ctx.Process(target=_writer, args=(writer, rundir, channel, go, total + 20, out))
    write.start()
    go.put("go")
    latencies = _collect(out, "done", 1, 120)[0][WARM_UP:]
    _join_all([read, write])
    return list(latencies)


def split(bench: Bench, count: int, rounds: int) -> dict[str, Any]:
    pairs = [("raw", r) for r in READERS] + [("channel", "raw"), ("channel", "channel")]
    pooled: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for i in range(rounds):
        for pair in pairs if i % 2 == 0 else pairs[::-1]:
            pooled[pair] += samples(bench, *pair, count)
    p50 = {pair: _p50_p99(values)[0] for pair, values in pooled.items()}
    steps = {
        "writer: channel writer (vs raw)": p50[("channel", "raw")] - p50[("raw", "raw")],
        "reader: event loop (vs blocking recv)": (p50[("raw", "raw-loop")] - p50[("raw", "raw")]),
        "reader: channel transport (vs raw in the loop)": (
            p50[("raw", "channel-transport")] - p50[("raw", "raw-loop")]
        ),
        "reader: engine, store and listener (vs transport)": (
            p50[("raw", "channel")] - p50[("raw", "channel-transport")]
        ),
    }
    return {
        "p50_ms": {f"{w} -> {r}": value for (w, r), value in p50.items()},
        "p99_ms": {f"{w} -> {r}": _p50_p99(pooled[(w, r)])[1] for (w, r) in pairs},
        "steps_ms": steps,
        "rounds": rounds,
        "samples_each": len(pooled[pairs[0]]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400, help="per combination and round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.rounds = 40, 1
    bench = Bench()
    try:
        result = split(bench, args.samples, args.rounds)
    finally:
        bench.close()
    result["cpus"] = os.cpu_count()
    result["event_loop"] = event_loop.loop_kind()
    print(f"{'writer -> reader':34s} {'p50':>9s} {'p99':>9s}")
    for name, value in result["p50_ms"].items():
        print(f"  {name:32s} {value * 1e3:6.1f} us {result['p99_ms'][name] * 1e3:6.1f} us")
    print("where the channel's p50 goes (differences of the p50s above):")
    for name, value in result["steps_ms"].items():
        print(f"  {name:50s} {value * 1e3:+6.1f} us")
    print(
        f"({result['rounds']} alternating rounds, {result['samples_each']} samples each;"
        f" readers' loop: {result['event_loop']})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
