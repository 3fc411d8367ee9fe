"""JavaScript-exact serialisation helpers shared by the store, the hashes and the wire.

Why this module exists: TinyBase hashes ``JSON.stringify(value) + ":" + hlc`` and puts
``"\\ufffd" + JSON.stringify(obj)`` on the wire for object cells. Any byte that differs from
what JavaScript produces (a ``1.0`` instead of ``1``, an escaped ``é``, a different key order)
gives a different FNV hash, and two converged replicas would then disagree forever about
whether they are in sync. So numbers, strings and key order follow ECMAScript exactly here,
rather than Python's ``json`` defaults.

Public names:

* ``UNDEFINED`` (U+FFFC): how JavaScript ``undefined`` travels (deletion stamps).
* ``JSON_PREFIX`` (U+FFFD): marks a stored string that holds an encoded object/array cell.
* ``get_unique_id(length=16)``: TinyBase's ``getUniqueId``.
* ``js_number(x)``: ECMAScript ``Number::toString``.
* ``js_stringify(value)``: ``JSON.stringify`` for JSON-shaped Python data.
* ``encode_json_cell(obj)`` / ``encode_if_json(value)`` / ``decode_if_json(value)`` /
  ``is_encoded_json(value)``: TinyBase's ``encodeIfJson`` / ``decodeIfJson`` pair.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from json.encoder import encode_basestring as _encode_basestring
from typing import Any, Final

__all__ = [
    "ALPHABET_PATTERN",
    "ENCODE",
    "JSON_PREFIX",
    "SAFE_FLOAT_LIMIT",
    "SAFE_INT_LIMIT",
    "STAMP_OVERHEAD",
    "UNDEFINED",
    "decode_if_json",
    "encode_if_json",
    "encode_json_cell",
    "get_unique_id",
    "is_encoded_json",
    "js_number",
    "js_stringify",
]

UNDEFINED: Final = "\ufffc"
JSON_PREFIX: Final = "\ufffd"

# TinyBase's 64-character alphabet (also the HLC alphabet); index = 6-bit value.
ENCODE: Final = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
#: one character of ENCODE as a regular expression (HLCs and unique ids are made of them)
ALPHABET_PATTERN: Final = "[" + re.escape(ENCODE) + "]"
_ENCODE_BYTES: Final = ENCODE.encode("ascii")
# a one-cell change's HLCs: str.strip (no encoding, no table) for up to this many characters;
# strip compares each character with the 64 of the alphabet, so longer texts are translated
_STRIP_AT_MOST: Final = 256

#: Number.MAX_SAFE_INTEGER + 1: an int of at most this magnitude is exactly the JavaScript
#: number of the same value; beyond it a JavaScript peer holds the nearest double
SAFE_INT_LIMIT: Final = 2**53
SAFE_FLOAT_LIMIT: Final = float(SAFE_INT_LIMIT)
#: estimated JSON bytes of a stamp besides its id and value (quotes, brackets, commas and a
#: 16-character HLC): the size caps of built and coalesced ContentDiffs
STAMP_OVERHEAD: Final = 32
# Canonical array-index keys: "0" or no leading zero, value <= 2**32 - 2 (checked separately).
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_MAX_ARRAY_INDEX = 2**32 - 2
_DIGITS = frozenset("0123456789")
_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_HIGH = re.compile(r"[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")


def only_hlc_chars(text: str) -> bool:
    """Every character of ``text`` in the HLC alphabet (``[-0-9A-Z_a-z]*``).

    Checks every HLC a received message carries, joined into one string. Not a regular
    expression: the regex engine's code is one more thing a process woken by a message runs
    with cold caches (``str.strip`` and a byte translation are small loops).
    """
    if len(text) <= _STRIP_AT_MOST:
        return not text.strip(ENCODE)  # (what is left holds a character outside the alphabet)
    return text.isascii() and not text.encode("ascii").translate(None, _ENCODE_BYTES)


def get_unique_id(length: int = 16) -> str:
    """Random id made of ``length`` alphabet characters, as TinyBase's ``getUniqueId``.

    Each random byte keeps only its low six bits, exactly as TinyBase does, so ids generated
    here look the same as (and are as unique as) those of JavaScript peers. The bytes come
    from ``os.urandom`` a kilobyte at a time: an id is drawn for every ContentDiff a process
    sends, and its own ``getrandom`` system call was on the path of every one-cell change.
    """
    global _pool, _pool_at
    _pool_lock.acquire()  # (not ``with``: compiled, that looks __enter__/__exit__ up per call)
    try:
        start = _pool_at
        end = start + length
        if end > len(_pool):
            if length > _POOL_BYTES:
                return os.urandom(length).translate(_UNIQUE_ID_TABLE).decode("ascii")
            _pool = os.urandom(_POOL_BYTES).translate(_UNIQUE_ID_TABLE).decode("ascii")
            start, end = 0, length
        _pool_at = end
        return _pool[start:end]
    finally:
        _pool_lock.release()


def _forget_pool() -> None:
    """A forked child must not hand out the ids its parent has not used yet."""
    global _pool, _pool_at
    _pool, _pool_at = "", 0


# byte -> ENCODE[byte & 63], for bytes.translate (one C call per kilobyte of ids)
_UNIQUE_ID_TABLE = bytes(ord(ENCODE[b & 63]) for b in range(256))
_POOL_BYTES = 1024
_pool = ""  # characters drawn ahead; the next id starts at _pool_at
_pool_at = 0
_pool_lock = threading.Lock()
os.register_at_fork(after_in_child=_forget_pool)


# --------------------------------------------------------------------------------- numbers


def js_number(x: float | int) -> str:
    """ECMAScript ``Number::toString(x)`` (what ``String(x)`` and ``JSON.stringify`` print).

    Python ints are treated as the JavaScript number they would become: above 2**53 they
    are rounded to the nearest double first, because that is the value a JavaScript peer
    receives and hashes. Non-finite numbers give ``NaN``/``Infinity``/``-Infinity`` like
    ``String()``; ``js_stringify`` turns them into ``null`` as ``JSON.stringify`` does.
    """
    if type(x) is float:
        r = repr(x)
    elif type(x) is int:
        if -SAFE_INT_LIMIT <= x <= SAFE_INT_LIMIT:
            return str(x)
        try:
            r = repr(float(x))
        except OverflowError:
            return "Infinity" if x > 0 else "-Infinity"
    elif isinstance(x, bool):
        raise TypeError("js_number() takes a number, not a bool")
    elif isinstance(x, int):  # int subclass (IntEnum and friends): use its integer value
        return js_number(int(x))
    else:
        r = repr(float(x))
    if "e" not in r:
        # repr uses fixed notation only for 1e-4 <= |x| < 1e16, where it prints the same
        # shortest round-trip digits as JavaScript; only the trailing ".0" differs.
        if r[-2:] == ".0":
            return "0" if r == "-0.0" else r[:-2]
        if r[-1] in "fn":  # inf, -inf, nan
            return _NON_FINITE[r]
        return r
    return _js_number_exponent(r)


def _js_number_exponent(r: str) -> str:
    """Re-lay out Python's scientific repr (shortest digits) by the ECMAScript rules."""
    sign = ""
    if r[0] == "-":
        sign = "-"
        r = r[1:]
    mantissa, _, exp_text = r.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    # value = 0.<digits> * 10**n  (ECMAScript's k digits and n exponent)
    n = int(exp_text) + len(int_part)
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = ("e+" if e >= 0 else "e-") + str(abs(e))
    if k == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp


