"""A Store's listeners: the registry, and the calls that tell them what a transaction changed.

Each data listener has a kind (``"cell"``, ``"row_ids"``, ...), a path of ids (``None`` is a
wildcard) and is either plain (called after the transaction) or a mutator (called before it
finishes, and may write). Listeners are called in TinyBase's order: by kind, as
``Listeners.call_tabular`` and ``Listeners.call_values`` list them, then by path with the exact
ids first, then in the order they were added.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Self

from localsync.core.changes import Derived, derive_changes
from localsync.core.content import ABSENT, public, release_id, same_or_absent

if TYPE_CHECKING:
    from localsync.core.store import Store

__all__ = ["Listener", "ListenerApi", "Listeners"]

Listener = Callable[..., Any]
#: an id parameter of the ``add_*`` methods: a str, or None for any id (checked when added)
Id = object
#: a path of ids (``None``: any id) -> {listener id: listener}
Registry = dict[tuple[Any, ...], dict[str, Listener]]


_TABLE: Final = ("table id",)
_ROW: Final = ("table id", "row id")
_CELL: Final = ("table id", "row id", "cell id")
#: data listener kind -> the names of its ids (for error messages), in TinyBase's order
_ID_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "has_tables": (),
    "tables": (),
    "table_ids": (),
    "has_table": _TABLE,
    "table": _TABLE,
    "table_cell_ids": _TABLE,
    "has_table_cell": ("table id", "cell id"),
    "row_count": _TABLE,
    "row_ids": _TABLE,
    "has_row": _ROW,
    "row": _ROW,
    "cell_ids": _ROW,
    "has_cell": _CELL,
    "cell": _CELL,
    "has_values": (),
    "values": (),
    "value_ids": (),
    "has_value": ("value id",),
    "value": ("value id",),
}
_VALUES_SET: Final = frozenset(("has_values", "values", "value_ids", "has_value", "value"))
_TABULAR_SET: Final = frozenset(kind for kind in _ID_NAMES if kind not in _VALUES_SET)
#: kinds that need the ids ``derive_changes`` works out
_DERIVED_ID_SET: Final = frozenset(
    ("table_ids", "has_table", "row_count", "row_ids", "has_row", "cell_ids", "has_cell")
)
#: kinds that need the id changes in TinyBase's order (tracked as they happen)
_ID_SET: Final = _DERIVED_ID_SET | {"value_ids", "has_value"}
_CELL_UP_SET: Final = frozenset(("cell", "row", "table", "tables"))
#: the tables' kinds called before the cells' (``Listeners._call_tabular_ids``)
_ABOVE_CELLS_SET: Final = _TABULAR_SET - _CELL_UP_SET
_TRANSACTION_KINDS: Final = ("start", "will_finish", "did_finish")


class Listeners:
    """The listeners of one Store, by kind; every method runs under the store's lock.

    ``start``, ``will_finish`` and ``did_finish`` hold the transaction listeners
    (``listener(store)``); ``counts[index]`` is the number of plain (0) and mutator (1) data
    listeners, ``live[index]`` the kinds that have any, and ``id_count`` the number that need
    id changes in TinyBase's order (``Store._track_ids``).
    """

    def __init__(self) -> None:
        # kind -> (plain registry, mutator registry); (a variable-length tuple type: mypyc
        # would unbox a fixed-length one and box it again for every indexing)
        self.registries: dict[str, tuple[Registry, ...]] = {kind: ({}, {}) for kind in _ID_NAMES}
        self.start: dict[str, Listener] = {}
        self.will_finish: dict[str, Listener] = {}
        self.did_finish: dict[str, Listener] = {}
        self.counts = [0, 0]
        # (a list: mypyc would box a tuple attribute into a new tuple at every read)
        self.live: list[set[str]] = [set(), set()]
        self.id_count = 0
        # listener id -> (kind, index (-1: a transaction listener), path)
        self._index: dict[str, tuple[str, int, tuple[Any, ...]]] = {}
        self._pool: list[str] = []
        self._next_id = 0

    # ------------------------------------------------------------------------- registry

    def add(self, kind: str, ids: tuple[Any, ...], listener: Listener, mutator: bool) -> str:
        """Register a data listener of ``kind`` on the path ``ids``; returns its listener id.

        Raises:
            TypeError: ``listener`` is not callable, or an id is neither a str nor None.
        """
        _check_callable(listener)
        for id_, what in zip(ids, _ID_NAMES[kind], strict=True):
            if id_ is not None and type(id_) is not str:
                raise TypeError(f"{what} must be a str or None, not {type(id_).__name__}")
        listener_id = self._new_id()
        index = 1 if mutator else 0
        self.registries[kind][index].setdefault(ids, {})[listener_id] = listener
        self.live[index].add(kind)
        self._index[listener_id] = (kind, index, ids)
        self.counts[index] += 1
        if kind in _ID_SET:
            self.id_count += 1
        return listener_id

    def add_transaction(self, kind: str, listener: Listener) -> str:
        """Register a ``"start"``, ``"will_finish"`` or ``"did_finish"`` listener.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        _check_callable(listener)
        listener_id = self._new_id()
        self._transaction_registry(kind)[listener_id] = listener
        self._index[listener_id] = (kind, -1, ())
        return listener_id

    def delete(self, listener_id: str) -> None:
        """Remove a listener (an unknown id is ignored); its id may be handed out again."""
        entry = self._index.pop(listener_id, None)
        if entry is None:
            return
        kind, index, ids = entry
        if index < 0:
            self._transaction_registry(kind).pop(listener_id, None)
        else:
            by_path = self.registries[kind][index]
            listeners = by_path.get(ids)
            if listeners is not None:
                listeners.pop(listener_id, None)
                if not listeners:
                    del by_path[ids]
                    if not by_path:
                        self.live[index].discard(kind)
            self.counts[index] -= 1
            if kind in _ID_SET:
                self.id_count -= 1
        release_id(self._pool, listener_id)

    def stats(self) -> dict[str, int]:
        """TinyBase's ``getListenerStats``: the number of listeners per kind, and
        ``"transaction"`` for the transaction listeners."""
        stats = {
            kind: sum(len(fns) for registry in registries for fns in registry.values())
            for kind, registries in self.registries.items()
        }
        stats["transaction"] = len(self.start) + len(self.will_finish) + len(self.did_finish)
        return stats

    def _new_id(self) -> str:
        if self._pool:
            return self._pool.pop(0)
        listener_id = str(self._next_id)
        self._next_id += 1
        return listener_id

    def _transaction_registry(self, kind: str) -> dict[str, Listener]:
        if kind == "start":
            return self.start
        return self.will_finish if kind == "will_finish" else self.did_finish

    # ------------------------------------------------------------------------- calls

    def call_each(self, store: Store, registry: dict[str, Listener], then_throw: bool) -> None:
        """Call the transaction listeners of ``registry`` with ``store``.

        With ``then_throw`` every listener is called even if one raises, and the first error
        is raised afterwards (TinyBase's callThenThrow); otherwise the first error stops.
        """
        first: BaseException | None = None
        for fn in list(registry.values()):
            try:
                fn(store)
            except BaseException as error:
                if not then_throw:
                    raise
                if first is None:
                    first = error
        if first is not None:
            raise first

    def call(self, kind: str, index: int, ids: tuple[str, ...], arguments: tuple[Any, ...]) -> None:
        """Call the ``kind`` listeners whose path matches ``ids`` as ``fn(*arguments)``
        (``arguments``: the store, then ``ids``, then the kind's own arguments).

        Raises:
            ValueError: a registered path does not have as many ids as ``ids``.
        """
        registry = self.registries[kind][index]
        if not registry:
            return
        if len(registry) == 1:
            # one registered path (the usual case): match it instead of looking up each of
            # the 2**len(ids) wildcard paths
            for path, listeners in registry.items():
                if len(path) != len(ids):
                    raise ValueError(f"listener path {path!r} does not fit ids {ids!r}")
                for i in range(len(ids)):
                    want: str | None = path[i]
                    if want is not None and want != ids[i]:
                        return
                for fn in list(listeners.values()):
                    fn(*arguments)
                return
        for path in _wildcard_paths(ids):
            matching = registry.get(path)
            if matching:
                for fn in list(matching.values()):
                    fn(*arguments)

    def call_data(self, store: Store, index: int) -> None:
        """Tell the plain (0) or mutator (1) data listeners what the transaction changed."""
        live = self.live[index]
        if store._changed_cells and live:
            self.call_tabular(store, index)
        if store._changed_values and not live.isdisjoint(_VALUES_SET):
            self.call_values(store, index)

    def call_tabular(self, store: Store, index: int) -> None:
        """Call the tables' listeners of ``index`` for the changed cells, in TinyBase's order."""
        live = self.live[index]
        track = store._track_ids
        # one look at the live kinds (usually one or two) for the questions below
        above = cells = derived_ids = False
        for kind in live:
            if kind in _CELL_UP_SET:
                cells = True
            elif kind in _ABOVE_CELLS_SET:
                above = True
                if kind in _DERIVED_ID_SET:
                    derived_ids = True
        if not above and not cells:
            return  # (no tables' listener)
        derived = derive_changes(store._changed_cells, store._tables, not track and derived_ids)
        if track:  # TinyBase's own order, recorded as the changes happened
            _tracked_ids(store, derived)
        if above:
            self._call_tabular_ids(store, index, derived)
            # (a mutator listener called there may have added a cell listener)
            cells = not live.isdisjoint(_CELL_UP_SET)
        if cells:
            self._call_cells(store, index, derived)

    def _call_tabular_ids(self, store: Store, index: int, derived: Derived) -> None:
        """Call the tables' listeners of ``index`` that come before the cells' ones."""
        live = self.live[index]
        if "has_tables" in live:
            has_now = bool(store._tables)
            if has_now != store._had_tables:
                self.call("has_tables", index, (), (store, has_now))
        if "table_ids" in live or "has_table" in live:
            self._call_ids(store, "table_ids", "has_table", index, (), derived.table_ids)
        if "table_cell_ids" in live or "has_table_cell" in live:
            for t, ids in list(store._changed_table_cell_ids.items()):
                self._call_ids(store, "table_cell_ids", "has_table_cell", index, (t,), ids)
        if "row_count" in live:
            for t in derived.row_counts:
                self.call("row_count", index, (t,), (store, t, store.get_row_count(t)))
        if "row_ids" in live or "has_row" in live:
            for t, ids in derived.row_ids.items():
                self._call_ids(store, "row_ids", "has_row", index, (t,), ids)
        if "cell_ids" in live or "has_cell" in live:
            for t, row_cell_ids in derived.cell_ids.items():
                for r, ids in row_cell_ids.items():
                    self._call_ids(store, "cell_ids", "has_cell", index, (t, r), ids)

    def _call_cells(self, store: Store, index: int, derived: Derived) -> None:
        # (each registry is tested where it is called, so that a listener added by an
        # earlier one in this dispatch is called too)
        cells_registry = self.registries["cell"][index]
        rows_registry = self.registries["row"][index]
        table_registry = self.registries["table"][index]
        tables_registry = self.registries["tables"][index]
        get_cell_change = store._get_cell_change
        tables_changed = False
        for t, rows in derived.cells.items():
            table_changed = False
            for r, cells in rows.items():
                row_changed = False
                for c, entry in cells.items():
                    old, new = entry[0], entry[1]
                    if not same_or_absent(old, new):
                        if cells_registry:
                            self.call(
                                "cell",
                                index,
                                (t, r, c),
                                (store, t, r, c, public(new), public(old), get_cell_change),
                            )
                        tables_changed = table_changed = row_changed = True
                if row_changed and rows_registry:
                    self.call("row", index, (t, r), (store, t, r, get_cell_change))
            if table_changed and table_registry:
                self.call("table", index, (t,), (store, t, get_cell_change))
        if tables_changed and tables_registry:
            self.call("tables", index, (), (store, get_cell_change))

    def call_values(self, store: Store, index: int) -> None:
        """Call the values' listeners of ``index`` for the changed values, in TinyBase's order."""
        live = self.live[index]
        if self.registries["has_values"][index]:
            has_now = bool(store._values)
            if has_now != store._had_values:
                self.call("has_values", index, (), (store, has_now))
        if "value_ids" in live or "has_value" in live:
            if store._track_ids:
                ids = dict(store._changed_value_ids)
            else:
                ids = {
                    v: (1 if entry[0] is ABSENT else -1)
                    for v, entry in store._changed_values.items()
                    if (entry[0] is ABSENT) != (entry[1] is ABSENT)
                }
            self._call_ids(store, "value_ids", "has_value", index, (), ids)
        if "value" in live or "values" in live:
            changed = False
            get_value_change = store._get_value_change
            for v, (old, new) in list(store._changed_values.items()):
                if not same_or_absent(old, new):
                    self.call(
                        "value", index, (v,), (store, v, public(new), public(old), get_value_change)
                    )
                    changed = True
            if changed:
                self.call("values", index, (), (store, get_value_change))

    def _call_ids(
        self,
        store: Store,
        ids_kind: str,
        has_kind: str,
        index: int,
        parent_ids: tuple[str, ...],
        changed: dict[str, int],
    ) -> None:
        """Call the ``ids_kind`` listeners once, then the ``has_kind`` ones per changed id."""
        if not changed:
            return
        snapshot = dict(changed)
        self.call(ids_kind, index, parent_ids, (store, *parent_ids, lambda: dict(snapshot)))
        if self.registries[has_kind][index]:
            for id_, delta in snapshot.items():
                ids = (*parent_ids, id_)
                self.call(has_kind, index, ids, (store, *ids, delta == 1))


