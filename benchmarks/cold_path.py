"""A one-cell change's stages, hot and cold: ``python -m benchmarks.cold_path``.

Why: on a channel a process sleeps between messages, so every message runs with cold caches,
and the one-cell latency (``benchmarks.channel``) is decided by the cold cost of each stage,
not by the hot cost a tight loop measures (cold is several times hot: docs/performance.md).
This benchmark makes "cold" reproducible in one process: before each sample
it overwrites a buffer larger than the caches (``--evict-mb``) and runs some unrelated Python,
then times the stage; the baseline is the same stage timed hot, in the same run, so the
cold/hot ratio is what compares between machines. It is a tool for finding which stage to
shorten (see the channel notebook in docs/performance.md); it has no target of its own.

Stages, each timed until the reader's cell listener has run (reader) or the call returned
(writer), over a real channel on ipc:// sockets:

* writer: ``set_cell`` on a store without a synchronizer;
* reader: msgspec decode of the wire message; the engine's ContentDiff check
  (``check_content_diff``); the store's apply of checked changes; the engine's ``receive``
  (check, persister, apply); the channel transport's dispatch (decode and all of the above).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from localsync import create_mergeable_store
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.sync.engine import check_content_diff

RESULTS = Path(__file__).parent / "results" / "cold_path.json"


class _Evictor:
    """Overwrites a large buffer and runs unrelated Python: the caches a sleeping process
    finds when its next message arrives."""

    def __init__(self, megabytes: int) -> None:
        import numpy

        self._lines = numpy.zeros(megabytes * 1024 * 1024 // 8, dtype=numpy.int64)
        self._junk = {str(i): [i, str(i) * 3, {"a": i}] for i in range(300)}

    def __call__(self) -> None:
        # read-modify-write of one word per 64-byte line: every line passes through the
        # caches (a plain memset or scan of a large buffer may stream past them)
        self._lines[::8] += 1
        json.loads(json.dumps(self._junk))
        re.sub("a+", "b", "caaat" * 50)


def _p50_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def _time(
    items: Iterable[Any], call: Callable[[Any], Any], end: Callable[[], int], evict: Any
) -> float:
    samples = []
    for item in items:
        if evict is not None:
            evict()
        start = time.perf_counter_ns()
        call(item)
        samples.append(end() - start)
    return _p50_us(samples)


async def _measure(samples: int, evict: _Evictor) -> list[dict[str, Any]]:
    rundir = tempfile.mkdtemp(prefix="lsc-", dir="/tmp")
    Path(rundir).chmod(0o700)
    writer = create_mergeable_store()
    writer_sync = create_channel_synchronizer(writer, "cold", runtime_dir=rundir)
    await writer_sync.start_sync()
    sent: list[tuple[bytes, bytes]] = []
    transport = writer_sync.transport
    send_raw = transport._send_raw

    def capture(topic: bytes, payload: bytes) -> None:
        sent.append((topic, payload))
        send_raw(topic, payload)

    transport._send_raw = capture  # type: ignore[method-assign]
    needed = 10 * samples  # five reader stages, hot and cold
    for i in range(needed + 50):
        writer.set_cell("lat", "r", "c", i)
        await asyncio.sleep(0)
    messages = [m for m in sent if m[1][:1] != b"\x00"][-needed:]

    reader = create_mergeable_store()
    reader_sync = create_channel_synchronizer(reader, "cold-reader", runtime_dir=rundir)
    await reader_sync.start_sync()
    heard = [0]
    reader.add_cell_listener(
        "lat", "r", "c", lambda *_: heard.__setitem__(0, time.perf_counter_ns())
    )
    decoder = msgspec.msgpack.Decoder()
    # the engine's receive plus the Synchronizer applying the events it hands back
    receive = reader_sync._receive
    dispatch = reader_sync.transport._dispatch
    rows: list[dict[str, Any]] = []

    def chunks() -> Iterable[list[Any]]:
        for start in range(0, len(messages), samples):
            yield messages[start : start + samples]

    parts = chunks()

    def stage(
        name: str,
        hot_items: Iterable[Any],
        cold_items: Iterable[Any],
        call: Callable[[Any], Any],
        end: Callable[[], int],
    ) -> None:
        hot = _time(hot_items, call, end, None)
        cold = _time(cold_items, call, end, evict)
        rows.append({"stage": name, "hot_us": hot, "cold_us": cold, "ratio": cold / hot})

    def reader_stage(
        name: str,
        prepare: Callable[[Any], Any],
        call: Callable[[Any], Any],
        end: Callable[[], int] = lambda: heard[0],
    ) -> None:
        """Hot on one slice of the messages, cold on the next (each message merged once)."""
        hot_items = [prepare(m) for m in next(parts)]
        stage(name, hot_items, [prepare(m) for m in next(parts)], call, end)

    returned = time.perf_counter_ns
    reader_stage("reader: transport dispatch -> listener", lambda m: m, lambda m: dispatch(*m))
    reader_stage(
        "reader: engine receive -> listener",
        lambda m: decoder.decode(m[1]),
        lambda d: receive(*d),
    )
    reader_stage(
        "reader: store apply -> listener",
        lambda m: check_content_diff(decoder.decode(m[1])[3]),
        reader.apply_encoded_mergeable_changes,
    )
    reader_stage("reader: msgspec decode", lambda m: m[1], decoder.decode, returned)
    reader_stage(
        "reader: engine check (check_content_diff)",
        lambda m: decoder.decode(m[1])[3],
        check_content_diff,
        returned,
    )
    plain = create_mergeable_store()
    counter = iter(range(10**9))

    def set_cell(_: Any) -> None:
        plain.set_cell("lat", "r", "c", next(counter))

    stage("writer: set_cell", range(samples), range(samples), set_cell, returned)
    await reader_sync.destroy()
    await writer_sync.destroy()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--evict-mb", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="100 samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    samples = 100 if args.quick else args.samples
    rows = asyncio.run(_measure(samples, _Evictor(args.evict_mb)))
    print(f"{'stage':44s} {'hot p50':>10s} {'cold p50':>10s} {'cold/hot':>9s}")
    for row in rows:
        print(
            f"{row['stage']:44s} {row['hot_us']:8.2f}us {row['cold_us']:8.2f}us "
            f"{row['ratio']:8.1f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"samples": samples, "evict_mb": args.evict_mb, "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
