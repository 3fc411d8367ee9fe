"""Trust at the edges (issue 16): persisters never overwrite what the store refused to load,
never trust stored hashes that the stored stamps contradict, never mistake a damaged SQLite
database for an empty one, and keep what they create private to the user.

Everything here runs on real files and real SQLite databases; the seeds are written by real
stores through the persisters themselves and damaged with plain ``sqlite3`` or JSON edits,
as a user's tool (or a half-restored backup) would.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.persisters._common import PersistError, StorageCreateError
from localsync.persisters._filestore import CorruptContentError, read_content, write_atomic
from localsync.persisters._integrity import HashesRepaired
from localsync.persisters.file import create_file_persister
from localsync.persisters.sqlite import create_sqlite_persister

KINDS = ["file", "sqlite"]
SIX_MINUTES_MS = 6 * 60 * 1000


def run_async(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop, bounded in time (no pytest-asyncio in CI)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


def _persister(kind: str, store: Any, path: Path, errors: list[BaseException] | None = None) -> Any:
    on_error = None if errors is None else errors.append
    factory = create_file_persister if kind == "file" else create_sqlite_persister
    return factory(store, path, on_error)


def _path(tmp_path: Path, kind: str, name: str = "room1") -> Path:
    return tmp_path / (f"{name}.json" if kind == "file" else f"{name}.sqlite")


def _fill(store: Any, rows: int = 100) -> None:
    with store.transaction():
        for i in range(rows):
            store.set_row("t", f"r{i}", {"n": i, "s": f"row {i}"})


async def _seed(kind: str, path: Path, get_now: Callable[[], float] | None = None) -> Any:
    """Write 100 rows through a real persister; return the store that wrote them."""
    store = create_mergeable_store(get_now=get_now)
    _fill(store)
    persister = _persister(kind, store, path)
    await persister.save()
    await persister.destroy()
    return store


def _rows_on_disk(kind: str, path: Path) -> int:
    """Rows holding at least one cell in the storage, read without any persister."""
    if kind == "file":
        content = read_content(path)
        assert content is not None
        return sum(1 for row in content[0][0]["t"][0].values() if row[0])
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute(
                "SELECT COUNT(DISTINCT row_id) FROM localsync_cells WHERE table_id = 't'"
            ).fetchone()[0]
        )


def _codes(errors: list[BaseException]) -> list[str]:
    return [getattr(error, "code", type(error).__name__) for error in errors]


# ------------------------------------------------------------------ item 1: rejected content


def _fast_clock() -> float:
    return time.time() * 1000 + SIX_MINUTES_MS


async def _attempt(action: Awaitable[Any]) -> BaseException | None:
    """Run a save-like call; return the ``PersistError`` it raised, or ``None``.

    The tests look at the disk first and at the error second, so that on code which lets
    the save through, what fails is the check that the data survived.
    """
    try:
        await action
    except PersistError as error:
        return error
    return None


def _damage_one_stamp(kind: str, path: Path) -> None:
    """Give one cell an HLC that is not an HLC (as a hand edit or a bad tool would)."""
    if kind == "sqlite":
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE localsync_cells SET hlc = 'not-an-hlc' WHERE row_id = 'r42'")
        return
    content = json.loads(path.read_text())
    content[0][0]["t"][0]["r42"][0]["n"][1] = "not-an-hlc"
    path.write_text(json.dumps(content, ensure_ascii=False))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["save after load", "write then save", "auto-save and flush"])
@pytest.mark.parametrize("damage", ["clock 6 minutes fast", "one bad stamp"])
@run_async
async def test_content_the_store_rejects_is_refused_not_overwritten(
    tmp_path: Path, kind: str, how: str, damage: str
) -> None:
    """Seeded by a process whose clock is 6 minutes fast (or with one damaged stamp): this
    process's store ignores it (tinybase:1), and no save of any kind may replace the 100
    rows with what the store has."""
    path = _path(tmp_path, kind)
    if damage == "one bad stamp":
        await _seed(kind, path)
        _damage_one_stamp(kind, path)
    else:
        await _seed(kind, path, get_now=_fast_clock)
    assert _rows_on_disk(kind, path) == 100

    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister(kind, store, path, errors)
    await persister.load()
    assert _codes(errors) == ["tinybase:1"]  # (nothing else: no hash "repair" either)
    assert store.get_tables() == {}
    outcomes: list[BaseException | None] = []
    if how == "save after load":
        outcomes.append(await _attempt(persister.save()))
        store.set_row("t", "mine", {"n": -1})
        outcomes.append(await _attempt(persister.save()))
    elif how == "write then save":
        store.set_row("t", "mine", {"n": -1})
        outcomes.append(await _attempt(persister.save()))
    else:
        store.set_row("t", "mine", {"n": -1})
        outcomes.append(await _attempt(persister.start_auto_save()))
        store.set_row("t", "mine2", {"n": -2})
        outcomes.append(await _attempt(persister.flush()))
    assert _rows_on_disk(kind, path) == 100  # nothing on disk was replaced
    for outcome in outcomes:
        assert isinstance(outcome, PersistError), outcomes
        assert str(path) in str(outcome) and "rejected" in str(outcome)
    assert any(isinstance(e, PersistError) and str(path) in str(e) for e in errors)
    await persister.destroy()
    assert _rows_on_disk(kind, path) == 100


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_a_later_successful_load_lifts_the_refusal(tmp_path: Path, kind: str) -> None:
    """Once this process's clock has caught up, the same content loads and saving resumes."""
    path = _path(tmp_path, kind)
    await _seed(kind, path, get_now=_fast_clock)
    offset = [0.0]
    store = create_mergeable_store(get_now=lambda: time.time() * 1000 + offset[0])
    errors: list[BaseException] = []
    persister = _persister(kind, store, path, errors)
    await persister.load()
    assert store.get_tables() == {}
    store.set_row("t", "early", {"n": 0})
    with pytest.raises(PersistError):
        await persister.save()

    offset[0] = SIX_MINUTES_MS + 60_000  # the clock caught up (or the operator fixed it)
    errors.clear()
    await persister.load()
    assert not errors, errors
    assert len(store.get_table("t")) == 100
    await persister.start_auto_save()
    store.set_row("t", "later", {"n": 101})
    await persister.flush()
    assert _rows_on_disk(kind, path) == 101
    await persister.destroy()


