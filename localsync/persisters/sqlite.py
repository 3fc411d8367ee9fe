"""SQLite persister: a MergeableStore in an SQLite database, saved incrementally.

``create_sqlite_persister(store, path, on_ignored_error=None)`` has TinyBase's Persister
methods (load, save, auto-load/save, status, ...). The schema, durability choice
(WAL + ``synchronous=FULL``) and the reasoning behind them are documented in
``localsync.persisters._sqlitestore``; in short, one row per cell/value/row/table stamp, and a
save writes only the stamps that changed since the last durable save.

How a save decides what to write:

* The persister listens to every finished transaction of the store (local or from a peer) and
  folds its ``get_encoded_transaction_mergeable_changes(True)`` into a pending change set.
* A save takes that pending set (under ``store.lock``, so it matches a transaction number) and
  upserts it in one SQLite transaction, after checking that the stored hashes plus these
  changes give the new hashes. TinyBase's transaction changes leave out stamp-only changes
  (a deletion of a cell the store never had, a newer stamp with the same value, tables dropped
  by ``set_mergeable_content``); the check notices and that save writes the whole content.
* The first save of a persister writes the whole content (unless it follows a load). A save
  after a failed one compares hash trees with the database, like the repair above.
  After that, explicit ``save()`` calls are incremental too, which keeps a caller that saves
  in a loop (the channel coordinator) at O(changes) per save.

Acknowledged saves, coalescing, corrupt-data protection (content the store rejects, too),
hash recomputation on load, private files and folders, and ``flush``/``add_saved_listener``/
``get_save_stats`` work as in the file persister (see ``localsync.persisters._common``).
Auto-load polls SQLite's ``data_version`` every ``poll_seconds`` and reloads when another
connection (another process) committed; only one process should *write* a database.

``config_or_store_table_name=`` selects TinyBase's JSON-mode layout instead (one row, whole
saves, readable and writable by TinyBase's SQLite persisters): see ``_sqlite_json``.
"""

from __future__ import annotations

import os
from typing import Any

from localsync.core.codec import encode_if_json
from localsync.core.protocols import SyncStore
from localsync.persisters._common import (
    Backend,
    BackendPersister,
    PersistError,
    StorageCreateError,
    merge_changes,
)
from localsync.persisters._database import json_mode_names
from localsync.persisters._filestore import CorruptContentError
from localsync.persisters._integrity import HashesRepaired
from localsync.persisters._sqlite_json import SqliteJsonBackend
from localsync.persisters._sqlitestore import SqliteStorage


def _hlc(stamp: list[Any]) -> str:
    return stamp[1] if len(stamp) > 1 else ""


__all__ = [
    "CorruptContentError",
    "HashesRepaired",
    "PersistError",
    "SqlitePersister",
    "StorageCreateError",
    "create_sqlite_persister",
]


