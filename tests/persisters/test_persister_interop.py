"""Interop with TinyBase 10.0.1's own ``createFilePersister`` (Node.js, from npm).

Files go both ways and must give identical mergeable content, hashes, tables and values:
unicode (astral, U+2028, quotes, backslashes), object and array cells, ``null``, integer-like
ids, deleted cells, rows and values. The SQLite persister is checked against the same
TinyBase-made content (TinyBase -> file -> ours -> SQLite -> fresh store).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import derive_double, fill_interop_store
from tests.helpers import store_state as _state
from tests.npm_env import require_node, run_node_json

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]


@pytest.fixture(scope="module", autouse=True)
def _node() -> None:
    require_node()


def _store() -> Any:
    from localsync import create_mergeable_store

    return create_mergeable_store()


def _tinybase(mode: str, path: Path) -> dict[str, Any]:
    result = run_node_json("persister_file.mjs", mode, str(path), timeout=120)
    assert isinstance(result, dict)
    return result


def _load_file(path: Path) -> Any:
    from localsync import create_file_persister

    errors: list[BaseException] = []

    async def main() -> Any:
        store = _store()
        persister = create_file_persister(store, path, errors.append)
        await persister.load()
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


def test_tinybase_file_loads_into_ours(tmp_path: Path) -> None:
    path = tmp_path / "tinybase.json"
    theirs = _tinybase("write", path)
    assert theirs["tables"]["t1"]["r1"]["object"] == {"2": "x", "a": [1, {"b": None}], "é": "ü"}
    store = _load_file(path)
    assert _state(store) == theirs


def _write_ours(path: Path) -> Any:
    from localsync import create_file_persister

    async def main() -> Any:
        store = _store()
        persister = create_file_persister(store, path)
        fill_interop_store(store)
        await persister.save()
        await persister.destroy()
        return store

    return asyncio.run(main())


def test_our_file_loads_into_tinybase(tmp_path: Path) -> None:
    path = tmp_path / "ours.json"
    store = _write_ours(path)
    theirs = _tinybase("read", path)
    assert theirs == _state(store)
    # deletions really are in the file, as TinyBase stores them
    raw = json.loads(path.read_text("utf-8"))
    assert raw[0][0]["t1"][0]["r2"][0]["gone"][0] == "\ufffc"
    assert raw[0][0]["t1"][0]["r1"][0]["object"][0].startswith("\ufffd")


def test_edits_go_back_and_forth(tmp_path: Path) -> None:
    from localsync import create_file_persister

    path = tmp_path / "both.json"
    _tinybase("write", path)

    async def ours_edit() -> None:
        store = _store()
        persister = create_file_persister(store, path)
        await persister.load()
        store.set_cell("t1", "r1", "fromPython", {"nested": ["ok"]})
        store.del_cell("t1", "r1", "float")
        await persister.save()
        await persister.destroy()

    asyncio.run(ours_edit())
    theirs = _tinybase("append", path)
    assert theirs["tables"]["t1"]["r1"]["fromPython"] == {"nested": ["ok"]}
    assert "float" not in theirs["tables"]["t1"]["r1"]
    assert theirs["tables"]["t1"]["r1"]["fromTinyBase"] == "added"
    assert _state(_load_file(path)) == theirs


def test_tinybase_content_survives_sqlite(tmp_path: Path) -> None:
    from localsync import create_sqlite_persister

    path = tmp_path / "tinybase.json"
    theirs = _tinybase("write", path)
    store = _load_file(path)
    db = tmp_path / "copy.sqlite"

    async def main() -> Any:
        persister = create_sqlite_persister(store, db)
        await persister.save()
        await persister.destroy()
        fresh = _store()
        reader = create_sqlite_persister(fresh, db)
        await reader.load()
        await reader.destroy()
        return fresh

    assert _state(asyncio.run(main())) == theirs


def test_plain_store_files_both_ways(tmp_path: Path) -> None:
    """TinyBase's file persister also takes a plain Store: ``[tables, values]`` JSON."""
    from localsync import create_file_persister, create_store

    theirs_path = tmp_path / "plain-tinybase.json"
    theirs = _tinybase("write-plain", theirs_path)

    async def load_then_write() -> Any:
        store = create_store()
        errors: list[BaseException] = []
        persister = create_file_persister(store, theirs_path, errors.append)
        await persister.load()
        assert not errors, errors
        store.set_cell("t1", "r2", "fromPython", {"ok": [True]})
        store.del_value("v")
        await persister.save()
        await persister.destroy()
        return store

    store = asyncio.run(load_then_write())
    assert store.get_tables()["t1"]["r1"] == theirs["tables"]["t1"]["r1"]
    assert store.get_tables()["t-1"] == theirs["tables"]["t-1"]
    again = _tinybase("read-plain", theirs_path)
    assert again["tables"] == store.get_tables()
    assert again["values"] == store.get_values()
    assert again["content"] == store.get_content()


def test_a_mutator_derivation_during_a_load_is_saved_as_tinybase_saves_it(
    tmp_path: Path,
) -> None:
    """TinyBase's hadMutated: a load whose mutator listener changed data is saved back."""
    from localsync import create_file_persister

    theirs_path, ours_path = tmp_path / "tinybase.json", tmp_path / "ours.json"
    theirs = _tinybase("mutate", theirs_path)

    async def ours() -> Any:
        store = _store()
        derive_double(store)  # (the same mutator as persister_file.mjs's "mutate" mode)
        persister = create_file_persister(store, ours_path)
        await persister.start_auto_save()
        other = _store()
        other.set_cell("t", "r", "c", 4)
        await create_file_persister(other, ours_path).save()
        await persister.load()
        await persister.destroy()
        return store

    store = asyncio.run(ours())
    assert theirs["tables"] == store.get_tables() == {"t": {"r": {"c": 4, "double": 8}}}
    # both files now hold the derived cell (TinyBase saved after its load, and so did we)
    for path in (theirs_path, ours_path):
        saved = json.loads(path.read_text())
        assert saved[0][0]["t"][0]["r"][0]["double"][0] == 8
        assert _load_file(path).get_tables() == {"t": {"r": {"c": 4, "double": 8}}}
