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


def store_state(store: Any) -> dict[str, Any]:
    """What interop tests compare between a localsync and a TinyBase store."""
    return {
        "content": store.get_mergeable_content(),
        "hashes": list(store.get_mergeable_content_hashes()),
        "tables": store.get_tables(),
        "values": store.get_values(),
    }


def hash_tree(store: Any) -> tuple[Any, ...]:
    """A MergeableStore's hashes at every level: content, tables, rows, cells, values."""
    table_hashes = store.get_mergeable_table_hashes()
    row_hashes = store.get_mergeable_row_hashes(dict.fromkeys(table_hashes, 0))
    every_row = {t: dict.fromkeys(rows, 0) for t, rows in row_hashes.items()}
    return (
        store.get_mergeable_content_hashes(),
        table_hashes,
        row_hashes,
        store.get_mergeable_cell_hashes(every_row),
        store.get_mergeable_value_hashes(),
    )


def fill_interop_store(store: Any) -> None:
    """The content the persister interop tests write on both sides (tests/interop/*.mjs
    write the same): every kind of cell and value, odd ids, then deletions."""
    with store.transaction():
        store.set_cell("t1", "r1", "text", 'héllo wörld 😀 \u2028 "quoted" \\ back')
        store.set_cell("t1", "r1", "float", 1.5)
        store.set_cell("t1", "r1", "int", -3)
        store.set_cell("t1", "r1", "big", 1e21)
        store.set_cell("t1", "r1", "bool", True)
        store.set_cell("t1", "r1", "null", None)
        store.set_cell("t1", "r1", "object", {"a": [1, {"b": None}], "2": "x", "é": "ü"})
        store.set_cell("t1", "r1", "array", [1, "two", None, {"three": 3}])
        store.set_cell("t1", "r2", "gone", "soon")
        store.set_row("t2", "r1", {"c": 1})
        store.set_cell("t-1", "0", "1", "integer-like ids")
        store.set_values({"v": "ünï", "vnull": None, "vobj": {"k": [1]}, "vdel": 1})
    store.del_cell("t1", "r2", "gone")
    store.del_row("t2", "r1")
    store.del_value("vdel")


def engine_events(engine: Any, *kinds: type) -> Callable[[], list[Any]]:
    """A function returning the ``changes`` of every engine event of ``kinds`` handed back so
    far (it takes the engine's events, as a Synchronizer does)."""
    seen: list[Any] = []

    def read() -> list[Any]:
        seen.extend(e.changes for e in engine.events_received() if isinstance(e, kinds))
        return seen

    return read
