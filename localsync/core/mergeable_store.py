"""TinyBase's MergeableStore: a Store whose every cell and value carries an HLC stamp and a hash.

Why it is built this way (and not as a line-by-line port):

* TinyBase runs its general merge routine for every local write. Here a local write takes a
  direct path: it draws an HLC, replaces the cell's stamp with ``(cell, hlc, None)`` and notes
  the cell as *dirty* together with the hash it had. Hashes are only read when peers compare
  hash trees, so the dirty cells are *settled* on demand (before any hash, diff, content or
  merge): each one's hash is computed once and folded into its row, table and the tables hash
  with exactly the XOR updates TinyBase would have made one write at a time. The telescoping
  XORs give the same numbers, including TinyBase's quirks (trusted hashes from
  ``set_mergeable_content`` stay trusted; the ``H(id:0)`` legacy term; a zero row hash adding
  no removal term), except one: an empty row or table (hash 0, no children) merged again or
  written into keeps a single ``H(id:0)`` term in its parent, where TinyBase adds a second and
  replicas split (see ``_counted``).
* Changes from peers (``apply_mergeable_changes``, ``set_mergeable_content``, ``merge``) get
  TinyBase's own stamps, hashes and clock effects (``mergeContentOrChanges``), down to hashing
  the *decoded* object of an object cell, but not by running its general routine: receiving
  is what a reader of a busy channel and a replica joining a large one spend their time on.
  The fast path merges and writes one row at a time; a row new to the store is built whole;
  validation is one inlined pass with the HLCs checked in bulk; merged *changes* leave their
  cells' hashes to be settled lazily like local writes (content carries trusted hashes); and
  the cyclic GC is paused during bulk work. The line-by-line port (``_merge``) is kept as the
  reference the fast path is tested against (``_reference_receive``), and still serves
  default content and writes made from mutator listeners.
* Cell stamps are immutable tuples ``(cell, hlc, hash)``; row/table/tables stamps are lists
  ``[children, hlc, hash]``. A transaction keeps an undo log of ``(container, key, old)``
  entries for every stamp it replaces, so a rollback restores stamps exactly and no closure is
  created per cell.
* Invalid or far-future mergeable data is ignored as a whole and silently, exactly as TinyBase
  ignores it (``ignored_count`` counts such calls).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final

from fnv_hash_fast import fnv1a_32

from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import (
    JSON_PREFIX,
    SAFE_FLOAT_LIMIT,
    SAFE_INT_LIMIT,
    UNDEFINED,
)
from localsync.core.codec import STAMP_OVERHEAD as _STAMP_OVERHEAD
from localsync.core.collector import paused as _gc_paused
from localsync.core.hash import MAX_HASH, get_value_hash, to_utf8
from localsync.core.hlc import (
    HLC_MAX_FUTURE_OFFSET,
    Number,
    clock_with_deferred_seen,
    future_limit,
    time_prefix_within,
)
from localsync.core.store import (
    ABSENT,
    Store,
    _check_content,
    _encode_tables,
    _encode_values,
    decode,
    encode_accepted,
    js_ordered,
)
from localsync.core.validation import Validator, greatest

__all__ = ["MergeableStore", "create_mergeable_store"]

_MASK: Final = MAX_HASH
_BIG_INT: Final = SAFE_INT_LIMIT
_BIG: Final = SAFE_FLOAT_LIMIT
_second: Final = itemgetter(1)


_BULK: Final = 1000  # cells in one merge from which pausing the collector pays


def _h(id_: str, hash_: int) -> int:
    """TinyBase's getValueInValuesHash: ``H(id + ":" + hash)``."""
    if hash_ == 0:
        cached = _H0.get(id_)
        if cached is not None:
            return cached
    text = f"{id_}:{hash_}"
    try:
        result = fnv1a_32(text.encode())
    except UnicodeEncodeError:
        result = fnv1a_32(to_utf8(text))
    if hash_ == 0 and len(_H0) < 65536:
        _H0[id_] = result
    return result


# H(id:0) is needed for every new cell and value (TinyBase's legacy term); ids repeat a lot.
_H0: Final[dict[str, int]] = {}


def _hlc_hash(hlc: str) -> int:
    try:
        return fnv1a_32(hlc.encode())
    except UnicodeEncodeError:
        return fnv1a_32(to_utf8(hlc))


def _replace_hlc_hash(old_hlc: str, new_hlc: str) -> int:
    if new_hlc > old_hlc:
        return (_hlc_hash(old_hlc) if old_hlc else 0) ^ _hlc_hash(new_hlc)
    return 0


def _counted(stamp: list[Any]) -> bool:
    """Whether an existing row or table stamp's ``H(id:hash)`` term is in its parent's hash.

    TinyBase removes a stamp's old term only when its old hash is not 0, taking 0 to mean
    "created by this merge". But a row with no cells and no HLC (or a table with no rows)
    that a merge created has hash 0 *and* its ``H(id:0)`` term in the parent: TinyBase adds a
    second one each time it is merged again or written into, so the parent's hash toggles
    with every receipt and replicas that received it an odd and an even number of times
    disagree for good (issue 16 item 4). Counted: a non-zero hash, or no children at all.
    A zero-hash stamp with children is one whose cells were written and not yet settled
    (``_settle``), or a 2**-32 coincidence that TinyBase treats the same way.
    """
    return bool(stamp[2]) or not stamp[0]


def _uint32(number: Any) -> int:
    """JavaScript ``number >>> 0`` for a hash that a peer sent (any finite number)."""
    if type(number) is not int:
        number = int(number)  # truncates toward zero, as ToUint32 does
    return number & _MASK


def _public(thing: Any) -> Any:
    """Decoded form of a stamped thing for public output (fresh objects, never shared)."""
    t = type(thing)
    if t is str:
        if thing[:1] == JSON_PREFIX:
            return decode(thing)
        return thing
    if t is dict or t is list:
        return copy.deepcopy(thing)
    return thing


def _raw(thing: Any) -> Any:
    """Stored form of a stamped thing for the wire (object cells stay ``"\\ufffd..."``)."""
    if type(thing) is dict or type(thing) is list:
        return copy.deepcopy(thing)
    return thing


def _changes_body(
    tables: dict[str, Any], tables_hlc: str, values: dict[str, Any], values_hlc: str
) -> list[Any]:
    """``[[tables, hlc], [values, hlc], 1]`` with TinyBase's stampNew rule for empty HLCs."""
    return [
        [tables, tables_hlc] if tables_hlc else [tables],
        [values, values_hlc] if values_hlc else [values],
        1,
    ]


