"""The channel over NATS: ``create_channel_synchronizer(store, name, hub="nats://HOST:4222")``.

One NATS connection per participant (``nats-py``, imported only when such a channel opens),
or one connection shared by several (``NatsOptions(connection=...)``). Subjects, where
``TOKEN`` is the channel name escaped by :func:`subject_token`:

``localsync.TOKEN.all``
    broadcasts; every participant subscribes. The connection is opened with ``no_echo``, so
    the server never hands a participant its own broadcasts (as a BroadcastChannel never
    delivers to its sender).
``localsync.TOKEN.to.CLIENT_ID``
    messages directed to one participant (16-character client ids of ``[A-Za-z0-9_-]``, valid
    subject tokens as they are).
``localsync.TOKEN.ack``
    a coordinator's acknowledgements of durably saved content hashes.

Payloads are those of every channel (:mod:`localsync.channel.endpoint`: msgspec msgpack, the
same bytes as on the ipc channel). A payload larger than the server's ``max_payload`` (1 MiB by
default) travels as chunks: control payloads ``b"\\x00F"`` + sender id (16 bytes) + message
number, chunk index and chunk count (three big-endian u32) + a slice; the receiver rebuilds
the message from consecutive chunks of one sender and drops an incomplete one (anti-entropy
sends it again). Anything on these subjects that is neither is ignored and counted
(``stats["ignored"]``).

Path proving: connecting (nats-py tries every URL given, over and over) and a PING/PONG
round-trip after subscribing must both finish within ``connect_timeout_seconds``, or
:class:`~localsync.errors.ChannelError` names the servers and the errors met. After a lost
connection nats-py reconnects (to another node of a cluster when one is given or announced),
re-subscribes and sends what it buffered meanwhile; the transport then calls
``on_reconnected``, with which the synchronizer resyncs by hash exchange. A message lost
meanwhile costs latency, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localsync.channel.endpoint import CONTROL, FLUSH_ON_CLOSE_SECONDS, ChannelEndpoint
from localsync.channel.runtime import validate_channel_name
from localsync.errors import ChannelError
from localsync.sync.event_loop import start_eagerly

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = [
    "NATS_SCHEMES",
    "NatsOptions",
    "NatsTransport",
    "is_nats_hub",
    "nats_options",
    "subject_prefix",
    "subject_token",
]

#: URL schemes nats-py connects with
NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
SUBJECT_ROOT = "localsync"
_CHUNK = b"\x00F"
_CHUNK_HEADER = struct.Struct(">16sIII")
_CHUNK_HEAD = len(_CHUNK) + _CHUNK_HEADER.size
#: a chunked message may not claim more chunks than this (bounds what one sender makes us hold)
MAX_CHUNKS = 1 << 14
#: chunked messages rebuilt at once (one per sender and subject); beyond, the oldest is dropped
MAX_PARTIAL = 64
#: bytes received but not yet handled that a subscription holds before nats-py drops messages
#: (a slow consumer; healed by anti-entropy): room for a joiner's diff of several 10^6 cells
SUB_PENDING_BYTES = 512 << 20
_TOKEN_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# tasks closing connections or subscribing in the background (referenced until done)
_background: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class NatsOptions:
    """Where and how to connect: ``servers`` (one URL or several: nodes of one cluster) and
    ``connect``, keyword arguments for nats-py's ``Client.connect`` (``user``/``password``,
    ``token``, ``user_credentials``, ``nkeys_seed``, ``tls`` an ``ssl.SSLContext``,
    ``tls_hostname``, ``reconnect_time_wait``, ...). The transport sets ``no_echo``, the
    callbacks and ``connect_timeout`` itself.

    ``connection``: instead, an already connected nats-py ``Client`` shared by several
    channels (one connection for many, e.g. a server's rooms). The transport then only
    subscribes and unsubscribes; its owner connects and closes it, and tells each transport
    of a reconnect (:meth:`NatsTransport.reconnected`, from its ``reconnected_cb``). Without
    ``no_echo`` on it, a participant's own messages come back and are dropped (counted in
    ``own_dropped``)."""

    servers: str | Sequence[str] = ()
    connect: Mapping[str, Any] = field(default_factory=dict)
    connection: Client | None = None

    def urls(self) -> list[str]:
        """The server URLs as a list."""
        return [self.servers] if isinstance(self.servers, str) else list(self.servers)


def is_nats_hub(hub: object) -> bool:
    """True when ``hub`` names NATS servers: a ``nats://``/``tls://``/``ws(s)://`` URL, a list of
    them, a :class:`NatsOptions` or a dict with a ``"servers"`` key."""
    if isinstance(hub, NatsOptions):
        return True
    if isinstance(hub, str):
        return hub.startswith(NATS_SCHEMES)
    if isinstance(hub, Mapping):
        return "servers" in hub
    if isinstance(hub, Sequence) and hub:
        return all(isinstance(url, str) and url.startswith(NATS_SCHEMES) for url in hub)
    return False


def nats_options(hub: str | Sequence[str] | Mapping[str, Any] | NatsOptions) -> NatsOptions:
    """``hub`` (see :func:`is_nats_hub`) as a :class:`NatsOptions`; a dict's ``"servers"`` is
    the servers, its other keys the connect options. Raises ``ValueError`` for anything else,
    and for a string of comma-separated URLs it splits them (the CLI's form)."""
    if isinstance(hub, NatsOptions):
        options = hub
    elif isinstance(hub, Mapping):
        rest = {key: value for key, value in hub.items() if key != "servers"}
        options = NatsOptions(hub["servers"], rest)
    elif isinstance(hub, str):
        options = NatsOptions([url.strip() for url in hub.split(",") if url.strip()])
    else:
        options = NatsOptions(list(hub))
    urls = options.urls()
    if options.connection is not None and not urls:
        return options
    if not urls or not all(isinstance(u, str) and u.startswith(NATS_SCHEMES) for u in urls):
        raise ValueError(f"not NATS server URLs (nats://HOST:PORT, tls://...): {hub!r}")
    return options


def subject_token(name: str) -> str:
    """``name`` as one NATS subject token: ``[A-Za-z0-9_-]`` kept, every other character's
    UTF-8 bytes as ``%XX`` (so ``.``, ``*``, ``>`` and spaces cannot change the subject, and
    two names never share a token)."""
    return "".join(
        char if char in _TOKEN_SAFE else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in name
    )


def subject_prefix(name: str) -> str:
    """``localsync.TOKEN``: the prefix of every subject of channel ``name``."""
    return f"{SUBJECT_ROOT}.{subject_token(validate_channel_name(name))}"


class NatsTransport(ChannelEndpoint):
    """One participant's NATS connection, subscriptions and addressing (see the module doc).

    ``send`` never blocks: messages are published in order, at once into nats-py's buffer
    when it has room (no loop turn between a send and its publish), else queued and published
    by one task.
    """

    def __init__(
        self,
        name: str,
        hub: str | Sequence[str] | Mapping[str, Any] | NatsOptions,
        *,
        connect_timeout_seconds: float = 5.0,
        on_ignored_error: Callable[[BaseException], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        super().__init__(validate_channel_name(name), client_id, on_ignored_error)
        self.options = nats_options(hub)
        self.servers = self.options.urls()
        if not connect_timeout_seconds > 0:
            raise ValueError("connect_timeout_seconds must be positive")
        self._connect_timeout = connect_timeout_seconds
        prefix = subject_prefix(name)
        self.broadcast_subject = f"{prefix}.all"
        self.directed_prefix = f"{prefix}.to."
        self.own_subject = self.directed_prefix + self.client_id
        self.ack_subject = f"{prefix}.ack"
        self._nc: Client | None = None
        self._subscriptions: list[Subscription] = []
        self._outbox: list[tuple[str, bytes]] = []
        # the publishing run: in the sender's turn, and on as ``_pump`` only if nats-py made
        # it wait (its buffer full while reconnecting)
        self._pumping = False
        self._pump: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._acks_subscribed = False
        self._chunk_size = 0
        self._chunks_sent = 0
        # (sender id, subject kind) -> (message number, count, parts received so far)
        self._partial: dict[tuple[bytes, bool], tuple[int, int, list[bytes]]] = {}
        self._last_error: BaseException | None = None
        # distinct errors met while connecting, oldest first (the first is often the cause:
        # a refused authorization is followed by the server closing the connection)
        self._connect_errors: list[str] = []
        self.stats.update(reconnects=0, disconnects=0, dropped=0, chunked=0)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected_url(self) -> str | None:
        """The URL of the server connected to now (None while disconnected)."""
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return url.geturl() if url is not None else None

    async def _open(self) -> None:
        try:
            from nats.aio.client import Client
        except ImportError as error:  # pragma: no cover (a dependency of the library)
            raise ChannelError(
                "a nats:// channel needs nats-py (a dependency of localsync): pip install nats-py"
            ) from error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        shared = self.options.connection
        nc = Client() if shared is None else shared
        self._nc = nc
        connect: dict[str, Any] = {"reconnect_time_wait": 0.5, "pending_size": 64 << 20}
        connect.update(self.options.connect)
        connect.update(
            servers=self.servers,
            no_echo=True,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            connect_timeout=min(2.0, self._connect_timeout),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            name=f"localsync {self.name[:64]} {self.client_id}",
        )
        try:
            if shared is None:
                await asyncio.wait_for(nc.connect(**connect), self._connect_timeout)
            elif not shared.is_connected:
                raise ChannelError("the shared NATS connection is not connected")
            for subject, callback in (
                (self.broadcast_subject, self._on_broadcast),
                (self.own_subject, self._on_directed),
            ):
                self._subscriptions.append(
                    await nc.subscribe(subject, cb=callback, pending_bytes_limit=SUB_PENDING_BYTES)
                )
            if self._on_ack is not None:
                await self._subscribe_acks_now()
            # the server holds our subscriptions once it answered a PING sent after them
            await nc.flush(timeout=max(0.01, deadline - loop.time()))  # type: ignore[arg-type]
        except BaseException as error:
            self._closed = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(nc), 1.0)
            if isinstance(error, asyncio.CancelledError):
                raise
            causes = self._connect_errors or [_describe(error)]
            raise ChannelError(
                f"no NATS server answered at {', '.join(self.servers)} within "
                f"{self._connect_timeout:g} s: {'; '.join(causes)}"
            ) from error
        # room for our chunk header below the server's limit
        self._chunk_size = max(1024, nc.max_payload - _CHUNK_HEAD - 64)

    async def flush(self, timeout: float = FLUSH_ON_CLOSE_SECONDS) -> bool:
        """Wait until the server holds everything sent so far (True), at most ``timeout`` s."""
        nc = self._nc
        if nc is None or not self.is_open:
            return False
        try:
            async with asyncio.timeout(timeout):
                while self._pump is not None:
                    await asyncio.shield(self._pump)
                await nc.flush(timeout=timeout)  # type: ignore[arg-type]
        except Exception:  # (a time-out, a closed connection)
            return False
        return True

    async def flush_and_close(self) -> None:
        """Send what is queued and a goodbye, wait (bounded) for the server, then close."""
        try:
            if self.is_open:
                self._say_goodbye()
                await self.flush()
        finally:
            self.close()
            closing = self._closing
            if closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(closing), FLUSH_ON_CLOSE_SECONDS)

    def close(self) -> None:
        """Close the connection (in the background when called outside ``flush_and_close``)."""
        if self._closed:
            return
        if self.is_open:
            self._say_goodbye()
        self._closed = True
        self._receive = None
        self.on_peer_left = None
        self.on_reconnected = None
        nc, self._nc = self._nc, None
        if nc is None:
            return
        pump = self._pump

        async def shut() -> None:
            if pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(pump), FLUSH_ON_CLOSE_SECONDS)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(nc), FLUSH_ON_CLOSE_SECONDS)

        try:
            task = asyncio.get_running_loop().create_task(shut())
        except RuntimeError:  # (no loop running: the connection dies with the process)
            return
        self._closing = task
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _release(self, nc: Client) -> None:
        """Close our own connection; on a shared one, only end our subscriptions."""
        if self.options.connection is None:
            await nc.close()
            return
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def reconnected(self) -> None:
        """The connection came back after a loss: resync (see ``on_reconnected``). Called by
        the transport for its own connection; a shared connection's owner calls it."""
        self.stats["reconnects"] += 1
        self.hub_answering = True
        on_reconnected = self.on_reconnected
        if on_reconnected is not None and not self._closed:
            on_reconnected()

    # -- nats-py callbacks ---------------------------------------------------------------------

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        if not self.is_open:
            described = _describe(error)
            if described not in self._connect_errors and len(self._connect_errors) < 4:
                self._connect_errors.append(described)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            self.stats["disconnects"] += 1
            self.hub_answering = False

    async def _on_reconnected(self) -> None:
        self.reconnected()

    # -- sending ------------------------------------------------------------------------------

    def _send_payload(self, to_client_id: str | None, payload: bytes) -> None:
        subject = (
            self.broadcast_subject if to_client_id is None else self.directed_prefix + to_client_id
        )
        self._queue(subject, payload)

    def _send_ack_payload(self, payload: bytes) -> None:
        self._queue(self.ack_subject, payload)

    def _queue(self, subject: str, payload: bytes) -> None:
        if self._closed or self._nc is None:
            raise ChannelError("channel transport is not open")
        size = self._chunk_size
        if size and len(payload) > size:
            self._queue_chunks(subject, payload, size)
        else:
            self._outbox.append((subject, payload))
        if not self._pumping:
            self._pumping = True
            self._pump = start_eagerly(self._publish())

    def _queue_chunks(self, subject: str, payload: bytes, size: int) -> None:
        count = -(-len(payload) // size)
        if count > MAX_CHUNKS:
            self.stats["dropped"] += 1
            self._ignore(ValueError(f"message of {len(payload)} bytes is too large to send"))
            return
        self._chunks_sent += 1
        number = self._chunks_sent & 0xFFFFFFFF
        self.stats["chunked"] += 1
        view = memoryview(payload)
        for index in range(count):
            header = _CHUNK + _CHUNK_HEADER.pack(self._id_bytes, number, index, count)
            self._outbox.append((subject, header + view[index * size : (index + 1) * size]))

    async def _publish(self) -> None:
        """Publish the queued messages in order (one run at a time, see ``send``)."""
        try:
            while self._outbox and self._nc is not None:
                batch, self._outbox = self._outbox, []
                nc = self._nc
                for subject, payload in batch:
                    try:
                        await nc.publish(subject, payload)
                    except Exception as error:  # (buffer full while reconnecting, closed)
                        self.stats["dropped"] += 1
                        self._last_error = error
        finally:
            self._pumping = False
            self._pump = None
            if self._nc is None:
                self._outbox.clear()

    # -- receiving ----------------------------------------------------------------------------

    def _subscribe_acks(self) -> None:
        if self.is_open and not self._acks_subscribed:
            task = asyncio.get_running_loop().create_task(self._subscribe_acks_now())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _subscribe_acks_now(self) -> None:
        if self._acks_subscribed or self._nc is None:
            return
        self._acks_subscribed = True
        self._subscriptions.append(
            await self._nc.subscribe(
                self.ack_subject, cb=self._on_ack_msg, pending_bytes_limit=SUB_PENDING_BYTES
            )
        )

    async def _on_ack_msg(self, msg: Msg) -> None:
        if not self._closed:
            self._on_ack_payload(msg.data)

    async def _on_broadcast(self, msg: Msg) -> None:
        if not self._closed:
            self._on_payload(msg.data, False)

    async def _on_directed(self, msg: Msg) -> None:
        if not self._closed:
            self._on_payload(msg.data, True)

    def _on_payload(self, payload: bytes, to_me: bool) -> None:
        if payload[:1] != CONTROL:
            self._on_data(payload)
        elif payload[:2] == _CHUNK:
            whole = self._on_chunk(payload, to_me)
            if whole is not None and whole[:1] != CONTROL:
                self._on_data(whole)
        else:
            self._on_control(payload, to_me, not to_me)

    def _on_chunk(self, payload: bytes, to_me: bool) -> bytes | None:
        """Add one chunk; the whole message once its last chunk arrived, else None."""
        if len(payload) < _CHUNK_HEAD:
            self._ignore(ValueError("truncated chunk"))
            return None
        sender, number, index, count = _CHUNK_HEADER.unpack_from(payload, len(_CHUNK))
        if sender == self._id_bytes:  # (our own, echoed by a shared connection)
            self.stats["own_dropped"] += 1
            return None
        key = (sender, to_me)
        if not 0 < count <= MAX_CHUNKS or index >= count:
            self._ignore(ValueError(f"invalid chunk {index} of {count}"))
            return None
        partial = self._partial.get(key)
        if index == 0:
            if partial is not None:
                self._ignore(ValueError("incomplete chunked message dropped"))
            partial = (number, count, [])
            if len(self._partial) >= MAX_PARTIAL:
                del self._partial[next(iter(self._partial))]
                self._ignore(ValueError("too many chunked messages at once: oldest dropped"))
            self._partial[key] = partial
        elif partial is None or partial[0] != number or partial[1] != count:
            self._ignore(ValueError("chunk out of sequence dropped"))
            return None
        parts = partial[2]
        if len(parts) != index:
            del self._partial[key]
            self._ignore(ValueError("chunk out of sequence dropped"))
            return None
        parts.append(payload[_CHUNK_HEAD:])
        if len(parts) < count:
            return None
        del self._partial[key]
        return b"".join(parts)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
