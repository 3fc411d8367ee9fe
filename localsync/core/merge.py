"""The receive path of a MergeableStore: peer data merged into the stamps and the data.

One function chain takes validated data (changes or content, from ``apply_mergeable_changes``,
``set_mergeable_content``, ``merge``, a sync engine's checked changes, a write from a mutator
listener, or a defaulted write) to the stamps, hashes, clock, data and change records that
TinyBase's ``mergeContentOrChanges`` followed by ``applyChanges`` produce. It merges and
writes one row at a time; a row new to the store is built whole; merged *changes* leave
their things' hashes pending, like local writes (see :mod:`localsync.core.stamps`); content
carries trusted hashes. The line-by-line port of TinyBase it is tested against is
``tests/core/oracle.py``.
"""

from __future__ import annotations

import copy
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import SAFE_FLOAT_LIMIT as _BIG
from localsync.core.codec import SAFE_INT_LIMIT as _BIG_INT
from localsync.core.codec import UNDEFINED
from localsync.core.content import ABSENT, encode_accepted, js_ordered
from localsync.core.hlc import Number, future_limit, time_prefix_within
from localsync.core.stamps import MASK, counted, in_parent_hash, replace_hlc_hash, uint32
from localsync.core.validation import greatest

if TYPE_CHECKING:
    from localsync.core.mergeable_store import MergeableStore

#: cells in one merge from which pausing the cyclic collector pays
BULK: Final = 1000
_second: Final = itemgetter(1)


def prechecked(data: CheckedChanges, max_time: Number) -> bool:
    """Whether changes a sync engine checked are valid without the store's validator: no
    special value to look at, fewer than ``BULK`` HLCs, and all within the future limit.
    False leaves the verdict to the validator.

    Why: this is every ContentDiff a channel process receives between bursts, arriving to
    cold caches, where every object built costs its own cache misses.
    """
    hlcs = data.hlcs
    if data.special or len(hlcs) >= BULK:
        return False
    if not hlcs:
        return True
    limit = future_limit(max_time)
    return limit >= 0 and time_prefix_within(greatest(hlcs)[:7], limit)


def encode_merged(thing: Any) -> Any:
    """Stored form of a validated, decoded cell from a peer (objects become ``"\\ufffd..."``,
    integers beyond 2**53 the number a JavaScript peer holds, as for encoded cells)."""
    t = type(thing)
    if t is dict or t is list or (t is int and not -_BIG_INT <= thing <= _BIG_INT):
        return encode_accepted(thing)
    return thing


def receive(
    store: MergeableStore, data: Any, is_content: bool, encoded: bool, plain: bool, write: bool
) -> None:
    """Inside a transaction: merge validated ``data`` into ``store`` (TinyBase's
    mergeContentOrChanges) and, when ``write``, write its winners to the data.

    Arguments: ``is_content`` replaces everything and trusts the data's hashes; ``encoded``:
    object cells arrive as ``"\\ufffd..."`` strings; ``plain``: the validator found no object
    cell and no number beyond 2**53; ``write`` False: stamps only (a defaulted local write,
    whose data the caller writes).

    While mutator listeners run, the winners are written after every stamp is merged and
    the clock has seen them, through the store's own writers: TinyBase stamps such writes as
    the store's own (``mutating``), so they take local HLCs newer than everything received.
    """
    listening = store._listening
    store._listening = False
    try:
        if is_content:
            store._settle()
            store._delete_all_tables()
            store._delete_all_values()
            undo = store._undo
            for root in (store._tstamp, store._vstamp):
                undo.append((root, 0, root[0]))
                undo.append((root, 1, root[1]))
                undo.append((root, 2, root[2]))
                root[0] = {}
                root[1] = ""
                root[2] = 0
        deferred: list[tuple[str, str, dict[str, Any]]] | None = (
            [] if write and store._mutating else None
        )
        tables_hlc = _merge_tables(store, data[0], is_content, encoded, plain, write, deferred)
        values_in = data[1]
        values_hlc = values_in[1] if len(values_in) > 1 else ""
        values_changes: dict[str, Any] | None
        if is_content or values_in[0] or values_hlc > store._vstamp[1]:
            values_hlc, values_changes = _merge_values(store, values_in, is_content)
        else:
            values_changes = None  # (no values and no newer HLC: nothing changes)
        store._seen_merged_hlc(tables_hlc if tables_hlc > values_hlc else values_hlc)
        if not write:
            return
        if deferred is not None:
            for table_id, row_id, winners in deferred:
                for cell_id, thing in winners.items():
                    if thing == UNDEFINED:
                        store._delete_cell(table_id, row_id, cell_id)
                    else:
                        stored = encode_accepted(thing) if encoded else encode_merged(thing)
                        if stored is not ABSENT:
                            store._write_cell(table_id, row_id, cell_id, stored)
        if values_changes is None:
            return
        for value_id, thing in values_changes.items():
            if thing == UNDEFINED:
                store._delete_value(value_id)
            else:
                stored = encode_accepted(thing) if encoded else encode_merged(thing)
                if stored is not ABSENT:
                    store._write_value(value_id, stored)
    finally:
        store._listening = listening