# --------------------------------------------------------------------------------- strings


def _escape_surrogate(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) == 2:  # a well-formed pair: JavaScript sees one astral character
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    return f"\\u{ord(text):04x}"


def _js_string(s: str) -> str:
    """``JSON.stringify`` of a string.

    The C ``encode_basestring`` (ensure_ascii=False) escapes exactly what JavaScript does
    (quote, backslash, U+0000-U+001F with \\b \\f \\n \\r \\t or lowercase \\u00XX) and leaves
    everything else, including U+2028/9 and DEL, alone. It differs only for surrogate code
    points, which JavaScript (ES2019 well-formed stringify) escapes when lone.
    """
    out = _encode_basestring(s)
    if not s.isascii() and _SURROGATE.search(s) is not None:
        out = _HIGH.sub(_escape_surrogate, out)
    return out


# --------------------------------------------------------------------------------- JSON


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _ordered_items(obj: dict[Any, Any]) -> list[tuple[str, Any]]:
    """Items in JavaScript's own-property order: array indexes ascending, then insertion."""
    indexes: list[tuple[int, str, Any]] = []
    others: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if type(key) is not str:
            raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        if key and key[0] in "0123456789" and _is_array_index(key):
            indexes.append((int(key), key, value))
        else:
            others.append((key, value))
    if not indexes:
        return others
    indexes.sort(key=lambda item: item[0])
    return [(key, value) for _, key, value in indexes] + others


