"""The code that runs inside each worker process (the child side of the pool).

Everything the parent needs to know is sent over a one-way pipe owned by this attempt alone
(a crash can break only its own pipe, never a queue shared by the other workers): the
formatted traceback of a failure as soon as it happens, and the function's return value.
Exit codes carry the rest: 0 finished, 1 the function raised, ``EXIT_SETUP`` the synchronized
store could not be opened, ``EXIT_FLUSH`` the function's changes could not be confirmed sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .context import WorkerContext

EXIT_OK = 0
EXIT_EXCEPTION = 1
EXIT_SETUP = 4
EXIT_FLUSH = 5

# seconds the interpreter may spend shutting down (atexit, non-daemon threads) before the
# worker forces its exit: a stuck user thread must not turn a finished worker into a hang
SHUTDOWN_WATCHDOG_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, pickled (with dill) into the child."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    channel: str | None = None
    channel_options: dict[str, Any] = field(default_factory=dict)
    start_timeout: float = 15.0
    flush_timeout: float = 10.0
    flush: str = "sent"
    parent_pid: int = 0


def _send(conn: Any, message: tuple[Any, ...]) -> None:
    """Send to the parent; a parent that has gone away must not turn into a second failure."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(message)


def _install_stop_signals(stop_event: threading.Event) -> None:
    """Make SIGTERM/SIGINT a cooperative stop request.

    The event is set from a short-lived thread, not from the handler itself: the handler runs
    on the main thread between bytecodes, possibly while that thread is inside
    ``stop_event.wait`` holding the event's internal lock, and setting it there could deadlock.
    """

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=stop_event.set, name="worker-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _die_with_parent(parent_pid: int, stop_event: threading.Event) -> None:
    """Ask Linux to send SIGTERM when the pool's process dies, so no worker is orphaned.

    Best effort (Linux only); the check after it closes the race of a parent that died before
    the request was made.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent_pid and os.getppid() != parent_pid:
        stop_event.set()


def _exit(code: int) -> NoReturn:
    """Exit normally (atexit, logging flush) but never hang in interpreter shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    timer = threading.Timer(SHUTDOWN_WATCHDOG_SECONDS, os._exit, args=(code,))
    timer.daemon = True
    timer.start()
    sys.exit(code)


def _exit_code_of(exc: SystemExit) -> int:
    """The status ``sys.exit(x)`` would give the process, as Python computes it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    return 1


def dump_spec(spec: WorkerSpec) -> bytes:
    """Pickle the spec once, in the parent, with dill's ``recurse`` mode.

    ``recurse`` makes a lambda or nested function carry the globals it uses, so a function
    defined in a script's ``__main__`` still works in a spawned worker (which re-imports the
    script without running its ``if __name__ == "__main__":`` block). Pickling once also turns
    an unpicklable argument into an error in the caller instead of one per worker.
    """
    import dill

    return bytes(dill.dumps(spec, recurse=True))


def worker_main(payload: bytes, index: int, attempt: int, conn: Any) -> None:
    """Entry point of one attempt: open the store, run the function, flush, report, exit."""
    stop_event = threading.Event()
    _install_stop_signals(stop_event)
    try:
        import dill

        spec: WorkerSpec = dill.loads(payload)
    except BaseException:
        _send(conn, ("error", "setup", traceback.format_exc()))
        conn.close()
        _exit(EXIT_SETUP)
    _die_with_parent(spec.parent_pid, stop_event)
    ctx = WorkerContext(
        index=index, attempt=attempt, count=spec.count, channel=spec.channel, stop_event=stop_event
    )
    link = None
    if spec.channel is not None:
        try:
            from .link import open_link

            link = open_link(
                spec.channel,
                spec.channel_options,
                spec.start_timeout,
                spec.flush,  # type: ignore[arg-type]
            )
        except BaseException:
            _send(conn, ("error", "setup", traceback.format_exc()))
            conn.close()
            _exit(EXIT_SETUP)
        ctx.store = link.store
        ctx._flush = link.flush
    if stop_event.is_set():
        # asked to stop while the store was still syncing: do not start the work at all
        if link is not None:
            with contextlib.suppress(BaseException):
                link.close()
        conn.close()
        _exit(EXIT_OK)
    # from here on the function runs (it may find ``ctx.stopping`` already set)
    _send(conn, ("ready",))

    code = EXIT_OK
    try:
        result = spec.fn(ctx, *spec.args, **spec.kwargs)
    except SystemExit as exc:
        code = _exit_code_of(exc)
        if code != EXIT_OK:
            _send(conn, ("error", "exit", f"SystemExit({exc.code!r})"))
    except BaseException:
        code = EXIT_EXCEPTION
        _send(conn, ("error", "exception", traceback.format_exc()))
    else:
        try:
            conn.send(("result", result))
        except (OSError, ValueError):
            pass
        except Exception:  # the result could not be pickled: the work itself is done
            _send(conn, ("result-error", traceback.format_exc()))

    # changes written before a failure are still real changes: flush them in every case
    if link is not None:
        try:
            flushed = link.flush(spec.flush_timeout)
        except BaseException:
            flushed = False
        if not flushed:
            _send(
                conn,
                (
                    "error",
                    "flush",
                    f"changes not confirmed {spec.flush} on channel {spec.channel!r} "
                    f"within {spec.flush_timeout} s",
                ),
            )
            code = code or EXIT_FLUSH
        with contextlib.suppress(BaseException):
            link.close()
    conn.close()
    _exit(code)
