"""TinyBase's Store in Python: tables of rows of cells, keyed values, transactions, listeners.

Data lives in nested dicts (``table_id -> row_id -> cell_id -> cell``), cells in their stored
form (see ``localsync.core.content``). Every write runs in a transaction (an implicit one per
call) that records the touched cells and values as ``[old, new]`` pairs: that record serves
rollback, listeners (``localsync.core.listeners``) and ``get_transaction_changes``.
``store.lock`` (re-entrant) is held for the whole of every transaction, listeners included.

Where Python differs from TinyBase on purpose:

* Invalid cells, values, ids and containers raise ``TypeError``/``ValueError`` before anything
  is applied, so catching one inside a transaction does not poison it (TinyBase drops the
  invalid cell and keeps the rest). Empty rows, tables and values are skipped, as in TinyBase.
* ``get_cell``/``get_value`` return None for a missing cell (use ``has_cell``); listener
  arguments and ``get_cell_change`` use ``UNDEFINED`` for "no cell", None being a real cell.
* Rolling back restores every cell, object cells included. HLCs drawn before stay drawn.
* A number beyond 2**53 is stored as the value a JavaScript replica holds and prints; an int
  too large for a JavaScript number raises.
* Writes made by non-mutator listeners (during did-finish) are ignored, as in TinyBase.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, Literal

from localsync.core.changes import derive_changes, tables_changes, values_changes
from localsync.core.codec import JSON_PREFIX, UNDEFINED, js_stringify
from localsync.core.codec import SAFE_FLOAT_LIMIT as _BIG
from localsync.core.content import (
    ABSENT,
    accept_content,
    bad_ids,
    check_content,
    decode,
    decode_table,
    encode_cell,
    encode_changes,
    encode_row,
    encode_table,
    encode_tables,
    encode_values,
    identity,
    public_change,
    reject_constant,
    release_id,
)
from localsync.core.content import check_json as check_json
from localsync.core.content import encode_accepted as encode_accepted
from localsync.core.content import fits_js_number as fits_js_number
from localsync.core.content import js_ordered as js_ordered
from localsync.core.listeners import ListenerApi

__all__ = ["Store", "create_store"]


class Store(ListenerApi):
    """A TinyBase Store. Create one with :func:`create_store`.

    Every method taking ids raises ``TypeError`` for an id that is not a str; the setters raise
    ``TypeError``/``ValueError`` for a cell or value that ``encode_cell`` rejects, before
    anything is written. The setters and deleters return the store.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._values: dict[str, Any] = {}
        self._table_cell_ids: dict[str, dict[str, int]] = {}
        self._pools: dict[str, list[Any]] = {}  # table id -> [next row id, released ids]
        # transaction state
        self._depth = 0  # nesting; -1 while did-finish listeners run (writes are ignored)
        self._rollback_requested = False
        self._mutating = False
        self._had_tables = False
        self._had_values = False
        self._changed_cells: dict[tuple[str, str, str], list[Any]] = {}
        self._changed_values: dict[str, list[Any]] = {}
        self._changed_table_cell_ids: dict[str, dict[str, int]] = {}
        # id changes in TinyBase's own order, tracked only while id listeners exist
        self._track_ids = False
        self._changed_table_ids: dict[str, int] = {}
        self._changed_row_ids: dict[str, dict[str, int]] = {}
        self._changed_row_count: dict[str, int] = {}
        self._changed_cell_ids: dict[str, dict[str, dict[str, int]]] = {}
        self._changed_value_ids: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} tables={len(self._tables)} values={len(self._values)}>"

    # -------------------------------------------------------------------------- reads

    def is_mergeable(self) -> bool:
        return False

    def get_content(self) -> list[Any]:
        with self.lock:
            return [self.get_tables(), self.get_values()]

    def get_encoded_content(self) -> list[Any]:
        """Content with object cells in stored string form (what persisters write)."""
        with self.lock:
            return [
                {
                    t: {r: dict(row) for r, row in table.items()}
                    for t, table in self._tables.items()
                },
                dict(self._values),
            ]

    def get_tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.lock:
            return {t: decode_table(table) for t, table in self._tables.items()}

    def get_table_ids(self) -> list[str]:
        return list(self._tables)

    def get_table(self, table_id: object) -> dict[str, dict[str, Any]]:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        with self.lock:
            return decode_table(self._tables.get(table_id, {}))

    def get_table_cell_ids(self, table_id: object) -> list[str]:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        return list(self._table_cell_ids.get(table_id, ()))

    def get_row_count(self, table_id: object) -> int:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        return len(self._tables.get(table_id, ()))

    def get_row_ids(self, table_id: object) -> list[str]:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        return list(self._tables.get(table_id, ()))

    def get_row(self, table_id: object, row_id: object) -> dict[str, Any]:
        if type(table_id) is not str or type(row_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id))
        row = self._tables.get(table_id, {}).get(row_id)
        if row is None:
            return {}
        return {c: decode(v) for c, v in list(row.items())}

    def get_cell_ids(self, table_id: object, row_id: object) -> list[str]:
        if type(table_id) is not str or type(row_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id))
        return list(self._tables.get(table_id, {}).get(row_id, ()))

    def get_cell(self, table_id: object, row_id: object, cell_id: object) -> Any:
        """The cell's value, or None when there is no such cell (TinyBase's ``undefined``)."""
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        table = self._tables.get(table_id)
        if table is None:
            return None
        row = table.get(row_id)
        if row is None:
            return None
        return decode(row.get(cell_id))

    def get_values(self) -> dict[str, Any]:
        with self.lock:
            return {v: decode(value) for v, value in self._values.items()}

    def get_value_ids(self) -> list[str]:
        return list(self._values)

    def get_value(self, value_id: object) -> Any:
        if type(value_id) is not str:
            bad_ids(("value id", value_id))
        return decode(self._values.get(value_id))

    def has_tables(self) -> bool:
        return bool(self._tables)

    def has_table(self, table_id: object) -> bool:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        return table_id in self._tables

    def has_table_cell(self, table_id: object, cell_id: object) -> bool:
        if type(table_id) is not str or type(cell_id) is not str:
            bad_ids(("table id", table_id), ("cell id", cell_id))
        return cell_id in self._table_cell_ids.get(table_id, ())

    def has_row(self, table_id: object, row_id: object) -> bool:
        if type(table_id) is not str or type(row_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id))
        return row_id in self._tables.get(table_id, ())

    def has_cell(self, table_id: object, row_id: object, cell_id: object) -> bool:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        return cell_id in self._tables.get(table_id, {}).get(row_id, ())

    def has_values(self) -> bool:
        return bool(self._values)

    def has_value(self, value_id: object) -> bool:
        if type(value_id) is not str:
            bad_ids(("value id", value_id))
        return value_id in self._values

    def get_json(self) -> str:
        """``JSON.stringify([tables, values])`` of the stored form, as TinyBase's getJson."""
        return js_stringify(self.get_encoded_content())

    def for_each_table(self, callback: Callable[[str, Any], Any]) -> None:
        for table_id in self.get_table_ids():
            callback(table_id, lambda cb, t=table_id: self.for_each_row(t, cb))

    def for_each_row(self, table_id: object, callback: Callable[[str, Any], Any]) -> None:
        # (ids typed object: get_row_ids raises the same TypeError in both builds)
        for row_id in self.get_row_ids(table_id):
            callback(row_id, lambda cb, r=row_id: self.for_each_cell(table_id, r, cb))

    def for_each_cell(
        self, table_id: object, row_id: object, callback: Callable[[str, Any], Any]
    ) -> None:
        for cell_id, cell in self.get_row(table_id, row_id).items():
            callback(cell_id, cell)

    def for_each_value(self, callback: Callable[[str, Any], Any]) -> None:
        for value_id, value in self.get_values().items():
            callback(value_id, value)

    # -------------------------------------------------------------------------- writes

    def set_content(self, content: Any) -> Store:
        if callable(content):
            content = content()
        tables, values = check_content(content)
        self._txn(self._apply_content, encode_tables(tables), encode_values(values))
        return self

    def set_encoded_content(self, content: Any) -> Store:
        """set_content for data already in stored form (files, peers): bad cells are dropped."""
        tables, values = check_content(content)
        self._txn(self._apply_content, *accept_content(tables, values))
        return self

    def _apply_content(self, tables: dict[str, Any], values: dict[str, Any]) -> None:
        self._apply_tables(tables)
        if values:
            self._match_values(values)
        else:
            self._delete_all_values()

    def _apply_tables(self, tables: dict[str, Any]) -> None:
        if tables:
            self._match_tables(tables)
        else:
            self._delete_all_tables()

    def set_json(self, json_text: str) -> Store:
        """TinyBase's setJson: ``[tables, values]`` (or just tables) in stored form."""
        try:
            parsed = json.loads(json_text, parse_constant=reject_constant)
        except ValueError as error:
            raise ValueError(f"not JSON: {error}") from None
        if type(parsed) is list and len(parsed) == 2:
            self._txn(self._apply_content, *accept_content(parsed[0], parsed[1]))
        elif type(parsed) is dict:
            self._txn(self._apply_tables, accept_content(parsed, {})[0])
        else:
            raise ValueError("JSON must be [tables, values] or tables")
        return self

    def set_tables(self, tables: Any) -> Store:
        encoded = encode_tables(tables)
        self._txn(self._match_tables if encoded else _skip, encoded)
        return self

    def set_table(self, table_id: object, table: Any) -> Store:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        encoded = encode_table(table)
        self._txn(self._match_table if encoded else _skip, table_id, encoded)
        return self

    def set_row(self, table_id: object, row_id: object, row: Any) -> Store:
        return self._set_row(self._match_row, table_id, row_id, row)

    def _set_row(
        self,
        write: Callable[[str, str, dict[str, Any]], None],
        table_id: object,
        row_id: object,
        row: Any,
    ) -> Store:
        """``write(table_id, row_id, encoded row)`` in a transaction (set_row, set_partial_row)."""
        if type(table_id) is not str or type(row_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id))
        encoded = encode_row(row)
        self._txn(write if encoded else _skip, table_id, row_id, encoded)
        return self

    def add_row(self, table_id: object, row: Any, reuse_row_ids: bool = True) -> str | None:
        """Add a row under a new id (TinyBase's addRow); returns the id, or None if empty."""
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        encoded = encode_row(row)
        return self._txn(self._add_row if encoded else _skip, table_id, encoded, reuse_row_ids)

    def _add_row(self, table_id: str, row: dict[str, Any], reuse: bool) -> str:
        table = self._tables.get(table_id)
        pool = self._pools.get(table_id) if table is not None else None
        while True:
            if pool is None:
                row_id = "0"
                pool = [1, []]
            elif reuse and pool[1]:
                row_id = pool[1].pop(0)
            else:
                row_id = str(pool[0])
                pool[0] += 1
            if table is None or row_id not in table:
                break
        self._match_row(table_id, row_id, row)
        if table is None:
            self._pools[table_id] = pool
        return row_id

    def set_partial_row(self, table_id: object, row_id: object, partial_row: Any) -> Store:
        return self._set_row(self._set_cells, table_id, row_id, partial_row)

    def _set_cells(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        write = self._write_cell
        for cell_id, cell in row.items():
            write(table_id, row_id, cell_id, cell)

    def set_cell(self, table_id: object, row_id: object, cell_id: object, cell: Any) -> Store:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        t = type(cell)
        if t is str:
            if cell[:1] == JSON_PREFIX or cell == UNDEFINED:
                encode_cell(cell)  # raises
        elif not (((t is int or t is float) and -_BIG < cell < _BIG) or t is bool or cell is None):
            if callable(cell):
                cell = cell(self.get_cell(table_id, row_id, cell_id))
            cell = encode_cell(cell)
        lock = self.lock
        lock.acquire()  # (not ``with``: compiled, that looks __enter__/__exit__ up per call)
        try:
            depth = self._depth
            if depth > 0:  # inside a transaction already: skip the general wrapper
                self._depth = depth + 1
                try:
                    self._write_cell(table_id, row_id, cell_id, cell)
                except BaseException:
                    self._abort()
                    raise
                self._depth = depth
            else:
                self._locked_txn(self._write_cell, (table_id, row_id, cell_id, cell), None)
        finally:
            lock.release()
        return self

    def set_values(self, values: Any) -> Store:
        return self._write_values(self._match_values, values)

    def set_partial_values(self, partial_values: Any) -> Store:
        return self._write_values(self._set_values, partial_values)

    def _write_values(self, write: Callable[[dict[str, Any]], None], values: Any) -> Store:
        """``write(encoded values)`` in a transaction (set_values, set_partial_values)."""
        encoded = encode_values(values)
        self._txn(write if encoded else _skip, encoded)
        return self

    def _set_values(self, values: dict[str, Any]) -> None:
        write = self._write_value
        for value_id, value in values.items():
            write(value_id, value)

    def set_value(self, value_id: object, value: Any) -> Store:
        if type(value_id) is not str:
            bad_ids(("value id", value_id))
        if callable(value) and type(value) not in (dict, list):
            value = value(self.get_value(value_id))
        self._txn(self._write_value, value_id, encode_cell(value, "value"))
        return self

    def apply_changes(self, changes: Any) -> Store:
        """TinyBase's applyChanges: ``[tables, values, 1]``, UNDEFINED (or None for a table or
        row) deleting."""
        self._txn(self._apply_plan, *encode_changes(changes))
        return self

    def _apply_plan(self, plan: list[tuple[Any, ...]], value_plan: list[tuple[str, Any]]) -> None:
        for step in plan:
            if len(step) == 1:
                self._delete_table(step[0])
            elif len(step) == 2:
                self._delete_row(step[0], step[1])
            elif step[3] is ABSENT:
                self._delete_cell(step[0], step[1], step[2])
            else:
                self._write_cell(*step)
        for value_id, value in value_plan:
            if value is ABSENT:
                self._delete_value(value_id)
            else:
                self._write_value(value_id, value)

    def del_tables(self) -> Store:
        self._txn(self._delete_all_tables)
        return self

    def del_table(self, table_id: object) -> Store:
        if type(table_id) is not str:
            bad_ids(("table id", table_id))
        self._txn(self._delete_table, table_id)
        return self

    def del_row(self, table_id: object, row_id: object) -> Store:
        if type(table_id) is not str or type(row_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id))
        self._txn(self._delete_row, table_id, row_id)
        return self

    def del_cell(self, table_id: object, row_id: object, cell_id: object) -> Store:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        self._txn(self._delete_cell, table_id, row_id, cell_id)
        return self

    def del_values(self) -> Store:
        self._txn(self._delete_all_values)
        return self

    def del_value(self, value_id: object) -> Store:
        if type(value_id) is not str:
            bad_ids(("value id", value_id))
        self._txn(self._delete_value, value_id)
        return self

    # -------------------------------------------------- write primitives (in a transaction)
    # MergeableStore overrides _write_cell/_delete_cell/_write_value/_delete_value (stamps).

    def _match_tables(self, tables: dict[str, Any]) -> None:
        for table_id, table in tables.items():
            self._match_table(table_id, table)
        for table_id in [t for t in self._tables if t not in tables]:
            self._delete_table(table_id)

    def _match_table(self, table_id: str, table: dict[str, Any]) -> None:
        for row_id, row in table.items():
            self._match_row(table_id, row_id, row)
        existing = self._tables.get(table_id)
        if existing is not None:
            for row_id in [r for r in existing if r not in table]:
                self._delete_row(table_id, row_id)

    def _match_row(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        self._set_cells(table_id, row_id, row)
        existing = self._tables[table_id][row_id]
        if len(existing) != len(row):
            for cell_id in [c for c in existing if c not in row]:
                self._delete_cell(table_id, row_id, cell_id)

    def _match_values(self, values: dict[str, Any]) -> None:
        self._set_values(values)
        if len(self._values) != len(values):
            for value_id in [v for v in self._values if v not in values]:
                self._delete_value(value_id)

    def _delete_all_tables(self) -> None:
        for table_id in list(self._tables):
            self._delete_table(table_id)

    def _delete_table(self, table_id: str) -> None:
        table = self._tables.get(table_id)
        if table is not None:
            for row_id in list(table):
                self._delete_row(table_id, row_id)

    def _delete_row(self, table_id: str, row_id: str) -> None:
        table = self._tables.get(table_id)
        if table is None:
            return
        row = table.get(row_id)
        if row is None:
            return
        pool = self._pools.get(table_id)
        if pool is not None:
            release_id(pool[1], row_id)
        delete = self._delete_cell
        for cell_id in list(row):
            delete(table_id, row_id, cell_id)

    def _delete_all_values(self) -> None:
        delete = self._delete_value
        for value_id in list(self._values):
            delete(value_id)

    def _write_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        row = self._row_to_write(table_id, row_id)
        old = row.get(cell_id, ABSENT)
        if old is ABSENT:
            self._cell_id_added(table_id, row_id, cell_id)
        elif old == cell and (type(old) is bool) is (type(cell) is bool):
            return
        row[cell_id] = cell
        _record(self._changed_cells, (table_id, row_id, cell_id), old, cell)

    def _delete_cell(self, table_id: str, row_id: str, cell_id: str) -> None:
        old = self._raw_delete_cell(table_id, row_id, cell_id)
        if old is not ABSENT:
            _record(self._changed_cells, (table_id, row_id, cell_id), old, ABSENT)

    def _write_value(self, value_id: str, value: Any) -> None:
        values = self._values
        old = values.get(value_id, ABSENT)
        if old is not ABSENT and old == value and (type(old) is bool) is (type(value) is bool):
            return
        values[value_id] = value
        if old is ABSENT and self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, 1)
        _record(self._changed_values, value_id, old, value)

    def _delete_value(self, value_id: str) -> None:
        old = self._values.pop(value_id, ABSENT)
        if old is ABSENT:
            return
        if self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, -1)
        _record(self._changed_values, value_id, old, ABSENT)

    def _new_table(self, table_id: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        self._tables[table_id] = table
        self._pools[table_id] = [0, []]
        self._table_cell_ids[table_id] = {}
        if self._track_ids and self._depth > 0:
            self._ids_changed1(self._changed_table_ids, table_id, 1)
        return table

    def _row_added(self, table_id: str, row_id: str) -> None:
        """Only called while id listeners are tracked (see ``_track_ids``)."""
        if self._depth > 0:
            self._ids_changed(self._changed_row_ids, table_id, row_id, 1)
            counts = self._changed_row_count
            counts[table_id] = counts.get(table_id, 0) + 1

    def _new_row_cell_ids(self, table_id: str, row_id: str, cells: dict[str, Any]) -> None:
        """Count the cell ids of a row put into the data whole by a merge or an install (which
        track no ids: an id the table already has only has its count raised)."""
        counts = self._table_cell_ids[table_id]
        for cell_id in cells:
            count = counts.get(cell_id, 0)
            if count:
                counts[cell_id] = count + 1
            else:
                self._cell_id_added(table_id, row_id, cell_id)

    def _cell_id_added(self, table_id: str, row_id: str, cell_id: str) -> None:
        counts = self._table_cell_ids[table_id]
        count = counts.get(cell_id, 0)
        counts[cell_id] = count + 1
        if self._depth > 0:
            if count == 0:
                self._ids_changed(self._changed_table_cell_ids, table_id, cell_id, 1)
            if self._track_ids:
                self._ids_changed(
                    self._changed_cell_ids.setdefault(table_id, {}), row_id, cell_id, 1
                )

    def _raw_delete_cell(self, table_id: str, row_id: str, cell_id: str) -> Any:
        """Remove a cell (and its row and table when they become empty); returns the old cell."""
        table = self._tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        old = row.pop(cell_id, ABSENT) if row is not None else ABSENT
        if table is None or row is None or old is ABSENT:
            return ABSENT
        counts = self._table_cell_ids[table_id]
        count = counts[cell_id]
        track = self._track_ids and self._depth > 0
        if count == 1:
            del counts[cell_id]
            if self._depth > 0:
                self._ids_changed(self._changed_table_cell_ids, table_id, cell_id, -1)
        else:
            counts[cell_id] = count - 1
        if track:
            self._ids_changed(self._changed_cell_ids.setdefault(table_id, {}), row_id, cell_id, -1)
        if not row:
            del table[row_id]
            if track:
                self._ids_changed(self._changed_row_ids, table_id, row_id, -1)
                row_counts = self._changed_row_count
                row_counts[table_id] = row_counts.get(table_id, 0) - 1
            if not table:
                if track:
                    self._ids_changed1(self._changed_table_ids, table_id, -1)
                del self._tables[table_id]
                self._pools.pop(table_id, None)
                self._table_cell_ids.pop(table_id, None)
        return old

    def _row_to_write(self, table_id: str, row_id: str) -> dict[str, Any]:
        """The row to write a cell into, created (with its table) if need be."""
        table = self._tables.get(table_id)
        if table is None:
            table = self._new_table(table_id)
        row = table.get(row_id)
        if row is None:
            row = table[row_id] = {}
            if self._track_ids:
                self._row_added(table_id, row_id)
        return row

    def _raw_set_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        """Put a cell back (rollback: records no change)."""
        row = self._row_to_write(table_id, row_id)
        if cell_id not in row:
            self._cell_id_added(table_id, row_id, cell_id)
        row[cell_id] = cell

    @staticmethod
    def _ids_changed1(ids: dict[str, int], id_: str, delta: int) -> None:
        """TinyBase's idsChanged: a change that undoes the recorded one removes the entry."""
        if ids.get(id_) == -delta:
            del ids[id_]
        else:
            ids[id_] = delta

    @staticmethod
    def _ids_changed(changed: dict[str, dict[str, int]], parent: str, id_: str, delta: int) -> None:
        """``_ids_changed1`` for the ids under ``parent``."""
        Store._ids_changed1(changed.setdefault(parent, {}), id_, delta)

    # -------------------------------------------------------------------------- transactions

    def transaction(
        self,
        actions: Callable[[], Any] | None = None,
        do_rollback: Callable[..., Any] | None = None,
    ) -> Any:
        """Run ``actions()`` as one transaction and return its result, or, with no arguments,
        return a context manager: ``with store.transaction(): ...``.

        An exception rolls the whole transaction back (no listener sees it) and propagates.
        ``do_rollback(store)`` returning true after the actions rolls back too (TinyBase).
        """
        if actions is None:
            return _Transaction(self, do_rollback)
        return self._txn(actions, _do_rollback=do_rollback)

    def start_transaction(self) -> Store:
        """Open a transaction by hand (close it with :meth:`finish_transaction`)."""
        self.lock.acquire()
        if self._depth < 0:
            return self
        try:
            self._begin()
        except BaseException:  # (a start listener raised: the transaction never opened)
            self.lock.release()
            raise
        return self

    def finish_transaction(self, do_rollback: Callable[..., Any] | None = None) -> Store:
        try:
            if self._depth > 0:
                self._end(do_rollback)
        finally:
            self.lock.release()
        return self

    def _txn(self, fn: Callable[..., Any], *args: Any, _do_rollback: Any = None) -> Any:
        lock = self.lock
        lock.acquire()  # (as in set_cell)
        try:
            return self._locked_txn(fn, args, _do_rollback)
        finally:
            lock.release()

    def _locked_txn(self, fn: Callable[..., Any], args: tuple[Any, ...], rollback: Any) -> Any:
        """``_txn`` for a caller already holding ``store.lock`` (it is not taken twice)."""
        depth = self._depth
        if depth < 0:
            return None  # inside did-finish listeners: TinyBase ignores writes
        if depth == 0:
            self._begin()
        else:
            self._depth = depth + 1
        try:
            result = fn(*args)
        except BaseException:
            self._abort()
            raise
        if self._depth == 1:
            self._end(rollback)
        else:
            self._depth -= 1
        return result

    def _begin(self) -> None:
        self._depth += 1
        if self._depth == 1:
            self._had_tables = bool(self._tables)
            self._had_values = bool(self._values)
            self._track_ids = self._listeners.id_count > 0
            self._pre_start_transaction()
            listeners = self._listeners
            if listeners.start:
                try:
                    listeners.call_each(self, listeners.start, False)
                except BaseException:
                    self._rollback_requested = True
                    self._end(None)
                    raise

    def _abort(self) -> None:
        self._rollback_requested = True
        with contextlib.suppress(Exception):  # the original error is the one to report
            self._end(None)

    def _end(self, do_rollback: Callable[..., Any] | None) -> None:
        if self._depth <= 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        self._depth = 1
        listeners = self._listeners
        rolled_back = False
        committed = False
        call_did_finish = False
        errors: list[BaseException] = []
        try:
            try:
                if self._rollback_requested:
                    self._rollback()
                    rolled_back = True
                else:
                    if listeners.counts[1]:
                        self._mutating = True
                        try:
                            listeners.call_data(self, 1)
                        finally:
                            self._mutating = False
                    if do_rollback is not None and do_rollback(self):
                        self._rollback()
                        rolled_back = True
                    call_did_finish = True
                    if listeners.will_finish:
                        listeners.call_each(self, listeners.will_finish, True)
                    self._depth = -1
                    committed = True
                    if listeners.counts[0] and not rolled_back:
                        listeners.call_data(self, 0)
            except BaseException as error:
                if not committed and not rolled_back:
                    self._rollback()
                    rolled_back = True
                errors.append(error)
            if call_did_finish and listeners.did_finish:
                self._depth = -1
                try:
                    listeners.call_each(self, listeners.did_finish, True)
                except BaseException as error:
                    errors.append(error)
        finally:
            try:
                self._post_finish_transaction(rolled_back)
            finally:
                self._reset_transaction()
        if errors:
            raise errors[0]

    def _reset_transaction(self) -> None:
        self._depth = 0
        self._rollback_requested = False
        self._mutating = False
        if self._changed_cells:
            self._changed_cells = {}
        if self._changed_values:
            self._changed_values = {}
        if self._changed_table_cell_ids:
            self._changed_table_cell_ids = {}
        if self._track_ids:
            self._track_ids = False
            self._changed_table_ids = {}
            self._changed_row_ids = {}
            self._changed_row_count = {}
            self._changed_cell_ids = {}
            self._changed_value_ids = {}

    def _rollback(self) -> None:
        """Put every touched cell and value back as it was when the transaction started."""
        depth = self._depth
        self._depth = 0  # so that restoring records nothing
        try:
            # in TinyBase's order (by table, then row, then cell, each by first touch), so
            # that restored ids get the same positions as in a JavaScript replica
            grouped: dict[str, dict[str, list[tuple[str, Any]]]] = {}
            for (t, r, c), entry in self._changed_cells.items():
                grouped.setdefault(t, {}).setdefault(r, []).append((c, entry[0]))
            for t, rows in grouped.items():
                for r, cells in rows.items():
                    for c, old in cells:
                        if old is ABSENT:
                            self._raw_delete_cell(t, r, c)
                        else:
                            self._raw_set_cell(t, r, c, old)
            for value_id, entry in self._changed_values.items():
                old = entry[0]
                if old is ABSENT:
                    self._values.pop(value_id, None)
                else:
                    self._values[value_id] = old
            self._rollback_stamps()
        finally:
            self._depth = depth
        self._changed_cells = {}
        self._changed_values = {}
        self._changed_table_cell_ids = {}

    # hooks for MergeableStore
    def _pre_start_transaction(self) -> None:
        pass

    def _post_finish_transaction(self, rolled_back: bool) -> None:
        pass

    def _rollback_stamps(self) -> None:
        pass

    # -------------------------------------------------------------------------- changes

    def get_transaction_changes(self) -> list[Any]:
        """TinyBase's getTransactionChanges: ``[tables, values, 1]`` of what this transaction
        changed, with UNDEFINED for a deleted cell, value, row or table."""
        return self._transaction_changes(decode)

    def get_encoded_transaction_changes(self) -> list[Any]:
        """``get_transaction_changes`` with object cells in stored form."""
        return self._transaction_changes(identity)

    def _transaction_changes(self, convert: Callable[[Any], Any]) -> list[Any]:
        with self.lock:
            derived = derive_changes(self._changed_cells, self._tables)
            changed_values = values_changes(self._changed_values, convert)
            return [tables_changes(derived, convert), changed_values, 1]

    def _get_cell_change(self, table_id: str, row_id: str, cell_id: str) -> list[Any]:
        """``[changed, old, new]`` of a cell in the current transaction (TinyBase's
        getCellChange)."""
        entry = self._changed_cells.get((table_id, row_id, cell_id))
        if entry is not None:
            return public_change(entry, ABSENT)
        return public_change(
            None, self._tables.get(table_id, {}).get(row_id, {}).get(cell_id, ABSENT)
        )

    def _get_value_change(self, value_id: str) -> list[Any]:
        """``[changed, old, new]`` of a value in the current transaction."""
        entry = self._changed_values.get(value_id)
        return public_change(entry, self._values.get(value_id, ABSENT) if entry is None else ABSENT)


class _Transaction:
    """``with store.transaction():`` (a class: cheaper than a generator per transaction)."""

    __slots__ = ("_active", "_do_rollback", "_store")

    def __init__(self, store: Store, do_rollback: Callable[..., Any] | None) -> None:
        self._store = store
        self._do_rollback = do_rollback
        self._active = False

    def __enter__(self) -> Store:
        store = self._store
        store.lock.acquire()
        try:
            self._active = store._depth >= 0  # writes from did-finish listeners are ignored
            if self._active:
                store._begin()
        except BaseException:
            store.lock.release()
            raise
        return store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        store = self._store
        try:
            if self._active:
                if exc_type is not None:
                    store._abort()
                else:
                    store._end(self._do_rollback)
        finally:
            store.lock.release()
        return False


def _record(changes: dict[Any, list[Any]], key: Any, old: Any, new: Any) -> None:
    """Record ``key`` changed from ``old`` to ``new``; a key changed before keeps its first old."""
    entry = changes.get(key)
    if entry is None:
        changes[key] = [old, new]
    else:
        entry[1] = new


def _skip(*args: object) -> None:
    """The transaction of a write with nothing to write (it still calls the listeners)."""
    return None


def create_store() -> Store:
    """A new, empty Store (TinyBase's ``createStore``)."""
    return Store()
