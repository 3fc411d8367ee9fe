"""SQLite persister: the incremental storage layer replayed against TinyBase's own transaction
changes, its cost per transaction, corrupt databases, and the persister on a real store."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localsync.persisters._common import PersistError
from localsync.persisters._filestore import CorruptContentError
from localsync.persisters._sqlitestore import SqliteStorage

VECTORS = Path(__file__).parents[1] / "conformance"


def _store_cases() -> list[dict[str, Any]]:
    return json.loads((VECTORS / "store_traces.json").read_text())


def _with_hashes(changes: list[Any], content: list[Any]) -> list[Any]:
    """Changes-with-hashes as TinyBase builds them: the touched ids, stamps taken from the
    content after the transaction (merge traces record the changes without hashes)."""
    tables_stamp, values_stamp = content
    tables: dict[str, Any] = {}
    for table_id, table_change in changes[0][0].items():
        table_stamp = tables_stamp[0].get(table_id)
        if table_stamp is None:
            continue
        rows: dict[str, Any] = {}
        for row_id, row_change in table_change[0].items():
            row_stamp = table_stamp[0].get(row_id)
            if row_stamp is None:
                continue
            cells = {
                cell_id: row_stamp[0][cell_id]
                for cell_id in row_change[0]
                if cell_id in row_stamp[0]
            }
            rows[row_id] = [cells, row_stamp[1], row_stamp[2]]
        tables[table_id] = [rows, table_stamp[1], table_stamp[2]]
    values = {
        value_id: values_stamp[0][value_id]
        for value_id in changes[1][0]
        if value_id in values_stamp[0]
    }
    return [
        [tables, tables_stamp[1], tables_stamp[2]],
        [values, values_stamp[1], values_stamp[2]],
        1,
    ]


def _merge_store_histories() -> list[tuple[str, list[tuple[list[Any], list[Any]]]]]:
    """Per store of every merge trace: (changes_with_hashes, content after) per transaction."""
    histories = []
    for case in json.loads((VECTORS / "merge_traces.json").read_text()):
        for store in case["stores"]:
            history = []
            for step in case["steps"]:
                after = step["after"][store]
                for changes in after.get("transactions", []):
                    history.append((_with_hashes(changes, after["content"]), after["content"]))
            histories.append((f"{case['name']}-{store}", history))
    return histories


def _replay(storage: SqliteStorage, history: list[tuple[list[Any], list[Any]]]) -> int:
    """Save each transaction as the persister does; return how many needed a full save."""
    full = 0
    for changes, after in history:
        if storage.write_changes(changes) is None:
            full += 1
            storage.write_content(after)
        assert storage.read_content() == after
    return full


@pytest.mark.parametrize("case", _store_cases(), ids=lambda case: case["name"])
def test_incremental_saves_rebuild_tinybase_content(tmp_path: Path, case: dict[str, Any]) -> None:
    storage = SqliteStorage(tmp_path / "s.db")
    assert storage.read_content() is None
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    history = [
        (tx["changes_with_hashes"], step["after"]["content"])
        for step in case["steps"]
        for tx in step["transactions"]
    ]
    full = _replay(storage, history)
    if case["name"] != "apply_and_set_mergeable":
        assert full == 0, "plain local writes must all be saved incrementally"
    storage.close()


def test_changes_that_omit_stamp_changes_fall_back_to_full_save(tmp_path: Path) -> None:
    """TinyBase's transaction changes omit a deletion of a cell the store never had and the
    tables dropped by setMergeableContent; the hashes give them away, and saving must not
    persist a content whose hashes do not match its cells."""
    case = next(c for c in _store_cases() if c["name"] == "apply_and_set_mergeable")
    storage = SqliteStorage(tmp_path / "s.db")
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    history = [
        (tx["changes_with_hashes"], step["after"]["content"])
        for step in case["steps"]
        for tx in step["transactions"]
    ]
    assert _replay(storage, history) == 2


@pytest.mark.parametrize(("name", "history"), _merge_store_histories())
def test_merged_histories_rebuild_tinybase_content(
    tmp_path: Path, name: str, history: list[tuple[list[Any], list[Any]]]
) -> None:
    storage = SqliteStorage(tmp_path / "m.db")
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    _replay(storage, history)


def _big_content(rows: int, cells_per_row: int = 10) -> list[Any]:
    """Content shaped like a store's (hash values are arbitrary but consistent per level)."""
    from localsync.core.hash import get_value_in_values_hash as h

    table: dict[str, Any] = {}
    table_hash = 0
    for r in range(rows):
        row = {
            f"c{c}": [r * 100 + c, "NjEtLV-----VnP9x", (r * 100 + c) & 0xFFFF] for c in range(10)
        }
        row_hash = 0
        for cell_id, stamp in row.items():
            row_hash ^= h(cell_id, stamp[2]) ^ h(cell_id, 0)
        table[f"r{r}"] = [row, "", row_hash]
        table_hash ^= h(f"r{r}", row_hash)
    tables_hash = h("t", table_hash)
    return [[{"t": [table, "", table_hash]}, "", tables_hash], [{}, "", 0]]


