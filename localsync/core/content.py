"""The stored form of cells and values: validation, encoding and decoding.

Object and array cells are stored as TinyBase 10 stores them, the string
``"\\ufffd" + JSON.stringify(obj)``, so what is hashed, persisted and sent is byte-identical to
what a JavaScript replica holds; the public getters decode them. Public input that does not fit
raises ``TypeError``/``ValueError`` (``encode_cell``); data that arrived already encoded, from a
peer or a file, is filtered instead (``encode_accepted``, ``accept_content``), as TinyBase drops
an invalid cell rather than failing.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NoReturn

from localsync.core.codec import (
    JSON_PREFIX,
    SAFE_FLOAT_LIMIT,
    SAFE_INT_LIMIT,
    UNDEFINED,
    js_number,
    js_stringify,
)

__all__ = [
    "ABSENT",
    "accept_content",
    "bad_ids",
    "check_content",
    "check_dict",
    "check_id",
    "check_json",
    "checked_id",
    "decode",
    "decode_table",
    "encode_accepted",
    "encode_cell",
    "encode_changes",
    "encode_row",
    "encode_table",
    "encode_tables",
    "encode_values",
    "fits_js_number",
    "identity",
    "js_ordered",
    "public",
    "public_change",
    "reject_constant",
    "release_id",
    "same_cell",
    "same_or_absent",
]


class _Absent:
    """Marks a cell or value that did not exist (``None`` is a real value in TinyBase 10)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final[Any] = _Absent()
_BIG: Final = SAFE_FLOAT_LIMIT
_BIG_INT: Final = SAFE_INT_LIMIT
_HUGE: Final = 1e21
_INTEGER: Final = re.compile(r"\d+")
_MAX_POOL: Final = 1000


def check_json(value: Any, depth: int = 0) -> None:
    """Raise unless ``value`` is JSON that survives a round trip through a JavaScript peer."""
    if depth > 500:
        raise ValueError("object cell nested too deeply")
    t = type(value)
    if t is str or t is bool or value is None:
        return
    if t is int:
        if not fits_js_number(value):
            raise ValueError("object cells cannot hold an int too large for JavaScript")
        return
    if t is float:
        if value - value != 0:
            raise ValueError(f"object cells cannot hold the non-finite number {value!r}")
        return
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"object cell keys must be str, not {type(key).__name__}")
            check_json(item, depth + 1)
        return
    if t is list:
        for item in value:
            check_json(item, depth + 1)
        return
    raise TypeError(f"object cells cannot hold a {t.__name__} ({value!r:.60})")


def encode_cell(value: Any, what: str = "cell") -> Any:
    """Validate a cell or value from the public API and return its stored form.

    str/int/float/bool/None are stored as they are; dict/list become ``"\\ufffd" + JSON``.
    Raises ``ValueError`` for non-finite floats and for the strings TinyBase reserves
    (exactly ``"\\ufffc"``, or anything starting with ``"\\ufffd"``), ``TypeError`` otherwise.
    """
    t = type(value)
    if t is str:
        if value[:1] == JSON_PREFIX or value == UNDEFINED:
            raise ValueError(
                f"a {what} string cannot be {value!r:.20}: U+FFFC and a leading U+FFFD are "
                "reserved by TinyBase's encoding"
            )
        return value
    if t is int:
        if -_BIG <= value <= _BIG:
            return value
        try:
            as_float = float(value)
        except OverflowError:
            raise ValueError(
                f"a {what} must fit in a JavaScript number, not {str(value)[:24]}..."
            ) from None
        return _js_integer(as_float) if -_HUGE < as_float < _HUGE else as_float
    if t is bool or value is None:
        return value
    if t is float:
        if value - value != 0:
            raise ValueError(f"a {what} must be a finite number, not {value!r}")
        if _BIG <= value < _HUGE or -_HUGE < value <= -_BIG:
            return _js_integer(value)
        return value
    if t is dict or t is list:
        check_json(value)
        return JSON_PREFIX + js_stringify(value)
    raise TypeError(f"a {what} must be str, int, float, bool, None, dict or list, not {t.__name__}")


def fits_js_number(value: int) -> bool:
    """True when an int is a finite JavaScript number (beyond that JSON gives Infinity)."""
    if -_BIG_INT <= value <= _BIG_INT:
        return True
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _js_integer(value: float) -> int:
    """The int a JavaScript peer's JSON gives for a large integral number (``js_number``).

    The same double, so hashes and the wire are unchanged, but the writer's Python value then
    equals what every receiver decodes.
    """
    return int(js_number(value))


