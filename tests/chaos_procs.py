"""The writer process of the chaos test: ``python -m tests.chaos_procs --channel C --writer W``.

It writes rows ``W-<n>`` (n = 0, 1, 2, ...) into table ``chaos`` of a store on channel ``C``
in short bursts, one row per transaction, and in a second task keeps asking the channel's
coordinator to acknowledge what it holds (``wait_acknowledged``): each success is reported as
``acked{upto}``, meaning rows ``W-0`` .. ``W-<upto>`` are durable on the coordinator's disk.
A row is only claimed once it was acknowledged, so a writer killed at any instant has claimed
nothing that may be lost.

JSON lines like :mod:`tests.channel_procs`. Commands: ``{"cmd": "stop_writing"}`` (event
``stopped{next}``), ``{"cmd": "status"}`` (``status{host}``), ``{"cmd": "hashes"}``,
``{"cmd": "content"}``, ``{"cmd": "exit"}``.
Events: ``ready{id, host}``, ``acked{upto}``, ``stopped{next}``, ``hashes{value}``,
``content{value}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random

from tests.channel_procs import _commands, _emit

BURST_ROWS = 20  # rows written back to back, then a pause of up to BURST_PAUSE_SECONDS
BURST_PAUSE_SECONDS = 0.1
ACK_WAIT_SECONDS = 5.0


async def _writer(args: argparse.Namespace) -> None:
    from localsync import create_mergeable_store
    from localsync.channel.synchronizer import create_channel_synchronizer

    store = create_mergeable_store()
    sync = create_channel_synchronizer(
        store, args.channel, runtime_dir=args.runtime_dir, anti_entropy_seconds=0.5
    )
    await sync.start_sync()
    _emit("ready", id=sync.client_id, host=sync.is_hub_host)
    state = {"next": 0, "writing": True}
    rng = random.Random(args.writer)

    async def write() -> None:
        while state["writing"]:
            for _ in range(BURST_ROWS):
                n = state["next"]
                store.set_row("chaos", f"{args.writer}-{n}", {"n": n, "w": args.writer})
                state["next"] = n + 1
            await asyncio.sleep(rng.uniform(0, BURST_PAUSE_SECONDS))

    async def acknowledge() -> None:
        while True:
            upto = state["next"] - 1  # written (synchronously) before the call below
            try:
                await sync.wait_acknowledged(ACK_WAIT_SECONDS)
            except TimeoutError:
                continue
            if upto >= 0:
                _emit("acked", upto=upto)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(write()), asyncio.create_task(acknowledge())]
    async for command in _commands():
        cmd = command["cmd"]
        if cmd == "stop_writing":
            state["writing"] = False
            await tasks[0]
            _emit("stopped", next=state["next"])
        elif cmd == "status":
            _emit("status", host=sync.is_hub_host)
        elif cmd == "hashes":
            _emit("hashes", value=store.get_mergeable_content_hashes())
        elif cmd == "content":
            _emit("content", value=store.get_content())
        elif cmd == "exit":
            break
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await sync.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel", required=True)
    parser.add_argument("--writer", required=True)
    parser.add_argument("--runtime-dir")
    asyncio.run(_writer(parser.parse_args()))


if __name__ == "__main__":
    main()
