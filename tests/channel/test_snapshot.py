"""Shared-memory snapshots for channel joins (localsync.channel.snapshot), with real
processes on real ipc:// channels.

The processes are this module's roles (``python -m tests.channel.test_snapshot ROLE``):

``holder``  a store of ``--rows`` rows (2 cells each) on the channel; ``--tamper KIND`` makes
            it spoil every snapshot it offers right after making the offer (``corrupt``: flip
            payload bytes; ``truncate``; ``remove``: unlink the segment; ``digest``: offer a
            wrong digest), as a faulty or hostile owner would.
``joiner``  an empty store joining the channel.
Both take ``--no-snapshots`` and answer the commands ``set`` (cells), ``hashes``, ``stats``,
``rows`` and ``exit`` with JSON events; ``ready`` carries the client id, pid and stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.channel_procs import Proc, start_coordinator

ROLE_MODULE = "tests.channel.test_snapshot"
SHM = Path("/dev/shm")
ROWS = 10_000  # 20,000 cells
TIMEOUT = 30.0

pytestmark = [
    pytest.mark.process,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm"),
]


# -- roles (run in their own processes) ---------------------------------------------------------


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _tamper(kind: str, encoded: bytes) -> bytes:
    """Spoil the segment of ``encoded`` (an offer) the way ``kind`` says; the offer to send."""
    from localsync.channel.snapshot import HEADER_SIZE, Offer, segment_path

    offer = Offer.decode(encoded)
    path = segment_path(offer.name)
    if kind == "corrupt":
        with open(path, "r+b") as file:
            file.seek(HEADER_SIZE + offer.size // 2)
            byte = file.read(1)
            file.seek(-1, os.SEEK_CUR)
            file.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "truncate":
        os.truncate(path, HEADER_SIZE + offer.size // 2)
    elif kind == "remove":
        path.unlink()
    elif kind == "digest":
        return Offer(
            offer.name, offer.size, bytes(32), offer.tables_hash, offer.values_hash
        ).encode()
    return encoded


async def _role(args: argparse.Namespace) -> None:
    from localsync import create_mergeable_store
    from localsync.channel.synchronizer import create_channel_synchronizer

    store = create_mergeable_store()
    if args.role == "holder":
        with store.transaction():
            for row in range(args.rows):
                store.set_row("t", f"r{row}", {"a": row, "b": f"v{row}"})
    sync = create_channel_synchronizer(
        store,
        args.channel,
        runtime_dir=args.runtime_dir,
        anti_entropy_seconds=0.3,
        snapshots=not args.no_snapshots,
    )
    if args.tamper:
        transport = sync.transport
        serve = transport.on_snapshot_ask
        assert serve is not None

        def tampering(asker: str) -> bytes | None:
            offer = serve(asker)
            return _tamper(args.tamper, offer) if offer else offer

        transport.on_snapshot_ask = tampering
    await sync.start_sync()
    _emit("ready", id=sync.client_id, pid=os.getpid(), stats=sync.get_channel_stats())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "set":
            with store.transaction():
                for table, row, cell, value in command["cells"]:
                    store.set_cell(table, row, cell, value)
            _emit("done")
        elif cmd == "hashes":
            _emit("hashes", value=store.get_mergeable_content_hashes())
        elif cmd == "stats":
            _emit("stats", value=sync.get_channel_stats())
        elif cmd == "rows":
            _emit("rows", value=len(store.get_row_ids("t")))
        elif cmd == "exit":
            break
    await sync.destroy()
    _emit("destroyed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["holder", "joiner"])
    parser.add_argument("--channel", required=True)
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--tamper", choices=["corrupt", "truncate", "remove", "digest"])
    parser.add_argument("--no-snapshots", action="store_true")
    asyncio.run(_role(parser.parse_args()))


# -- test side ----------------------------------------------------------------------------------


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    return folder


def _start(role: str, rundir: Path, *extra: str) -> Proc:
    return Proc(role, "--channel", "snap", "--runtime-dir", str(rundir), *extra, module=ROLE_MODULE)


def _segments(pid: int) -> list[Path]:
    return sorted(SHM.glob(f"localsync-snap-{os.getuid()}-{pid}-*"))


def _stats(proc: Proc) -> dict[str, int]:
    return proc.ask("stats", "stats", TIMEOUT)["value"]


def _hashes(proc: Proc) -> list[int]:
    return proc.ask("hashes", "hashes", TIMEOUT)["value"]


def _poll(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _converged(*procs: Proc) -> None:
    _poll(lambda: len({tuple(_hashes(p)) for p in procs}) == 1, "equal hashes")


def _close(*procs: Proc) -> None:
    for proc in procs:
        proc.close(TIMEOUT)


def test_joiner_installs_a_snapshot_and_later_writes_still_arrive(rundir: Path) -> None:
    holder = _start("holder", rundir)
    joiner = None
    try:
        holder.expect("ready", TIMEOUT)
        joiner = _start("joiner", rundir)
        ready = joiner.expect("ready", TIMEOUT)
        # installed before start_sync returned: the whole content, hashes equal to the owner's
        assert ready["stats"]["snapshot_joins"] == 1
        assert ready["stats"]["snapshot_fallbacks"] == 0
        assert joiner.ask("rows", "rows", TIMEOUT)["value"] == ROWS
        assert _hashes(joiner) == _hashes(holder)
        assert _stats(holder)["snapshots_served"] == 1
        # the channel goes on as usual, both ways
        holder.ask("set", "done", TIMEOUT, cells=[["t", "late", "a", 1]])
        joiner.ask("set", "done", TIMEOUT, cells=[["t", "later", "a", 2]])
        _poll(lambda: joiner.ask("rows", "rows", TIMEOUT)["value"] == ROWS + 2, "late rows")
        _converged(holder, joiner)
    finally:
        _close(*(p for p in (joiner, holder) if p is not None))


def test_segments_are_private_unguessable_and_removed_at_destroy(rundir: Path) -> None:
    holder = _start("holder", rundir)
    joiners: list[Proc] = []
    try:
        pid = holder.expect("ready", TIMEOUT)["pid"]
        names = []
        for version in range(2):
            if version:
                joiners[0].close(TIMEOUT)  # (else the second joiner may ask the first)
                holder.ask("set", "done", TIMEOUT, cells=[["t", "new", "a", 1]])
            joiner = _start("joiner", rundir)
            joiners.append(joiner)
            assert joiner.expect("ready", TIMEOUT)["stats"]["snapshot_joins"] == 1
            (segment,) = _segments(pid)  # a new content version replaced the old segment
            info = segment.stat()
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
            names.append(segment.name)
        # the name carries uid and pid, then 32 random hex digits: two segments of the same
        # owner and channel share nothing else, and the channel's name is not in them
        prefix = f"localsync-snap-{os.getuid()}-{pid}-"
        randoms = [name.removeprefix(prefix) for name in names]
        assert all(len(r) == 32 and int(r, 16) >= 0 for r in randoms)
        assert randoms[0] != randoms[1] and "snap-" not in "".join(randoms)
        _close(*joiners)
        holder.close(TIMEOUT)
        assert not _segments(pid)  # destroy removed it
    finally:
        _close(*joiners, holder)


def test_segment_of_a_sigkilled_owner_is_removed_by_its_resource_tracker(rundir: Path) -> None:
    holder = _start("holder", rundir)
    joiner = None
    try:
        pid = holder.expect("ready", TIMEOUT)["pid"]
        joiner = _start("joiner", rundir)
        assert joiner.expect("ready", TIMEOUT)["stats"]["snapshot_joins"] == 1
        assert _segments(pid)
        holder.kill()  # SIGKILL (and reaped): no atexit, no destroy
        _poll(lambda: not _segments(pid), "the dead owner's segment to go")
        # the owner's resource tracker saw it die and unlinked what it still had registered
        # (a sweep by a live participant is the second line, tested below)
        _poll(lambda: "leaked shared_memory" in "".join(holder.stderr), "the tracker's report")
        assert _hashes(joiner)  # (the survivor is fine)
    finally:
        _close(*(p for p in (joiner, holder) if p is not None))


def test_a_participant_sweeps_segments_of_dead_owners(rundir: Path) -> None:
    # a segment left by an owner whose resource tracker died too (kill -9 of both)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    left = SHM / f"localsync-snap-{os.getuid()}-{dead_pid}-{secrets.token_hex(16)}"
    left.write_bytes(b"left behind")
    left.chmod(0o600)
    alive = SHM / f"localsync-snap-{os.getuid()}-{os.getpid()}-{secrets.token_hex(16)}"
    alive.write_bytes(b"the test process is alive")
    holder = _start("holder", rundir, "--rows", "10")
    try:
        holder.expect("ready", TIMEOUT)  # opening the channel swept
        _poll(lambda: not left.exists(), "the sweep")
        assert alive.exists()  # a live owner's segment stays
    finally:
        holder.close(TIMEOUT)
        left.unlink(missing_ok=True)
        alive.unlink(missing_ok=True)


@pytest.mark.parametrize("tamper", ["corrupt", "truncate", "remove", "digest"])
def test_a_spoiled_snapshot_falls_back_to_the_normal_exchange(rundir: Path, tamper: str) -> None:
    holder = _start("holder", rundir, "--tamper", tamper)
    joiner = None
    try:
        holder.expect("ready", TIMEOUT)
        joiner = _start("joiner", rundir)
        stats = joiner.expect("ready", TIMEOUT)["stats"]
        assert stats["snapshot_fallbacks"] == 1 and stats["snapshot_joins"] == 0
        assert _stats(holder)["snapshots_served"] == 1
        _converged(holder, joiner)
        assert joiner.ask("rows", "rows", TIMEOUT)["value"] == ROWS
    finally:
        _close(*(p for p in (joiner, holder) if p is not None))


def test_snapshots_false_uses_the_normal_exchange(rundir: Path) -> None:
    holder = _start("holder", rundir)
    plain = refused = None
    try:
        holder.expect("ready", TIMEOUT)
        plain = _start("joiner", rundir, "--no-snapshots")
        stats = plain.expect("ready", TIMEOUT)["stats"]
        assert "snapshot_joins" not in stats  # neither asks nor serves
        _converged(holder, plain)
        assert _stats(holder)["snapshots_served"] == 0
        plain.close(TIMEOUT)
        holder.close(TIMEOUT)
        # a holder with snapshots off refuses a joiner that asks: it falls back at once
        holder = _start("holder", rundir, "--no-snapshots")
        holder.expect("ready", TIMEOUT)
        refused = _start("joiner", rundir)
        stats = refused.expect("ready", TIMEOUT)["stats"]
        assert stats["snapshot_fallbacks"] == 1 and stats["snapshot_joins"] == 0
        _converged(holder, refused)
    finally:
        _close(*(p for p in (refused, plain, holder) if p is not None))


def test_malformed_and_repeated_requests_are_ignored_and_counted(rundir: Path) -> None:
    from localsync.channel.endpoint import SNAPSHOT_ASK, SNAPSHOT_OFFER
    from localsync.channel.transport import ChannelTransport

    holder = _start("holder", rundir)
    try:
        holder_id = holder.expect("ready", TIMEOUT)["id"]
        offers: list[bytes] = []

        async def probe() -> None:
            raw = ChannelTransport("snap", runtime_dir=rundir)
            raw.on_snapshot_offer = offers.append
            await raw.open()
            try:
                raw._send_payload(holder_id, SNAPSHOT_ASK + b"\xff" * 16)  # not an id
                raw._send_payload(holder_id, SNAPSHOT_ASK + b"short")
                raw._send_payload(holder_id, SNAPSHOT_OFFER + b"\xc1garbage")  # unasked
                raw.ask_snapshot(holder_id)
                raw.ask_snapshot(holder_id)  # the same version again: not answered
                deadline = time.monotonic() + TIMEOUT
                while not offers and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # (room for a second answer that must not come)
            finally:
                raw.close()

        asyncio.run(probe())
        assert len(offers) == 1
        stats = _stats(holder)
        assert stats["ignored"] >= 3
        assert stats["snapshots_served"] == 1 and stats["snapshots_refused"] == 1
        assert _hashes(holder)  # still serving
    finally:
        holder.close(TIMEOUT)


def test_the_coordinator_is_asked_first_and_serves_snapshots(rundir: Path, tmp_path: Path) -> None:
    from localsync.channel.coordinator import channel_owner

    holder = _start("holder", rundir, "--rows", "2000")
    coordinator = start_coordinator(rundir, tmp_path / "data", "snap", "sqlite")
    joiner = None
    try:
        holder.expect("ready", TIMEOUT)
        assert coordinator.stdout is not None
        ready = json.loads(coordinator.stdout.readline())  # bounded by the test timeout
        assert ready["event"] == "ready"
        owner = channel_owner("snap", rundir)
        assert owner is not None and owner["client_id"] == ready["client_id"]
        served_by_holder = _stats(holder)["snapshots_served"]  # (the coordinator joined)
        joiner = _start("joiner", rundir)
        stats = joiner.expect("ready", TIMEOUT)["stats"]
        assert stats["snapshot_joins"] == 1, stats
        assert _hashes(joiner) == _hashes(holder)
        # asked the coordinator, not the holder (which may well have answered the hello first)
        assert _stats(holder)["snapshots_served"] == served_by_holder
        assert _segments(ready["pid"])  # the segment the coordinator made
        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(TIMEOUT) == 0
        assert not _segments(ready["pid"])  # its stop removed it
    finally:
        if joiner is not None:
            joiner.close(TIMEOUT)
        holder.close(TIMEOUT)
        if coordinator.poll() is None:
            coordinator.kill()
        coordinator.wait(TIMEOUT)


if __name__ == "__main__":
    main()
