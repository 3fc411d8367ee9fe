"""Persisted stores on storage this process may not write (issue 18, item 5).

A valid SQLite store in a read-only place must load (and ``localsync inspect`` must print it)
as the JSON file beside it does; saving to it must fail with a clear ``PersistError`` naming
the file, and never change it. The read-only condition is made real, never simulated:

* a folder ``0555`` holding files ``0444``, read by a child process that permission bits
  bind: a normal user as is; root (which ignores permission bits) with the capabilities
  that bypass them dropped from its bounding set by ``setpriv`` before it starts Python;
* a tmpfs remounted read-only, in a private mount namespace (``unshare -m``), for root only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localsync import create_mergeable_store
from localsync.persisters.file import create_file_persister
from localsync.persisters.sqlite import create_sqlite_persister

ROOT = Path(__file__).resolve().parents[2]

# A child process: load PATH with the persister for its suffix, print what it holds, then
# try to save a change and print how that failed (or "saved").
_LOAD_AND_SAVE = """
import asyncio, json, sys
from localsync import create_mergeable_store
from localsync.persisters._common import PersistError
from localsync.persisters.file import create_file_persister
from localsync.persisters.sqlite import create_sqlite_persister

async def main(path):
    store = create_mergeable_store()
    errors = []
    create = create_sqlite_persister if path.endswith(".sqlite") else create_file_persister
    persister = create(store, path, on_ignored_error=errors.append)
    await persister.load()
    print(json.dumps({"tables": store.get_tables(), "errors": [repr(e) for e in errors]}))
    store.set_cell("t", "r", "extra", 2)
    try:
        await persister.save()
        print("saved")
    except Exception as error:
        print(f"save failed: {type(error).__name__}: {error}")
        print("is PersistError:", isinstance(error, PersistError))
    await persister.destroy()

asyncio.run(main(sys.argv[1]))
"""


def _write_stores(folder: Path) -> None:
    """``x.sqlite`` and ``x.json`` holding the same one-cell store, written normally."""

    async def write() -> None:
        store = create_mergeable_store()
        store.set_cell("t", "r", "c", 1)
        for create, name in (
            (create_sqlite_persister, "x.sqlite"),
            (create_file_persister, "x.json"),
        ):
            persister = create(store, folder / name)
            await persister.save()
            await persister.destroy()

    asyncio.run(write())


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _no_write_prefix() -> list[str]:
    """Command prefix making permission bits bind the child (``[]`` for a normal user)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make permission bits bind")
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "pass"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[-200:]}")
    return prefix