def _close_stamp(
    undo: list[Any],
    stamp: list[Any],
    incoming_hlc: str,
    old_hlc: str,
    old_hash: int,
    hash_: Any,
    lazy: bool,
    fresh: bool = False,
) -> int:
    """The end of merging a row, table or root: its HLC and its hash ``hash_`` (the one
    built from its children), with undo entries unless the stamp was created now."""
    newer = incoming_hlc > old_hlc
    if lazy and newer:
        hash_ ^= replace_hlc_hash(old_hlc, incoming_hlc)
    if not fresh:
        undo.append((stamp, 1, old_hlc))
        undo.append((stamp, 2, old_hash))
    if newer:
        stamp[1] = incoming_hlc
    new_hash: int = hash_ & MASK if type(hash_) is int else uint32(hash_)
    stamp[2] = new_hash
    return new_hash


def _term_change(id_: str, old_hash: int, was_counted: bool, new_hash: int, pending: bool) -> int:
    """The change of a row's (table's) ``H(id:hash)`` term in its parent's hash. ``pending``:
    its children's hashes are not settled yet, and a zero hash then means "no term yet"."""
    old_term = in_parent_hash(id_, old_hash) if was_counted else 0
    if pending and not new_hash:
        return old_term
    return old_term ^ in_parent_hash(id_, new_hash)


def _merge_things(
    undo: list[Any],
    things_obj: dict[str, Any],
    thing_stamps: dict[str, Any],
    fresh: bool,
    lazy: bool,
    dirty: dict[str, int] | None,
    winners: dict[str, Any],
) -> tuple[str, dict[str, int] | None]:
    """mergeCellsOrValues' loop for one row's cells or the values: a stamp wins when it is
    newer (or the old one has no HLC); ``winners`` gets each winning thing.

    ``fresh``: the row stamp was created by this merge (undoing that undoes everything in
    it). ``lazy``: changes, whose hashes are left pending: each winner is noted in
    ``dirty`` with the hash it had (a new map is made when ``dirty`` is None, and returned
    with the greatest winning HLC). Content stores the hashes it carries instead.
    """
    things_hlc = ""
    new_dirty = False
    for thing_id, thing_in in things_obj.items():
        thing = thing_in[0]
        n = len(thing_in)
        thing_hlc = thing_in[1] if n > 1 else ""
        if fresh:
            old_stamp = None
            old_thing_hlc = ""
        else:
            old_stamp = thing_stamps.get(thing_id)
            old_thing_hlc = "" if old_stamp is None else old_stamp[1]
        if old_thing_hlc and thing_hlc <= old_thing_hlc:
            continue
        if not fresh:
            undo.append((thing_stamps, thing_id, ABSENT if old_stamp is None else old_stamp))
        if type(thing) is dict or type(thing) is list:
            thing = copy.deepcopy(thing)
        if lazy:
            thing_stamps[thing_id] = (thing, thing_hlc, None)
            # a thing whose hash is pending already has its dirty entry (with the hash it
            # had when it was last settled): keep that one
            previous = 0 if old_stamp is None else old_stamp[2]
            if previous is not None:
                if dirty is None:
                    dirty = {}
                    new_dirty = True
                elif not new_dirty:
                    undo.append((dirty, thing_id, ABSENT))
                dirty[thing_id] = previous
        else:
            hash_in = thing_in[2] if n > 2 else 0
            thing_stamps[thing_id] = (
                thing,
                thing_hlc,
                hash_in & MASK if type(hash_in) is int else uint32(hash_in),
            )
        winners[thing_id] = thing
        if thing_hlc > things_hlc:
            things_hlc = thing_hlc
    return things_hlc, dirty


