"""File persister: a store in one JSON file, compatible with TinyBase's.

``create_file_persister(store, path, on_ignored_error=None)`` is TinyBase's
``createFilePersister``: for a MergeableStore the file holds the JSON of the store's *encoded*
mergeable content (``undefined`` as U+FFFC, object/array cells as U+FFFD + JSON), so a file
written here loads in TinyBase's ``createFilePersister`` and the other way round, with
identical content and hashes. A plain Store is persisted too, as TinyBase does it: the JSON of
``[tables, values]`` (object cells in the same stored string form).

What it adds, and why:

* Crash safety: every save replaces the file atomically (temporary file, fsync, rename, fsync
  of the folder), so a process killed at any instant leaves the previous or the new content.
* Acknowledged saves: ``await persister.flush()`` returns only when every transaction finished
  before the call is durable (it raises ``PersistError`` otherwise);
  ``add_saved_listener(fn)`` calls ``fn(persister, n)`` each time transactions up to number
  ``n`` became durable, and ``get_save_stats()`` exposes the counters (see ``_common``).
* Coalescing: a save that finds no transaction newer than the last durable one writes nothing,
  so an auto-saved burst of transactions costs a few writes, not one per transaction.
* A file that exists but cannot be read (truncated, not JSON, not mergeable content, content
  the store rejects, or a read error) makes ``load`` report the error through
  ``on_ignored_error`` (a ``CorruptContentError`` for bad data) and leaves the store
  untouched; later saves are refused with ``PersistError`` until that file is fixed or
  removed (or a load succeeds), so an empty store never replaces data that merely failed to
  load. Unlike TinyBase, ``save()`` and ``start_auto_save()`` raise that ``PersistError``
  too (``on_ignored_error`` still hears it). A missing or empty file loads as "nothing
  saved" (TinyBase's ``initial_content`` applies). Write errors (full disk, read-only
  folder) leave the previous file in place and are reported (and raised) the same way; the
  next save tries again.
* Stored hashes are recomputed from the stored stamps on load (``_integrity``): a file that
  lost rows but kept its hashes loads what it has, with hashes that let sync restore the
  rest (``HashesRepaired`` is reported through ``on_ignored_error``, and the next save
  writes the truthful hashes).
* Private storage: a new file is ``0600`` (also its temporary files) and missing folders
  are created ``0700``; an existing file or folder keeps its mode. A folder or file that
  cannot be created makes ``save``/``start_auto_save``/``flush`` raise a
  ``StorageCreateError`` naming it (``cannot create data/room1.json: permission denied``).
* Auto-load watches the file's identity (inode, size, mtime) every ``poll_seconds`` and
  ignores the persister's own saves. Temporary files left by a killed writer are removed
  on load once they are ten minutes old.

Usage (asyncio)::

    persister = create_file_persister(store, "orders.json")
    await persister.start_auto_persisting()      # load, then save every transaction
    store.set_cell("orders", "o1", "qty", 2)
    await persister.flush()                      # returns once that change is on disk

Without asyncio, ``localsync.sync.blocking`` runs it on a background loop::

    with blocking(create_file_persister, store, "orders.json", start=False) as persister:
        persister.start_auto_persisting()
        store.set_cell("orders", "o1", "qty", 2)
        persister.flush()

Deliberate difference: an explicit ``save()`` with no transaction since the last durable save
does not rewrite the file (TinyBase rewrites it).
"""

from __future__ import annotations

import os
from typing import Any

from localsync.core.protocols import PersistableStore, is_mergeable_store
from localsync.persisters._common import Backend, BackendPersister, PersistError, StorageCreateError
from localsync.persisters._filestore import (
    CorruptContentError,
    encode_content,
    read_content,
    remove_stale_temp_files,
    write_atomic,
)
from localsync.persisters._integrity import HashesRepaired
from localsync.sync.persister import Persists

__all__ = [
    "CorruptContentError",
    "FilePersister",
    "HashesRepaired",
    "PersistError",
    "StorageCreateError",
    "create_file_persister",
]


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileBackend(Backend[PersistableStore]):
    """Whole-content JSON file storage with durable, coalesced, atomic saves."""

    kind = "file"

    def __init__(
        self, store: PersistableStore, path: str, poll_seconds: float, durable: bool
    ) -> None:
        super().__init__(store, path, poll_seconds)
        self.durable = durable

    def _load_sync(self) -> Any | None:
        remove_stale_temp_files(self.path)
        return read_content(self.path, self.mergeable)

    def _unreadable_marker(self) -> Any:
        return _identity(self.path)

    def _still_unreadable(self) -> bool:
        # the unreadable file is protected only while it is the file on disk
        return self.unreadable is not None and _identity(self.path) == self.unreadable

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        store = self.store
        read = (
            store.get_encoded_mergeable_content
            if is_mergeable_store(store)  # as self.mergeable
            else store.get_encoded_content
        )

        def write(content: Any) -> None:
            data = encode_content(content)
            write_atomic(self.path, data, durable=self.durable, before_replace=self._own_write)

        return self.save_whole_content(read, write)

    def _own_write(self, st: os.stat_result) -> None:
        self.own_token = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _watch_token(self) -> Any:
        return _identity(self.path)


class FilePersister(BackendPersister):
    """TinyBase's file persister for a MergeableStore, with crash-safe acknowledged saves."""

    def __init__(
        self,
        store: PersistableStore,
        path: str | os.PathLike[str],
        on_ignored_error: Any = None,
        *,
        poll_seconds: float = 0.05,
        durable: bool = True,
    ) -> None:
        self._path = os.fspath(path)
        super().__init__(
            store,
            lambda: FileBackend(store, self._path, poll_seconds, durable),
            on_ignored_error,
            Persists.STORE_OR_MERGEABLE_STORE,
        )

    def get_file_path(self) -> str:
        return self._path


def create_file_persister(
    store: PersistableStore,
    path: str | os.PathLike[str],
    on_ignored_error: Any = None,
    *,
    poll_seconds: float = 0.05,
    durable: bool = True,
) -> FilePersister:
    """TinyBase's ``createFilePersister`` for a MergeableStore, crash-safe.

    ``durable=False`` skips fsync (atomic against a crashed process, not a power cut); it
    exists for benchmarks and throwaway data. Auto-load checks the file every
    ``poll_seconds`` (TinyBase polls every 50 ms too).
    """
    return FilePersister(store, path, on_ignored_error, poll_seconds=poll_seconds, durable=durable)
