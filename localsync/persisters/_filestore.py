"""Crash-safe whole-file storage of encoded mergeable content (the file persister's disk layer).

Kept apart from the Persister glue so that the durability rules can be tested on their own:

* ``write_atomic`` never leaves a half-written target: the bytes go to a temporary file in the
  same folder (same filesystem, so the rename is atomic), are fsynced, renamed over the target
  with ``os.replace`` and then the folder is fsynced so that the rename itself survives a power
  cut. A reader (or a process killed at any instruction) sees either the old or the new file.
* ``read_content`` distinguishes "nothing saved yet" (missing or empty file: ``None``) from
  "something is there but it is not content" (``CorruptContentError``), because the persister
  must never replace a file it could not read with an empty store.

The file format is exactly TinyBase's ``createFilePersister`` for a MergeableStore: the JSON of
the *encoded* mergeable content, with ``undefined`` written as the string U+FFFC and object or
array cells as their stored string form U+FFFD + JSON.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localsync.core.codec import get_unique_id
from localsync.errors import CorruptContentError
from localsync.persisters._jsonio import ContentDecodeError, dumps_bytes, loads

__all__ = [
    "CorruptContentError",
    "check_content_shape",
    "check_plain_content_shape",
    "create_private_file",
    "decode_content",
    "encode_content",
    "ensure_folder",
    "read_content",
    "remove_stale_temp_files",
    "resolve_target",
    "write_atomic",
]


_A_DIRECTORY = "it is a directory, not a file"


def encode_content(content: Any) -> bytes:
    """Serialise encoded mergeable content as TinyBase's file persister does."""
    return dumps_bytes(content)


def _is_stamp_map(thing: Any) -> bool:
    return (
        isinstance(thing, list)
        and 2 <= len(thing) <= 3
        and isinstance(thing[0], dict)
        and isinstance(thing[1], str)
    )


def check_content_shape(content: Any) -> None:
    """Cheap top-level check that parsed JSON is mergeable content, before the store sees it.

    The store validates every stamp itself (and silently ignores invalid content, as TinyBase
    does); this check only turns the obviously wrong files (``{}``, ``[1, 2]``, a plain
    ``Content`` array written for a non-mergeable store) into a reported error.
    """
    if not (isinstance(content, list) and len(content) == 2):
        raise CorruptContentError("not mergeable content: expected [tablesStamp, valuesStamp]")
    if not (_is_stamp_map(content[0]) and _is_stamp_map(content[1])):
        raise CorruptContentError(
            "not mergeable content: expected [[tables, hlc, hash], [values, hlc, hash]]"
        )


def check_plain_content_shape(content: Any) -> None:
    """The same cheap check for a plain Store's file: ``[tables, values]``."""
    if not (
        isinstance(content, list)
        and len(content) == 2
        and isinstance(content[0], dict)
        and isinstance(content[1], dict)
    ):
        raise CorruptContentError("not store content: expected [tables, values]")


def decode_content(data: bytes, mergeable: bool = True) -> Any | None:
    """Parse file bytes: ``None`` for an empty file, the content, or ``CorruptContentError``.

    An empty (or whitespace-only) file counts as "nothing saved": TinyBase itself creates an
    empty file when auto-load starts before any save. TinyBase would report that as a parse
    error; treating it as absent is the useful reading and loses nothing.
    """
    if not data.strip():
        return None
    try:
        content = loads(data)
    except ContentDecodeError as error:
        raise CorruptContentError(str(error)) from error
    (check_content_shape if mergeable else check_plain_content_shape)(content)
    return content


def read_content(path: str | os.PathLike[str], mergeable: bool = True) -> Any | None:
    """Content in the file at ``path``; ``None`` when it does not exist (or is empty).

    Raises ``StorageCreateError`` when ``path`` is a directory (``cannot read x.json: it is
    a directory, not a file``): nothing there is a store, and nothing can be saved there
    either, so that is what the message says (not "unreadable").
    """
    from localsync.persisters._common import StorageCreateError

    try:
        with open(path, "rb") as file:
            data = file.read()
    except (FileNotFoundError, NotADirectoryError):  # (a file where a folder should be)
        return None
    except IsADirectoryError:
        raise StorageCreateError(f"cannot read {path}: {_A_DIRECTORY}") from None
    return decode_content(data, mergeable)


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The file to replace: a symlink's target (as TinyBase does), so the link survives."""
    target = Path(path)
    if target.is_symlink():
        return Path(os.path.realpath(target))
    return target


