"""Helpers shared by the test modules (asyncio running and polling, conformance vectors, a
mutator listener)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "conformance"

#: the ``wire`` layer of invalid_messages.json (TinyBase's WebSocket framing verdicts)
WIRE_CASES = [
    case
    for case in json.loads((VECTORS / "invalid_messages.json").read_text("utf-8"))
    if case["layer"] == "wire"
]


def run(coro: Awaitable[Any], timeout: float = 60) -> Any:
    """``asyncio.run(coro)``, failing with TimeoutError after ``timeout`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually(check: Callable[[], bool], timeout: float = 10, poll: float = 0.01) -> None:
    """Return once ``check()`` holds; TimeoutError after ``timeout`` seconds."""

    async def until() -> None:
        while not check():
            await asyncio.sleep(poll)

    await asyncio.wait_for(until(), timeout)


def derive_double(store: Any) -> None:
    """A mutator listener for the hadMutated tests: ``t/<row>/double`` follows ``t/<row>/c``."""

    def on_cell(s: Any, table_id: str, row_id: str, _cell_id: str, new: Any, *_: Any) -> None:
        if isinstance(new, int):
            s.set_cell(table_id, row_id, "double", new * 2)

    store.add_cell_listener("t", None, "c", on_cell, mutator=True)
