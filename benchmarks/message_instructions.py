"""Instructions per one-cell message pair, counted by callgrind (repeatable on a busy machine).

Run: ``python -m benchmarks.message_instructions`` (needs ``valgrind``). A writer store's
``set_cell`` goes through its synchronizer and engine to an encoded ContentDiff; a reader
decodes it and receives it (engine, merge, one cell listener). The figure is the difference
between 2,000 pairs and none, divided by 2,000; two runs of the same build differ by about
0.5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec

PAIRS = 2000


def child(count: int) -> None:
    """The measured program: ``count`` message pairs after the same set-up as for 0."""
    from localsync import create_custom_synchronizer, create_mergeable_store
    from localsync.sync import event_loop

    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()

    async def main() -> None:
        writer, reader = create_mergeable_store(), create_mergeable_store()
        sent: list[bytes] = []
        receivers: list[object] = []
        writing = create_custom_synchronizer(
            writer,
            lambda to, rid, m, body: sent.append(encoder.encode(("A" * 16, rid, m, body))),
            lambda receive: None,
            lambda: None,
            1.0,
        )
        reading = create_custom_synchronizer(
            reader, lambda *message: None, receivers.append, lambda: None, 1.0
        )
        await writing.start_sync()
        await reading.start_sync()
        await asyncio.sleep(0.6)
        seen: list[object] = []
        reader.add_cell_listener("t", "r", "c", lambda store, *args: seen.append(args[3]))
        sent.clear()
        for i in range(count):
            writer.set_cell("t", "r", "c", i)
            await asyncio.sleep(0)
        receive = receivers[0]
        for payload in list(sent):
            receive(*decoder.decode(payload))  # type: ignore[operator]
        assert len(seen) == count
        await writing.destroy()
        await reading.destroy()

    event_loop.run(main())


def collected(count: int, folder: Path) -> int:
    out = folder / f"callgrind.{count}"
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.message_instructions",
            "--child",
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    assert match, result.stderr[-2000:]
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing measured")
        return 1
    with tempfile.TemporaryDirectory() as folder:
        empty = collected(0, Path(folder))
        full = collected(PAIRS, Path(folder))
    print(f"instructions per one-cell message pair: {(full - empty) / PAIRS:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