_TEMP_SUFFIX = re.compile(r"\.[-0-9A-Za-z_]{16}\.tmp$")


def remove_stale_temp_files(path: str | os.PathLike[str], older_than: float = 600.0) -> int:
    """Delete temporary files a killed writer left beside ``path``; return how many.

    Only files named like ours (``<name>.<16 id chars>.tmp``) and untouched for
    ``older_than`` seconds, so a write in progress in another process is never removed.
    """
    target = resolve_target(path)
    folder = target.parent if str(target.parent) else Path(".")
    removed = 0
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(target.name + ".") or not _TEMP_SUFFIX.search(name):
            continue
        if len(name) != len(target.name) + 21:
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime >= older_than:
                entry.unlink()
                removed += 1
    return removed


def _describe(error: OSError) -> str:
    """``permission denied`` from ``[Errno 13] Permission denied: 'x'``."""
    return (error.strerror or str(error)).lower()


def ensure_folder(path: str | os.PathLike[str]) -> None:
    """Create the missing folders above ``path``, each ``0700``; leave existing ones alone.

    Persisted data is private to the user running the process (like the live sockets), so
    folders this code creates are ``0700``; a folder that already exists keeps its mode
    (the operator chose it). Raises ``StorageCreateError`` naming the folder that could not
    be created and why, e.g. ``cannot create folder data/rooms: permission denied``.
    """
    from localsync.persisters._common import StorageCreateError

    folder = Path(path).parent
    missing: list[Path] = []
    while str(folder) not in ("", ".") and not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)  # the umask can only remove bits: stays <= 0700
        except FileExistsError:
            if not folder.is_dir():
                raise StorageCreateError(
                    f"cannot create folder {folder}: a file of that name is in the way"
                ) from None
        except OSError as error:
            raise StorageCreateError(
                f"cannot create folder {folder}: {_describe(error)}"
            ) from error


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode ``0600`` (and its folders) if it does not exist.

    Returns whether it was created. Used before SQLite opens a database: SQLite creates its
    ``-wal``, ``-shm`` and ``-journal`` files with the database file's permissions, so this
    keeps all of them private. Raises ``StorageCreateError`` (what, where, why) on failure.
    """
    from localsync.persisters._common import StorageCreateError

    ensure_folder(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as error:
        raise StorageCreateError(f"cannot create {path}: {_describe(error)}") from error
    os.close(fd)
    return True


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some filesystems refuse O_RDONLY on folders, which we tolerate."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    durable: bool = True,
    before_replace: Callable[[os.stat_result], None] | None = None,
) -> None:
    """Replace the file at ``path`` with ``data`` so that a crash leaves old or new, never half.

    The temporary file keeps the target's permission bits (as TinyBase does); a new file is
    ``0600`` and missing folders are created ``0700`` (see ``ensure_folder``). On any error the
    temporary file is removed and the target is untouched; the error propagates to the caller
    (the persister reports it). ``durable=False`` skips the fsyncs (for benchmarks only: the
    result is still atomic against a process crash, but not against a power cut).
    ``before_replace`` receives the new file's ``fstat`` just before it becomes visible (a
    rename keeps inode, size and mtime), so a watcher can recognise the write as its own.
    """
    from localsync.persisters._common import StorageCreateError

    target = resolve_target(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise StorageCreateError(f"cannot write {path}: {_A_DIRECTORY}")
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        mode = None
        ensure_folder(target)
    temp = folder / f"{target.name}.{get_unique_id()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is None else mode)
    except OSError as error:
        what = "create" if mode is None else "write"
        raise StorageCreateError(f"cannot {what} {path}: {_describe(error)}") from error
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if mode is not None:
                os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
            if before_replace is not None:
                before_replace(os.fstat(fd))
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(folder)
