"""Chaos: writers, the hub host and the coordinator SIGKILLed and SIGSTOPped at random.

Three writer processes (:mod:`tests.chaos_procs`) write rows continuously into a channel that
a coordinator persists; every 0.3-1.5 s one process is killed (and replaced) or stopped for
0.2-3 s. Each writer reports the rows the coordinator acknowledged (durably saved). After the
chaos every process is resumed, writing stops, and the test asserts:

* every live process and a newcomer converge to the same content (same hashes);
* no acknowledged row is missing, neither from that content nor from the coordinator's data
  file once it has exited, and the file holds exactly the converged content.

``LOCALSYNC_CHAOS_SECONDS`` (default 30 per persister) runs it longer by hand,
``LOCALSYNC_CHAOS_SEED`` replays one schedule; a summary line is printed either way
(``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.channel.coordinator import data_file
from tests.channel_procs import Proc, start_coordinator

CHAOS_SECONDS = float(os.environ.get("LOCALSYNC_CHAOS_SECONDS", "30"))
WRITERS = 3
CHANNEL = "chaos"

pytestmark = [pytest.mark.process, pytest.mark.timeout(int(CHAOS_SECONDS) + 240)]


class Writer:
    """A writer process and what it has reported (read without blocking the chaos loop)."""

    def __init__(self, rundir: Path, name: str) -> None:
        self.name = name
        self.proc = Proc(
            "--channel",
            CHANNEL,
            "--writer",
            name,
            "--runtime-dir",
            str(rundir),
            module="tests.chaos_procs",
        )
        self.acked = -1
        self.ready = False
        self.dead = False
        self.stopped_writing: int | None = None
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def drain(self) -> None:
        while True:
            try:
                event = self.proc.events.get_nowait()
            except queue.Empty:
                return
            kind = event.get("event")
            if kind == "acked":
                self.acked = max(self.acked, event["upto"])
            elif kind == "ready":
                self.ready = True
            elif kind == "stopped":
                self.stopped_writing = event["next"]
            else:
                self.replies.put(event)

    def ask(self, cmd: str, event: str, timeout: float) -> dict[str, Any] | None:
        """Reply to ``cmd``, or None when the process does not answer in time."""
        self.proc.send(cmd=cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            try:
                reply = self.replies.get(timeout=0.05)
            except queue.Empty:
                continue
            if reply.get("event") == event:
                return reply
        return None


class Coordinator:
    """``localsync coordinator`` as a process; its ``ready`` line is read in a thread."""

    def __init__(self, rundir: Path, data: Path, persister: str) -> None:
        self.popen = start_coordinator(rundir, data, CHANNEL, persister)
        self.ready = threading.Event()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None and self.popen.stderr is not None
        if self.popen.stdout.readline():
            self.ready.set()
        self.stderr.extend(self.popen.stderr)

    @property
    def pid(self) -> int:
        return self.popen.pid


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, signum)


def _load_file(path: Path, persister: str) -> dict[str, Any]:
    """The tables a fresh store loads from the coordinator's data file."""

    async def load() -> dict[str, Any]:
        store = create_mergeable_store()
        if persister == "sqlite":
            from localsync.persisters.sqlite import create_sqlite_persister

            p: Any = create_sqlite_persister(store, str(path))
        else:
            from localsync.persisters.file import create_file_persister

            p = create_file_persister(store, str(path))
        await p.load()
        await p.destroy()
        return store.get_tables()

    return asyncio.run(load())