def _one_cell_change(content: list[Any], row: int, value: int) -> list[Any]:
    """Changes-with-hashes for setting t/r<row>/c0, derived the way the store derives them."""
    from localsync.core.hash import get_value_in_values_hash as h

    table_stamp = content[0][0]["t"]
    row_stamp = table_stamp[0][f"r{row}"]
    old_cell_hash = row_stamp[0]["c0"][2]
    new_cell_hash = (old_cell_hash + 1) & 0xFFFFFFFF
    row_hash = row_stamp[2] ^ h("c0", old_cell_hash) ^ h("c0", new_cell_hash)
    table_hash = table_stamp[2] ^ h(f"r{row}", row_stamp[2]) ^ h(f"r{row}", row_hash)
    tables_hash = content[0][2] ^ h("t", table_stamp[2]) ^ h("t", table_hash)
    row_stamp[0]["c0"] = [value, "NjEtLW-----VnP9x", new_cell_hash]
    row_stamp[2], table_stamp[2], content[0][2] = row_hash, table_hash, tables_hash
    return [
        [
            {
                "t": [
                    {f"r{row}": [{"c0": [value, "NjEtLW-----VnP9x", new_cell_hash]}, "", row_hash]},
                    "",
                    table_hash,
                ]
            },
            "",
            tables_hash,
        ],
        [{}, "", 0],
        1,
    ]


