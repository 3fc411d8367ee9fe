"""The SQLite persister's TinyBase JSON-mode layout, and TinyBase 10's own SQLite persister.

TinyBase's side is ``createBetterSqlite3Persister`` over npm ``better-sqlite3`` (see
``tests/interop/persister_sqlite_tinybase.mjs``): both keep the store in one row of table
``tinybase`` of the same database file, so whatever one writes the other must load with
identical content and hashes, and each one's auto-load must hear the other's saves.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fill_interop_store as _fill
from tests.helpers import store_state as _state
from tests.npm_env import ensure_tinybase, require_node, run_node_json, start_node

pytestmark = [pytest.mark.timeout(180)]

JSON_MODE = {"mode": "json"}


def _store(unique_id: str | None = None) -> Any:
    from localsync import create_mergeable_store

    return create_mergeable_store(unique_id) if unique_id else create_mergeable_store()


def _persister(store: Any, path: Path, errors: list[BaseException], config: Any = JSON_MODE) -> Any:
    from localsync.persisters.sqlite import create_sqlite_persister

    return create_sqlite_persister(
        store, path, errors.append, poll_seconds=0.02, config_or_store_table_name=config
    )


def _save_ours(path: Path, config: Any = JSON_MODE) -> Any:
    errors: list[BaseException] = []

    async def main() -> Any:
        store = _store()
        _fill(store)
        persister = _persister(store, path, errors, config)
        await persister.save()
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


def _load_ours(path: Path, config: Any = JSON_MODE) -> Any:
    errors: list[BaseException] = []

    async def main() -> Any:
        store = _store()
        persister = _persister(store, path, errors, config)
        await persister.load()
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


def test_round_trip_in_tinybase_layout(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    ours = _save_ours(path)
    assert _state(_load_ours(path)) == _state(ours)
    assert _state(_load_ours(path, "tinybase")) == _state(ours)  # a table name is the same
    conn = sqlite3.connect(path)
    try:
        # TinyBase's DDL and row: one table, untyped columns, _id '_', the encoded content
        assert conn.execute("SELECT name, sql FROM sqlite_master").fetchall() == [
            ("tinybase", 'CREATE TABLE "tinybase"("_id" PRIMARY KEY,"store")'),
            ("sqlite_autoindex_tinybase_1", None),
        ]
        rows = conn.execute('SELECT "_id", "store" FROM "tinybase"').fetchall()
    finally:
        conn.close()
    assert [row[0] for row in rows] == ["_"]
    raw = json.loads(rows[0][1])
    assert raw[0][0]["t1"][0]["r2"][0]["gone"][0] == "\ufffc"
    assert raw[0][0]["t1"][0]["r1"][0]["object"][0].startswith("\ufffd")


def test_default_schema_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    _save_ours(path, None)
    conn = sqlite3.connect(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "tinybase" not in tables
    assert _state(_load_ours(path, None))["values"]["v"] == "ünï"


def test_configured_names_and_other_rows(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    config = {
        "mode": "json",
        "storeTableName": "my store",
        "storeIdColumnName": "key",
        "storeColumnName": "doc",
    }
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "my store"("key" PRIMARY KEY,"doc")')
    conn.execute("INSERT INTO \"my store\" VALUES('other','x')")
    conn.commit()
    conn.close()
    ours = _save_ours(path, config)
    assert _state(_load_ours(path, config)) == _state(ours)
    conn = sqlite3.connect(path)
    try:
        # TinyBase's save deletes every row but '_'
        assert conn.execute('SELECT "key" FROM "my store"').fetchall() == [("_",)]
    finally:
        conn.close()
    assert _state(_load_ours(path, "my store"))["tables"] == {}  # other columns: nothing there


def test_tabular_mode_and_bad_configs_are_refused(tmp_path: Path) -> None:
    from localsync.persisters.sqlite import create_sqlite_persister

    with pytest.raises(ValueError, match="JSON mode"):
        create_sqlite_persister(
            _store(), tmp_path / "x", config_or_store_table_name={"mode": "tabular"}
        )
    with pytest.raises(TypeError):
        create_sqlite_persister(_store(), tmp_path / "x", config_or_store_table_name=3)


@pytest.mark.parametrize("text", ["not json", '{"a": 1}', "[1, 2]"])
def test_a_row_in_the_wrong_format_is_refused_and_kept(tmp_path: Path, text: str) -> None:
    from localsync.persisters.sqlite import CorruptContentError, PersistError

    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "tinybase"("_id" PRIMARY KEY,"store")')
    conn.execute("INSERT INTO tinybase VALUES('_',?)", [text])
    conn.commit()
    conn.close()
    errors: list[BaseException] = []

    async def main() -> None:
        store = _store()
        persister = _persister(store, path, errors)
        await persister.load()
        store.set_value("v", 1)
        with pytest.raises(PersistError, match="refusing to overwrite"):
            await persister.save()
        await persister.destroy()

    asyncio.run(main())
    assert any(isinstance(error, CorruptContentError) for error in errors), errors
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT store FROM tinybase").fetchall() == [(text,)]
    finally:
        conn.close()


def test_auto_load_hears_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    errors: list[BaseException] = []

    async def main() -> None:
        reader = _store()
        persister = _persister(reader, path, errors)
        await persister.start_auto_load()
        writer = _store()
        writer_persister = _persister(writer, path, errors)
        writer.set_value("hello", "world")
        await writer_persister.save()
        deadline = time.monotonic() + 10
        while reader.get_value("hello") is None:
            assert time.monotonic() < deadline, "the other connection's save was not heard"
            await asyncio.sleep(0.02)
        assert list(reader.get_mergeable_content_hashes()) == list(
            writer.get_mergeable_content_hashes()
        )
        await writer_persister.destroy()
        await persister.destroy()

    asyncio.run(main())
    assert not errors, errors


# ------------------------------------------------------------------ TinyBase 10 (Node.js)


@pytest.fixture
def node() -> None:
    require_node()
    ensure_tinybase()


def _tinybase(mode: str, path: Path) -> dict[str, Any]:
    result = run_node_json("persister_sqlite_tinybase.mjs", mode, str(path), timeout=120)
    assert isinstance(result, dict)
    return result


@pytest.mark.interop
def test_tinybase_writes_python_loads(tmp_path: Path, node: None) -> None:
    path = tmp_path / "db.sqlite"
    theirs = _tinybase("write", path)
    assert theirs["tables"]["t1"]["r1"]["object"] == {"2": "x", "a": [1, {"b": None}], "é": "ü"}
    assert _state(_load_ours(path)) == theirs


@pytest.mark.interop
def test_python_writes_tinybase_loads(tmp_path: Path, node: None) -> None:
    path = tmp_path / "db.sqlite"
    ours = _save_ours(path)
    assert _tinybase("read", path) == _state(ours)


@pytest.mark.interop
def test_auto_load_both_ways_with_tinybase(tmp_path: Path, node: None) -> None:
    path = tmp_path / "db.sqlite"
    errors: list[BaseException] = []

    async def main() -> dict[str, Any]:
        store = _store()
        persister = _persister(store, path, errors)
        await persister.start_auto_persisting()
        store.set_value("first", 1)
        await persister.flush()
        # TinyBase polls data_version; our commit changes it for TinyBase's connection
        proc = start_node("persister_sqlite_tinybase.mjs", "listen", str(path))
        try:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            assert json.loads(line) == {"ready": True}, proc.stderr and proc.stderr.read()
            store.set_value("fromPython", "hi")
            await persister.flush()
            out, err = await asyncio.to_thread(proc.communicate, None, 60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        theirs: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        assert theirs["values"] == {"first": 1, "fromPython": "hi"}
        assert theirs["hashes"] == list(store.get_mergeable_content_hashes())
        # TinyBase writes, Python (still auto-loading) hears it
        written = await asyncio.to_thread(_tinybase, "write", path)
        deadline = time.monotonic() + 20
        while store.get_cell("t1", "r1", "text") is None:
            assert time.monotonic() < deadline, "TinyBase's save was not heard"
            await asyncio.sleep(0.02)
        await persister.destroy()
        return written

    written = asyncio.run(main())
    assert not errors, errors
    assert _state(_load_ours(path))["tables"] == written["tables"]


def test_missing_folders_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "db.sqlite"
    ours = _save_ours(path)
    assert _state(_load_ours(path)) == _state(ours)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700


def test_an_existing_table_is_adapted_as_tinybase_does(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "tinybase"("_id","extra")')
    conn.execute("INSERT INTO tinybase VALUES('x','y')")
    conn.commit()
    conn.close()
    ours = _save_ours(path)
    assert _state(_load_ours(path)) == _state(ours)
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tinybase)")]
        indexes = [row[1] for row in conn.execute("PRAGMA index_list(tinybase)")]
        rows = conn.execute("SELECT _id FROM tinybase").fetchall()
    finally:
        conn.close()
    assert columns == ["_id", "store"]
    assert len(indexes) == 1 and indexes[0].startswith("tinybase_pk_")
    assert rows == [("_",)]
