"""TinyBase's content hashes: FNV-1a 32 over UTF-8, combined by XOR.

Why byte-exactness matters: peers decide whether to exchange data by comparing these hashes;
a Python replica whose hashes differ from a JavaScript replica's by one bit would re-sync
forever. So the hashed strings are built exactly as TinyBase builds them (``js_stringify``),
and strings are encoded as a WHATWG ``TextEncoder`` does (lone surrogates become U+FFFD).

Every helper TinyBase's ``common`` module exports is here under its snake_case name,
including the aliases (``get_cell_in_row_hash`` and friends are the same functions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fnv_hash_fast import fnv1a_32

from localsync.core.codec import SAFE_INT_LIMIT, UNDEFINED, js_number, js_stringify
from localsync.core.codec import _js_string as _js_string_fast

__all__ = [
    "MAX_HASH",
    "add_or_remove_hash",
    "get_cell_hash",
    "get_cell_in_row_hash",
    "get_hash",
    "get_row_hash",
    "get_row_in_table_hash",
    "get_table_hash",
    "get_table_in_tables_hash",
    "get_tables_hash",
    "get_value_hash",
    "get_value_in_values_hash",
    "get_values_hash",
    "to_utf8",
]


#: the largest hash: hashes are unsigned 32-bit integers (JavaScript ``>>> 0``)
MAX_HASH: Final = 0xFFFFFFFF


def to_utf8(s: str) -> bytes:
    """UTF-8 bytes of a JavaScript string, as ``TextEncoder.encode`` produces them.

    A Python str may hold surrogate code points (from ``json.loads("\\"\\\\ud83d\\"")``,
    say). JavaScript strings are UTF-16, so a high+low pair there is one astral character
    and a lone surrogate encodes as EF BF BD; round-tripping through UTF-16 reproduces both.
    """
    try:
        return s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode()


def get_hash(string: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of ``string`` (unsigned), as TinyBase's getHash."""
    try:
        return fnv1a_32(string.encode())
    except UnicodeEncodeError:
        return fnv1a_32(to_utf8(string))


def add_or_remove_hash(hash1: int, hash2: int) -> int:
    """XOR as an unsigned 32-bit integer: adding and removing a term are the same operation."""
    return (hash1 ^ hash2) & MAX_HASH


def get_value_in_values_hash(value_id: str, value_hash: int) -> int:
    """Hash of one child inside its parent: ``H(id + ":" + decimal(hash))``."""
    text = f"{value_id}:{value_hash}"
    try:
        return fnv1a_32(text.encode())
    except UnicodeEncodeError:
        return fnv1a_32(to_utf8(text))


def get_value_hash(value: Any, hlc: str) -> int:
    """Hash of a stamped cell or value: ``H(JSON.stringify(value ?? null) + ":" + hlc)``.

    ``value`` is whatever the store holds: a stored ``"\\ufffd{...}"`` string for a local
    object write, a decoded dict/list for merged content (TinyBase hashes those differently,
    and so do we). ``UNDEFINED`` and ``None`` both hash as ``null``.
    """
    t = type(value)
    if t is str:
        text = "null:" + hlc if value == UNDEFINED else _js_string_fast(value) + ":" + hlc
    elif t is int and -SAFE_INT_LIMIT <= value <= SAFE_INT_LIMIT:
        text = f"{value}:{hlc}"
    elif value is None:
        text = "null:" + hlc
    elif t is float and value - value == 0:  # finite
        text = js_number(value) + ":" + hlc
    else:
        text = js_stringify(value) + ":" + hlc
    try:
        return fnv1a_32(text.encode())
    except UnicodeEncodeError:
        return fnv1a_32(to_utf8(text))


def get_values_hash(value_hashes: Mapping[str, int]) -> int:
    """Hash of a values map (or a row): XOR of ``H(id:hash) ^ H(id:0)`` per entry.

    The ``H(id:0)`` term is a TinyBase v5 legacy quirk that is still on the wire in v10.
    """
    result = 0
    for value_id, value_hash in value_hashes.items():
        result ^= get_value_in_values_hash(value_id, value_hash) ^ get_value_in_values_hash(
            value_id, 0
        )
    return result & MAX_HASH


def get_table_hash(row_hashes: Mapping[str, int]) -> int:
    """Hash of a table (or of all tables): XOR of ``H(id:hash)`` per entry, no legacy term."""
    result = 0
    for row_id, row_hash in row_hashes.items():
        result ^= get_value_in_values_hash(row_id, row_hash)
    return result & MAX_HASH


# TinyBase's aliases: same functions, named for where they are used.
get_cell_hash = get_value_hash
get_cell_in_row_hash = get_value_in_values_hash
get_row_hash = get_values_hash
get_row_in_table_hash = get_value_in_values_hash
get_table_in_tables_hash = get_value_in_values_hash
get_tables_hash = get_table_hash


def get_checked_values_hash(stamps: Mapping[str, Any], zero_terms: dict[str, int]) -> int:
    """``get_values_hash`` of a row's cell stamps (or the values' stamps) ``[thing, hlc,
    hash]``, each stored hash checked against its thing; -1 when one is not that thing's
    hash as stored, or not a stamp of a str HLC and an int hash (the caller looks closer).

    ``zero_terms`` caches the legacy ``H(id:0)`` term per id across calls (rows repeat their
    cell ids). Why here: a persister checks every loaded cell's hash before the store trusts
    it (10^6 cells in a big load), and this loop runs compiled.
    """
    result = 0
    for thing_id, stamp in stamps.items():
        if len(stamp) != 3:
            return -1
        thing = stamp[0]
        hlc = stamp[1]
        stored = stamp[2]
        if type(hlc) is not str or type(stored) is not int:
            return -1
        if get_value_hash(thing, hlc) != stored:
            return -1
        zero = zero_terms.get(thing_id)
        if zero is None:
            zero = zero_terms[thing_id] = get_value_in_values_hash(thing_id, 0)
        result ^= get_value_in_values_hash(thing_id, stored) ^ zero
    return result & MAX_HASH
