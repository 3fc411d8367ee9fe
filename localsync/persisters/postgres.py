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

Not (yet) here: TinyBase's tabular mode, a plain (non-mergeable) Store.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable
from typing import Any

from ..codec import js_stringify
from ..hash import get_hash
from ..persister import Persists
from ._common import Backend, BackendPersister, PersistError
from ._filestore import CorruptContentError, decode_content
from ._integrity import HashesRepaired
from ._jsonio import dumps_str

__all__ = [
    "CorruptContentError",
    "HashesRepaired",
    "PersistError",
    "PostgresPersister",
    "create_postgres_persister",
]

SINGLE_ROW_ID = "_"
_SIMPLE_TABLE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_IDENTIFIER_SIZE = 63
_RECONNECT_MIN = 0.5
_RECONNECT_MAX = 5.0
# how often an idle listener checks that its triggers still exist
_TRIGGER_CHECK_SECONDS = 2.0
# one lock for everyone creating TinyBase's notification objects (concurrent CREATE OR
# REPLACE of one trigger fails with "tuple concurrently updated")
_ADVISORY_LOCK = get_hash("tinybase-listener-resources") & 0x7FFFFFFF

SqlCommandListener = Callable[[str, Any], None]


def _escape_id(name: str) -> str:
    """TinyBase's ``escapeId``: each dot-separated part double-quoted (``a.b`` is schema.table)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def json_config(config_or_store_table_name: Any) -> tuple[str, str, str]:
    """``(table, id column, store column)`` from TinyBase's config or a table name.

    Raises ``ValueError`` for a config that is not JSON mode (tabular mode is not supported).
    """
    if config_or_store_table_name is None:
        config: dict[str, Any] = {}
    elif isinstance(config_or_store_table_name, str):
        config = {"storeTableName": config_or_store_table_name}
    elif isinstance(config_or_store_table_name, dict):
        config = config_or_store_table_name
    else:
        raise TypeError("config_or_store_table_name must be a dict, a table name or None")
    if config.get("mode", "json") != "json":
        raise ValueError("only TinyBase's JSON mode is supported ({'mode': 'json', ...})")
    names = (
        config.get("storeTableName") or "tinybase",
        config.get("storeIdColumnName") or "_id",
        config.get("storeColumnName") or "store",
    )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"table and column names must be strings, not {name!r}")
    return names


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


class PostgresBackend(Backend):
    """One-row JSON storage in PostgreSQL, with TinyBase's LISTEN/NOTIFY names."""

    kind = "database"

    def __init__(
        self,
        store: Any,
        conninfo: str,
        config: tuple[str, str, str],
        on_sql_command: SqlCommandListener | None,
    ) -> None:
        self.conninfo = conninfo
        self.table, self.id_column, self.store_column = config
        self.on_sql_command = on_sql_command
        config_hash = str(get_hash(js_stringify(list(config))))
        self.channel = f"tinybase_{config_hash}"
        self.function = _escape_id(f"tinybase_d_{config_hash}")
        self.triggers = []
        for action in ("INSERT", "DELETE", "UPDATE"):
            legacy = f"tinybase_d_{config_hash}_{self.table}_{action}"
            if _SIMPLE_TABLE_NAME.match(self.table) and len(legacy) <= _IDENTIFIER_SIZE:
                name = legacy
            else:
                name = f"tinybase_d_{config_hash}_{action}_{get_hash(self.table)}"
            self.triggers.append((action, name))
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self.own_pid: int | None = None
        # the error of the last load that could not reach the database (``load`` raises it)
        self.load_error: PersistError | None = None
        self.merged_more = False
        self._loaded_hashes: list[int] | None = None
        super().__init__(store, describe_conninfo(conninfo), 0.0)

    # -------------------------------------------------------------- connections

    def _connection_error(self, error: BaseException) -> PersistError:
        text = str(error).strip()
        password = _password(self.conninfo)
        if password:
            text = text.replace(password, "***")
        return PersistError(f"cannot use PostgreSQL database {self.path}: {text}")

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

    def _read(self, conn: Any) -> str | None:
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
            f"SELECT {_escape_id(self.store_column)} FROM {_escape_id(self.table)} "
            f"WHERE {_escape_id(self.id_column)}=%s",
            [SINGLE_ROW_ID],
        ).fetchone()
        if row is None or row[0] is None:
            return None
        text = row[0]
        if not isinstance(text, str):
            raise CorruptContentError(f"column {self.store_column!r} does not hold text")
        return text

    def _load_sync(self) -> Any | None:
        try:
            text = self._run(self._read)
        except PersistError as error:
            self.load_error = error
            raise
        if text is None or text.strip() == "null":
            return None  # TinyBase writes null for "nothing"; both mean nothing saved
        return decode_content(text.encode("utf-8", "surrogatepass"), True)

    def _ensure_table(self, conn: Any) -> None:
        table = _escape_id(self.table)
        self._execute(
            conn,
            f"CREATE TABLE IF NOT EXISTS {table}({_escape_id(self.id_column)}text PRIMARY KEY)",
        )
        self._execute(
            conn,
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_escape_id(self.store_column)}text",
        )

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        with self.store.lock:
            seq = self.tracker.tx_seq
            if seq <= self.tracker.durable_seq:
                return seq, False
            content = self.store._get_encoded_mergeable_content()
        text = dumps_str(content)
        table, id_column = _escape_id(self.table), _escape_id(self.id_column)
        store_column = _escape_id(self.store_column)

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
        self.tracker.stats["writes"] += 1
        self.tracker.stats["full_writes"] += 1
        return seq, True

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
            and loaded is not None
            and list(self.store.get_mergeable_content_hashes()) != loaded
        )

    # -------------------------------------------------------------- LISTEN / NOTIFY

    def _trigger_sql(self) -> list[str]:
        table = _escape_id(self.table)
        commands = [
            f"CREATE OR REPLACE FUNCTION {self.function}()RETURNS trigger AS $$ BEGIN "
            f"PERFORM pg_notify('{self.channel}','d:'||TG_TABLE_NAME);RETURN NULL;END;$$ "
            "LANGUAGE plpgsql;"
        ]
        for action, name in self.triggers:
            commands.append(
                f"CREATE OR REPLACE TRIGGER{_escape_id(name)}AFTER {action} ON{table}"
                f"FOR EACH ROW WHEN(true)EXECUTE FUNCTION{self.function}()"
            )
        return commands

    async def _ensure_triggers(self, conn: Any, only_if_missing: bool) -> bool:
        """Create the table, function and triggers; return whether anything was missing."""
        async with conn.transaction():
            if only_if_missing:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)",
                    [[name for _, name in self.triggers]],
                )
                row = await cursor.fetchone()
                if row is not None and row[0] >= len(self.triggers):
                    return False
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            for sql in [
                f"CREATE TABLE IF NOT EXISTS {_escape_id(self.table)}"
                f"({_escape_id(self.id_column)}text PRIMARY KEY)",
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
            await conn.execute(f"LISTEN {_escape_id(self.channel)}")
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
        wanted = f"d:{self.table.split('.')[-1]}", f"c:{self.table.split('.')[-1]}"
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

    def destroy(self) -> None:
        super().destroy()
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def _password(conninfo: str) -> str | None:
    import psycopg.conninfo

    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo).get("password") or None  # type: ignore[return-value]
    except Exception:
        return None


class PostgresPersister(BackendPersister):
    """TinyBase's PostgreSQL persister (JSON mode) for a MergeableStore."""

    _backend: PostgresBackend

    def __init__(
        self,
        store: Any,
        conninfo: str,
        config_or_store_table_name: Any = None,
        on_sql_command: SqlCommandListener | None = None,
        on_ignored_error: Any = None,
    ) -> None:
        config = json_config(config_or_store_table_name)
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
    store: Any,
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
            ``None`` for table ``tinybase`` with columns ``_id`` and ``store``.
        on_sql_command: called with ``(sql, params)`` before every SQL command.
        on_ignored_error: hears errors TinyBase would ignore (and the ones raised here).

    Raises ``ValueError`` for tabular mode, ``TypeError`` for a plain Store and
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
