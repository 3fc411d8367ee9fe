"""Incremental SQLite storage of a MergeableStore (the SQLite persister's disk layer).

Schema (format 1), one row per stamp of the mergeable content tree, so that saving one
transaction writes only the stamps it touched::

    localsync_meta   (id = 0, format, tables_hlc, tables_hash, values_hlc, values_hash)
    localsync_tables (table_id PK, hlc, hash)                                   WITHOUT ROWID
    localsync_rows   (table_id, row_id PK, hlc, hash)                           WITHOUT ROWID
    localsync_cells  (table_id, row_id, cell_id PK, thing, hlc, hash)           WITHOUT ROWID
    localsync_values (value_id PK, thing, hlc, hash)                            WITHOUT ROWID

Ids are TEXT; an id holding a lone UTF-16 surrogate (possible in JavaScript strings) cannot be
TEXT in SQLite and is stored as a BLOB of its surrogate-pass UTF-8 bytes instead.
``thing`` is the JSON text of the *encoded* cell or value: ``"\\ufffc"`` for a deletion
(JavaScript ``undefined``), ``"\\ufffd{...}"`` strings for object/array cells, and plain JSON
for strings, numbers, booleans and ``null``. JSON text keeps the distinctions SQLite's own
types lose (boolean vs integer, ``1`` vs ``1.0``, deletion vs ``null``). Hashes are the
unsigned 32-bit TinyBase hashes, stored as they were computed by the store; a load does not
take them on trust but recomputes them from the stored stamps first (``_integrity``), so a
database that lost rows reports hashes that make sync restore them. The meta row is written
by every save: no meta row *and* no stamps means "nothing saved" (a load treats it as TinyBase
treats a missing file); stamps without a meta row, or a database missing some of the five
tables, is damaged and raises ``CorruptContentError`` (it is never recreated or overwritten).
A new database file is created ``0600`` (its folders ``0700``) before SQLite opens it, so
the ``-wal``/``-shm``/``-journal`` files SQLite derives from it are private too.

Read-only storage: a database whose file or folder cannot be written (read-only file system,
no write permission) is opened read-only and never written; saves raise
``ReadOnlyStorageError`` (``cannot write x.sqlite: read-only (...)``). A WAL database needs
a ``-shm`` file beside it even to be read; when the folder does not allow creating one and
no write-ahead log is left, it is opened ``immutable`` (nothing can change it there). A
non-empty ``-wal`` left by a writer that was killed holds committed transactions only
SQLite's WAL reader can see: reading the database file alone would silently return older
content, so that case is refused with an error saying how to recover.

Why one row per stamp: a transaction's mergeable changes name exactly the stamps it
touched (with the new hashes above them), so an auto-saved transaction costs the same in a
store of 10^4 or 10^6 cells; a whole-content save rewrites every row in one transaction.

Durability: WAL journal with ``synchronous=FULL`` (a returned save is on disk); every save
is one SQLite transaction, so a crash leaves the previous or the new state, never a mix.

One process should write a given database at a time (several writers would interleave
incremental hash updates computed by different stores); other processes may read it and
watch it: ``data_version`` changes when another connection commits, which auto-load polls.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from localsync.core.hash import get_value_in_values_hash as _in
from localsync.persisters._common import ReadOnlyStorageError, StorageCreateError
from localsync.persisters._filestore import (
    CorruptContentError,
    check_content_shape,
    create_private_file,
)
from localsync.persisters._jsonio import ContentDecodeError, dumps_str, loads

__all__ = ["FORMAT", "SqliteStorage"]

FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS localsync_meta (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  format INTEGER NOT NULL,
  tables_hlc TEXT NOT NULL,
  tables_hash INTEGER NOT NULL,
  values_hlc TEXT NOT NULL,
  values_hash INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS localsync_tables (
  table_id TEXT NOT NULL PRIMARY KEY,
  hlc TEXT NOT NULL,
  hash INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS localsync_rows (
  table_id TEXT NOT NULL,
  row_id TEXT NOT NULL,
  hlc TEXT NOT NULL,
  hash INTEGER NOT NULL,
  PRIMARY KEY (table_id, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS localsync_cells (
  table_id TEXT NOT NULL,
  row_id TEXT NOT NULL,
  cell_id TEXT NOT NULL,
  thing TEXT NOT NULL,
  hlc TEXT NOT NULL,
  hash INTEGER NOT NULL,
  PRIMARY KEY (table_id, row_id, cell_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS localsync_values (
  value_id TEXT NOT NULL PRIMARY KEY,
  thing TEXT NOT NULL,
  hlc TEXT NOT NULL,
  hash INTEGER NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_META = (
    "INSERT OR REPLACE INTO localsync_meta "
    "(id, format, tables_hlc, tables_hash, values_hlc, values_hash) VALUES (0, ?, ?, ?, ?, ?)"
)
_UPSERT_TABLE = "INSERT OR REPLACE INTO localsync_tables (table_id, hlc, hash) VALUES (?, ?, ?)"
_UPSERT_ROW = (
    "INSERT OR REPLACE INTO localsync_rows (table_id, row_id, hlc, hash) VALUES (?, ?, ?, ?)"
)
_UPSERT_CELL = (
    "INSERT OR REPLACE INTO localsync_cells (table_id, row_id, cell_id, thing, hlc, hash) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_VALUE = (
    "INSERT OR REPLACE INTO localsync_values (value_id, thing, hlc, hash) VALUES (?, ?, ?, ?)"
)


def _key(value: Any) -> Any:
    """A parameter SQLite can bind: ids with lone surrogates (JavaScript strings may hold
    them, and the store accepts them) become BLOBs of their surrogate-pass UTF-8 bytes."""
    if type(value) is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _text(value: Any) -> Any:
    """The id a stored key stands for (inverse of ``_key``)."""
    return value.decode("utf-8", "surrogatepass") if type(value) is bytes else value


def _execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
    try:
        return conn.execute(sql, params)
    except UnicodeEncodeError:
        return conn.execute(sql, tuple(_key(p) for p in params))


def _execute_many(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany``; only a batch holding a lone surrogate pays for converting ids."""
    try:
        conn.executemany(sql, rows)
    except UnicodeEncodeError:
        conn.executemany(sql, [tuple(_key(p) for p in row) for row in rows])


