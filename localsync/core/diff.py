"""What a MergeableStore sends: its content, its transaction changes, its hash tree and diffs.

Functions over the store's settled stamp structures (``tstamp``: ``[{table id: [{row id:
[{cell id: (cell, hlc, hash)}, hlc, hash]}, hlc, hash]}, hlc, hash]``, ``vstamp``: ``[{value
id: (value, hlc, hash)}, hlc, hash]``); the store's methods take its lock, settle pending
hashes and call them. Output is fresh objects, never shared with the stamps.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from localsync.core.codec import JSON_PREFIX, STAMP_OVERHEAD
from localsync.core.content import decode

_OBJECTS: Final = (dict, list)


def public(thing: Any) -> Any:
    """Decoded form of a stamped thing for public output (fresh objects, never shared)."""
    t = type(thing)
    if t is str:
        if thing[:1] == JSON_PREFIX:
            return decode(thing)
        return thing
    if t is dict or t is list:
        return copy.deepcopy(thing)
    return thing


def raw(thing: Any) -> Any:
    """Stored form of a stamped thing for the wire (object cells stay ``"\\ufffd..."``)."""
    if type(thing) is dict or type(thing) is list:
        return copy.deepcopy(thing)
    return thing


def _stamp(thing: Any, hlc: str) -> list[Any]:
    """TinyBase's stampNew: ``[thing]`` when the HLC is empty, else ``[thing, hlc]``."""
    return [thing, hlc] if hlc else [thing]


def _changes_body(
    tables: dict[str, Any], tables_hlc: str, values: dict[str, Any], values_hlc: str
) -> list[Any]:
    """``[[tables, hlc], [values, hlc], 1]`` with TinyBase's stampNew rule for empty HLCs."""
    return [_stamp(tables, tables_hlc), _stamp(values, values_hlc), 1]


