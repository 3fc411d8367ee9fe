"""TinyBase's MergeableStore: a Store whose every cell and value carries an HLC stamp and a hash.

Local writes take a direct path: a new HLC, the stamp ``(cell, hlc, None)``, and the cell
noted *dirty* with the hash it had; hashes are settled on demand (:mod:`.stamps`). Peer data
takes the one receive path (:mod:`.merge`), validated first; what the store sends (content,
changes, hash trees, diffs) is built by :mod:`.diff`. Cell stamps are immutable tuples
``(cell, hlc, hash)``; row/table/tables stamps are lists ``[children, hlc, hash]``. A
transaction keeps an undo log of ``(container, key, old)`` entries for every stamp it
replaces, so a rollback restores stamps exactly. Invalid or far-future mergeable data is
ignored as a whole and silently, as TinyBase ignores it (``ignored_count`` counts such calls).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

from localsync.core import diff
from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import JSON_PREFIX, UNDEFINED, only_hlc_chars
from localsync.core.collector import paused as _gc_paused
from localsync.core.hlc import (
    HLC_MAX_FUTURE_OFFSET,
    Number,
    clock_with_deferred_seen,
    is_hlc,
    time_prefix_within,
)
from localsync.core.merge import BULK, prechecked, receive
from localsync.core.merge import future_limit as _future_limit
from localsync.core.merge import greatest as _greatest
from localsync.core.stamps import in_parent_hash as _h
from localsync.core.stamps import settle
from localsync.core.store import (
    ABSENT,
    Store,
    _check_content,
    _check_json,
    _encode_tables,
    _encode_values,
    encode_accepted,
    fits_js_number,
)

__all__ = ["MergeableStore", "create_mergeable_store"]

_HLC_RE: Final = re.compile(r"[-0-9A-Z_a-z]{16}")
_BIG_INT: Final = 2**53
_BIG: Final = float(2**53)
#: (localsync.sync.engine's import of diff.STAMP_OVERHEAD)
_STAMP_OVERHEAD: Final = diff.STAMP_OVERHEAD


def _real_now() -> int:
    return time.time_ns() // 1_000_000


class _Validator:
    """TinyBase's validateMergeable, with the future limit and flags fixed for one call.

    Peer data arrives in bulk (a joining replica receives millions of cells), so the cell
    level is one inlined loop and the HLCs are collected and checked all at once at the end
    (lengths via ``map``, characters with one regex over their concatenation, the future
    limit with ``max``): the verdict is the same as checking each stamp in turn.
    """

    __slots__ = (
        "cells",
        "encoded",
        "has_hashes",
        "hlcs",
        "limit",
        "max_time",
        "plain",
    )

    def __init__(self, max_time: Number, has_hashes: bool, encoded: bool) -> None:
        self.max_time = max_time
        self.has_hashes = has_hashes
        self.encoded = encoded
        self.hlcs: list[str] = []
        self.cells = 0  # cells and values seen
        # no object cell and no number beyond 2**53: every cell is stored as it arrived
        self.plain = True
        self.limit = _future_limit(max_time)

    def _time_within_limit(self, time_prefix: str) -> bool:
        """``time_prefix`` (of a well-formed HLC) at most the limit; needs ``limit >= 0``."""
        return time_prefix_within(time_prefix, self.limit)

    def hlc(self, hlc: Any) -> bool:
        if hlc == "":
            return True
        if type(hlc) is not str or len(hlc) != 16 or _HLC_RE.fullmatch(hlc) is None:
            return False
        if self.limit >= 0:
            return self._time_within_limit(hlc[:7])
        return is_hlc(hlc, self.max_time)

    def collected_hlcs(self) -> bool:
        """``hlc()`` of every non-empty HLC the cell loops collected, checked in bulk."""
        hlcs = self.hlcs
        if not hlcs:
            return True
        joined = "".join(hlcs)
        # every length is 16 when none is shorter and they add up to 16 each
        if len(joined) != 16 * len(hlcs) or min(map(len, hlcs)) != 16:
            return False
        if not only_hlc_chars(joined):
            return False
        return self.within_future_limit(hlcs)

    def within_future_limit(self, hlcs: list[str]) -> bool:
        """Every HLC (well-formed, non-empty) at most ``max_time``."""
        if self.limit >= 0:
            return self._time_within_limit(_greatest(hlcs)[:7])
        max_time = self.max_time
        return all(is_hlc(hlc, max_time) for hlc in hlcs)

    def checked(self, data: CheckedChanges) -> bool:
        """``mergeable(data)`` for changes whose shape the engine checked (see
        :class:`CheckedChanges`): what remains is the special values and the future limit."""
        for value in data.special:
            t = type(value)
            if t is str:
                if not self.thing(value):
                    return False
            elif t is int:
                if not fits_js_number(value):
                    return False
                self.plain = False
            elif t is float:
                self.plain = False  # (finite: checked by the engine)
            else:
                if not self.thing(value):
                    return False
                self.plain = False
        hlcs = data.hlcs
        self.cells = len(hlcs)
        return not hlcs or self.within_future_limit(hlcs)

    def mergeable(self, data: Any) -> bool:
        if type(data) is not list and type(data) is not tuple:
            return False
        n = len(data)
        if self.has_hashes:
            if n != 2:
                return False
        elif n != 2 and (n != 3 or type(data[2]) not in (int, float) or data[2] != 1):
            return False
        return (
            self.stamp(data[0], self.tables)
            and self.stamp(data[1], self.things)
            and self.collected_hlcs()
        )

    def stamp(self, stamp: Any, validate_thing: Callable[[Any], bool]) -> bool:
        if type(stamp) is not list and type(stamp) is not tuple:
            return False
        n = len(stamp)
        if n == 3:
            hlc = stamp[1]
            hash_ = stamp[2]
            return (
                type(hlc) is str
                and (type(hash_) is int or (type(hash_) is float and hash_ - hash_ == 0))
                and validate_thing(stamp[0])
                and self.hlc(hlc)
            )
        if self.has_hashes or n == 0 or n > 2:
            return False
        if not validate_thing(stamp[0]):
            return False
        return n == 1 or self.hlc(stamp[1])

    def tables(self, tables: Any) -> bool:
        if type(tables) is not dict:
            return False
        stamp = self.stamp
        rows = self.rows
        for key, value in tables.items():
            if type(key) is not str or not stamp(value, rows):
                return False
        return True

    def rows(self, rows: Any) -> bool:
        if type(rows) is not dict:
            return False
        stamp = self.stamp
        things = self.things
        for key, value in rows.items():
            if type(key) is not str or not stamp(value, things):
                return False
        return True

    def things(self, things: Any) -> bool:
        """``stamp(v, thing)`` for every cell of a row (or every value), inlined."""
        if type(things) is not dict:
            return False
        has_hashes = self.has_hashes
        append = self.hlcs.append
        self.cells += len(things)
        for key, stamp in things.items():
            if type(key) is not str:
                return False
            ts = type(stamp)
            if ts is not list and ts is not tuple:
                return False
            n = len(stamp)
            if n == 3:
                hash_ = stamp[2]
                th = type(hash_)
                if th is not int and (th is not float or hash_ - hash_ != 0):
                    return False
                hlc = stamp[1]
                if type(hlc) is not str:
                    return False
            elif has_hashes:
                return False
            elif n == 2:
                hlc = stamp[1]
                if type(hlc) is not str:
                    return False
            elif n == 1:
                hlc = ""
            else:
                return False
            value = stamp[0]
            t = type(value)
            if t is str:
                if value[:1] == JSON_PREFIX and not self.thing(value):
                    return False
            elif t is int:
                if not -_BIG_INT <= value <= _BIG_INT:
                    if not fits_js_number(value):
                        return False
                    self.plain = False
            elif t is float:
                if not -_BIG < value < _BIG:
                    if value - value != 0:
                        return False
                    self.plain = False
            elif t is not bool and value is not None:
                if not self.thing(value):
                    return False
                self.plain = False
            if hlc:
                append(hlc)
        return True

    def thing(self, value: Any) -> bool:
        t = type(value)
        if t is str:
            if value[:1] != JSON_PREFIX:
                return True
            # an encoded object cell must really hold a JSON object or array: TinyBase would
            # merge the stamp and then fail to decode it on every read, so the set is refused
            return self.encoded and encode_accepted(value) is not ABSENT
        if t is int:
            return fits_js_number(value)
        if t is bool or value is None:
            return True
        if t is float:
            return value - value == 0
        if t is dict or t is list:
            try:
                _check_json(value)
            except (TypeError, ValueError, RecursionError):
                return False
            return True
        return False


class MergeableStore(Store):
    """A TinyBase MergeableStore. Create one with :func:`create_mergeable_store`."""

    def __init__(
        self, unique_id: str | None = None, get_now: Callable[[], Number] | None = None
    ) -> None:
        super().__init__()
        if unique_id is not None and type(unique_id) is not str:
            raise TypeError("unique_id must be a str or None")
        self._get_now: Callable[[], Number] = _real_now if get_now is None else get_now
        clock, seen_hlc_later = clock_with_deferred_seen(unique_id, self._get_now)
        self._hlc_functions = clock
        self._next_hlc = clock.get_next_hlc
        # merges validate every HLC first, so they can leave the fold for the clock's next
        # use (see hlc.clock_with_deferred_seen); tests/core/oracle.py calls seen_hlc
        self._seen_hlc = clock.seen_hlc
        self._seen_merged_hlc = seen_hlc_later
        self._tstamp: list[Any] = [{}, "", 0]  # [{table id: [{row id: [{cell id: (cell, hlc,
        self._vstamp: list[Any] = [{}, "", 0]  #   hash)}, hlc, hash]}, hlc, hash]}, hlc, hash]
        self._dirty_cells: dict[str, dict[str, dict[str, int]]] = {}
        self._dirty_values: dict[str, int] = {}
        self._undo: list[tuple[Any, Any, Any]] = []
        self._listening = True
        self._defaulting = False
        # TinyBase's ``mutated``: a mutator listener changed data (stamped as a local write)
        # while changes were being applied; persisters then save (``had_mutated``)
        self._mutated = False
        self._old_mutated = False
        self.ignored_count = 0

    def is_mergeable(self) -> bool:
        return True

    def get_client_id(self) -> str:
        """The 5-character HLC client id derived from the unique id."""
        return self._hlc_functions.get_client_id()

    # ------------------------------------------------------------------ local writes

    def _write_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        table = self._tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        old = ABSENT if row is None else row.get(cell_id, ABSENT)
        if old is not ABSENT and old == cell and (type(old) is bool) is (type(cell) is bool):
            return
        key = (table_id, row_id, cell_id)
        changed = self._changed_cells
        entry = changed.get(key)
        if self._listening or self._mutating:
            if self._mutating:
                self._mutated = True
            if self._defaulting:
                self._merge_local_cell(table_id, row_id, cell_id, cell)
            else:
                # the direct path: stamp now, hash later (see _settle)
                hlc = self._next_hlc()
                undo = self._undo
                table_stamps = self._tstamp[0]
                table_stamp = table_stamps.get(table_id)
                if table_stamp is None:
                    table_stamp = table_stamps[table_id] = [{}, "", 0]
                    undo.append((table_stamps, table_id, ABSENT))
                elif not table_stamp[0] and not table_stamp[2]:
                    self._uncount_empty_stamp(table_id, table_stamp, None)
                row_stamps = table_stamp[0]
                row_stamp = row_stamps.get(row_id)
                if row_stamp is None:
                    row_stamp = row_stamps[row_id] = [{}, "", 0]
                    undo.append((row_stamps, row_id, ABSENT))
                elif not row_stamp[0] and not row_stamp[2]:
                    self._uncount_empty_stamp(table_id, table_stamp, row_id)
                cell_stamps = row_stamp[0]
                old_stamp = cell_stamps.get(cell_id)
                if old_stamp is None:
                    previous_hash: int | None = 0
                else:
                    if old_stamp[1] >= hlc:
                        raise RuntimeError("tinybase:13: the clock is behind a stamp")
                    previous_hash = old_stamp[2]
                cell_stamps[cell_id] = (cell, hlc, None)
                if entry is None:
                    undo.append((cell_stamps, cell_id, ABSENT if old_stamp is None else old_stamp))
                if previous_hash is not None:
                    dirty = self._dirty_cells
                    dirty_rows = dirty.get(table_id)
                    if dirty_rows is None:
                        dirty_rows = dirty[table_id] = {}
                        undo.append((dirty, table_id, ABSENT))
                    dirty_cells = dirty_rows.get(row_id)
                    if dirty_cells is None:
                        dirty_cells = dirty_rows[row_id] = {}
                        undo.append((dirty_rows, row_id, ABSENT))
                    dirty_cells[cell_id] = previous_hash
                    undo.append((dirty_cells, cell_id, ABSENT))
        if table is None:
            table = self._new_table(table_id)
        if row is None:
            row = table[row_id] = {}
            if self._track_ids:
                self._row_added(table_id, row_id)
        if old is ABSENT:
            counts = self._table_cell_ids[table_id]
            count = counts.get(cell_id, 0)
            if count and not self._track_ids:
                counts[cell_id] = count + 1
            else:
                self._cell_id_added(table_id, row_id, cell_id)
        row[cell_id] = cell
        if entry is None:
            changed[key] = [old, cell]
        else:
            entry[1] = cell

    def _set_cells(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        self._write_cells(table_id, row_id, row)

    def _match_row(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        self._write_cells(table_id, row_id, row)
        existing = self._tables[table_id][row_id]
        if len(existing) != len(row):
            for cell_id in [c for c in existing if c not in row]:
                self._delete_cell(table_id, row_id, cell_id)

    def _write_cells(self, table_id: str, row_id: str, cells: dict[str, Any]) -> None:
        """``_write_cell`` for several cells of one row, finding the row's containers once.

        Same effects, in the same order, as calling ``_write_cell`` per cell; this is the
        path set_row, set_partial_row, set_table and set_tables take for every row.
        """
        if self._defaulting or not (self._listening or self._mutating):
            write = self._write_cell
            for cell_id, cell in cells.items():
                write(table_id, row_id, cell_id, cell)
            return
        mutating = self._mutating
        table = self._tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        changed = self._changed_cells
        undo = self._undo
        next_hlc = self._next_hlc
        track = self._track_ids
        cell_stamps: dict[str, Any] | None = None
        dirty_cells: dict[str, int] | None = None
        counts: dict[str, int] | None = None
        for cell_id, cell in cells.items():
            if row is None:
                old = ABSENT
            else:
                old = row.get(cell_id, ABSENT)
                if (
                    old is not ABSENT
                    and old == cell
                    and (type(old) is bool) is (type(cell) is bool)
                ):
                    continue
            key = (table_id, row_id, cell_id)
            entry = changed.get(key)
            if mutating:
                self._mutated = True
            hlc = next_hlc()
            if cell_stamps is None:
                table_stamps = self._tstamp[0]
                table_stamp = table_stamps.get(table_id)
                if table_stamp is None:
                    table_stamp = table_stamps[table_id] = [{}, "", 0]
                    undo.append((table_stamps, table_id, ABSENT))
                elif not table_stamp[0] and not table_stamp[2]:
                    self._uncount_empty_stamp(table_id, table_stamp, None)
                row_stamps = table_stamp[0]
                row_stamp = row_stamps.get(row_id)
                if row_stamp is None:
                    row_stamp = row_stamps[row_id] = [{}, "", 0]
                    undo.append((row_stamps, row_id, ABSENT))
                elif not row_stamp[0] and not row_stamp[2]:
                    self._uncount_empty_stamp(table_id, table_stamp, row_id)
                cell_stamps = row_stamp[0]
            old_stamp = cell_stamps.get(cell_id)
            if old_stamp is None:
                previous_hash: int | None = 0
            else:
                if old_stamp[1] >= hlc:
                    raise RuntimeError("tinybase:13: the clock is behind a stamp")
                previous_hash = old_stamp[2]
            cell_stamps[cell_id] = (cell, hlc, None)
            if entry is None:
                undo.append((cell_stamps, cell_id, ABSENT if old_stamp is None else old_stamp))
            if previous_hash is not None:
                if dirty_cells is None:
                    dirty = self._dirty_cells
                    dirty_rows = dirty.get(table_id)
                    if dirty_rows is None:
                        dirty_rows = dirty[table_id] = {}
                        undo.append((dirty, table_id, ABSENT))
                    dirty_cells = dirty_rows.get(row_id)
                    if dirty_cells is None:
                        dirty_cells = dirty_rows[row_id] = {}
                        undo.append((dirty_rows, row_id, ABSENT))
                dirty_cells[cell_id] = previous_hash
                undo.append((dirty_cells, cell_id, ABSENT))
            if row is None:
                if table is None:
                    table = self._new_table(table_id)
                row = table[row_id] = {}
                if track:
                    self._row_added(table_id, row_id)
            if old is ABSENT:
                if counts is None:
                    counts = self._table_cell_ids[table_id]
                count = counts.get(cell_id, 0)
                if count and not track:
                    counts[cell_id] = count + 1
                else:
                    self._cell_id_added(table_id, row_id, cell_id)
            row[cell_id] = cell
            if entry is None:
                changed[key] = [old, cell]
            else:
                entry[1] = cell

    def _delete_cell(self, table_id: str, row_id: str, cell_id: str) -> None:
        table = self._tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        if row is None or cell_id not in row:
            return
        key = (table_id, row_id, cell_id)
        entry = self._changed_cells.get(key)
        if self._listening or self._mutating:
            if self._mutating:
                self._mutated = True
            if self._defaulting:
                self._merge_local_cell(table_id, row_id, cell_id, UNDEFINED)
            else:
                self._stamp_local_cell(table_id, row_id, cell_id, UNDEFINED, entry is None)
        old = self._raw_delete_cell(table_id, row_id, cell_id)
        if entry is None:
            self._changed_cells[key] = [old, ABSENT]
        else:
            entry[1] = ABSENT

    def _stamp_local_cell(
        self, table_id: str, row_id: str, cell_id: str, thing: Any, first: bool
    ) -> None:
        hlc = self._next_hlc()
        undo = self._undo
        table_stamps = self._tstamp[0]
        table_stamp = table_stamps.get(table_id)
        if table_stamp is None:
            table_stamp = table_stamps[table_id] = [{}, "", 0]
            undo.append((table_stamps, table_id, ABSENT))
        elif not table_stamp[0] and not table_stamp[2]:
            self._uncount_empty_stamp(table_id, table_stamp, None)
        row_stamps = table_stamp[0]
        row_stamp = row_stamps.get(row_id)
        if row_stamp is None:
            row_stamp = row_stamps[row_id] = [{}, "", 0]
            undo.append((row_stamps, row_id, ABSENT))
        elif not row_stamp[0] and not row_stamp[2]:
            self._uncount_empty_stamp(table_id, table_stamp, row_id)
        cell_stamps = row_stamp[0]
        old_stamp = cell_stamps.get(cell_id)
        if old_stamp is None:
            previous_hash: int | None = 0
        else:
            if old_stamp[1] >= hlc:
                raise RuntimeError("tinybase:13: the clock is behind a stamp")
            previous_hash = old_stamp[2]
        cell_stamps[cell_id] = (thing, hlc, None)
        if first:
            undo.append((cell_stamps, cell_id, ABSENT if old_stamp is None else old_stamp))
        if previous_hash is not None:
            dirty = self._dirty_cells
            dirty_rows = dirty.get(table_id)
            if dirty_rows is None:
                dirty_rows = dirty[table_id] = {}
                undo.append((dirty, table_id, ABSENT))
            dirty_cells = dirty_rows.get(row_id)
            if dirty_cells is None:
                dirty_cells = dirty_rows[row_id] = {}
                undo.append((dirty_rows, row_id, ABSENT))
            dirty_cells[cell_id] = previous_hash
            undo.append((dirty_cells, cell_id, ABSENT))

    def _uncount_empty_stamp(
        self, table_id: str, table_stamp: list[Any], row_id: str | None
    ) -> None:
        """Take an empty row (``row_id``) or table (``None``) out of its parent's hash before
        a local write puts its first cell into it.

        A row stamp with no cells and no HLC (hash 0) that a merge created is counted in its
        table's hash as ``H(rowId:0)``; the same for an empty table in the tables hash. The
        write leaves the row dirty with hash 0, and ``_settle`` folds a dirty zero-hash row
        in without a removal term (it takes 0 to mean "created since the last settle", as
        TinyBase does). So the ``H(rowId:0)`` term goes now, leaving exactly that state, and
        the table's hash stays a function of its rows' stamps (see ``_merge_and_write``).
        """
        undo = self._undo
        root = self._tstamp
        undo.append((root, 2, root[2]))
        if row_id is None:
            root[2] ^= _h(table_id, 0)
            return
        old_table_hash = table_stamp[2]
        new_table_hash = old_table_hash ^ _h(row_id, 0)
        undo.append((table_stamp, 2, old_table_hash))
        table_stamp[2] = new_table_hash
        # (a zero table hash is not counted in the tables hash: the row is pending now)
        root[2] ^= (_h(table_id, old_table_hash) if old_table_hash else 0) ^ (
            _h(table_id, new_table_hash) if new_table_hash else 0
        )

    def _write_value(self, value_id: str, value: Any) -> None:
        values = self._values
        old = values.get(value_id, ABSENT)
        if old is not ABSENT and old == value and (type(old) is bool) is (type(value) is bool):
            return
        entry = self._changed_values.get(value_id)
        if self._listening or self._mutating:
            if self._mutating:
                self._mutated = True
            if self._defaulting:
                self._merge_local_value(value_id, value)
            else:
                self._stamp_local_value(value_id, value, entry is None)
        values[value_id] = value
        if old is ABSENT and self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, 1)
        if entry is None:
            self._changed_values[value_id] = [old, value]
        else:
            entry[1] = value

    def _delete_value(self, value_id: str) -> None:
        if value_id not in self._values:
            return
        entry = self._changed_values.get(value_id)
        if self._listening or self._mutating:
            if self._mutating:
                self._mutated = True
            if self._defaulting:
                self._merge_local_value(value_id, UNDEFINED)
            else:
                self._stamp_local_value(value_id, UNDEFINED, entry is None)
        old = self._values.pop(value_id)
        if self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, -1)
        if entry is None:
            self._changed_values[value_id] = [old, ABSENT]
        else:
            entry[1] = ABSENT

    def _stamp_local_value(self, value_id: str, thing: Any, first: bool) -> None:
        hlc = self._next_hlc()
        undo = self._undo
        value_stamps = self._vstamp[0]
        old_stamp = value_stamps.get(value_id)
        if old_stamp is None:
            previous_hash: int | None = 0
        else:
            if old_stamp[1] >= hlc:
                raise RuntimeError("tinybase:13: the clock is behind a stamp")
            previous_hash = old_stamp[2]
        value_stamps[value_id] = (thing, hlc, None)
        if first:
            undo.append((value_stamps, value_id, ABSENT if old_stamp is None else old_stamp))
        if previous_hash is not None:
            self._dirty_values[value_id] = previous_hash
            undo.append((self._dirty_values, value_id, ABSENT))

    def _merge_local_cell(self, table_id: str, row_id: str, cell_id: str, thing: Any) -> None:
        """A defaulted write (set_default_content): TinyBase merges it with an empty HLC."""
        self._settle()
        self._merge([[{table_id: [{row_id: [{cell_id: [thing, ""]}]}]}], [{}], 1], False)

    def _merge_local_value(self, value_id: str, thing: Any) -> None:
        self._settle()
        self._merge([[{}], [{value_id: [thing, ""]}], 1], False)

    # ------------------------------------------------------------------ lazy hashes

    def _settle(self) -> None:
        """Fold the hashes of written and merged cells and values into their parents' hashes."""
        settle(
            self._tstamp,
            self._dirty_cells,
            self._vstamp,
            self._dirty_values,
            self._undo if self._depth > 0 else None,
        )

    # ------------------------------------------------------------------ transactions

    def _post_finish_transaction(self, rolled_back: bool) -> None:
        if self._undo:
            self._undo = []

    def _pre_start_transaction(self) -> None:
        self._old_mutated = self._mutated

    def had_mutated(self) -> bool:
        """Whether mutator listeners changed data since the last call (and reset it).

        TinyBase's ``hadMutated``: a persister asks after each load or pushed change, and
        saves when it is true, so that what a mutator listener derived from loaded data is
        persisted (and sent to peers, for a synchronizer) instead of staying local.
        """
        result = self._mutated
        self._mutated = False
        return result

    def _rollback_stamps(self) -> None:
        self._mutated = self._old_mutated
        undo = self._undo
        while undo:
            container, key, old = undo.pop()
            if old is ABSENT:
                container.pop(key, None)
            else:
                container[key] = old

    # ------------------------------------------------------------------ receiving

    def _verdict(self, data: Any, is_content: bool, encoded: bool) -> tuple[bool, int, bool]:
        """The one validation of received data: ``(valid, cells, plain)`` (see ``receive``).

        Changes a sync engine checked (:class:`CheckedChanges`) skip the validator when
        their shape check leaves only the future limit to decide (``merge.prechecked``).
        """
        max_time = self._get_now() + HLC_MAX_FUTURE_OFFSET
        checked = type(data) is CheckedChanges and encoded and not is_content
        if checked and prechecked(data, max_time):
            return True, len(data.hlcs), True
        validator = _Validator(max_time, is_content, encoded)
        try:
            valid = validator.checked(data) if checked else validator.mergeable(data)
        except RecursionError:
            valid = False
        return valid, validator.cells, validator.plain

    def _merge_in(self, data: Any, is_content: bool, encoded: bool) -> MergeableStore:
        with self.lock:
            valid, cells, plain = self._verdict(data, is_content, encoded)
            if not valid:
                self.ignored_count += 1
            elif cells < BULK:
                self._txn(receive, self, data, is_content, encoded, plain, True)
            else:
                with _gc_paused:
                    self._txn(receive, self, data, is_content, encoded, plain, True)
        return self

    def _merge(self, data: Any, is_content: bool) -> None:
        """Merge stamps only (a defaulted local write, whose data the caller writes)."""
        receive(self, data, is_content, False, False, False)

    def apply_mergeable_changes(self, mergeable_changes: Any) -> MergeableStore:
        """Merge changes (or content) from a peer; invalid or far-future data is ignored."""
        return self._merge_in(mergeable_changes, False, False)

    def apply_encoded_mergeable_changes(self, mergeable_changes: Any) -> MergeableStore:
        return self._merge_in(mergeable_changes, False, True)

    def set_mergeable_content(self, mergeable_content: Any) -> MergeableStore:
        """Replace everything with a peer's content, trusting its hashes (as TinyBase does)."""
        return self._merge_in(mergeable_content, True, False)

    def set_encoded_mergeable_content(self, mergeable_content: Any) -> MergeableStore:
        return self._merge_in(mergeable_content, True, True)

    def merge(self, mergeable_store: MergeableStore) -> MergeableStore:
        """Exchange full contents with another MergeableStore (TinyBase's merge)."""
        content = self.get_mergeable_content()
        other_content = mergeable_store.get_mergeable_content()
        mergeable_store.apply_mergeable_changes(content)
        return self.apply_mergeable_changes(other_content)

    def set_default_content(self, content: Any) -> MergeableStore:
        """Set content stamped with empty HLCs, so that any peer's real data wins over it."""
        if callable(content):
            content = content()
        tables, values = _check_content(content)
        encoded_tables = _encode_tables(tables)
        encoded_values = _encode_values(values)
        self._txn(self._set_default, encoded_tables, encoded_values)
        return self

    def _set_default(self, tables: dict[str, Any], values: dict[str, Any]) -> None:
        self._defaulting = True
        try:
            self._apply_content(tables, values)
        finally:
            self._defaulting = False

    # ------------------------------------------------------------------ content out

    def get_mergeable_content(self) -> list[Any]:
        """``[[tables, hlc, hash], [values, hlc, hash]]`` with decoded cells."""
        with self.lock, _gc_paused:
            self._settle()
            return diff.content(self._tstamp, self._vstamp, False)

    def get_encoded_mergeable_content(self) -> list[Any]:
        """As get_mergeable_content, with object cells in stored ``"\\ufffd..."`` form."""
        with self.lock, _gc_paused:
            self._settle()
            return diff.content(self._tstamp, self._vstamp, True)

    def get_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        """The stamps this transaction touched, as ``[tables, values, 1]`` changes."""
        return self._transaction_mergeable_changes(with_hashes, False)

    def get_encoded_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        return self._transaction_mergeable_changes(with_hashes, True)

    def _transaction_mergeable_changes(self, with_hashes: bool, encoded: bool) -> list[Any]:
        with self.lock, _gc_paused:
            if with_hashes:
                self._settle()
            return diff.transaction_changes(
                self._tstamp,
                self._vstamp,
                self._changed_cells,
                self._changed_values,
                with_hashes,
                encoded,
            )

    def get_transaction_touched(self) -> tuple[dict[Any, Any], dict[str, Any]]:
        """What this transaction touched: its change-record dicts, keyed by cell and value.

        Called from a did-finish-transaction listener. The dicts are replaced, never
        cleared, when the next transaction starts, so holding them costs no copy; a
        synchronizer queues them and builds the wire records later, for many transactions
        at once (:meth:`get_encoded_mergeable_changes_of`).
        """
        cells = self._changed_cells
        values = self._changed_values
        # (an empty dict is reused by the next transaction: never hand that one out)
        return cells if cells else {}, values if values else {}

    def get_encoded_mergeable_changes_of(
        self,
        touched: list[tuple[dict[Any, Any], dict[str, Any]]],
        max_stamps: int,
        max_bytes: int,
    ) -> list[list[Any]]:
        """ContentDiff bodies (encoded, no hashes) for everything a run of transactions touched.

        Built from the current stamps rather than from one record per transaction, merged:
        the result is the same (a merge keeps the newest stamp per cell and value and the
        latest row, table and root HLCs, and the current stamps are exactly those), in one
        pass. A stamp newer than the run is simply sent a little early. Bodies are cut
        between transactions once ``max_stamps`` stamps or about ``max_bytes`` bytes are
        reached, so no transaction is ever split.
        """
        with self.lock:
            return diff.encoded_changes_of(
                self._tstamp, self._vstamp, touched, max_stamps, max_bytes
            )

    # ------------------------------------------------------------------ hashes and diffs

    def get_mergeable_content_hashes(self) -> list[int]:
        with self.lock, _gc_paused:
            self._settle()
            return [self._tstamp[2], self._vstamp[2]]

    def get_mergeable_table_hashes(self) -> dict[str, int]:
        with self.lock, _gc_paused:
            self._settle()
            return {table_id: stamp[2] for table_id, stamp in self._tstamp[0].items()}

    def get_mergeable_table_diff(self, other_table_hashes: dict[str, Any]) -> list[Any]:
        """``[new tables stamp, {table id: our hash}]`` for tables the other side lacks or
        has differently."""
        diff.check_mapping(other_table_hashes)
        with self.lock, _gc_paused:
            self._settle()
            return diff.table_diff(self._tstamp, other_table_hashes)

    def get_mergeable_row_hashes(self, other_table_hashes: dict[str, Any]) -> dict[str, Any]:
        diff.check_mapping(other_table_hashes)
        with self.lock:
            self._settle()
            return diff.row_hashes(self._tstamp, other_table_hashes)

    def get_mergeable_row_diff(self, other_table_row_hashes: dict[str, Any]) -> list[Any]:
        diff.check_mapping(other_table_row_hashes)
        with self.lock, _gc_paused:
            self._settle()
            return diff.row_diff(self._tstamp, other_table_row_hashes)

    def get_mergeable_cell_hashes(self, other_table_row_hashes: dict[str, Any]) -> dict[str, Any]:
        diff.check_mapping(other_table_row_hashes)
        with self.lock:
            self._settle()
            return diff.cell_hashes(self._tstamp, other_table_row_hashes)

    def get_mergeable_cell_diff(self, other_table_row_cell_hashes: dict[str, Any]) -> list[Any]:
        diff.check_mapping(other_table_row_cell_hashes)
        with self.lock, _gc_paused:
            self._settle()
            return diff.cell_diff(self._tstamp, other_table_row_cell_hashes)

    def get_mergeable_value_hashes(self) -> dict[str, int]:
        with self.lock:
            self._settle()
            return {value_id: stamp[2] for value_id, stamp in self._vstamp[0].items()}

    def get_mergeable_value_diff(self, other_value_hashes: dict[str, Any]) -> list[Any]:
        diff.check_mapping(other_value_hashes)
        with self.lock:
            self._settle()
            return diff.value_diff(self._vstamp, other_value_hashes)


def create_mergeable_store(
    unique_id: str | None = None, get_now: Callable[[], Number] | None = None
) -> MergeableStore:
    """A new, empty MergeableStore (TinyBase's ``createMergeableStore(uniqueId, getNow)``).

    ``unique_id`` seeds the 5-character HLC client id exactly as TinyBase does (random when
    None); ``get_now`` returns milliseconds since the epoch (default: the real clock).
    """
    return MergeableStore(unique_id, get_now)