@pytest.mark.parametrize("rows", [100, 10_000])
def test_a_transaction_writes_only_its_rows(tmp_path: Path, rows: int) -> None:
    """The work of a save is counted in SQLite row changes, not timed: it must not depend on
    the size of the store."""
    content = _big_content(rows)
    storage = SqliteStorage(tmp_path / "big.db")
    storage.write_content(content)
    conn = storage._connect()
    before = conn.total_changes
    assert storage.write_changes(_one_cell_change(content, rows // 2, -1)) == 1
    # one cell + its row + its table + the meta row
    assert conn.total_changes - before == 4
    assert storage.read_content() == content


def test_not_a_database_is_corrupt_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    garbage = b"this is not sqlite" * 300
    path.write_bytes(garbage)
    storage = SqliteStorage(path)
    with pytest.raises(CorruptContentError):
        storage.read_content()
    with pytest.raises((CorruptContentError, sqlite3.DatabaseError)):
        storage.write_content([[{}, "", 0], [{}, "", 0]])
    assert path.read_bytes() == garbage


def test_orphan_rows_are_corrupt(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "o.db")
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    storage._connect().execute(
        "INSERT INTO localsync_cells VALUES ('t', 'r', 'c', '1', 'NjEtLV-----VnP9x', 1)"
    )
    with pytest.raises(CorruptContentError):
        storage.read_content()


def test_data_version_moves_when_another_connection_commits(tmp_path: Path) -> None:
    path = tmp_path / "dv.db"
    mine = SqliteStorage(path)
    other = SqliteStorage(path)
    mine.write_content([[{}, "", 0], [{}, "", 0]])
    version = mine.data_version()
    mine.write_content([[{}, "", 0], [{"v": [1, "NjEtLV-----VnP9x", 5]}, "", 7]])
    assert mine.data_version() == version  # own commits do not count
    other.write_content([[{}, "", 0], [{}, "", 0]])
    assert mine.data_version() != version


@pytest.mark.parametrize(
    "case",
    [c for c in _store_cases() if c["name"] != "apply_and_set_mergeable"],
    ids=lambda case: case["name"],
)
def test_a_coalesced_burst_is_one_incremental_write(tmp_path: Path, case: dict[str, Any]) -> None:
    """Auto-save folds queued transactions into one change set; saving it in one go gives
    the same database as saving each transaction."""
    from localsync.persisters._common import merge_changes

    burst = None
    for step in case["steps"]:
        for tx in step["transactions"]:
            burst = merge_changes(burst, tx["changes_with_hashes"])
    assert burst is not None
    storage = SqliteStorage(tmp_path / "c.db")
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    assert storage.write_changes(burst) is not None
    assert storage.read_content() == case["steps"][-1]["after"]["content"]


# ------------------------------------------------------------------ the persister on a store


def run_async(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop, bounded in time (no pytest-asyncio in CI)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


def _store() -> Any:
    from localsync import create_mergeable_store

    return create_mergeable_store()


def _persister(store: Any, path: Path, errors: list[BaseException] | None = None) -> Any:
    from localsync import create_sqlite_persister

    return create_sqlite_persister(store, path, None if errors is None else errors.append)


async def _reload(path: Path) -> Any:
    fresh = _store()
    errors: list[BaseException] = []
    reader = _persister(fresh, path, errors)
    await reader.load()
    await reader.destroy()
    assert not errors, errors
    return fresh


@run_async
async def test_round_trip_and_incremental_auto_save(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = _store()
    persister = _persister(store, path)
    await persister.start_auto_save()
    assert persister.get_path() == str(path)
    with store.transaction():
        store.set_cell("t", "r1", "text", "héllo 😀")
        store.set_cell("t", "r1", "obj", {"a": [1, None], "2": "x"})
        store.set_value("v", None)
    await persister.flush()
    for i in range(5):
        store.set_cell("t", f"r{i}", "n", i)
        await persister.flush()
    store.del_cell("t", "r1", "text")
    await persister.flush()
    stats = persister.get_save_stats()
    assert stats["full_writes"] == 1  # the first save only
    assert stats["incremental_writes"] >= 7
    fresh = await _reload(path)
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
    assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
    await persister.destroy()


@run_async
async def test_loading_is_not_followed_by_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    store = _store()
    first = _persister(store, path)
    store.set_cell("t", "r", "c", 1)
    await first.save()
    await first.destroy()
    again = _store()
    persister = _persister(again, path)
    await persister.start_auto_persisting()
    assert persister.get_save_stats()["writes"] == 0
    again.set_cell("t", "r", "c", 2)
    await persister.flush()
    assert persister.get_save_stats()["incremental_writes"] == 1
    assert (await _reload(path)).get_cell("t", "r", "c") == 2
    await persister.destroy()


@run_async
async def test_stamp_only_changes_from_peers_are_saved(tmp_path: Path) -> None:
    """A peer's deletion of a cell this store never had changes only stamps and hashes;
    TinyBase's transaction changes omit it, the persister must still save it."""
    path = tmp_path / "p.sqlite"
    store, peer = _store(), _store()
    persister = _persister(store, path)
    await persister.start_auto_save()
    store.set_cell("t", "r", "mine", 1)
    peer.set_cell("t2", "r", "theirs", 1)
    peer.del_cell("t2", "r", "theirs")
    store.apply_mergeable_changes(peer.get_mergeable_content())
    await persister.flush()
    stats = persister.get_save_stats()
    assert stats["repairs"] == 1 and stats["full_writes"] == 1, stats  # repaired, not rewritten
    fresh = await _reload(path)
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
    assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
    await persister.destroy()


@run_async
async def test_corrupt_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bad.sqlite"
    garbage = b"not a database at all " * 200
    path.write_bytes(garbage)
    store = _store()
    errors: list[BaseException] = []
    persister = _persister(store, path, errors)
    await persister.load()
    assert errors and isinstance(errors[0], CorruptContentError)
    store.set_cell("t", "r", "c", 1)
    with pytest.raises(PersistError):
        await persister.flush()
    assert path.read_bytes() == garbage
    await persister.destroy()


_OTHER_PROCESS = """
import asyncio, sys
from localsync import create_mergeable_store, create_sqlite_persister

async def main():
    store = create_mergeable_store()
    persister = create_sqlite_persister(store, sys.argv[1])
    await persister.load()
    await persister.start_auto_save()
    store.set_cell("t", "r", "from", "other process")
    await persister.flush()
    await persister.destroy()

asyncio.run(main())
"""


@pytest.mark.process
@run_async
async def test_auto_load_sees_another_process(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    store = _store()
    persister = _persister(store, path)
    store.set_cell("t", "r", "mine", 1)
    await persister.save()
    await persister.start_auto_load()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OTHER_PROCESS, str(path), cwd=Path(__file__).parents[2]
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    async with asyncio.timeout(10):
        while store.get_cell("t", "r", "from") != "other process":
            await asyncio.sleep(0.02)
    assert store.get_cell("t", "r", "mine") == 1
    await persister.destroy()


def test_database_is_wal_with_full_sync(tmp_path: Path) -> None:
    """The durability promise rests on these two settings (see _sqlitestore's docstring)."""
    storage = SqliteStorage(tmp_path / "d.sqlite")
    storage.write_content([[{}, "", 0], [{}, "", 0]])
    conn = storage._connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = sqlite3.connect(tmp_path / "d.sqlite")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    other.close()
    storage.close()


@run_async
async def test_write_errors_are_reported_and_keep_what_was_saved(tmp_path: Path) -> None:
    """A file-size limit makes SQLite's writes fail as a full disk does."""
    import resource
    import signal

    path = tmp_path / "full.sqlite"
    store = _store()
    errors: list[BaseException] = []
    persister = _persister(store, path, errors)
    await persister.start_auto_save()
    store.set_cell("t", "r", "c", "saved")
    await persister.flush()
    saved = store.get_mergeable_content()
    used = sum(p.stat().st_size for p in tmp_path.iterdir())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (used + 4096, hard))
    try:
        store.set_cell("t", "r", "big", "x" * 200_000)
        with pytest.raises(PersistError):
            await persister.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert errors
    assert (await _reload(path)).get_mergeable_content() == saved
    full_writes = persister.get_save_stats()["full_writes"]
    await persister.flush()  # room again: the next save catches up, by hash comparison
    assert persister.get_save_stats()["full_writes"] == full_writes
    assert (await _reload(path)).get_mergeable_content() == store.get_mergeable_content()
    await persister.destroy()


# ------------------------------------------------------------------ random histories

_ids = st.sampled_from(["a", "b", "c"])
_cells = st.one_of(
    st.integers(-3, 3), st.text(max_size=3), st.booleans(), st.none(), st.just({"k": [1]})
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _ids, _ids, _ids, _cells),
        st.tuples(st.just("del"), _ids, _ids, _ids),
        st.tuples(st.just("value"), _ids, _cells),
        st.tuples(st.just("del_value"), _ids),
        st.tuples(st.just("peer"), _ids, _ids, _ids, _cells, st.booleans()),
        st.tuples(st.just("replace"), _ids, _cells),
        st.tuples(
            st.just("flush"),
        ),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_random_histories_reload_exactly(
    tmp_path_factory: pytest.TempPathFactory, ops: Any
) -> None:
    """Local writes, peers' changes (including stamp-only ones), whole-content replacement
    and flushes in any order: after a final flush a fresh load equals the store exactly."""
    path = tmp_path_factory.mktemp("random") / "r.sqlite"

    async def scenario() -> None:
        from localsync import create_mergeable_store

        store = _store()
        errors: list[BaseException] = []
        persister = _persister(store, path, errors)
        await persister.start_auto_save()
        for op in ops:
            kind = op[0]
            if kind == "set":
                store.set_cell(op[1], op[2], op[3], op[4])
            elif kind == "del":
                store.del_cell(op[1], op[2], op[3])
            elif kind == "value":
                store.set_value(op[1], op[2])
            elif kind == "del_value":
                store.del_value(op[1])
            elif kind == "peer":
                peer = create_mergeable_store()
                peer.set_cell(op[1], op[2], op[3], op[4])
                if op[5]:
                    peer.del_cell(op[1], op[2], op[3])
                store.apply_mergeable_changes(peer.get_mergeable_content())
            elif kind == "replace":
                other = create_mergeable_store()
                other.set_cell("only", "r", op[1], op[2])
                store.set_mergeable_content(other.get_mergeable_content())
            else:
                await persister.flush()
            await asyncio.sleep(0)
        await persister.flush()
        assert not errors, errors
        fresh = await _reload(path)
        assert fresh.get_mergeable_content() == store.get_mergeable_content()
        assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
        await persister.destroy()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_plain_store_is_refused(tmp_path: Path) -> None:
    """The schema stores stamps and hashes: it needs a MergeableStore (TinyBase's tabular
    SQLite persisters are a different format)."""
    from localsync import create_sqlite_persister, create_store

    with pytest.raises(TypeError):
        create_sqlite_persister(create_store(), tmp_path / "plain.sqlite")
    assert not (tmp_path / "plain.sqlite").exists()


@run_async
async def test_lone_surrogates_in_ids_and_cells(tmp_path: Path) -> None:
    """JavaScript strings may hold lone surrogates and the store accepts them; SQLite cannot
    bind them as TEXT, so such ids are kept as BLOBs and turned back on load."""
    path = tmp_path / "surrogates.sqlite"
    store = _store()
    errors: list[BaseException] = []
    persister = _persister(store, path, errors)
    await persister.start_auto_save()
    store.set_cell("t", "r", "c", "a\ud800b")
    store.set_cell("t", "r\udc00", "c\ud800", 1)
    store.set_value("v\udfff", 2)
    await persister.flush()
    store.set_cell("t", "r\udc00", "c\ud800", 3)  # incremental upsert of a BLOB-keyed cell
    await persister.flush()
    assert not errors, errors
    assert persister.get_save_stats()["incremental_writes"] >= 1
    fresh = await _reload(path)
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
    assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
    await persister.destroy()


def test_a_closed_storage_never_reopens_or_recreates_its_file(tmp_path: Path) -> None:
    """A watch poll still in flight when the persister is destroyed must not bring the
    database back (a server discarding an empty room's file removes it right after)."""
    import sqlite3

    from localsync.persisters._sqlitestore import SqliteStorage

    path = tmp_path / "room.sqlite"
    storage = SqliteStorage(path)
    storage.data_version()
    storage.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        storage.data_version()
    assert list(tmp_path.iterdir()) == []