def _hlc(stamp: list[Any]) -> str:
    return stamp[1] if len(stamp) > 1 else ""


def _hash(stamp: list[Any]) -> int:
    return stamp[2] if len(stamp) > 2 else 0


_Rows = list[tuple[Any, ...]]


def _flatten(content: list[Any]) -> tuple[_Rows, _Rows, _Rows, _Rows]:
    """Rows to upsert for (tables, rows, cells, values) of content or changes-with-hashes."""
    tables: list[tuple[Any, ...]] = []
    rows: list[tuple[Any, ...]] = []
    cells: list[tuple[Any, ...]] = []
    for table_id, table_stamp in content[0][0].items():
        tables.append((table_id, _hlc(table_stamp), _hash(table_stamp)))
        for row_id, row_stamp in table_stamp[0].items():
            rows.append((table_id, row_id, _hlc(row_stamp), _hash(row_stamp)))
            for cell_id, cell_stamp in row_stamp[0].items():
                cells.append(
                    (
                        table_id,
                        row_id,
                        cell_id,
                        dumps_str(cell_stamp[0]),
                        _hlc(cell_stamp),
                        _hash(cell_stamp),
                    )
                )
    values = [
        (value_id, dumps_str(stamp[0]), _hlc(stamp), _hash(stamp))
        for value_id, stamp in content[1][0].items()
    ]
    return tables, rows, cells, values