class SqliteBackend(Backend[SyncStore]):
    """Incremental SQLite storage: pending changes folded per transaction, verified upserts."""

    kind = "database"

    def __init__(self, store: SyncStore, path: str, poll_seconds: float) -> None:
        self.storage = SqliteStorage(path)
        self._pending: list[Any] | None = None
        # False until a whole-content save has set the baseline the pending changes build on
        self._tracking = False
        # True after a failed save: the next one brings the database up by hash comparison
        self._needs_repair = False
        super().__init__(store, path, poll_seconds)

    def _record(self, store: SyncStore) -> None:
        changes = store.get_encoded_transaction_mergeable_changes(True) if self._tracking else None
        with self.state_lock:
            if changes is not None:
                self._pending = merge_changes(self._pending, changes)
            self.tracker.on_transaction()
        self.stashed_changes = changes

    def _loaded(self, seq: int) -> None:
        super()._loaded(seq)
        self._tracking = True
        self._pending = None

    def _load_sync(self) -> Any | None:
        return self.storage.read_content()

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        content = None
        with self.store.lock, self.state_lock:
            seq = self.tracker.tx_seq
            pending, self._pending = self._pending, None
            if not self._tracking:
                content = self.store.get_encoded_mergeable_content()
                self._tracking = True
        try:
            if content is None:
                written = None
                if self._needs_repair:
                    # the last save failed: its changes are gone, but the database still
                    # holds the state before it (every save is one SQLite transaction)
                    repaired = self._repair()
                    if repaired is not None:
                        seq, written = repaired
                elif pending is None:
                    return seq, False
                else:
                    written = self.storage.write_changes(pending)
                    if written is None:
                        repaired = self._repair()
                        if repaired is not None:
                            seq, written = repaired
                if written is not None:
                    self._needs_repair = False
                    self.tracker.stats["writes"] += 1
                    self.tracker.stats["incremental_writes"] += 1
                    return seq, True
                with self.store.lock, self.state_lock:
                    seq = self.tracker.tx_seq
                    self._pending = None
                    content = self.store.get_encoded_mergeable_content()
            self.storage.write_content(content)
            self._needs_repair = False
        except BaseException:
            # the pending changes are gone: the next save compares hash trees instead
            with self.state_lock:
                self._needs_repair = True
                self._pending = None
            raise
        self.tracker.stats["writes"] += 1
        self.tracker.stats["full_writes"] += 1
        return seq, True

    def _repair(self) -> tuple[int, int | None] | None:
        """Bring the database to the store's state by comparing hash trees, not by rewriting.

        Used when the pending changes do not explain the new hashes (stamp-only changes).
        Like a synchronizer pulling from a peer, it descends only into the tables and rows
        whose stored hash differs from the store's and rewrites those rows whole; a table or
        row that exists only in the database (content replaced by ``set_mergeable_content``)
        needs the full rewrite instead (returns ``None``). Runs under ``store.lock`` so the
        store cannot move between the hash reads and the diffs.
        """
        store = self.store
        with store.lock, self.state_lock:
            seq = self.tracker.tx_seq
            self._pending = None
            table_hashes = store.get_mergeable_table_hashes()
            stored_tables, _, stored_values = self.storage.stored_hashes([])
            if set(stored_tables) - set(table_hashes):
                return None
            differing_tables = {
                table_id: stored_tables.get(table_id, 0)
                for table_id, table_hash in table_hashes.items()
                if stored_tables.get(table_id) != table_hash
            }
            _, stored_rows, _ = self.storage.stored_hashes(list(differing_tables))
            row_hashes = store.get_mergeable_row_hashes(differing_tables)
            differing_rows: dict[str, dict[str, int]] = {}
            for table_id, rows in row_hashes.items():
                stored = stored_rows.get(table_id, {})
                if set(stored) - set(rows):
                    return None
                differing = {
                    row_id: stored.get(row_id, 0)
                    for row_id, row_hash in rows.items()
                    if stored.get(row_id) != row_hash
                }
                if differing:
                    differing_rows[table_id] = differing
            cell_hashes = store.get_mergeable_cell_hashes(differing_rows)
            every_cell: dict[str, dict[str, dict[str, Any]]] = {
                t: {row_id: {} for row_id in rows} for t, rows in differing_rows.items()
            }
            cell_diff = store.get_mergeable_cell_diff(every_cell)
            value_hashes = store.get_mergeable_value_hashes()
            if set(stored_values) - set(value_hashes):
                return None
            value_diff = store.get_mergeable_value_diff(stored_values)
            content_hashes = store.get_mergeable_content_hashes()
        tables: dict[str, Any] = {}
        for table_id, table_stamp in cell_diff[0].items():
            rows_out: dict[str, Any] = {}
            for row_id, row_stamp in table_stamp[0].items():
                hashes = cell_hashes[table_id][row_id]
                cells = {
                    cell_id: [encode_if_json(stamp[0]), _hlc(stamp), hashes[cell_id]]
                    for cell_id, stamp in row_stamp[0].items()
                }
                rows_out[row_id] = [cells, _hlc(row_stamp), row_hashes[table_id][row_id]]
            tables[table_id] = [rows_out, _hlc(table_stamp), table_hashes[table_id]]
        for table_id in differing_tables:  # a table whose rows all match but its stamp not
            tables.setdefault(table_id, [{}, "", table_hashes[table_id]])
        values = {
            value_id: [encode_if_json(stamp[0]), _hlc(stamp), value_hashes[value_id]]
            for value_id, stamp in value_diff[0].items()
        }
        changes = [
            [tables, _hlc(cell_diff), content_hashes[0]],
            [values, _hlc(value_diff), content_hashes[1]],
            1,
        ]
        written = self.storage.write_changes(changes)
        if written is None:
            return None
        self.tracker.stats["repairs"] += 1
        return seq, written

    def _has_work(self) -> bool:
        return not self._tracking or self._needs_repair or super()._has_work()

    def _watch_token(self) -> Any:
        return self.storage.data_version()

    def destroy(self) -> None:
        super().destroy()
        self.storage.close()


class SqlitePersister(BackendPersister):
    """A MergeableStore in SQLite, saved incrementally with acknowledged durable saves."""

    def __init__(
        self,
        store: SyncStore,
        path: str | os.PathLike[str],
        on_ignored_error: Any = None,
        *,
        poll_seconds: float = 0.1,
        config_or_store_table_name: Any = None,
    ) -> None:
        self._path = os.fspath(path)
        if config_or_store_table_name is None:
            factory: Any = lambda: SqliteBackend(store, self._path, poll_seconds)  # noqa: E731
        else:
            names = json_mode_names(config_or_store_table_name)
            factory = lambda: SqliteJsonBackend(store, self._path, names, poll_seconds)  # noqa: E731
        super().__init__(store, factory, on_ignored_error)

    def get_path(self) -> str:
        return self._path


def create_sqlite_persister(
    store: SyncStore,
    path: str | os.PathLike[str],
    on_ignored_error: Any = None,
    *,
    poll_seconds: float = 0.1,
    config_or_store_table_name: Any = None,
) -> SqlitePersister:
    """A Persister keeping ``store`` in the SQLite database at ``path`` (created if absent).

    Args:
        store: a MergeableStore.
        path: the database file.
        on_ignored_error: hears errors TinyBase would ignore (and the ones raised here).
        poll_seconds: how often auto-load checks ``PRAGMA data_version``.
        config_or_store_table_name: ``None`` (default) for localsync's incremental schema;
            a table name or TinyBase's JSON-mode ``DatabasePersisterConfig``
            (``{"mode": "json", "storeTableName", "storeIdColumnName", "storeColumnName"}``)
            for TinyBase's one-row JSON layout, so that a database written by TinyBase's
            SQLite persisters (``createSqlite3Persister(store, db, configOrStoreTableName)``
            and the like) opens here and ours opens there (see ``_sqlite_json``). Every save
            then writes the whole store.

    Raises ``ValueError`` for TinyBase's tabular mode and ``TypeError`` for a config of the
    wrong type.
    """
    return SqlitePersister(
        store,
        path,
        on_ignored_error,
        poll_seconds=poll_seconds,
        config_or_store_table_name=config_or_store_table_name,
    )
