"""PostgreSQL persister: a MergeableStore in one row of a PostgreSQL table, as TinyBase keeps it.

``create_postgres_persister(store, conninfo, config_or_store_table_name=None, ...)`` is
TinyBase's ``createPostgresPersister`` in its JSON mode, for a MergeableStore:

* The store is one row of table ``tinybase`` (``_id text PRIMARY KEY, store text``): ``_id`` is
  ``'_'`` and ``store`` the JSON of the encoded mergeable content (``undefined`` as U+FFFC,
  object/array cells as U+FFFD + JSON), what a TinyBase process writes there (the same JSON
  value; number spelling and key order may differ, as in the file persister). The
  names come from TinyBase's ``DatabasePersisterConfig`` (``{"mode": "json",
  "storeTableName": ..., "storeIdColumnName": ..., "storeColumnName": ...}``) or a plain table
  name. Saves upsert that row and delete any other row of the table, as TinyBase's do.
* Auto-load uses LISTEN/NOTIFY with TinyBase's names, so a TinyBase process's writes wake us
  and ours wake it: channel ``tinybase_<h>`` where ``<h>`` is TinyBase's hash of the JSON of
  the defaulted config ``[table, idColumn, storeColumn]``; row triggers
  ``tinybase_d_<h>_<table>_INSERT|DELETE|UPDATE`` calling function ``tinybase_d_<h>()``, which
  notifies ``d:<table>``. They are created with ``CREATE OR REPLACE`` (so they coexist with
  TinyBase's), never dropped by us (a TinyBase process still listening would lose them), and
  re-created when found missing (TinyBase drops them when its auto-load stops). TinyBase's
  table-created event trigger is left to TinyBase: we create the table before listening.
* The listener has its own connection; when it breaks it reconnects (0.5 s .. 5 s apart) and
  loads once, since changes may have been missed meanwhile. Our own saves' notifications
  (same server process id) are ignored.
* Several processes may share the row: a load *merges* the row into the store (TinyBase's
  replaces the store's content), and when auto-saving a load that brought less than the
  store has saves the merge back, so two processes saving at once both end with both saves.

Saves and loads run on the :class:`~localsync.persisters._common.Backend` machinery shared
with the file and SQLite persisters (a psycopg connection used from worker threads): durable
acknowledgements (``await persister.flush()``; a save is durable when PostgreSQL committed
it), coalesced auto-saves, hash recomputation on load, and refusal to overwrite a row that
could not be read, is not mergeable content, or holds content the store rejected.

Errors: a server that is down, unreachable or refuses the credentials makes ``load``,
``save``, ``start_auto_save`` and ``start_auto_persisting`` raise ``PersistError`` naming the
server and database (``postgresql://alice@db.example:5432/app``), never the password; the
cause is reported through ``on_ignored_error`` too. After a load that could not reach the
database, saves are refused until a load succeeds (what the row holds is unknown).
``on_sql_command(sql, params)`` hears every SQL command, as in TinyBase (with psycopg's
``%s`` placeholders). Creating the notification triggers needs a role that may
create functions and triggers on the table.

Tabular mode (``{"mode": "tabular", ...}``, TinyBase's ``DatabasePersisterConfig``) is for a
plain Store (a MergeableStore is refused, as TinyBase does; JSON mode here is for a
MergeableStore only). ``tables.load`` maps database tables to table ids (``{"tableId",
"rowIdColumnName"}``), ``tables.save`` table ids to database tables (``{"tableName",
"rowIdColumnName", "deleteEmptyColumns", "deleteEmptyTable"}``), row id column ``_id`` by
default; values (``{"load": bool | ids, "save": bool | ids, "tableName"}``, both off by
default) are the row ``'_'`` of ``tinybase_values`` (its empty columns and, when there are no
values, the table itself are dropped). Every cell is its JSON in a ``text`` column, created or
added when missing; a missing cell is NULL and loads as a null cell, as in TinyBase. Each save
writes the whole store in one transaction (TinyBase writes only changed rows when
auto-saving, and only drops empty columns/tables on a whole save); a load replaces the
store's content. Auto-load listens on TinyBase's channel for the mapped tables. Not supported:
``condition``.

Auto-save retries: a save that could not reach the server while auto-saving is retried
(0.1 s .. 5 s apart, after a load when the last load failed too) until one succeeds or the
persister is destroyed; nothing is acknowledged until PostgreSQL committed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from localsync.core.codec import UNDEFINED, js_stringify
from localsync.core.hash import get_hash
from localsync.core.protocols import PersistableStore, is_mergeable_store
from localsync.errors import DatabaseUnreachableError
from localsync.persisters._common import Backend, BackendPersister, PersistError
from localsync.persisters._database import (
    SINGLE_ROW_ID,
    JsonRowBackend,
    decode_row,
    escape_id,
    json_mode_names,
)
from localsync.persisters._filestore import CorruptContentError
from localsync.persisters._integrity import HashesRepaired
from localsync.sync.persister import Persists

__all__ = [
    "CorruptContentError",
    "DatabaseUnreachableError",
    "HashesRepaired",
    "PersistError",
    "PostgresPersister",
    "create_postgres_persister",
]

_SIMPLE_TABLE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_IDENTIFIER_SIZE = 63
_RECONNECT_MIN = 0.5
_RECONNECT_MAX = 5.0
_RETRY_MIN = 0.1
_RETRY_MAX = 5.0
# how often an idle listener checks that its triggers still exist
_TRIGGER_CHECK_SECONDS = 2.0
# one lock for everyone creating TinyBase's notification objects (concurrent CREATE OR
# REPLACE of one trigger fails with "tuple concurrently updated")
_ADVISORY_LOCK = get_hash("tinybase-listener-resources") & 0x7FFFFFFF

SqlCommandListener = Callable[[str, Any], None]


def describe_conninfo(conninfo: str) -> str:
    """``postgresql://user@host:port/dbname`` for messages: never the password."""
    import psycopg.conninfo

    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except Exception:
        return "postgresql://(unparsable connection string)"
    user = params.get("user")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    dbname = params.get("dbname") or user or ""
    return (
        "postgresql://"
        + (f"{user}@" if user else "")
        + str(host)
        + (f":{port}" if port else "")
        + f"/{dbname}"
    )


