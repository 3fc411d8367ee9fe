"""Channel synchronizer: TinyBase's BroadcastChannel role between processes, over ZeroMQ.

Public API::

    sync = create_channel_synchronizer(store, "orders")          # this machine, same user
    sync = create_channel_synchronizer(store, "orders", hub="tcp://10.0.0.5:7700")
    await sync.start_sync()
    ...
    await sync.destroy()

Optional positional arguments after the name are TinyBase's ``on_send, on_receive,
on_ignored_error``; keyword-only options:

``hub``
    ``None`` (default): a local channel on ipc:// sockets in the private runtime folder
    (:mod:`localsync.channel.runtime`), whose hub is elected among participants
    (:mod:`localsync.channel.hub`).
    ``"tcp://HOST:PORT"``: an external hub started with ``localsync hub --bind tcp://HOST:PORT``
    (publishers use PORT, subscribers PORT+1). No election; the hub must be running.
``runtime_dir``
    overrides the runtime folder (must be private: 0700, owned by the user).
``request_timeout_seconds`` (default ``None``: adaptive)
    how long a request waits for a reply. A number is used for every request. Adaptive:
    0.5 s while no peer answered the first hello (``ALONE_REQUEST_TIMEOUT``), up to 30 s for
    the joining exchange when one did (``JOIN_REQUEST_TIMEOUT``: it may be computing a huge
    diff), then 2 s (``SYNCING_REQUEST_TIMEOUT``). A peer that leaves mid-exchange is noticed
    at its goodbye, or within about ``LIVENESS_CHECK_SECONDS`` when killed (local channels).
``anti_entropy_seconds`` (default 1.0)
    period of the engine's content-hash exchange, which heals messages PUB/SUB dropped;
    each period varies by ``ANTI_ENTROPY_JITTER`` (25 %) either way.
``hwm`` (default :data:`localsync.channel.hub.DEFAULT_HWM`)
    high-water mark (messages) of the data direction of this process's sockets and of the
    hub it may host; ``0`` means no limit (ZeroMQ's convention).
``hub_key``, ``client_key`` (tcp hubs only)
    the hub's public CURVE key (a ``.key`` file or its Z85 text) and this participant's
    ``.key_secret`` file (a throw-away pair when omitted); needed when the hub was started
    with ``--secret-key`` (see :mod:`localsync.channel.hub`).
``connect_timeout_seconds`` (default 5.0)
    bound on proving the path (a message to ourselves must come back through the hub);
    failing raises :class:`ChannelError` naming the likely cause. A local hub silent for
    ``HUB_TIMEOUT_SECONDS`` is replaced by a new generation, which gets this much time again.

The synchronizer returned is the engine's synchronizer (``create_custom_synchronizer``)
wrapped so that the path is proven on the first lifecycle call; extras:
``get_channel_name()``, ``client_id``, ``is_hub_host``, ``hub_answering``,
``get_channel_stats()`` (including ``hub_generation`` and ``hub_failovers``) and
``await wait_acknowledged(timeout)`` (see :mod:`localsync.channel.coordinator`).
The transport (sockets, wire format) is :mod:`localsync.channel.transport`.

Without asyncio, use the blocking facade (:mod:`localsync.sync.blocking`)::

    with blocking(create_channel_synchronizer, store, "orders") as sync:
        store.set_cell("t", "r", "c", 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from localsync.channel.hub import DEFAULT_HWM
from localsync.channel.transport import ChannelTransport
from localsync.errors import ChannelError

__all__ = [
    "ChannelError",
    "ChannelSynchronizer",
    "ChannelTransport",
    "create_channel_synchronizer",
]

#: Adaptive request time-outs (``request_timeout_seconds=None``), see the module doc.
ALONE_REQUEST_TIMEOUT = 0.5
JOIN_REQUEST_TIMEOUT = 30.0
SYNCING_REQUEST_TIMEOUT = 2.0
#: How long a peer may owe an answer before its liveness is checked (local channels), and
#: how often the check repeats while it still owes one.
LIVENESS_CHECK_SECONDS = 0.5
#: anti-entropy periods vary by this fraction either way (see SyncEngine.anti_entropy_jitter)
ANTI_ENTROPY_JITTER = 0.25
_MAX_REMEMBERED = 100_000  # content-hash pairs kept while waiting for an acknowledgement


class ChannelSynchronizer:
    """The engine's synchronizer plus channel extras; proves the path on first use."""

    _LIFECYCLE_NEEDING_OPEN = frozenset(
        {"start_sync", "load", "save", "start_auto_load", "start_auto_save"}
    )

    def __init__(
        self, inner: Any, transport: ChannelTransport, store: Any, adaptive_timeout: bool = False
    ) -> None:
        self._inner = inner
        self._transport = transport
        self._store = store
        self._adaptive = adaptive_timeout
        self._discovered = False
        self._acked: set[tuple[int, int]] = set()
        self._ack_event: asyncio.Event | None = None
        self._loop_set_event: Callable[[], None] | None = None
        self._liveness: asyncio.TimerHandle | None = None
        peer_left = getattr(inner, "peer_left", None)
        if peer_left is not None:
            transport.on_peer_left = peer_left
        engine = getattr(inner, "engine", None)
        if engine is not None:
            engine.anti_entropy_jitter = ANTI_ENTROPY_JITTER
            if adaptive_timeout:
                engine.broadcast_hashes_timeout_seconds = SYNCING_REQUEST_TIMEOUT

    @property
    def client_id(self) -> str:
        return self._transport.client_id

    @property
    def transport(self) -> ChannelTransport:
        return self._transport

    @property
    def is_hub_host(self) -> bool:
        hub = self._transport.local_hub
        return hub is not None and hub.is_host

    @property
    def hub_answering(self) -> bool:
        """False while the hub has not answered heartbeats for ``HUB_TIMEOUT_SECONDS`` (tcp
        hubs; a local channel elects a new hub instead, see :mod:`localsync.channel.hub`)."""
        return self._transport.hub_answering

    def get_channel_name(self) -> str:
        return self._transport.name

    def get_channel_stats(self) -> dict[str, int]:
        return dict(self._transport.stats)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name in self._LIFECYCLE_NEEDING_OPEN and callable(attribute):

            async def opened_first(*args: Any, **kwargs: Any) -> Any:
                await self._transport.open()
                self._watch_liveness()
                if self._adaptive and not self._discovered:
                    self._discovered = True
                    alone = not await self._transport.discover_peers()
                    self._set_request_timeout(
                        ALONE_REQUEST_TIMEOUT if alone else JOIN_REQUEST_TIMEOUT
                    )
                if name in ("start_sync", "start_auto_save"):
                    self._transport.answers_hello = True
                try:
                    result = await attribute(*args, **kwargs)
                finally:
                    if self._adaptive:
                        self._set_request_timeout(SYNCING_REQUEST_TIMEOUT)
                return self if result is self._inner else result

            return opened_first
        return attribute

    def _watch_liveness(self) -> None:
        """Every LIVENESS_CHECK_SECONDS, drop peers that owe us answers but have died.

        A peer killed by SIGKILL says no goodbye; without this check a joiner would wait for
        the whole join time-out. Only peers that have owed an answer for a while are checked
        (a few system calls each, see :mod:`localsync.channel.presence`); tcp channels have no
        presence files and rely on goodbyes and time-outs.
        """
        if self._liveness is not None or self._transport._paths is None:
            return
        engine = getattr(self._inner, "engine", None)
        peer_left = getattr(self._inner, "peer_left", None)
        if engine is None or peer_left is None:
            return
        loop = asyncio.get_running_loop()
        transport = self._transport

        def check() -> None:
            self._liveness = None
            if not transport.is_open or engine.destroyed:
                return
            for client_id in engine.awaited_peers(LIVENESS_CHECK_SECONDS):
                if not transport.peer_alive(client_id):
                    peer_left(client_id)
            self._liveness = loop.call_later(LIVENESS_CHECK_SECONDS, check)

        self._liveness = loop.call_later(LIVENESS_CHECK_SECONDS, check)

    def _set_request_timeout(self, seconds: float) -> None:
        engine = getattr(self._inner, "engine", None)
        if engine is not None and hasattr(engine, "request_timeout_seconds"):
            engine.request_timeout_seconds = seconds

    async def stop_sync(self) -> ChannelSynchronizer:
        self._transport.answers_hello = False
        await self._inner.stop_sync()
        return self

    async def destroy(self) -> ChannelSynchronizer:
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        try:
            await self._inner.destroy()
        finally:
            self._transport.close()
        return self

    async def __aenter__(self) -> ChannelSynchronizer:
        await self.start_sync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()

    def _on_ack(self, from_id: str, tables_hash: int, values_hash: int) -> None:
        acked = (tables_hash, values_hash)
        if acked not in self._acked:
            if len(self._acked) >= _MAX_REMEMBERED:
                self._acked.clear()
            self._acked.add(acked)
        if self._ack_event is not None:
            self._ack_event.set()

    async def wait_acknowledged(self, timeout: float | None = None) -> None:
        """Return once a coordinator has durably saved everything this store held at the call.

        Sound and cheap, without comparing contents: from the call on, the hashes of every
        state this store passes through are recorded (content only grows, so each of these
        states includes everything held at the call). A coordinator announces the hashes of
        each content it saved (:mod:`localsync.channel.coordinator`). As soon as an announced pair
        equals a recorded one, the coordinator saved a content equal to one of those states,
        which includes everything held at the call. Peers may keep writing meanwhile: this
        store and the coordinator see the same stream of changes, so they pass through the
        same states. Raises ``TimeoutError`` after ``timeout`` seconds (e.g. no coordinator).
        """
        await self._transport.open()
        if self._ack_event is None:
            self._ack_event = asyncio.Event()
            self._transport.watch_acks(self._on_ack)
        store = self._store
        seen: set[tuple[int, int]] = set()
        seen_lock = threading.Lock()
        lock = getattr(store, "lock", None)

        def record(_store: Any = None) -> None:
            # runs after each transaction, on whichever thread made it
            with lock if lock is not None else contextlib.nullcontext():
                hashes = store.get_mergeable_content_hashes()
            with seen_lock:
                if len(seen) >= _MAX_REMEMBERED:
                    seen.clear()  # (bounded memory; older states are as good as newer ones)
                seen.add((hashes[0], hashes[1]))
            if self._ack_event is not None and self._loop_set_event is not None:
                self._loop_set_event()

        loop = asyncio.get_running_loop()
        event = self._ack_event

        def set_event_from_any_thread() -> None:
            loop.call_soon_threadsafe(event.set)

        self._loop_set_event = set_event_from_any_thread
        listener = store.add_did_finish_transaction_listener(record)
        record()

        async def until_saved() -> None:
            while True:
                event.clear()
                with seen_lock:
                    if not seen.isdisjoint(self._acked):
                        return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), 0.1)

        try:
            await asyncio.wait_for(until_saved(), timeout)
        finally:
            store.del_listener(listener)


