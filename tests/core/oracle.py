"""The oracle of the receive path: TinyBase's mergeContentOrChanges, line by line.

``merge_content_or_changes`` is a self-contained port of TinyBase's ``mergeContentOrChanges``
and ``mergeCellsOrValues`` (tinybase/mergeable-store/index.js) over the stamp structures a
MergeableStore keeps: ``[{table id: [{row id: [{cell id: (cell, hlc, hash)}, hlc, hash]},
hlc, hash]}, hlc, hash]`` for the tables and ``[{value id: (value, hlc, hash)}, hlc, hash]``
for the values, with an undo log of ``(container, key, old)`` entries so that a rolled-back
transaction restores them. Its one deliberate difference from TinyBase is the store's fix of
issue 16 item 4 (``_counted``: an empty row or table keeps a single ``H(id:0)`` term).

``apply`` receives data into a store the way TinyBase does: validate, then in one
transaction merge every stamp first (hashes eager, the clock told at once), then write the
winners to the data one by one through the store's ordinary cell and value writers (so that
writes made from mutator listeners are stamped as the store's own, as in TinyBase). The
library's single receive path is tested against it (test_store_receive.py,
test_store_empty_stamps.py), and the port itself against TinyBase (test_store_tinybase_*.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fnv_hash_fast import fnv1a_32

from localsync import UNDEFINED
from localsync.core.checked_changes import CheckedChanges
from localsync.core.hash import get_value_hash, to_utf8
from localsync.core.mergeable_store import MergeableStore
from localsync.core.store import (
    ABSENT,
    check_content,
    encode_accepted,
    encode_tables,
    encode_values,
)

_MASK = 0xFFFFFFFF


def _h(id_: str, hash_: int) -> int:
    """TinyBase's getValueInValuesHash: ``H(id + ":" + hash)``."""
    return fnv1a_32(to_utf8(f"{id_}:{hash_}"))


def _replace_hlc_hash(old_hlc: str, new_hlc: str) -> int:
    """TinyBase's replaceHlcHash."""
    if new_hlc > old_hlc:
        return (fnv1a_32(to_utf8(old_hlc)) if old_hlc else 0) ^ fnv1a_32(to_utf8(new_hlc))
    return 0


def _uint32(number: Any) -> int:
    return int(number) & _MASK


def _counted(stamp: list[Any]) -> bool:
    """Whether an existing row or table stamp's ``H(id:hash)`` term is in its parent's hash:
    a non-zero hash, or no children at all (see the store's issue 16 item 4 fix)."""
    return bool(stamp[2]) or not stamp[0]


def _is_index(key: str) -> bool:
    return (
        key != ""
        and all(c in "0123456789" for c in key)
        and (key == "0" or key[0] != "0")
        and int(key) < 2**32 - 1
    )


def _js_ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """The object's keys in JavaScript's order: array-index keys ascending, then the rest."""
    index = [k for k in obj if _is_index(k)]
    if not index:
        return obj
    indices = set(index)
    return {
        **{k: obj[k] for k in sorted(index, key=int)},
        **{k: v for k, v in obj.items() if k not in indices},
    }