def _has_blob_ids(conn: sqlite3.Connection) -> bool:
    """Whether any id was stored as a BLOB (see ``_key``); one scan in SQLite, no Python."""
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM localsync_tables WHERE typeof(table_id) = 'blob') "
            "OR EXISTS (SELECT 1 FROM localsync_rows "
            "  WHERE typeof(table_id) = 'blob' OR typeof(row_id) = 'blob') "
            "OR EXISTS (SELECT 1 FROM localsync_cells WHERE typeof(table_id) = 'blob' "
            "  OR typeof(row_id) = 'blob' OR typeof(cell_id) = 'blob') "
            "OR EXISTS (SELECT 1 FROM localsync_values WHERE typeof(value_id) = 'blob')"
        ).fetchone()[0]
    )


def _ids_as_text(content: list[Any]) -> list[Any]:
    tables = {
        _text(t): [
            {
                _text(r): [{_text(c): cell for c, cell in rs[0].items()}, *rs[1:]]
                for r, rs in ts[0].items()
            },
            *ts[1:],
        ]
        for t, ts in content[0][0].items()
    }
    values = {_text(v): stamp for v, stamp in content[1][0].items()}
    return [[tables, *content[0][1:]], [values, *content[1][1:]]]


def _decode_things(things: list[str]) -> list[Any]:
    """Decode many JSON texts with one parser call (per-item calls dominate a big load)."""
    if not things:
        return []
    try:
        decoded = loads("[" + ",".join(things) + "]")
    except ContentDecodeError as error:
        raise CorruptContentError(f"a stored cell or value is not JSON: {error}") from error
    if not isinstance(decoded, list) or len(decoded) != len(things):
        raise CorruptContentError("a stored cell or value is not a single JSON value")
    return decoded


#: every row's cell stamps as the JSON text of one object (``thing`` is JSON text already),
#: with the number of cells it should hold: SQLite builds the text, one parse decodes all.
#: An HLC is written unquoted: a valid one needs no escape, and a stored one that would (a
#: damaged database) makes the text invalid or changes the HLC's length, which the store
#: rejects; a hash that is not an integer keeps its JSON type for the store to reject.
_CELLS_BY_ROW = (
    "SELECT table_id, row_id, count(*), '{' || group_concat(json_quote(cell_id) || ':[' "
    "|| thing || ',\"' || hlc || '\",' "
    "|| iif(typeof(hash) = 'integer', hash, json_quote(hash)) || ']', ',') || '}' "
    "FROM localsync_cells GROUP BY table_id, row_id"
)


def _read_cells_by_row(conn: sqlite3.Connection, tables_obj: dict[str, list[Any]]) -> None:
    """Put every stored cell stamp into its row stamp in ``tables_obj`` (ids all TEXT).

    Why: building each ``[thing, hlc, hash]`` in Python from a fetched row costs several
    objects per cell; SQLite concatenating them per row and one JSON parse per row is
    faster. Raises ``KeyError`` for a cell whose row is not stored and
    ``CorruptContentError`` when a stored ``thing`` is not one JSON value.
    """
    try:
        for table_id, row_id, count, text in conn.execute(_CELLS_BY_ROW).fetchall():
            cells = loads(text)
            if type(cells) is not dict or len(cells) != count:
                raise CorruptContentError("a stored cell is not a single JSON value")
            tables_obj[table_id][0][row_id][0] = cells
    except ContentDecodeError as error:
        raise CorruptContentError(f"a stored cell is not JSON: {error}") from error


_TABLES = (
    "localsync_meta",
    "localsync_tables",
    "localsync_rows",
    "localsync_cells",
    "localsync_values",
)


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _check_tables(path: str, names: set[str]) -> None:
    """Refuse a database holding some of our tables but not all (one was dropped).

    A new database has none (the schema is created); recreating a dropped table empty would
    load the rest as if the missing stamps had never existed, and the next save would make
    that loss permanent. Raises ``CorruptContentError`` naming the missing tables.
    """
    present = [name for name in _TABLES if name in names]
    if present and len(present) != len(_TABLES):
        missing = ", ".join(name for name in _TABLES if name not in names)
        raise CorruptContentError(f"{path}: incomplete localsync database (missing {missing})")