class PostgresBackend(JsonRowBackend):
    """One-row JSON storage in PostgreSQL, with TinyBase's LISTEN/NOTIFY names."""

    kind = "database"

    def __init__(
        self,
        store: PersistableStore,
        conninfo: str,
        config: tuple[str, str, str],
        on_sql_command: SqlCommandListener | None,
    ) -> None:
        self.conninfo = conninfo
        self.table, self.id_column, self.store_column = config
        self.on_sql_command = on_sql_command
        self._set_channel(js_stringify(list(config)), [(self.table, self.id_column)])
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self.own_pid: int | None = None
        # the error of the last load that could not reach the database (``load`` raises it)
        self.load_error: PersistError | None = None
        self.merged_more = False
        self._loaded_hashes: list[int] | None = None
        # auto-save retries after a lost connection (see ``set_persisted``)
        self._retry_delay = _RETRY_MIN
        self._retry_task: asyncio.Task[None] | None = None
        self._load_unreachable = False
        self._destroyed = False
        super().__init__(store, describe_conninfo(conninfo), 0.0)

    def _set_channel(self, config_json: str, managed: list[tuple[str, str]]) -> None:
        """TinyBase's channel, function and trigger names for the defaulted config's JSON;
        ``managed`` is ``[(table, row id column)]`` of the tables listened to."""
        config_hash = str(get_hash(config_json))
        self.managed = managed
        self.channel = f"tinybase_{config_hash}"
        self.function = escape_id(f"tinybase_d_{config_hash}")
        self.triggers: list[tuple[str, str, str]] = []
        for table, _ in managed:
            for action in ("INSERT", "DELETE", "UPDATE"):
                legacy = f"tinybase_d_{config_hash}_{table}_{action}"
                if _SIMPLE_TABLE_NAME.match(table) and len(legacy) <= _IDENTIFIER_SIZE:
                    name = legacy
                else:
                    name = f"tinybase_d_{config_hash}_{action}_{get_hash(table)}"
                self.triggers.append((action, name, table))

    # -------------------------------------------------------------- connections

    def _connection_error(self, error: BaseException) -> PersistError:
        text = str(error).strip()
        password = _password(self.conninfo)
        if password:
            text = text.replace(password, "***")
        return DatabaseUnreachableError(f"cannot use PostgreSQL database {self.path}: {text}")

    def _connect_sync(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as error:
            raise self._connection_error(error) from None
        self.own_pid = self._conn.info.backend_pid
        return self._conn

    def _execute(self, conn: Any, sql: str, params: list[Any] | None = None) -> Any:
        if self.on_sql_command is not None:
            self.on_sql_command(sql, params)
        return conn.execute(sql, params)

    def _run(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(conn)`` in one transaction; a broken connection is dropped, and a
        server that cannot be reached becomes a ``PersistError`` naming it."""
        import psycopg

        with self._conn_lock:
            conn = self._connect_sync()
            try:
                with conn.transaction():
                    return work(conn)
            except psycopg.OperationalError as error:
                if conn.closed or conn.broken:
                    self._conn = None
                    raise self._connection_error(error) from error
                raise

    # -------------------------------------------------------------- storage hooks

    def _read(self, conn: Any) -> Any:
        columns = {
            row[0]
            for row in self._execute(
                conn,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema=COALESCE(NULLIF(%s,''),current_schema()) AND table_name=%s",
                list(self.table.rpartition(".")[::2]),
            ).fetchall()
        }
        if self.id_column not in columns or self.store_column not in columns:
            return None
        row = self._execute(
            conn,
            f"SELECT {escape_id(self.store_column)} FROM {escape_id(self.table)} "
            f"WHERE {escape_id(self.id_column)}=%s",
            [SINGLE_ROW_ID],
        ).fetchone()
        return None if row is None else row[0]

    def _load_sync(self) -> Any | None:
        return decode_row(self._run_load(self._read), self.store_column)

    def _run_load(self, read: Callable[[Any], Any]) -> Any:
        """``self._run(read)`` for a load: remembers whether the database could be reached."""
        try:
            result = self._run(read)
        except PersistError as error:
            self.load_error = error
            self._load_unreachable = True
            raise
        self._load_unreachable = False
        return result

    def _ensure_table(self, conn: Any) -> None:
        table = escape_id(self.table)
        self._execute(
            conn,
            f"CREATE TABLE IF NOT EXISTS {table}({escape_id(self.id_column)}text PRIMARY KEY)",
        )
        self._execute(
            conn,
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {escape_id(self.store_column)}text",
        )

    def _write_row(self, text: str, table: str, id_column: str, store_column: str) -> None:
        def write(conn: Any) -> None:
            self._ensure_table(conn)
            self._execute(
                conn,
                f"INSERT INTO {table}({id_column},{store_column})VALUES(%s,%s)"
                f"ON CONFLICT({id_column})DO UPDATE SET {store_column}=excluded.{store_column}",
                [SINGLE_ROW_ID, text],
            )
            self._execute(conn, f"DELETE FROM {table} WHERE {id_column}<>%s", [SINGLE_ROW_ID])

        self._run(write)

    def _watch_token(self) -> Any:  # auto-load listens instead of polling
        return None

    async def get_persisted(self) -> Any | None:
        content = await super().get_persisted()
        # the loaded hashes (``_expect_load`` is consumed by the transaction the load causes)
        self._loaded_hashes = None if self._expect_load is None else list(self._expect_load)
        if isinstance(content, list):
            # merged into the store as changes-with-hashes (same tree, third item 1), not set
            # over it: several processes share one row, and content one of them saved while
            # another was saving must not be dropped from the other's store (see ``load``)
            return [*content, 1]
        return content

    def after_load(self, applied: bool) -> None:
        loaded, self._loaded_hashes = self._loaded_hashes, None
        super().after_load(applied)
        # the store had content the row lacks (two writers saved at once and one overwrote
        # the other): ``load`` saves the merge back when auto-saving, or nothing converges
        self.merged_more = bool(
            applied
            and loaded is not None  # set only for a mergeable store
            and is_mergeable_store(self.store)
            and list(self.store.get_mergeable_content_hashes()) != loaded
        )

    # -------------------------------------------------------------- LISTEN / NOTIFY

    def _trigger_sql(self) -> list[str]:
        commands = [
            f"CREATE OR REPLACE FUNCTION {self.function}()RETURNS trigger AS $$ BEGIN "
            f"PERFORM pg_notify('{self.channel}','d:'||TG_TABLE_NAME);RETURN NULL;END;$$ "
            "LANGUAGE plpgsql;"
        ]
        for action, name, table in self.triggers:
            commands.append(
                f"CREATE OR REPLACE TRIGGER{escape_id(name)}AFTER {action} ON{escape_id(table)}"
                f"FOR EACH ROW WHEN(true)EXECUTE FUNCTION{self.function}()"
            )
        return commands

    async def _ensure_triggers(self, conn: Any, only_if_missing: bool) -> bool:
        """Create the table, function and triggers; return whether anything was missing."""
        async with conn.transaction():
            if only_if_missing:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)",
                    [[name for _, name, _ in self.triggers]],
                )
                row = await cursor.fetchone()
                if row is not None and row[0] >= len(self.triggers):
                    return False
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            for sql in [
                *(
                    f"CREATE TABLE IF NOT EXISTS {escape_id(table)}"
                    f"({escape_id(id_column)}text PRIMARY KEY)"
                    for table, id_column in self.managed
                ),
                *self._trigger_sql(),
            ]:
                if self.on_sql_command is not None:
                    self.on_sql_command(sql, None)
                await conn.execute(sql)
        return True

    async def _listen_connect(self) -> Any:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=10
            )
        except psycopg.Error as error:
            raise self._connection_error(error) from None
        try:
            await self._ensure_triggers(conn, False)
            await conn.execute(f"LISTEN {escape_id(self.channel)}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def add_persister_listener(self, listener: Any) -> list[Any]:  # type: ignore[override]
        """Connect, make sure the triggers exist, LISTEN; then watch in a task.

        Raises ``PersistError`` when the database cannot be reached (the base reports it).
        The handle is ``[task, state]``; the task reconnects on its own.
        """
        state: dict[str, Any] = {"conn": await self._listen_connect()}
        task = asyncio.get_running_loop().create_task(
            self._listen(listener, state), name="localsync-postgres-listen"
        )
        return [task, state]

    def del_persister_listener(self, handle: list[Any]) -> Any:  # type: ignore[override]
        handle[0].cancel()
        return self._close_listener(handle)

    async def _close_listener(self, handle: list[Any]) -> None:
        with contextlib.suppress(BaseException):
            await handle[0]
        conn = handle[1].get("conn")
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _listen(self, listener: Any, state: dict[str, Any]) -> None:
        delay = _RECONNECT_MIN
        wanted = {f"{kind}:{table.split('.')[-1]}" for table, _ in self.managed for kind in "dc"}
        while True:
            conn = state.get("conn")
            try:
                if conn is None:
                    conn = state["conn"] = await self._listen_connect()
                    delay = _RECONNECT_MIN
                    listener()  # changes may have been made while we were away
                while True:
                    heard = False
                    async for notify in conn.notifies(timeout=_TRIGGER_CHECK_SECONDS):
                        if notify.payload in wanted and notify.pid != self.own_pid:
                            heard = True
                    if heard:
                        listener()
                    if await self._ensure_triggers(conn, True):
                        listener()  # someone dropped them: we may have missed a change
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self.persister is not None and conn is not None:
                    self.persister._report(self._connection_error(error))
                state["conn"] = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX)

    # -------------------------------------------------------------- retries

    async def set_persisted(self, get_content: Any = None, changes: Any = None) -> None:
        """Save; when auto-saving and the database could not be reached, retry later.

        A lost connection (or a refusal after a load that could not reach the database)
        schedules a retry with backoff (``_RETRY_MIN`` .. ``_RETRY_MAX`` seconds) until a
        save succeeds or the persister is destroyed. Nothing is acknowledged unless
        PostgreSQL committed it (a commit whose outcome is unknown is simply written again).
        """
        try:
            await super().set_persisted(get_content, changes)
        except PersistError as error:
            if isinstance(error, DatabaseUnreachableError) or (
                self.unreadable is not None and self._load_unreachable
            ):
                self._schedule_retry()
            raise
        self._retry_delay = _RETRY_MIN

    def _schedule_retry(self) -> None:
        persister = self.persister
        if self._destroyed or persister is None or not persister.is_auto_saving():
            return
        if self._retry_task is not None and not self._retry_task.done():
            return
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay * 2, _RETRY_MAX)
        self._retry_task = asyncio.get_running_loop().create_task(
            self._retry(delay), name="localsync-postgres-retry"
        )

    async def _retry(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry_task = None
        persister = self.persister
        if self._destroyed or persister is None or not persister.is_auto_saving():
            return
        if self.unreadable is not None and self._load_unreachable:
            # what the database holds is unknown until a load succeeds: load first
            try:
                await persister.load()
            except Exception:
                self._schedule_retry()
                return
        if self._has_work():
            await persister._save_whole()  # a failure schedules the next retry

    def destroy(self) -> None:
        self._destroyed = True
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None
        super().destroy()
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


# ------------------------------------------------------------------ tabular mode

_VALUES_ROW_ID = "_"
_SCHEMA_SQL = (
    "SELECT c.table_name,c.column_name,EXISTS(SELECT 1 FROM pg_index i "
    "JOIN pg_class t ON t.oid=i.indrelid JOIN pg_namespace n ON n.oid=t.relnamespace "
    "JOIN pg_attribute a ON a.attrelid=t.oid AND a.attnum=i.indkey[0] "
    "WHERE i.indisunique AND i.indnatts=1 AND n.nspname=c.table_schema "
    "AND t.relname=c.table_name AND a.attname=c.column_name) "
    "FROM information_schema.columns c "
    "WHERE c.table_schema=current_schema() AND c.table_name=ANY(%s)"
)


class TabularConfig:
    """TinyBase's defaulted tabular ``DatabasePersisterConfig``."""

    def __init__(self, config: dict[str, Any]) -> None:
        tables = config.get("tables") or {}
        values: dict[str, Any] = {"load": False, "save": False, "tableName": "tinybase_values"}
        values.update(config.get("values") or {})
        self.values_load = values["load"] is True or isinstance(values["load"], list)
        self.values_save = values["save"] is True or isinstance(values["save"], list)
        self.values_table: str = values["tableName"]
        self.values_load_ids = values["load"] if isinstance(values["load"], list) else None
        self.values_save_ids = values["save"] if isinstance(values["save"], list) else None
        if not isinstance(self.values_table, str):
            raise TypeError(f"values tableName must be a string, not {self.values_table!r}")
        # dbTableName -> (tableId, rowIdColumnName)
        self.load: dict[str, tuple[str, str]] = {}
        for table_name, entry in (tables.get("load") or {}).items():
            entry = {"tableId": entry} if isinstance(entry, str) else dict(entry or {})
            table_id = entry.get("tableId")
            if table_id is None or table_name == self.values_table:
                continue
            if "condition" in entry:
                raise ValueError("tabular 'condition' is not supported")
            self.load[table_name] = (table_id, entry.get("rowIdColumnName") or "_id")
        # tableId -> (dbTableName, rowIdColumnName, deleteEmptyColumns, deleteEmptyTable)
        self.save: dict[str, tuple[str, str, bool, bool]] = {}
        for table_id, entry in (tables.get("save") or {}).items():
            entry = {"tableName": entry} if isinstance(entry, str) else dict(entry or {})
            table_name = entry.get("tableName")
            if table_name is None or table_name == self.values_table:
                continue
            if "condition" in entry:
                raise ValueError("tabular 'condition' is not supported")
            self.save[table_id] = (
                table_name,
                entry.get("rowIdColumnName") or "_id",
                bool(entry.get("deleteEmptyColumns")),
                bool(entry.get("deleteEmptyTable")),
            )
        for name in [*self.load, *(s[0] for s in self.save.values())]:
            if not isinstance(name, str):
                raise TypeError(f"table names must be strings, not {name!r}")
        # managed tables (listened to), each with the row id column it is created with
        managed: dict[str, str] = {self.values_table: "_id"}
        for table_name, (_, row_id_column) in self.load.items():
            managed.setdefault(table_name, row_id_column)
        for table_name, row_id_column, _, _ in self.save.values():
            managed[table_name] = row_id_column
        self.managed = list(managed.items())

    def hash_json(self) -> str:
        """The JSON TinyBase hashes for its channel: its Maps of table configs stringify as
        ``{}``, so only the values config counts."""
        return js_stringify(
            [
                {},
                {},
                [
                    self.values_load,
                    self.values_save,
                    self.values_table,
                    UNDEFINED if self.values_load_ids is None else self.values_load_ids,
                    UNDEFINED if self.values_save_ids is None else self.values_save_ids,
                ],
            ]
        )


def _decode_field(field: Any) -> Any:
    if isinstance(field, str):
        try:
            return json.loads(field)
        except ValueError:
            raise CorruptContentError(f"a cell is not JSON: {field[:40]!r}") from None
    return field  # NULL (a missing cell: TinyBase loads it as null) or a non-text column


class PostgresTabularBackend(PostgresBackend):
    """A plain Store as PostgreSQL tables, one row per row and one text column per cell,
    each cell JSON-encoded (TinyBase's tabular mode)."""

    def __init__(
        self,
        store: PersistableStore,
        conninfo: str,
        config: TabularConfig,
        on_sql_command: SqlCommandListener | None,
    ) -> None:
        self.tabular = config
        super().__init__(store, conninfo, ("tinybase", "_id", "store"), on_sql_command)
        self._set_channel(config.hash_json(), config.managed)

    def _schema(self, conn: Any) -> dict[str, dict[str, bool]]:
        """``{table: {column: is the only column of a unique index}}`` of managed tables."""
        schema: dict[str, dict[str, bool]] = {}
        for table, column, unique in self._execute(
            conn, _SCHEMA_SQL, [[table for table, _ in self.managed]]
        ).fetchall():
            schema.setdefault(table, {})[column] = bool(unique)
        return schema

    def _load_table(
        self, conn: Any, schema: dict[str, dict[str, bool]], table: str, row_id_column: str
    ) -> dict[str, dict[str, Any]]:
        if row_id_column not in schema.get(table, {}):
            return {}
        cursor = self._execute(conn, f"SELECT * FROM {escape_id(table)}")
        names = [column.name for column in cursor.description]
        rows: dict[str, dict[str, Any]] = {}
        for record in cursor.fetchall():
            fields = dict(zip(names, record, strict=True))
            row_id = fields.pop(row_id_column)
            if row_id is None:
                continue
            row = {cell_id: _decode_field(field) for cell_id, field in fields.items()}
            if row:
                rows[row_id if isinstance(row_id, str) else str(row_id)] = row
        return rows

    def _read_tabular(self, conn: Any) -> Any | None:
        config = self.tabular
        schema = self._schema(conn)
        tables: dict[str, Any] = {}
        for table, (table_id, row_id_column) in config.load.items():
            rows = self._load_table(conn, schema, table, row_id_column)
            if rows:
                tables[table_id] = rows
        values: dict[str, Any] | None = {}
        if config.values_load:
            values = self._load_table(conn, schema, config.values_table, "_id").get(_VALUES_ROW_ID)
            if values is not None and config.values_load_ids is not None:
                values = {k: v for k, v in values.items() if k in config.values_load_ids}
        if not tables and values is None:
            return None
        return [tables, values or {}]

    def _load_sync(self) -> Any | None:
        return self._run_load(self._read_tabular)

    def _save_table(
        self,
        conn: Any,
        schema: dict[str, dict[str, bool]],
        table: str,
        row_id_column: str,
        content: dict[str, dict[str, Any]] | None,
        delete_empty_columns: bool,
        delete_empty_table: bool,
    ) -> None:
        """TinyBase's whole-table save: add missing columns, upsert every row, delete the
        rows (and optionally the columns, or the table) the store does not have."""
        escaped = escape_id(table)
        column_set: dict[str, None] = {}
        for row in (content or {}).values():
            column_set.update(dict.fromkeys(row))
        columns = list(column_set)
        exists = table in schema
        if delete_empty_table and not columns and exists:
            self._execute(conn, f"DROP TABLE{escaped}")
            del schema[table]
            return
        current = schema.get(table, {})
        unaccounted = set(current)
        if columns:
            if not exists:
                self._execute(
                    conn,
                    f"CREATE TABLE{escaped}({escape_id(row_id_column)}text PRIMARY KEY"
                    + "".join(f",{escape_id(c)}text" for c in columns if c != row_id_column)
                    + ")",
                )
                current = schema[table] = {row_id_column: True, **dict.fromkeys(columns, False)}
            else:
                for column in [row_id_column, *columns]:
                    if column in unaccounted:
                        unaccounted.discard(column)
                    elif column not in current:
                        self._execute(conn, f"ALTER TABLE{escaped}ADD{escape_id(column)}text")
                        current[column] = False
                if not current.get(row_id_column):
                    index = "tinybase_pk_" + str(get_hash(js_stringify([table, row_id_column])))
                    self._execute(
                        conn,
                        f"CREATE UNIQUE INDEX IF NOT EXISTS{escape_id(index)}ON{escaped}"
                        f"({escape_id(row_id_column)})",
                    )
                    current[row_id_column] = True
        if delete_empty_columns:
            for column in unaccounted:
                if column != row_id_column:
                    self._execute(conn, f"ALTER TABLE{escaped}DROP{escape_id(column)}")
                    current.pop(column, None)
        if columns:
            changing = [c for c in current if c != row_id_column]
            names = ",".join(escape_id(c) for c in [row_id_column, *changing])
            placeholders = ",".join(["%s"] * (len(changing) + 1))
            update = (
                "UPDATE SET" + ",".join(f"{escape_id(c)}=excluded.{escape_id(c)}" for c in changing)
                if changing
                else "NOTHING"
            )
            sql = (
                f"INSERT INTO{escaped}({names})VALUES({placeholders})"
                f"ON CONFLICT({escape_id(row_id_column)})DO {update}"
            )
            params = [
                [row_id, *(_encode_field(row, c) for c in changing)]
                for row_id, row in (content or {}).items()
            ]
            if self.on_sql_command is not None:
                for param in params:
                    self.on_sql_command(sql, param)
            with conn.cursor() as cursor:
                cursor.executemany(sql, params)
            self._execute(
                conn,
                f"DELETE FROM{escaped}WHERE NOT({escape_id(row_id_column)}=ANY(%s))",
                [list((content or {}).keys())],
            )
        elif exists:
            self._execute(conn, f"DELETE FROM{escaped}")

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        return self.save_whole_content(self.store.get_content, self._write)

    def _write(self, content: Any) -> None:
        tables, values = content
        config = self.tabular

        def write(conn: Any) -> None:
            schema = self._schema(conn)
            for table_id, (table, row_id_column, columns, empty) in config.save.items():
                self._save_table(
                    conn, schema, table, row_id_column, tables.get(table_id), columns, empty
                )
            if config.values_save:
                subset = values
                if config.values_save_ids is not None:
                    subset = {k: values[k] for k in config.values_save_ids if k in values}
                self._save_table(
                    conn, schema, config.values_table, "_id", {_VALUES_ROW_ID: subset}, True, True
                )

        self._run(write)

    async def get_persisted(self) -> Any | None:
        return await Backend.get_persisted(self)

    def after_load(self, applied: bool) -> None:
        Backend.after_load(self, applied)


def _encode_field(row: dict[str, Any], cell_id: str) -> str | None:
    return js_stringify(row[cell_id]) if cell_id in row else None


def _password(conninfo: str) -> str | None:
    import psycopg.conninfo

    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo).get("password") or None  # type: ignore[return-value]
    except Exception:
        return None


class PostgresPersister(BackendPersister):
    """TinyBase's PostgreSQL persister: JSON mode for a MergeableStore, tabular mode for a
    plain Store."""

    _backend: PostgresBackend

    def __init__(
        self,
        store: PersistableStore,
        conninfo: str,
        config_or_store_table_name: Any = None,
        on_sql_command: SqlCommandListener | None = None,
        on_ignored_error: Any = None,
    ) -> None:
        if (
            isinstance(config_or_store_table_name, dict)
            and config_or_store_table_name.get("mode") == "tabular"
        ):
            tabular = TabularConfig(config_or_store_table_name)
            if store.is_mergeable():
                # as TinyBase: tabular mode is for a plain Store
                raise TypeError(
                    "tinybase:1: tabular mode needs a plain Store, not a MergeableStore"
                )
            super().__init__(
                store,
                lambda: PostgresTabularBackend(store, conninfo, tabular, on_sql_command),
                on_ignored_error,
                Persists.STORE_ONLY,
            )
            return
        config = json_mode_names(config_or_store_table_name)
        super().__init__(
            store,
            lambda: PostgresBackend(store, conninfo, config, on_sql_command),
            on_ignored_error,
            Persists.MERGEABLE_STORE_ONLY,
        )

    async def load(self, initial_content: Any = None) -> PostgresPersister:
        """Load the row into the store (TinyBase ``load``); raise if the server is unusable.

        Raises ``PersistError`` naming the server and database when it cannot be reached or
        refuses the credentials (TinyBase only reports that to ``on_ignored_error``, which
        still hears it). A row that is not mergeable content is reported, not raised, and
        is then never overwritten (see the module docstring).

        Unlike TinyBase (whose load replaces the store's content), the row is *merged* into
        the store, and when auto-saving and the row lacked some of the store's content (two
        processes saved at once, the later overwrote the earlier) the merge is saved back:
        a row shared by several processes has no other way to converge.
        """
        backend = self._backend
        backend.load_error = None
        backend.merged_more = False
        await super().load(initial_content)
        error, backend.load_error = backend.load_error, None
        if error is not None:
            raise error
        merged, backend.merged_more = backend.merged_more, False
        if merged and self.is_auto_saving():
            await self._save_whole()
        return self

    def get_conninfo_description(self) -> str:
        """The database as ``postgresql://user@host:port/dbname`` (no password)."""
        return self._backend.path


def create_postgres_persister(
    store: PersistableStore,
    conninfo: str,
    config_or_store_table_name: Any = None,
    on_sql_command: SqlCommandListener | None = None,
    on_ignored_error: Any = None,
) -> PostgresPersister:
    """TinyBase's ``createPostgresPersister`` (JSON mode) for a MergeableStore.

    Args:
        store: a MergeableStore.
        conninfo: a libpq connection string or ``postgresql://`` URI.
        config_or_store_table_name: TinyBase's ``DatabasePersisterConfig`` in JSON mode
            (``storeTableName``, ``storeIdColumnName``, ``storeColumnName``) or a table name;
            ``None`` for table ``tinybase`` with columns ``_id`` and ``store``; or one in
            tabular mode (see the module docstring) for a plain Store.
        on_sql_command: called with ``(sql, params)`` before every SQL command.
        on_ignored_error: hears errors TinyBase would ignore (and the ones raised here).

    Raises ``ValueError`` for an unknown mode or a tabular ``condition``, ``TypeError`` for a
    plain Store in JSON mode or a MergeableStore in tabular mode, and
    ``ImportError`` without psycopg (``pip install 'localsync[postgres]'``). Nothing
    connects until the first load, save or auto-load.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "the PostgreSQL persister needs psycopg 3: pip install 'localsync[postgres]'"
        ) from error
    return PostgresPersister(
        store, conninfo, config_or_store_table_name, on_sql_command, on_ignored_error
    )
