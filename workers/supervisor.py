"""The parent-side monitor: starts worker processes, watches them, restarts them, stops them.

One thread per pool does all process management, so the rules are easy to follow: it is the
only place that starts processes, records exits and decides about restarts, and every state
change happens under one lock and is announced on one condition (what ``join`` waits on).
Starting every process from this one long-lived thread also matters on Linux: a child's
"die with parent" signal fires when the *thread* that created it ends, and this thread ends
only once no child is left.

It sleeps in ``multiprocess.connection.wait`` on every child's exit sentinel, every child's
report pipe and a wake-up pipe for ``stop()``, with a timeout set to the next due restart or
the SIGKILL deadline, so it costs nothing while workers run and reacts at once to an exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Literal

from multiprocess import connection as mp_connection

from .errors import FailureKind, WorkerError
from .policy import RestartPolicy
from .worker import worker_main

logger = logging.getLogger("workers")

WorkerState = Literal["pending", "starting", "running", "backoff", "finished", "failed", "stopped"]
FINAL_STATES: frozenset[str] = frozenset({"finished", "failed", "stopped"})


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker slot.

    ``state``: ``pending`` (not started yet), ``starting`` (process up, store syncing),
    ``running`` (user function running), ``backoff`` (failed, waiting to restart),
    ``finished`` (exit 0), ``failed`` (gave up), ``stopped`` (ended on a stop request).
    ``exit_codes``: one per finished attempt, oldest first (negative = killed by signal).
    """

    index: int
    state: WorkerState
    attempt: int
    pid: int | None
    restarts: int
    exit_codes: tuple[int, ...]
    result: Any


