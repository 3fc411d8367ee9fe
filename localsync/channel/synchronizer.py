"""Channel synchronizer: TinyBase's BroadcastChannel role between processes, over ZeroMQ or NATS.

Public API::

    sync = create_channel_synchronizer(store, "orders")          # this machine, same user
    sync = create_channel_synchronizer(store, "orders", hub="tcp://10.0.0.5:7700")
    sync = create_channel_synchronizer(store, "orders", hub="nats://10.0.0.5:4222")
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
    ``"nats://HOST:PORT"`` (or ``tls://``), a list of such URLs (nodes of a NATS cluster), or
    a :class:`~localsync.channel.nats.NatsOptions` / a dict ``{"servers": ..., **connect}``
    with nats-py ``connect`` options (credentials, TLS): the channel over NATS
    (:mod:`localsync.channel.nats`, subjects documented there). After a lost connection
    (nats-py reconnects, to another node when there is one) the synchronizer resyncs at once
    by pulling from its peers and announcing its hashes. ``runtime_dir``, ``hwm``,
    ``hub_key`` and ``client_key`` do not apply.
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
``snapshots`` (default True; local channels only)
    a joiner whose store is empty asks one peer (the channel's coordinator when it has one,
    else the first peer that answered its hello) for a shared-memory snapshot of the content
    and installs it before the normal joining exchange, which then only finds what changed
    since; every local participant answers such requests (nothing is encoded until one
    comes). Any failure falls back to the normal exchange. ``False`` turns asking and
    answering off (see :mod:`localsync.channel.snapshot`; counted in ``get_channel_stats()``:
    ``snapshot_joins``, ``snapshot_fallbacks``, ``snapshots_served``, ``snapshots_refused``,
    ``snapshot_segments_swept``).
``connect_timeout_seconds`` (default 5.0)
    bound on proving the path (a message to ourselves must come back through the hub);
    failing raises :class:`ChannelError` naming the likely cause. A local hub silent for
    ``HUB_TIMEOUT_SECONDS`` is replaced by a new generation, which gets this much time again.

The synchronizer returned is a :class:`~localsync.sync.synchronizer.Synchronizer` built with
the channel's transport, which proves the path on the first lifecycle call; extras:
``get_channel_name()``, ``client_id``, ``is_hub_host``, ``hub_answering``,
``get_channel_stats()`` (ZeroMQ: including ``hub_generation`` and ``hub_failovers``; NATS:
``disconnects``, ``reconnects``, ``dropped`` (publishes refused while disconnected with a
full buffer) and ``chunked`` (messages sent in chunks)) and
``await wait_acknowledged(timeout)`` (see :mod:`localsync.channel.coordinator`).
The transports are :mod:`localsync.channel.transport` (ZeroMQ) and :mod:`localsync.channel.nats`,
with what they share in :mod:`localsync.channel.endpoint`.

Without asyncio, use the blocking facade (:mod:`localsync.sync.blocking`)::

    with blocking(create_channel_synchronizer, store, "orders") as sync:
        store.set_cell("t", "r", "c", 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from localsync.channel import snapshot
from localsync.channel.endpoint import ChannelEndpoint
from localsync.channel.hub import DEFAULT_HWM
from localsync.channel.nats import NatsOptions, NatsTransport, is_nats_hub, nats_options
from localsync.channel.transport import ChannelTransport
from localsync.core.collector import paused
from localsync.core.protocols import SyncStore
from localsync.errors import ChannelError
from localsync.sync.synchronizer import Synchronizer
from localsync.sync.transport import FunctionTransport

__all__ = [
    "ChannelError",
    "ChannelSynchronizer",
    "ChannelTransport",
    "NatsOptions",
    "NatsTransport",
    "check_hub",
    "create_channel_synchronizer",
]

#: Adaptive request time-outs (``request_timeout_seconds=None``), see the module doc.
ALONE_REQUEST_TIMEOUT = 0.5
JOIN_REQUEST_TIMEOUT = 30.0
SYNCING_REQUEST_TIMEOUT = 2.0
#: How long a peer may owe an answer before its liveness is checked, and how often the check
#: repeats while it still owes one.
LIVENESS_CHECK_SECONDS = 0.5
#: anti-entropy periods vary by this fraction either way (see SyncEngine.anti_entropy_jitter)
ANTI_ENTROPY_JITTER = 0.25
_MAX_REMEMBERED = 100_000  # content-hash pairs kept while waiting for an acknowledgement
#: how long a joiner waits for a snapshot offer (the peer encodes its content first)
SNAPSHOT_OFFER_SECONDS = 5.0


# the ChannelSynchronizer whose public lifecycle call is running in this context: the calls it
# makes itself (start_sync -> load ...) and the tasks it spawns skip the opening steps
_OPENED_CALL: ContextVar[ChannelSynchronizer | None] = ContextVar(
    "localsync_channel_call", default=None
)


class ChannelSynchronizer(Synchronizer):
    """A Synchronizer over a channel transport (:class:`ChannelTransport`, :class:`NatsTransport`);
    proves the path on first use.

    ``start_sync``, ``load``, ``save``, ``start_auto_load`` and ``start_auto_save`` open the
    channel first (and, with the adaptive time-out, discover whether peers are there to pick
    the first pull's request time-out).
    """

    def __init__(
        self,
        store: SyncStore,
        channel: ChannelEndpoint,
        request_timeout_seconds: float,
        on_send: Callable[..., None] | None = None,
        on_receive: Callable[..., None] | None = None,
        on_ignored_error: Callable[[BaseException], None] | None = None,
        *,
        anti_entropy_seconds: float | None = None,
        adaptive_timeout: bool = False,
        snapshots: bool = False,
    ) -> None:
        super().__init__(
            store,
            FunctionTransport(channel.send, channel.register_receive, channel.flush_and_close),
            request_timeout_seconds,
            on_send,
            on_receive,
            on_ignored_error,
            anti_entropy_seconds=anti_entropy_seconds,
        )
        self._channel = channel
        self._adaptive = adaptive_timeout
        self._discovered = False
        self._acked: set[tuple[int, int]] = set()
        self._ack_event: asyncio.Event | None = None
        self._loop_set_event: Callable[[], None] | None = None
        self._liveness: asyncio.TimerHandle | None = None
        channel.on_peer_left = self.peer_left
        channel.on_reconnected = self._reconnected
        engine = self._engine
        engine.anti_entropy_jitter = ANTI_ENTROPY_JITTER
        if adaptive_timeout:
            engine.broadcast_hashes_timeout_seconds = SYNCING_REQUEST_TIMEOUT
        # shared-memory snapshots: local channels only (see localsync.channel.snapshot)
        self._snapshots: snapshot.SnapshotServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        if snapshots and channel.has_presence and snapshot.available():
            self._snapshots = snapshot.SnapshotServer(store)
            channel.on_snapshot_ask = self._offer_snapshot
            channel.on_peer_left = self._peer_left_sweep
            channel.stats.update(
                snapshot_joins=0,
                snapshot_fallbacks=0,
                snapshots_served=0,
                snapshots_refused=0,
                snapshot_segments_swept=0,
            )

    @property
    def client_id(self) -> str:
        return self._channel.client_id

    @property
    def transport(self) -> ChannelEndpoint:
        return self._channel

    @property
    def is_hub_host(self) -> bool:
        hub = self._channel.local_hub
        return hub is not None and hub.is_host

    @property
    def hub_answering(self) -> bool:
        """False while the hub has not answered heartbeats for ``HUB_TIMEOUT_SECONDS`` (tcp
        hubs; a local channel elects a new hub instead, see :mod:`localsync.channel.hub`), or
        while the connection to the NATS servers is lost."""
        return self._channel.hub_answering

    def get_channel_name(self) -> str:
        return self._channel.name

    def get_channel_stats(self) -> dict[str, int]:
        return dict(self._channel.stats)

    async def _opened(self, call: Callable[[], Awaitable[Any]], answers_hello: bool) -> Any:
        """Run a public lifecycle call once the channel is open (the outermost call only)."""
        if _OPENED_CALL.get() is self:
            return await call()
        token = _OPENED_CALL.set(self)
        try:
            await self._channel.open()
            self._watch_liveness()
            # the first call picks the first pull's time-out; afterwards it is the syncing one
            discovering = self._adaptive and not self._discovered
            self._start_sweeping()
            if discovering:
                self._discovered = True
                alone = not await self._channel.discover_peers()
                self._set_request_timeout(ALONE_REQUEST_TIMEOUT if alone else JOIN_REQUEST_TIMEOUT)
                if not alone and answers_hello and self._snapshots is not None:
                    await self._join_from_snapshot()
            if answers_hello:
                self._channel.answers_hello = True
            try:
                return await call()
            finally:
                if discovering:
                    self._set_request_timeout(SYNCING_REQUEST_TIMEOUT)
        finally:
            _OPENED_CALL.reset(token)

    async def start_sync(self, initial_content: Any = None) -> ChannelSynchronizer:
        await self._opened(
            lambda: super(ChannelSynchronizer, self).start_sync(initial_content), True
        )
        return self

    async def load(self, initial_content: Any = None) -> ChannelSynchronizer:
        await self._opened(lambda: super(ChannelSynchronizer, self).load(initial_content), False)
        return self

    async def save(self) -> ChannelSynchronizer:
        await self._opened(lambda: super(ChannelSynchronizer, self).save(), False)
        return self

    async def start_auto_load(self, initial_content: Any = None) -> ChannelSynchronizer:
        await self._opened(
            lambda: super(ChannelSynchronizer, self).start_auto_load(initial_content), False
        )
        return self

    async def start_auto_save(self) -> ChannelSynchronizer:
        await self._opened(lambda: super(ChannelSynchronizer, self).start_auto_save(), True)
        return self

    def _watch_liveness(self) -> None:
        """Every LIVENESS_CHECK_SECONDS, drop peers that owe us answers but have died.

        A peer killed by SIGKILL says no goodbye; without this check a joiner would wait for
        the whole join time-out. Only peers that have owed an answer for a while are checked:
        on local channels by their presence files (a few system calls each, see
        :mod:`localsync.channel.presence`), elsewhere by a probe they must answer (see
        :meth:`~localsync.channel.endpoint.ChannelEndpoint.peer_alive`).
        """
        if self._liveness is not None:
            return
        engine = self._engine
        peer_left = self.peer_left
        loop = asyncio.get_running_loop()
        transport = self._channel

        def check() -> None:
            self._liveness = None
            if not transport.is_open or engine.destroyed:
                return
            for client_id in engine.awaited_peers(LIVENESS_CHECK_SECONDS):
                if not transport.peer_alive(client_id):
                    peer_left(client_id)
            self._liveness = loop.call_later(LIVENESS_CHECK_SECONDS, check)

        self._liveness = loop.call_later(LIVENESS_CHECK_SECONDS, check)

    # -- shared-memory snapshots (localsync.channel.snapshot) ---------------------------------

    def _sweep(self) -> None:
        """Remove segments of owners that have exited, and count them."""
        removed = snapshot.sweep()
        if removed:
            self._channel.stats["snapshot_segments_swept"] += removed

    def _start_sweeping(self) -> None:
        """Sweep now and every SWEEP_SECONDS while the channel is open; drop the cached
        segment once nobody asked for it during KEEP_SECONDS."""
        if self._snapshots is None or self._sweeper is not None:
            return
        loop = asyncio.get_running_loop()
        server = self._snapshots
        transport = self._channel

        def turn() -> None:
            self._sweeper = None
            if not transport.is_open:
                server.close()
                return
            self._sweep()
            if loop.time() - server.last_used >= snapshot.KEEP_SECONDS:
                server.close()
            self._sweeper = loop.call_later(snapshot.SWEEP_SECONDS, turn)

        self._sweep()
        self._sweeper = loop.call_later(snapshot.SWEEP_SECONDS, turn)

    def _peer_left_sweep(self, client_id: str) -> None:
        self.peer_left(client_id)
        self._sweep()

    def _offer_snapshot(self, asker: str) -> bytes | None:
        """Answer a joiner: an encoded offer, a refusal (b""), or None when ``asker`` already
        got this content version."""
        server = self._snapshots
        stats = self._channel.stats
        if server is None or not self._engine.syncing or self._engine.destroyed:
            stats["snapshots_refused"] += 1
            return b""
        loop = asyncio.get_running_loop()
        try:
            offer = server.offer(asker, loop.time())
            loop.call_soon(server.after_offer)  # (once the offer is sent)
        except (OSError, ValueError) as error:
            stats["snapshots_refused"] += 1
            self._report(error)
            return b""
        if offer is None:
            stats["snapshots_refused"] += 1
            return None
        stats["snapshots_served"] += 1
        return offer.encode()

    def _snapshot_source(self) -> str | None:
        """The peer to ask: the coordinator when the channel has one, else the first peer
        that answered our hello."""
        paths = getattr(self._channel, "paths", None)
        if paths is not None:
            from localsync.channel.coordinator import coordinator_client_id

            coordinator = coordinator_client_id(paths)
            if coordinator is not None and coordinator != self.client_id:
                return coordinator
        return self._channel.first_answerer

    async def _join_from_snapshot(self) -> None:
        """Install a peer's snapshot into our empty store; any failure is counted in
        ``snapshot_fallbacks`` and leaves the joining to the normal exchange."""
        store = self._store
        if list(store.get_mergeable_content_hashes()) != [0, 0]:
            return
        source = self._snapshot_source()
        if source is None:
            return
        channel = self._channel
        stats = channel.stats
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def on_offer(data: bytes) -> None:
            if answer.done():
                channel.stats["ignored"] += 1
            else:
                answer.set_result(data)

        channel.on_snapshot_offer = on_offer
        try:
            channel.ask_snapshot(source)
            data = await asyncio.wait_for(answer, SNAPSHOT_OFFER_SECONDS)
            if not data:  # refused (snapshots off there, ...): counted, not an error
                stats["snapshot_fallbacks"] += 1
                return
            offer = snapshot.Offer.decode(data)
            self._sweep()
            with paused:
                # decoded, installed and freed without the collector: its first run after
                # the pause would otherwise walk all the decoded temporaries
                content = snapshot.read_snapshot(offer)
                store.set_encoded_mergeable_content(content)
                del content
            if list(store.get_mergeable_content_hashes()) != [offer.tables_hash, offer.values_hash]:
                raise ValueError("the installed snapshot does not hash as offered")
        except Exception as error:  # (any failure: the normal exchange joins)
            stats["snapshot_fallbacks"] += 1
            self._report(error)
            return
        finally:
            if channel.on_snapshot_offer is on_offer:
                channel.on_snapshot_offer = None
        stats["snapshot_joins"] += 1

    def _reconnected(self) -> None:
        """After the transport lost its connection and got it back: resync at once."""
        if self._engine.syncing and not self._engine.destroyed:
            self._spawn(self._resync())

    async def _resync(self) -> None:
        """Pull what peers have, then announce our hashes (peers pull what they miss)."""
        await self.load()
        if self._engine.syncing and not self._engine.destroyed:
            await self.save()

    def _set_request_timeout(self, seconds: float) -> None:
        self._engine.request_timeout_seconds = seconds

    async def stop_sync(self) -> ChannelSynchronizer:
        self._channel.answers_hello = False
        if self._snapshots is not None:
            self._snapshots.close()
        await super().stop_sync()
        return self

    async def destroy(self) -> ChannelSynchronizer:
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._snapshots is not None:
            self._snapshots.close()
        try:
            await super().destroy()
        finally:
            self._channel.close()
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
        await self._channel.open()
        if self._ack_event is None:
            self._ack_event = asyncio.Event()
            self._channel.watch_acks(self._on_ack)
        store = self._store
        seen: set[tuple[int, int]] = set()
        seen_lock = threading.Lock()
        lock = store.lock

        def record(_store: object = None) -> None:
            # runs after each transaction, on whichever thread made it
            with lock:
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


def check_hub(hub: str) -> None:
    """Raise ``ValueError`` unless ``hub`` is a ``tcp://HOST:PORT`` hub address or NATS server
    URLs (``nats://HOST:PORT``, several separated by commas)."""
    if is_nats_hub(hub):
        nats_options(hub)
    else:
        from localsync.channel.hub import tcp_endpoints

        tcp_endpoints(hub)


def create_channel_synchronizer(
    store: SyncStore,
    name: str,
    on_send: Callable[..., None] | None = None,
    on_receive: Callable[..., None] | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    hub: str | Sequence[str] | Mapping[str, Any] | NatsOptions | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    request_timeout_seconds: float | None = None,
    anti_entropy_seconds: float | None = 1.0,
    hwm: int = DEFAULT_HWM,
    connect_timeout_seconds: float = 5.0,
    hub_key: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    snapshots: bool = True,
) -> ChannelSynchronizer:
    """Synchronize ``store`` with every process that opens channel ``name`` (see module doc)."""
    if not callable(getattr(store, "get_mergeable_content_hashes", None)):
        raise TypeError("create_channel_synchronizer needs a MergeableStore")
    transport: ChannelEndpoint
    if hub is not None and is_nats_hub(hub):
        if runtime_dir is not None or hub_key is not None or client_key is not None:
            raise ValueError("runtime_dir, hub_key and client_key do not apply to a NATS channel")
        transport = NatsTransport(
            name,
            hub,
            connect_timeout_seconds=connect_timeout_seconds,
            on_ignored_error=on_ignored_error,
        )
    elif hub is not None and not isinstance(hub, str):
        raise ValueError(f"hub must be a tcp:// or nats:// address, got {hub!r}")
    else:
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
    return ChannelSynchronizer(
        store,
        transport,
        ALONE_REQUEST_TIMEOUT if request_timeout_seconds is None else request_timeout_seconds,
        on_send=on_send,
        on_receive=on_receive,
        on_ignored_error=on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
        adaptive_timeout=request_timeout_seconds is None,
        snapshots=snapshots,
    )
