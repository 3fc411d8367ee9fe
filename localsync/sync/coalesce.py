"""Coalescing local transactions: consecutive transactions' encoded changes merged into as
few ContentDiff bodies as fit the caps, before the Synchronizer sends them.

Wire-compatible with TinyBase (a receiver ends in the state the separate diffs would leave);
why and how it pays: docs/design.md, "Coalescing".
"""

from __future__ import annotations

from typing import Any

from localsync.core.codec import STAMP_OVERHEAD as _STAMP_OVERHEAD
from localsync.sync.engine import set_hlc

__all__ = ["MAX_COALESCED_BYTES", "MAX_COALESCED_STAMPS", "coalesce_changes"]

#: caps of one coalesced ContentDiff (stamps, estimated JSON bytes); a single transaction is
#: never split, so a transaction bigger than the caps goes alone
MAX_COALESCED_STAMPS = 4096
MAX_COALESCED_BYTES = 1 << 20


def _changes_weight(changes: Any) -> tuple[int, int]:
    """(stamps, estimated JSON bytes) of encoded changes, for the coalescing caps."""
    stamps = 0
    size = 0
    for table_id, table_stamp in changes[0][0].items():
        size += _STAMP_OVERHEAD + len(table_id)
        for row_id, row_stamp in table_stamp[0].items():
            cells = row_stamp[0]
            stamps += len(cells)
            size += _STAMP_OVERHEAD + len(row_id)
            for cell_id, cell_stamp in cells.items():
                thing = cell_stamp[0]
                size += _STAMP_OVERHEAD + len(cell_id) + (len(thing) if type(thing) is str else 24)
    for value_id, value_stamp in changes[1][0].items():
        thing = value_stamp[0]
        stamps += 1
        size += _STAMP_OVERHEAD + len(value_id) + (len(thing) if type(thing) is str else 24)
    return stamps, size


def _stamp_hlc(stamp: Any) -> str:
    return stamp[1] if len(stamp) > 1 else ""


def _raise_hlc(target: list[Any], source: Any) -> None:
    """Give ``target`` the later of the two HLCs (TinyBase's latest-HLC rule)."""
    hlc = _stamp_hlc(source)
    if hlc and hlc > _stamp_hlc(target):
        set_hlc(target, hlc)


def _own_changes(changes: Any) -> list[Any]:
    """A copy of the containers of ``changes`` (stamps of cells and values are shared).

    Merging mutates the containers; the first transaction of a batch must not be changed
    under a caller that still holds it (an ``on_send`` observer, a test).
    """
    tables_stamp = changes[0]
    tables: dict[str, Any] = {}
    for table_id, table_stamp in tables_stamp[0].items():
        rows = {row_id: [dict(row[0]), *row[1:]] for row_id, row in table_stamp[0].items()}
        tables[table_id] = [rows, *table_stamp[1:]]
    values_stamp = changes[1]
    return [[tables, *tables_stamp[1:]], [dict(values_stamp[0]), *values_stamp[1:]], 1]


def _merge_changes_into(target: list[Any], changes: Any) -> None:
    """Merge a later transaction's changes into ``target`` (owned): newest HLC per stamp."""
    tables = target[0][0]
    for table_id, table_stamp in changes[0][0].items():
        own_table = tables.get(table_id)
        if own_table is None:
            rows_copy = {r: [dict(row[0]), *row[1:]] for r, row in table_stamp[0].items()}
            tables[table_id] = [rows_copy, *table_stamp[1:]]
            continue
        rows = own_table[0]
        for row_id, row_stamp in table_stamp[0].items():
            own_row = rows.get(row_id)
            if own_row is None:
                rows[row_id] = [dict(row_stamp[0]), *row_stamp[1:]]
                continue
            cells = own_row[0]
            for cell_id, cell_stamp in row_stamp[0].items():
                old = cells.get(cell_id)
                if old is None or _stamp_hlc(cell_stamp) >= _stamp_hlc(old):
                    cells[cell_id] = cell_stamp
            _raise_hlc(own_row, row_stamp)
        _raise_hlc(own_table, table_stamp)
    _raise_hlc(target[0], changes[0])
    values = target[1][0]
    for value_id, value_stamp in changes[1][0].items():
        old = values.get(value_id)
        if old is None or _stamp_hlc(value_stamp) >= _stamp_hlc(old):
            values[value_id] = value_stamp
    _raise_hlc(target[1], changes[1])


def coalesce_changes(
    batch: list[Any],
    max_stamps: int = MAX_COALESCED_STAMPS,
    max_bytes: int = MAX_COALESCED_BYTES,
) -> list[Any]:
    """Merge consecutive transactions' encoded changes into as few ContentDiff bodies as fit.

    Keeps the newest stamp per cell/value and the latest row/table HLC, which leaves a receiver
    in the state the separate diffs would (docs/design.md, "Coalescing"). Bodies come out in
    batch order, each holding a consecutive run of transactions; the inputs are not modified.
    """
    if len(batch) < 2:
        return list(batch)
    out: list[Any] = []
    current: Any = None
    owned = False
    stamps = size = 0
    for changes in batch:
        weight, nbytes = _changes_weight(changes)
        if current is not None and (stamps + weight > max_stamps or size + nbytes > max_bytes):
            out.append(current)
            current = None
        if current is None:
            current, owned, stamps, size = changes, False, weight, nbytes
            continue
        if not owned:
            current, owned = _own_changes(current), True
        _merge_changes_into(current, changes)
        stamps += weight
        size += nbytes
    if current is not None:
        out.append(current)
    return out
