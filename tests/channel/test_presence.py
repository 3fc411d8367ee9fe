"""Presence files: the kernel's flock tells who is alive, however a process died."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from localsync.channel.presence import HIDDEN_GRACE_SECONDS, Presence, is_alive, sweep

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from localsync.channel.presence import Presence
    presence = Presence(Path(sys.argv[1]), sys.argv[2])
    if sys.argv[3] == "fork":
        # the child reports itself: code after fork() runs after the at-fork handlers, so the
        # line proves that the child has closed its copy (the parent reporting the child's
        # pid let a loaded machine kill the parent before the child had run at all)
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
    else:
        print(0, flush=True)
    time.sleep(60)
    """
)


def holder(folder: Path, client_id: str, mode: str = "plain") -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), client_id, mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    return process, child


def test_a_live_holder_is_alive_and_a_sigkilled_one_is_not(tmp_path: Path) -> None:
    process, _ = holder(tmp_path, "A" * 16)
    try:
        assert is_alive(tmp_path, "A" * 16)
        assert is_alive(tmp_path, "A" * 16)  # checking does not take the lock away
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert not is_alive(tmp_path, "A" * 16)
        assert not (tmp_path / ("A" * 16)).exists()  # the checker cleaned up
        assert not is_alive(tmp_path, "B" * 16)  # never there
    finally:
        process.kill()
        process.wait(10)


def test_a_forked_child_does_not_keep_its_parent_alive(tmp_path: Path) -> None:
    process, child = holder(tmp_path, "F" * 16, "fork")
    try:
        assert is_alive(tmp_path, "F" * 16)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        os.kill(child, 0)  # the child still runs, holding a copy of the descriptor
        assert not is_alive(tmp_path, "F" * 16)
    finally:
        process.kill()
        process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_close_removes_the_file_and_sweep_removes_only_the_dead(tmp_path: Path) -> None:
    mine = Presence(tmp_path, "M" * 16)
    assert is_alive(tmp_path, "M" * 16)
    mine.close()
    mine.close()  # idempotent
    assert not (tmp_path / ("M" * 16)).exists() and not is_alive(tmp_path, "M" * 16)
    live = Presence(tmp_path, "L" * 16)
    for dead in ("D1" * 8, "D2" * 8):
        (tmp_path / dead).write_text("")  # nobody holds these
    (tmp_path / ".hidden-being-created").write_text("")
    assert sweep(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-being-created", "L" * 16]
    assert is_alive(tmp_path, "L" * 16)
    live.close()


def test_sweep_removes_a_hidden_file_left_by_a_creator_killed_before_renaming(
    tmp_path: Path,
) -> None:
    holder = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    old = time.time() - 2 * HIDDEN_GRACE_SECONDS
    orphan, stopped = tmp_path / f".{'O' * 16}", tmp_path / f".{'S' * 16}"
    killed = subprocess.Popen([sys.executable, "-c", holder, str(orphan)], stdout=subprocess.PIPE)
    alive = subprocess.Popen([sys.executable, "-c", holder, str(stopped)], stdout=subprocess.PIPE)
    try:
        for process in (killed, alive):
            assert process.stdout is not None and process.stdout.readline() == b"locked\n"
        killed.kill()  # died between creating its hidden file and renaming it
        killed.wait(10)
        young = tmp_path / f".{'Y' * 16}"
        young.write_text("")  # (a creator between its open and its lock, as far as we know)
        for path in (orphan, stopped):
            os.utime(path, (old, old))
        assert sweep(tmp_path) == 1
        # the orphan is gone; a locked one (its creator lives) and a young one stay
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".{'S' * 16}", f".{'Y' * 16}"]
    finally:
        for process in (killed, alive):
            process.kill()
            process.wait(10)