class _Slot:
    """Mutable bookkeeping for one worker index across all its attempts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.state: WorkerState = "pending"
        self.attempt = 0
        self.process: Any = None
        self.conn: Any = None
        self.pid: int | None = None
        self.start_at = 0.0
        self.started_at = 0.0
        self.streak = 0
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.result: Any = None
        self.error: tuple[FailureKind, str] | None = None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            index=self.index,
            state=self.state,
            attempt=self.attempt,
            pid=self.pid,
            restarts=self.restarts,
            exit_codes=tuple(self.exit_codes),
            result=self.result,
        )


class Supervisor:
    """Runs ``count`` copies of a pickled WorkerSpec under ``policy``; see ``WorkerPool``."""

    def __init__(
        self,
        payload: bytes,
        count: int,
        policy: RestartPolicy,
        mp_context: Any,
    ) -> None:
        self._payload = payload
        self._policy = policy
        self._mp = mp_context
        self._slots = [_Slot(i) for i in range(count)]
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._errors: list[WorkerError] = []
        self._stopping = False
        self._kill_at: float | None = None
        self._done = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="workers-supervisor", daemon=True)

    # -- public (called from user threads) -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def done(self) -> bool:
        with self._lock:
            return self._done

    @property
    def stopping(self) -> bool:
        with self._lock:
            return self._stopping

    def infos(self) -> list[WorkerInfo]:
        with self._lock:
            return [slot.info() for slot in self._slots]

    def errors(self) -> list[WorkerError]:
        with self._lock:
            return list(self._errors)

    def wait(self, predicate: Any, timeout: float | None) -> bool:
        """Wait until ``predicate()`` (evaluated under the lock) holds; False on timeout.

        Waits in short slices so that Ctrl-C reaches a main thread blocked here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
            return True

    def join(self, timeout: float | None) -> bool:
        finished = self.wait(lambda: self._done, timeout)
        if finished:
            self._thread.join(1.0)
        return finished

    def request_stop(self, grace: float) -> None:
        """SIGTERM every live worker now, cancel pending restarts, SIGKILL after ``grace``."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._kill_at = time.monotonic() + max(0.0, grace)
            for slot in self._slots:
                if slot.state in ("pending", "backoff"):
                    slot.state = "stopped"
                elif slot.state in ("starting", "running") and slot.process is not None:
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        slot.process.terminate()
            self.changed.notify_all()
        self._wake()

    def signal_worker(self, index: int, signum: int) -> bool:
        """Send ``signum`` to worker ``index``'s current process; False if none is running."""
        with self._lock:
            slot = self._slots[index]
            if slot.state not in ("starting", "running") or slot.pid is None:
                return False
            try:
                os.kill(slot.pid, signum)
            except ProcessLookupError:
                return False
            return True

    # -- the supervisor thread -------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    now = time.monotonic()
                    if self._stopping and self._kill_at is not None and now >= self._kill_at:
                        self._kill_all()
                    for slot in self._slots:
                        if slot.state in ("pending", "backoff") and slot.start_at <= now:
                            self._launch(slot)
                    if all(slot.state in FINAL_STATES for slot in self._slots):
                        break
                    waitables, timeout = self._wait_set(now)
                ready = mp_connection.wait(waitables, timeout)
                for item in ready:
                    if item == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    with self._lock:
                        self._handle_ready(item)
        except BaseException:
            # a bug here must not leave workers unsupervised and silent: kill them (below) and
            # say why, the pool then reports every worker as stopped
            logger.exception("workers supervisor crashed; stopping all workers")
            raise
        finally:
            with self._lock:
                self._kill_all()
                for slot in self._slots:
                    if slot.process is not None:
                        with contextlib.suppress(Exception):
                            slot.process.join(1.0)
                    if slot.state not in FINAL_STATES:
                        slot.state = "stopped"
                self._done = True
                self.changed.notify_all()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _wait_set(self, now: float) -> tuple[list[Any], float | None]:
        waitables: list[Any] = [self._wake_r]
        deadlines: list[float] = []
        for slot in self._slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
                if slot.conn is not None:
                    waitables.append(slot.conn)
            elif slot.state == "backoff":
                deadlines.append(slot.start_at)
        if self._stopping and self._kill_at is not None:
            deadlines.append(self._kill_at)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        return waitables, timeout

    def _launch(self, slot: _Slot) -> None:
        if self._stopping:
            slot.state = "stopped"
            return
        slot.attempt += 1
        if slot.attempt > 1:
            slot.restarts += 1
        slot.error = None
        reader, writer = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=worker_main,
            args=(self._payload, slot.index, slot.attempt, writer),
            name=f"worker-{slot.index}",
            daemon=False,
        )
        try:
            process.start()
        except Exception:
            reader.close()
            writer.close()
            slot.pid = None
            slot.error = ("setup", traceback.format_exc())
            self._record_failure(slot, exit_code=None, ran=0.0)
            return
        writer.close()  # the child holds the only write end now: its death means EOF here
        slot.process = process
        slot.conn = reader
        slot.pid = process.pid
        slot.started_at = time.monotonic()
        slot.state = "starting"
        self.changed.notify_all()

    def _handle_ready(self, item: Any) -> None:
        for slot in self._slots:
            if slot.process is None:
                continue
            if item is slot.conn:
                self._drain(slot)
                return
            if item == slot.process.sentinel:
                self._reap(slot)
                return

    def _drain(self, slot: _Slot) -> None:
        """Read every report waiting on the slot's pipe; close it at EOF."""
        conn = slot.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._on_message(slot, conn.recv())
        except (EOFError, OSError):
            conn.close()
            slot.conn = None
        except Exception:  # an undecodable report must not take the supervisor down
            slot.error = slot.error or ("exception", traceback.format_exc())
            conn.close()
            slot.conn = None

    def _on_message(self, slot: _Slot, message: Any) -> None:
        tag = message[0]
        if tag == "ready":
            if slot.state == "starting":
                slot.state = "running"
        elif tag == "result":
            slot.result = message[1]
        elif tag == "result-error":
            self._errors.append(
                WorkerError(slot.index, slot.attempt, "exception", 0, slot.pid, message[1])
            )
        elif tag == "error" and slot.error is None:
            slot.error = (message[1], message[2])
        self.changed.notify_all()

    def _reap(self, slot: _Slot) -> None:
        self._drain(slot)  # reports written just before the exit are still in the pipe
        process = slot.process
        process.join(1.0)
        exit_code = process.exitcode
        if exit_code is None:  # sentinel fired but not reaped yet: try again next round
            return
        with contextlib.suppress(Exception):
            process.close()
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        slot.process = None
        slot.exit_codes.append(exit_code)
        ran = time.monotonic() - slot.started_at
        if self._stopping:
            slot.state = "stopped"
            if exit_code != 0 and slot.error is not None:
                self._add_error(slot, exit_code)
        elif exit_code == 0 and slot.error is None:
            slot.state = "finished"
        else:
            self._record_failure(slot, exit_code, ran)
        self.changed.notify_all()

    def _add_error(self, slot: _Slot, exit_code: int | None) -> None:
        if slot.error is not None:
            kind, text = slot.error
        elif exit_code is not None and exit_code < 0:
            kind, text = "signal", ""
        else:
            kind, text = "exit", ""
        self._errors.append(WorkerError(slot.index, slot.attempt, kind, exit_code, slot.pid, text))

    def _record_failure(self, slot: _Slot, exit_code: int | None, ran: float) -> None:
        self._add_error(slot, exit_code)
        if self._policy.resets_after(ran):
            slot.streak = 0
        slot.streak += 1
        if self._policy.should_restart(slot.streak) and not self._stopping:
            slot.state = "backoff"
            slot.start_at = time.monotonic() + self._policy.delay(slot.streak)
        else:
            slot.state = "failed"
        self.changed.notify_all()

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.process is not None:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    slot.process.kill()