@pytest.fixture
def read_only_folder() -> Iterator[Path]:
    """A folder ``0555`` (files ``0444``) holding ``x.sqlite`` and ``x.json``."""
    folder = Path(tempfile.mkdtemp(prefix="ls-ro-", dir="/tmp"))
    try:
        _write_stores(folder)
        for entry in folder.iterdir():
            entry.chmod(0o444)
        folder.chmod(0o555)
        yield folder
    finally:
        folder.chmod(stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def test_sqlite_store_in_read_only_folder_loads_and_saving_fails_clearly(
    read_only_folder: Path,
) -> None:
    before = _digest(read_only_folder)
    prefix = _no_write_prefix()
    path = read_only_folder / "x.sqlite"
    result = _run(prefix, sys.executable, "-c", _LOAD_AND_SAVE, str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '{"tables": {"t": {"r": {"c": 1}}}, "errors": []}'
    assert lines[1] == (
        f"save failed: ReadOnlyStorageError: cannot write {path}: read-only "
        "(no write permission on the file)"
    )
    assert lines[2] == "is PersistError: True"
    assert _digest(read_only_folder) == before  # nothing written, no -wal/-shm created
    # the JSON file beside it behaves the same way (it already did)
    result = _run(prefix, sys.executable, "-c", _LOAD_AND_SAVE, str(read_only_folder / "x.json"))
    assert result.stdout.splitlines()[0] == '{"tables": {"t": {"r": {"c": 1}}}, "errors": []}'


def test_inspect_prints_sqlite_store_in_read_only_folder(read_only_folder: Path) -> None:
    prefix = _no_write_prefix()
    result = _run(
        prefix, sys.executable, "-m", "localsync.cli", "inspect", "--json", str(read_only_folder)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = sorted(result.stdout.splitlines())
    assert len(shown) == 2
    for line, name in zip(shown, ("x.json", "x.sqlite"), strict=True):
        assert f'"path": "{read_only_folder / name}"' in line
        assert '"tables": {"t": {"r": {"c": 1}}}' in line


def _read_only_tmpfs_script(source: Path, wal_source: Path) -> str:
    """Shell script: a tmpfs holding the stores, remounted read-only, then the checks."""
    python = sys.executable
    return f"""
set -e
mnt=$(mktemp -d /tmp/ls-rofs-XXXXXX)
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
mount -t tmpfs tmpfs "$mnt"
cp {source}/x.sqlite {source}/x.json "$mnt"/
mkdir "$mnt"/crashed
cp {wal_source}/w.sqlite {wal_source}/w.sqlite-wal "$mnt"/crashed/
mount -o remount,ro "$mnt"
echo "MNT $mnt"
{python} -c '{_LOAD_AND_SAVE}' "$mnt"/x.sqlite
echo "--- inspect"
{python} -m localsync.cli inspect --json "$mnt"/x.sqlite || echo "exit $?"
echo "--- crashed"
{python} -m localsync.cli inspect "$mnt"/crashed/w.sqlite 2>&1 || echo "exit $?"
"""


def _crashed_writer_database(folder: Path) -> None:
    """``w.sqlite`` + a non-empty ``w.sqlite-wal`` as a killed writer leaves them (the
    second cell is only in the write-ahead log)."""
    code = f"""
import os, sqlite3
from localsync import create_mergeable_store
from localsync.persisters._sqlitestore import SqliteStorage
store = create_mergeable_store()
store.set_cell("t", "r", "c", 1)
storage = SqliteStorage({str(folder / "w.sqlite")!r})
storage.write_content(store.get_encoded_mergeable_content())
storage._conn.execute("PRAGMA wal_autocheckpoint = 0")
storage._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
store.set_cell("t", "r", "d", 2)
storage.write_content(store.get_encoded_mergeable_content())
os._exit(0)  # killed: the log is not merged into the database file
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert (folder / "w.sqlite-wal").stat().st_size > 0


def test_sqlite_store_on_read_only_file_system(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a read-only tmpfs needs root and unshare")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {probe.stderr.decode()[-200:]}")
    _write_stores(tmp_path)
    wal_folder = tmp_path / "wal"
    wal_folder.mkdir()
    _crashed_writer_database(wal_folder)
    (wal_folder / "w.sqlite-shm").unlink(missing_ok=True)
    script = _read_only_tmpfs_script(tmp_path, wal_folder)
    result = _run(["unshare", "-m", "sh", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    mnt = out[0].split()[1]
    assert out[1] == '{"tables": {"t": {"r": {"c": 1}}}, "errors": []}'
    assert out[2] == (
        f"save failed: ReadOnlyStorageError: cannot write {mnt}/x.sqlite: read-only "
        "(the file system is mounted read-only)"
    )
    inspected = out[out.index("--- inspect") + 1]
    assert '"tables": {"t": {"r": {"c": 1}}}' in inspected
    crashed = out[out.index("--- crashed") + 1 :]
    # refused clearly, never shown as the older state in the database file alone
    assert crashed[0].startswith(
        f"localsync inspect: {mnt}/crashed/w.sqlite: unreadable: cannot read "
        f"{mnt}/crashed/w.sqlite: its write-ahead log {mnt}/crashed/w.sqlite-wal holds "
        "transactions not yet in the database file"
    ), crashed
    assert crashed[1:] == ["exit 1"]
    assert "Traceback" not in result.stdout + result.stderr
