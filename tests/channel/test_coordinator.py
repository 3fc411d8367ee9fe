"""The coordinator keeps what it acknowledged across SIGTERM restarts and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localsync.channel.coordinator import data_file
from tests.channel_procs import ROOT, Proc, start_coordinator

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]


class CoordinatorProc:
    def __init__(self, rundir: Path, data: Path, channel: str, persister: str, *extra: str) -> None:
        self.popen = start_coordinator(rundir, data, channel, persister, *extra)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()  # bounded by the test timeout
        if not line:
            raise RuntimeError(self.popen.stderr.read() if self.popen.stderr else "no output")
        self.ready = json.loads(line)

    def terminate(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(30)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


def worker(rundir: Path, channel: str) -> Proc:
    p = Proc("sync", "--channel", channel, "--runtime-dir", str(rundir))
    p.expect("ready", 20)
    return p


def content_of(p: Proc) -> list:
    return p.ask("content", "content")["value"]


def holds(big: list, small: list) -> bool:
    """Every cell and value of ``small`` is in ``big`` with the same value."""
    (big_tables, big_values), (tables, values) = big, small
    return all(
        big_tables.get(t, {}).get(r, {}).get(c, object()) == v
        for t, rows in tables.items()
        for r, cells in rows.items()
        for c, v in cells.items()
    ) and all(big_values.get(k, object()) == v for k, v in values.items())


def eventually_holds(p: Proc, *expected: list, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        content = content_of(p)
        if all(holds(content, e) for e in expected):
            return content
        assert time.monotonic() < deadline, (content, expected)
        time.sleep(0.1)


def acknowledge(p: Proc) -> list:
    """What ``p`` holds now, once a coordinator acknowledged it."""
    held = content_of(p)
    assert p.ask("wait_ack", "acked", 40, timeout=30)["ok"] is True
    return held


@pytest.mark.parametrize("persister", ["sqlite", "file"])
def test_coordinator_restart_loses_nothing_acknowledged(rundir: Path, persister: str) -> None:
    data = rundir / "data"
    coordinator = CoordinatorProc(rundir, data, "orders", persister)
    procs: list[Proc] = []
    try:
        assert coordinator.ready["data"] == str(data_file("orders", data, persister))
        a, b = worker(rundir, "orders"), worker(rundir, "orders")
        procs += [a, b]
        a.send(cmd="set", cells=[["t", "a", "n", 1], ["t", "a", "o", {"x": [1]}]])
        b.send(cmd="set", cells=[["t", "b", "n", 2]])
        b.send(cmd="write_loop", table="many", count=500)
        b.expect("written", 30)
        acked_a, acked_b = acknowledge(a), acknowledge(b)
        assert len(acked_b[0]["many"]) == 500
        for p in procs:
            assert p.close() == 0
        assert coordinator.terminate() == 0  # SIGTERM: final save, exit 0

        # everyone is gone; a new coordinator and a new worker find everything acknowledged
        coordinator = CoordinatorProc(rundir, data, "orders", persister)
        late = worker(rundir, "orders")
        procs.append(late)
        eventually_holds(late, acked_a, acked_b)
        late.send(cmd="set", cells=[["t", "late", "n", 3]])
        acked_late = acknowledge(late)
        assert acked_late[0]["t"]["late"] == {"n": 3}

        # a crash (SIGKILL) right after an acknowledgement loses nothing either
        assert late.close() == 0  # so that only the coordinator can serve the next joiner
        coordinator.kill()
        coordinator = CoordinatorProc(rundir, data, "orders", persister)
        fresh = worker(rundir, "orders")
        procs.append(fresh)
        eventually_holds(fresh, acked_a, acked_b, acked_late)
    finally:
        for p in procs:
            p.kill()
        coordinator.kill()


def test_coordinator_rejects_bad_arguments(rundir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localsync.cli", "coordinator", "--channel", "", "--data", "x"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("localsync coordinator: error: ") and "empty" in result.stderr
    os.chmod(rundir, 0o755)  # not private: refused with a clear message, not a traceback
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "coordinator",
            "--channel",
            "c",
            "--data",
            str(rundir / "data"),
            "--runtime-dir",
            str(rundir),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "0755" in result.stderr and "Traceback" not in result.stderr
    assert data_file("a b/c", rundir).name.startswith("channel-")
    with pytest.raises(ValueError):
        data_file("x", rundir, "postgres")


def test_a_failed_save_is_not_acknowledged_then_retried(rundir: Path) -> None:
    """A save that fails (here: the data file's path became a folder) must not be announced
    as acknowledged; the coordinator keeps serving and acknowledges once a retry succeeds."""
    import asyncio

    from localsync import create_mergeable_store
    from localsync.channel.coordinator import Coordinator
    from localsync.channel.synchronizer import create_channel_synchronizer

    data = rundir / "data"

    async def scenario() -> None:
        coordinator = Coordinator("ack-fail", data, "file", runtime_dir=rundir)
        await coordinator.start()
        store = create_mergeable_store()
        sync = create_channel_synchronizer(store, "ack-fail", runtime_dir=rundir)
        await sync.start_sync()
        try:
            store.set_cell("t", "r", "c", 1)
            await sync.wait_acknowledged(20)

            path = coordinator.path
            path.unlink()
            path.mkdir()  # every save now fails at the final rename
            store.set_cell("t", "r", "c", 2)
            latest = tuple(store.get_mergeable_content_hashes())
            for _ in range(400):
                if coordinator.save_errors:
                    break
                await asyncio.sleep(0.025)
            assert coordinator.save_errors > 0
            assert coordinator.saved_hashes != latest
            with pytest.raises(TimeoutError):
                await sync.wait_acknowledged(1.0)

            path.rmdir()  # the disk "recovers": the retry must save and acknowledge
            await sync.wait_acknowledged(30)
            assert coordinator.saved_hashes == latest
        finally:
            await sync.destroy()
            await coordinator.stop()
        saved = json.loads(coordinator.path.read_text())
        assert saved[0][0]["t"][0]["r"][0]["c"][0] == 2

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_a_second_coordinator_with_another_data_folder_refuses(rundir: Path) -> None:
    """Two folders fed by one channel would each get the other's data: the second
    coordinator refuses at once, naming the first one's data folder and PID."""
    first = CoordinatorProc(rundir, rundir / "one", "orders", "sqlite")
    try:
        second = start_coordinator(rundir, rundir / "two", "orders", "sqlite")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2, out + err
        assert out == "" and "Traceback" not in err
        (line,) = err.splitlines()
        assert line.startswith("localsync coordinator: error: ")
        assert str(rundir / "one") in line and f"PID {first.popen.pid}" in line
        assert not (rundir / "two" / "orders.sqlite").exists()  # nothing loaded or saved
        assert first.popen.poll() is None  # the owner is untouched
    finally:
        assert first.terminate() == 0


def test_a_second_coordinator_of_the_same_file_waits_for_the_first_then_takes_over(
    rundir: Path,
) -> None:
    """Two coordinators saving one file would overwrite each other: a second one waits
    (--owner-wait) for the first to exit, refuses if it does not, takes over once it has."""
    data = rundir / "data"
    first = CoordinatorProc(rundir, data, "orders", "sqlite")
    waiting: subprocess.Popen[str] | None = None
    try:
        refused = start_coordinator(rundir, data, "orders", "sqlite", "--owner-wait", "0.5")
        out, err = refused.communicate(timeout=60)
        assert refused.returncode == 2, out + err
        (line,) = err.splitlines()
        assert line.startswith("localsync coordinator: error: ")
        assert "same data file" in line and f"PID {first.popen.pid}" in line

        waiting = start_coordinator(rundir, data, "orders", "sqlite")  # waits up to 10 s
        first.kill()  # the kernel releases the lock of a SIGKILLed owner
        assert waiting.stdout is not None
        ready = json.loads(waiting.stdout.readline())  # bounded by the test timeout
        assert ready["event"] == "ready", waiting.stderr.read() if waiting.stderr else ""
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(30) == 0
    finally:
        first.kill()
        if waiting is not None:
            waiting.kill()
            waiting.wait(10)


def test_a_coordinator_started_with_exit_with_parent_saves_and_exits_when_its_parent_dies(
    rundir: Path,
) -> None:
    """--exit-with-parent (what the demo uses): a parent killed with SIGKILL does not leave
    the coordinator running; it saves and exits by itself."""
    data = rundir / "data"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)\n"
        "print(child.pid, child.stdout.readline(), sep='\\n', end='', flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [
            *(sys.executable, "-c", script),
            *(sys.executable, "-m", "localsync.cli", "coordinator", "--channel", "orders"),
            *("--data", str(data), "--runtime-dir", str(rundir), "--exit-with-parent"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert json.loads(parent.stdout.readline())["event"] == "ready"
        writer = worker(rundir, "orders")
        writer.send(cmd="set", cells=[["t", "r", "n", 1]])
        acknowledge(writer)
        assert writer.close() == 0
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 60
        while _alive(child):
            assert time.monotonic() < deadline, "the coordinator outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()
        parent.wait(10)
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
    assert data_file("orders", data).is_file()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