@run_async
async def test_sqlite_cell_with_a_non_numeric_hash_is_refused(tmp_path: Path) -> None:
    """A stored hash of 'abc' is not damage a recomputation may paper over: the store
    rejects the content, and the database keeps its 100 rows through every kind of save."""
    path = _path(tmp_path, "sqlite")
    await _seed("sqlite", path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE localsync_cells SET hash = 'abc' WHERE row_id = 'r5' AND cell_id = 'n'"
        )
    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister("sqlite", store, path, errors)
    await persister.load()
    assert _codes(errors) == ["tinybase:1"]
    assert store.get_tables() == {}
    store.set_row("t", "mine", {"n": -1})
    outcomes = [await _attempt(persister.save())]
    outcomes.append(await _attempt(persister.start_auto_save()))
    store.set_row("t", "mine2", {"n": -2})
    outcomes.append(await _attempt(persister.flush()))
    await persister.destroy()
    assert _rows_on_disk("sqlite", path) == 100
    assert all(isinstance(outcome, PersistError) for outcome in outcomes), outcomes
    assert "rejected" in str(outcomes[0])


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_valid_content_that_changes_nothing_is_not_taken_for_rejected(
    tmp_path: Path, kind: str
) -> None:
    """Loading content the store already holds (or an empty store's content) applies
    nothing new; that is not a rejection, and saves go on."""
    path = _path(tmp_path, kind)
    store = await _seed(kind, path)
    errors: list[BaseException] = []
    persister = _persister(kind, store, path, errors)
    await persister.load()
    await persister.load()
    store.set_row("t", "extra", {"n": 100})
    await persister.save()
    await persister.start_auto_save()
    store.set_row("t", "extra2", {"n": 101})
    await persister.flush()
    assert not errors, errors
    assert _rows_on_disk(kind, path) == 102
    await persister.destroy()

    empty = _path(tmp_path, kind, "empty")
    writer = _persister(kind, create_mergeable_store(), empty)
    await writer.save()
    await writer.destroy()
    reader_store = create_mergeable_store()
    reader = _persister(kind, reader_store, empty, errors)
    await reader.load()
    reader_store.set_row("t", "r", {"n": 1})
    await reader.save()
    assert not errors, errors
    assert _rows_on_disk(kind, empty) == 1
    await reader.destroy()


# ------------------------------------------------------------------ item 3: stored hashes


def _drop_cells_of_three_rows(kind: str, path: Path) -> None:
    lost = ("r10", "r20", "r30")
    if kind == "sqlite":
        with sqlite3.connect(path) as conn:
            conn.executemany("DELETE FROM localsync_cells WHERE row_id = ?", [(r,) for r in lost])
        return
    content = json.loads(path.read_text())
    for row_id in lost:
        content[0][0]["t"][0][row_id][0] = {}
    path.write_text(json.dumps(content, ensure_ascii=False))


