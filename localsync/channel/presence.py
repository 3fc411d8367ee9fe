"""Who is still alive on a local channel: one locked file per participant.

Why: PUB/SUB never tells a sender that the receiver is gone. A participant that exits cleanly
says goodbye on the channel, but one killed with SIGKILL (or the OOM killer) says nothing,
and a joiner waiting for its diff would wait for the whole join time-out (long on purpose:
a live peer may need seconds to compute a diff of 10^6 cells). The kernel is the one witness
that never misses a death: every participant of a local channel holds an exclusive
``flock`` on its own file ``<channel>.peers/<client_id>``, and the kernel releases it when the
process dies, however it dies. Anyone can then ask "is X alive?" by trying to take X's lock
without blocking: refused means alive, granted (or no file) means gone. The check is a few
system calls, done only for peers that owe an answer for a while.

Files of dead participants are removed by whoever finds them unlocked (when checking, and in
a bounded sweep when joining); ids are random and never reused, so a removed file cannot
belong to a newer participant. A file is locked under a hidden name and then renamed; a
process killed in between leaves the hidden file behind, which a sweep removes once it is
unlocked and older than ``HIDDEN_GRACE_SECONDS`` (its creator holds it for microseconds).
A fork()ed child closes its inherited copy of the descriptor (without unlocking, which would
release the parent's lock) so that the lock dies with the process that took it. Channels on
a tcp:// hub have no shared folder, hence no presence: they fall back to goodbyes and
time-outs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import weakref
from pathlib import Path
from typing import Any

__all__ = ["Presence", "close_in_forked_children", "is_alive", "sweep"]

#: Dead participants' files examined per join (bounds the cost of a large backlog).
SWEEP_LIMIT = 64

#: A hidden file (a presence file being created) this old and unlocked was left by a process
#: that died between creating and renaming it.
HIDDEN_GRACE_SECONDS = 60.0

_lock_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def close_in_forked_children(holder: Any) -> None:
    """Have ``holder._forget_in_child()`` run in every fork()ed child while it lives.

    A flock belongs to the open file, which a fork()ed child shares: unless the child closes
    its copy (without unlocking, which would release the parent's lock too), the lock would
    outlive the process that took it. Used by presence files and by the hub election lock.
    """
    _lock_holders.add(holder)


def _forget_in_children() -> None:
    for holder in list(_lock_holders):
        holder._forget_in_child()


os.register_at_fork(after_in_child=_forget_in_children)


class Presence:
    """This participant's locked file; :meth:`close` (or process death) releases it."""

    def __init__(self, folder: Path, client_id: str) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.path = folder / client_id
        # lock under a hidden name, then rename: a sweep must never see the file unlocked
        hidden = folder / f".{client_id}"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise
        self._fd: int | None = fd
        self._owner = os.getpid()
        close_in_forked_children(self)

    def _forget_in_child(self) -> None:
        if self._fd is not None and os.getpid() != self._owner:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Leave: remove the file first, so nobody mistakes the unlocked file for a death."""
        if self._fd is None:
            return
        if os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def is_alive(folder: Path, client_id: str) -> bool:
    """False when ``client_id``'s process is gone (its file is unlocked or absent)."""
    path = folder / client_id
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive, the request time-out still applies
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # held (EWOULDBLOCK), or cannot tell: the time-out still applies
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)


def sweep(folder: Path, limit: int = SWEEP_LIMIT) -> int:
    """Remove up to ``limit`` files of dead participants; returns how many were removed."""
    removed = 0
    now = time.time()
    try:
        entries = os.scandir(folder)
    except OSError:
        return 0
    with entries:
        for examined, entry in enumerate(entries):
            if examined >= limit:
                break
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith("."):
                # a file being created: left alone while young, as its creator may be between
                # its open and its lock (removing it then would make its rename fail)
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if age < HIDDEN_GRACE_SECONDS:
                    continue
            if not is_alive(folder, entry.name):  # (removes it when unlocked)
                removed += 1
    return removed