def _stamp(thing: Any, hlc: str) -> list[Any]:
    """TinyBase's stampNew: ``[thing]`` when the HLC is empty, else ``[thing, hlc]``."""
    return [thing, hlc] if hlc else [thing]


def _real_now() -> int:
    return time.time_ns() // 1_000_000


class MergeableStore(Store):
    """A TinyBase MergeableStore. Create one with :func:`create_mergeable_store`."""

    # True: merge peer data with the line-by-line port (settle, ``_merge``, then write the
    # winners) instead of the fused fast path. The port is the executable specification the
    # fast path is tested against (tests/core/test_store_receive.py).
    _reference_receive = False

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
        # use (see hlc.clock_with_deferred_seen); the reference port keeps calling seen_hlc
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
    #
    # One path stamps every local write (set/delete of cells and values): _stamp_local_write,
    # or for the cells of one row _write_cells with the row's containers found once. Both
    # stamp through _stamp_local into the containers of _local_cell_stamps and _dirty_row.

    def _write_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        self._write_cells(table_id, row_id, {cell_id: cell})

    def _set_cells(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        self._write_cells(table_id, row_id, row)

    def _match_row(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        self._write_cells(table_id, row_id, row)
        existing = self._tables[table_id][row_id]
        if len(existing) != len(row):
            for cell_id in [c for c in existing if c not in row]:
                self._delete_cell(table_id, row_id, cell_id)

    def _write_cells(self, table_id: str, row_id: str, cells: dict[str, Any]) -> None:
        """Write cells of one row (the path of every set_cell, set_row, set_partial_row,
        set_table and set_tables), stamping each as :meth:`_stamp_local_write` does.

        The row's stamp and dirty containers are found once for all its cells: a row
        written by a local transaction is the commonest write there is.
        """
        table = self._tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        changed = self._changed_cells
        track = self._track_ids
        stamping = self._listening or self._mutating
        # (writes from mutator listeners and defaulted ones take the general path)
        direct = stamping and not (self._mutating or self._defaulting)
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
            if direct:
                if cell_stamps is None:
                    cell_stamps = self._local_cell_stamps(table_id, row_id)
                previous_hash = self._stamp_local(cell_stamps, cell_id, cell, entry is None)
                if previous_hash is not None:
                    if dirty_cells is None:
                        dirty_cells = self._dirty_row(table_id, row_id)
                    self._mark_dirty(dirty_cells, cell_id, previous_hash)
            elif stamping:
                self._stamp_local_write(table_id, row_id, cell_id, cell, entry is None)
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
        if self._listening or self._mutating:
            table = self._tables.get(table_id)
            row = table.get(row_id) if table is not None else None
            if row is not None and cell_id in row:
                first = (table_id, row_id, cell_id) not in self._changed_cells
                self._stamp_local_write(table_id, row_id, cell_id, UNDEFINED, first)
        super()._delete_cell(table_id, row_id, cell_id)

    def _write_value(self, value_id: str, value: Any) -> None:
        if self._listening or self._mutating:
            old = self._values.get(value_id, ABSENT)
            if old is not ABSENT and old == value and (type(old) is bool) is (type(value) is bool):
                return
            first = value_id not in self._changed_values
            self._stamp_local_write(None, "", value_id, value, first)
        super()._write_value(value_id, value)

    def _delete_value(self, value_id: str) -> None:
        if (self._listening or self._mutating) and value_id in self._values:
            first = value_id not in self._changed_values
            self._stamp_local_write(None, "", value_id, UNDEFINED, first)
        super()._delete_value(value_id)

    def _stamp_local_write(
        self, table_id: str | None, row_id: str, thing_id: str, thing: Any, first: bool
    ) -> None:
        """Stamp a local write of cell ``thing_id`` of a row or, when ``table_id`` is None, of
        value ``thing_id``: ``thing`` is the stored cell or value (UNDEFINED: deleted).

        Args:
            first: the first write of this cell or value in the transaction (its old stamp
                goes to the undo log).

        The stamp is ``(thing, fresh HLC, None)`` and its hash is left to :meth:`_settle`
        (hashes are only read when peers compare hash trees); a defaulted write is merged
        as TinyBase merges it (:meth:`_merge_local`).
        """
        if self._mutating:
            self._mutated = True
        if self._defaulting:
            self._merge_local(table_id, row_id, thing_id, thing)
            return
        stamps = self._vstamp[0] if table_id is None else self._local_cell_stamps(table_id, row_id)
        previous_hash = self._stamp_local(stamps, thing_id, thing, first)
        if previous_hash is not None:
            dirty = self._dirty_values if table_id is None else self._dirty_row(table_id, row_id)
            self._mark_dirty(dirty, thing_id, previous_hash)

    def _stamp_local(
        self, stamps: dict[str, Any], thing_id: str, thing: Any, first: bool
    ) -> int | None:
        """Replace stamp ``thing_id`` of ``stamps`` by ``(thing, fresh HLC, None)``.

        Returns the hash to note for :meth:`_settle` (the old stamp's, 0 for a new one), or
        None when the old stamp is not settled yet (already noted). ``first``: log the old
        stamp for undo. Raises RuntimeError ``tinybase:13`` when the clock is behind it.
        """
        hlc = self._next_hlc()
        old_stamp = stamps.get(thing_id)
        if old_stamp is None:
            previous_hash: int | None = 0
        else:
            if old_stamp[1] >= hlc:
                raise RuntimeError("tinybase:13: the clock is behind a stamp")
            previous_hash = old_stamp[2]
        stamps[thing_id] = (thing, hlc, None)
        if first:
            self._undo.append((stamps, thing_id, ABSENT if old_stamp is None else old_stamp))
        return previous_hash

    def _mark_dirty(self, dirty: dict[str, int], thing_id: str, previous_hash: int) -> None:
        """Note a stamp for :meth:`_settle` with the hash its parent's hash still holds."""
        dirty[thing_id] = previous_hash
        self._undo.append((dirty, thing_id, ABSENT))

    def _local_cell_stamps(self, table_id: str, row_id: str) -> dict[str, Any]:
        """The cell stamps of a row a local write goes into (see :meth:`_local_container`)."""
        table_stamp = self._local_container(self._tstamp[0], table_id, None)
        return self._local_container(table_stamp[0], table_id, row_id)[0]

    def _local_container(
        self, stamps: dict[str, Any], table_id: str, row_id: str | None
    ) -> list[Any]:
        """Table stamp ``table_id`` (``row_id`` None) or row stamp ``row_id`` in ``stamps``,
        made (and logged for undo) when missing; an empty one counted in its parent's hash
        is taken out of it first (:meth:`_uncount_empty_stamp`)."""
        id_ = table_id if row_id is None else row_id
        stamp: list[Any] | None = stamps.get(id_)
        if stamp is None:
            stamp = stamps[id_] = [{}, "", 0]
            self._undo.append((stamps, id_, ABSENT))
        elif not stamp[0] and not stamp[2]:
            self._uncount_empty_stamp(table_id, row_id)
        return stamp

    def _dirty_row(self, table_id: str, row_id: str) -> dict[str, int]:
        """The dirty cells of a row (:meth:`_settle`), made (and logged for undo) when missing."""
        return self._logged_dict(self._logged_dict(self._dirty_cells, table_id), row_id)

    def _logged_dict(self, parent: dict[str, Any], key: str) -> dict[str, Any]:
        child: dict[str, Any] | None = parent.get(key)
        if child is None:
            child = parent[key] = {}
            self._undo.append((parent, key, ABSENT))
        return child

    def _uncount_empty_stamp(self, table_id: str, row_id: str | None) -> None:
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
        table_stamp = root[0][table_id]
        old_table_hash = table_stamp[2]
        new_table_hash = old_table_hash ^ _h(row_id, 0)
        undo.append((table_stamp, 2, old_table_hash))
        table_stamp[2] = new_table_hash
        # (a zero table hash is not counted in the tables hash: the row is pending now)
        root[2] ^= (_h(table_id, old_table_hash) if old_table_hash else 0) ^ (
            _h(table_id, new_table_hash) if new_table_hash else 0
        )

    def _merge_local(self, table_id: str | None, row_id: str, thing_id: str, thing: Any) -> None:
        """A defaulted write (set_default_content) of a cell or value (``table_id`` None), as
        :meth:`_stamp_local_write` takes them: TinyBase merges it with an empty HLC."""
        self._settle()
        stamp = {thing_id: [thing, ""]}
        if table_id is None:
            self._merge([[{}], [stamp], 1], False)
        else:
            self._merge([[{table_id: [{row_id: [stamp]}]}], [{}], 1], False)

    # ------------------------------------------------------------------ lazy hashes

    def _settle(self) -> None:
        """Fold the hashes of locally written cells and values into their parents' hashes."""
        log = self._depth > 0
        undo = self._undo
        dirty = self._dirty_cells
        if dirty:
            root = self._tstamp
            table_stamps = root[0]
            tables_delta = 0
            for table_id, rows in dirty.items():
                table_stamp = table_stamps.get(table_id)
                if table_stamp is None:
                    continue
                row_stamps = table_stamp[0]
                table_delta = 0
                for row_id, cells in rows.items():
                    row_stamp = row_stamps.get(row_id)
                    if row_stamp is None:
                        continue
                    cell_stamps = row_stamp[0]
                    row_delta = 0
                    for cell_id, previous in cells.items():
                        stamp = cell_stamps.get(cell_id)
                        if stamp is None:
                            continue
                        cell, hlc, hash_ = stamp
                        if hash_ is None:
                            # get_value_hash, with its commonest case inlined
                            if type(cell) is int and -_BIG_INT <= cell <= _BIG_INT:
                                text = f"{cell}:{hlc}"
                                try:
                                    hash_ = fnv1a_32(text.encode())
                                except UnicodeEncodeError:
                                    hash_ = fnv1a_32(to_utf8(text))
                            else:
                                hash_ = get_value_hash(cell, hlc)
                            cell_stamps[cell_id] = (cell, hlc, hash_)
                        if hash_ != previous:
                            old_term = _H0.get(cell_id) if previous == 0 else None
                            if old_term is None:
                                old_term = _h(cell_id, previous)
                            text = f"{cell_id}:{hash_}"
                            try:
                                row_delta ^= old_term ^ fnv1a_32(text.encode())
                            except UnicodeEncodeError:
                                row_delta ^= old_term ^ fnv1a_32(to_utf8(text))
                    old_row_hash = row_stamp[2]
                    new_row_hash = old_row_hash ^ row_delta
                    if log:
                        undo.append((row_stamp, 2, old_row_hash))
                    row_stamp[2] = new_row_hash
                    table_delta ^= (_h(row_id, old_row_hash) if old_row_hash else 0) ^ _h(
                        row_id, new_row_hash
                    )
                old_table_hash = table_stamp[2]
                new_table_hash = old_table_hash ^ table_delta
                if log:
                    undo.append((table_stamp, 2, old_table_hash))
                table_stamp[2] = new_table_hash
                tables_delta ^= (_h(table_id, old_table_hash) if old_table_hash else 0) ^ _h(
                    table_id, new_table_hash
                )
            if log:
                undo.append((root, 2, root[2]))
                for table_id, rows in dirty.items():
                    undo.append((dirty, table_id, rows))
            root[2] ^= tables_delta
            dirty.clear()
        if self._dirty_values:
            self._settle_values()

    def _settle_values(self) -> None:
        log = self._depth > 0
        undo = self._undo
        dirty_values = self._dirty_values
        if dirty_values:
            root = self._vstamp
            value_stamps = root[0]
            delta = 0
            for value_id, previous in dirty_values.items():
                stamp = value_stamps.get(value_id)
                if stamp is None:
                    continue
                hash_ = stamp[2]
                if hash_ is None:
                    hash_ = get_value_hash(stamp[0], stamp[1])
                    value_stamps[value_id] = (stamp[0], stamp[1], hash_)
                if hash_ != previous:
                    delta ^= _h(value_id, previous) ^ _h(value_id, hash_)
            if log:
                undo.append((root, 2, root[2]))
                for value_id, previous in dirty_values.items():
                    undo.append((dirty_values, value_id, previous))
            root[2] ^= delta
            dirty_values.clear()

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

    # ------------------------------------------------------------------ merging

    def _merge(self, data: Any, is_content: bool) -> list[Any]:
        """TinyBase's mergeContentOrChanges (stamps and hashes only; returns the changes)."""
        undo = self._undo
        tables_changes: dict[str, dict[str, dict[str, Any]]] = {}
        values_changes: dict[str, Any] = {}
        tables_in = data[0]
        tables_obj = tables_in[0]
        incoming_tables_hlc = tables_in[1] if len(tables_in) > 1 else ""
        incoming_tables_hash = tables_in[2] if len(tables_in) > 2 else 0
        root = self._tstamp
        table_stamps, old_tables_hlc, old_tables_hash = root
        tables_hash = incoming_tables_hash if is_content else old_tables_hash
        tables_hlc = incoming_tables_hlc
        merge_things = self._merge_things
        for table_id, table_in in js_ordered(tables_obj).items():
            rows_obj = table_in[0]
            incoming_table_hlc = table_in[1] if len(table_in) > 1 else ""
            incoming_table_hash = table_in[2] if len(table_in) > 2 else 0
            table_stamp = table_stamps.get(table_id)
            if table_stamp is None:
                table_stamp = table_stamps[table_id] = [{}, "", 0]
                undo.append((table_stamps, table_id, ABSENT))
                counted = False
            else:
                counted = _counted(table_stamp)
            row_stamps, old_table_hlc, old_table_hash = table_stamp
            table_hash = incoming_table_hash if is_content else old_table_hash
            table_hlc = incoming_table_hlc
            table_changes = tables_changes.get(table_id)
            if table_changes is None:
                table_changes = tables_changes[table_id] = {}
            for row_id, row_in in js_ordered(rows_obj).items():
                row_stamp = row_stamps.get(row_id)
                fresh = row_stamp is None
                if fresh:
                    row_stamp = row_stamps[row_id] = [{}, "", 0]
                    undo.append((row_stamps, row_id, ABSENT))
                    row_counted = False
                else:
                    row_counted = _counted(row_stamp)
                row_changes = table_changes.get(row_id)
                if row_changes is None:
                    row_changes = table_changes[row_id] = {}
                row_hlc, old_row_hash, row_hash = merge_things(
                    row_in, row_stamp, row_changes, is_content, fresh
                )
                if not is_content:
                    table_hash ^= (_h(row_id, old_row_hash) if row_counted else 0) ^ _h(
                        row_id, row_hash
                    )
                if row_hlc > table_hlc:
                    table_hlc = row_hlc
            if not is_content:
                table_hash ^= _replace_hlc_hash(old_table_hlc, incoming_table_hlc)
            undo.append((table_stamp, 1, old_table_hlc))
            undo.append((table_stamp, 2, old_table_hash))
            if incoming_table_hlc > old_table_hlc:
                table_stamp[1] = incoming_table_hlc
            table_stamp[2] = _uint32(table_hash)
            if not is_content:
                tables_hash ^= (_h(table_id, old_table_hash) if counted else 0) ^ _h(
                    table_id, table_stamp[2]
                )
            if table_hlc > tables_hlc:
                tables_hlc = table_hlc
        if not is_content:
            tables_hash ^= _replace_hlc_hash(old_tables_hlc, incoming_tables_hlc)
        undo.append((root, 1, old_tables_hlc))
        undo.append((root, 2, old_tables_hash))
        if incoming_tables_hlc > old_tables_hlc:
            root[1] = incoming_tables_hlc
        root[2] = _uint32(tables_hash)
        values_hlc = merge_things(data[1], self._vstamp, values_changes, is_content)[0]
        self._seen_hlc(tables_hlc if tables_hlc > values_hlc else values_hlc)
        return [tables_changes, values_changes, 1]

    def _merge_things(
        self,
        things_in: Any,
        stamp: list[Any],
        changes: dict[str, Any],
        is_content: bool,
        fresh: bool = False,
    ) -> tuple[str, int, int]:
        """TinyBase's mergeCellsOrValues for one row or the values.

        ``fresh``: the row stamp was created by this merge, and undoing that creation undoes
        everything in it, so no per-cell undo entries are needed.
        """
        undo = self._undo
        things_obj = things_in[0]
        incoming_hlc = things_in[1] if len(things_in) > 1 else ""
        incoming_hash = things_in[2] if len(things_in) > 2 else 0
        thing_stamps, old_hlc, old_hash = stamp
        things_hlc = incoming_hlc
        things_hash = incoming_hash if is_content else old_hash
        for thing_id, thing_in in js_ordered(things_obj).items():
            thing = thing_in[0]
            n = len(thing_in)
            thing_hlc = thing_in[1] if n > 1 else ""
            thing_stamp = thing_stamps.get(thing_id)
            if thing_stamp is None:
                old_thing_hlc = ""
                old_thing_hash = 0
            else:
                old_thing_hlc = thing_stamp[1]
                old_thing_hash = thing_stamp[2]
            if not old_thing_hlc or thing_hlc > old_thing_hlc:
                if not fresh:
                    undo.append(
                        (thing_stamps, thing_id, ABSENT if thing_stamp is None else thing_stamp)
                    )
                if is_content:
                    new_hash = _uint32(thing_in[2] if n > 2 else 0)
                else:
                    new_hash = get_value_hash(thing, thing_hlc)
                if type(thing) is dict or type(thing) is list:
                    thing = copy.deepcopy(thing)
                thing_stamps[thing_id] = (
                    thing,
                    thing_hlc if thing_hlc > old_thing_hlc else old_thing_hlc,
                    new_hash,
                )
                changes[thing_id] = thing
                if not is_content:
                    things_hash ^= _h(thing_id, old_thing_hash) ^ _h(thing_id, new_hash)
                if thing_hlc > things_hlc:
                    things_hlc = thing_hlc
        if not is_content:
            things_hash ^= _replace_hlc_hash(old_hlc, incoming_hlc)
        if not fresh:
            undo.append((stamp, 1, old_hlc))
            undo.append((stamp, 2, old_hash))
        if incoming_hlc > old_hlc:
            stamp[1] = incoming_hlc
        stamp[2] = _uint32(things_hash)
        return things_hlc, old_hash, stamp[2]

    def _merge_and_write(self, data: Any, is_content: bool, encoded: bool, plain: bool) -> None:
        """mergeContentOrChanges and the data writes of its winners, one row at a time.

        Same stamps, hashes, clock effects, data, and change records (in the same order) as
        ``_merge`` followed by writing every winning cell, without building the intermediate
        changes structure. Two further savings, both unobservable:

        * a row created by this merge needs no per-cell undo entries or stamp look-ups, and
          its data is written with the row's containers found once;
        * changes (which carry no hashes) leave the merged cells' hashes to be settled on
          demand, like local writes: each winning cell is noted dirty with the hash it had.
          The row and table hashes are folded into their parents with the hash they will
          have *before* settling (``inter``), and ``_settle`` later folds from ``inter`` to
          the final hash, so the two steps telescope to TinyBase's single fold (TinyBase's
          "no removal term for a zero hash" rule is honoured at both steps).
        """
        undo = self._undo
        tables_in = data[0]
        tables_obj = tables_in[0]
        incoming_tables_hlc = tables_in[1] if len(tables_in) > 1 else ""
        incoming_tables_hash = tables_in[2] if len(tables_in) > 2 else 0
        root = self._tstamp
        table_stamps, old_tables_hlc, old_tables_hash = root
        tables_hash = incoming_tables_hash if is_content else old_tables_hash
        tables_hlc = incoming_tables_hlc
        dirty = self._dirty_cells
        lazy = not is_content
        # no change record yet: rows new to the data can be inserted whole (see _put_new_row)
        clean = not self._changed_cells and not self._track_ids
        for table_id, table_in in js_ordered(tables_obj).items():
            rows_obj = table_in[0]
            incoming_table_hlc = table_in[1] if len(table_in) > 1 else ""
            incoming_table_hash = table_in[2] if len(table_in) > 2 else 0
            table_stamp = table_stamps.get(table_id)
            if table_stamp is None:
                table_stamp = table_stamps[table_id] = [{}, "", 0]
                undo.append((table_stamps, table_id, ABSENT))
                counted = False
            else:
                counted = _counted(table_stamp)
            row_stamps, old_table_hlc, old_table_hash = table_stamp
            table_hash = incoming_table_hash if is_content else old_table_hash
            table_hlc = incoming_table_hlc
            dirty_rows = dirty.get(table_id)
            for row_id, row_in in js_ordered(rows_obj).items():
                cells_obj = row_in[0]
                n_row = len(row_in)
                incoming_row_hlc = row_in[1] if n_row > 1 else ""
                row_stamp = row_stamps.get(row_id)
                fresh = row_stamp is None
                if fresh:
                    cell_stamps: dict[str, Any] = {}
                    row_stamp = row_stamps[row_id] = [cell_stamps, "", 0]
                    undo.append((row_stamps, row_id, ABSENT))
                    old_row_hlc = ""
                    old_row_hash = 0
                    row_counted = False
                else:
                    cell_stamps, old_row_hlc, old_row_hash = row_stamp
                    row_counted = _counted(row_stamp)
                row_hash = (row_in[2] if n_row > 2 else 0) if is_content else old_row_hash
                row_hlc = incoming_row_hlc
                winners: dict[str, Any] = {}
                dirty_cells = dirty_rows.get(row_id) if dirty_rows is not None else None
                new_dirty_cells = False
                cells_obj = js_ordered(cells_obj)
                new_row = None
                if fresh and plain and dirty_cells is None and cells_obj:
                    # a row this merge creates, of plain cells: every cell wins, so build the
                    # stamps and the data row in bulk (shapes differing from the common one
                    # fall back to the loop below)
                    try:
                        if lazy:
                            cell_stamps = {c: (v, h, None) for c, (v, h) in cells_obj.items()}
                        else:
                            cell_stamps = {
                                c: (v, h, x & _MASK) for c, (v, h, x) in cells_obj.items()
                            }
                    except (TypeError, ValueError):
                        cell_stamps = row_stamp[0]
                    else:
                        row_stamp[0] = cell_stamps
                        if lazy:
                            if dirty_rows is None:
                                dirty_rows = dirty[table_id] = {}
                                undo.append((dirty, table_id, ABSENT))
                            dirty_cells = dirty_rows[row_id] = dict.fromkeys(cell_stamps, 0)
                            undo.append((dirty_rows, row_id, ABSENT))
                        cells_hlc = max(map(_second, cells_obj.values()))
                        if cells_hlc > row_hlc:
                            row_hlc = cells_hlc
                        new_row = {c: v for c, (v, *_) in cells_obj.items() if v != UNDEFINED}
                if new_row is None:
                    for cell_id, cell_in in cells_obj.items():
                        thing = cell_in[0]
                        n = len(cell_in)
                        cell_hlc = cell_in[1] if n > 1 else ""
                        if fresh:
                            old_stamp = None
                            old_cell_hlc = ""
                        else:
                            old_stamp = cell_stamps.get(cell_id)
                            old_cell_hlc = "" if old_stamp is None else old_stamp[1]
                        if old_cell_hlc and cell_hlc <= old_cell_hlc:
                            continue
                        if not fresh:
                            undo.append(
                                (cell_stamps, cell_id, ABSENT if old_stamp is None else old_stamp)
                            )
                        if type(thing) is dict or type(thing) is list:
                            thing = copy.deepcopy(thing)
                        if lazy:
                            cell_stamps[cell_id] = (thing, cell_hlc, None)
                            # a cell whose hash is pending already has its dirty entry (with
                            # the hash it had when it was last settled): keep that one
                            previous = 0 if old_stamp is None else old_stamp[2]
                            if previous is not None:
                                if dirty_cells is None:
                                    if dirty_rows is None:
                                        dirty_rows = dirty[table_id] = {}
                                        undo.append((dirty, table_id, ABSENT))
                                    dirty_cells = dirty_rows[row_id] = {}
                                    undo.append((dirty_rows, row_id, ABSENT))
                                    new_dirty_cells = True
                                elif not new_dirty_cells:
                                    undo.append((dirty_cells, cell_id, ABSENT))
                                dirty_cells[cell_id] = previous
                        else:
                            hash_in = cell_in[2] if n > 2 else 0
                            cell_stamps[cell_id] = (
                                thing,
                                cell_hlc,
                                hash_in & _MASK if type(hash_in) is int else _uint32(hash_in),
                            )
                        winners[cell_id] = thing
                        if cell_hlc > row_hlc:
                            row_hlc = cell_hlc
                if lazy and incoming_row_hlc > old_row_hlc:
                    row_hash ^= _replace_hlc_hash(old_row_hlc, incoming_row_hlc)
                if not fresh:
                    undo.append((row_stamp, 1, old_row_hlc))
                    undo.append((row_stamp, 2, old_row_hash))
                if incoming_row_hlc > old_row_hlc:
                    row_stamp[1] = incoming_row_hlc
                row_hash = row_stamp[2] = (
                    row_hash & _MASK if type(row_hash) is int else _uint32(row_hash)
                )
                if lazy:
                    old_term = _h(row_id, old_row_hash) if row_counted else 0
                    if dirty_cells is None:
                        table_hash ^= old_term ^ _h(row_id, row_hash)
                    else:
                        table_hash ^= old_term ^ (_h(row_id, row_hash) if row_hash else 0)
                if row_hlc > table_hlc:
                    table_hlc = row_hlc
                # (methods called directly: through a local alias mypyc calls them as
                # Python objects, with argument parsing)
                if new_row:
                    if clean:
                        self._put_new_row(table_id, row_id, new_row, encoded)
                    else:
                        self._write_merged_row(table_id, row_id, new_row, encoded)
                elif winners:
                    self._write_merged_row(table_id, row_id, winners, encoded)
            if lazy and incoming_table_hlc > old_table_hlc:
                table_hash ^= _replace_hlc_hash(old_table_hlc, incoming_table_hlc)
            undo.append((table_stamp, 1, old_table_hlc))
            undo.append((table_stamp, 2, old_table_hash))
            if incoming_table_hlc > old_table_hlc:
                table_stamp[1] = incoming_table_hlc
            table_hash = table_stamp[2] = (
                table_hash & _MASK if type(table_hash) is int else _uint32(table_hash)
            )
            if lazy:
                old_term = _h(table_id, old_table_hash) if counted else 0
                if dirty_rows is None:
                    tables_hash ^= old_term ^ _h(table_id, table_hash)
                else:
                    tables_hash ^= old_term ^ (_h(table_id, table_hash) if table_hash else 0)
            if table_hlc > tables_hlc:
                tables_hlc = table_hlc
        if lazy and incoming_tables_hlc > old_tables_hlc:
            tables_hash ^= _replace_hlc_hash(old_tables_hlc, incoming_tables_hlc)
        undo.append((root, 1, old_tables_hlc))
        undo.append((root, 2, old_tables_hash))
        if incoming_tables_hlc > old_tables_hlc:
            root[1] = incoming_tables_hlc
        root[2] = tables_hash & _MASK if type(tables_hash) is int else _uint32(tables_hash)
        values_changes: dict[str, Any] = {}
        values_in = data[1]
        values_hlc = values_in[1] if len(values_in) > 1 else ""
        if is_content or values_in[0] or values_hlc > self._vstamp[1]:
            # (changes without values and without a newer values HLC change nothing there)
            values_hlc = self._merge_things(values_in, self._vstamp, values_changes, is_content)[0]
        self._seen_merged_hlc(tables_hlc if tables_hlc > values_hlc else values_hlc)
        for value_id, thing in values_changes.items():
            if thing == UNDEFINED:
                self._delete_value(value_id)
            else:
                stored = encode_accepted(thing) if encoded else _encode_merged(thing)
                if stored is not ABSENT:
                    self._write_value(value_id, stored)

    def _put_new_row(
        self, table_id: str, row_id: str, cells: dict[str, Any], encoded: bool
    ) -> None:
        """``_write_merged_row`` for plain cells of a row the data does not have yet, called
        only while the transaction has no earlier change record: the row is inserted whole."""
        table = self._tables.get(table_id)
        if table is not None and row_id in table:
            self._write_merged_row(table_id, row_id, cells, encoded)
            return
        if table is None:
            table = self._new_table(table_id)
        table[row_id] = cells
        self._changed_cells.update({(table_id, row_id, c): [ABSENT, v] for c, v in cells.items()})
        counts = self._table_cell_ids[table_id]
        for cell_id in cells:
            count = counts.get(cell_id, 0)
            if count:
                counts[cell_id] = count + 1
            else:
                self._cell_id_added(table_id, row_id, cell_id)

    def _write_merged_row(
        self, table_id: str, row_id: str, cells: dict[str, Any], encoded: bool
    ) -> None:
        """Write a row's merge winners to the data, as ``_write_cell``/``_delete_cell`` would
        (outside of stamping), finding the row's containers once."""
        tables = self._tables
        table = tables.get(table_id)
        row = table.get(row_id) if table is not None else None
        changed = self._changed_cells
        track = self._track_ids
        counts: dict[str, int] | None = None
        for cell_id, thing in cells.items():
            t = type(thing)
            if t is str:
                if thing == UNDEFINED:
                    self._delete_cell(table_id, row_id, cell_id)
                    table = tables.get(table_id)
                    row = table.get(row_id) if table is not None else None
                    counts = None
                    continue
                cell = thing  # validated: a "\ufffd" string is accepted JSON (encoded only)
            elif (
                (t is int and -_BIG_INT <= thing <= _BIG_INT)
                or (t is float and -_BIG < thing < _BIG)
                or t is bool
                or thing is None
            ):
                cell = thing
            else:
                cell = encode_accepted(thing) if encoded else _encode_merged(thing)
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
            entry = changed.get(key)
            if entry is None:
                changed[key] = [old, cell]
            else:
                entry[1] = cell

    def _apply_merge(self, data: Any, is_content: bool, encoded: bool, plain: bool = False) -> None:
        """Inside a transaction: merge stamps, then apply the winning changes to the data."""
        listening = self._listening
        self._listening = False
        try:
            if is_content or self._mutating or self._reference_receive:
                self._settle()
            elif self._dirty_values:
                self._settle_values()  # values are merged with eager hashes
            if is_content:
                self._delete_all_tables()
                self._delete_all_values()
                undo = self._undo
                for root in (self._tstamp, self._vstamp):
                    undo.append((root, 0, root[0]))
                    undo.append((root, 1, root[1]))
                    undo.append((root, 2, root[2]))
                    root[0] = {}
                    root[1] = ""
                    root[2] = 0
            if not self._mutating and not self._reference_receive:
                self._merge_and_write(data, is_content, encoded, plain)
                return
            tables_changes, values_changes, _ = self._merge(data, is_content)
            write = self._write_cell
            delete = self._delete_cell
            for table_id, rows in tables_changes.items():
                for row_id, cells in rows.items():
                    for cell_id, thing in cells.items():
                        if thing == UNDEFINED:
                            delete(table_id, row_id, cell_id)
                        else:
                            stored = encode_accepted(thing) if encoded else _encode_merged(thing)
                            if stored is not ABSENT:
                                write(table_id, row_id, cell_id, stored)
            for value_id, thing in values_changes.items():
                if thing == UNDEFINED:
                    self._delete_value(value_id)
                else:
                    stored = encode_accepted(thing) if encoded else _encode_merged(thing)
                    if stored is not ABSENT:
                        self._write_value(value_id, stored)
        finally:
            self._listening = listening

    def _merge_in(self, data: Any, is_content: bool, encoded: bool) -> MergeableStore:
        if type(data) is CheckedChanges and encoded and not is_content and self._merge_pushed(data):
            return self
        with self.lock:
            validator = Validator(self._get_now() + HLC_MAX_FUTURE_OFFSET, is_content, encoded)
            try:
                if type(data) is CheckedChanges and encoded and not is_content:
                    valid = validator.checked(data)
                else:
                    valid = validator.mergeable(data)
            except RecursionError:
                valid = False
            if not valid:
                self.ignored_count += 1
                return self
            if self._depth < 0:
                return self
            if validator.cells < _BULK:
                self._txn(self._apply_merge, data, is_content, encoded, validator.plain)
            else:
                with _gc_paused:
                    self._txn(self._apply_merge, data, is_content, encoded, validator.plain)
        return self

    def _merge_pushed(self, data: CheckedChanges) -> bool:
        """``_merge_in`` of a peer's checked plain changes without a ``_Validator``; False
        (nothing done) when the validator is needed.

        Why: this is every ContentDiff a channel process receives between bursts, and each
        arrives to cold caches, where every object built costs its own cache misses. With
        the engine's shape check done and no special value to look at, all the validator
        would still decide is the future limit, checked here the same way; the transaction
        is the general one, so stamps, hashes, clock, data and listener calls are those of
        the general path by construction (tests/core/test_store_receive.py compares both).
        """
        if data.special or len(data.hlcs) >= _BULK or self._reference_receive:
            # (special values: the validator; bulk: with the collector paused; the reference
            # port is the specification the other paths are tested against)
            return False
        with self.lock:
            hlcs = data.hlcs
            if hlcs:
                limit = future_limit(self._get_now() + HLC_MAX_FUTURE_OFFSET)
                if limit < 0 or not time_prefix_within(greatest(hlcs)[:7], limit):
                    return False  # (decided, refused and counted by the general path)
            self._txn(self._apply_merge, data, False, True, True)
        return True

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
        return self._content(_public)

    def get_encoded_mergeable_content(self) -> list[Any]:
        """As get_mergeable_content, with object cells in stored ``"\\ufffd..."`` form."""
        return self._content(_raw)

    def _content(self, convert: Callable[[Any], Any]) -> list[Any]:
        with self.lock, _gc_paused:
            self._settle()
            tables, tables_hlc, tables_hash = self._tstamp
            values, values_hlc, values_hash = self._vstamp
            raw = convert is _raw
            tables_out: dict[str, Any] = {}
            for table_id, (rows, table_hlc, table_hash) in tables.items():
                rows_out: dict[str, Any] = {}
                for row_id, (cells, row_hlc, row_hash) in rows.items():
                    if raw:  # only object cells need converting (a copy)
                        cells_out = {
                            cell_id: [cell, hlc, hash_]
                            if type(cell) not in _OBJECTS
                            else [copy.deepcopy(cell), hlc, hash_]
                            for cell_id, (cell, hlc, hash_) in cells.items()
                        }
                    else:
                        cells_out = {
                            cell_id: [
                                convert(cell) if type(cell) is not int else cell,
                                hlc,
                                hash_,
                            ]
                            for cell_id, (cell, hlc, hash_) in cells.items()
                        }
                    rows_out[row_id] = [cells_out, row_hlc, row_hash]
                tables_out[table_id] = [rows_out, table_hlc, table_hash]
            values_out = {
                value_id: [convert(value), hlc, hash_]
                for value_id, (value, hlc, hash_) in values.items()
            }
            return [[tables_out, tables_hlc, tables_hash], [values_out, values_hlc, values_hash]]

    def get_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        """The stamps this transaction touched, as ``[tables, values, 1]`` changes."""
        return self._transaction_mergeable_changes(with_hashes, _public)

    def get_encoded_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        return self._transaction_mergeable_changes(with_hashes, _raw)

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

        Why from the current stamps rather than one record per transaction, merged: the
        result is the same (a merge keeps the newest stamp per cell and value and the
        latest row, table and root HLCs, and the current stamps are exactly those), built in
        one pass instead of a record per transaction plus a merge per record, which was a
        third of a writing process's sync overhead. A stamp newer than the run (a later
        write, a peer's change) is simply sent a little early; receivers merge it as they
        would later. Bodies are cut between transactions once ``max_stamps`` stamps or
        about ``max_bytes`` bytes are reached, so no transaction is ever split.
        """
        out: list[list[Any]] = []
        with self.lock:
            table_stamps, tables_hlc, _ = self._tstamp
            value_stamps, values_hlc, _ = self._vstamp
            tables_out: dict[str, Any] = {}
            values_out: dict[str, Any] = {}
            stamps = size = 0
            overhead = _STAMP_OVERHEAD
            for cells, values in touched:
                last_table = last_row = None
                cells_out: dict[str, Any] = {}
                cell_stamps: dict[str, Any] = {}
                for table_id, row_id, cell_id in cells:
                    if row_id != last_row or table_id != last_table:
                        last_table, last_row = table_id, row_id
                        table_stamp = table_stamps.get(table_id)
                        row_stamp = None if table_stamp is None else table_stamp[0].get(row_id)
                        if row_stamp is None:
                            cell_stamps = {}
                            continue
                        cell_stamps = row_stamp[0]
                        table_out = tables_out.get(table_id)
                        if table_out is None:
                            table_hlc = table_stamp[1]  # type: ignore[index]
                            table_out = tables_out[table_id] = (
                                [{}, table_hlc] if table_hlc else [{}]
                            )
                            size += overhead + len(table_id)
                        rows_out = table_out[0]
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
                    if kind is dict or kind is list:  # (_raw and _stamp, inlined: per cell)
                        thing = copy.deepcopy(thing)
                    cells_out[cell_id] = [thing, hlc] if hlc else [thing]
                    stamps += 1
                    size += overhead + len(cell_id) + (len(thing) if kind is str else 24)
                for value_id in values:
                    value_stamp = value_stamps.get(value_id)
                    if value_stamp is None or value_id in values_out:
                        continue
                    thing, hlc, _ = value_stamp
                    values_out[value_id] = _stamp(_raw(thing), hlc)
                    stamps += 1
                    size += overhead + len(value_id) + (len(thing) if type(thing) is str else 24)
                if stamps >= max_stamps or size >= max_bytes:
                    out.append(_changes_body(tables_out, tables_hlc, values_out, values_hlc))
                    tables_out, values_out = {}, {}
                    stamps = size = 0
            if tables_out or values_out:
                out.append(_changes_body(tables_out, tables_hlc, values_out, values_hlc))
        return out

    def _transaction_mergeable_changes(
        self, with_hashes: bool, convert: Callable[[Any], Any]
    ) -> list[Any]:
        with self.lock, _gc_paused:
            if with_hashes:
                self._settle()

            def new_stamp(thing: Any, hlc: str, hash_: Any) -> list[Any]:
                if with_hashes:
                    return [thing, hlc, hash_]
                return [thing, hlc] if hlc else [thing]

            grouped: dict[str, dict[str, list[str]]] = {}
            for table_id, row_id, cell_id in self._changed_cells:
                grouped.setdefault(table_id, {}).setdefault(row_id, []).append(cell_id)
            tables, tables_hlc, tables_hash = self._tstamp
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
            values, values_hlc, values_hash = self._vstamp
            values_out: dict[str, Any] = {}
            for value_id in self._changed_values:
                value_stamp = values.get(value_id)
                if value_stamp is not None:
                    value, hlc, hash_ = value_stamp
                    values_out[value_id] = new_stamp(convert(value), hlc, hash_)
            return [
                new_stamp(tables_out, tables_hlc, tables_hash),
                new_stamp(values_out, values_hlc, values_hash),
                1,
            ]

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
        _check_mapping(other_table_hashes)
        with self.lock, _gc_paused:
            self._settle()
            tables, tables_hlc, _ = self._tstamp
            new_tables: dict[str, Any] = {}
            differing: dict[str, int] = {}
            for table_id, (rows, table_hlc, hash_) in tables.items():
                if table_id in other_table_hashes:
                    if hash_ != other_table_hashes[table_id]:
                        differing[table_id] = hash_
                else:
                    new_tables[table_id] = _stamp(
                        {row_id: _row_without_hashes(row) for row_id, row in rows.items()},
                        table_hlc,
                    )
            return [_stamp(new_tables, tables_hlc), differing]

    def get_mergeable_row_hashes(self, other_table_hashes: dict[str, Any]) -> dict[str, Any]:
        _check_mapping(other_table_hashes)
        with self.lock:
            self._settle()
            tables = self._tstamp[0]
            row_hashes: dict[str, dict[str, int]] = {}
            for table_id, other_hash in other_table_hashes.items():
                table_stamp = tables.get(table_id)
                if table_stamp is not None and table_stamp[2] != other_hash:
                    out = row_hashes.setdefault(table_id, {})
                    for row_id, row_stamp in table_stamp[0].items():
                        out[row_id] = row_stamp[2]
            return row_hashes

    def get_mergeable_row_diff(self, other_table_row_hashes: dict[str, Any]) -> list[Any]:
        _check_mapping(other_table_row_hashes)
        with self.lock, _gc_paused:
            self._settle()
            tables, tables_hlc, _ = self._tstamp
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
                        new_rows.setdefault(table_id, [{}])[0][row_id] = _row_without_hashes(
                            row_stamp
                        )
            return [_stamp(new_rows, tables_hlc), differing]

    def get_mergeable_cell_hashes(self, other_table_row_hashes: dict[str, Any]) -> dict[str, Any]:
        _check_mapping(other_table_row_hashes)
        with self.lock:
            self._settle()
            tables = self._tstamp[0]
            cell_hashes: dict[str, dict[str, dict[str, int]]] = {}
            for table_id, other_row_hashes in other_table_row_hashes.items():
                table_stamp = tables.get(table_id)
                if table_stamp is None or type(other_row_hashes) is not dict:
                    continue
                rows = table_stamp[0]
                for row_id, other_hash in other_row_hashes.items():
                    row_stamp = rows.get(row_id)
                    if row_stamp is not None and row_stamp[2] != other_hash:
                        out = cell_hashes.setdefault(table_id, {}).setdefault(row_id, {})
                        for cell_id, cell_stamp in row_stamp[0].items():
                            out[cell_id] = cell_stamp[2]
            return cell_hashes

    def get_mergeable_cell_diff(self, other_table_row_cell_hashes: dict[str, Any]) -> list[Any]:
        _check_mapping(other_table_row_cell_hashes)
        with self.lock, _gc_paused:
            self._settle()
            tables, tables_hlc, _ = self._tstamp
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
                            row_out[0][cell_id] = [_raw(cell), cell_hlc]
            return _stamp(tables_out, tables_hlc)

    def get_mergeable_value_hashes(self) -> dict[str, int]:
        with self.lock:
            self._settle()
            return {value_id: stamp[2] for value_id, stamp in self._vstamp[0].items()}

    def get_mergeable_value_diff(self, other_value_hashes: dict[str, Any]) -> list[Any]:
        _check_mapping(other_value_hashes)
        with self.lock:
            self._settle()
            values, values_hlc, _ = self._vstamp
            out = {
                value_id: _stamp(_raw(value), hlc)
                for value_id, (value, hlc, hash_) in values.items()
                if hash_ != other_value_hashes.get(value_id)
            }
            return _stamp(out, values_hlc)


def _row_without_hashes(row_stamp: list[Any]) -> list[Any]:
    cells, row_hlc, _ = row_stamp
    cells_out = {
        cell_id: ([cell, hlc] if hlc else [cell])
        if type(cell) not in _OBJECTS
        else _stamp(copy.deepcopy(cell), hlc)
        for cell_id, (cell, hlc, _h2) in cells.items()
    }
    return [cells_out, row_hlc] if row_hlc else [cells_out]


_OBJECTS = (dict, list)


def _check_mapping(value: Any) -> None:
    if type(value) is not dict:
        raise TypeError(f"expected a dict of hashes, not {type(value).__name__}")


def _encode_merged(thing: Any) -> Any:
    """Stored form of a validated, decoded cell from a peer (objects become ``"\\ufffd..."``)."""
    if type(thing) is dict or type(thing) is list:
        return encode_accepted(thing)
    return thing


def create_mergeable_store(
    unique_id: str | None = None, get_now: Callable[[], Number] | None = None
) -> MergeableStore:
    """A new, empty MergeableStore (TinyBase's ``createMergeableStore(uniqueId, getNow)``).

    ``unique_id`` seeds the 5-character HLC client id exactly as TinyBase does (random when
    None); ``get_now`` returns milliseconds since the epoch (default: the real clock).
    """
    return MergeableStore(unique_id, get_now)
