"""What one transaction changed, worked out from the cells it touched.

A transaction records only ``(table, row, cell) -> [old, new]`` for every cell it touched
(``Store._changed_cells``). Listeners and ``get_transaction_changes`` need more: the touched
cells grouped by table and row, and which tables, rows and cell ids came or went. This module
derives that, only when asked, so a store without listeners pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localsync.core.codec import UNDEFINED
from localsync.core.content import ABSENT, same_or_absent

__all__ = ["Derived", "derive_changes", "tables_changes", "values_changes"]

#: ``(table id, row id, cell id) -> [old, new]``, the touched cells of a transaction
ChangedCells = dict[tuple[str, str, str], list[Any]]


class Derived:
    """The touched cells grouped by table and row, and the ids that came (1) or went (-1)."""

    __slots__ = ("cell_ids", "cells", "row_counts", "row_ids", "table_ids")

    def __init__(self) -> None:
        self.cells: dict[str, dict[str, dict[str, list[Any]]]] = {}
        self.table_ids: dict[str, int] = {}
        self.row_ids: dict[str, dict[str, int]] = {}
        self.row_counts: dict[str, int] = {}
        self.cell_ids: dict[str, dict[str, dict[str, int]]] = {}


def derive_changes(
    changed_cells: ChangedCells, tables: dict[str, dict[str, dict[str, Any]]], ids: bool = True
) -> Derived:
    """Group ``changed_cells`` by table and row and, with ``ids``, work out the id changes.

    Args:
        changed_cells: the transaction's touched cells.
        tables: the store's tables as they are now (after the changes).
        ids: False stops after the grouping (cell/row/table listeners need no more).
    """
    derived = Derived()
    grouped = derived.cells
    for (t, r, c), entry in changed_cells.items():
        rows = grouped.get(t)
        if rows is None:
            rows = grouped[t] = {}
        cells = rows.get(r)
        if cells is None:
            cells = rows[r] = {}
        cells[c] = entry
    if not ids:
        return derived
    for t, rows in grouped.items():
        table_now = tables.get(t)
        row_ids: dict[str, int] = {}
        any_row_before = False
        for r, cells in rows.items():
            row_now = table_now.get(r) if table_now is not None else None
            cell_ids: dict[str, int] = {}
            existed = False
            for c, entry in cells.items():
                old_absent = entry[0] is ABSENT
                new_absent = entry[1] is ABSENT
                if not old_absent:
                    existed = True
                if old_absent != new_absent:
                    cell_ids[c] = -1 if new_absent else 1
            if not existed and row_now is not None:
                existed = any(c not in cells for c in row_now)
            if cell_ids:
                derived.cell_ids.setdefault(t, {})[r] = cell_ids
            if existed != (row_now is not None):
                row_ids[r] = 1 if row_now is not None else -1
            any_row_before = any_row_before or existed
        if not any_row_before and table_now is not None:
            any_row_before = any(r not in rows for r in table_now)
        if row_ids:
            derived.row_ids[t] = row_ids
            count = sum(row_ids.values())
            if count:
                derived.row_counts[t] = count
        if any_row_before != (table_now is not None):
            derived.table_ids[t] = 1 if table_now is not None else -1
    return derived


def tables_changes(derived: Derived, convert: Callable[[Any], Any]) -> dict[str, Any]:
    """The tables part of TinyBase's ``getTransactionChanges`` from ``derive_changes``.

    A deleted table or row is UNDEFINED, and so is a deleted cell; ``convert`` gives the form
    of a changed cell (``decode`` or ``identity``).
    """
    tables_out: dict[str, Any] = {}
    for t, rows in derived.cells.items():
        if derived.table_ids.get(t) == -1:
            tables_out[t] = UNDEFINED
            continue
        table_out: dict[str, Any] = {}
        row_ids = derived.row_ids.get(t, {})
        for r, cells in rows.items():
            if row_ids.get(r) == -1:
                table_out[r] = UNDEFINED
                continue
            row_out = values_changes(cells, convert)
            if row_out:
                table_out[r] = row_out
        if table_out:
            tables_out[t] = table_out
    return tables_out


def values_changes(changed: dict[str, list[Any]], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """``{id: new}`` for the entries of ``id -> [old, new]`` that changed (UNDEFINED: deleted)."""
    return {
        id_: (UNDEFINED if entry[1] is ABSENT else convert(entry[1]))
        for id_, entry in changed.items()
        if not same_or_absent(entry[0], entry[1])
    }