def _merge_values(
    store: MergeableStore, values_in: Any, is_content: bool
) -> tuple[str, dict[str, Any]]:
    """Merge the values; returns their greatest HLC and the winners."""
    vstamp = store._vstamp
    n = len(values_in)
    incoming_hlc = values_in[1] if n > 1 else ""
    winners: dict[str, Any] = {}
    value_stamps, old_hlc, old_hash = vstamp
    undo = store._undo
    lazy = not is_content
    values_hlc = _merge_things(
        undo, js_ordered(values_in[0]), value_stamps, False, lazy, store._dirty_values, winners
    )[0]
    hash_ = old_hash if lazy else (values_in[2] if n > 2 else 0)
    _close_stamp(undo, vstamp, incoming_hlc, old_hlc, old_hash, hash_, lazy)
    return (values_hlc if values_hlc > incoming_hlc else incoming_hlc), winners


def _merge_tables(
    store: MergeableStore,
    tables_in: Any,
    is_content: bool,
    encoded: bool,
    plain: bool,
    write: bool,
    deferred: list[tuple[str, str, dict[str, Any]]] | None,
) -> str:
    """Merge the tables and write each row's winners (to ``deferred`` when not None);
    returns the greatest HLC."""
    undo = store._undo
    tables_obj = tables_in[0]
    incoming_tables_hlc = tables_in[1] if len(tables_in) > 1 else ""
    root = store._tstamp
    table_stamps: dict[str, list[Any]] = root[0]
    old_tables_hlc: str = root[1]
    old_tables_hash: int = root[2]
    tables_hash = (tables_in[2] if len(tables_in) > 2 else 0) if is_content else old_tables_hash
    tables_hlc = incoming_tables_hlc
    dirty = store._dirty_cells
    lazy = not is_content
    # no change record yet: rows new to the data can be inserted whole (see _put_new_row)
    clean = not store._changed_cells and not store._track_ids
    for table_id, table_in in js_ordered(tables_obj).items():
        rows_obj = table_in[0]
        incoming_table_hlc = table_in[1] if len(table_in) > 1 else ""
        table_stamp = table_stamps.get(table_id)
        if table_stamp is None:
            table_stamp = table_stamps[table_id] = [{}, "", 0]
            undo.append((table_stamps, table_id, ABSENT))
            table_counted = False
        else:
            table_counted = counted(table_stamp)
        row_stamps: dict[str, list[Any]] = table_stamp[0]
        old_table_hlc: str = table_stamp[1]
        old_table_hash: int = table_stamp[2]
        table_hash = (table_in[2] if len(table_in) > 2 else 0) if is_content else old_table_hash
        table_hlc = incoming_table_hlc
        dirty_rows = dirty.get(table_id)
        for row_id, row_in in js_ordered(rows_obj).items():
            n_row = len(row_in)
            incoming_row_hlc = row_in[1] if n_row > 1 else ""
            row_stamp = row_stamps.get(row_id)
            fresh = row_stamp is None
            if row_stamp is None:
                cell_stamps: dict[str, Any] = {}
                row_stamp = row_stamps[row_id] = [cell_stamps, "", 0]
                undo.append((row_stamps, row_id, ABSENT))
                old_row_hlc = ""
                old_row_hash = 0
                row_counted = False
            else:
                cell_stamps = row_stamp[0]
                old_row_hlc = row_stamp[1]
                old_row_hash = row_stamp[2]
                row_counted = counted(row_stamp)
            row_hash = (row_in[2] if n_row > 2 else 0) if is_content else old_row_hash
            row_hlc = incoming_row_hlc
            winners: dict[str, Any] = {}
            dirty_cells = dirty_rows.get(row_id) if dirty_rows is not None else None
            cells_obj = js_ordered(row_in[0])
            new_row = None
            if fresh and plain and dirty_cells is None and cells_obj:
                # a row this merge creates, of plain cells: every cell wins, so build the
                # stamps and the data row in bulk (shapes differing from the common one fall
                # back to _merge_things)
                try:
                    if lazy:
                        cell_stamps = {c: (v, h, None) for c, (v, h) in cells_obj.items()}
                    else:
                        cell_stamps = {c: (v, h, x & MASK) for c, (v, h, x) in cells_obj.items()}
                except (TypeError, ValueError):
                    cell_stamps = row_stamp[0]
                else:
                    row_stamp[0] = cell_stamps
                    if lazy:
                        dirty_cells = dict.fromkeys(cell_stamps, 0)
                    cells_hlc = max(map(_second, cells_obj.values()))
                    if cells_hlc > row_hlc:
                        row_hlc = cells_hlc
                    new_row = {c: v for c, (v, *_) in cells_obj.items() if v != UNDEFINED}
            if new_row is None:
                pending = dirty_cells
                cells_hlc, dirty_cells = _merge_things(
                    undo, cells_obj, cell_stamps, fresh, lazy, dirty_cells, winners
                )
                if cells_hlc > row_hlc:
                    row_hlc = cells_hlc
                created = pending is None and dirty_cells is not None
            else:
                created = lazy
            if created:
                if dirty_rows is None:
                    dirty_rows = dirty[table_id] = {}
                    undo.append((dirty, table_id, ABSENT))
                dirty_rows[row_id] = dirty_cells  # type: ignore[assignment]
                undo.append((dirty_rows, row_id, ABSENT))
            row_hash = _close_stamp(
                undo, row_stamp, incoming_row_hlc, old_row_hlc, old_row_hash, row_hash, lazy, fresh
            )
            if lazy:
                table_hash ^= _term_change(
                    row_id, old_row_hash, row_counted, row_hash, dirty_cells is not None
                )
            if row_hlc > table_hlc:
                table_hlc = row_hlc
            if not write:
                continue
            if deferred is not None:
                deferred.append((table_id, row_id, new_row if new_row is not None else winners))
            elif new_row:
                if clean:
                    _put_new_row(store, table_id, row_id, new_row, encoded)
                else:
                    _write_merged_row(store, table_id, row_id, new_row, encoded)
            elif winners:
                _write_merged_row(store, table_id, row_id, winners, encoded)
        table_hash = _close_stamp(
            undo, table_stamp, incoming_table_hlc, old_table_hlc, old_table_hash, table_hash, lazy
        )
        if lazy:
            tables_hash ^= _term_change(
                table_id, old_table_hash, table_counted, table_hash, dirty_rows is not None
            )
        if table_hlc > tables_hlc:
            tables_hlc = table_hlc
    _close_stamp(
        undo, root, incoming_tables_hlc, old_tables_hlc, old_tables_hash, tables_hash, lazy
    )
    return tables_hlc


