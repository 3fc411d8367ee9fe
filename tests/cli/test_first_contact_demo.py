"""Issue 18, "first contact": ``localsync demo`` leaves nothing running, its channel is
private to its data folder, and wrong arguments are one line with exit status 2.

Real ``localsync demo`` / ``localsync coordinator`` processes in temporary folders, each test
with its own runtime folder (``$LOCALSYNC_RUNTIME_DIR``); which processes a demo started is
read with psutil while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # generous: a behavioural bound, not a timing measurement


def env_for(rundir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LOCALSYNC_RUNTIME_DIR": str(rundir)}


def cli(rundir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localsync.cli", *args],
        cwd=ROOT,
        env=env_for(rundir),
        capture_output=True,
        text=True,
        timeout=120,
    )


class Demo:
    """A ``localsync demo`` in the background; its stdout is collected line by line."""

    def __init__(self, rundir: Path, data: Path, *extra: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "localsync.cli", "demo", "--data", str(data), "--plain", *extra],
            cwd=ROOT,
            env=env_for(rundir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_writing(self) -> None:
        """Until a progress line shows orders written (workers and coordinator are up)."""
        deadline = time.monotonic() + DEADLINE
        while not any(line.startswith("[") and "orders=0 " not in line for line in self.lines):
            assert self.popen.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.popen.pid).children(recursive=True)

    def output(self) -> str:
        self._reader.join(5)
        return "".join(self.lines)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)


def command_of(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone, or a zombie
        return []


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_all_gone(processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not all(gone(p) for p in processes):
        if time.monotonic() > deadline:
            alive = [command_of(p) for p in processes if not gone(p)]
            for p in processes:  # do not leave them behind for the next tests
                with contextlib.suppress(psutil.Error):
                    p.kill()
            pytest.fail(f"still running {DEADLINE} s later: {alive}")
        time.sleep(0.2)


def coordinator_of(processes: list[psutil.Process]) -> psutil.Process:
    found = [p for p in processes if "coordinator" in command_of(p)]
    assert len(found) == 1, [command_of(p) for p in processes]
    return found[0]


def orders_in(data: Path) -> list[str]:
    """The order ids persisted in ``data`` (its one SQLite file, reloaded into a store)."""
    from localsync.cli.demo import ORDERS, load_persisted

    (path,) = data.glob("*.sqlite")
    return list(load_persisted(path, "sqlite").get_row_ids(ORDERS))


def run_demo_to_end(rundir: Path, data: Path, *extra: str) -> tuple[dict, str]:
    result = cli(rundir, "demo", "--data", str(data), "--json", "--plain", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_stops_the_demos_coordinator_and_workers(
    rundir: Path, tmp_path: Path, signum: int
) -> None:
    data = tmp_path / "data"
    demo = Demo(rundir, data, "--workers", "2", "--seconds", "300")
    try:
        demo.wait_writing()
        children = demo.descendants()
        coordinator_of(children)
        demo.popen.send_signal(signum)
        status = demo.popen.wait(DEADLINE)
        assert_all_gone(children)
        assert status == 128 + signum, demo.output()
    finally:
        demo.kill()
    out = demo.output()
    name = "terminated" if signum == signal.SIGTERM else "hangup"
    assert f"{name}: stopping workers, saving" in out
    assert "persisted in" in out  # the coordinator's final save was reloaded and shown
    assert orders_in(data)


def test_a_sigkilled_demo_leaves_no_process_and_its_channel_serves_no_later_demo(
    rundir: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    demo = Demo(rundir, first, "--workers", "2", "--seconds", "300")
    try:
        demo.wait_writing()
        children = demo.descendants()
        coordinator_of(children)
        demo.popen.send_signal(signal.SIGKILL)
        demo.popen.wait(DEADLINE)
        assert_all_gone(children)  # the coordinator and the workers noticed by themselves
    finally:
        demo.kill()
    saved = orders_in(first)
    assert saved  # the coordinator saved before it exited

    # a later demo in a fresh, empty folder starts from nothing
    summary, out = run_demo_to_end(rundir, tmp_path / "fresh", "--workers", "1", "--rows", "7")
    assert "no previous data: first run" in out
    assert (summary["previous_orders"], summary["orders"]) == (0, 7)
    assert len(orders_in(tmp_path / "fresh")) == 7
    assert sorted(orders_in(first)) == sorted(saved)  # and wrote nothing into the first one


def test_two_demos_at_once_in_different_folders_do_not_share_data(
    rundir: Path, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    demo = Demo(rundir, busy, "--workers", "2", "--seconds", "300", "--channel", "shared")
    try:
        demo.wait_writing()
        # three workers: the other demo's worker w2 has rows the busy one's cannot have
        summary, out = run_demo_to_end(
            rundir, tmp_path / "other", "--workers", "3", "--rows", "5", "--channel", "shared"
        )
        assert "no previous data: first run" in out
        assert (summary["orders"], summary["ok"]) == (15, True)
        assert len(orders_in(tmp_path / "other")) == 15
        demo.popen.send_signal(signal.SIGTERM)
        assert demo.popen.wait(DEADLINE) == 128 + signal.SIGTERM, demo.output()
    finally:
        demo.kill()
    # the busy demo's rows are its own two workers' (w0, w1): none of the other's w2
    assert orders_in(busy)
    assert all(row.startswith(("r1-w0-", "r1-w1-")) for row in orders_in(busy))


def test_a_second_demo_on_a_folder_in_use_refuses(rundir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    demo = Demo(rundir, data, "--workers", "1", "--seconds", "300")
    try:
        demo.wait_writing()
        pid = coordinator_of(demo.descendants()).pid
        result = cli(rundir, "demo", "--data", str(data), "--workers", "1", "--rows", "5")
        assert result.returncode == 2, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("localsync demo: error:"), result.stderr
        assert str(data) in errors[0] and f"PID {pid}" in errors[0]
        assert "Traceback" not in result.stderr
    finally:
        demo.popen.send_signal(signal.SIGTERM)
        demo.popen.wait(DEADLINE)
        demo.kill()


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"localsync {command}: error: "), result.stderr


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (["--channel", ""], "empty"),
        (["--seconds", "-5"], "--seconds must be"),
        (["--seconds", "0"], "--seconds must be"),
        (["--seconds", "nan"], "--seconds must be"),
        (["--seconds", "inf"], "--seconds must be"),
        (["--workers", "0"], "--workers must be"),
        (["--workers", "-3"], "--workers must be"),
        (["--workers", "100000"], "--workers must be"),
        (["--rows", "-1"], "--rows must be"),
        (["--rows", "0"], "--rows must be"),
        (["--rate", "-1"], "--rate must be"),
        (["--rate", "nan"], "--rate must be"),
        (["--data", "FILE"], "not a folder"),
    ],
)
def test_demo_refuses_a_wrong_argument_in_one_line(
    rundir: Path, tmp_path: Path, bad: list[str], says: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    bad = [str(a_file) if arg == "FILE" else arg for arg in bad]
    data = ["--data", str(tmp_path / "data")] if "--data" not in bad else []
    result = cli(rundir, "demo", *data, *bad)
    assert_one_line_error(result, "demo")
    assert says in result.stderr
    assert not (tmp_path / "data").exists()  # nothing started
    assert not any(rundir.iterdir())


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (["--channel", ""], "empty"),
        (["--hub", "nonsense"], "--hub: hub address must look like tcp://HOST:PORT"),
        (["--hub", "tcp://127.0.0.1:70000"], "--hub: "),
        (["--owner-wait", "-1"], "--owner-wait must be"),
        (["--owner-wait", "nan"], "--owner-wait must be"),
        (["--data", "FILE"], "not a folder"),
    ],
)
def test_coordinator_refuses_a_wrong_argument_in_one_line(
    rundir: Path, tmp_path: Path, bad: list[str], says: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    bad = [str(a_file) if arg == "FILE" else arg for arg in bad]
    args = {"--channel": "c", "--data": str(tmp_path / "data"), "--runtime-dir": str(rundir)}
    for option, value in zip(bad[::2], bad[1::2], strict=True):
        args[option] = value
    result = cli(rundir, "coordinator", *(part for item in args.items() for part in item))
    assert_one_line_error(result, "coordinator")
    assert says in result.stderr
    assert not (tmp_path / "data").exists()