def _read_only_reason(path: str) -> str | None:
    """Why the existing database at ``path`` cannot be written, or ``None`` if it can.

    SQLite writes the database file and creates its journal files beside it, so both the
    file and its folder must be writable. ``os.access`` reports a read-only file system and
    permission bits (for root too, once it lacks the capability that bypasses them).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "the file system is mounted read-only"
    except OSError:  # pragma: no cover - statvfs of a file we could just stat
        pass
    if not os.access(path, os.W_OK):
        return "no write permission on the file"
    return f"no write permission on its folder {folder}, where SQLite keeps its journal"


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to the existing database at ``path`` that writes nothing.

    ``mode=ro`` first: it reads a write-ahead log (through the ``-shm`` index, which SQLite
    creates when missing). When that cannot be opened because the folder allows creating
    nothing, ``immutable=1`` reads the database file alone, which is exact only without a
    write-ahead log; a non-empty ``-wal`` is refused (``ReadOnlyStorageError``) rather than
    read as an older state. Errors SQLite raises otherwise propagate.
    """
    base = "file:" + urllib.parse.quote(os.path.abspath(path))
    conn = sqlite3.connect(
        base + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as error:
        conn.close()
        # SQLite reports a -shm it cannot create as CANTOPEN (read-only file system) or
        # READONLY_DIRECTORY (no permission on the folder)
        code = getattr(error, "sqlite_errorcode", sqlite3.SQLITE_CANTOPEN) & 0xFF
        if code not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            raise
        try:
            wal_size = os.path.getsize(path + "-wal")
        except OSError:
            wal_size = 0
        if wal_size:
            raise ReadOnlyStorageError(
                f"cannot read {path}: its write-ahead log {path}-wal holds transactions not "
                "yet in the database file, and reading them needs a -shm file that cannot be "
                "created in this read-only folder; open the database once where it is "
                "writable (or copy it with its -wal to a writable folder) and try again"
            ) from error
    return sqlite3.connect(
        base + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
    )


def _upserts(
    tables: _Rows, rows: _Rows, cells: _Rows, values: _Rows, meta: list[tuple[Any, ...]]
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The upsert statements, each with its parameter rows, that store flattened stamps."""
    return [
        (_UPSERT_TABLE, tables),
        (_UPSERT_ROW, rows),
        (_UPSERT_CELL, cells),
        (_UPSERT_VALUE, values),
        (_UPSERT_META, meta),
    ]


def _meta_rows(stamps: list[Any]) -> list[tuple[Any, ...]]:
    """The one meta row: format, and the tables' and values' HLCs and hashes."""
    return [(FORMAT, _hlc(stamps[0]), _hash(stamps[0]), _hlc(stamps[1]), _hash(stamps[1]))]


class SqliteStorage:
    """One connection to a localsync SQLite database, usable from any one thread at a time.

    The persister calls it from worker threads (``asyncio.to_thread``) so that fsyncs do not
    stall the event loop; the internal lock serialises those calls.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._closed = False
        # why an existing database cannot be written (set when it is opened), else None
        self.read_only_reason: str | None = None
        self._has_schema = True

    # ------------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            # a worker thread still in flight when the persister was destroyed (the watch
            # poll) must not reopen, or re-create, a file the owner may be removing
            raise sqlite3.ProgrammingError(f"{self.path}: storage closed")
        if self._conn is None and os.path.isdir(self.path):
            # (SQLite would say "unable to open database file")
            raise StorageCreateError(f"cannot open {self.path}: it is a directory, not a file")
        if (
            self._conn is None
            and not self.read_only
            and self.path != ":memory:"
            and os.path.exists(self.path)
        ):
            self.read_only_reason = _read_only_reason(self.path)
        if self._conn is None and (self.read_only or self.read_only_reason):
            # for inspection, and for storage we may not write: never create, migrate or
            # switch the journal of the file
            try:
                conn = _connect_read_only(self.path)
            except sqlite3.DatabaseError as error:
                raise CorruptContentError(f"{self.path}: {error}") from error
            try:
                try:
                    names = _table_names(conn)
                except sqlite3.DatabaseError as error:
                    raise CorruptContentError(f"{self.path}: {error}") from error
                _check_tables(self.path, names)
                if self.read_only and "localsync_meta" not in names:
                    raise CorruptContentError(f"{self.path}: not a localsync database")
            except CorruptContentError:
                conn.close()
                raise
            # a persister's database with none of our tables: nothing was saved yet
            self._has_schema = "localsync_meta" in names
            self._conn = conn
        if self._conn is None:
            # a new database is created 0600 before SQLite opens it: SQLite gives its -wal,
            # -shm and -journal files the database file's mode, so they stay private too
            if self.path != ":memory:":
                create_private_file(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":  # pragma: no cover - e.g. some network filesystems
                    conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA synchronous = FULL")
                _check_tables(self.path, _table_names(conn))
                conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as error:
                conn.close()
                if "not a database" in str(error) or "malformed" in str(error):
                    raise CorruptContentError(f"{self.path}: {error}") from error
                raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        """The connection, for a write; ``ReadOnlyStorageError`` if the storage is read-only."""
        conn = self._connect()
        if self.read_only or self.read_only_reason:
            raise ReadOnlyStorageError(
                f"cannot write {self.path}: read-only "
                f"({self.read_only_reason or 'opened for reading only'})"
            )
        return conn

    def close(self) -> None:
        """Close for good: later calls raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _write(
        self,
        statements: Iterator[tuple[str, list[tuple[Any, ...]]]],
        check: Callable[[sqlite3.Connection], bool] | None = None,
    ) -> bool:
        """Run ``statements`` in one write transaction (the caller holds the lock).

        False, with nothing written, when ``check`` (called inside the transaction) says no.
        """
        conn = self._writable()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if check is not None and not check(conn):
                conn.execute("ROLLBACK")
                return False
            for sql, params in statements:
                if params:
                    _execute_many(conn, sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return True

    # ------------------------------------------------------------------ writes

    def write_content(self, content: list[Any]) -> None:
        """Make the database hold exactly ``content`` (encoded mergeable content with hashes)."""
        check_content_shape(content)
        upserts = _upserts(*_flatten(content), _meta_rows(content))

        def statements() -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
            for table in ("cells", "rows", "tables", "values"):
                yield f"DELETE FROM localsync_{table}", [()]
            yield from upserts

        with self._lock:
            self._write(statements())

    def write_changes(self, changes: list[Any]) -> int | None:
        """Upsert the stamps in encoded changes *with hashes*, if they account for every change.

        Returns the number of cells and values written, or ``None`` (nothing written) when the
        changes do not explain the new hashes. That happens because TinyBase's transaction
        changes list only cells whose *value* changed: a merged stamp that keeps the value
        (same value with a newer HLC, a deletion of a cell this store never had) or a
        ``set_mergeable_content`` that drops tables moves the hashes without appearing in the
        changes. Every such stamp change XORs into all of its ancestors' hashes, so checking,
        at each level present in the changes, old hash (read from the database) XOR the
        deltas of the listed children against the new hash catches every omission; the caller
        then saves the whole content instead. The check costs point lookups per touched stamp,
        so the incremental path stays independent of the store's size.
        """
        tables, rows, cells, values = _flatten(changes)
        upserts = _upserts(tables, rows, cells, values, _meta_rows(changes))
        with self._lock:
            if not self._write(iter(upserts), lambda conn: self._explains(conn, changes)):
                return None
        return len(cells) + len(values)

    @staticmethod
    def _explains(conn: sqlite3.Connection, changes: list[Any]) -> bool:
        """Whether stored hashes plus the listed changes give exactly the new hashes."""
        meta = conn.execute(
            "SELECT tables_hlc, tables_hash, values_hlc, values_hash FROM localsync_meta"
        ).fetchone()
        if meta is None:
            return False
        tables_stamp, values_stamp = changes[0], changes[1]
        if _hlc(tables_stamp) != meta[0] or _hlc(values_stamp) != meta[2]:
            return False
        expected = meta[3]
        for value_id, stamp in values_stamp[0].items():
            old = _execute(
                conn, "SELECT hash FROM localsync_values WHERE value_id = ?", (value_id,)
            ).fetchone()
            expected ^= _in(value_id, old[0] if old else 0) ^ _in(value_id, _hash(stamp))
        if expected != _hash(values_stamp):
            return False
        expected_tables = meta[1]
        for table_id, table_stamp in tables_stamp[0].items():
            old_table = _execute(
                conn, "SELECT hlc, hash FROM localsync_tables WHERE table_id = ?", (table_id,)
            ).fetchone() or ("", 0)
            if _hlc(table_stamp) != old_table[0]:
                return False
            expected_table = old_table[1]
            for row_id, row_stamp in table_stamp[0].items():
                old_row = _execute(
                    conn,
                    "SELECT hlc, hash FROM localsync_rows WHERE table_id = ? AND row_id = ?",
                    (table_id, row_id),
                ).fetchone() or ("", 0)
                if _hlc(row_stamp) != old_row[0]:
                    return False
                expected_row = old_row[1]
                for cell_id, cell_stamp in row_stamp[0].items():
                    old_cell = _execute(
                        conn,
                        "SELECT hash FROM localsync_cells "
                        "WHERE table_id = ? AND row_id = ? AND cell_id = ?",
                        (table_id, row_id, cell_id),
                    ).fetchone()
                    expected_row ^= _in(cell_id, old_cell[0] if old_cell else 0) ^ _in(
                        cell_id, _hash(cell_stamp)
                    )
                if expected_row != _hash(row_stamp):
                    return False
                expected_table ^= (_in(row_id, old_row[1]) if old_row[1] else 0) ^ _in(
                    row_id, _hash(row_stamp)
                )
            if expected_table != _hash(table_stamp):
                return False
            expected_tables ^= (_in(table_id, old_table[1]) if old_table[1] else 0) ^ _in(
                table_id, _hash(table_stamp)
            )
        return expected_tables == _hash(tables_stamp)

    # ------------------------------------------------------------------ reads

    def read_content(self) -> list[Any] | None:
        """Rebuild the encoded mergeable content with hashes; ``None`` if nothing was saved."""
        with self._lock:
            conn = self._connect()
            if not self._has_schema:
                return None
            conn.execute("BEGIN")  # one consistent snapshot across the five SELECTs
            try:
                return self._read(conn)
            except sqlite3.DatabaseError as error:
                raise CorruptContentError(f"{self.path}: {error}") from error
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _read(self, conn: sqlite3.Connection) -> list[Any] | None:
        meta = conn.execute(
            "SELECT format, tables_hlc, tables_hash, values_hlc, values_hash FROM localsync_meta"
        ).fetchone()
        if meta is None:
            stored = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM localsync_tables) "
                "OR EXISTS (SELECT 1 FROM localsync_rows) "
                "OR EXISTS (SELECT 1 FROM localsync_cells) "
                "OR EXISTS (SELECT 1 FROM localsync_values)"
            ).fetchone()[0]
            if stored:
                # stamps without the meta row that every save writes last: not "nothing
                # saved" (a save would wipe them) but a damaged database
                raise CorruptContentError(
                    f"{self.path}: stored stamps but no localsync_meta row (damaged database)"
                )
            return None
        if meta[0] != FORMAT:
            raise CorruptContentError(f"{self.path}: unknown localsync format {meta[0]}")
        # (an id with a lone surrogate is a BLOB, see _key: SQLite cannot quote it as JSON,
        # and the ids of such content are turned back to text at the end)
        blob_ids = False
        tables_obj: dict[str, list[Any]] = {}
        for table_id, hlc, hash_ in conn.execute(
            "SELECT table_id, hlc, hash FROM localsync_tables"
        ):
            tables_obj[table_id] = [{}, hlc, hash_]
            blob_ids = blob_ids or type(table_id) is bytes
        try:
            for table_id, row_id, hlc, hash_ in conn.execute(
                "SELECT table_id, row_id, hlc, hash FROM localsync_rows"
            ):
                tables_obj[table_id][0][row_id] = [{}, hlc, hash_]
                if type(row_id) is bytes:
                    blob_ids = True
            if not blob_ids:
                try:
                    _read_cells_by_row(conn, tables_obj)
                except sqlite3.OperationalError:
                    if not _has_blob_ids(conn):
                        raise
                    blob_ids = True
            if blob_ids:
                cell_rows = conn.execute(
                    "SELECT table_id, row_id, cell_id, thing, hlc, hash FROM localsync_cells"
                ).fetchall()
                things = _decode_things([row[3] for row in cell_rows])
                for (table_id, row_id, cell_id, _, hlc, hash_), thing in zip(
                    cell_rows, things, strict=True
                ):
                    tables_obj[table_id][0][row_id][0][cell_id] = [thing, hlc, hash_]
        except KeyError as error:
            raise CorruptContentError(
                f"{self.path}: a stored row or cell has no parent {error}"
            ) from error
        value_rows = conn.execute(
            "SELECT value_id, thing, hlc, hash FROM localsync_values"
        ).fetchall()
        value_things = _decode_things([row[1] for row in value_rows])
        values_obj = {
            value_id: [thing, hlc, hash_]
            for (value_id, _, hlc, hash_), thing in zip(value_rows, value_things, strict=True)
        }
        blob_ids = blob_ids or any(type(value_id) is bytes for value_id in values_obj)
        content = [[tables_obj, meta[1], meta[2]], [values_obj, meta[3], meta[4]]]
        return _ids_as_text(content) if blob_ids else content

    def stored_hashes(
        self, table_ids: list[str]
    ) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, int]]:
        """(table hashes, row hashes of ``table_ids``, value hashes) as stored.

        Only a save (repairing by hash comparison) asks, so read-only storage refuses here
        already (``ReadOnlyStorageError``).
        """
        with self._lock:
            conn = self._writable()
            tables = {
                _text(k): h for k, h in conn.execute("SELECT table_id, hash FROM localsync_tables")
            }
            rows: dict[str, dict[str, int]] = {}
            for table_id in table_ids:
                rows[table_id] = {
                    _text(k): h
                    for k, h in _execute(
                        conn,
                        "SELECT row_id, hash FROM localsync_rows WHERE table_id = ?",
                        (table_id,),
                    )
                }
            values = {
                _text(k): h for k, h in conn.execute("SELECT value_id, hash FROM localsync_values")
            }
            return tables, rows, values

    def data_version(self) -> int:
        """SQLite's ``data_version``: changes when *another* connection commits."""
        with self._lock:
            return int(self._connect().execute("PRAGMA data_version").fetchone()[0])

    def stats(self) -> dict[str, int]:
        """Row counts, for the inspector and tests."""
        with self._lock:
            conn = self._connect()
            if not self._has_schema:
                return dict.fromkeys(("tables", "rows", "cells", "values"), 0)
            return {
                table: int(conn.execute(f"SELECT COUNT(*) FROM localsync_{table}").fetchone()[0])
                for table in ("tables", "rows", "cells", "values")
            }