def check_mapping(value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a dict (of hashes, from a peer)."""
    if type(value) is not dict:
        raise TypeError(f"expected a dict of hashes, not {type(value).__name__}")


def content(tstamp: list[Any], vstamp: list[Any], encoded: bool) -> list[Any]:
    """``[[tables, hlc, hash], [values, hlc, hash]]``; cells decoded unless ``encoded``."""
    tables, tables_hlc, tables_hash = tstamp
    values, values_hlc, values_hash = vstamp
    convert = raw if encoded else public
    tables_out: dict[str, Any] = {}
    for table_id, (rows, table_hlc, table_hash) in tables.items():
        rows_out: dict[str, Any] = {}
        for row_id, (cells, row_hlc, row_hash) in rows.items():
            if encoded:  # only object cells need converting (a copy)
                cells_out = {
                    cell_id: [cell, hlc, hash_]
                    if type(cell) not in _OBJECTS
                    else [copy.deepcopy(cell), hlc, hash_]
                    for cell_id, (cell, hlc, hash_) in cells.items()
                }
            else:
                cells_out = {
                    cell_id: [public(cell) if type(cell) is not int else cell, hlc, hash_]
                    for cell_id, (cell, hlc, hash_) in cells.items()
                }
            rows_out[row_id] = [cells_out, row_hlc, row_hash]
        tables_out[table_id] = [rows_out, table_hlc, table_hash]
    values_out = {
        value_id: [convert(value), hlc, hash_] for value_id, (value, hlc, hash_) in values.items()
    }
    return [[tables_out, tables_hlc, tables_hash], [values_out, values_hlc, values_hash]]


def transaction_changes(
    tstamp: list[Any],
    vstamp: list[Any],
    changed_cells: dict[Any, Any],
    changed_values: dict[str, Any],
    with_hashes: bool,
    encoded: bool,
) -> list[Any]:
    """The stamps of the touched cells and values, as ``[tables, values, 1]`` changes (with
    each stamp's hash when ``with_hashes``)."""
    convert = raw if encoded else public

    def new_stamp(thing: Any, hlc: str, hash_: Any) -> list[Any]:
        if with_hashes:
            return [thing, hlc, hash_]
        return [thing, hlc] if hlc else [thing]

    grouped: dict[str, dict[str, list[str]]] = {}
    for table_id, row_id, cell_id in changed_cells:
        grouped.setdefault(table_id, {}).setdefault(row_id, []).append(cell_id)
    tables, tables_hlc, tables_hash = tstamp
    tables_out: dict[str, Any] = {}
    for table_id, rows in grouped.items():
        table_stamp = tables.get(table_id)
        if table_stamp is None:
            continue
        row_stamps, table_hlc, table_hash = table_stamp
        table_out: dict[str, Any] = {}
        for row_id, cell_ids in rows.items():
            row_stamp = row_stamps.get(row_id)
            if row_stamp is None:
                continue
            cell_stamps, row_hlc, row_hash = row_stamp
            row_out: dict[str, Any] = {}
            for cell_id in cell_ids:
                cell_stamp = cell_stamps.get(cell_id)
                if cell_stamp is not None:
                    cell, hlc, hash_ = cell_stamp
                    row_out[cell_id] = new_stamp(convert(cell), hlc, hash_)
            table_out[row_id] = new_stamp(row_out, row_hlc, row_hash)
        tables_out[table_id] = new_stamp(table_out, table_hlc, table_hash)
    values, values_hlc, values_hash = vstamp
    values_out: dict[str, Any] = {}
    for value_id in changed_values:
        value_stamp = values.get(value_id)
        if value_stamp is not None:
            value, hlc, hash_ = value_stamp
            values_out[value_id] = new_stamp(convert(value), hlc, hash_)
    return [
        new_stamp(tables_out, tables_hlc, tables_hash),
        new_stamp(values_out, values_hlc, values_hash),
        1,
    ]


def encoded_changes_of(
    tstamp: list[Any],
    vstamp: list[Any],
    touched: list[tuple[dict[tuple[str, str, str], Any], dict[str, Any]]],
    max_stamps: int,
    max_bytes: int,
) -> list[list[Any]]:
    """ContentDiff bodies (encoded, no hashes) for everything a run of transactions touched,
    from the current stamps; cut between transactions once ``max_stamps`` stamps or about
    ``max_bytes`` bytes are reached (see ``MergeableStore.get_encoded_mergeable_changes_of``).
    """
    out: list[list[Any]] = []
    table_stamps: dict[str, list[Any]] = tstamp[0]
    tables_hlc: str = tstamp[1]
    value_stamps: dict[str, tuple[Any, Any, Any]] = vstamp[0]
    values_hlc: str = vstamp[1]
    tables_out: dict[str, list[Any]] = {}
    values_out: dict[str, Any] = {}
    stamps = size = 0
    overhead = STAMP_OVERHEAD
    for cells, values in touched:
        last_table = last_row = None
        cells_out: dict[str, Any] = {}
        cell_stamps: dict[str, tuple[Any, Any, Any]] = {}
        for table_id, row_id, cell_id in cells:
            if row_id != last_row or table_id != last_table:
                last_table, last_row = table_id, row_id
                table_stamp = table_stamps.get(table_id)
                row_stamp: list[Any] | None = None
                if table_stamp is not None:
                    rows: dict[str, list[Any]] = table_stamp[0]
                    row_stamp = rows.get(row_id)
                if row_stamp is None:
                    cell_stamps = {}
                    continue
                cell_stamps = row_stamp[0]
                table_out = tables_out.get(table_id)
                if table_out is None:
                    table_hlc = table_stamp[1]  # type: ignore[index]
                    table_out = tables_out[table_id] = [{}, table_hlc] if table_hlc else [{}]
                    size += overhead + len(table_id)
                rows_out: dict[str, list[Any]] = table_out[0]
                row_out = rows_out.get(row_id)
                if row_out is None:
                    row_hlc = row_stamp[1]
                    row_out = rows_out[row_id] = [{}, row_hlc] if row_hlc else [{}]
                    size += overhead + len(row_id)
                cells_out = row_out[0]
            cell_stamp = cell_stamps.get(cell_id)
            if cell_stamp is None or cell_id in cells_out:
                continue
            thing, hlc, _ = cell_stamp
            kind = type(thing)
            if kind is dict or kind is list:  # (raw and _stamp, inlined: per cell)
                thing = copy.deepcopy(thing)
            cells_out[cell_id] = [thing, hlc] if hlc else [thing]
            stamps += 1
            size += overhead + len(cell_id) + (len(thing) if kind is str else 24)
        for value_id in values:
            value_stamp = value_stamps.get(value_id)
            if value_stamp is None or value_id in values_out:
                continue
            thing, hlc, _ = value_stamp
            values_out[value_id] = _stamp(raw(thing), hlc)
            stamps += 1
            size += overhead + len(value_id) + (len(thing) if type(thing) is str else 24)
        if stamps >= max_stamps or size >= max_bytes:
            out.append(_changes_body(tables_out, tables_hlc, values_out, values_hlc))
            tables_out, values_out = {}, {}
            stamps = size = 0
    if tables_out or values_out:
        out.append(_changes_body(tables_out, tables_hlc, values_out, values_hlc))
    return out


def _row_without_hashes(row_stamp: list[Any]) -> list[Any]:
    cells, row_hlc, _ = row_stamp
    cells_out = {
        cell_id: ([cell, hlc] if hlc else [cell])
        if type(cell) not in _OBJECTS
        else _stamp(copy.deepcopy(cell), hlc)
        for cell_id, (cell, hlc, _h2) in cells.items()
    }
    return [cells_out, row_hlc] if row_hlc else [cells_out]


def table_diff(tstamp: list[Any], other_table_hashes: dict[str, Any]) -> list[Any]:
    """``[new tables stamp, {table id: our hash}]`` for tables the other side lacks or has
    differently."""
    tables, tables_hlc, _ = tstamp
    new_tables: dict[str, Any] = {}
    differing: dict[str, int] = {}
    for table_id, (rows, table_hlc, hash_) in tables.items():
        if table_id in other_table_hashes:
            if hash_ != other_table_hashes[table_id]:
                differing[table_id] = hash_
        else:
            new_tables[table_id] = _stamp(
                {row_id: _row_without_hashes(row) for row_id, row in rows.items()}, table_hlc
            )
    return [_stamp(new_tables, tables_hlc), differing]


def row_hashes(tstamp: list[Any], other_table_hashes: dict[str, Any]) -> dict[str, Any]:
    """``{table id: {row id: hash}}`` of the tables whose hash differs from the other's."""
    tables = tstamp[0]
    result: dict[str, dict[str, int]] = {}
    for table_id, other_hash in other_table_hashes.items():
        table_stamp = tables.get(table_id)
        if table_stamp is not None and table_stamp[2] != other_hash:
            out = result.setdefault(table_id, {})
            for row_id, row_stamp in table_stamp[0].items():
                out[row_id] = row_stamp[2]
    return result


def row_diff(tstamp: list[Any], other_table_row_hashes: dict[str, Any]) -> list[Any]:
    """``[new rows stamp, {table id: {row id: our hash}}]`` for the rows the other side
    lacks or has differently, in the tables it names."""
    tables, tables_hlc, _ = tstamp
    new_rows: dict[str, Any] = {}
    differing: dict[str, dict[str, int]] = {}
    for table_id, other_row_hashes in other_table_row_hashes.items():
        table_stamp = tables.get(table_id)
        if table_stamp is None:
            continue
        other = other_row_hashes if type(other_row_hashes) is dict else {}
        for row_id, row_stamp in table_stamp[0].items():
            if row_id in other:
                if row_stamp[2] != other[row_id]:
                    differing.setdefault(table_id, {})[row_id] = row_stamp[2]
            else:
                new_rows.setdefault(table_id, [{}])[0][row_id] = _row_without_hashes(row_stamp)
    return [_stamp(new_rows, tables_hlc), differing]


def cell_hashes(tstamp: list[Any], other_table_row_hashes: dict[str, Any]) -> dict[str, Any]:
    """``{table id: {row id: {cell id: hash}}}`` of the rows whose hash differs."""
    tables = tstamp[0]
    result: dict[str, dict[str, dict[str, int]]] = {}
    for table_id, other_row_hashes in other_table_row_hashes.items():
        table_stamp = tables.get(table_id)
        if table_stamp is None or type(other_row_hashes) is not dict:
            continue
        rows = table_stamp[0]
        for row_id, other_hash in other_row_hashes.items():
            row_stamp = rows.get(row_id)
            if row_stamp is not None and row_stamp[2] != other_hash:
                out = result.setdefault(table_id, {}).setdefault(row_id, {})
                for cell_id, cell_stamp in row_stamp[0].items():
                    out[cell_id] = cell_stamp[2]
    return result


def cell_diff(tstamp: list[Any], other_table_row_cell_hashes: dict[str, Any]) -> list[Any]:
    """The tables stamp of the cells whose hash differs from the other's, in the rows it
    names."""
    tables, tables_hlc, _ = tstamp
    tables_out: dict[str, Any] = {}
    for table_id, other_row_cell_hashes in other_table_row_cell_hashes.items():
        if type(other_row_cell_hashes) is not dict:
            continue
        for row_id, other_cell_hashes in other_row_cell_hashes.items():
            table_stamp = tables.get(table_id)
            if table_stamp is None:
                continue
            row_stamp = table_stamp[0].get(row_id)
            if row_stamp is None:
                continue
            other = other_cell_hashes if type(other_cell_hashes) is dict else {}
            for cell_id, (cell, cell_hlc, hash_) in row_stamp[0].items():
                if hash_ != other.get(cell_id):
                    table_out = tables_out.get(table_id)
                    if table_out is None:
                        table_out = tables_out[table_id] = _stamp({}, table_stamp[1])
                    row_out = table_out[0].get(row_id)
                    if row_out is None:
                        row_out = table_out[0][row_id] = _stamp({}, row_stamp[1])
                    row_out[0][cell_id] = [raw(cell), cell_hlc]
    return _stamp(tables_out, tables_hlc)


def value_diff(vstamp: list[Any], other_value_hashes: dict[str, Any]) -> list[Any]:
    """The values stamp of the values whose hash differs from the other's."""
    values, values_hlc, _ = vstamp
    out = {
        value_id: _stamp(raw(value), hlc)
        for value_id, (value, hlc, hash_) in values.items()
        if hash_ != other_value_hashes.get(value_id)
    }
    return _stamp(out, values_hlc)