async def _wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_lost_cells_load_with_recomputed_hashes_and_sync_restores_them(
    tmp_path: Path, kind: str
) -> None:
    """Cells of 3 rows deleted from the storage: the other 97 rows load, the hashes are
    recomputed (not the intact peer's), so anti-entropy restores the 3 rows, and the next
    save writes them back with truthful hashes."""
    from localsync.sync.local import create_local_synchronizer

    path = _path(tmp_path, kind)
    intact = await _seed(kind, path)
    _drop_cells_of_three_rows(kind, path)

    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister(kind, store, path, errors)
    await persister.load()
    assert len(store.get_table("t")) == 97
    assert store.get_mergeable_content_hashes() != intact.get_mergeable_content_hashes()
    assert [type(e) for e in errors] == [HashesRepaired]
    assert persister.get_save_stats()["hash_repairs"] > 0

    await persister.start_auto_save()
    ours = create_local_synchronizer(store)
    theirs = create_local_synchronizer(intact)
    try:
        await ours.start_sync()
        await theirs.start_sync()
        await _wait_for(
            lambda: store.get_mergeable_content_hashes() == intact.get_mergeable_content_hashes()
        )
    finally:
        await ours.destroy()
        await theirs.destroy()
    assert store.get_tables() == intact.get_tables()
    await persister.flush()
    await persister.destroy()
    assert _rows_on_disk(kind, path) == 100

    reloaded = create_mergeable_store()
    reader_errors: list[BaseException] = []
    reader = _persister(kind, reloaded, path, reader_errors)
    await reader.load()
    await reader.destroy()
    assert not reader_errors, reader_errors  # the saved hashes are truthful now
    assert reloaded.get_mergeable_content_hashes() == intact.get_mergeable_content_hashes()


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_a_wrong_stored_hash_is_corrected_on_load(tmp_path: Path, kind: str) -> None:
    """A cell whose stored hash is a plausible but wrong number loads with its true hash."""
    path = _path(tmp_path, kind)
    intact = await _seed(kind, path)
    if kind == "sqlite":
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE localsync_cells SET hash = 12345 WHERE row_id = 'r7'")
    else:
        content = json.loads(path.read_text())
        content[0][0]["t"][0]["r7"][0]["n"][2] = 12345
        path.write_text(json.dumps(content, ensure_ascii=False))
    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister(kind, store, path, errors)
    await persister.load()
    assert store.get_mergeable_content() == intact.get_mergeable_content()
    assert [type(e) for e in errors] == [HashesRepaired]
    await persister.destroy()


@run_async
async def test_sqlite_without_its_meta_row_is_refused_not_wiped(tmp_path: Path) -> None:
    path = _path(tmp_path, "sqlite")
    await _seed("sqlite", path)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM localsync_meta")
    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister("sqlite", store, path, errors)
    await persister.load()
    store.set_row("t", "mine", {"n": -1})
    outcomes = [await _attempt(persister.save())]
    outcomes.append(await _attempt(persister.start_auto_save()))
    store.set_row("t", "mine2", {"n": -2})
    outcomes.append(await _attempt(persister.flush()))
    await persister.destroy()
    assert _rows_on_disk("sqlite", path) == 100  # not wiped
    assert isinstance(errors[0], CorruptContentError) and "localsync_meta" in str(errors[0])
    assert all(isinstance(outcome, PersistError) for outcome in outcomes), outcomes
    assert "unreadable" in str(outcomes[0])


