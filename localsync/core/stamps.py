"""Hash arithmetic of a MergeableStore's stamps, and the settling of pending hashes.

Stamps: a cell or value is ``(thing, hlc, hash)`` (hash ``None`` while pending), a row,
table, the tables and the values are ``[children, hlc, hash]``. A parent's hash is the XOR
of ``H(childId:childHash)`` over its children and of ``H(hlc)`` of its own HLC, as in
TinyBase. Local writes and merged changes leave their things' hashes pending and note them
*dirty* with the hash they had; :func:`settle` folds them in when a hash is next read.
"""

from __future__ import annotations

from typing import Any, Final

from fnv_hash_fast import fnv1a_32

from localsync.core.codec import SAFE_INT_LIMIT as _BIG_INT
from localsync.core.hash import MAX_HASH as MASK
from localsync.core.hash import get_hash as _hlc_hash
from localsync.core.hash import get_value_hash, to_utf8

# H(id:0) is needed for every new cell and value (TinyBase's legacy term); ids repeat a lot.
_H0: Final[dict[str, int]] = {}


def in_parent_hash(id_: str, hash_: int) -> int:
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


def replace_hlc_hash(old_hlc: str, new_hlc: str) -> int:
    """TinyBase's replaceHlcHash: the XOR term of a stamp whose HLC becomes ``new_hlc``."""
    if new_hlc > old_hlc:
        return (_hlc_hash(old_hlc) if old_hlc else 0) ^ _hlc_hash(new_hlc)
    return 0


def counted(stamp: list[Any]) -> bool:
    """Whether an existing row or table stamp's ``H(id:hash)`` term is in its parent's hash.

    TinyBase removes a stamp's old term only when its old hash is not 0, taking 0 to mean
    "created by this merge". But a row with no cells and no HLC (or a table with no rows)
    that a merge created has hash 0 *and* its ``H(id:0)`` term in the parent: TinyBase adds a
    second one each time it is merged again or written into, so replicas that received it
    an odd and an even number of times disagree for good (issue 16 item 4). Counted: a
    non-zero hash, or no children at all. A zero-hash stamp with children is one whose
    cells were written and not yet settled, or a 2**-32 coincidence that TinyBase treats
    the same way.
    """
    return bool(stamp[2]) or not stamp[0]


def uint32(number: Any) -> int:
    """JavaScript ``number >>> 0`` for a hash that a peer sent (any finite number)."""
    if type(number) is not int:
        number = int(number)  # truncates toward zero, as ToUint32 does
    return number & MASK


def _settled_delta(stamps: dict[str, Any], dirty: dict[str, int]) -> int:
    """Compute the pending hashes of ``stamps`` named in ``dirty`` (id: the hash each had
    when last settled); returns the XOR that moves their parent's hash to the new ones."""
    delta = 0
    for thing_id, previous in dirty.items():
        stamp = stamps.get(thing_id)
        if stamp is None:
            continue
        thing, hlc, hash_ = stamp
        if hash_ is None:
            # get_value_hash, with its commonest case inlined
            if type(thing) is int and -_BIG_INT <= thing <= _BIG_INT:
                text = f"{thing}:{hlc}"
                try:
                    hash_ = fnv1a_32(text.encode())
                except UnicodeEncodeError:
                    hash_ = fnv1a_32(to_utf8(text))
            else:
                hash_ = get_value_hash(thing, hlc)
            stamps[thing_id] = (thing, hlc, hash_)
        if hash_ != previous:
            old_term = _H0.get(thing_id) if previous == 0 else None
            if old_term is None:
                old_term = in_parent_hash(thing_id, previous)
            delta ^= old_term ^ in_parent_hash(thing_id, hash_)
    return delta


def _fold(stamp: list[Any], id_: str, delta: int, undo: list[Any] | None) -> int:
    """XOR ``delta`` into a row or table stamp's hash; returns the change of its term in
    its parent's hash (a zero old hash has no term there: see :func:`counted`)."""
    old_hash = stamp[2]
    new_hash = old_hash ^ delta
    if undo is not None:
        undo.append((stamp, 2, old_hash))
    stamp[2] = new_hash
    return (in_parent_hash(id_, old_hash) if old_hash else 0) ^ in_parent_hash(id_, new_hash)


def settle(
    tstamp: list[Any],
    dirty: dict[str, dict[str, dict[str, int]]],
    vstamp: list[Any],
    dirty_values: dict[str, int],
    undo: list[Any] | None,
) -> None:
    """Fold the pending hashes of dirty cells and values into their parents' hashes, with
    exactly the XOR updates TinyBase would have made one write at a time (they telescope).
    ``undo``: the transaction's undo log, or None outside of a transaction."""
    if dirty:
        table_stamps = tstamp[0]
        tables_delta = 0
        for table_id, rows in dirty.items():
            table_stamp = table_stamps.get(table_id)
            if table_stamp is None:
                continue
            row_stamps = table_stamp[0]
            table_delta = 0
            for row_id, cells in rows.items():
                row_stamp = row_stamps.get(row_id)
                if row_stamp is not None:
                    row_delta = _settled_delta(row_stamp[0], cells)
                    table_delta ^= _fold(row_stamp, row_id, row_delta, undo)
            tables_delta ^= _fold(table_stamp, table_id, table_delta, undo)
        if undo is not None:
            undo.append((tstamp, 2, tstamp[2]))
            for table_id, rows in dirty.items():
                undo.append((dirty, table_id, rows))
        tstamp[2] ^= tables_delta
        dirty.clear()
    if dirty_values:
        delta = _settled_delta(vstamp[0], dirty_values)
        if undo is not None:
            undo.append((vstamp, 2, vstamp[2]))
            for value_id, previous in dirty_values.items():
                undo.append((dirty_values, value_id, previous))
        vstamp[2] ^= delta
        dirty_values.clear()
