"""TinyBase's Store in Python: tables of rows of cells, keyed values, transactions, listeners.

Why it is shaped like this:

* Data lives in plain nested dicts (``table_id -> row_id -> cell_id -> cell``) so reads are
  dict lookups. Object/array cells are kept in TinyBase 10's stored form, the string
  ``"\\ufffd" + JSON.stringify(obj)``, so what we hash, persist and send is byte-identical to
  what a JavaScript replica holds; the public getters decode them.
* Every write happens inside a transaction (an implicit one per call). A transaction records
  only the cells and values it touched, as ``[old, new]`` pairs in a flat dict. That one record
  serves rollback, listeners and ``get_transaction_changes``; everything else listeners need
  (which ids appeared or vanished, row counts) is derived from it at the end, and only when a
  listener of that kind exists, so a store without listeners pays almost nothing per cell.
* Unlike TinyBase, invalid input raises ``TypeError``/``ValueError`` before anything is applied
  (TinyBase silently drops the invalid cell and keeps the rest). Validation happens before the
  transaction starts, so catching such an error inside ``with store.transaction():`` does not
  poison the surrounding transaction.
* ``store.lock`` (a re-entrant lock) is held for the whole of every transaction, listeners
  included, so a sync thread and a user thread can write to the same store.

Where Python differs from TinyBase on purpose:

* Invalid cells, values, ids and containers raise (see above); empty rows, tables and
  values are still silently skipped, as in TinyBase (the vectors record that).
* ``get_cell``/``get_value`` return None for a missing cell (use ``has_cell``). Listener
  arguments and ``get_cell_change`` use ``UNDEFINED`` for "no cell", because None is a real
  (null) cell in TinyBase 10.
* Rolling back restores every cell, including object cells. (TinyBase 10.0.1 re-sets rolled
  back cells through its non-encoded setter, which drops an object cell as a reserved string;
  found by the differential tests.) HLCs drawn before the error stay drawn.
* A number beyond 2**53 is stored as the value a JavaScript replica holds and prints:
  ``5.188014356485426e16`` and ``51880143564854257`` both become ``51880143564854260``, and
  from 1e21 up a float; the same double, hash and wire text, but the Python value then
  equals what every receiver decodes. Ints too large for a JavaScript number raise.
* Writes made by non-mutator listeners (during did-finish) are ignored, as in TinyBase.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
from collections.abc import Callable
from typing import Any, Final, Literal, NoReturn

from localsync.core.codec import (
    JSON_PREFIX,
    SAFE_FLOAT_LIMIT,
    SAFE_INT_LIMIT,
    UNDEFINED,
    js_number,
    js_stringify,
)

__all__ = ["Store", "create_store"]

Listener = Callable[..., Any]


class _Absent:
    """Marks a cell or value that did not exist (``None`` is a real value in TinyBase 10)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final[Any] = _Absent()
_INTEGER = re.compile(r"\d+")
_MAX_POOL = 1000

# listener kind -> number of ids it is registered with
_LISTENER_ID_COUNTS: dict[str, int] = {
    "has_tables": 0,
    "tables": 0,
    "table_ids": 0,
    "has_table": 1,
    "table": 1,
    "table_cell_ids": 1,
    "has_table_cell": 2,
    "row_count": 1,
    "row_ids": 1,
    "has_row": 2,
    "row": 2,
    "cell_ids": 2,
    "has_cell": 3,
    "cell": 3,
    "has_values": 0,
    "values": 0,
    "value_ids": 0,
    "has_value": 1,
    "value": 1,
}
# listener kind -> the names of its ids (for error messages)
_TABLE: Final = ("table id",)
_ROW: Final = ("table id", "row id")
_CELL: Final = ("table id", "row id", "cell id")
_LISTENER_ID_NAMES: dict[str, tuple[str, ...]] = {
    **{kind: () for kind, count in _LISTENER_ID_COUNTS.items() if count == 0},
    **dict.fromkeys(("has_table", "table", "table_cell_ids", "row_count", "row_ids"), _TABLE),
    "has_table_cell": ("table id", "cell id"),
    **dict.fromkeys(("has_row", "row", "cell_ids"), _ROW),
    **dict.fromkeys(("has_cell", "cell"), _CELL),
    **dict.fromkeys(("has_value", "value"), ("value id",)),
}
_TABULAR_KINDS = (
    "has_tables",
    "tables",
    "table_ids",
    "has_table",
    "table",
    "table_cell_ids",
    "has_table_cell",
    "row_count",
    "row_ids",
    "has_row",
    "row",
    "cell_ids",
    "has_cell",
    "cell",
)
_VALUES_KINDS = ("has_values", "values", "value_ids", "has_value", "value")
#: listener kinds that need the ids worked out by ``_derive_changes``
_DERIVED_ID_KINDS = (
    "table_ids",
    "has_table",
    "row_count",
    "row_ids",
    "has_row",
    "cell_ids",
    "has_cell",
)

_ID_KINDS = (*_DERIVED_ID_KINDS, "value_ids", "has_value")
_TABULAR_SET: Final = frozenset(_TABULAR_KINDS)
_VALUES_SET: Final = frozenset(_VALUES_KINDS)
_DERIVED_ID_SET: Final = frozenset(_DERIVED_ID_KINDS)
_CELL_UP_SET: Final = frozenset(("cell", "row", "table", "tables"))


# ------------------------------------------------------------------------------ validation


def _check_json(value: Any, depth: int = 0) -> None:
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
            _check_json(item, depth + 1)
        return
    if t is list:
        for item in value:
            _check_json(item, depth + 1)
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
        _check_json(value)
        return JSON_PREFIX + js_stringify(value)
    raise TypeError(f"a {what} must be str, int, float, bool, None, dict or list, not {t.__name__}")


_BIG: Final = SAFE_FLOAT_LIMIT
_BIG_INT: Final = SAFE_INT_LIMIT
_HUGE: Final = 1e21


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
    """The int a JavaScript peer's JSON gives for a large integral number.

    From 2**53 up to 1e21 JavaScript prints such a number as its shortest round-trip digits
    (``51880143564854260``), which Python's json reads back as an int that does not compare
    equal to the float. Storing that int keeps the writer's and every receiver's Python value
    equal; it is the same double, so hashes and the wire are unchanged.
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
                decoded = json.loads(value[1:], parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                return ABSENT
            return value if type(decoded) is dict or type(decoded) is list else ABSENT
        return ABSENT if value == UNDEFINED else value
    try:
        return encode_cell(value)
    except (TypeError, ValueError, RecursionError):
        return ABSENT


def _reject_constant(name: str) -> Any:
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
    return (
        key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX
    )


def js_ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` in JavaScript's own-property order: array-index keys ascending, then the rest.

    TinyBase walks the objects it is given in that order, so rows, cells and values are
    written (and stamped, and reported to listeners) in that order; we must do the same.
    Returns ``obj`` itself when it has no index-like key (the common case).
    """
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