def encode_accepted(value: Any) -> Any:
    """Stored form of a cell that arrived already encoded (from a peer or a file), or ABSENT.

    Mirrors TinyBase's ``acceptingEncodedData`` mode: a ``"\\ufffd"`` string must hold a JSON
    object or array; an invalid cell is dropped (ABSENT) rather than raised, as TinyBase drops
    it, because peer data must never break the receiver.
    """
    t = type(value)
    if t is str:
        if value[:1] == JSON_PREFIX:
            try:
                decoded = json.loads(value[1:], parse_constant=reject_constant)
            except (ValueError, RecursionError):
                return ABSENT
            return value if type(decoded) is dict or type(decoded) is list else ABSENT
        return ABSENT if value == UNDEFINED else value
    try:
        return encode_cell(value)
    except (TypeError, ValueError, RecursionError):
        return ABSENT


def reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and Infinity are not JSON."""
    raise ValueError(name)


def decode(value: Any) -> Any:
    """Public form of a stored cell: ``"\\ufffd{...}"`` strings become fresh objects."""
    if type(value) is str and value[:1] == JSON_PREFIX:
        return json.loads(value[1:])
    return value


def same_cell(a: Any, b: Any) -> bool:
    """JavaScript ``===`` for stored cells: 1 and 1.0 are the same number, True and 1 are not."""
    return a == b and (type(a) is bool) is (type(b) is bool)


_DIGITS = frozenset("0123456789")
_MAX_INDEX = 2**32 - 2


def _is_index(key: str) -> bool:
    """True for a JavaScript array-index key ("0", "7", not "07")."""
    return (
        key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX
    )


def js_ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` in JavaScript's own-property order: array-index keys ascending, then the rest.

    TinyBase walks the objects it is given in that order, so rows, cells and values are
    written (and stamped, and reported to listeners) in that order; we must do the same.
    Returns ``obj`` itself when it has no index-like key or at most one entry (the common
    cases: most messages carry one table, one row, one cell).
    """
    if len(obj) < 2:
        return obj
    digits = _DIGITS
    for key in obj:
        if key[:1] in digits and _is_index(key):
            break
    else:
        return obj
    indexes = sorted((key for key in obj if _is_index(key)), key=int)
    ordered = {key: obj[key] for key in indexes}
    for key, value in obj.items():
        if key not in ordered:
            ordered[key] = value
    return ordered


def check_id(value: Any, what: str) -> None:
    """Raise ``TypeError`` ("table id must be a str, not int") unless ``value`` is a str."""
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def checked_id(value: Any, what: str) -> str:
    """``value``, once ``check_id`` has found it a str."""
    check_id(value, what)
    return str(value)


def release_id(pool: list[str], id_: str) -> None:
    """Put a row or listener id that is free again into its pool, to be handed out again.

    As TinyBase's id pools: only integer ids are reused, and a pool keeps at most 1000.
    """
    if len(pool) < _MAX_POOL and _INTEGER.fullmatch(id_):
        pool.append(id_)


def bad_ids(*named_ids: tuple[str, object]) -> NoReturn:
    """Raise the ``TypeError`` for the first of ``(name, id)`` whose id is not a str.

    The public methods take ids typed ``object``, test ``type(x) is str`` themselves and call
    this only when one is not, so the compiled and the pure-Python builds raise the same error.
    """
    for what, value in named_ids:
        check_id(value, what)
    raise AssertionError("bad_ids called with valid ids")  # pragma: no cover


def check_dict(value: Any, what: str) -> None:
    """Raise ``TypeError`` ("a row must be a dict, not list") unless ``value`` is a dict."""
    if type(value) is not dict:
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")


def encode_row(row: Any) -> dict[str, Any]:
    """Validate a public row and return it in stored form and JavaScript order (raises)."""
    check_dict(row, "a row")
    out: dict[str, Any] = {}
    for cell_id, cell in row.items():
        check_id(cell_id, "cell id")
        out[cell_id] = encode_cell(cell)
    return js_ordered(out)


def encode_table(table: Any) -> dict[str, dict[str, Any]]:
    """Validate a public table (see ``encode_row``); empty rows are dropped, as in TinyBase."""
    check_dict(table, "a table")
    rows = {checked_id(r, "row id"): encode_row(row) for r, row in table.items()}
    return js_ordered({r: row for r, row in rows.items() if row})


