"""Awaiting helpers of the Persister lifecycle (interpreted: mypyc compiles the callers).

``await_then`` and ``failure_of`` exist for mypyc (2.4.1): in a compiled coroutine, a ``finally``
block that awaits re-raises an exception the event loop threw into the ``try`` body's await even
when the coroutine awaited there caught it and went on (a save hook's thread failing, the
listener task a persister cancels and then awaits), and an ``await`` inside an ``except`` clause
leaves the caught exception in ``sys.exc_info()``. A minimal example:
docs/measurements/compiled-sync-layer.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["await_then", "failure_of", "maybe_await"]


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if it is awaitable, so hooks may be plain or async functions."""
    if inspect.isawaitable(value):
        return await value
    return value


async def await_then(body: Awaitable[Any], cleanup: Callable[[], Awaitable[Any]]) -> Any:
    """``try: return await body`` / ``finally: await cleanup()``, for compiled callers (the
    cleanup is awaited outside any ``except`` clause, then ``body``'s exception re-raised)."""
    failure: BaseException | None = None
    result: Any = None
    try:
        result = await body
    except BaseException as error:
        failure = error
    await cleanup()
    if failure is not None:
        raise failure
    return result


async def failure_of(body: Awaitable[Any]) -> BaseException | None:
    """Await ``body``; what it raised, or None (to undo it outside an ``except`` clause)."""
    try:
        await body
    except BaseException as error:
        return error
    return None
