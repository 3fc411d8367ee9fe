"""The public face of the library: a pool of supervised worker processes.

Uses ``multiprocess`` (dill pickling) so the worker function may be a lambda or a closure, and
the ``spawn`` start method by default: each worker is a fresh interpreter, so nothing the
parent holds (ZeroMQ contexts, event-loop threads, locks taken at fork time) leaks into it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import multiprocess

from .errors import WorkerError, WorkersFailed
from .link import FLUSH_MODES, FlushMode
from .policy import RestartMode, RestartPolicy
from .supervisor import FINAL_STATES, Supervisor, WorkerInfo
from .worker import WorkerSpec, dump_spec


class WorkerPool:
    """``count`` processes each running ``fn(ctx, *args, **kwargs)``, supervised.

    ``ctx`` is a :class:`workers.WorkerContext`: ``ctx.index``, ``ctx.attempt``,
    ``ctx.stopping`` / ``ctx.sleep(s)`` for cooperative stop, and ``ctx.store``, a
    MergeableStore kept in sync over ``channel`` (``None`` without a channel). After ``fn``
    returns (or raises) the worker waits up to ``flush_timeout`` seconds for its changes to be
    confirmed before it exits, so a normal exit never loses data: ``flush="sent"`` (default)
    waits until they are handed to the channel; ``flush="acknowledged"`` until a coordinator
    has durably saved them (see :mod:`workers.link`). A flush that times out is a failure.

    Failures (exception, non-zero exit, death by signal) are collected in :attr:`errors` and,
    with ``restart="on-failure"``, the worker is started again after an exponential
    ``backoff=(first, max)`` delay, at most ``max_restarts`` times in a row (an attempt that ran
    ``healthy_after`` seconds clears the streak). A worker that exits 0 is never restarted.

    ``stop()`` sends SIGTERM (the worker's ``ctx.stopping`` becomes true), then SIGKILL after
    ``grace`` seconds. Leaving a ``with`` block stops the pool; call :meth:`join` inside it to
    wait for the workers to finish instead::

        with WorkerPool(work, count=4, channel="orders") as pool:
            pool.join()
        print(pool.exit_codes, pool.errors)

    ``channel_options`` are passed to ``create_channel_synchronizer`` in each worker, e.g.
    ``{"hub": "nats://host:4222"}`` for a channel over NATS (several URLs: comma-separated).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        count: int = 1,
        *,
        channel: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        restart: RestartMode = "on-failure",
        max_restarts: int = 5,
        backoff: tuple[float, float] = (0.1, 5.0),
        healthy_after: float | None = 30.0,
        grace: float = 5.0,
        channel_options: Mapping[str, Any] | None = None,
        start_timeout: float = 15.0,
        flush_timeout: float = 10.0,
        flush: FlushMode = "sent",
        start_method: str = "spawn",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError("count must be an int")
        if count < 1:
            raise ValueError("count must be >= 1")
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise TypeError("channel must be a non-empty str or None")
        if flush not in FLUSH_MODES:
            raise ValueError(f"flush must be one of {FLUSH_MODES}, not {flush!r}")
        if grace < 0 or start_timeout <= 0 or flush_timeout <= 0:
            raise ValueError("grace must be >= 0, start_timeout and flush_timeout > 0")
        first, cap = backoff
        self.policy = RestartPolicy(restart, max_restarts, (first, cap), healthy_after)
        self.count = count
        self.grace = float(grace)
        self._mp = multiprocess.get_context(start_method)
        self._spec = WorkerSpec(
            fn=fn,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            count=count,
            channel=channel,
            channel_options=dict(channel_options or {}),
            start_timeout=float(start_timeout),
            flush_timeout=float(flush_timeout),
            flush=flush,
            parent_pid=0,
        )
        self._supervisor: Supervisor | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start the workers (returns at once; the processes come up in the background)."""
        if self._supervisor is not None:
            raise RuntimeError("this pool was already started; create a new one")
        # with forkserver the workers' parent is the fork server, not us: no parent check
        direct_child = self._mp.get_start_method() in ("spawn", "fork")
        parent_pid = os.getpid() if direct_child else 0
        spec = dataclasses.replace(self._spec, parent_pid=parent_pid)
        try:
            payload = dump_spec(spec)
        except Exception as exc:
            raise TypeError(f"worker function or arguments cannot be pickled: {exc}") from exc
        self._supervisor = Supervisor(payload, self.count, self.policy, self._mp)
        self._supervisor.start()
        atexit.register(self._stop_at_exit)
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker has finished, failed for good or been stopped.

        Returns False if ``timeout`` expired first (the workers keep running).
        """
        done = self._require().join(timeout)
        if done:
            atexit.unregister(self._stop_at_exit)
        return done

    def stop(self, grace: float | None = None, timeout: float | None = None) -> bool:
        """Stop every worker: SIGTERM now, SIGKILL after ``grace`` seconds; wait for the end.

        Pending restarts are cancelled. Returns True once all processes are gone (False only if
        ``timeout`` is given and expires, which should not happen after SIGKILL).
        """
        if self._supervisor is None:
            return True
        grace = self.grace if grace is None else grace
        self._supervisor.request_stop(grace)
        return self.join(timeout if timeout is not None else grace + 10.0)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __enter__(self) -> WorkerPool:
        if self._supervisor is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------

    def _require(self) -> Supervisor:
        if self._supervisor is None:
            raise RuntimeError("the pool has not been started")
        return self._supervisor

    @property
    def workers(self) -> list[WorkerInfo]:
        """A snapshot of every worker slot (state, attempt, pid, restarts, exit codes)."""
        if self._supervisor is None:
            return []
        return self._supervisor.infos()

    @property
    def errors(self) -> list[WorkerError]:
        """Every failed attempt so far, in the order they were noticed."""
        return [] if self._supervisor is None else self._supervisor.errors()

    @property
    def exit_codes(self) -> list[int | None]:
        """The latest exit code of each worker (``None`` while it has not exited yet)."""
        return [info.exit_codes[-1] if info.exit_codes else None for info in self.workers]

    @property
    def results(self) -> list[Any]:
        """What each worker's function returned (``None`` until it has)."""
        return [info.result for info in self.workers]

    @property
    def failed(self) -> list[int]:
        """Indexes of the workers the supervisor gave up on."""
        return [info.index for info in self.workers if info.state == "failed"]

    @property
    def pids(self) -> list[int | None]:
        """The current (or last) process id of each worker."""
        return [info.pid for info in self.workers]

    @property
    def done(self) -> bool:
        return self._supervisor is not None and self._supervisor.done

    def wait_running(self, timeout: float | None = None) -> bool:
        """Wait until every worker's function is running (store synced) or has ended."""
        supervisor = self._require()

        def ready() -> bool:
            return all(
                info.state == "running" or info.state in FINAL_STATES for info in supervisor.infos()
            )

        return supervisor.wait(ready, timeout)

    def wait_for(self, predicate: Callable[[WorkerPool], bool], timeout: float | None) -> bool:
        """Wait until ``predicate(pool)`` holds, re-checked on every state change."""
        supervisor = self._require()
        return supervisor.wait(lambda: predicate(self), timeout)

    def kill(self, index: int, signum: int = signal.SIGKILL) -> bool:
        """Send a signal to worker ``index`` (chaos testing); False if it is not running."""
        return self._require().signal_worker(index, signum)

    def raise_for_failures(self) -> None:
        """Raise :class:`WorkersFailed` if any worker exhausted its restarts."""
        failed = self.failed
        if failed:
            raise WorkersFailed(failed, self.errors)


def run_workers(
    fn: Callable[..., Any],
    count: int = 1,
    *,
    channel: str | None = None,
    timeout: float | None = None,
    **options: Any,
) -> list[Any]:
    """Run ``count`` supervised workers to completion and return their results, by index.

    Raises :class:`WorkersFailed` if a worker gave up after its restarts, and
    ``TimeoutError`` (after stopping the pool) if ``timeout`` seconds pass first. ``options``
    are :class:`WorkerPool`'s keyword arguments.
    """
    with WorkerPool(fn, count, channel=channel, **options) as pool:
        if not pool.join(timeout):
            pool.stop()
            raise TimeoutError(f"workers still running after {timeout} s; stopped them")
    pool.raise_for_failures()
    return pool.results