def merge_content_or_changes(
    tstamp: list[Any], vstamp: list[Any], data: Any, is_content: bool, undo: list[Any]
) -> tuple[list[Any], str]:
    """TinyBase's mergeContentOrChanges: merge ``data`` into the stamps.

    Returns the changes (``[tables, values, 1]`` of the winning things, in merge order) and
    the greatest HLC seen (what TinyBase passes to ``seenHlc``).
    """
    tables_changes: dict[str, dict[str, dict[str, Any]]] = {}
    values_changes: dict[str, Any] = {}
    tables_in = data[0]
    incoming_tables_hlc = tables_in[1] if len(tables_in) > 1 else ""
    incoming_tables_hash = tables_in[2] if len(tables_in) > 2 else 0
    table_stamps, old_tables_hlc, old_tables_hash = tstamp
    tables_hash = incoming_tables_hash if is_content else old_tables_hash
    tables_hlc = incoming_tables_hlc
    for table_id, table_in in _js_ordered(tables_in[0]).items():
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
        table_changes = tables_changes.setdefault(table_id, {})
        for row_id, row_in in _js_ordered(table_in[0]).items():
            row_stamp = row_stamps.get(row_id)
            if row_stamp is None:
                row_stamp = row_stamps[row_id] = [{}, "", 0]
                undo.append((row_stamps, row_id, ABSENT))
                row_counted = False
            else:
                row_counted = _counted(row_stamp)
            row_changes = table_changes.setdefault(row_id, {})
            row_hlc, old_row_hash, row_hash = _merge_cells_or_values(
                row_in, row_stamp, row_changes, is_content, undo
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
    undo.append((tstamp, 1, old_tables_hlc))
    undo.append((tstamp, 2, old_tables_hash))
    if incoming_tables_hlc > old_tables_hlc:
        tstamp[1] = incoming_tables_hlc
    tstamp[2] = _uint32(tables_hash)
    values_hlc = _merge_cells_or_values(data[1], vstamp, values_changes, is_content, undo)[0]
    return [tables_changes, values_changes, 1], max(tables_hlc, values_hlc)


def _merge_cells_or_values(
    things_in: Any, stamp: list[Any], changes: dict[str, Any], is_content: bool, undo: list[Any]
) -> tuple[str, int, int]:
    """TinyBase's mergeCellsOrValues for one row or the values."""
    incoming_hlc = things_in[1] if len(things_in) > 1 else ""
    incoming_hash = things_in[2] if len(things_in) > 2 else 0
    thing_stamps, old_hlc, old_hash = stamp
    things_hlc = incoming_hlc
    things_hash = incoming_hash if is_content else old_hash
    for thing_id, thing_in in _js_ordered(things_in[0]).items():
        thing = thing_in[0]
        thing_hlc = thing_in[1] if len(thing_in) > 1 else ""
        thing_stamp = thing_stamps.get(thing_id)
        old_thing_hlc = "" if thing_stamp is None else thing_stamp[1]
        old_thing_hash = 0 if thing_stamp is None else thing_stamp[2]
        if not old_thing_hlc or thing_hlc > old_thing_hlc:
            undo.append((thing_stamps, thing_id, ABSENT if thing_stamp is None else thing_stamp))
            if is_content:
                new_hash = _uint32(thing_in[2] if len(thing_in) > 2 else 0)
            else:
                new_hash = get_value_hash(thing, thing_hlc)
            thing = copy.deepcopy(thing)
            thing_stamps[thing_id] = (thing, max(thing_hlc, old_thing_hlc), new_hash)
            changes[thing_id] = thing
            if not is_content:
                things_hash ^= _h(thing_id, old_thing_hash) ^ _h(thing_id, new_hash)
            if thing_hlc > things_hlc:
                things_hlc = thing_hlc
    if not is_content:
        things_hash ^= _replace_hlc_hash(old_hlc, incoming_hlc)
    undo.append((stamp, 1, old_hlc))
    undo.append((stamp, 2, old_hash))
    if incoming_hlc > old_hlc:
        stamp[1] = incoming_hlc
    stamp[2] = _uint32(things_hash)
    return things_hlc, old_hash, stamp[2]


def _stored(thing: Any, encoded: bool) -> Any:
    """The data form of a merged thing (objects become ``"\\ufffd..."`` strings)."""
    if encoded or type(thing) is dict or type(thing) is list:
        return encode_accepted(thing)
    return thing


def _merge_and_apply(store: MergeableStore, data: Any, is_content: bool, encoded: bool) -> None:
    """Inside the transaction: TinyBase's receive (merge the stamps, then apply the changes)."""
    listening = store._listening
    store._listening = False
    try:
        store._settle()  # the oracle works with eager hashes
        if is_content:
            store._delete_all_tables()
            store._delete_all_values()
            for root in (store._tstamp, store._vstamp):
                store._undo.extend([(root, 0, root[0]), (root, 1, root[1]), (root, 2, root[2])])
                root[0], root[1], root[2] = {}, "", 0
        changes, seen = merge_content_or_changes(
            store._tstamp, store._vstamp, data, is_content, store._undo
        )
        store._seen_hlc(seen)
        for table_id, rows in changes[0].items():
            for row_id, cells in rows.items():
                for cell_id, thing in cells.items():
                    if thing == UNDEFINED:
                        store._delete_cell(table_id, row_id, cell_id)
                        continue
                    stored = _stored(thing, encoded)
                    if stored is not ABSENT:
                        store._write_cell(table_id, row_id, cell_id, stored)
        for value_id, thing in changes[1].items():
            if thing == UNDEFINED:
                store._delete_value(value_id)
                continue
            stored = _stored(thing, encoded)
            if stored is not ABSENT:
                store._write_value(value_id, stored)
    finally:
        store._listening = listening


def apply(
    store: MergeableStore, data: Any, is_content: bool = False, encoded: bool = False
) -> MergeableStore:
    """Receive ``data`` into ``store`` as TinyBase does: ``applyMergeableChanges`` (or
    ``setMergeableContent`` when ``is_content``; their encoded forms when ``encoded``)."""
    with store.lock:
        # (the validator in full, also for changes a sync engine checked: CheckedChanges)
        whole = list(data) if type(data) is CheckedChanges else data
        if not store._verdict(whole, is_content, encoded)[0]:
            store.ignored_count += 1
            return store
        if store._depth >= 0:
            store._txn(_merge_and_apply, store, data, is_content, encoded)
    return store


def receiver(store: MergeableStore) -> Callable[[Any], MergeableStore]:
    """``apply`` of changes into ``store``, for a test's peer-changes hook."""
    return lambda data: apply(store, data)


def _default(store: MergeableStore, tables: dict[str, Any], values: dict[str, Any]) -> None:
    """Inside the transaction: write the content to the data, then merge each written cell
    and value as TinyBase's cellChanged/valueChanged do while defaulting (an empty HLC)."""
    assert not store._changed_cells and not store._changed_values, "call outside transactions"
    store._settle()
    listening = store._listening
    store._listening = False
    try:
        store._apply_content(tables, values)
    finally:
        store._listening = listening
    changes: list[Any] = [
        [[{t: [{r: [{c: [UNDEFINED if new is ABSENT else new, ""]}]}]}], [{}], 1]
        for (t, r, c), (_, new) in store._changed_cells.items()
    ]
    changes += [
        [[{}], [{v: [UNDEFINED if new is ABSENT else new, ""]}], 1]
        for v, (_, new) in store._changed_values.items()
    ]
    for change in changes:
        seen = merge_content_or_changes(store._tstamp, store._vstamp, change, False, store._undo)
        store._seen_hlc(seen[1])


def set_default_content(store: MergeableStore, content: Any) -> MergeableStore:
    """TinyBase's ``setDefaultContent`` (outside of any transaction): the content written,
    each cell and value stamped with an empty HLC by a merge of its own."""
    tables, values = check_content(content)
    store._txn(_default, store, encode_tables(tables), encode_values(values))
    return store