def _check_id(value: Any, what: str) -> None:
    """Raise ``TypeError`` ("table id must be a str, not int") unless ``value`` is a str."""
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _bad_ids(*named_ids: tuple[str, object]) -> NoReturn:
    """Raise the ``TypeError`` for the first of ``(name, id)`` whose id is not a str.

    The public methods take ids typed ``object`` and test ``type(x) is str`` themselves
    (a few ns), calling this only when one is not: so the compiled (mypyc) build and the pure
    Python build raise the same "table id must be a str, not int" (mypyc's own argument check
    would say "str object expected; got int"), and the per-cell paths stay as fast.
    """
    for what, value in named_ids:
        _check_id(value, what)
    raise AssertionError("_bad_ids called with valid ids")  # pragma: no cover


def _check_dict(value: Any, what: str) -> None:
    if type(value) is not dict:
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")


def _encode_row(row: Any) -> dict[str, Any]:
    _check_dict(row, "a row")
    out: dict[str, Any] = {}
    for cell_id, cell in row.items():
        _check_id(cell_id, "cell id")
        out[cell_id] = encode_cell(cell)
    return js_ordered(out)


def _encode_table(table: Any) -> dict[str, dict[str, Any]]:
    _check_dict(table, "a table")
    out: dict[str, dict[str, Any]] = {}
    for row_id, row in table.items():
        _check_id(row_id, "row id")
        encoded = _encode_row(row)
        if encoded:  # TinyBase drops empty rows
            out[row_id] = encoded
    return js_ordered(out)


def _encode_tables(tables: Any) -> dict[str, dict[str, dict[str, Any]]]:
    _check_dict(tables, "tables")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for table_id, table in tables.items():
        _check_id(table_id, "table id")
        encoded = _encode_table(table)
        if encoded:  # TinyBase drops empty tables
            out[table_id] = encoded
    return js_ordered(out)


def _encode_values(values: Any) -> dict[str, Any]:
    _check_dict(values, "values")
    out: dict[str, Any] = {}
    for value_id, value in values.items():
        _check_id(value_id, "value id")
        out[value_id] = encode_cell(value, "value")
    return js_ordered(out)


def _check_content(content: Any) -> tuple[Any, Any]:
    if type(content) not in (list, tuple) or len(content) != 2:
        raise TypeError("content must be a [tables, values] pair")
    return content[0], content[1]


# ------------------------------------------------------------------------------ the store


