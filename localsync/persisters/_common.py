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
from typing import Any

__all__ = ["PersistError", "SaveTracker", "merge_changes"]


class PersistError(RuntimeError):
    """A save could not be made durable (reported through ``on_ignored_error`` too)."""


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

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.tx_seq = 0
        self.durable_seq = 0
        self.last_error: BaseException | None = None
        self.stats = {"writes": 0, "full_writes": 0, "incremental_writes": 0, "skipped": 0}
        self.stats["errors"] = 0
        self._listeners: dict[int, SavedListener] = {}
        self._next_listener_id = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def on_transaction(self) -> int:
        with self.lock:
            self.tx_seq += 1
            return self.tx_seq

    def acknowledge(self, persister: Any, seq: int) -> None:
        """Called on the event loop thread once the snapshot numbered ``seq`` is durable."""
        if seq <= self.durable_seq:
            return
        self.durable_seq = seq
        self.last_error = None
        for listener in list(self._listeners.values()):
            listener(persister, seq)
        still = []
        for target, future in self._waiters:
            if target <= seq:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    def failed(self, error: BaseException) -> None:
        self.last_error = error
        self.stats["errors"] += 1

    def add_listener(self, listener: SavedListener) -> int:
        self._next_listener_id += 1
        self._listeners[self._next_listener_id] = listener
        return self._next_listener_id

    def del_listener(self, listener_id: int) -> None:
        self._listeners.pop(listener_id, None)

    async def wait_for(self, target: int, timeout: float | None) -> None:
        if self.durable_seq >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._waiters = [(t, f) for t, f in self._waiters if f is not future]
