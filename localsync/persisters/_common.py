"""What the file and SQLite persisters share: knowing which transactions are on disk.

"Acknowledged as saved" is defined by transaction sequence numbers. Every finished transaction
of the store (local or applied from a peer) gets the next number; a save takes its snapshot
under ``store.lock`` together with the number of the last transaction it contains; once the
bytes are durable (fsync / SQLite commit with ``synchronous=FULL``) that number becomes
``durable_seq`` and saved-listeners hear about it. So: a transaction is acknowledged when
``durable_seq >= its number``, which ``await persister.flush()`` waits for and
``add_saved_listener`` reports, and a process killed at any instant afterwards still has it.

Auto-save coalescing follows from the snapshot: a save that finds nothing newer than the last
durable snapshot returns at once, so a storm of transactions queued as many saves costs as
many writes as there were distinct snapshots (typically a handful), not one per transaction.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from localsync.core.collector import paused
from localsync.core.protocols import PersistableStore, is_mergeable_store
from localsync.errors import PersistError, ReadOnlyStorageError, StorageCreateError
from localsync.persisters._integrity import HashesRepaired, recompute_hashes
from localsync.sync.persister import Persister, Persists

_Content = TypeVar("_Content")
#: the store a Backend serves: any store, or a MergeableStore for the storages that need one
StoreT = TypeVar("StoreT", bound=PersistableStore)

__all__ = [
    "PersistError",
    "ReadOnlyStorageError",
    "SaveTracker",
    "StorageCreateError",
    "merge_changes",
]


_FLUSH_ATTEMPTS = 500  # save attempts skipped by loads before flush gives up (about 5 s)


def _merge_stamp_map(into: list[Any], new: list[Any], depth: int) -> None:
    """Fold later changes into earlier ones; the later stamp (and parent hash) wins.

    ``depth`` is how many levels of stamp maps lie below the children (2 for the tables
    stamp: tables, rows; 0 for a row or the values stamp, whose children are leaf stamps).
    """
    into_children: dict[str, Any] = into[0]
    for child_id, stamp in new[0].items():
        if depth and child_id in into_children:
            _merge_stamp_map(into_children[child_id], stamp, depth - 1)
        else:
            into_children[child_id] = stamp if not depth else _copy(stamp, depth)
    into[1:] = new[1:]


def _copy(stamp: list[Any], depth: int) -> list[Any]:
    if not depth:
        return stamp
    return [{k: _copy(v, depth - 1) for k, v in stamp[0].items()}, *stamp[1:]]


def merge_changes(into: list[Any] | None, new: list[Any]) -> list[Any]:
    """Coalesce encoded changes-with-hashes: ``into`` then ``new`` as one change set.

    Stamps only move forward in a mergeable store, and each transaction's changes carry the
    current hashes of every level above what they touched, so keeping the latest stamp per id
    and the latest hash per level is exactly the state after both.
    """
    if into is None:
        return [_copy(new[0], 3), _copy(new[1], 1), 1]
    _merge_stamp_map(into[0], new[0], 2)
    _merge_stamp_map(into[1], new[1], 0)
    return into


SavedListener = Callable[[Any, int], None]


class SaveTracker:
    """Transaction numbering, durable acknowledgements and ``flush`` for one persister."""

    def __init__(self, store: PersistableStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.tx_seq = 0
        self.durable_seq = -1  # nothing saved yet: even "no transactions" (0) is not on disk
        self.last_error: BaseException | None = None
        self.stats = {
            "writes": 0,
            "full_writes": 0,
            "incremental_writes": 0,
            "repairs": 0,
            "skipped": 0,
            "errors": 0,
            "hash_repairs": 0,
        }
        self._listeners: dict[int, SavedListener] = {}
        self._next_listener_id = 0

    def on_transaction(self) -> int:
        with self.lock:
            self.tx_seq += 1
            return self.tx_seq

    def acknowledge(self, persister: Persister | None, seq: int) -> None:
        """Called on the event loop thread once the snapshot numbered ``seq`` is durable."""
        if seq <= self.durable_seq:
            return
        self.durable_seq = seq
        self.last_error = None
        for listener in list(self._listeners.values()):
            listener(persister, seq)

    def failed(self, error: BaseException) -> None:
        self.last_error = error
        self.stats["errors"] += 1

    def add_listener(self, listener: SavedListener) -> int:
        self._next_listener_id += 1
        self._listeners[self._next_listener_id] = listener
        return self._next_listener_id

    def del_listener(self, listener_id: int) -> None:
        self._listeners.pop(listener_id, None)


def _stamp_hash(stamp: list[Any]) -> int:
    return stamp[2] if len(stamp) > 2 else 0


class Backend(Generic[StoreT]):
    """The storage side of a persister: the hooks handed to ``create_custom_persister``.

    Subclasses implement ``_load_sync``, ``_save_sync`` and ``_watch_token``; this class runs
    them on worker threads (fsync must not stall the event loop), numbers transactions,
    acknowledges durable saves, checks loaded hashes against the loaded stamps, and refuses
    to overwrite data it could not read or that the store rejected (decided right after the
    load applied it: ``after_load``).
    """

    kind = "storage"

    def __init__(self, store: StoreT, path: str, poll_seconds: float) -> None:
        self.store = store
        self.path = path
        self.poll_seconds = poll_seconds
        self.tracker = SaveTracker(store)
        self.mergeable = bool(store.is_mergeable())
        self.persister: BackendPersister | None = None
        # set when a load found data it could not read, or content the store rejected; saves
        # are refused while it holds (unreadable_reason says why, for the error message)
        self.unreadable: Any = None
        self.unreadable_reason = ""
        # guards transaction numbering together with what subclasses track per transaction
        self.state_lock = threading.Lock()
        self.stashed_changes: Any = None
        # the watch token right after our own latest write (so auto-load ignores it)
        self.own_token: Any = None
        # [tables_hash, values_hash] of content just read by a load, until the store has it
        self._expect_load: list[int] | None = None
        self._listener_id = store.add_did_finish_transaction_listener(self._on_transaction)

    # -------------------------------------------------------------- for subclasses

    def take_changes(self) -> Any:
        """This transaction's changes if ``_record`` already computed them, else ``None``.

        Our did-finish listener is registered when the persister is created, so it runs
        before the base's auto-save listener (registered later, on the same store, under the
        same ``store.lock`` pass); handing the base our copy saves computing the changes with
        hashes twice per transaction.
        """
        changes, self.stashed_changes = self.stashed_changes, None
        return changes

    def _on_transaction(self, store: StoreT) -> None:
        self.stashed_changes = None
        expected, self._expect_load = self._expect_load, None
        if (
            expected is not None  # set only for a mergeable store
            and is_mergeable_store(store)
            and list(store.get_mergeable_content_hashes()) == expected
        ):
            # this transaction set the loaded content: the store now equals the storage,
            # so there is nothing to save (a 10^6-cell load is not followed by a rewrite)
            with self.state_lock:
                seq = self.tracker.on_transaction()
                self._loaded(seq)
            return
        self._record(store)

    def _record(self, store: StoreT) -> None:
        with self.state_lock:
            self.tracker.on_transaction()

    def _loaded(self, seq: int) -> None:
        """Called under ``state_lock`` when the store holds exactly the persisted content."""
        self.tracker.durable_seq = max(self.tracker.durable_seq, seq)

    def _load_sync(self) -> Any | None:
        raise NotImplementedError

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        """Write; return (snapshot's transaction number, whether anything was written)."""
        raise NotImplementedError

    def _watch_token(self) -> Any:
        """Something that changes when another process writes the storage."""
        raise NotImplementedError

    def save_whole_content(
        self, read: Callable[[], _Content], write: Callable[[_Content], None]
    ) -> tuple[int, bool]:
        """A ``_save_sync`` that writes the whole content: ``read()`` under the store's lock,
        unless the latest transaction is durable already, then ``write`` it (counted)."""
        with self.store.lock:
            seq = self.tracker.tx_seq
            if seq <= self.tracker.durable_seq:
                return seq, False
            content = read()
        write(content)
        self.tracker.stats["writes"] += 1
        self.tracker.stats["full_writes"] += 1
        return seq, True

    def _has_work(self) -> bool:
        return self.tracker.tx_seq > self.tracker.durable_seq

    def _still_unreadable(self) -> bool:
        return self.unreadable is not None

    # -------------------------------------------------------------- hooks

    def _load_checked(self) -> tuple[Any | None, int]:
        """Read (on a worker thread) and recompute the hashes of mergeable content.

        Returns the content and how many stored hashes had to be corrected (see
        ``_integrity``: hashes are checked against the stamps before the store trusts them).
        """
        content = self._load_sync()
        if content is None or not self.mergeable:
            return content, 0
        return content, recompute_hashes(content)

    async def get_persisted(self) -> Any | None:
        from localsync.persisters._filestore import CorruptContentError

        try:
            content, repaired = await asyncio.to_thread(self._load_checked)
        except StorageCreateError:
            # nothing there could be read because nothing could be created: no data to
            # protect, so later saves try again (and raise the same clear error if they fail)
            raise
        except CorruptContentError as error:
            self._mark_unreadable(f"it is unreadable ({error})")
            raise CorruptContentError(
                f"{self.kind} {self.path!r} is unreadable and will not be overwritten "
                f"until it is fixed or removed: {error}"
            ) from error
        except Exception as error:
            # could not even look (permissions, I/O error, locked): what is there is unknown,
            # so it must not be replaced either; a later successful load lifts this
            self._mark_unreadable(f"it could not be read ({error!r})")
            raise
        self.unreadable = None
        self.unreadable_reason = ""
        self._expect_load = None
        if content is not None and self.mergeable:
            if repaired:
                # the store gets truthful hashes, the storage still has the wrong ones: it is
                # not "already saved", so the next save writes the corrected hashes
                self.tracker.stats["hash_repairs"] += repaired
                if self.persister is not None:
                    self.persister._report(HashesRepaired(self.path, repaired))
            else:
                self._expect_load = [_stamp_hash(content[0]), _stamp_hash(content[1])]
        return content

    def after_load(self, applied: bool) -> None:
        """Called once the loaded content was handed to the store (on the loop thread).

        ``applied`` is False when the store refused it (invalid stamps, stamps too far in the
        future for this process's clock: the store ignores such content silently, as
        TinyBase does) or applying it raised. The storage then holds data this store does not
        have, so it is protected exactly like an unreadable file: every save raises
        ``PersistError`` until it is fixed or removed, or a later load succeeds.
        """
        self._expect_load = None
        if not applied:
            self._mark_unreadable(
                "it holds content the store rejected (invalid stamps, or stamps too far in "
                "the future for this clock)"
            )

    def _mark_unreadable(self, reason: str) -> None:
        self.unreadable = self._unreadable_marker()
        self.unreadable_reason = reason

    def _unreadable_marker(self) -> Any:
        return True

    async def set_persisted(self, get_content: Any = None, changes: Any = None) -> None:
        if self._still_unreadable():
            error = PersistError(
                f"refusing to overwrite {self.kind} {self.path!r}: "
                f"{self.unreadable_reason or 'it could not be read'}; fix or remove it "
                "(a later load that succeeds also clears this)"
            )
            self.tracker.failed(error)
            raise error
        self.unreadable = None
        self.unreadable_reason = ""
        if not self._has_work():
            # a queued auto-save whose transactions an earlier write already covered: no
            # thread hop, no write (this is what makes a burst cost a few writes)
            self.tracker.stats["skipped"] += 1
            return
        try:
            seq, wrote = await asyncio.to_thread(self._save_sync, changes is None)
        except BaseException as error:
            self.tracker.failed(error)
            raise
        if not wrote:
            self.tracker.stats["skipped"] += 1
        self.tracker.acknowledge(self.persister, seq)

    def add_persister_listener(self, listener: Any) -> list[asyncio.Task[None]]:
        """Poll the storage's watch token; report changes made by other processes.

        The handle is a list holding the polling task, not the task itself: the base awaits
        an awaitable handle, and the task only ends when it is cancelled.
        """
        task = asyncio.get_running_loop().create_task(
            self._poll(listener), name=f"localsync-{self.kind}-watch"
        )
        return [task]

    def del_persister_listener(self, handle: list[asyncio.Task[None]]) -> None:
        handle[0].cancel()

    async def _poll(self, listener: Any) -> None:
        last = await asyncio.to_thread(self._watch_token)
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                token = await asyncio.to_thread(self._watch_token)
            except Exception:  # transient (file being replaced): look again next time
                continue
            if token != last:
                last = token
                if token == self.own_token:
                    continue  # our own save, not a change made elsewhere
                result = listener()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result

    def destroy(self) -> None:
        self.store.del_listener(self._listener_id)

    # -------------------------------------------------------------- extras for users

    def get_save_stats(self) -> dict[str, int]:
        """Transaction numbers and write counters (see the module docstring of _common)."""
        return {
            "transactions": self.tracker.tx_seq,
            "durable": self.tracker.durable_seq,
            **self.tracker.stats,
        }

    async def flush(self, timeout: float | None = None) -> int:
        """Return once every transaction finished before the call is durable; raise if not.

        Saves when something is not yet durable (the save queues behind any auto-save in
        flight and writes only what is still missing). Raises ``PersistError`` when the data
        could not be made durable (the cause was also reported through ``on_ignored_error``)
        and ``TimeoutError`` after ``timeout`` seconds. Returns the durable transaction number.
        """
        target = self.tracker.tx_seq
        return await asyncio.wait_for(self._flush(target), timeout)

    async def _flush(self, target: int) -> int:
        persister = self.persister
        assert persister is not None  # attached by BackendPersister.__init__
        for _ in range(_FLUSH_ATTEMPTS):
            if self.tracker.durable_seq >= target:
                return self.tracker.durable_seq
            errors = self.tracker.stats["errors"]
            await persister._save_whole()
            if self.tracker.durable_seq >= target:
                return self.tracker.durable_seq
            if self.tracker.stats["errors"] > errors:
                cause = self.tracker.last_error
                raise PersistError(
                    f"{self.kind} {self.path!r}: transaction {target} is not durable ({cause})"
                ) from cause
            # the save was skipped (the base does not save while a load is in progress,
            # as TinyBase): try again shortly
            await asyncio.sleep(0.01)
        raise PersistError(
            f"{self.kind} {self.path!r}: transaction {target} is not durable "
            "(loads kept the persister busy)"
        )

    def add_saved_listener(self, listener: SavedListener) -> int:
        """``listener(persister, durable_transaction_number)`` after each durable save."""
        return self.tracker.add_listener(listener)

    def del_saved_listener(self, listener_id: int) -> None:
        self.tracker.del_listener(listener_id)


class BackendPersister(Persister):
    """A Persister whose hooks are a :class:`Backend`, plus the acknowledgement API."""

    _backend: Backend

    def __init__(
        self,
        store: PersistableStore,
        backend_factory: Any,
        on_ignored_error: Any,
        persist: int = Persists.MERGEABLE_STORE_ONLY,
    ) -> None:
        super().__init__(store, on_ignored_error=on_ignored_error, persist=persist)
        self._backend = backend_factory()
        self._backend.persister = self
        compute_changes = self._get_changes
        take_changes = self._backend.take_changes

        def get_changes() -> Any:
            changes = take_changes()
            return compute_changes() if changes is None else changes

        self._get_changes = get_changes

    async def _load_action(self, initial_content: Any) -> None:
        # a whole store is read, decoded and installed: the decoded temporaries are freed
        # before the cyclic collector looks (see localsync.core.collector.paused)
        with paused:
            await super()._load_action(initial_content)

    # coroutine functions on purpose: the base runs only those through its schedule (one
    # save at a time); a plain function returning an awaitable would be spawned unscheduled
    async def _get_persisted(self) -> Any:
        return await self._backend.get_persisted()

    async def _set_persisted(self, get_content: Any, changes: Any = None) -> Any:
        return await self._backend.set_persisted(get_content, changes)

    def _add_persister_listener(self, listener: Any) -> Any:
        return self._backend.add_persister_listener(listener)

    def _del_persister_listener(self, handle: Any) -> Any:
        return self._backend.del_persister_listener(handle)

    def _destroy_extra(self) -> Any:
        return self._backend.destroy()

    def _after_load(self, applied: bool) -> None:
        self._backend.after_load(applied)

    async def save(self) -> BackendPersister:
        """Save the whole store now; raise ``PersistError`` if that failed.

        Unlike TinyBase's ``save`` (errors only reach ``on_ignored_error``, which still hears
        them), a failed save raises here, so ``save()`` and ``start_auto_save()`` on storage
        that is unreadable, or that cannot be created or written, fail loudly. Saving when
        nothing changed since the last durable save writes nothing and succeeds.
        """
        backend = self._backend
        errors = backend.tracker.stats["errors"]
        await self._save_whole()
        if backend.tracker.stats["errors"] > errors:
            cause = backend.tracker.last_error
            if isinstance(cause, PersistError):
                raise cause
            raise PersistError(
                f"{backend.kind} {backend.path!r}: the save failed ({cause})"
            ) from cause
        return self

    async def flush(self, timeout: float | None = None) -> int:
        """Return once every transaction finished before the call is durable (see Backend)."""
        return await self._backend.flush(timeout)

    def add_saved_listener(self, listener: SavedListener) -> int:
        """``listener(persister, n)`` once transactions up to number ``n`` are durable."""
        return self._backend.add_saved_listener(listener)

    def del_saved_listener(self, listener_id: int) -> None:
        self._backend.del_saved_listener(listener_id)

    def get_save_stats(self) -> dict[str, int]:
        """``transactions``, ``durable``, ``writes``, ``full_writes``, ``incremental_writes``,
        ``repairs`` (incremental writes found by hash-tree comparison), ``skipped`` and
        ``errors`` counters."""
        return self._backend.get_save_stats()
