"""The PostgreSQL persister against a real PostgreSQL server, and against TinyBase's own.

The server comes from the ``pgserver`` package (PostgreSQL binaries in a wheel, in the ``test``
extra): one per test session (per xdist worker), in a temporary folder, listening on a Unix
socket only. As root, pgserver runs the server as a system user ``pgserver`` it creates
(PostgreSQL refuses to run as root). Each test gets a fresh database. A password-checked role
is added for the bad-credentials test (the server trusts local connections otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fill_interop_store as _fill
from tests.helpers import store_state as _state
from tests.npm_env import ensure_tinybase, require_node, run_node_json, start_node

pytestmark = [pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
BAD_USER = "localsync_pw_user"
BAD_USER_PASSWORD = "right-password-9f3"


class Server:
    def __init__(self, handle: Any, uri: str, socket_dir: Path) -> None:
        self.handle = handle
        self.uri = uri
        self.socket_dir = socket_dir

    def db_uri(self, database: str, user: str = "postgres", password: str = "") -> str:
        return f"postgresql://{user}:{password}@/{database}?host={self.socket_dir}"

    def socket_file(self) -> str:
        return str(next(self.socket_dir.glob(".s.PGSQL.*")))

    def execute(self, sql: str, params: Any = None, database: str = "postgres") -> Any:
        import psycopg

        with psycopg.connect(self.db_uri(database), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    try:
        with warnings.catch_warnings():
            # platformdirs: "XDG_RUNTIME_DIR is not set" (pgserver keeps its lock file there)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as error:  # only without the test extra
        pytest.skip(f"pgserver is not installed ({error}): pip install -e '.[test]'")
    # not under pytest's private (0700) temporary folder: the server runs as another user
    # when we are root, and pg_ctl must reach the folder to stop it
    data = Path(tempfile.mkdtemp(prefix="localsync-pg-")) / "data"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same, when it starts the server
            handle = pgserver.get_server(data, cleanup_mode="delete")
    except Exception as error:
        pytest.skip(f"no PostgreSQL server could be started here by pgserver: {error!r}")
    uri = handle.get_uri()
    socket_dir = Path(uri.split("host=", 1)[1])
    server = Server(handle, uri, socket_dir)
    # a role whose password is checked (everyone else is trusted on the local socket)
    server.execute(f"CREATE ROLE {BAD_USER} LOGIN PASSWORD '{BAD_USER_PASSWORD}'")
    hba = data / "pg_hba.conf"
    hba.write_text(f"local all {BAD_USER} scram-sha-256\n" + hba.read_text())
    server.execute("SELECT pg_reload_conf()")
    yield server
    handle.cleanup()
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture
def db(pg: Server) -> str:
    """A fresh, empty database; returns its name."""
    name = "t_" + uuid.uuid4().hex[:12]
    pg.execute(f'CREATE DATABASE "{name}"')
    return name


def _store(unique_id: str | None = None) -> Any:
    from localsync import create_mergeable_store

    return create_mergeable_store(unique_id) if unique_id else create_mergeable_store()


def _persister(store: Any, uri: str, errors: list[BaseException], config: Any = None) -> Any:
    from localsync.persisters.postgres import create_postgres_persister

    return create_postgres_persister(store, uri, config, None, errors.append)


def _save_ours(uri: str, config: Any = None) -> Any:
    errors: list[BaseException] = []

    async def main() -> Any:
        store = _store()
        _fill(store)
        persister = _persister(store, uri, errors, config)
        await persister.save()
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


def _load_ours(uri: str, config: Any = None) -> Any:
    errors: list[BaseException] = []

    async def main() -> Any:
        store = _store()
        persister = _persister(store, uri, errors, config)
        await persister.load()
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


def test_round_trip(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    ours = _save_ours(uri)
    loaded = _load_ours(uri)
    assert _state(loaded) == _state(ours)
    # TinyBase's layout: one row, _id '_', the JSON of the encoded mergeable content
    rows = pg.execute('SELECT "_id", "store" FROM "tinybase"', database=db)
    assert [row[0] for row in rows] == ["_"]
    raw = json.loads(rows[0][1])
    assert raw[0][0]["t1"][0]["r2"][0]["gone"][0] == "\ufffc"
    assert raw[0][0]["t1"][0]["r1"][0]["object"][0].startswith("\ufffd")
    columns = pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name='tinybase' ORDER BY ordinal_position",
        database=db,
    )
    assert columns == [("_id", "text"), ("store", "text")]


def test_configured_table_and_columns(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    config = {
        "mode": "json",
        "storeTableName": "my store",
        "storeIdColumnName": "key",
        "storeColumnName": "doc",
    }
    ours = _save_ours(uri, config)
    assert _state(_load_ours(uri, config)) == _state(ours)
    assert pg.execute('SELECT "key" FROM "my store"', database=db) == [("_",)]
    assert _state(_load_ours(uri, "my store"))["tables"] == {}  # other columns: nothing there


def test_auto_load_hears_other_connections(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    errors: list[BaseException] = []

    async def main() -> None:
        reader = _store()
        persister = _persister(reader, uri, errors)
        await persister.start_auto_load()
        writer = _store()
        writer_persister = _persister(writer, uri, errors)
        await writer_persister.start_auto_persisting()
        for n in range(3):
            writer.set_cell("t", "r", "n", n)
            await writer_persister.flush()
            deadline = time.monotonic() + 20
            while reader.get_cell("t", "r", "n") != n:
                assert time.monotonic() < deadline, f"change {n} was not heard"
                await asyncio.sleep(0.02)
        assert _state(reader) == _state(writer)
        await writer_persister.destroy()
        await persister.destroy()

    asyncio.run(main())
    assert not errors, errors


def test_the_listener_reconnects_and_restores_dropped_triggers(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    errors: list[BaseException] = []

    async def wait_for(store: Any, n: int) -> None:
        deadline = time.monotonic() + 20
        while store.get_cell("t", "r", "n") != n:
            assert time.monotonic() < deadline, f"change {n} was not heard"
            await asyncio.sleep(0.02)

    async def main() -> None:
        reader = _store()
        persister = _persister(reader, uri, errors)
        await persister.start_auto_load()
        writer = _store()
        writer_persister = _persister(writer, uri, [])
        # the listener's connection is killed (server restart, network): it reconnects
        pid = persister._auto_load_handle[1]["conn"].info.backend_pid
        pg.execute("SELECT pg_terminate_backend(%s)", [pid])
        await asyncio.sleep(0.2)
        writer.set_cell("t", "r", "n", 1)
        await writer_persister.save()
        await wait_for(reader, 1)
        # TinyBase drops its notification function (and so the triggers) when its
        # auto-load stops: ours are the same objects, so they are re-created
        function = pg.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'tinybase_d_%%'", database=db
        )
        pg.execute(f'DROP FUNCTION "{function[0][0]}" CASCADE', database=db)
        await asyncio.sleep(0.2)
        writer.set_cell("t", "r", "n", 2)
        await writer_persister.save()
        await wait_for(reader, 2)
        await writer_persister.destroy()
        await persister.destroy()

    asyncio.run(main())
    assert any("cannot use PostgreSQL database" in str(e) for e in errors), errors


_PROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from localsync import create_mergeable_store
    from localsync.persisters.postgres import create_postgres_persister

    uri, me, other = sys.argv[1:4]

    async def main():
        store = create_mergeable_store()
        errors = []
        persister = create_postgres_persister(store, uri, None, None, errors.append)
        await persister.start_auto_persisting()
        print("ready", flush=True)
        sys.stdin.readline()  # both processes are listening: go
        store.set_cell("t", me, "n", 1)
        await persister.flush()
        deadline = time.monotonic() + 30
        while store.get_row("t", other) == {}:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        await persister.flush()
        print(json.dumps({"tables": store.get_tables(), "errors": [repr(e) for e in errors]}))
        await persister.destroy()

    asyncio.run(main())
    """
)