class ListenerApi:
    """The listener methods of a Store (its base class), and the store's lock.

    A data listener is called as ``listener(store, *ids, ...)``, with the arguments of
    TinyBase's listener of that kind; an id given as None listens to every id. A ``mutator``
    listener is called before the transaction finishes and may write; the others after it,
    and their writes are ignored. ``get_cell_change(table_id, row_id, cell_id)`` and
    ``get_value_change(value_id)`` return ``[changed, old, new]``; ``get_id_changes()`` returns
    ``{id: 1 (added) or -1 (removed)}``. Each ``add_*`` method returns the listener id for
    ``del_listener``, and raises ``TypeError`` for a listener that is not callable or an id
    that is neither a str nor None.
    """

    def __init__(self) -> None:
        #: held for the whole of every transaction, listeners included (re-entrant)
        self.lock = threading.RLock()
        self._listeners = Listeners()

    def _add_listener(
        self, kind: str, ids: tuple[object, ...], listener: Listener, mutator: bool
    ) -> str:
        with self.lock:
            return self._listeners.add(kind, ids, listener, mutator)

    def _add_transaction_listener(self, kind: str, listener: Listener) -> str:
        with self.lock:
            return self._listeners.add_transaction(kind, listener)

    def del_listener(self, listener_id: str) -> Self:
        """Remove a listener; an unknown id is ignored."""
        with self.lock:
            self._listeners.delete(listener_id)
        return self

    def get_listener_stats(self) -> dict[str, int]:
        """The number of listeners per kind, and ``"transaction"`` (TinyBase's getListenerStats)."""
        return self._listeners.stats()

    def add_has_tables_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, has_now)`` when the store gets its first table or loses its last."""
        return self._add_listener("has_tables", (), listener, mutator)

    def add_tables_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, get_cell_change)`` when any cell changes."""
        return self._add_listener("tables", (), listener, mutator)

    def add_table_ids_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, get_id_changes)`` when tables are added or removed."""
        return self._add_listener("table_ids", (), listener, mutator)

    def add_has_table_listener(
        self, table_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, has_now)`` when the table appears or disappears."""
        return self._add_listener("has_table", (table_id,), listener, mutator)

    def add_table_listener(self, table_id: Id, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, table_id, get_cell_change)`` when a cell of the table changes."""
        return self._add_listener("table", (table_id,), listener, mutator)

    def add_table_cell_ids_listener(
        self, table_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, get_id_changes)`` when its cell ids change."""
        return self._add_listener("table_cell_ids", (table_id,), listener, mutator)

    def add_has_table_cell_listener(
        self, table_id: Id, cell_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, cell_id, has_now)`` when the id comes or goes."""
        return self._add_listener("has_table_cell", (table_id, cell_id), listener, mutator)

    def add_row_count_listener(
        self, table_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, count)`` when the table's row count changes."""
        return self._add_listener("row_count", (table_id,), listener, mutator)

    def add_row_ids_listener(self, table_id: Id, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, table_id, get_id_changes)`` when its row ids change."""
        return self._add_listener("row_ids", (table_id,), listener, mutator)

    def add_has_row_listener(
        self, table_id: Id, row_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, row_id, has_now)`` when the row appears or disappears."""
        return self._add_listener("has_row", (table_id, row_id), listener, mutator)

    def add_row_listener(
        self, table_id: Id, row_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, row_id, get_cell_change)`` when a cell of the row changes."""
        return self._add_listener("row", (table_id, row_id), listener, mutator)

    def add_cell_ids_listener(
        self, table_id: Id, row_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, row_id, get_id_changes)`` when its cell ids change."""
        return self._add_listener("cell_ids", (table_id, row_id), listener, mutator)

    def add_has_cell_listener(
        self, table_id: Id, row_id: Id, cell_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, row_id, cell_id, has_now)`` when the cell comes or goes."""
        return self._add_listener("has_cell", (table_id, row_id, cell_id), listener, mutator)

    def add_cell_listener(
        self, table_id: Id, row_id: Id, cell_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, table_id, row_id, cell_id, new, old, get_cell_change)``."""
        return self._add_listener("cell", (table_id, row_id, cell_id), listener, mutator)

    def add_has_values_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, has_now)`` when the store gets its first value or loses its last."""
        return self._add_listener("has_values", (), listener, mutator)

    def add_values_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, get_value_change)`` when any value changes."""
        return self._add_listener("values", (), listener, mutator)

    def add_value_ids_listener(self, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, get_id_changes)`` when values are added or removed."""
        return self._add_listener("value_ids", (), listener, mutator)

    def add_has_value_listener(
        self, value_id: Id, listener: Listener, mutator: bool = False
    ) -> str:
        """``listener(store, value_id, has_now)`` when the value appears or disappears."""
        return self._add_listener("has_value", (value_id,), listener, mutator)

    def add_value_listener(self, value_id: Id, listener: Listener, mutator: bool = False) -> str:
        """``listener(store, value_id, new, old, get_value_change)`` when the value changes."""
        return self._add_listener("value", (value_id,), listener, mutator)

    def add_start_transaction_listener(self, listener: Listener) -> str:
        """``listener(store)`` when a transaction starts."""
        return self._add_transaction_listener("start", listener)

    def add_will_finish_transaction_listener(self, listener: Listener) -> str:
        """``listener(store)`` before a transaction finishes (after the mutators)."""
        return self._add_transaction_listener("will_finish", listener)

    def add_did_finish_transaction_listener(self, listener: Listener) -> str:
        """``listener(store)`` after every transaction, including changes applied from peers."""
        return self._add_transaction_listener("did_finish", listener)


def _tracked_ids(store: Store, derived: Derived) -> None:
    """Put the id changes ``store`` tracked as they happened into ``derived``."""
    derived.table_ids = dict(store._changed_table_ids)
    derived.row_ids = {t: dict(ids) for t, ids in store._changed_row_ids.items()}
    derived.row_counts = {t: n for t, n in store._changed_row_count.items() if n}
    derived.cell_ids = {
        t: {r: dict(ids) for r, ids in rows.items()} for t, rows in store._changed_cell_ids.items()
    }


def _check_callable(listener: object) -> None:
    if not callable(listener):
        raise TypeError("a listener must be callable")


def _wildcard_paths(ids: tuple[str, ...]) -> Iterable[tuple[str | None, ...]]:
    """Registry paths that match ``ids``: each id or None, in ``itertools.product`` order."""
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
