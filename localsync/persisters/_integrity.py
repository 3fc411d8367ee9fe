"""Checking persisted hashes against the data they describe, before a store trusts them.

Why: a MergeableStore takes the hashes of loaded content on trust (TinyBase's
``setMergeableContent`` does the same), and peers decide what to exchange by comparing those
hashes. A file or database that lost stamps (cells deleted by hand, a half-restored backup)
but kept its hashes would load silently and report the hashes of the intact data, so
anti-entropy would never restore what is missing. Recomputing the hashes from the loaded
stamps makes the loss visible to sync, which then repairs it from any intact peer.

The rule (one place, used by the file and SQLite persisters alike): every row, table and
root hash is recomputed from its children with the helpers of :mod:`localsync.core.hash`, in the
form the store's own merges produce (children's ``H(id:hash)`` terms, the ``H(id:0)``
legacy term for cells and values, ``H(id:0)`` for an empty row or table too, plus
``H(hlc)`` of the stamp's own HLC when it has one). A cell or value keeps its stored hash
when it is the hash of its thing either as stored or in the other form TinyBase hashes
object cells in (decoded object for a merged cell, the ``"\\ufffd{...}"`` string for a local
write); otherwise the hash is recomputed from the thing. Content with a hash that is not a
32-bit number, or an HLC that is not an HLC, is not damaged-but-readable: it is left as it
is, the store rejects it, and the persister then refuses to overwrite it.
"""

from __future__ import annotations

import math
from typing import Any

from localsync.core.codec import decode_if_json, encode_if_json, is_encoded_json
from localsync.core.hash import (
    MAX_HASH,
    get_checked_values_hash,
    get_hash,
    get_table_hash,
    get_value_hash,
    get_values_hash,
)
from localsync.core.hlc import is_hlc

__all__ = ["HashesRepaired", "recompute_hashes"]


class HashesRepaired(Exception):
    """Stored hashes did not match the stored stamps; the load used recomputed hashes.

    Reported through ``on_ignored_error`` after a load that succeeded: the content is in the
    store (with truthful hashes, so sync can restore what the storage lost), and the next
    save writes the corrected hashes.
    """

    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.count = count
        super().__init__(
            f"{path!r}: {count} stored hash(es) did not match the stored data; loaded with "
            "recomputed hashes (sync with a peer restores anything the storage lost)"
        )


_MAX_HASH = MAX_HASH


class _Malformed(Exception):
    """A stamp whose HLC or hash is not even of the right type: left to the store to judge."""


def _stored_hash(stamp: list[Any]) -> int:
    if len(stamp) < 3:
        return 0
    stored = stamp[2]
    if type(stored) is not int or not 0 <= stored <= _MAX_HASH:
        raise _Malformed
    return stored


def _hlc_of(stamp: list[Any]) -> str:
    hlc = stamp[1] if len(stamp) > 1 else ""
    if type(hlc) is not str or (hlc and not is_hlc(hlc, math.inf)):
        raise _Malformed  # (not an HLC at all: the store rejects it, no hash can fix it)
    return hlc


def _hlc_term(stamp: list[Any]) -> int:
    hlc = _hlc_of(stamp)
    return get_hash(hlc) if hlc else 0


Fixes = list[tuple[list[Any], int]]


def _check(stamp: list[Any], computed: int, fixes: Fixes) -> int:
    if len(stamp) < 3 or _stored_hash(stamp) != computed:
        fixes.append((stamp, computed))
    return computed


def _leaf(stamp: list[Any], fixes: Fixes) -> int:
    """The hash one cell or value stamp ``[thing, hlc, hash]`` should have."""
    thing = stamp[0]
    hlc = _hlc_of(stamp)
    stored = _stored_hash(stamp)
    try:
        computed = get_value_hash(thing, hlc)
    except (TypeError, ValueError, RecursionError) as error:
        raise _Malformed from error
    if stored == computed:
        return stored
    if is_encoded_json(thing) or isinstance(thing, dict | list):
        # TinyBase hashes an object cell as its stored string when written locally and as
        # the decoded object when merged: either is a truthful hash of this thing
        try:
            other = decode_if_json(thing) if is_encoded_json(thing) else encode_if_json(thing)
            if get_value_hash(other, hlc) == stored:
                return stored
        except (TypeError, ValueError, RecursionError):
            pass
    return _check(stamp, computed, fixes)


def _things(stamp: list[Any], fixes: Fixes, zero_terms: dict[str, int]) -> int:
    """The hash a row or the values stamp should have, from its leaves."""
    children = stamp[0]
    # the common case in one compiled call (every leaf intact): a load checks every cell
    leaves = get_checked_values_hash(children, zero_terms) if type(children) is dict else -1
    if leaves < 0:
        hashes = {thing_id: _leaf(thing_stamp, fixes) for thing_id, thing_stamp in children.items()}
        leaves = get_values_hash(hashes)
    return _check(stamp, leaves ^ _hlc_term(stamp), fixes)


def _parent_hash(child_hashes: dict[str, int]) -> int:
    """A table's (or all tables') hash from its children's, empty ones included: the store
    counts an empty row's (or table's) ``H(id:0)`` term and replaces it when the row gains
    content, as a TinyBase replica that received it once does."""
    return get_table_hash(child_hashes)


def recompute_hashes(content: list[Any]) -> int:
    """Make every hash in encoded mergeable ``content`` match its stamps, in place.

    Args:
        content: ``[[tables, hlc, hash], [values, hlc, hash]]`` as read from storage (shape
            already checked); hashes that need correcting are replaced in place.

    Returns:
        How many stamps had a stored hash that differed from the recomputed one (0 for
        intact storage). When some HLC or hash is not even of the right type (a string
        where a number belongs), nothing is changed and 0 is returned: such content is not
        damaged-but-readable, and the store's own validation rejects it.
    """
    fixes: Fixes = []
    zero_terms: dict[str, int] = {}  # (H(id:0) per cell or value id, see _things)
    tables_stamp, values_stamp = content[0], content[1]
    try:
        table_hashes: dict[str, int] = {}
        for table_id, table_stamp in tables_stamp[0].items():
            row_hashes = {
                row_id: _things(row_stamp, fixes, zero_terms)
                for row_id, row_stamp in table_stamp[0].items()
            }
            table_hashes[table_id] = _check(
                table_stamp, _parent_hash(row_hashes) ^ _hlc_term(table_stamp), fixes
            )
        _check(tables_stamp, _parent_hash(table_hashes) ^ _hlc_term(tables_stamp), fixes)
        _things(values_stamp, fixes, zero_terms)
    except (_Malformed, TypeError, ValueError, AttributeError, IndexError, RecursionError):
        return 0
    for stamp, new_hash in fixes:
        while len(stamp) < 2:
            stamp.append("")
        if len(stamp) < 3:
            stamp.append(new_hash)
        else:
            stamp[2] = new_hash
    return len(fixes)
