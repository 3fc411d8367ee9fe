"""File persister: the disk layer (atomic replace, TinyBase file format, corrupt files) and the
persister built on it (load/save/auto-save against a real MergeableStore)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localsync.persisters._common import PersistError
from localsync.persisters._filestore import (
    CorruptContentError,
    decode_content,
    encode_content,
    read_content,
    remove_stale_temp_files,
    write_atomic,
)

VECTORS = Path(__file__).parents[1] / "conformance"


def _vector_contents() -> list[tuple[str, Any]]:
    """Final mergeable content of every TinyBase store trace: real shapes, made by TinyBase."""
    cases = json.loads((VECTORS / "store_traces.json").read_text())
    return [(case["name"], case["steps"][-1]["after"]["content"]) for case in cases]


@pytest.mark.parametrize(("name", "content"), _vector_contents())
def test_round_trip_of_tinybase_contents(tmp_path: Path, name: str, content: Any) -> None:
    path = tmp_path / f"{name}.json"
    write_atomic(path, encode_content(content))
    assert read_content(path) == content
    # what we write is what JSON.stringify would be parsed from: plain compact JSON
    assert json.loads(path.read_text("utf-8")) == content
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_undefined_and_unicode_are_written_raw_like_json_stringify(tmp_path: Path) -> None:
    content = [
        [
            {"t": [{"r": [{"c": ["\ufffc", "Nj", 1], "é": ["😀\u2028", "Nj", 2]}, "", 3]}, "", 4]},
            "",
            5,
        ],
        [{"v": [None, "Nj", 6], "o": ['\ufffd{"a":1}', "Nj", 7]}, "", 8],
    ]
    path = tmp_path / "u.json"
    write_atomic(path, encode_content(content))
    raw = path.read_bytes()
    assert "\ufffc".encode() in raw and "😀".encode() in raw
    assert b" " not in raw  # compact separators, as JSON.stringify
    assert read_content(path) == content


def test_lone_surrogates_survive(tmp_path: Path) -> None:
    content = [[{}, "", 0], [{"v": ["a\ud800b", "Nj", 1]}, "", 2]]
    path = tmp_path / "s.json"
    write_atomic(path, encode_content(content))
    assert b"\\ud800" in path.read_bytes()
    assert read_content(path) == content


def test_missing_and_empty_files_mean_nothing_saved(tmp_path: Path) -> None:
    assert read_content(tmp_path / "absent.json") is None
    (tmp_path / "empty.json").write_bytes(b"")
    assert read_content(tmp_path / "empty.json") is None
    (tmp_path / "blank.json").write_bytes(b" \n")
    assert read_content(tmp_path / "blank.json") is None


@pytest.mark.parametrize(
    "data",
    [b'[[{}, "", 0], [{}, "", 0]', b"\x00\x01garbage", b"{}", b"[1, 2]", b"[[1], [2]]", b"null"],
)
def test_corrupt_files_are_errors(data: bytes) -> None:
    with pytest.raises(CorruptContentError):
        decode_content(data)


def test_replace_keeps_mode_and_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    write_atomic(real, b"[1]")
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, b"[2]")
    assert link.is_symlink()
    assert real.read_bytes() == b"[2]"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores modes")
def test_failed_write_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "ro" / "store.json"
    target.parent.mkdir()
    write_atomic(target, b"[1]")
    os.chmod(target.parent, 0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomic(target, b"[2]")
    finally:
        os.chmod(target.parent, 0o700)
    assert target.read_bytes() == b"[1]"


def test_failed_write_on_full_disk_leaves_target_untouched(tmp_path: Path) -> None:
    """A file-size limit makes ``write`` fail mid-file (EFBIG), as a full disk does (ENOSPC)."""
    target = tmp_path / "store.json"
    write_atomic(target, b"[1]")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(OSError):
            write_atomic(target, b"[" + b"1," * 4096 + b"1]")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert target.read_bytes() == b"[1]"
    assert not list(tmp_path.glob("*.tmp"))


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


def _fill(store: Any) -> None:
    with store.transaction():
        store.set_cell("t", "r1", "text", "héllo 😀")
        store.set_cell("t", "r1", "obj", {"a": [1, None], "2": "x"})
        store.set_cell("t", "r2", "n", 1.5)
        store.set_value("v", None)
    store.del_cell("t", "r2", "n")


def _persister(
    store: Any, path: Path, errors: list[BaseException] | None = None, **options: Any
) -> Any:
    from localsync import create_file_persister

    return create_file_persister(store, path, None if errors is None else errors.append, **options)


@run_async
async def test_save_then_load_gives_identical_content_and_hashes(tmp_path: Path) -> None:
    store = _store()
    _fill(store)
    persister = _persister(store, tmp_path / "s.json")
    await persister.save()
    assert persister.get_file_path() == str(tmp_path / "s.json")
    fresh = _store()
    errors: list[BaseException] = []
    reader = _persister(fresh, tmp_path / "s.json", errors)
    await reader.load()
    assert not errors
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
    assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
    assert fresh.get_tables() == store.get_tables()
    await persister.destroy()
    await reader.destroy()


@run_async
async def test_missing_file_loads_initial_content(tmp_path: Path) -> None:
    store = _store()
    persister = _persister(store, tmp_path / "absent.json")
    await persister.load([{"t": {"r": {"c": 1}}}, {"v": 2}])
    assert store.get_tables() == {"t": {"r": {"c": 1}}}
    assert store.get_values() == {"v": 2}
    assert not (tmp_path / "absent.json").exists()  # loading never writes
    await persister.destroy()


@run_async
async def test_corrupt_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.json"
    garbage = b'[[{"t": [{"r": [{"c": ["x", "NjEtLV-----VnP9x", 1'
    path.write_bytes(garbage)
    store = _store()
    store.set_cell("t", "r", "c", "kept")
    before = store.get_mergeable_content()
    errors: list[BaseException] = []
    statuses: list[int] = []
    persister = _persister(store, path, errors)
    persister.add_status_listener(lambda _p, status: statuses.append(status))
    await persister.load()
    assert [type(e) for e in errors] == [CorruptContentError]
    assert statuses == [1, 0]
    assert store.get_mergeable_content() == before  # store untouched

    with pytest.raises(PersistError, match=r"corrupt\.json"):
        await persister.start_auto_save()  # its first save is refused, loudly
    store.set_cell("t", "r", "c2", "new")
    with pytest.raises(PersistError):
        await persister.flush()
    assert path.read_bytes() == garbage
    assert any(isinstance(e, PersistError) for e in errors)

    path.unlink()  # the operator moved the bad file away: saving resumes
    await persister.flush()
    assert read_content(path) is not None
    await persister.destroy()


@run_async
async def test_auto_save_coalesces_a_burst(tmp_path: Path) -> None:
    store = _store()
    persister = _persister(store, tmp_path / "burst.json")
    await persister.start_auto_save()
    writes = persister.get_save_stats()["writes"]
    for i in range(500):
        store.set_cell("t", f"r{i}", "c", i)
    await persister.flush()
    stats = persister.get_save_stats()
    assert 1 <= stats["writes"] - writes <= 2, stats
    assert stats["durable"] == stats["transactions"]
    assert len(read_content(tmp_path / "burst.json")[0][0]["t"][0]) == 500
    await persister.destroy()


@run_async
async def test_saved_listener_reports_durable_transactions(tmp_path: Path) -> None:
    store = _store()
    persister = _persister(store, tmp_path / "ack.json")
    heard: list[int] = []
    persister.add_saved_listener(lambda _p, n: heard.append(n))
    await persister.start_auto_save()
    store.set_cell("t", "r", "c", 1)
    target = persister.get_save_stats()["transactions"]
    assert await persister.flush() >= target
    assert heard and heard[-1] >= target
    assert heard == sorted(heard)
    await persister.destroy()


@run_async
async def test_write_errors_are_reported_and_keep_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "full.json"
    store = _store()
    errors: list[BaseException] = []
    persister = _persister(store, path, errors)
    await persister.start_auto_save()
    saved = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(saved) + 64, hard))
    try:
        store.set_cell("t", "r", "c", "x" * 10_000)
        with pytest.raises(PersistError):
            await persister.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert path.read_bytes() == saved
    assert errors and isinstance(errors[0], OSError)
    await persister.flush()  # the disk has room again
    assert read_content(path)[0][0]["t"][0]["r"][0]["c"][0] == "x" * 10_000
    await persister.destroy()


@run_async
async def test_auto_load_sees_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    writer_store, reader_store = _store(), _store()
    writer = _persister(writer_store, path)
    reader = _persister(reader_store, path)
    await writer.start_auto_save()
    await reader.start_auto_load()
    writer_store.set_cell("t", "r", "c", "hello")
    await writer.flush()
    async with asyncio.timeout(10):
        while reader_store.get_cell("t", "r", "c") != "hello":
            await asyncio.sleep(0.02)
    assert reader_store.get_mergeable_content() == writer_store.get_mergeable_content()
    await writer.destroy()
    await reader.destroy()


@run_async
async def test_transactions_from_another_thread(tmp_path: Path) -> None:
    store = _store()
    persister = _persister(store, tmp_path / "threads.json")
    await persister.start_auto_save()

    def write() -> None:
        for i in range(300):
            store.set_cell("t", f"r{i}", "c", i)

    await asyncio.to_thread(write)
    await persister.flush()
    fresh = _store()
    await _persister(fresh, tmp_path / "threads.json").load()
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
    await persister.destroy()


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "store.json"
    stale = tmp_path / "store.json.ABCDEFGHIJKLMNOP.tmp"
    fresh = tmp_path / "store.json.abcdefghijklmnop.tmp"
    other = tmp_path / "other.json.ABCDEFGHIJKLMNOP.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    os.utime(other, (1, 1))
    assert remove_stale_temp_files(target) == 1
    assert not stale.exists() and fresh.exists() and other.exists()


@run_async
async def test_content_the_store_rejects_is_not_overwritten(tmp_path: Path) -> None:
    """Well-formed JSON with an invalid stamp: the store ignores it silently (as TinyBase
    does); the persister must then treat the file as unreadable, not replace it."""
    path = tmp_path / "invalid.json"
    data = encode_content(
        [[{"t": [{"r": [{"c": ["x", "not-an-hlc", 1]}, "", 2]}, "", 3]}, "", 4], [{}, "", 0]]
    )
    path.write_bytes(data)
    store = _store()
    errors: list[BaseException] = []
    persister = _persister(store, path, errors)
    await persister.load()
    assert store.get_tables() == {}
    with pytest.raises(PersistError, match="rejected"):
        await persister.start_auto_save()
    store.set_cell("t", "r", "c", "mine")
    with pytest.raises(PersistError):
        await persister.flush()
    assert path.read_bytes() == data
    assert any("rejected" in str(e) for e in errors)
    await persister.destroy()


@run_async
async def test_auto_load_ignores_its_own_saves(tmp_path: Path) -> None:
    store = _store()
    persister = _persister(store, tmp_path / "own.json", poll_seconds=0.01)
    await persister.start_auto_persisting()
    loads = persister.get_stats()["loads"]
    for i in range(5):
        store.set_cell("t", "r", "c", i)
        await persister.flush()
        await asyncio.sleep(0.05)  # several polls see the new file
    assert persister.get_stats()["loads"] == loads
    await persister.destroy()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_usable_from_blocking_code(tmp_path: Path, kind: str) -> None:
    """Programs without asyncio use persisters through localsync.sync.blocking, writing to the
    store on their own thread while saves run on the background loop."""
    from localsync import create_file_persister, create_sqlite_persister
    from localsync.sync.blocking import blocking

    factory = create_file_persister if kind == "file" else create_sqlite_persister
    path = tmp_path / f"blocking.{kind}"
    store = _store()
    with blocking(factory, store, path, start=False, timeout=30) as persister:
        persister.load()
        persister.start_auto_save()
        for i in range(100):
            store.set_cell("t", f"r{i}", "c", i)
        assert persister.flush() >= 100
    fresh = _store()
    with blocking(factory, fresh, path, start=False, timeout=30) as reader:
        reader.load()
    assert fresh.get_mergeable_content() == store.get_mergeable_content()