def create_channel_synchronizer(
    store: Any,
    name: str,
    on_send: Callable[..., None] | None = None,
    on_receive: Callable[..., None] | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    hub: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    request_timeout_seconds: float | None = None,
    anti_entropy_seconds: float | None = 1.0,
    hwm: int = DEFAULT_HWM,
    connect_timeout_seconds: float = 5.0,
    hub_key: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
) -> ChannelSynchronizer:
    """Synchronize ``store`` with every process that opens channel ``name`` (see module doc)."""
    from localsync.sync.synchronizer import create_custom_synchronizer

    if not callable(getattr(store, "get_mergeable_content_hashes", None)):
        raise TypeError("create_channel_synchronizer needs a MergeableStore")
    transport = ChannelTransport(
        name,
        hub=hub,
        runtime_dir=runtime_dir,
        hwm=hwm,
        connect_timeout_seconds=connect_timeout_seconds,
        on_ignored_error=on_ignored_error,
        hub_key=hub_key,
        client_key=client_key,
    )
    inner = create_custom_synchronizer(
        store,
        transport.send,
        transport.register_receive,
        transport.flush_and_close,
        ALONE_REQUEST_TIMEOUT if request_timeout_seconds is None else request_timeout_seconds,
        on_send=on_send,
        on_receive=on_receive,
        on_ignored_error=on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
    )
    return ChannelSynchronizer(inner, transport, store, request_timeout_seconds is None)
