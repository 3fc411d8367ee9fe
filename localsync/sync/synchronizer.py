"""Synchronizer = Persister lifecycle + the sans-I/O engine + an asyncio timer.

Why a Persister: as in TinyBase, a synchronizer "loads" by pulling from peers and "saves" by
broadcasting (a ContentDiff per local transaction, else ContentHashes), so start/stop, status,
statistics and echo suppression come from :mod:`localsync.sync.persister` unchanged.

Coalescing (beyond TinyBase, wire-compatible): TinyBase sends one ContentDiff per local
transaction from inside the transaction listener. Here a lone write on the loop thread (after
``persister.INLINE_IDLE_SECONDS`` without sending) is sent the same way, at once; any other
transaction is queued and sent on the loop's next turn, and every transaction that joins the
queue before that turn - more writes in the same turn on the loop thread, writes from a thread
faster than the loop (the blocking facade), writes made while an earlier save is queued behind
a load - travels in the same ContentDiff (newest HLC per cell/value, latest row/table HLCs,
built once from the current stamps: ``MergeableStore.get_encoded_mergeable_changes_of``, with the
size caps of :func:`localsync.sync.engine.coalesce_changes`). A burst of N writes therefore costs
readers a handful of messages and store transactions instead of N. Changes applied from
peers are never re-sent (the echo rule is unchanged), diffs leave in transaction order, and
``stop_sync``/``destroy`` send what is still queued first. ``coalesced_transactions`` counts
transactions that travelled inside another's diff; ``_coalesce_saves = False`` (private, for
benchmarks) restores TinyBase's one-diff-per-transaction behaviour.

Building a transport (a new one should be one short file)::

    def create_my_synchronizer(store, ...):
        def send(to_client_id, request_id, message, body): ...      # on the loop thread
        def register_receive(receive): ...     # later: receive(from_id, request_id, message, body)
        def destroy(): ...
        return create_custom_synchronizer(store, send, register_receive, destroy, 1.0)

``send`` must not block (queue the bytes); ``receive`` should be called on the event loop
thread that runs the synchronizer (calls from other threads are handed over to it).
Everything the engine emits is sent synchronously from the call that caused it, in order.

Deliberate differences from TinyBase 10.0.1 (the message sequence of its protocol traces is
reproduced exactly; see tests/sync/test_protocol_traces.py):

* ``destroy()`` fails requests in flight first (``tinybase:3:destroyed``) instead of letting
  an in-flight load wait for its time-out.
* A pull that finds nothing to apply applies nothing (TinyBase applies an empty change set,
  which only counts a load and flips the status).
* Mergeable data the store ignores (invalid or more than 5 minutes in the future) is
  reported to ``on_ignored_error`` as ``tinybase:1`` instead of vanishing silently.
* Local writes made while a load is in flight are sent after it rather than skipped (see
  :mod:`localsync.sync.persister`).
* Local transactions that follow each other closely leave merged on the next loop turn
  (below); only a lone write is sent from inside its transaction listener.
* Optional anti-entropy (``anti_entropy_seconds``), see :mod:`localsync.sync.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from localsync.sync.engine import (
    MAX_COALESCED_BYTES,
    MAX_COALESCED_STAMPS,
    SyncEngine,
    coalesce_changes,
)
from localsync.sync.persister import Persister, Persists, TinyBaseError

__all__ = ["Synchronizer", "create_custom_synchronizer"]

SendFn = Callable[[str | None, str | None, int, Any], None]
ReceiveFn = Callable[[str, str | None, int, Any], None]


class Synchronizer(Persister):
    """TinyBase's Synchronizer: ``start_sync``/``stop_sync``/``destroy`` plus Persister methods."""

    def __init__(
        self,
        store: Any,
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
        engine: SyncEngine | None = None,
    ) -> None:
        super().__init__(
            store,
            on_ignored_error=on_ignored_error,
            persist=Persists.MERGEABLE_STORE_ONLY,
            is_synchronizer=True,
        )
        self._send = send
        self._transport_destroy = destroy
        self._pre_destroy = pre_destroy
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
        self._last_pull_failed = False
        # engine decisions read the store; hold its lock so that a transaction running on
        # another thread is never seen half-done (RLock: applying changes re-enters it)
        lock = getattr(store, "lock", None)
        self._lock: Any = lock if lock is not None else contextlib.nullcontext()
        register_receive(self._receive)

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

    def _receive(
        self, from_client_id: str, request_id: str | None, message: int, body: Any
    ) -> None:
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
        """Send what the engine queued and re-arm the timer for its next deadline."""
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

    # -- Persister hooks -----------------------------------------------------------------------

    async def _get_persisted(self) -> Any:
        loop = self._bind_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def on_done(changes: Any) -> None:
            if not done.done():
                done.set_result(changes)

        with self._lock:
            self._engine.pull(on_done)
        self._after_engine()
        changes = await done
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
        self._engine.persister_listener = listener
        return 1

    def _del_persister_listener(self, handle: Any) -> None:
        self._engine.persister_listener = None

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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_deadline = None
        await super().destroy()
        return self

    async def _destroy_extra(self) -> None:
        if self._pre_destroy is not None:
            self._pre_destroy()
        await self.stop_sync()
        if self._transport_destroy is not None:
            result = self._transport_destroy()
            if asyncio.iscoroutine(result):
                await result

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
    store: Any,
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
    """TinyBase's ``createCustomSynchronizer`` (plus optional anti-entropy)."""
    return Synchronizer(
        store,
        send,
        register_receive,
        destroy,
        request_timeout_seconds,
        on_send,
        on_receive,
        on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
        pre_destroy=pre_destroy,
    )