def _put_new_row(
    store: MergeableStore, table_id: str, row_id: str, cells: dict[str, Any], encoded: bool
) -> None:
    """``_write_merged_row`` for plain cells of a row the data does not have yet, called
    only while the transaction has no earlier change record: the row is inserted whole."""
    table = store._tables.get(table_id)
    if table is not None and row_id in table:
        _write_merged_row(store, table_id, row_id, cells, encoded)
        return
    if table is None:
        table = store._new_table(table_id)
    table[row_id] = cells
    store._changed_cells.update({(table_id, row_id, c): [ABSENT, v] for c, v in cells.items()})
    store._new_row_cell_ids(table_id, row_id, cells)


def _plain_number(thing: Any, kind: type) -> bool:
    """``thing`` (of type ``kind``) is an int within 2**53 or a float within the safe
    limit, stored as it is. Why typed: compiled, the range checks are native comparisons."""
    if kind is int:
        whole: int = thing
        return -_BIG_INT <= whole <= _BIG_INT
    if kind is float:
        real: float = thing
        return -_BIG < real < _BIG
    return False


def _write_merged_row(
    store: MergeableStore, table_id: str, row_id: str, cells: dict[str, Any], encoded: bool
) -> None:
    """Write a row's merge winners to the data, as the store's ``_write_cell`` and
    ``_delete_cell`` would (outside of stamping), finding the row's containers once."""
    tables = store._tables
    table = tables.get(table_id)
    row = table.get(row_id) if table is not None else None
    changed = store._changed_cells
    track = store._track_ids
    counts: dict[str, int] | None = None
    for cell_id, thing in cells.items():
        t = type(thing)
        if t is str:
            if thing == UNDEFINED:
                store._delete_cell(table_id, row_id, cell_id)
                table = tables.get(table_id)
                row = table.get(row_id) if table is not None else None
                counts = None
                continue
            cell = thing  # validated: a "\ufffd" string is accepted JSON (encoded only)
        elif t is bool or thing is None or _plain_number(thing, t):
            cell = thing
        else:
            cell = encode_accepted(thing) if encoded else encode_merged(thing)
            if cell is ABSENT:
                continue
        if row is None:
            old = ABSENT
        else:
            old = row.get(cell_id, ABSENT)
            if old is not ABSENT and old == cell and (type(old) is bool) is (t is bool):
                continue
        key = (table_id, row_id, cell_id)
        if row is None:
            if table is None:
                table = store._new_table(table_id)
            row = table[row_id] = {}
            if track:
                store._row_added(table_id, row_id)
        if old is ABSENT:
            if counts is None:
                counts = store._table_cell_ids[table_id]
            count = counts.get(cell_id, 0)
            if count and not track:
                counts[cell_id] = count + 1
            else:
                store._cell_id_added(table_id, row_id, cell_id)
        row[cell_id] = cell
        entry = changed.get(key)
        if entry is None:
            changed[key] = [old, cell]
        else:
            entry[1] = cell
