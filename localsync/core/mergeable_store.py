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

from collections.abc import Callable
from typing import Any

from localsync.core import diff
from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import UNDEFINED
from localsync.core.collector import paused as _gc_paused
from localsync.core.content import (
    ABSENT,
    check_content,
    encode_accepted,
    encode_tables,
    encode_values,
    js_ordered,
)
from localsync.core.hlc import HLC_MAX_FUTURE_OFFSET, Number, clock_with_deferred_seen, real_now
from localsync.core.merge import BULK, encode_merged, prechecked, receive
from localsync.core.stamps import MASK, settle, uint32
from localsync.core.stamps import in_parent_hash as _h
from localsync.core.store import Store
from localsync.core.validation import Validator

__all__ = ["MergeableStore", "create_mergeable_store"]


class MergeableStore(Store):
    """A TinyBase MergeableStore. Create one with :func:`create_mergeable_store`."""

    def __init__(
        self, unique_id: str | None = None, get_now: Callable[[], Number] | None = None
    ) -> None:
        super().__init__()
        if unique_id is not None and type(unique_id) is not str:
            raise TypeError("unique_id must be a str or None")
        self._get_now: Callable[[], Number] = real_now if get_now is None else get_now
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
        # the change records of an install (:meth:`_install`) are built when first asked for
        self._lazy_changes = False
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
        self._lazy_changes = False
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
        validator = Validator(max_time, is_content, encoded)
        try:
            valid = validator.checked(data) if checked else validator.mergeable(data)
        except RecursionError:
            valid = False
        return valid, validator.cells, validator.plain

    def _merge_in(self, data: Any, is_content: bool, encoded: bool) -> MergeableStore:
        lock = self.lock
        lock.acquire()  # (as in set_cell: cheaper than ``with`` once compiled)
        try:
            valid, cells, plain = self._verdict(data, is_content, encoded)
            if not valid:
                self.ignored_count += 1
            else:
                fn: Callable[..., None] = receive
                args: tuple[Any, ...] = (self, data, is_content, encoded, plain, True)
                if is_content and plain and self._depth == 0:
                    fn = self._set_content
                    args = (data, encoded)
                if cells < BULK:
                    self._locked_txn(fn, args, None)
                else:
                    with _gc_paused:
                        self._locked_txn(fn, args, None)
        finally:
            lock.release()
        return self

    def _set_content(self, data: Any, encoded: bool) -> None:
        """Inside its own transaction: valid, plain content replaces everything (``receive``),
        installed directly (:meth:`_install`) when the store holds nothing to replace."""
        listeners = self._listeners
        if (
            self._tables
            or self._values
            or self._changed_cells
            or self._changed_values
            or self._dirty_cells
            or self._dirty_values
            or listeners.id_count
            or self._mutating
        ):
            receive(self, data, True, encoded, True, True)
            return
        self._install(data, encoded)
        if listeners.counts[0] or listeners.counts[1] or listeners.will_finish:
            self._materialize_changes()  # (those listeners read the records directly)

    def _install(self, data: Any, encoded: bool) -> None:
        """Build the stamps and the data of an empty store from valid, plain, trusted content.

        The result is exactly what ``receive`` makes of the same content (stamps, hashes,
        data and its order, cell id counts, the clock): every stamp is new, so nothing is
        compared or merged, and nothing but the roots goes to the undo log. The cells' change
        records are left to :meth:`_materialize_changes` (all of them go from absent to the
        installed cell), which only listeners and transaction-change getters ask for.

        Why: loading a persisted store or a snapshot into a new store is the commonest big
        write there is, and a record per cell costs more than its stamp.
        """
        listening = self._listening
        self._listening = False
        try:
            undo = self._undo
            tstamp = self._tstamp
            vstamp = self._vstamp
            for root in (tstamp, vstamp):
                undo.append((root, 0, root[0]))
                undo.append((root, 1, root[1]))
                undo.append((root, 2, root[2]))
            tables_in = data[0]
            greatest: str = tables_in[1]
            self._lazy_changes = True
            table_stamps: dict[str, list[Any]] = {}
            tstamp[0] = table_stamps
            tstamp[1] = tables_in[1]
            tstamp[2] = uint32(tables_in[2])
            for table_id, table_in in js_ordered(tables_in[0]).items():
                table_hlc: str = table_in[1]
                if table_hlc > greatest:
                    greatest = table_hlc
                row_stamps: dict[str, list[Any]] = {}
                table_stamps[table_id] = [row_stamps, table_hlc, uint32(table_in[2])]
                data_table: dict[str, dict[str, Any]] | None = None
                for row_id, row_in in js_ordered(table_in[0]).items():
                    row_hlc: str = row_in[1]
                    if row_hlc > greatest:
                        greatest = row_hlc
                    cell_stamps: dict[str, Any] = {}
                    row: dict[str, Any] = {}
                    row_stamps[row_id] = [cell_stamps, row_hlc, uint32(row_in[2])]
                    for cell_id, (cell, hlc, hash_) in js_ordered(row_in[0]).items():
                        cell_stamps[cell_id] = (
                            cell,
                            hlc,
                            hash_ & MASK if type(hash_) is int else uint32(hash_),
                        )
                        if hlc > greatest:
                            greatest = hlc
                        if type(cell) is not str or cell != UNDEFINED:
                            row[cell_id] = cell
                    if not row:
                        continue
                    if data_table is None:
                        data_table = self._new_table(table_id)
                    data_table[row_id] = row
                    self._new_row_cell_ids(table_id, row_id, row)
            values_in = data[1]
            values_hlc: str = values_in[1]
            if values_hlc > greatest:
                greatest = values_hlc
            value_stamps: dict[str, Any] = {}
            vstamp[0] = value_stamps
            vstamp[1] = values_hlc
            vstamp[2] = uint32(values_in[2])
            for value_id, (thing, hlc, hash_) in js_ordered(values_in[0]).items():
                value_stamps[value_id] = (thing, hlc, uint32(hash_))
                if hlc > greatest:
                    greatest = hlc
                if thing != UNDEFINED:
                    stored = encode_accepted(thing) if encoded else encode_merged(thing)
                    if stored is not ABSENT:
                        self._write_value(value_id, stored)
            self._seen_merged_hlc(greatest)
        finally:
            self._listening = listening

    def _materialize_changes(self) -> None:
        """The change records an install left to be built: every installed cell, new."""
        if not self._lazy_changes:
            return
        with self.lock:  # (asked from another thread: wait for the install to finish)
            if not self._lazy_changes:
                return
            self._lazy_changes = False
            changed = self._changed_cells
            for table_id, table in self._tables.items():
                for row_id, row in table.items():
                    changed.update({(table_id, row_id, c): [ABSENT, v] for c, v in row.items()})

    def _transaction_changes(self, convert: Callable[[Any], Any]) -> list[Any]:
        self._materialize_changes()
        return super()._transaction_changes(convert)

    def _get_cell_change(self, table_id: str, row_id: str, cell_id: str) -> list[Any]:
        self._materialize_changes()
        return super()._get_cell_change(table_id, row_id, cell_id)

    def _rollback(self) -> None:
        self._materialize_changes()
        super()._rollback()

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
        tables, values = check_content(content)
        encoded_tables = encode_tables(tables)
        encoded_values = encode_values(values)
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

    def encode_mergeable_content(self, encode: Callable[[Any], bytes]) -> bytes:
        """``encode(get_encoded_mergeable_content())`` for an encoder that writes lists and
        tuples alike (msgpack, JSON), without building that content first.

        ``encode`` gets the store's own stamps (tuples and lists) under its lock and must
        neither keep nor change them. Why: a channel snapshot's owner encodes its whole content
        once per version, and copying it into lists first costs about three times the encoding.
        """
        with self.lock:
            self._settle()
            return encode([self._tstamp, self._vstamp])

    def get_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        """The stamps this transaction touched, as ``[tables, values, 1]`` changes."""
        return self._transaction_mergeable_changes(with_hashes, False)

    def get_encoded_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]:
        return self._transaction_mergeable_changes(with_hashes, True)

    def _transaction_mergeable_changes(self, with_hashes: bool, encoded: bool) -> list[Any]:
        with self.lock, _gc_paused:
            self._materialize_changes()
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
        self._materialize_changes()
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
        lock = self.lock
        lock.acquire()  # (as in set_cell: cheaper than ``with`` once compiled)
        try:
            return diff.encoded_changes_of(
                self._tstamp, self._vstamp, touched, max_stamps, max_bytes
            )
        finally:
            lock.release()

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