@pytest.mark.parametrize("persister", ["sqlite", "file"])
def test_chaos_loses_no_acknowledged_row(rundir: Path, persister: str) -> None:
    seed = int(os.environ.get("LOCALSYNC_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"chaos: seed {seed} (LOCALSYNC_CHAOS_SEED replays it)")  # shown when the test fails
    data = rundir / "data"
    counts: Counter[str] = Counter()
    coordinators = [Coordinator(rundir, data, persister)]
    assert coordinators[0].ready.wait(30), "".join(coordinators[0].stderr)
    writers: list[Writer] = []
    reader: Proc | None = None
    stopped: dict[int, float] = {}  # pid -> when to resume it

    def spawn_writer() -> Writer:
        writer = Writer(rundir, f"w{len(writers)}")
        writers.append(writer)
        return writer

    def live_writers() -> list[Writer]:
        return [w for w in writers if not w.dead]

    def hub_host_pid() -> int | None:
        """The process hosting the hub, as the running writers see it (else the coordinator)."""
        for writer in live_writers():
            if writer.pid in stopped or not writer.ready:
                continue
            reply = writer.ask("status", "status", 1.0)
            if reply is not None and reply["host"]:
                return writer.pid
        coordinator = coordinators[-1]
        return coordinator.pid if coordinator.popen.poll() is None else None

    def kill(pid: int) -> None:
        _signal(pid, signal.SIGKILL)
        stopped.pop(pid, None)
        for writer in live_writers():
            if writer.pid == pid:
                writer.proc.popen.wait(10)
                writer.dead = True
                counts["writers killed"] += 1
                spawn_writer()
        coordinator = coordinators[-1]
        if coordinator.pid == pid:
            coordinator.popen.wait(10)
            counts["coordinators killed"] += 1
            coordinators.append(Coordinator(rundir, data, persister))

    def stop(pid: int) -> None:
        if pid not in stopped:
            _signal(pid, signal.SIGSTOP)
            stopped[pid] = time.monotonic() + rng.uniform(0.2, 3.0)
            counts["stops"] += 1

    try:
        for _ in range(WRITERS):
            spawn_writer()
        deadline = time.monotonic() + 60
        while not all(w.ready for w in writers):
            assert time.monotonic() < deadline, "writers did not start"
            for w in writers:
                w.drain()
            time.sleep(0.05)

        end = time.monotonic() + CHAOS_SECONDS
        next_action = time.monotonic() + 1.0
        while time.monotonic() < end:
            now = time.monotonic()
            for w in writers:
                w.drain()
            for pid, due in list(stopped.items()):
                if due <= now:
                    _signal(pid, signal.SIGCONT)
                    del stopped[pid]
            if now >= next_action:
                action = rng.choice(
                    [
                        "kill writer",
                        "stop writer",
                        "kill coordinator",
                        "stop coordinator",
                        "kill hub host",
                        "stop hub host",
                    ]
                )
                counts[action] += 1
                target: int | None
                if action.endswith("writer"):
                    target = rng.choice(live_writers()).pid
                elif action.endswith("coordinator"):
                    target = coordinators[-1].pid
                else:
                    target = hub_host_pid()
                if target is not None:
                    (kill if action.startswith("kill") else stop)(target)
                next_action = time.monotonic() + rng.uniform(0.3, 1.5)
            time.sleep(0.02)

        # calm: resume everyone, stop writing, and see what converges
        for pid in list(stopped):
            _signal(pid, signal.SIGCONT)
        stopped.clear()
        calm = time.monotonic()
        coordinator = coordinators[-1]
        assert coordinator.ready.wait(60), "".join(coordinator.stderr)
        coordinator_ready = time.monotonic() - calm
        survivors = live_writers()
        for w in survivors:
            w.proc.send(cmd="stop_writing")
        deadline = time.monotonic() + 60
        while not all(w.ready and w.stopped_writing is not None for w in survivors):
            assert time.monotonic() < deadline, "writers did not stop writing"
            for w in survivors:
                w.drain()
            time.sleep(0.05)
        reader = Proc("sync", "--channel", CHANNEL, "--runtime-dir", str(rundir))
        reader.expect("ready", 60)
        reader_joined = time.monotonic() - calm

        converged: list[int] | None = None
        deadline = time.monotonic() + 90
        while converged is None:
            assert time.monotonic() < deadline, "no convergence within 90 s of the calm"
            hashes = [reader.ask("hashes", "hashes", 30)["value"]]
            for w in survivors:
                reply = w.ask("hashes", "hashes", 30)
                assert reply is not None, "".join(w.proc.stderr)[-2000:]
                hashes.append(reply["value"])
            if all(h == hashes[0] for h in hashes):
                converged = hashes[0]
            else:
                time.sleep(0.1)
        convergence_seconds = time.monotonic() - calm
        tables = reader.ask("content", "content", 60)["value"][0]
        rows = tables.get("chaos", {})

        # every acknowledged row is in the converged content
        for w in writers:
            w.drain()
        acknowledged = sum(w.acked + 1 for w in writers)
        lost = [
            f"{w.name}-{n}"
            for w in writers
            for n in range(w.acked + 1)
            if f"{w.name}-{n}" not in rows
        ]
        assert not lost, f"seed {seed}: {len(lost)} acknowledged rows lost, e.g. {lost[:5]}"

        # ... and on disk, where the coordinator's final save holds exactly that content
        coordinator.popen.send_signal(signal.SIGTERM)
        assert coordinator.popen.wait(60) == 0, "".join(coordinator.stderr)[-2000:]
        on_disk = _load_file(data_file(CHANNEL, data, persister), persister)
        assert on_disk == tables, f"seed {seed}: the data file differs from the channel"

        written = sum(
            w.stopped_writing if w.stopped_writing is not None else w.acked + 1 for w in writers
        )
        summary = {
            "seed": seed,
            "persister": persister,
            "chaos_seconds": CHAOS_SECONDS,
            **counts,
            "rows in the channel": len(rows),
            "rows written (at least)": written,  # killed writers: their acknowledged rows
            "rows acknowledged": acknowledged,
            "acknowledged rows lost": len(lost),
            "convergence seconds after the calm": round(convergence_seconds, 2),
            "of which: coordinator up": round(coordinator_ready, 2),
            "newcomer joined": round(reader_joined, 2),
        }
        print("\nchaos:", json.dumps(summary))
        assert acknowledged > 0, f"seed {seed}: nothing was ever acknowledged"
    finally:
        for pid in list(stopped):
            _signal(pid, signal.SIGCONT)
        for w in writers:
            w.proc.kill()
        if reader is not None:
            reader.kill()
        for c in coordinators:
            if c.popen.poll() is None:
                c.popen.kill()
                c.popen.wait(10)
