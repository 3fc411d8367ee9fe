"""The receive path of MergeableStore must be indistinguishable from the faithful port.

``apply_encoded_mergeable_changes``/``apply_mergeable_changes``/``set_mergeable_content`` take
one fused path (localsync.core.merge: merge and write one row at a time, hashes of merged
cells settled lazily). The line-by-line port of TinyBase's mergeContentOrChanges is the
oracle (tests/core/oracle.py); here two replicas with the same id and clock get the same
random mix of local writes, peer changes (stale and newer stamps, deletions, object cells,
row/table HLCs, malformed and far-future sets), peer content, transactions that roll back,
and hash reads at random moments, one receiving through the store and one through the
oracle, and every observable must stay equal: content with hashes, data, listener calls,
transaction changes. The port itself is checked against TinyBase by
test_store_tinybase_diff.py.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from localsync import UNDEFINED, create_mergeable_store
from localsync.core.hlc import HLC_MAX_FUTURE_OFFSET, encode_hlc_parts
from localsync.core.merge import prechecked
from localsync.core.validation import check_content_diff
from tests.core import oracle

TABLES = ["t1", "t2", "0"]
ROWS = ["r1", "r2", "r3", "1", "0"]
CELLS = ["a", "b", "c", "2"]
VALUES = ["v1", "v2", "3"]
PEERS = ["Peer1", "Peer2", "Peer3"]


def _cell(rng: random.Random) -> Any:
    return rng.choice(
        [
            rng.randrange(-3, 4),
            rng.random(),
            f"s{rng.randrange(3)}",
            True,
            False,
            None,
            {"k": rng.randrange(3)},
            [1, "x"],
            2**53 + 2,
        ]
    )


def _encoded(cell: Any) -> Any:
    from localsync.core.store import encode_cell

    return encode_cell(cell)


def _peer_hlc(rng: random.Random, now: int) -> str:
    if rng.random() < 0.05:
        return ""
    return encode_hlc_parts(now + rng.randrange(-8, 3), rng.randrange(3), rng.choice(PEERS))


def _stamp(rng: random.Random, thing: Any, now: int, hashes: bool) -> list[Any]:
    if hashes:
        return [thing, _peer_hlc(rng, now) if rng.random() < 0.3 else "", rng.randrange(2**32)]
    if rng.random() < 0.3:
        return [thing, _peer_hlc(rng, now)]
    return [thing]


def _peer_data(
    rng: random.Random, now: int, content: bool, encoded: bool, plain: bool = False
) -> list[Any]:
    """``plain``: changes as a peer's transaction pushes them (tables only, no object cells,
    floats or big numbers: what ``merge.prechecked`` lets skip the validator)."""

    def thing() -> Any:
        if not content and rng.random() < 0.25:
            return UNDEFINED
        if plain:
            return rng.choice([rng.randrange(-3, 4), f"s{rng.randrange(3)}", True, None])
        cell = _cell(rng)
        return _encoded(cell) if encoded else cell

    tables: dict[str, Any] = {}
    for t in rng.sample(TABLES, rng.randrange(0, 3)):
        rows = {}
        for r in rng.sample(ROWS, rng.randrange(1, 4)):
            cells = {}
            for c in rng.sample(CELLS, rng.randrange(0 if rng.random() < 0.1 else 1, 4)):
                cell = [thing(), _peer_hlc(rng, now)]
                if content or rng.random() < 0.1:
                    cell.append(rng.randrange(2**32))
                cells[c] = cell
            rows[r] = _stamp(rng, cells, now, content)
        tables[t] = _stamp(rng, rows, now, content)
    values = {}
    for v in rng.sample(VALUES, 0 if plain else rng.randrange(0, 3)):
        value = [thing(), _peer_hlc(rng, now)]
        if content:
            value.append(rng.randrange(2**32))
        values[v] = value
    if content:
        return [_stamp(rng, tables, now, True), _stamp(rng, values, now, True)]
    data: list[Any] = [_stamp(rng, tables, now, False), _stamp(rng, values, now, False), 1]
    roll = rng.random()
    if roll < 0.05:  # far in the future: ignored as a whole
        data[1 if not plain else 0][0]["v1" if not plain else "t1"] = [
            "late" if not plain else {},
            encode_hlc_parts(now + 400_000, 0, PEERS[0]),
        ]
    elif roll < 0.08:  # malformed: ignored as a whole
        data[1][0]["v2"] = ["bad", "not-an-hlc"]
    return data


def _local_op(rng: random.Random) -> tuple[Any, ...]:
    t, r, c, v = rng.choice(TABLES), rng.choice(ROWS), rng.choice(CELLS), rng.choice(VALUES)
    choice = rng.randrange(7)
    if choice == 0:
        return ("set_cell", t, r, c, _cell(rng))
    if choice == 1:
        return ("set_row", t, r, {cc: _cell(rng) for cc in rng.sample(CELLS, 2)})
    if choice == 2:
        return ("set_partial_row", t, r, {cc: _cell(rng) for cc in rng.sample(CELLS, 2)})
    if choice == 3:
        return ("del_cell", t, r, c)
    if choice == 4:
        return ("del_row", t, r)
    if choice == 5:
        return ("set_value", v, _cell(rng))
    return ("del_value", v)


def _make_ops(seed: int, steps: int) -> list[Any]:
    rng = random.Random(seed)
    now = 1_700_000_000_000
    ops: list[Any] = []
    for _ in range(steps):
        now += rng.randrange(0, 3)
        roll = rng.random()
        if roll < 0.15:
            ops.append(("changes", now, True, _peer_data(rng, now, False, True, plain=True)))
        elif roll < 0.35:
            encoded = rng.random() < 0.5
            ops.append(("changes", now, encoded, _peer_data(rng, now, False, encoded)))
        elif roll < 0.4:
            encoded = rng.random() < 0.5
            ops.append(("content", now, encoded, _peer_data(rng, now, True, encoded)))
        elif roll < 0.65:
            ops.append(("local", now, _local_op(rng)))
        elif roll < 0.75:
            inner = [
                ("changes", now, True, _peer_data(rng, now, False, True))
                if rng.random() < 0.6
                else ("local", now, _local_op(rng))
                for _ in range(rng.randrange(1, 4))
            ]
            ops.append(("txn", now, inner, rng.random() < 0.3))
        elif roll < 0.9:
            ops.append(("read", now, rng.randrange(4)))
        else:
            ops.append(("compare", now))
    return ops


class _Replica:
    """``listeners``: 2 = cell, row id and value listeners too, 1 = did-finish, table cell
    ids and tables listeners only (no id tracking: rows new to the store are then inserted
    whole), 3 = did-finish, cell, row, table and tables listeners (what a pushed change may
    meet), 0 = none. Encoded changes arrive as a sync engine hands them over (checked:
    ``check_content_diff``) whenever they pass its check. ``reference``: everything received
    goes through the oracle (with the full validator, also for checked changes)."""

    def __init__(self, reference: bool, listeners: int = 2) -> None:
        self.now = 0
        self.store = create_mergeable_store("replica", lambda: self.now)
        self.reference = reference
        self.log: list[Any] = []
        self.pushed = 0  # checked changes that skipped the validator (merge.prechecked)
        store = self.store
        self.cell_listener = ""
        if listeners == 0:
            return
        if listeners == 3:
            self._add_pushed_path_listeners()
            return
        store.add_did_finish_transaction_listener(
            lambda s: self.log.append(
                (
                    "finish",
                    s.get_transaction_changes(),
                    s.get_encoded_transaction_mergeable_changes(),
                )
            )
        )
        store.add_table_cell_ids_listener(
            None, lambda s, t, f: self.log.append(("table_cell_ids", t, f()))
        )
        store.add_tables_listener(lambda s, f: self.log.append(("tables", s.get_tables())))
        if listeners == 1:
            return
        self.cell_listener = store.add_cell_listener(
            None, None, None, lambda s, *args: self.log.append(args[:5])
        )
        store.add_row_ids_listener(None, lambda s, t, f: self.log.append(("row_ids", t, f())))
        store.add_value_listener(None, lambda s, *args: self.log.append(args[:3]))

    def _add_pushed_path_listeners(self) -> None:
        store, log = self.store, self.log
        store.add_did_finish_transaction_listener(
            lambda s: log.append(
                (
                    "finish",
                    s.get_transaction_changes(),
                    s.get_encoded_transaction_mergeable_changes(),
                    s.get_mergeable_content_hashes(),
                )
            )
        )
        self.cell_listener = store.add_cell_listener(
            None, None, None, lambda s, *args: log.append(args[:5])
        )
        store.add_row_listener(None, "r1", lambda s, t, r, get: log.append(("row", t, r)))
        store.add_table_listener(
            "t1", lambda s, t, get: log.append(("table", t, get(t, "r1", "a")))
        )
        store.add_tables_listener(lambda s, get: log.append(("tables", s.get_tables())))

    def run(self, op: Any) -> Any:
        kind = op[0]
        self.now = op[1]
        store = self.store
        if kind == "changes":
            if op[2]:
                checked = check_content_diff(op[3])
                if checked is None:
                    self.receive(op[3], False, True)
                else:
                    if not self.reference and prechecked(checked, self.now + HLC_MAX_FUTURE_OFFSET):
                        self.pushed += 1
                    self.receive(checked, False, True)
            else:
                self.receive(op[3], False, False)
        elif kind == "content":
            if self.reference:
                oracle.apply(store, op[3], True, op[2])
            elif op[2]:
                store.set_encoded_mergeable_content(op[3])
            else:
                store.set_mergeable_content(op[3])
        elif kind == "default":
            if self.reference:
                oracle.set_default_content(store, op[2])
            else:
                store.set_default_content(op[2])
        elif kind == "local":
            name, *args = op[2]
            getattr(store, name)(*args)
        elif kind == "txn":
            try:
                with store.transaction():
                    for inner in op[2]:
                        self.run(inner)
                    if op[3]:
                        raise KeyError("roll back")
            except KeyError:
                pass
        elif kind == "read":
            which = op[2]
            if which == 0:
                return store.get_mergeable_content_hashes()
            if which == 1:
                return store.get_mergeable_table_hashes()
            if which == 2:
                return store.get_mergeable_row_hashes({t: 0 for t in TABLES})
            return store.get_mergeable_cell_hashes({t: {r: 0 for r in ROWS} for t in TABLES})
        elif kind == "compare":
            return self.snapshot()
        return None

    def receive(self, data: Any, is_content: bool, encoded: bool) -> None:
        """Apply peer changes through the store's path, or the oracle's for the reference."""
        if self.reference:
            oracle.apply(self.store, data, is_content, encoded)
        elif encoded:
            self.store.apply_encoded_mergeable_changes(data)
        else:
            self.store.apply_mergeable_changes(data)

    def snapshot(self) -> Any:
        store = self.store
        return (
            store.get_mergeable_content(),
            store.get_encoded_content(),
            store.get_table_cell_ids("t1"),
            store.ignored_count,
        )


@pytest.mark.parametrize("seed", range(80))
def test_fast_receive_path_equals_the_port(seed: int) -> None:
    fast, reference = _Replica(False, seed % 4), _Replica(True, seed % 4)
    for step, op in enumerate(_make_ops(seed, 80)):
        assert fast.run(op) == reference.run(op), f"step {step}: {op[0]}"
        assert fast.log == reference.log, f"step {step}: {op[0]}"
    assert fast.snapshot() == reference.snapshot()
    assert fast.log == reference.log
    assert reference.pushed == 0
    if seed % 4 != 2:  # (no row id listener: pushed changes take the short path)
        assert fast.pushed > 0


def _default_content(rng: random.Random) -> Any:
    tables = {
        t: {r: {c: _cell(rng) for c in rng.sample(CELLS, 2)} for r in rng.sample(ROWS, 2)}
        for t in rng.sample(TABLES, rng.randrange(0, 3))
    }
    return [tables, {v: _cell(rng) for v in rng.sample(VALUES, rng.randrange(0, 3))}]


@pytest.mark.parametrize("seed", range(24))
def test_default_content_and_mutator_listeners_equal_the_port(seed: int) -> None:
    """Defaulted content (each cell merged with an empty HLC) at random moments, and mutator
    listeners that receive a peer's changes and derive a cell while changes are applied
    (their writes are stamped as the store's own, after every received stamp)."""
    fast, reference = _Replica(False, seed % 4), _Replica(True, seed % 4)
    for replica in (fast, reference):
        rng = random.Random(seed)

        def on_cell(
            s: Any, table_id: str, row_id: str, cell_id: str, new: Any, *_: Any,
            replica: Any = replica, rng: random.Random = rng,
        ) -> None:  # fmt: skip
            roll = rng.random()
            if roll < 0.3:
                encoded = rng.random() < 0.5
                replica.receive(_peer_data(rng, replica.now, False, encoded), False, encoded)
            elif roll < 0.4:
                encoded = rng.random() < 0.5
                content = _peer_data(rng, replica.now, True, encoded)
                if replica.reference:
                    oracle.apply(s, content, True, encoded)
                elif encoded:
                    s.set_encoded_mergeable_content(content)
                else:
                    s.set_mergeable_content(content)
            if type(new) is int:
                s.set_cell("t2", row_id, "derived", new * 2)

        replica.store.add_cell_listener("t1", None, None, on_cell, mutator=True)
    rng = random.Random(seed + 1000)
    ops = _make_ops(seed, 60)
    for _ in range(6):
        now = ops[rng.randrange(len(ops))][1]
        ops.insert(rng.randrange(len(ops) + 1), ("default", now, _default_content(rng)))
    ops.sort(key=lambda op: op[1])  # (times never go back)
    for step, op in enumerate(ops):
        assert fast.run(op) == reference.run(op), f"step {step}: {op[0]}"
        assert fast.log == reference.log, f"step {step}: {op[0]}"
        assert fast.store.had_mutated() == reference.store.had_mutated(), f"step {step}"
    assert fast.snapshot() == reference.snapshot()
    assert fast.log == reference.log


def test_many_merges_between_hash_reads_settle_to_the_ports_hashes() -> None:
    """Row-sized changes for new and existing rows, never read in between (the fan-out case)."""
    fast, reference = _Replica(False), _Replica(True)
    for replica in (fast, reference):
        replica.store.del_listener(replica.cell_listener)  # keep the logs small
    rng = random.Random(7)
    now = 1_700_000_000_000
    for i in range(400):
        now += 1
        row = f"r{rng.randrange(60)}"
        cells = {
            f"c{c}": [_encoded(_cell(rng)), encode_hlc_parts(now, i % 5, rng.choice(PEERS))]
            for c in range(rng.randrange(1, 5))
        }
        row_stamp = [cells, encode_hlc_parts(now, 0, PEERS[0])] if i % 7 == 0 else [cells]
        data = [[{"t": [{row: row_stamp}]}], [{}], 1]
        for replica in (fast, reference):
            replica.now = now
            replica.receive(data, False, True)
    assert fast.store._dirty_cells  # the fast path really left hashes pending
    assert fast.snapshot() == reference.snapshot()
    assert fast.log == reference.log


def test_bulk_work_pauses_the_collector_and_restores_its_state() -> None:
    """The pause must never leave the collector off, nor turn on one the program turned off."""
    import gc

    store = create_mergeable_store("gc")
    seen: list[bool] = []
    store.add_did_finish_transaction_listener(lambda s: seen.append(gc.isenabled()))
    hlc = encode_hlc_parts(1, 0, PEERS[0])
    rows = {f"r{i}": [{f"c{j}": [j, hlc] for j in range(10)}] for i in range(200)}
    data = [[{"t": [rows]}], [{}], 1]  # 2,000 cells: large enough to pause for
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        store.apply_encoded_mergeable_changes(data)
        assert seen == [False] and gc.isenabled()
        gc.disable()
        store.get_mergeable_content()
        store.set_encoded_mergeable_content(store.get_encoded_mergeable_content())
        assert not gc.isenabled()
    finally:
        if was_enabled:
            gc.enable()