def _key_text(key: str) -> str:
    return _encode_basestring(key) if key.isascii() else _js_string(key)


def _write(value: Any, append: Callable[[str], None]) -> None:
    """Append the JSON text of ``value`` in pieces (one join at the end beats nested concat)."""
    t = type(value)
    if t is str:
        append(_encode_basestring(value) if value.isascii() else _js_string(value))
    elif t is int:
        if -SAFE_INT_LIMIT <= value <= SAFE_INT_LIMIT:
            append(str(value))
        else:
            text = js_number(value)
            append("null" if text[-1] == "y" else text)  # beyond double range: Infinity
    elif t is list or t is tuple:
        append("[")
        first = True
        for item in value:
            if first:
                first = False
            else:
                append(",")
            _write(item, append)
        append("]")
    elif t is dict:
        append("{")
        items: Any = value.items()
        for key in value:
            if type(key) is not str or key[:1] in _DIGITS:
                items = _ordered_items(value)  # may hold array-index keys: JavaScript order
                break
        first = True
        for key, item in items:
            if first:
                append(_key_text(key) + ":")
                first = False
            else:
                append("," + _key_text(key) + ":")
            _write(item, append)
        append("}")
    elif t is float:
        append(js_number(value) if value - value == 0 else "null")  # NaN, +-inf: null
    elif t is bool:
        append("true" if value else "false")
    elif value is None:
        append("null")
    elif isinstance(value, bool):
        append("true" if value else "false")
    elif isinstance(value, str):
        _write(str(value), append)
    elif isinstance(value, int):
        _write(int(value), append)
    elif isinstance(value, float):
        _write(float(value), append)
    elif isinstance(value, dict):
        _write(dict(value), append)
    elif isinstance(value, list | tuple):
        _write(list(value), append)
    else:
        raise TypeError(f"{t.__name__} is not JSON-serialisable the way TinyBase stores values")


def _stringify(value: Any) -> str:
    parts: list[str] = []
    _write(value, parts.append)
    return "".join(parts)


def js_stringify(value: Any) -> str:
    """``JSON.stringify(value)`` for JSON-shaped Python data, byte for byte.

    Compact separators; strings escaped as JavaScript escapes them (non-ASCII kept);
    numbers by ``js_number`` with NaN/Infinity as ``null``; ``None`` as ``null``; dict keys
    in JavaScript order (canonical array indexes first, ascending). Tuples count as arrays.
    Raises ``TypeError`` for anything else (bytes, sets, non-string keys, objects), rather
    than guessing a representation no JavaScript peer would produce.
    """
    t = type(value)
    if t is str:
        return _js_string(value)
    if t is int and -SAFE_INT_LIMIT <= value <= SAFE_INT_LIMIT:
        return str(value)
    return _stringify(value)


# --------------------------------------------------------------------------------- cells


def encode_json_cell(obj: dict[str, Any] | list[Any]) -> str:
    """Stored form of an object/array cell: ``"\\ufffd" + JSON.stringify(obj)``."""
    return JSON_PREFIX + _stringify(obj)


def encode_if_json(value: Any) -> Any:
    """TinyBase's ``encodeIfJson``: objects and arrays become their stored string form."""
    if isinstance(value, dict | list | tuple):
        return JSON_PREFIX + _stringify(value)
    return value


def is_encoded_json(value: Any) -> bool:
    """True for a stored string holding an encoded object/array cell."""
    return type(value) is str and value[:1] == JSON_PREFIX


def decode_if_json(value: Any) -> Any:
    """TinyBase's ``decodeIfJson``: a ``"\\ufffd..."`` string becomes the parsed object.

    Other values are returned unchanged. Key order of the parsed object is the order in the
    text (which, for text made by ``JSON.stringify``, is already JavaScript's order). Raises
    ``ValueError`` (``json.JSONDecodeError``) when the text after the prefix is not JSON.
    """
    if type(value) is str and value[:1] == JSON_PREFIX:
        return json.loads(value[1:], parse_constant=reject_constant)
    return value


def reject_constant(name: str) -> Any:
    # JSON.parse rejects NaN/Infinity literals; Python's json would accept them.
    raise ValueError(f"invalid JSON literal {name!r}")
