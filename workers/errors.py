"""What a pool reports when a worker attempt goes wrong.

Failures are values, not log lines: a supervisor that only printed tracebacks would leave the
caller unable to assert on them, to show them in a UI, or to decide whether a run succeeded.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

FailureKind = Literal["exception", "exit", "signal", "setup", "flush"]


def describe_exit(exit_code: int | None) -> str:
    """Human words for a process exit code (negative means killed by that signal)."""
    if exit_code is None:
        return "still running"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}"
    return f"exited with code {exit_code}"


@dataclass(frozen=True)
class WorkerError:
    """One failed attempt of one worker.

    ``kind`` says where it failed: ``"exception"`` (the user function raised; ``traceback`` is
    the formatted traceback from the worker), ``"setup"`` (the synchronized store could not be
    opened), ``"flush"`` (the function returned but its changes could not be confirmed sent to
    the channel in time), ``"exit"`` (non-zero exit without a Python exception, e.g.
    ``os._exit(3)``), ``"signal"`` (killed by a signal the pool did not send).
    """

    index: int
    attempt: int
    kind: FailureKind
    exit_code: int | None
    pid: int | None
    traceback: str

    def __str__(self) -> str:
        head = (
            f"worker {self.index} attempt {self.attempt} (pid {self.pid}) failed: {self.kind}, "
            f"{describe_exit(self.exit_code)}"
        )
        return f"{head}\n{self.traceback.rstrip()}" if self.traceback else head


class WorkersFailed(RuntimeError):
    """Raised by :func:`workers.run_workers` when a worker gave up (exhausted its restarts).

    ``errors`` holds every failed attempt of the run, ``failed`` the indexes that gave up.
    """

    def __init__(self, failed: list[int], errors: list[WorkerError]) -> None:
        self.failed = failed
        self.errors = errors
        last = errors[-1] if errors else None
        detail = f"; last error:\n{last}" if last is not None else ""
        super().__init__(f"worker(s) {failed} failed permanently{detail}")
