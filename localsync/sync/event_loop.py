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

__all__ = ["EVENT_LOOP_ENV", "loop_kind", "new_event_loop", "run"]

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