@run_async
async def test_sqlite_with_a_dropped_table_is_refused_not_recreated(tmp_path: Path) -> None:
    path = _path(tmp_path, "sqlite")
    await _seed("sqlite", path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE localsync_cells")
    store = create_mergeable_store()
    errors: list[BaseException] = []
    persister = _persister("sqlite", store, path, errors)
    await persister.load()
    assert store.get_tables() == {}
    store.set_row("t", "mine", {"n": -1})
    outcome = await _attempt(persister.save())
    await persister.destroy()
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = conn.execute("SELECT COUNT(*) FROM localsync_rows").fetchone()[0]
    assert rows == 100
    assert "localsync_cells" not in names
    assert [type(e) for e in errors][:1] == [CorruptContentError]
    assert "localsync_cells" in str(errors[0])
    assert isinstance(outcome, PersistError)


# ------------------------------------------------------------------ item 7: private storage


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022() -> Any:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_created_folders_and_files_are_private(
    tmp_path: Path, kind: str, umask_022: None
) -> None:
    path = _path(tmp_path / "data" / "rooms", kind)
    store = create_mergeable_store()
    persister = _persister(kind, store, path)
    await persister.start_auto_save()
    _fill(store, 10)
    await persister.flush()
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(tmp_path / "data" / "rooms") == 0o700
    assert _mode(path) == 0o600
    if kind == "sqlite":
        # SQLite gives these the database file's mode; they exist while the connection is open
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            assert side.exists()
            assert _mode(side) == 0o600, suffix
    await persister.destroy()
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_an_existing_folder_keeps_its_mode(
    tmp_path: Path, kind: str, umask_022: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    path = _path(shared, kind)
    persister = _persister(kind, create_mergeable_store(), path)
    await persister.save()
    await persister.destroy()
    assert _mode(shared) == 0o755
    assert _mode(path) == 0o600


def test_atomic_json_temp_files_are_private(tmp_path: Path, umask_022: None) -> None:
    modes: list[int] = []
    target = tmp_path / "content.json"
    write_atomic(target, b"[]", before_replace=lambda st: modes.append(stat.S_IMODE(st.st_mode)))
    assert modes == [0o600]
    assert _mode(target) == 0o600


@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_storage_that_cannot_be_created_fails_loudly(tmp_path: Path, kind: str) -> None:
    """A file where the data folder should be: save and start_auto_save raise an error that
    says what could not be created, and on_ignored_error hears it too."""
    (tmp_path / "data").write_text("not a folder")
    path = _path(tmp_path / "data", kind)
    errors: list[BaseException] = []
    persister = _persister(kind, create_mergeable_store(), path, errors)
    await persister.load()  # (SQLite opens the database here: same error, reported)
    with pytest.raises(StorageCreateError, match=r"cannot create folder .*data"):
        await persister.save()
    with pytest.raises(StorageCreateError, match="cannot create"):
        await persister.start_auto_save()
    assert errors and all(isinstance(e, StorageCreateError) for e in errors)
    await persister.destroy()
    assert (tmp_path / "data").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
@pytest.mark.parametrize("kind", KINDS)
@run_async
async def test_permission_denied_names_the_file(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o500)
    path = _path(folder, kind)
    persister = _persister(kind, create_mergeable_store(), path, [])
    try:
        with pytest.raises(
            StorageCreateError, match=re.escape(f"cannot create {path}: permission denied")
        ):
            await persister.save()
    finally:
        await persister.destroy()
        os.chmod(folder, 0o700)


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_coordinator_data_folder_and_file_are_private(tmp_path: Path) -> None:
    """A real coordinator process under umask 022: its data folder is 0700, its files 0600."""
    import signal
    import subprocess
    import sys
    import uuid

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    data = tmp_path / "data"
    channel = f"trust-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "localsync.cli", "coordinator", "--channel", channel),
            *("--data", str(data), "--runtime-dir", str(runtime)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())  # bounded by the test timeout
        assert ready
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _mode(data) == 0o700
    files = sorted(data.iterdir())
    assert files
    for file in files:
        assert _mode(file) == 0o600, file


@pytest.mark.process
@pytest.mark.timeout(120)
def test_demo_data_folder_is_private(tmp_path: Path) -> None:
    """``localsync demo`` end to end under umask 022: data folder 0700, data file 0600."""
    import subprocess
    import sys
    import uuid

    data = tmp_path / "demo-data"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "localsync.cli", "demo", "--data", str(data), "--json"),
            *("--channel", f"trust-demo-{uuid.uuid4().hex[:12]}"),
            *("--workers", "1", "--rows", "5", "--rate", "0"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert _mode(data) == 0o700
    assert _mode(Path(summary["data_file"])) == 0o600


def test_tinybase_hashes_pass_the_check_unchanged() -> None:
    """Every content snapshot TinyBase itself produced in the conformance traces (local
    writes, merges, object cells, deletions) keeps its hashes; only the trace that sets
    content with made-up hashes (123, 456, ...) is corrected."""
    import copy

    from localsync.persisters._integrity import recompute_hashes

    corrected: set[str] = set()
    checked = 0

    def walk(node: Any, trace: str) -> None:
        nonlocal checked
        if isinstance(node, dict):
            for key, child in node.items():
                if key == "content" and isinstance(child, list) and len(child) == 2:
                    checked += 1
                    if recompute_hashes(copy.deepcopy(child)):
                        corrected.add(trace)
                else:
                    walk(child, trace)
        elif isinstance(node, list):
            for child in node:
                walk(child, trace)

    for name in ("merge_traces", "store_traces"):
        for trace in json.loads((ROOT / "tests" / "conformance" / f"{name}.json").read_text()):
            walk(trace, trace["name"])
    assert checked > 200
    assert corrected == {"apply_and_set_mergeable"}
