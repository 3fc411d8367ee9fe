"""TinyBase's Synchronizer: the Persister lifecycle around the sans-I/O engine and a Transport.

A synchronizer "loads" by pulling from peers and "saves" by broadcasting (a ContentDiff per
local transaction, merged when transactions follow each other closely, else ContentHashes), so
start/stop, status, statistics and echo suppression come from :mod:`localsync.sync.persister`.
The path of a received message: ``Transport`` -> :meth:`Synchronizer._receive` ->
:meth:`SyncEngine.receive <localsync.sync.engine.SyncEngine.receive>` -> the engine's events
(:meth:`Synchronizer._apply_events`) -> the Persister lifecycle -> the store; the engine's
messages go out through ``Transport.send``. Design: docs/design.md, "The sync engine".
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr

from localsync.core.protocols import SyncStore
from localsync.sync.awaiting import await_then, maybe_await
from localsync.sync.coalesce import MAX_COALESCED_BYTES, MAX_COALESCED_STAMPS, coalesce_changes
from localsync.sync.engine import Event, PullFinished, SyncEngine
from localsync.sync.persister import (
    STATUS_IDLE,
    STATUS_SAVING,
    Persister,
    Persists,
    TinyBaseError,
)
from localsync.sync.transport import FunctionTransport, ReceiveFn, SendFn, Transport

__all__ = ["ReceiveFn", "SendFn", "Synchronizer", "Transport", "create_custom_synchronizer"]

#: A transaction on the loop thread is sent from its listener (not on the next loop turn)
#: when nothing was sent for this long: lone writes go at once, bursts stay merged.
INLINE_IDLE_SECONDS = 0.001

#: Queued stamps that a burst on the loop thread sends from its transaction listener instead
#: of waiting for the loop's next turn (as many as fit one coalesced ContentDiff): a loop of
#: writes that never yields streams to peers while it runs instead of after its end.
FLUSH_STAMPS = MAX_COALESCED_STAMPS


@mypyc_attr(allow_interpreted_subclasses=True)
class Synchronizer(Persister):
    """TinyBase's Synchronizer: ``start_sync``/``stop_sync``/``destroy`` plus Persister methods.

    Every synchronizer is built here, from a store and a :class:`Transport`.

    Args:
        store: the MergeableStore to synchronize.
        transport: carries the messages (see :mod:`localsync.sync.transport`).
        request_timeout_seconds: how long a request waits for its answer.
        on_send, on_receive: observers of every message sent / received.
        on_ignored_error: gets errors that are not raised (TinyBase's ``onIgnoredError``).
        anti_entropy_seconds: period of the optional anti-entropy rounds (None: off).
        engine: a ready engine (tests); by default one is made for ``store``.
    """

    _store: SyncStore

    def __init__(
        self,
        store: SyncStore,
        transport: Transport,
        request_timeout_seconds: float,
        on_send: SendFn | None = None,
        on_receive: ReceiveFn | None = None,
        on_ignored_error: Callable[[BaseException], None] | None = None,
        *,
        anti_entropy_seconds: float | None = None,
        engine: SyncEngine | None = None,
    ) -> None:
        super().__init__(
            store,
            on_ignored_error=on_ignored_error,
            persist=Persists.MERGEABLE_STORE_ONLY,
            is_synchronizer=True,
        )
        self._transport: Transport = transport
        self._send = transport.send
        self._on_send = on_send
        self._engine = engine or SyncEngine(
            store,
            request_timeout_seconds=request_timeout_seconds,
            anti_entropy_seconds=anti_entropy_seconds,
        )
        engine_ = self._engine
        engine_.on_ignored_error = self._report
        engine_.on_receive = on_receive
        engine_.is_auto_loading = self.is_auto_loading
        engine_.is_auto_saving = self.is_auto_saving
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._flushing = False
        # merge local transactions that wait for the loop into fewer ContentDiffs (the
        # flag is private: benchmarks switch it off to measure one diff per transaction)
        self._coalesce_saves = True
        self.coalesced_transactions = 0
        # what each local transaction touched waits in _handover until one loop callback
        # takes them all; saves that must queue behind a busy schedule join the last queued
        # save that has not started yet (_open_batch)
        self._get_touched = store.get_transaction_touched
        self._handover_lock = threading.Lock()
        self._handover: list[tuple[int, Any]] = []
        self._handover_scheduled = False
        self._handover_stamps = 0  # (cells and values queued in _handover)
        self._flush_stamps = FLUSH_STAMPS  # (tests make it small)
        self._last_drain = -1.0  # (time.monotonic) when queued transactions last left
        self._inline_idle = INLINE_IDLE_SECONDS  # (tests pin it to make counts exact)
        self._open_batch: list[Any] | None = None
        self._last_pull_failed = False
        # loads waiting for their pull: pull id -> future of its changes (PullFinished)
        self._pulls: dict[str, asyncio.Future[Any]] = {}
        # engine decisions read the store; hold its lock so that a transaction running on
        # another thread is never seen half-done (RLock: applying changes re-enters it)
        self._lock = store.lock
        transport.register_receive(self._receive)

    @property
    def engine(self) -> SyncEngine:
        """The protocol engine (for transports that need peer bookkeeping and for tests)."""
        return self._engine

    # -- engine driving -----------------------------------------------------------------------

    def _handed_to_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """Called off the loop's thread: schedule ``fn(*args)`` on the loop and say so."""
        loop = self._loop
        if (
            loop is not None
            and self._loop_thread is not None
            and threading.get_ident() != self._loop_thread
        ):
            loop.call_soon_threadsafe(fn, *args)
            return True
        return False

    def _receive(self, from_client_id: Any, request_id: Any, message: Any, body: Any) -> None:
        # (whatever arrived, hence Any: the engine checks it, and a compiled str parameter
        # would raise TypeError on a peer's bad request id instead of counting it)
        # (_handed_to_loop inlined: this runs for every received message)
        loop_thread = self._loop_thread
        loop = self._loop
        if loop is not None and loop_thread is not None and threading.get_ident() != loop_thread:
            loop.call_soon_threadsafe(self._receive, from_client_id, request_id, message, body)
            return
        with self._lock:
            self._engine.receive(from_client_id, request_id, message, body)
        self._after_engine()

    def peer_left(self, client_id: str) -> None:
        """Tell the engine a peer is gone (transports that learn it: channel goodbyes)."""
        if self._handed_to_loop(self.peer_left, client_id):
            return
        with self._lock:
            self._engine.peer_left(client_id)
        self._after_engine()

    def _after_engine(self) -> None:
        """Apply the engine's events, send what it queued, re-arm the timer for its deadline."""
        events = self._engine.events_received()
        if events:
            self._apply_events(events)
        if self._engine.has_data_to_send() and not self._flushing:
            self._flushing = True
            try:
                engine = self._engine
                while True:
                    out = engine.data_to_send()
                    if not out:
                        break
                    for to, request_id, message, body in out:
                        if self._on_send is not None:
                            try:
                                self._on_send(to, request_id, message, body)
                            except Exception as error:
                                self._report(error)
                        try:
                            self._send(to, request_id, message, body)
                        except Exception as error:
                            self._report(error)
            finally:
                self._flushing = False
        if self._engine.next_deadline() != self._timer_deadline:
            self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._engine.next_deadline()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is None or self._engine.destroyed:
            self._timer_deadline = None
            return
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._timer_deadline = None
                return
        delay = max(0.0, deadline - self._engine.clock())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        with self._lock:
            self._engine.tick()
        self._after_engine()

    def _apply_events(self, events: list[Event]) -> None:
        """Hand what the engine decided to the Persister lifecycle (loop thread).

        Changes peers pushed are auto-loaded only while auto-loading, as TinyBase's persister
        listener is registered only then: applied as a load (``_auto_load_changes``), so the
        transaction is not sent back, or, for a pull that failed, a reload
        (``_storage_changed``). A finished pull resolves the load waiting for it.

        Local transactions still queued leave before a peer's changes are applied, with the
        store locked across both so no other thread's transaction falls in between: their
        diffs are built from the current stamps, and built after the merge they would carry
        the peer's newer stamps back to it (TinyBase sends each transaction's diff before it
        applies anything later).
        """
        for event in events:
            if type(event) is PullFinished:
                waiter = self._pulls.pop(event.pull_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.changes)
            elif self._auto_load_active and not self._destroyed:
                changes = event.changes
                if changes is not None:
                    with self._lock:
                        if self._handover:
                            self._drain_handover()
                        self._auto_load_changes(None, changes)
                else:
                    self._storage_changed(None, None)  # (a pull that failed: reload)

    # -- Persister hooks -----------------------------------------------------------------------

    async def _get_persisted(self) -> Any:
        loop = self._bind_loop()
        done: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            pull_id = self._engine.pull()
        assert pull_id is not None  # (asking everyone always starts a pull)
        self._pulls[pull_id] = done
        self._after_engine()
        try:
            changes = await done
        finally:
            self._pulls.pop(pull_id, None)
        self._last_pull_failed = changes is None  # (the engine reported why)
        if changes is not None and (changes[0][0] or changes[1][0]):
            return changes
        return None

    def _set_persisted(self, get_content: Callable[[], Any], changes: Any = None) -> None:
        if changes is not None:
            self._engine.send_content_diff(changes)
        else:
            with self._lock:
                self._engine.send_content_hashes()
        self._after_engine()

    # -- local transactions: coalesced saves ----------------------------------------------------

    def _local_transaction(self, generation: int, on_loop: bool) -> None:
        if not self._coalesce_saves:
            super()._local_transaction(generation, on_loop)
            return
        touched = self._get_touched()
        if touched[0] or touched[1]:
            self._hand_over(generation, touched, on_loop)

    def _hand_over(self, generation: int, changes: Any, on_loop: bool) -> None:
        """Queue a transaction's changes; only the first of a run schedules the send.

        On the loop thread, a lone write (nothing queued, and at least ``INLINE_IDLE_SECONDS``
        since the last send) is sent at once, from the transaction listener as TinyBase does;
        the rest wait for the loop's next turn and leave merged (docs/design.md, "Coalescing"),
        except that a queue of ``FLUSH_STAMPS`` stamps (a full ContentDiff) leaves at once, so
        that a burst that does not yield reaches peers while it runs. Transactions are
        serialised by ``store.lock``, so the queue is in transaction order.
        """
        inline = False
        stamps = len(changes[0]) + len(changes[1])
        with self._handover_lock:
            if self._handover_scheduled:
                queued = self._handover_stamps
                if not on_loop or queued + stamps <= self._flush_stamps or not self._handover:
                    self._handover.append((generation, changes))
                    self._handover_stamps = queued + stamps
                    return
                # a full body's worth is queued: it leaves now, this one starts the next
                # (the loop callback already scheduled sends that one)
                full = self._handover
                self._handover = [(generation, changes)]
                self._handover_stamps = stamps
            else:
                full = None
                self._handover.append((generation, changes))
                self._handover_stamps += stamps
                if (
                    on_loop
                    and len(self._handover) == 1
                    and time.monotonic() - self._last_drain >= self._inline_idle
                ):
                    inline = True
                    self._handover = []  # (this entry, the only one: it is sent below)
                    self._handover_stamps = 0
                else:
                    self._handover_scheduled = True
        if full is not None:
            self._send_waiting(full)
            return
        loop = self._loop
        if inline:
            self._send_batch([changes])  # (taken out of the queue above)
            return
        try:
            if loop is None:
                raise RuntimeError("no event loop bound")
            if on_loop:
                loop.call_soon(self._drain_handover)
            else:
                loop.call_soon_threadsafe(self._drain_handover)
        except RuntimeError as error:  # the loop is closed: nothing will ever send these
            with self._handover_lock:
                self._handover.clear()
                self._handover_scheduled = False
                self._handover_stamps = 0
            self._report(error)

    def _drain_handover(self) -> None:
        """Send what is queued now (also called before auto-save stops, so nothing is lost)."""
        with self._handover_lock:
            waiting = self._handover
            self._handover = []
            self._handover_scheduled = False
            self._handover_stamps = 0
        self._send_waiting(waiting)

    def _send_waiting(self, waiting: list[tuple[int, Any]]) -> None:
        """Send queued transactions of the current auto-save generation (taken off the queue)."""
        generation = self._auto_save_generation
        if not waiting or self._destroyed:
            return
        batch = [changes for gen, changes in waiting if gen == generation]
        if batch:
            self._send_batch(batch)

    def _send_batch(self, touched: list[Any]) -> None:
        """Build the ContentDiffs of queued transactions once, from what they touched; save."""
        self._last_drain = time.monotonic()
        for changes in self._build_changes(touched):
            self._save_changes_now(changes)

    def _has_unsent_changes(self) -> bool:
        return bool(self._handover) or self._open_batch is not None

    def _queue_save(self, changes: Any) -> None:
        if not self._coalesce_saves:
            super()._queue_save(changes)
            return
        batch = self._open_batch
        if batch is not None:
            batch.append(changes)  # joins the queued save that has not started yet
            return
        batch = self._open_batch = [changes]
        self._queued_saves += 1
        self._spawn(self._queued_batch_save(batch))

    async def _queued_batch_save(self, batch: list[Any]) -> None:
        """A queued save that keeps taking later transactions until its turn comes."""

        def persist() -> None:
            if self._open_batch is batch:
                self._open_batch = None  # from now on, new saves queue behind this one
            for changes in self._merge_changes(batch):
                self._set_persisted(self._get_content, changes)

        async def save() -> None:
            try:
                self._set_status(STATUS_SAVING)
                self._saves += 1
                await self.schedule(persist)
            finally:
                if self._open_batch is batch:
                    self._open_batch = None
                self._set_status(STATUS_IDLE)

        try:
            await await_then(save(), self._run_auto_load_after_save)
        finally:
            self._queued_saves -= 1

    def _build_changes(self, touched: list[Any]) -> list[Any]:
        bodies = self._store.get_encoded_mergeable_changes_of(
            touched, MAX_COALESCED_STAMPS, MAX_COALESCED_BYTES
        )
        self.coalesced_transactions += len(touched) - len(bodies)
        return bodies

    def _merge_changes(self, batch: list[Any]) -> list[Any]:
        merged = coalesce_changes(batch)
        self.coalesced_transactions += len(batch) - len(merged)
        return merged

    def _add_persister_listener(self, listener: Callable[..., None]) -> int:
        return 1  # (what peers push arrives as engine events: _apply_events)

    def _del_persister_listener(self, handle: Any) -> None:
        return None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start_sync(self, initial_content: Any = None) -> Synchronizer:
        """Pull from peers, then broadcast our changes and answer theirs until stopped."""
        self._bind_loop()
        self._engine.start()
        self._arm_timer()
        await self.start_auto_persisting(initial_content)
        return self

    async def stop_sync(self) -> Synchronizer:
        self._engine.stop()
        self._arm_timer()
        await self.stop_auto_persisting()
        return self

    def is_syncing(self) -> bool:
        return self._engine.syncing

    def get_synchronizer_stats(self) -> dict[str, int]:
        return {"sends": self._engine.sends, "receives": self._engine.receives}

    async def destroy(self) -> Synchronizer:
        """Stop syncing, fail requests in flight, and close the transport. Idempotent."""
        engine = self._engine
        if not engine.destroyed:
            if not self._destroyed:
                self._drain_handover()  # local transactions made before destroy still go out
            engine.destroyed = True
            engine.reject_pending_requests(TinyBaseError(3, "destroyed"))
            self._apply_events(engine.events_received())  # (loads waiting fail now)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_deadline = None
        await super().destroy()
        return self

    async def _destroy_extra(self) -> None:
        self._transport.cancel()
        await self.stop_sync()
        await maybe_await(self._transport.destroy())

    async def wait_until_idle(self, timeout: float | None = None, poll: float = 0.005) -> bool:
        """Wait until no request is in flight and the status is idle (True) or time out.

        A convenience for programs and tests; it says nothing about peers' queues.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (
            self._engine.pending_request_count()
            or self._status
            or self._tasks
            or self._has_unsent_changes()
        ):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll)
        return True


def create_custom_synchronizer(
    store: SyncStore,
    send: SendFn,
    register_receive: Callable[[ReceiveFn], Any],
    destroy: Callable[[], Any] | None,
    request_timeout_seconds: float,
    on_send: SendFn | None = None,
    on_receive: ReceiveFn | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    anti_entropy_seconds: float | None = None,
    pre_destroy: Callable[[], Any] | None = None,
) -> Synchronizer:
    """TinyBase's ``createCustomSynchronizer`` (plus optional anti-entropy).

    ``send``, ``register_receive`` and ``destroy`` (which may return an awaitable) become a
    :class:`FunctionTransport`; ``pre_destroy`` runs first on destroy (its ``cancel``).
    """
    return Synchronizer(
        store,
        FunctionTransport(send, register_receive, destroy, pre_destroy),
        request_timeout_seconds,
        on_send,
        on_receive,
        on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
    )
