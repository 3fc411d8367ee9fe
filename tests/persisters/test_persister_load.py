"""Whole-store loads at realistic sizes: what is saved is what loads, hashes included.

A load installs the stored content into an empty store directly (``MergeableStore._install``)
and SQLite rebuilds each row's cells from one JSON text SQLite assembles; both must give the
store that was saved: the same content, the same hashes at every level, the same data in the
same order, and the change records a transaction of every cell has. Damaged storage still
loads as before: stored hashes the stamps contradict are recomputed (and counted), a stored
cell that is not one JSON value makes the database unreadable, never a different store.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.persisters._filestore import CorruptContentError, read_content
from localsync.persisters._integrity import HashesRepaired
from localsync.persisters._sqlitestore import SqliteStorage
from localsync.persisters.file import create_file_persister
from localsync.persisters.sqlite import create_sqlite_persister
from tests.helpers import hash_tree

KINDS = ["file", "sqlite"]
ROWS = 2_000  # x 10 cells: 20,000 cells


def run_async(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop, bounded in time (no pytest-asyncio in CI)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 120))

    return wrapper


def _persister(kind: str, store: Any, path: Path, errors: list[BaseException]) -> Any:
    factory = create_file_persister if kind == "file" else create_sqlite_persister
    return factory(store, path, errors.append)


def _path(tmp_path: Path, kind: str, name: str) -> Path:
    return tmp_path / (f"{name}.json" if kind == "file" else f"{name}.sqlite")


def _writer() -> Any:
    """A store of 20,000 cells written locally and merged from a peer: every kind of cell
    (objects, arrays, floats, unicode, booleans, null, deletions), index-like ids, values."""
    store = create_mergeable_store("writer")
    peer = create_mergeable_store("peer")
    with store.transaction():
        for r in range(ROWS):
            store.set_row(
                "t" if r % 3 else "10",
                str(r) if r % 5 == 0 else f"r{r}",
                {
                    "i": r,
                    "f": r / 7,
                    "s": f"é中😀 {r}",
                    "b": r % 2 == 0,
                    "n": None,
                    "o": {"k": [r, "x"]},
                    "a": [r],
                    "2": -r,
                    "q": '"\\',
                    "z": 0.0,
                },
            )
        for r in range(0, ROWS, 11):
            store.del_cell("t" if r % 3 else "10", str(r) if r % 5 == 0 else f"r{r}", "s")
        store.set_values({"v": 1, "w": {"deep": [1, 2]}, "gone": 3})
        store.del_value("gone")
    with peer.transaction():
        for r in range(200):
            peer.set_row("peer", f"p{r}", {"x": r, "o": [r, {"y": r}]})
        peer.set_row("empty", "row", {"c": 1})
        peer.del_row("empty", "row")
    store.apply_mergeable_changes(peer.get_mergeable_content())
    return store


def _state(store: Any) -> Any:
    """What a loaded store must reproduce: content, hashes at every level, data."""
    return (
        store.get_encoded_mergeable_content(),
        store.get_mergeable_content(),
        *hash_tree(store),
        store.get_tables(),
        # (a store written locally keeps its rows in write order; content, as TinyBase's,
        # lists index-like ids first, so a loaded store has them first: compare as sets)
        {t: sorted(store.get_row_ids(t)) for t in store.get_table_ids()},
        {t: sorted(store.get_table_cell_ids(t)) for t in store.get_table_ids()},
        store.get_values(),
        json.loads(store.get_json()),
    )


async def _save(kind: str, store: Any, path: Path, errors: list[BaseException]) -> None:
    persister = _persister(kind, store, path, errors)
    await persister.save()
    await persister.destroy()


async def _saved_writer(tmp_path: Path, kind: str) -> tuple[Any, Path, list[BaseException]]:
    """``_writer()`` saved by a persister of ``kind``: (store, path, errors heard)."""
    writer = _writer()
    path = _path(tmp_path, kind, "a")
    errors: list[BaseException] = []
    await _save(kind, writer, path, errors)
    return writer, path, errors


async def _load(kind: str, path: Path, errors: list[BaseException]) -> Any:
    store = create_mergeable_store("reader")
    persister = _persister(kind, store, path, errors)
    await persister.load()
    await persister.destroy()
    return store


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_save_and_reload_at_size_is_identical(tmp_path: Path, kind: str) -> None:
    writer, path, errors = await _saved_writer(tmp_path, kind)
    loaded = await _load(kind, path, errors)
    assert not errors, errors
    assert _state(loaded) == _state(writer)
    # saved again by the loaded store and loaded once more: still the same store
    again = _path(tmp_path, kind, "b")
    await _save(kind, loaded, again, errors)
    reloaded = await _load(kind, again, errors)
    assert _state(reloaded) == _state(writer)
    if kind == "file":
        assert read_content(again) == read_content(path)
        # (the writer's file lists rows in write order, a loaded store's in content order;
        # from then on a save and a load change nothing, byte for byte)
        third = _path(tmp_path, kind, "c")
        await _save(kind, reloaded, third, errors)
        assert third.read_bytes() == again.read_bytes()
    assert not errors, errors


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_a_load_reports_every_cell_to_listeners(tmp_path: Path, kind: str) -> None:
    """The load is one transaction of every cell, from nothing: its change records and the
    listeners say so, whether listeners were there before the load or not."""
    writer, path, errors = await _saved_writer(tmp_path, kind)
    expected = writer.get_tables()
    for with_cell_listener in (False, True):
        store = create_mergeable_store("reader")
        heard: list[int] = []
        finished: list[Any] = []
        if with_cell_listener:
            store.add_cell_listener(None, None, None, lambda *_, h=heard: h.append(1))

        def on_finish(s: Any, finished: list[Any] = finished) -> None:
            finished.append((s.get_transaction_changes(), len(s.get_transaction_touched()[0])))

        store.add_did_finish_transaction_listener(on_finish)
        persister = _persister(kind, store, path, errors)
        await persister.load()
        await persister.destroy()
        cells = sum(len(row) for table in expected.values() for row in table.values())
        assert len(finished) == 1
        changes, touched = finished[0]
        assert changes[0] == expected and touched == cells
        assert changes[1] == writer.get_values()
        assert len(heard) == (cells if with_cell_listener else 0)
    assert not errors, errors


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_a_wrong_hash_at_size_is_recomputed_and_counted(tmp_path: Path, kind: str) -> None:
    writer, path, errors = await _saved_writer(tmp_path, kind)
    if kind == "file":
        text = path.read_text(encoding="utf-8")
        row_hash = writer.get_mergeable_row_hashes({"t": 0})["t"]["r1"]
        assert text.count(f",{row_hash}]") == 1
        path.write_text(text.replace(f",{row_hash}]", f",{row_hash ^ 1}]"), encoding="utf-8")
    else:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE localsync_rows SET hash = (hash | 1) - (hash & 1) "
                "WHERE table_id = 't' AND row_id = 'r1'"
            )
    loaded = await _load(kind, path, errors)
    assert [type(e) for e in errors] == [HashesRepaired]
    assert isinstance(errors[0], HashesRepaired) and errors[0].count == 1
    assert _state(loaded) == _state(writer)


async def _sqlite_seed(tmp_path: Path) -> Path:
    writer = create_mergeable_store("writer")
    with writer.transaction():
        for r in range(300):
            writer.set_row("t", f"r{r}", {"a": r, "b": f"s{r}"})
    errors: list[BaseException] = []
    persister = create_sqlite_persister(writer, tmp_path / "s.sqlite", errors.append)
    await persister.save()
    await persister.destroy()
    assert not errors
    return tmp_path / "s.sqlite"


@pytest.mark.parametrize(
    "thing",
    [
        "not json",  # not JSON at all
        "1,2",  # two JSON values
        '1,"NjEtLV-----VnP9x",5],"extra":[7',  # a value that would smuggle in a cell
        "",  # nothing
        'hlc:AAAAAAAA"AAAAAAA',  # an HLC that would need escaping in JSON
        "hlc:AAAAAAAAAAAAAA\\n",  # an HLC holding a JSON escape (16 characters)
    ],
)
@run_async
async def test_a_stored_cell_that_is_not_one_json_value_is_refused(
    tmp_path: Path, thing: str
) -> None:
    path = await _sqlite_seed(tmp_path)
    column = "thing"
    if thing.startswith("hlc:"):
        column, thing = "hlc", thing[4:]
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"UPDATE localsync_cells SET {column} = ? WHERE row_id = 'r7' AND cell_id = 'a'",
            (thing,),
        )
    errors: list[BaseException] = []
    store = create_mergeable_store("reader")
    persister = create_sqlite_persister(store, path, errors.append)
    await persister.load()
    assert store.get_tables() == {}
    assert errors
    assert isinstance(errors[0], CorruptContentError) or "tinybase:1" in str(errors[0])
    store.set_cell("t", "mine", "c", 1)
    with pytest.raises(Exception, match="refusing to overwrite"):
        await persister.save()
    await persister.destroy()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM localsync_cells").fetchone()[0] == 600


def test_file_content_reads_the_same_as_sqlite(tmp_path: Path) -> None:
    """The two storages give the same content for the same store (orders aside)."""
    writer = _writer()
    paths = {kind: _path(tmp_path, kind, "a") for kind in KINDS}

    async def save_all() -> None:
        for kind, path in paths.items():
            errors: list[BaseException] = []
            await _save(kind, writer, path, errors)
            assert not errors

    asyncio.run(save_all())
    storage = SqliteStorage(paths["sqlite"])
    try:
        assert storage.read_content() == read_content(paths["file"])
    finally:
        storage.close()