@pytest.mark.process
def test_two_processes_see_each_others_saves(pg: Server, db: str, tmp_path: Path) -> None:
    uri = pg.db_uri(db)
    script = tmp_path / "pg_proc.py"
    script.write_text(_PROCESS_SCRIPT, "utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), uri, me, other],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    expected = {"t": {"a": {"n": 1}, "b": {"n": 1}}}
    for result in results:
        assert result == {"tables": expected, "errors": []}
    assert _load_ours(uri).get_tables() == expected


def test_store_kinds_are_checked_per_mode() -> None:
    from localsync import create_store

    # as TinyBase: tabular mode for a plain Store only; our JSON mode for a MergeableStore
    with pytest.raises(TypeError, match="plain Store"):
        _persister(_store(), "postgresql:///x", [], {"mode": "tabular"})
    with pytest.raises(TypeError):
        _persister(create_store(), "postgresql:///x", [])
    with pytest.raises(ValueError, match="JSON mode"):
        _persister(_store(), "postgresql:///x", [], {"mode": "other"})


# ------------------------------------------------------------------ tabular mode

TABULAR = {
    "mode": "tabular",
    "tables": {
        "load": {"tb_t1": "t1", "tb_t2": {"tableId": "t2", "rowIdColumnName": "id"}},
        "save": {"t1": "tb_t1", "t2": {"tableName": "tb_t2", "rowIdColumnName": "id"}},
    },
    "values": {"load": True, "save": True},
}
TABULAR_TABLES = {
    "t1": {
        "r1": {"text": 'héllo 😀 "q"', "num": 1.5, "obj": {"a": [1, None]}, "nil": None},
        "r2": {"text": "two", "num": -3, "obj": [1, "x"], "nil": True},
    },
    "t2": {"a": {"c": 1}},
}
TABULAR_VALUES = {"v": "ünï", "vobj": {"k": [1]}, "vnull": None}


def _tabular_fill(store: Any) -> None:
    with store.transaction():
        for table_id, rows in TABULAR_TABLES.items():
            for row_id, row in rows.items():
                store.set_row(table_id, row_id, row)
        store.set_row("t2", "b", {"c": 2})
        store.set_values(TABULAR_VALUES)
    store.del_row("t2", "b")


def _tabular_run(uri: str, config: Any, work: Any) -> Any:
    from localsync import create_store

    errors: list[BaseException] = []

    async def main() -> Any:
        store = create_store()
        persister = _persister(store, uri, errors, config)
        await work(store, persister)
        await persister.destroy()
        return store

    store = asyncio.run(main())
    assert not errors, errors
    return store


async def _tabular_save(store: Any, persister: Any) -> None:
    _tabular_fill(store)
    await persister.save()


async def _tabular_load(store: Any, persister: Any) -> None:
    await persister.load()


def test_tabular_round_trip(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    _tabular_run(uri, TABULAR, _tabular_save)
    # one text column per cell, each holding the cell's JSON; values in tinybase_values
    assert sorted(pg.execute('SELECT * FROM "tb_t2"', database=db)) == [("a", "1")]
    rows = pg.execute('SELECT "_id","text","num","obj","nil" FROM "tb_t1"', database=db)
    assert sorted(rows) == [
        ("r1", '"héllo 😀 \\"q\\""', "1.5", '{"a":[1,null]}', "null"),
        ("r2", '"two"', "-3", '[1,"x"]', "true"),
    ]
    assert pg.execute('SELECT "_id","v" FROM "tinybase_values"', database=db) == [("_", '"ünï"')]
    loaded = _tabular_run(uri, TABULAR, _tabular_load)
    assert loaded.get_tables() == TABULAR_TABLES
    assert loaded.get_values() == TABULAR_VALUES


def test_tabular_load_mapping_renames(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    pg.execute(
        'CREATE TABLE "people"("pid" text PRIMARY KEY,"name" text,"age" text);'
        "INSERT INTO \"people\" VALUES('p1','\"Ann\"','41'),('p2','\"Bob\"',NULL)",
        database=db,
    )
    config = {
        "mode": "tabular",
        "tables": {"load": {"people": {"tableId": "persons", "rowIdColumnName": "pid"}}},
    }
    loaded = _tabular_run(uri, config, _tabular_load)
    # a NULL column is a null cell, as TinyBase loads it
    assert loaded.get_tables() == {
        "persons": {"p1": {"name": "Ann", "age": 41}, "p2": {"name": "Bob", "age": None}}
    }
    assert loaded.get_values() == {}


def test_tabular_save_deletes_rows_and_empty_columns(pg: Server, db: str) -> None:
    uri = pg.db_uri(db)
    config = {
        "mode": "tabular",
        "tables": {
            "save": {
                "kept": "kept",
                "pruned": {"tableName": "pruned", "deleteEmptyColumns": True},
                "gone": {"tableName": "gone", "deleteEmptyTable": True},
            }
        },
        "values": {"save": True},
    }

    def columns(table: str) -> list[str]:
        return [
            row[0]
            for row in pg.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name=%s ORDER BY column_name",
                [table],
                database=db,
            )
        ]

    async def work(store: Any, persister: Any) -> None:
        for table in ("kept", "pruned", "gone"):
            store.set_row(table, "r1", {"a": 1, "b": 2})
            store.set_row(table, "r2", {"a": 3})
        store.set_values({"x": 1})
        await persister.save()
        assert columns("pruned") == ["_id", "a", "b"]
        for table in ("kept", "pruned"):
            store.del_cell(table, "r1", "b")
            store.del_row(table, "r2")
        store.del_table("gone")
        store.del_values()
        await persister.save()

    _tabular_run(uri, config, work)
    assert columns("kept") == ["_id", "a", "b"]
    assert columns("pruned") == ["_id", "a"]
    assert columns("gone") == [] and columns("tinybase_values") == []
    assert pg.execute('SELECT * FROM "kept"', database=db) == [("r1", "1", None)]
    assert pg.execute('SELECT * FROM "pruned"', database=db) == [("r1", "1")]


def test_tabular_auto_load_hears_another_persister(pg: Server, db: str) -> None:
    from localsync import create_store

    uri = pg.db_uri(db)
    errors: list[BaseException] = []

    async def main() -> None:
        reader, writer = create_store(), create_store()
        listening = _persister(reader, uri, errors, TABULAR)
        writing = _persister(writer, uri, errors, TABULAR)
        await listening.start_auto_load()
        await writing.start_auto_save()
        _tabular_fill(writer)
        await writing.flush()
        deadline = time.monotonic() + 20
        while reader.get_tables() != TABULAR_TABLES or reader.get_values() != TABULAR_VALUES:
            assert time.monotonic() < deadline, (reader.get_tables(), reader.get_values())
            await asyncio.sleep(0.02)
        await listening.destroy()
        await writing.destroy()

    asyncio.run(main())
    assert not errors, errors


def test_down_server_raises_a_clear_error() -> None:
    from localsync.persisters.postgres import PersistError

    uri = "postgresql://alice:s3cret-pw@127.0.0.1:1/orders"

    async def main() -> None:
        errors: list[BaseException] = []
        persister = _persister(_store(), uri, errors)
        with pytest.raises(PersistError) as raised:
            await persister.load()
        message = str(raised.value)
        assert "postgresql://alice@127.0.0.1:1/orders" in message
        assert "s3cret-pw" not in message
        assert errors  # reported too
        fresh = _persister(_store(), uri, errors)
        with pytest.raises(PersistError, match=r"127\.0\.0\.1:1/orders") as raised:
            await fresh.start_auto_save()
        assert "s3cret-pw" not in str(raised.value)
        assert not fresh.is_auto_saving()
        with pytest.raises(PersistError):
            await _persister(_store(), uri, errors).start_auto_persisting()
        for each in (persister, fresh):
            await each.destroy()

    asyncio.run(main())


def test_bad_password_raises_a_clear_error(pg: Server, db: str) -> None:
    from localsync.persisters.postgres import PersistError

    uri = pg.db_uri(db, BAD_USER, "wrong-password-77")

    async def main() -> None:
        errors: list[BaseException] = []
        persister = _persister(_store(), uri, errors)
        with pytest.raises(PersistError) as raised:
            await persister.load()
        message = str(raised.value)
        assert f"postgresql://{BAD_USER}@" in message and f"/{db}" in message
        assert "password authentication failed" in message
        assert "wrong-password-77" not in message
        await persister.destroy()
        # the right password works
        good = _persister(_store(), pg.db_uri(db, BAD_USER, BAD_USER_PASSWORD), errors)
        pg.execute(f"GRANT ALL ON SCHEMA public TO {BAD_USER}", database=db)
        await good.load()
        await good.save()
        await good.destroy()
        assert len(errors) == 1

    asyncio.run(main())


@pytest.mark.parametrize("text", ["not json", '{"a": 1}', "[1, 2]"])
def test_a_row_in_the_wrong_format_is_refused_and_kept(pg: Server, db: str, text: str) -> None:
    from localsync.persisters.postgres import CorruptContentError, PersistError

    pg.execute('CREATE TABLE "tinybase"("_id" text PRIMARY KEY, "store" text)', database=db)
    pg.execute("INSERT INTO \"tinybase\" VALUES ('_', %s)", [text], database=db)
    uri = pg.db_uri(db)

    async def main() -> None:
        errors: list[BaseException] = []
        store = _store()
        store.set_value("mine", 1)
        persister = _persister(store, uri, errors)
        await persister.load()
        assert any(isinstance(e, CorruptContentError) for e in errors), errors
        assert store.get_values() == {"mine": 1}
        with pytest.raises(PersistError, match="refusing to overwrite"):
            await persister.save()
        with pytest.raises(PersistError, match="refusing to overwrite"):
            await persister.start_auto_save()
        await persister.destroy()

    asyncio.run(main())
    assert pg.execute('SELECT "store" FROM "tinybase"', database=db) == [(text,)]


# ------------------------------------------------------------------ server restarts


@pytest.fixture
def own_pg() -> Iterator[tuple[Server, Any]]:
    """A server of its own (it is restarted), with its data folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError as error:
            pytest.skip(f"pgserver is not installed ({error})")
        data = Path(tempfile.mkdtemp(prefix="localsync-pg-restart-")) / "data"
        try:
            handle = pgserver.get_server(data, cleanup_mode="delete")
        except Exception as error:
            pytest.skip(f"no PostgreSQL server could be started here by pgserver: {error!r}")
    uri = handle.get_uri()
    yield Server(handle, uri, Path(uri.split("host=", 1)[1])), data
    handle.cleanup()
    shutil.rmtree(data.parent, ignore_errors=True)


def _stop_server(handle: Any, data: Path) -> None:
    import pgserver

    # "immediate": the server dies as in a crash; only what was committed survives
    pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=handle.system_user)


def _start_server(handle: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with handle._lock:
            handle.ensure_postgres_running()


def test_a_restart_mid_stream_loses_no_acknowledged_change(
    own_pg: tuple[Server, Any],
) -> None:
    from localsync.persisters.postgres import PersistError

    server, data = own_pg
    uri = server.db_uri("postgres")
    errors: list[BaseException] = []
    written: list[tuple[int, int]] = []  # (transaction number, i) of each write
    acked: list[int] = []  # durable transaction numbers heard by the saved listener

    async def main() -> None:
        store = _store()
        persister = _persister(store, uri, errors)
        persister.add_saved_listener(lambda _p, seq: acked.append(seq))
        await persister.start_auto_save()
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                store.set_cell("t", f"r{i}", "i", i)
                written.append((persister.get_save_stats()["transactions"], i))
                i += 1
                await asyncio.sleep(0.003)

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.5)
        await persister.flush()
        await asyncio.to_thread(_stop_server, server.handle, data)
        acked_before = max(acked)
        await asyncio.sleep(1.0)  # writing on while the server is down
        with pytest.raises(PersistError):
            await persister.flush()
        assert max(acked) == acked_before, "acknowledged while the server was down"
        assert any("cannot use PostgreSQL" in str(e) for e in errors)
        stop.set()
        await task
        await asyncio.to_thread(_start_server, server.handle)
        # every acknowledged write is in the database, whatever the retries did meanwhile
        durable = await asyncio.to_thread(_load_ours, uri)
        rows = durable.get_table("t")
        missing = [i for seq, i in written if seq <= acked_before and f"r{i}" not in rows]
        assert not missing
        # nothing is written any more: only the auto-save's retries (no flush, no new
        # transaction) can save what was written during the outage
        deadline = time.monotonic() + 30
        while persister.get_save_stats()["durable"] < written[-1][0]:
            assert time.monotonic() < deadline, persister.get_save_stats()
            await asyncio.sleep(0.05)
        await persister.destroy()

    asyncio.run(main())
    assert len(written) > 100
    errors.clear()
    final = _load_ours(uri).get_table("t")
    assert sorted(final) == sorted(f"r{i}" for _, i in written)


# ------------------------------------------------------------------ TinyBase 10 (Node.js)


@pytest.fixture
def node() -> None:
    require_node()
    ensure_tinybase()


def _tinybase(pg: Server, mode: str, db: str) -> dict[str, Any]:
    result = run_node_json("persister_postgres.mjs", mode, pg.socket_file(), db, timeout=120)
    assert isinstance(result, dict)
    return result


@pytest.mark.interop
def test_tinybase_writes_python_loads(pg: Server, db: str, node: None) -> None:
    theirs = _tinybase(pg, "write", db)
    assert theirs["tables"]["t1"]["r1"]["object"] == {"2": "x", "a": [1, {"b": None}], "é": "ü"}
    assert _state(_load_ours(pg.db_uri(db))) == theirs


@pytest.mark.interop
def test_python_writes_tinybase_loads(pg: Server, db: str, node: None) -> None:
    ours = _save_ours(pg.db_uri(db))
    assert _tinybase(pg, "read", db) == _state(ours)


@pytest.mark.interop
def test_tabular_tinybase_writes_python_loads(pg: Server, db: str, node: None) -> None:
    theirs = _tinybase(pg, "tabular-write", db)
    assert theirs == {"tables": TABULAR_TABLES, "values": TABULAR_VALUES}
    loaded = _tabular_run(pg.db_uri(db), TABULAR, _tabular_load)
    assert {"tables": loaded.get_tables(), "values": loaded.get_values()} == theirs


@pytest.mark.interop
def test_tabular_python_writes_tinybase_loads(pg: Server, db: str, node: None) -> None:
    _tabular_run(pg.db_uri(db), TABULAR, _tabular_save)
    assert _tinybase(pg, "tabular-read", db) == {
        "tables": TABULAR_TABLES,
        "values": TABULAR_VALUES,
    }


@pytest.mark.interop
def test_notifications_go_both_ways_with_tinybase(pg: Server, db: str, node: None) -> None:
    uri = pg.db_uri(db)
    errors: list[BaseException] = []

    async def main() -> dict[str, Any]:
        store = _store()
        persister = _persister(store, uri, errors)
        await persister.start_auto_persisting()
        store.set_value("first", 1)
        await persister.flush()
        # TinyBase listens, Python writes: TinyBase's auto-load hears our trigger's NOTIFY
        proc = start_node("persister_postgres.mjs", "listen", pg.socket_file(), db)
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
        # TinyBase writes, Python (still auto-loading) hears it
        written = await asyncio.to_thread(_tinybase, pg, "write", db)
        deadline = time.monotonic() + 20
        while store.get_cell("t1", "r1", "text") is None:
            assert time.monotonic() < deadline, "TinyBase's save was not heard"
            await asyncio.sleep(0.02)
        await persister.flush()
        await persister.destroy()
        return written

    written = asyncio.run(main())
    assert not errors, errors
    # TinyBase's save replaced the row with its own store; ours merged it and saved both
    merged = _load_ours(uri)
    assert merged.get_tables() == written["tables"]
    assert merged.get_values() == {**written["values"], "first": 1, "fromPython": "hi"}
