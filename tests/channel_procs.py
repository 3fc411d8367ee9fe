"""Processes for the channel tests: run as ``python -m tests.channel_procs ROLE ...``.

Each role speaks JSON lines: commands on stdin, events on stdout. :class:`Proc` is the test
side: it starts a role, collects its events in a thread and waits for them with deadlines,
so a test never hangs on a process that died or went silent.

Roles:

``raw``  a bare :class:`ChannelTransport` (no store, no engine): tests the transport itself.
         commands: {"cmd": "send", "body": X, "to": ID|null}, {"cmd": "status"}, {"cmd": "exit"}
         events:   ready{id, host}, recv{from, body}, status{host}
``hub``  only a :class:`LocalHub` (started first, it hosts): its memory is the hub's alone.
         commands: {"cmd": "status"}, {"cmd": "exit"}; events: ready{host}, status{host, generation}
``sync`` a MergeableStore on a channel synchronizer.
         commands: {"cmd": "set", "cells": [[table, row, cell, value], ...]},
                   {"cmd": "write_loop", "table": T, "count": N} (one cell per transaction,
                   as fast as possible, then event "written"; with "pause": S, sleeping S
                   seconds after each),
                   {"cmd": "hashes"}, {"cmd": "content"}, {"cmd": "wait_ack", "timeout": S},
                   {"cmd": "status"}, {"cmd": "stats"}, {"cmd": "exit"}
         events:   ready{id, host}, hashes{value}, content{value}, acked{ok}, status{host},
                   stats{channel, sync}; status also carries the hub generation followed and
                   the number of generation switches (failovers)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _commands() -> Any:
    """Yield stdin JSON lines without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        yield json.loads(line)


async def _raw(args: argparse.Namespace) -> None:
    from localsync.channel.synchronizer import ChannelTransport

    transport = ChannelTransport(
        args.channel, hub=args.hub, runtime_dir=args.runtime_dir, hwm=args.hwm
    )
    transport.register_receive(
        lambda from_id, request_id, message, body: _emit("recv", **{"from": from_id, "body": body})
    )
    await transport.open()
    _emit(
        "ready",
        id=transport.client_id,
        host=bool(transport.local_hub and transport.local_hub.is_host),
    )
    async for command in _commands():
        if command["cmd"] == "send":
            transport.send(command.get("to"), None, 3, command["body"])
        elif command["cmd"] == "status":
            _emit("status", host=bool(transport.local_hub and transport.local_hub.is_host))
        elif command["cmd"] == "exit":
            break
    transport.close()


async def _sync(args: argparse.Namespace) -> None:
    from localsync import create_mergeable_store
    from localsync.channel.synchronizer import create_channel_synchronizer

    store = create_mergeable_store()
    sync = create_channel_synchronizer(
        store,
        args.channel,
        hub=args.hub,
        runtime_dir=args.runtime_dir,
        hwm=args.hwm,
        anti_entropy_seconds=args.anti_entropy,
    )
    await sync.start_sync()
    _emit("ready", id=sync.client_id, host=sync.is_hub_host)
    async for command in _commands():
        cmd = command["cmd"]
        if cmd == "set":
            with store.transaction():
                for table, row, cell, value in command["cells"]:
                    store.set_cell(table, row, cell, value)
        elif cmd == "write_loop":
            _emit("writing")
            pause = command.get("pause")
            for i in range(command["count"]):
                store.set_cell(command["table"], f"r{i}", "c", i)
                if pause is not None:
                    await asyncio.sleep(pause)  # a trickle: each message sent on its own
                elif i % 10 == 0:
                    await asyncio.sleep(0)  # let received messages in, as a real worker would
            _emit("written")
        elif cmd == "hashes":
            _emit("hashes", value=store.get_mergeable_content_hashes())
        elif cmd == "content":
            _emit("content", value=store.get_content())
        elif cmd == "engine":  # (diagnostics of a failed convergence)
            engine = sync.engine
            _emit(
                "engine",
                pending=engine.pending_request_count(),
                pulling_from=sorted(engine._pulling_from),
                ignored_errors=engine.ignored_errors,
                syncing=engine.syncing,
                request_timeout=engine.request_timeout_seconds,
                next_deadline_in=(
                    None
                    if engine.next_deadline() is None
                    else engine.next_deadline() - engine.clock()
                ),
            )
        elif cmd == "wait_ack":
            try:
                await sync.wait_acknowledged(command["timeout"])
                _emit("acked", ok=True)
            except TimeoutError:
                _emit("acked", ok=False)
        elif cmd == "status":
            stats = sync.get_channel_stats()
            _emit(
                "status",
                host=sync.is_hub_host,
                generation=stats["hub_generation"],
                failovers=stats["hub_failovers"],
            )
        elif cmd == "stats":
            _emit("stats", channel=sync.get_channel_stats(), sync=sync.get_synchronizer_stats())
        elif cmd == "exit":
            break
    await sync.destroy()


async def _hub(args: argparse.Namespace) -> None:
    from localsync.channel.hub import LocalHub
    from localsync.channel.runtime import channel_paths

    hub = LocalHub(channel_paths(args.channel, args.runtime_dir), hwm=args.hwm).start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, hub.wait_host)
    _emit("ready", host=True)
    async for command in _commands():
        if command["cmd"] == "status":
            _emit("status", host=hub.is_host, generation=hub.generation)
        elif command["cmd"] == "exit":
            break
    hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["raw", "sync", "hub"])
    parser.add_argument("--channel", required=True)
    parser.add_argument("--runtime-dir")
    parser.add_argument("--hub")
    parser.add_argument("--hwm", type=int, default=100_000)
    parser.add_argument("--anti-entropy", type=float, default=0.3)
    args = parser.parse_args()
    role = {"raw": _raw, "sync": _sync, "hub": _hub}[args.role]
    asyncio.run(role(args))


class Proc:
    """A role process with JSON-line I/O and bounded waits."""

    def __init__(
        self,
        *argv: str,
        extra_env: dict[str, str] | None = None,
        module: str = "tests.channel_procs",
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.stderr.append(line)

    def _pump_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line)

    def send(self, **command: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()

    def expect(
        self,
        event: str,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Next event named ``event`` (matching ``where``); others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} event; stderr: {''.join(self.stderr)[-2000:]}")
            try:
                item = self.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.popen.poll() is not None and self.events.empty():
                    raise RuntimeError(
                        f"process exited {self.popen.returncode} before {event!r}; stderr: "
                        f"{''.join(self.stderr)[-2000:]}"
                    ) from None
                continue
            if item.get("event") == event and (where is None or where(item)):
                return item

    def ask(self, cmd: str, event: str, wait: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a command and return its reply event (``wait``: seconds to wait for it)."""
        self.send(cmd=cmd, **fields)
        return self.expect(event, wait)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def close(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            try:
                self.send(cmd="exit")
                return self.popen.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        return self.popen.wait(timeout)


def start_coordinator(
    rundir: Path, data: Path, channel: str, persister: str, *extra: str
) -> subprocess.Popen[str]:
    """``localsync coordinator`` for ``channel`` in ``rundir``, its output piped (text)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "coordinator",
            "--channel",
            channel,
            "--data",
            str(data),
            "--persister",
            persister,
            "--runtime-dir",
            str(rundir),
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


if __name__ == "__main__":
    main()