def encode_tables(tables: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Validate public tables (see ``encode_row``); empty tables are dropped."""
    check_dict(tables, "tables")
    encoded = {checked_id(t, "table id"): encode_table(table) for t, table in tables.items()}
    return js_ordered({t: table for t, table in encoded.items() if table})


def encode_values(values: Any) -> dict[str, Any]:
    """Validate public values and return them in stored form and JavaScript order (raises)."""
    check_dict(values, "values")
    out: dict[str, Any] = {}
    for value_id, value in values.items():
        check_id(value_id, "value id")
        out[value_id] = encode_cell(value, "value")
    return js_ordered(out)


def check_content(content: Any) -> tuple[Any, Any]:
    """``(tables, values)`` of a content pair; raises ``TypeError`` for anything else."""
    if type(content) not in (list, tuple) or len(content) != 2:
        raise TypeError("content must be a [tables, values] pair")
    return content[0], content[1]


def encode_changes(changes: Any) -> tuple[list[tuple[Any, ...]], list[tuple[str, Any]]]:
    """Validate TinyBase changes ``[tables, values, 1]`` and return the steps to apply them.

    Returns ``(steps, value_steps)``: ``(table_id,)`` deletes a table, ``(table_id, row_id)`` a
    row, ``(table_id, row_id, cell_id, cell)`` writes a cell in stored form or deletes it (cell
    ABSENT); ``(value_id, value)`` likewise. UNDEFINED (or None for a table or row) deletes.

    Raises:
        TypeError, ValueError: as ``encode_cell`` and ``check_id``, for any part of changes.
    """
    if type(changes) not in (list, tuple) or len(changes) < 2:
        raise TypeError("changes must be [tables, values, 1]")
    tables, values = changes[0], changes[1]
    check_dict(tables, "changed tables")
    check_dict(values, "changed values")
    steps: list[tuple[Any, ...]] = []
    for t, table in tables.items():
        check_id(t, "table id")
        if table is None or table == UNDEFINED:
            steps.append((t,))
            continue
        check_dict(table, "a changed table")
        for r, row in table.items():
            check_id(r, "row id")
            if row is None or row == UNDEFINED:
                steps.append((t, r))
                continue
            check_dict(row, "a changed row")
            for c, cell in row.items():
                check_id(c, "cell id")
                steps.append((t, r, c, ABSENT if cell == UNDEFINED else encode_cell(cell)))
    for v in values:
        check_id(v, "value id")
    value_steps = [
        (v, ABSENT if value == UNDEFINED else encode_cell(value, "value"))
        for v, value in values.items()
    ]
    return steps, value_steps


def accept_content(tables: Any, values: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tables, values)`` in stored form, keeping only what ``encode_accepted`` accepts.

    Anything of the wrong shape (a non-str id, a non-dict table or row, an invalid cell) is
    dropped, and so is a row or table left empty.
    """
    out_tables: dict[str, Any] = {}
    if type(tables) is dict:
        for t, table in tables.items():
            if type(t) is not str or type(table) is not dict:
                continue
            out_table: dict[str, Any] = {}
            for r, row in table.items():
                if type(r) is str and type(row) is dict:
                    out_row = _accept_map(row)
                    if out_row:
                        out_table[r] = out_row
            if out_table:
                out_tables[t] = out_table
    return out_tables, _accept_map(values) if type(values) is dict else {}


def _accept_map(cells: dict[Any, Any]) -> dict[str, Any]:
    """The str-keyed entries of a row or of values that ``encode_accepted`` accepts."""
    out: dict[str, Any] = {}
    for key, cell in cells.items():
        if type(key) is str:
            encoded = encode_accepted(cell)
            if encoded is not ABSENT:
                out[key] = encoded
    return out


def same_or_absent(old: Any, new: Any) -> bool:
    """``same_cell`` that also knows ABSENT: True when nothing changed between old and new."""
    if old is ABSENT or new is ABSENT:
        return old is new
    return old == new and (type(old) is bool) is (type(new) is bool)


def public(value: Any) -> Any:
    """Listener form of a stored cell: decoded, and UNDEFINED for a cell that does not exist.

    TinyBase passes ``undefined``; None would be ambiguous with a real null cell.
    """
    return UNDEFINED if value is ABSENT else decode(value)


def public_change(entry: list[Any] | None, current: Any) -> list[Any]:
    """``[changed, old, new]`` in listener form (TinyBase's getCellChange/getValueChange).

    Args:
        entry: the transaction's ``[old, new]`` record of the cell or value, or None.
        current: the stored cell or value (ABSENT: none), used when ``entry`` is None.
    """
    if entry is None:
        now = public(current)
        return [False, now, now]
    return [True, public(entry[0]), public(entry[1])]


def decode_table(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A table in public form: a fresh dict of fresh rows of decoded cells."""
    return {r: {c: decode(v) for c, v in row.items()} for r, row in table.items()}


def identity(value: Any) -> Any:
    """The stored form as it is (the encoded counterpart of ``decode``)."""
    return value