class Store:
    """A TinyBase Store. Create one with :func:`create_store`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._values: dict[str, Any] = {}
        self._table_cell_ids: dict[str, dict[str, int]] = {}
        self._pools: dict[str, list[Any]] = {}  # table id -> [next row id, released ids]
        # transaction state
        self._depth = 0  # nesting; -1 while did-finish listeners run (writes are ignored)
        self._rollback_requested = False
        self._mutating = False
        self._had_tables = False
        self._had_values = False
        self._changed_cells: dict[tuple[str, str, str], list[Any]] = {}
        self._changed_values: dict[str, list[Any]] = {}
        self._changed_table_cell_ids: dict[str, dict[str, int]] = {}
        # id changes in TinyBase's own order, tracked only while id listeners exist
        self._track_ids = False
        self._changed_table_ids: dict[str, int] = {}
        self._changed_row_ids: dict[str, dict[str, int]] = {}
        self._changed_row_count: dict[str, int] = {}
        self._changed_cell_ids: dict[str, dict[str, dict[str, int]]] = {}
        self._changed_value_ids: dict[str, int] = {}
        # listeners: kind -> [plain registry, mutator registry]; registry: path -> {id: fn}
        self._registries: dict[str, tuple[dict[tuple[Any, ...], dict[str, Listener]], ...]] = {
            kind: ({}, {}) for kind in _LISTENER_ID_COUNTS
        }
        self._start_listeners: dict[str, Listener] = {}
        self._will_finish_listeners: dict[str, Listener] = {}
        self._did_finish_listeners: dict[str, Listener] = {}
        self._listener_index: dict[str, tuple[str, int, tuple[Any, ...]]] = {}
        self._listener_pool: list[str] = []
        self._next_listener_id = 0
        self._data_listener_count = [0, 0]  # plain, mutator
        # the kinds that have listeners, per index: a transaction's dispatch asks about
        # every kind, and one set lookup is cheaper than a registry lookup per kind
        self._live_kinds: tuple[set[str], set[str]] = (set(), set())
        self._id_listener_count = 0  # listeners that need id changes in TinyBase's order

    def __repr__(self) -> str:
        return f"<{type(self).__name__} tables={len(self._tables)} values={len(self._values)}>"

    # -------------------------------------------------------------------------- reads

    def is_mergeable(self) -> bool:
        return False

    def get_content(self) -> list[Any]:
        with self.lock:
            return [self.get_tables(), self.get_values()]

    def get_encoded_content(self) -> list[Any]:
        """Content with object cells in stored string form (what persisters write)."""
        with self.lock:
            return [
                {
                    t: {r: dict(row) for r, row in table.items()}
                    for t, table in self._tables.items()
                },
                dict(self._values),
            ]

    def get_tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.lock:
            return {
                t: {r: {c: decode(v) for c, v in row.items()} for r, row in table.items()}
                for t, table in self._tables.items()
            }

    def get_table_ids(self) -> list[str]:
        return list(self._tables)

    def get_table(self, table_id: object) -> dict[str, dict[str, Any]]:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        with self.lock:
            table = self._tables.get(table_id)
            if table is None:
                return {}
            return {r: {c: decode(v) for c, v in row.items()} for r, row in table.items()}

    def get_table_cell_ids(self, table_id: object) -> list[str]:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        return list(self._table_cell_ids.get(table_id, ()))

    def get_row_count(self, table_id: object) -> int:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        return len(self._tables.get(table_id, ()))

    def get_row_ids(self, table_id: object) -> list[str]:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        return list(self._tables.get(table_id, ()))

    def get_row(self, table_id: object, row_id: object) -> dict[str, Any]:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        row = self._tables.get(table_id, {}).get(row_id)
        if row is None:
            return {}
        return {c: decode(v) for c, v in list(row.items())}

    def get_cell_ids(self, table_id: object, row_id: object) -> list[str]:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        return list(self._tables.get(table_id, {}).get(row_id, ()))

    def get_cell(self, table_id: object, row_id: object, cell_id: object) -> Any:
        """The cell's value, or None when there is no such cell (TinyBase's ``undefined``)."""
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        table = self._tables.get(table_id)
        if table is None:
            return None
        row = table.get(row_id)
        if row is None:
            return None
        return decode(row.get(cell_id))

    def get_values(self) -> dict[str, Any]:
        with self.lock:
            return {v: decode(value) for v, value in self._values.items()}

    def get_value_ids(self) -> list[str]:
        return list(self._values)

    def get_value(self, value_id: object) -> Any:
        if type(value_id) is not str:
            _bad_ids(("value id", value_id))
        return decode(self._values.get(value_id))

    def has_tables(self) -> bool:
        return bool(self._tables)

    def has_table(self, table_id: object) -> bool:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        return table_id in self._tables

    def has_table_cell(self, table_id: object, cell_id: object) -> bool:
        if type(table_id) is not str or type(cell_id) is not str:
            _bad_ids(("table id", table_id), ("cell id", cell_id))
        return cell_id in self._table_cell_ids.get(table_id, ())

    def has_row(self, table_id: object, row_id: object) -> bool:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        return row_id in self._tables.get(table_id, ())

    def has_cell(self, table_id: object, row_id: object, cell_id: object) -> bool:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        return cell_id in self._tables.get(table_id, {}).get(row_id, ())

    def has_values(self) -> bool:
        return bool(self._values)

    def has_value(self, value_id: object) -> bool:
        if type(value_id) is not str:
            _bad_ids(("value id", value_id))
        return value_id in self._values

    def get_json(self) -> str:
        """``JSON.stringify([tables, values])`` of the stored form, as TinyBase's getJson."""
        return js_stringify(self.get_encoded_content())

    def for_each_table(self, callback: Callable[[str, Any], Any]) -> None:
        for table_id in self.get_table_ids():
            callback(table_id, lambda cb, t=table_id: self.for_each_row(t, cb))

    def for_each_row(self, table_id: object, callback: Callable[[str, Any], Any]) -> None:
        # (ids typed object: get_row_ids raises the same TypeError in both builds)
        for row_id in self.get_row_ids(table_id):
            callback(row_id, lambda cb, r=row_id: self.for_each_cell(table_id, r, cb))

    def for_each_cell(
        self, table_id: object, row_id: object, callback: Callable[[str, Any], Any]
    ) -> None:
        for cell_id, cell in self.get_row(table_id, row_id).items():
            callback(cell_id, cell)

    def for_each_value(self, callback: Callable[[str, Any], Any]) -> None:
        for value_id, value in self.get_values().items():
            callback(value_id, value)

    # -------------------------------------------------------------------------- writes

    def set_content(self, content: Any) -> Store:
        if callable(content):
            content = content()
        tables, values = _check_content(content)
        tables = _encode_tables(tables)
        values = _encode_values(values)
        self._txn(self._apply_content, tables, values)
        return self

    def set_encoded_content(self, content: Any) -> Store:
        """set_content for data already in stored form (files, peers): bad cells are dropped."""
        tables, values = _check_content(content)
        self._txn(self._apply_content, *self._accept_content(tables, values))
        return self

    def _accept_content(self, tables: Any, values: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        out_tables: dict[str, Any] = {}
        if type(tables) is dict:
            for t, table in tables.items():
                if type(t) is not str or type(table) is not dict:
                    continue
                out_table: dict[str, Any] = {}
                for r, row in table.items():
                    if type(r) is not str or type(row) is not dict:
                        continue
                    out_row = {}
                    for c, cell in row.items():
                        if type(c) is str:
                            encoded = encode_accepted(cell)
                            if encoded is not ABSENT:
                                out_row[c] = encoded
                    if out_row:
                        out_table[r] = out_row
                if out_table:
                    out_tables[t] = out_table
        out_values: dict[str, Any] = {}
        if type(values) is dict:
            for v, value in values.items():
                if type(v) is str:
                    encoded = encode_accepted(value)
                    if encoded is not ABSENT:
                        out_values[v] = encoded
        return out_tables, out_values

    def _apply_content(self, tables: dict[str, Any], values: dict[str, Any]) -> None:
        if tables:
            self._match_tables(tables)
        else:
            self._delete_all_tables()
        if values:
            self._match_values(values)
        else:
            self._delete_all_values()

    def set_json(self, json_text: str) -> Store:
        """TinyBase's setJson: ``[tables, values]`` (or just tables) in stored form."""
        try:
            parsed = json.loads(json_text, parse_constant=_reject_constant)
        except ValueError as error:
            raise ValueError(f"not JSON: {error}") from None
        if type(parsed) is list and len(parsed) == 2:
            tables, values = parsed
            accepted = self._accept_content(tables, values)
            self._txn(self._apply_content, *accepted)
        elif type(parsed) is dict:
            accepted_tables, _ = self._accept_content(parsed, {})
            if accepted_tables:
                self._txn(self._match_tables, accepted_tables)
            else:
                self._txn(self._delete_all_tables)
        else:
            raise ValueError("JSON must be [tables, values] or tables")
        return self

    def set_tables(self, tables: Any) -> Store:
        encoded = _encode_tables(tables)
        if encoded:
            self._txn(self._match_tables, encoded)
        else:
            self._txn(_noop)
        return self

    def set_table(self, table_id: object, table: Any) -> Store:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        encoded = _encode_table(table)
        if encoded:
            self._txn(self._match_table, table_id, encoded)
        else:
            self._txn(_noop)
        return self

    def set_row(self, table_id: object, row_id: object, row: Any) -> Store:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        encoded = _encode_row(row)
        if encoded:
            self._txn(self._match_row, table_id, row_id, encoded)
        else:
            self._txn(_noop)
        return self

    def add_row(self, table_id: object, row: Any, reuse_row_ids: bool = True) -> str | None:
        """Add a row under a new id (TinyBase's addRow); returns the id, or None if empty."""
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        encoded = _encode_row(row)
        if not encoded:
            self._txn(_noop)
            return None
        return self._txn(self._add_row, table_id, encoded, reuse_row_ids)

    def _add_row(self, table_id: str, row: dict[str, Any], reuse: bool) -> str:
        table = self._tables.get(table_id)
        pool = self._pools.get(table_id) if table is not None else None
        while True:
            if pool is None:
                row_id = "0"
                pool = [1, []]
            elif reuse and pool[1]:
                row_id = pool[1].pop(0)
            else:
                row_id = str(pool[0])
                pool[0] += 1
            if table is None or row_id not in table:
                break
        self._match_row(table_id, row_id, row)
        if table is None:
            self._pools[table_id] = pool
        return row_id

    def set_partial_row(self, table_id: object, row_id: object, partial_row: Any) -> Store:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        encoded = _encode_row(partial_row)
        if encoded:
            self._txn(self._set_cells, table_id, row_id, encoded)
        else:
            self._txn(_noop)
        return self

    def _set_cells(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        write = self._write_cell
        for cell_id, cell in row.items():
            write(table_id, row_id, cell_id, cell)

    def set_cell(self, table_id: object, row_id: object, cell_id: object, cell: Any) -> Store:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        t = type(cell)
        if t is str:
            if cell[:1] == JSON_PREFIX or cell == UNDEFINED:
                encode_cell(cell)  # raises
        elif not (((t is int or t is float) and -_BIG < cell < _BIG) or t is bool or cell is None):
            if callable(cell):
                cell = cell(self.get_cell(table_id, row_id, cell_id))
            cell = encode_cell(cell)
        with self.lock:
            depth = self._depth
            if depth > 0:  # inside a transaction already: skip the general wrapper
                self._depth = depth + 1
                try:
                    self._write_cell(table_id, row_id, cell_id, cell)
                except BaseException:
                    self._abort()
                    raise
                self._depth = depth
            else:
                self._txn(self._write_cell, table_id, row_id, cell_id, cell)
        return self

    def set_values(self, values: Any) -> Store:
        encoded = _encode_values(values)
        if encoded:
            self._txn(self._match_values, encoded)
        else:
            self._txn(_noop)
        return self

    def set_partial_values(self, partial_values: Any) -> Store:
        encoded = _encode_values(partial_values)
        if encoded:
            self._txn(self._set_values, encoded)
        else:
            self._txn(_noop)
        return self

    def _set_values(self, values: dict[str, Any]) -> None:
        write = self._write_value
        for value_id, value in values.items():
            write(value_id, value)

    def set_value(self, value_id: object, value: Any) -> Store:
        if type(value_id) is not str:
            _bad_ids(("value id", value_id))
        if callable(value) and type(value) not in (dict, list):
            value = value(self.get_value(value_id))
        self._txn(self._write_value, value_id, encode_cell(value, "value"))
        return self

    def apply_changes(self, changes: Any) -> Store:
        """TinyBase's applyChanges: ``[tables, values, 1]``, UNDEFINED (or None for a table or
        row) deleting."""
        if type(changes) not in (list, tuple) or len(changes) < 2:
            raise TypeError("changes must be [tables, values, 1]")
        tables, values = changes[0], changes[1]
        _check_dict(tables, "changed tables")
        _check_dict(values, "changed values")
        plan: list[tuple[Any, ...]] = []
        for t, table in tables.items():
            _check_id(t, "table id")
            if table is None or table == UNDEFINED:
                plan.append((t,))
                continue
            _check_dict(table, "a changed table")
            for r, row in table.items():
                _check_id(r, "row id")
                if row is None or row == UNDEFINED:
                    plan.append((t, r))
                    continue
                _check_dict(row, "a changed row")
                for c, cell in row.items():
                    _check_id(c, "cell id")
                    plan.append((t, r, c, ABSENT if cell == UNDEFINED else encode_cell(cell)))
        for v in values:
            _check_id(v, "value id")
        value_plan = [
            (v, ABSENT if value == UNDEFINED else encode_cell(value, "value"))
            for v, value in values.items()
        ]
        self._txn(self._apply_plan, plan, value_plan)
        return self

    def _apply_plan(self, plan: list[tuple[Any, ...]], value_plan: list[tuple[str, Any]]) -> None:
        for step in plan:
            if len(step) == 1:
                self._delete_table(step[0])
            elif len(step) == 2:
                self._delete_row(step[0], step[1])
            elif step[3] is ABSENT:
                self._delete_cell(step[0], step[1], step[2])
            else:
                self._write_cell(*step)
        for value_id, value in value_plan:
            if value is ABSENT:
                self._delete_value(value_id)
            else:
                self._write_value(value_id, value)

    def del_tables(self) -> Store:
        self._txn(self._delete_all_tables)
        return self

    def del_table(self, table_id: object) -> Store:
        if type(table_id) is not str:
            _bad_ids(("table id", table_id))
        self._txn(self._delete_table, table_id)
        return self

    def del_row(self, table_id: object, row_id: object) -> Store:
        if type(table_id) is not str or type(row_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id))
        self._txn(self._delete_row, table_id, row_id)
        return self

    def del_cell(self, table_id: object, row_id: object, cell_id: object) -> Store:
        if type(table_id) is not str or type(row_id) is not str or type(cell_id) is not str:
            _bad_ids(("table id", table_id), ("row id", row_id), ("cell id", cell_id))
        self._txn(self._delete_cell, table_id, row_id, cell_id)
        return self

    def del_values(self) -> Store:
        self._txn(self._delete_all_values)
        return self

    def del_value(self, value_id: object) -> Store:
        if type(value_id) is not str:
            _bad_ids(("value id", value_id))
        self._txn(self._delete_value, value_id)
        return self

    # ----------------------------------------------------------------- write primitives
    # Called inside a transaction with validated, stored-form cells. MergeableStore overrides
    # _write_cell/_delete_cell/_write_value/_delete_value to stamp each change as it happens.

    def _match_tables(self, tables: dict[str, Any]) -> None:
        for table_id, table in tables.items():
            self._match_table(table_id, table)
        for table_id in [t for t in self._tables if t not in tables]:
            self._delete_table(table_id)

    def _match_table(self, table_id: str, table: dict[str, Any]) -> None:
        for row_id, row in table.items():
            self._match_row(table_id, row_id, row)
        existing = self._tables.get(table_id)
        if existing is not None:
            for row_id in [r for r in existing if r not in table]:
                self._delete_row(table_id, row_id)

    def _match_row(self, table_id: str, row_id: str, row: dict[str, Any]) -> None:
        write = self._write_cell
        for cell_id, cell in row.items():
            write(table_id, row_id, cell_id, cell)
        existing = self._tables[table_id][row_id]
        if len(existing) != len(row):
            for cell_id in [c for c in existing if c not in row]:
                self._delete_cell(table_id, row_id, cell_id)

    def _match_values(self, values: dict[str, Any]) -> None:
        write = self._write_value
        for value_id, value in values.items():
            write(value_id, value)
        if len(self._values) != len(values):
            for value_id in [v for v in self._values if v not in values]:
                self._delete_value(value_id)

    def _delete_all_tables(self) -> None:
        for table_id in list(self._tables):
            self._delete_table(table_id)

    def _delete_table(self, table_id: str) -> None:
        table = self._tables.get(table_id)
        if table is not None:
            for row_id in list(table):
                self._delete_row(table_id, row_id)

    def _delete_row(self, table_id: str, row_id: str) -> None:
        table = self._tables.get(table_id)
        if table is None:
            return
        row = table.get(row_id)
        if row is None:
            return
        pool = self._pools.get(table_id)
        if pool is not None and len(pool[1]) < _MAX_POOL and _INTEGER.fullmatch(row_id):
            pool[1].append(row_id)
        delete = self._delete_cell
        for cell_id in list(row):
            delete(table_id, row_id, cell_id)

    def _delete_all_values(self) -> None:
        delete = self._delete_value
        for value_id in list(self._values):
            delete(value_id)

    def _write_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        table = self._tables.get(table_id)
        if table is None:
            table = self._new_table(table_id)
        row = table.get(row_id)
        if row is None:
            row = table[row_id] = {}
            if self._track_ids:
                self._row_added(table_id, row_id)
        old = row.get(cell_id, ABSENT)
        if old is ABSENT:
            self._cell_id_added(table_id, row_id, cell_id)
        elif old == cell and (type(old) is bool) is (type(cell) is bool):
            return
        row[cell_id] = cell
        key = (table_id, row_id, cell_id)
        entry = self._changed_cells.get(key)
        if entry is None:
            self._changed_cells[key] = [old, cell]
        else:
            entry[1] = cell

    def _delete_cell(self, table_id: str, row_id: str, cell_id: str) -> None:
        old = self._raw_delete_cell(table_id, row_id, cell_id)
        if old is ABSENT:
            return
        key = (table_id, row_id, cell_id)
        entry = self._changed_cells.get(key)
        if entry is None:
            self._changed_cells[key] = [old, ABSENT]
        else:
            entry[1] = ABSENT

    def _write_value(self, value_id: str, value: Any) -> None:
        values = self._values
        old = values.get(value_id, ABSENT)
        if old is not ABSENT and old == value and (type(old) is bool) is (type(value) is bool):
            return
        values[value_id] = value
        if old is ABSENT and self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, 1)
        entry = self._changed_values.get(value_id)
        if entry is None:
            self._changed_values[value_id] = [old, value]
        else:
            entry[1] = value

    def _delete_value(self, value_id: str) -> None:
        old = self._values.pop(value_id, ABSENT)
        if old is ABSENT:
            return
        if self._track_ids:
            self._ids_changed1(self._changed_value_ids, value_id, -1)
        entry = self._changed_values.get(value_id)
        if entry is None:
            self._changed_values[value_id] = [old, ABSENT]
        else:
            entry[1] = ABSENT

    def _new_table(self, table_id: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        self._tables[table_id] = table
        self._pools[table_id] = [0, []]
        self._table_cell_ids[table_id] = {}
        if self._track_ids and self._depth > 0:
            self._ids_changed1(self._changed_table_ids, table_id, 1)
        return table

    def _row_added(self, table_id: str, row_id: str) -> None:
        """Only called while id listeners are tracked (see ``_track_ids``)."""
        if self._depth > 0:
            self._ids_changed(self._changed_row_ids, table_id, row_id, 1)
            counts = self._changed_row_count
            counts[table_id] = counts.get(table_id, 0) + 1

    def _cell_id_added(self, table_id: str, row_id: str, cell_id: str) -> None:
        counts = self._table_cell_ids[table_id]
        count = counts.get(cell_id, 0)
        counts[cell_id] = count + 1
        if self._depth > 0:
            if count == 0:
                self._ids_changed(self._changed_table_cell_ids, table_id, cell_id, 1)
            if self._track_ids:
                self._ids_changed(
                    self._changed_cell_ids.setdefault(table_id, {}), row_id, cell_id, 1
                )

    def _raw_delete_cell(self, table_id: str, row_id: str, cell_id: str) -> Any:
        """Remove a cell (and its row and table when they become empty); returns the old cell."""
        table = self._tables.get(table_id)
        if table is None:
            return ABSENT
        row = table.get(row_id)
        if row is None:
            return ABSENT
        old = row.pop(cell_id, ABSENT)
        if old is ABSENT:
            return ABSENT
        counts = self._table_cell_ids[table_id]
        count = counts[cell_id]
        track = self._track_ids and self._depth > 0
        if count == 1:
            del counts[cell_id]
            if self._depth > 0:
                self._ids_changed(self._changed_table_cell_ids, table_id, cell_id, -1)
        else:
            counts[cell_id] = count - 1
        if track:
            self._ids_changed(self._changed_cell_ids.setdefault(table_id, {}), row_id, cell_id, -1)
        if not row:
            del table[row_id]
            if track:
                self._ids_changed(self._changed_row_ids, table_id, row_id, -1)
                row_counts = self._changed_row_count
                row_counts[table_id] = row_counts.get(table_id, 0) - 1
            if not table:
                if track:
                    self._ids_changed1(self._changed_table_ids, table_id, -1)
                del self._tables[table_id]
                self._pools.pop(table_id, None)
                self._table_cell_ids.pop(table_id, None)
        return old

    def _raw_set_cell(self, table_id: str, row_id: str, cell_id: str, cell: Any) -> None:
        table = self._tables.get(table_id)
        if table is None:
            table = self._new_table(table_id)
        row = table.get(row_id)
        if row is None:
            row = table[row_id] = {}
        if cell_id not in row:
            self._cell_id_added(table_id, row_id, cell_id)
        row[cell_id] = cell

    @staticmethod
    def _ids_changed1(ids: dict[str, int], id_: str, delta: int) -> None:
        """TinyBase's idsChanged: a change that undoes the recorded one removes the entry."""
        if ids.get(id_) == -delta:
            del ids[id_]
        else:
            ids[id_] = delta

    @staticmethod
    def _ids_changed(changed: dict[str, dict[str, int]], parent: str, id_: str, delta: int) -> None:
        ids = changed.setdefault(parent, {})
        if ids.get(id_) == -delta:
            del ids[id_]
        else:
            ids[id_] = delta

    # -------------------------------------------------------------------------- transactions

    def transaction(
        self,
        actions: Callable[[], Any] | None = None,
        do_rollback: Callable[..., Any] | None = None,
    ) -> Any:
        """Run ``actions()`` as one transaction and return its result, or, with no arguments,
        return a context manager: ``with store.transaction(): ...``.

        An exception rolls the whole transaction back (no listener sees it) and propagates.
        ``do_rollback(store)`` returning true after the actions rolls back too (TinyBase).
        """
        if actions is None:
            return self._transaction_context(do_rollback)
        return self._txn(actions, _do_rollback=do_rollback)

    def _transaction_context(self, do_rollback: Callable[..., Any] | None) -> _Transaction:
        return _Transaction(self, do_rollback)

    def start_transaction(self) -> Store:
        """Open a transaction by hand (close it with :meth:`finish_transaction`)."""
        self.lock.acquire()
        if self._depth < 0:
            return self
        self._begin()
        return self

    def finish_transaction(self, do_rollback: Callable[..., Any] | None = None) -> Store:
        try:
            if self._depth > 0:
                self._end(do_rollback)
        finally:
            self.lock.release()
        return self

    def _txn(self, fn: Callable[..., Any], *args: Any, _do_rollback: Any = None) -> Any:
        with self.lock:
            depth = self._depth
            if depth < 0:
                return None  # inside did-finish listeners: TinyBase ignores writes
            if depth == 0:
                self._begin()
            else:
                self._depth = depth + 1
            try:
                result = fn(*args)
            except BaseException:
                self._abort()
                raise
            if self._depth == 1:
                self._end(_do_rollback)
            else:
                self._depth -= 1
            return result

    def _begin(self) -> None:
        self._depth += 1
        if self._depth == 1:
            self._had_tables = bool(self._tables)
            self._had_values = bool(self._values)
            self._track_ids = self._id_listener_count > 0
            self._pre_start_transaction()
            if self._start_listeners:
                try:
                    self._call_plain(self._start_listeners)
                except BaseException:
                    self._rollback_requested = True
                    self._end(None)
                    raise

    def _abort(self) -> None:
        self._rollback_requested = True
        with contextlib.suppress(Exception):  # the original error is the one to report
            self._end(None)

    def _end(self, do_rollback: Callable[..., Any] | None) -> None:
        if self._depth <= 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        self._depth = 1
        rolled_back = False
        committed = False
        call_did_finish = False
        errors: list[BaseException] = []
        try:
            try:
                if self._rollback_requested:
                    self._rollback()
                    rolled_back = True
                else:
                    if self._data_listener_count[1]:
                        self._mutating = True
                        try:
                            self._call_data_listeners(1)
                        finally:
                            self._mutating = False
                    if do_rollback is not None and do_rollback(self):
                        self._rollback()
                        rolled_back = True
                    call_did_finish = True
                    if self._will_finish_listeners:
                        self._call_then_throw(self._will_finish_listeners)
                    self._depth = -1
                    committed = True
                    if self._data_listener_count[0] and not rolled_back:
                        self._call_data_listeners(0)
            except BaseException as error:
                if not committed and not rolled_back:
                    self._rollback()
                    rolled_back = True
                errors.append(error)
            if call_did_finish and self._did_finish_listeners:
                self._depth = -1
                try:
                    self._call_then_throw(self._did_finish_listeners)
                except BaseException as error:
                    errors.append(error)
        finally:
            try:
                self._post_finish_transaction(rolled_back)
            finally:
                self._reset_transaction()
        if errors:
            raise errors[0]

    def _reset_transaction(self) -> None:
        self._depth = 0
        self._rollback_requested = False
        self._mutating = False
        if self._changed_cells:
            self._changed_cells = {}
        if self._changed_values:
            self._changed_values = {}
        if self._changed_table_cell_ids:
            self._changed_table_cell_ids = {}
        if self._track_ids:
            self._track_ids = False
            self._changed_table_ids = {}
            self._changed_row_ids = {}
            self._changed_row_count = {}
            self._changed_cell_ids = {}
            self._changed_value_ids = {}

    def _rollback(self) -> None:
        """Put every touched cell and value back as it was when the transaction started."""
        depth = self._depth
        self._depth = 0  # so that restoring records nothing
        try:
            # in TinyBase's order (by table, then row, then cell, each by first touch), so
            # that restored ids get the same positions as in a JavaScript replica
            grouped: dict[str, dict[str, list[tuple[str, Any]]]] = {}
            for (t, r, c), entry in self._changed_cells.items():
                grouped.setdefault(t, {}).setdefault(r, []).append((c, entry[0]))
            for t, rows in grouped.items():
                for r, cells in rows.items():
                    for c, old in cells:
                        if old is ABSENT:
                            self._raw_delete_cell(t, r, c)
                        else:
                            self._raw_set_cell(t, r, c, old)
            for value_id, entry in self._changed_values.items():
                old = entry[0]
                if old is ABSENT:
                    self._values.pop(value_id, None)
                else:
                    self._values[value_id] = old
            self._rollback_stamps()
        finally:
            self._depth = depth
        self._changed_cells = {}
        self._changed_values = {}
        self._changed_table_cell_ids = {}

    # hooks for MergeableStore
    def _pre_start_transaction(self) -> None:
        pass

    def _post_finish_transaction(self, rolled_back: bool) -> None:
        pass

    def _rollback_stamps(self) -> None:
        pass

    # -------------------------------------------------------------------------- changes

    def get_transaction_changes(self) -> list[Any]:
        """TinyBase's getTransactionChanges: ``[tables, values, 1]`` of what this transaction
        changed, with UNDEFINED for a deleted cell, value, row or table."""
        return self._transaction_changes(decode)

    def get_encoded_transaction_changes(self) -> list[Any]:
        return self._transaction_changes(_identity)

    def _transaction_changes(self, convert: Callable[[Any], Any]) -> list[Any]:
        with self.lock:
            derived = self._derive_changes()
            tables_out: dict[str, Any] = {}
            for t, rows in derived.cells.items():
                if derived.table_ids.get(t) == -1:
                    tables_out[t] = UNDEFINED
                    continue
                table_out: dict[str, Any] = {}
                row_ids = derived.row_ids.get(t, {})
                for r, cells in rows.items():
                    if row_ids.get(r) == -1:
                        table_out[r] = UNDEFINED
                        continue
                    row_out = {
                        c: (UNDEFINED if new is ABSENT else convert(new))
                        for c, (old, new, *_) in cells.items()
                        if not _same_or_absent(old, new)
                    }
                    if row_out:
                        table_out[r] = row_out
                if table_out:
                    tables_out[t] = table_out
            values_out = {
                v: (UNDEFINED if new is ABSENT else convert(new))
                for v, (old, new) in self._changed_values.items()
                if not _same_or_absent(old, new)
            }
            return [tables_out, values_out, 1]

    def _derive_changes(self, ids: bool = True) -> _Derived:
        """Group the touched cells by table and row and work out which ids came and went.

        ``ids=False`` stops after the grouping: with only cell/row/table listeners (the
        common case, and every received message pays this) the id bookkeeping was half of
        the listener dispatch.
        """
        derived = _Derived()
        grouped = derived.cells
        for (t, r, c), entry in self._changed_cells.items():
            rows = grouped.get(t)
            if rows is None:
                rows = grouped[t] = {}
            cells = rows.get(r)
            if cells is None:
                cells = rows[r] = {}
            cells[c] = entry
        if not ids:
            return derived
        tables = self._tables
        for t, rows in grouped.items():
            table_now = tables.get(t)
            row_ids: dict[str, int] = {}
            any_row_before = False
            for r, cells in rows.items():
                row_now = table_now.get(r) if table_now is not None else None
                cell_ids: dict[str, int] = {}
                existed = False
                for c, entry in cells.items():
                    old_absent = entry[0] is ABSENT
                    new_absent = entry[1] is ABSENT
                    if not old_absent:
                        existed = True
                    if old_absent != new_absent:
                        cell_ids[c] = -1 if new_absent else 1
                if not existed and row_now is not None:
                    existed = any(c not in cells for c in row_now)
                if cell_ids:
                    derived.cell_ids.setdefault(t, {})[r] = cell_ids
                if existed != (row_now is not None):
                    row_ids[r] = 1 if row_now is not None else -1
                any_row_before = any_row_before or existed
            if not any_row_before and table_now is not None:
                any_row_before = any(r not in rows for r in table_now)
            if row_ids:
                derived.row_ids[t] = row_ids
                count = sum(row_ids.values())
                if count:
                    derived.row_counts[t] = count
            if any_row_before != (table_now is not None):
                derived.table_ids[t] = 1 if table_now is not None else -1
        return derived

    # -------------------------------------------------------------------------- listeners

    def _add_listener(
        self, kind: str, ids: tuple[Any, ...], listener: Listener, mutator: bool
    ) -> str:
        if not callable(listener):
            raise TypeError("a listener must be callable")
        for id_, what in zip(ids, _LISTENER_ID_NAMES[kind], strict=True):
            if id_ is not None and type(id_) is not str:
                # (the public methods take ids typed object, so that this message is the
                # same in the compiled build as in pure Python; see _bad_ids)
                raise TypeError(f"{what} must be a str or None, not {type(id_).__name__}")
        with self.lock:
            listener_id = self._new_listener_id()
            index = 1 if mutator else 0
            registry = self._registries[kind][index]
            registry.setdefault(ids, {})[listener_id] = listener
            self._live_kinds[index].add(kind)
            self._listener_index[listener_id] = (kind, index, ids)
            self._data_listener_count[index] += 1
            if kind in _ID_KINDS:
                self._id_listener_count += 1
            return listener_id

    def _new_listener_id(self) -> str:
        if self._listener_pool:
            return self._listener_pool.pop(0)
        listener_id = str(self._next_listener_id)
        self._next_listener_id += 1
        return listener_id

    def _add_transaction_listener(self, registry: dict[str, Listener], listener: Listener) -> str:
        if not callable(listener):
            raise TypeError("a listener must be callable")
        with self.lock:
            listener_id = self._new_listener_id()
            registry[listener_id] = listener
            kind = (
                "start"
                if registry is self._start_listeners
                else "will_finish"
                if registry is self._will_finish_listeners
                else "did_finish"
            )
            self._listener_index[listener_id] = (kind, -1, ())
            return listener_id

    def del_listener(self, listener_id: str) -> Store:
        with self.lock:
            entry = self._listener_index.pop(listener_id, None)
            if entry is None:
                return self
            kind, index, ids = entry
            if index < 0:
                registry = {
                    "start": self._start_listeners,
                    "will_finish": self._will_finish_listeners,
                    "did_finish": self._did_finish_listeners,
                }[kind]
                registry.pop(listener_id, None)
            else:
                registry_by_path = self._registries[kind][index]
                listeners = registry_by_path.get(ids)
                if listeners is not None:
                    listeners.pop(listener_id, None)
                    if not listeners:
                        del registry_by_path[ids]
                        if not registry_by_path:
                            self._live_kinds[index].discard(kind)
                self._data_listener_count[index] -= 1
                if kind in _ID_KINDS:
                    self._id_listener_count -= 1
            if _INTEGER.fullmatch(listener_id) and len(self._listener_pool) < _MAX_POOL:
                self._listener_pool.append(listener_id)
            return self

    def get_listener_stats(self) -> dict[str, int]:
        stats = {
            kind: sum(len(fns) for reg in regs for fns in reg.values())
            for kind, regs in self._registries.items()
        }
        stats["transaction"] = (
            len(self._start_listeners)
            + len(self._will_finish_listeners)
            + len(self._did_finish_listeners)
        )
        return stats

    def add_has_tables_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("has_tables", (), listener, mutator)

    def add_tables_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("tables", (), listener, mutator)

    def add_table_ids_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("table_ids", (), listener, mutator)

    def add_has_table_listener(
        self, table_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("has_table", (table_id,), listener, mutator)

    def add_table_listener(
        self, table_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("table", (table_id,), listener, mutator)

    def add_table_cell_ids_listener(
        self, table_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("table_cell_ids", (table_id,), listener, mutator)

    def add_has_table_cell_listener(
        self, table_id: object, cell_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("has_table_cell", (table_id, cell_id), listener, mutator)

    def add_row_count_listener(
        self, table_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("row_count", (table_id,), listener, mutator)

    def add_row_ids_listener(
        self, table_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("row_ids", (table_id,), listener, mutator)

    def add_has_row_listener(
        self, table_id: object, row_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("has_row", (table_id, row_id), listener, mutator)

    def add_row_listener(
        self, table_id: object, row_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("row", (table_id, row_id), listener, mutator)

    def add_cell_ids_listener(
        self, table_id: object, row_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("cell_ids", (table_id, row_id), listener, mutator)

    def add_has_cell_listener(
        self,
        table_id: object,
        row_id: object,
        cell_id: object,
        listener: Listener,
        mutator: bool = False,
    ) -> str:
        return self._add_listener("has_cell", (table_id, row_id, cell_id), listener, mutator)

    def add_cell_listener(
        self,
        table_id: object,
        row_id: object,
        cell_id: object,
        listener: Listener,
        mutator: bool = False,
    ) -> str:
        return self._add_listener("cell", (table_id, row_id, cell_id), listener, mutator)

    def add_has_values_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("has_values", (), listener, mutator)

    def add_values_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("values", (), listener, mutator)

    def add_value_ids_listener(self, listener: Listener, mutator: bool = False) -> str:
        return self._add_listener("value_ids", (), listener, mutator)

    def add_has_value_listener(
        self, value_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("has_value", (value_id,), listener, mutator)

    def add_value_listener(
        self, value_id: object, listener: Listener, mutator: bool = False
    ) -> str:
        return self._add_listener("value", (value_id,), listener, mutator)

    def add_start_transaction_listener(self, listener: Listener) -> str:
        return self._add_transaction_listener(self._start_listeners, listener)

    def add_will_finish_transaction_listener(self, listener: Listener) -> str:
        return self._add_transaction_listener(self._will_finish_listeners, listener)

    def add_did_finish_transaction_listener(self, listener: Listener) -> str:
        """``listener(store)`` after every transaction, including changes applied from peers."""
        return self._add_transaction_listener(self._did_finish_listeners, listener)

    def _call_plain(self, registry: dict[str, Listener]) -> None:
        for fn in list(registry.values()):
            fn(self)

    def _call_then_throw(self, registry: dict[str, Listener]) -> None:
        """Call every listener even if one raises, then raise the first error (TinyBase)."""
        first: BaseException | None = None
        for fn in list(registry.values()):
            try:
                fn(self)
            except BaseException as error:
                if first is None:
                    first = error
        if first is not None:
            raise first

    def _call(self, kind: str, index: int, ids: tuple[str, ...], *args: Any) -> None:
        registry = self._registries[kind][index]
        if not registry:
            return
        if len(registry) == 1:
            # one registered path (the usual case): match it instead of looking up each of
            # the 2**len(ids) wildcard paths
            # (an index loop: zip's keyword parsing is more code to run with cold caches)
            [(path, listeners)] = registry.items()
            if len(path) != len(ids):
                raise ValueError(f"listener path {path!r} does not fit ids {ids!r}")
            for i in range(len(ids)):
                want = path[i]
                if want is not None and want != ids[i]:
                    return
            for fn in list(listeners.values()):
                fn(self, *ids, *args)
            return
        for path in _wildcard_paths(ids):
            matching = registry.get(path)
            if matching:
                for fn in list(matching.values()):
                    fn(self, *ids, *args)

    def _has(self, index: int, *kinds: str) -> bool:
        return not self._live_kinds[index].isdisjoint(kinds)

    def _call_data_listeners(self, index: int) -> None:
        live = self._live_kinds[index]
        if self._changed_cells and not live.isdisjoint(_TABULAR_SET):
            self._call_tabular_listeners(index)
        if self._changed_values and not live.isdisjoint(_VALUES_SET):
            self._call_values_listeners(index)

    def _call_tabular_listeners(self, index: int) -> None:
        live = self._live_kinds[index]
        derived = self._derive_changes(not self._track_ids and not live.isdisjoint(_DERIVED_ID_SET))
        if self._track_ids:  # TinyBase's own order, recorded as the changes happened
            derived.table_ids = dict(self._changed_table_ids)
            derived.row_ids = {t: dict(ids) for t, ids in self._changed_row_ids.items()}
            derived.row_counts = {t: n for t, n in self._changed_row_count.items() if n}
            derived.cell_ids = {
                t: {r: dict(ids) for r, ids in rows.items()}
                for t, rows in self._changed_cell_ids.items()
            }
        if "has_tables" in live:
            has_now = bool(self._tables)
            if has_now != self._had_tables:
                self._call("has_tables", index, (), has_now)
        if "table_ids" in live or "has_table" in live:
            self._call_ids("table_ids", "has_table", index, (), derived.table_ids)
        if "table_cell_ids" in live or "has_table_cell" in live:
            for t, ids in list(self._changed_table_cell_ids.items()):
                self._call_ids("table_cell_ids", "has_table_cell", index, (t,), ids)
        if "row_count" in live:
            for t in derived.row_counts:
                self._call("row_count", index, (t,), self.get_row_count(t))
        if "row_ids" in live or "has_row" in live:
            for t, ids in derived.row_ids.items():
                self._call_ids("row_ids", "has_row", index, (t,), ids)
        if "cell_ids" in live or "has_cell" in live:
            for t, row_cell_ids in derived.cell_ids.items():
                for r, ids in row_cell_ids.items():
                    self._call_ids("cell_ids", "has_cell", index, (t, r), ids)
        if not live.isdisjoint(_CELL_UP_SET):
            # (each registry is tested where it is called, so a listener added by an
            # earlier one in this dispatch is still called, as before)
            registries = self._registries
            cells_registry = registries["cell"][index]
            rows_registry = registries["row"][index]
            get_cell_change = self._get_cell_change
            tables_changed = False
            for t, rows in derived.cells.items():
                table_changed = False
                for r, cells in rows.items():
                    row_changed = False
                    for c, entry in cells.items():
                        old, new = entry[0], entry[1]
                        if not _same_or_absent(old, new):
                            if cells_registry:
                                self._call(
                                    "cell",
                                    index,
                                    (t, r, c),
                                    _public(new),
                                    _public(old),
                                    get_cell_change,
                                )
                            tables_changed = table_changed = row_changed = True
                    if row_changed and rows_registry:
                        self._call("row", index, (t, r), get_cell_change)
                if table_changed:
                    self._call("table", index, (t,), get_cell_change)
            if tables_changed:
                self._call("tables", index, (), get_cell_change)

    def _call_ids(
        self,
        ids_kind: str,
        has_kind: str,
        index: int,
        parent_ids: tuple[str, ...],
        changed: dict[str, int],
    ) -> None:
        if not changed:
            return
        snapshot = dict(changed)
        self._call(ids_kind, index, parent_ids, lambda: dict(snapshot))
        if self._registries[has_kind][index]:
            for id_, delta in snapshot.items():
                self._call(has_kind, index, (*parent_ids, id_), delta == 1)

    def _call_values_listeners(self, index: int) -> None:
        if self._registries["has_values"][index]:
            has_now = bool(self._values)
            if has_now != self._had_values:
                self._call("has_values", index, (), has_now)
        if self._has(index, "value_ids", "has_value"):
            if self._track_ids:
                ids = dict(self._changed_value_ids)
            else:
                ids = {
                    v: (1 if old is ABSENT else -1)
                    for v, (old, new) in self._changed_values.items()
                    if (old is ABSENT) != (new is ABSENT)
                }
            self._call_ids("value_ids", "has_value", index, (), ids)
        if self._has(index, "value", "values"):
            changed = False
            get_value_change = self._get_value_change
            for v, (old, new) in list(self._changed_values.items()):
                if not _same_or_absent(old, new):
                    self._call("value", index, (v,), _public(new), _public(old), get_value_change)
                    changed = True
            if changed:
                self._call("values", index, (), get_value_change)

    def _get_cell_change(self, table_id: str, row_id: str, cell_id: str) -> list[Any]:
        """``[changed, old, new]`` for a cell in the current transaction (TinyBase's
        getCellChange)."""
        entry = self._changed_cells.get((table_id, row_id, cell_id))
        if entry is None:
            cell = _public(self._tables.get(table_id, {}).get(row_id, {}).get(cell_id, ABSENT))
            return [False, cell, cell]
        return [True, _public(entry[0]), _public(entry[1])]

    def _get_value_change(self, value_id: str) -> list[Any]:
        entry = self._changed_values.get(value_id)
        if entry is None:
            value = _public(self._values.get(value_id, ABSENT))
            return [False, value, value]
        return [True, _public(entry[0]), _public(entry[1])]


class _Transaction:
    """``with store.transaction():`` (a class: cheaper than a generator per transaction)."""

    __slots__ = ("_active", "_do_rollback", "_store")

    def __init__(self, store: Store, do_rollback: Callable[..., Any] | None) -> None:
        self._store = store
        self._do_rollback = do_rollback
        self._active = False

    def __enter__(self) -> Store:
        store = self._store
        store.lock.acquire()
        try:
            self._active = store._depth >= 0  # writes from did-finish listeners are ignored
            if self._active:
                store._begin()
        except BaseException:
            store.lock.release()
            raise
        return store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        store = self._store
        try:
            if self._active:
                if exc_type is not None:
                    store._abort()
                else:
                    store._end(self._do_rollback)
        finally:
            store.lock.release()
        return False


class _Derived:
    """What listeners need from one transaction, worked out from the touched cells."""

    __slots__ = ("cell_ids", "cells", "row_counts", "row_ids", "table_ids")

    def __init__(self) -> None:
        self.cells: dict[str, dict[str, dict[str, list[Any]]]] = {}
        self.table_ids: dict[str, int] = {}
        self.row_ids: dict[str, dict[str, int]] = {}
        self.row_counts: dict[str, int] = {}
        self.cell_ids: dict[str, dict[str, dict[str, int]]] = {}


def _wildcard_paths(ids: tuple[str, ...]) -> Any:
    """Registry keys that match ``ids``: each id or None (wildcard), in TinyBase's order
    (``itertools.product`` order, spelled out for the common lengths: every received
    message that has cell listeners asks for them)."""
    n = len(ids)
    if n == 3:
        a, b, c = ids
        return (
            (a, b, c),
            (a, b, None),
            (a, None, c),
            (a, None, None),
            (None, b, c),
            (None, b, None),
            (None, None, c),
            (None, None, None),
        )
    if n == 2:
        a, b = ids
        return ((a, b), (a, None), (None, b), (None, None))
    if n == 1:
        return ((ids[0],), (None,))
    if n == 0:
        return ((),)
    return itertools.product(*[(id_, None) for id_ in ids])


def _same_or_absent(old: Any, new: Any) -> bool:
    if old is ABSENT or new is ABSENT:
        return old is new
    return old == new and (type(old) is bool) is (type(new) is bool)


def _public(value: Any) -> Any:
    """Listener form of a stored cell: decoded, and UNDEFINED for a cell that does not exist
    (TinyBase passes ``undefined``; None would be ambiguous with a real null cell)."""
    return UNDEFINED if value is ABSENT else decode(value)


def _identity(value: Any) -> Any:
    return value


def _noop() -> None:
    return None


def create_store() -> Store:
    """A new, empty Store (TinyBase's ``createStore``)."""
    return Store()
