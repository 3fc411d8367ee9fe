"""The event loop localsync's own runners use: uvloop where it is installed, else asyncio's.

Why: a process that sleeps between messages pays the event loop's wake-up on every one it
receives; uvloop does it in C, asyncio's selector loop in Python (figures: docs/performance.md).

Who uses it: the blocking facade's background thread (and so ``workers``), the coordinator,
``localsync serve`` and the demo. Programs that run their own ``asyncio.run`` keep the loop
they chose; channel synchronizers work on either (they only need ``add_reader``).

``LOCALSYNC_EVENT_LOOP=asyncio`` forces the standard loop (to compare, or where uvloop
misbehaves); ``=uvloop`` insists on uvloop (an ImportError when it is missing).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOP_ENV", "loop_kind", "new_event_loop", "run", "start_eagerly"]

T = TypeVar("T")

EVENT_LOOP_ENV = "LOCALSYNC_EVENT_LOOP"


def _uvloop() -> Any:
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if choice == "asyncio":
        return None
    if choice not in ("", "uvloop"):
        raise ValueError(f"{EVENT_LOOP_ENV} must be 'asyncio' or 'uvloop', not {choice!r}")
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop


def loop_kind() -> str:
    """``"uvloop"`` or ``"asyncio"``: what :func:`new_event_loop` makes here."""
    return "uvloop" if _uvloop() is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new, not yet running, loop of the chosen kind."""
    uvloop = _uvloop()
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a loop of the chosen kind."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` at once, in the caller's turn, until it first waits for something.

    Returns None when it finished there (an exception it raised before waiting propagates),
    else a task of the running loop that carries it on from where it waits, as
    ``create_task`` would have (cancelling that task cancels what the coroutine waits for).

    Why: ``create_task`` runs nothing before the loop's next turn, so a send that could finish
    at once (a publish into a client's buffer) pays a loop turn of latency first. Python
    3.12's eager tasks do the same; this also runs on 3.11.
    """
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_carry_on(coro, waited))


async def _carry_on(coro: Coroutine[Any, Any, None], waited: Any) -> None:
    """Drive ``coro``, which yielded ``waited``, to its end as its task would."""
    while True:
        cancelled: BaseException | None = None
        if waited is None:  # (a bare yield: asyncio.sleep(0))
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as error:
                cancelled = error
        elif asyncio.isfuture(waited):
            waited._asyncio_future_blocking = False  # (taken in hand, as a task does)
            try:
                await asyncio.wait((waited,))
            except asyncio.CancelledError as error:
                # deliver it through what the coroutine waits for, as a task would; if that
                # finished meanwhile, throw it in directly
                if not waited.cancel():
                    cancelled = error
        else:
            cancelled = RuntimeError(f"a coroutine run by start_eagerly yielded {waited!r}")
        try:
            waited = coro.send(None) if cancelled is None else coro.throw(cancelled)
        except StopIteration:
            return
