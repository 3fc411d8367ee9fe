"""TinyBase's JSON-mode database layout, in SQLite (the shared part: :mod:`._database`).

TinyBase's database persisters (``createSqlite3Persister``, ``createBetterSqlite3Persister``,
``createPostgresPersister``, ...) in JSON mode keep a whole store in one row of one table:
table ``tinybase`` with columns ``_id`` and ``store``, the row whose ``_id`` is ``'_'``, the
``store`` cell holding the JSON of the encoded mergeable content (``undefined`` as U+FFFC,
object/array cells as U+FFFD + JSON, i.e. what ``_jsonio`` writes). A save upserts that row
and deletes every other row; a load reads it (``null`` or no row means nothing saved). In
SQLite TinyBase creates the table as ``CREATE TABLE "tinybase"("_id" PRIMARY KEY,"store")``
(no column types) and auto-load polls ``PRAGMA data_version``, which changes when another
connection commits; this backend does the same, so either side hears the other's saves.
Saving into an existing table does what TinyBase's save does there: it adds the two columns if
missing, adds a unique index ``tinybase_pk_<hash>`` when the id column is not unique, and drops
every other column.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Any

from localsync.core.codec import js_stringify
from localsync.core.hash import get_hash
from localsync.core.protocols import SyncStore
from localsync.persisters._common import StorageCreateError
from localsync.persisters._database import (
    SINGLE_ROW_ID,
    JsonRowBackend,
    decode_row,
    escape_id,
)
from localsync.persisters._filestore import CorruptContentError, create_private_file

__all__ = ["SqliteJsonBackend"]


class SqliteJsonBackend(JsonRowBackend):
    """One-row JSON storage in an SQLite file, the layout of TinyBase's JSON mode.

    Every save writes the whole content in one SQLite transaction (``synchronous=FULL``, so
    a committed save is durable); the journal mode of an existing file is left as it is, so
    a TinyBase process keeps reading it as before.
    """

    kind = "database"

    def __init__(
        self, store: SyncStore, path: str, names: tuple[str, str, str], poll_seconds: float
    ):
        self.table, self.id_column, self.store_column = names
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._closed = False
        self._baseline: Any = None  # the first token the poll task reads (see below)
        super().__init__(store, path, poll_seconds)

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageCreateError(f"database {self.path!r}: the persister was destroyed")
        if self._conn is None:
            if os.path.isdir(self.path):
                raise StorageCreateError(f"cannot open {self.path}: it is a directory, not a file")
            if self.path != ":memory:":
                # folders 0700, the file 0600 (SQLite gives its journal files the same mode)
                create_private_file(self.path)
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.DatabaseError as error:
                raise CorruptContentError(f"{self.path}: {error}") from error
            self._conn = conn
        return self._conn

    def _columns(self, conn: sqlite3.Connection) -> dict[str, bool]:
        """The table's columns, each with whether it alone is unique (TinyBase's query)."""
        return {
            row[0]: bool(row[1])
            for row in conn.execute(
                "SELECT c.name,c.pk OR EXISTS(SELECT 1 FROM pragma_index_list(?1)i,"
                'pragma_index_info(i.name)ii WHERE i."unique"=1 AND ii.name=c.name AND'
                "(SELECT count(*) FROM pragma_index_info(i.name))=1)FROM pragma_table_info(?1)c",
                [self.table.split(".")[-1]],
            )
        }

    def _load_sync(self) -> Any | None:
        with self._conn_lock:
            conn = self._connect()
            try:
                columns = self._columns(conn)
                if self.id_column not in columns or self.store_column not in columns:
                    return None
                row = conn.execute(
                    f"SELECT {escape_id(self.store_column)} FROM {escape_id(self.table)} "
                    f"WHERE {escape_id(self.id_column)}=?",
                    [SINGLE_ROW_ID],
                ).fetchone()
            except sqlite3.DatabaseError as error:
                raise CorruptContentError(f"{self.path}: {error}") from error
        return None if row is None else decode_row(row[0], self.store_column)

    def _write_row(self, text: str, table: str, id_column: str, store_column: str) -> None:
        with self._conn_lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                columns = self._columns(conn)
                if not columns:
                    conn.execute(f"CREATE TABLE {table}({id_column} PRIMARY KEY,{store_column});")
                else:
                    # as TinyBase's save: add the two columns, make the id unique, drop the rest
                    for name in (self.id_column, self.store_column):
                        if name not in columns:
                            conn.execute(f"ALTER TABLE {table} ADD {escape_id(name)}")
                    if not columns.get(self.id_column):
                        index = "tinybase_pk_" + str(
                            get_hash(js_stringify([self.table, self.id_column]))
                        )
                        conn.execute(
                            f"CREATE UNIQUE INDEX IF NOT EXISTS{escape_id(index)}"
                            f"ON{table}({id_column})"
                        )
                    for name in columns:
                        if name not in (self.id_column, self.store_column):
                            conn.execute(f"ALTER TABLE {table} DROP {escape_id(name)}")
                conn.execute(
                    f"INSERT INTO {table}({id_column},{store_column})VALUES(?,?)"
                    f"ON CONFLICT({id_column})DO UPDATE SET {store_column}=excluded.{store_column}",
                    [SINGLE_ROW_ID, text],
                )
                conn.execute(f"DELETE FROM {table} WHERE {id_column} NOT IN(?)", [SINGLE_ROW_ID])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _watch_token(self) -> Any:
        """``PRAGMA data_version``: changes when another connection commits, not with ours."""
        baseline, self._baseline = self._baseline, None
        if baseline is not None:
            return baseline
        with self._conn_lock:
            return self._connect().execute("PRAGMA data_version").fetchone()[0]

    async def add_persister_listener(self, listener: Any) -> list[asyncio.Task[None]]:  # type: ignore[override]
        """Read the baseline ``data_version`` before auto-load counts as started.

        The polling task would otherwise read its first token a moment later, and a commit
        made in between (another process saving right after our ``start_auto_load``
        returned) would become the baseline and never be heard. TinyBase does the same.
        """
        self._baseline = None
        self._baseline = await asyncio.to_thread(self._watch_token)
        return super().add_persister_listener(listener)

    def destroy(self) -> None:
        super().destroy()
        with self._conn_lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
