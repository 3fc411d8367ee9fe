"""The channel's ZeroMQ transport: one participant's PUB/SUB sockets, addressing and hub path.

Wire format: multipart ``[topic, payload]``. Topics: ``b"C" + client_id`` (16-character ids,
so a 17-byte subscription matches exactly one recipient), ``b"*" + client_id`` for the
sender's broadcasts, ``b"A"`` a coordinator's acknowledgements. Each SUB subscribes to its
own topic and to every *other* broadcast topic (:func:`others_broadcast_prefixes`), so the
hub never hands a process its own broadcasts, as a BroadcastChannel never delivers to its
sender; subscriptions travel without a high-water mark (one dropped would silence a peer
for good). Payloads, presence control messages and acknowledgements are those of
:mod:`localsync.channel.endpoint`; this transport adds two control kinds, the path-proving
ping and the hub heartbeat.

Receiving uses ``loop.add_reader`` on the SUB socket's file descriptor and drains it
synchronously (one loop wake-up handles a whole burst); it needs an event loop with
``add_reader`` (the default selector loop on Unix; uvloop works too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import struct
from collections.abc import Callable
from typing import Any, cast

import zmq

from localsync.channel.endpoint import (
    CLIENT_ID_LENGTH,
    CONTROL,
    FLUSH_ON_CLOSE_SECONDS,
    ID_ALPHABET,
    ChannelEndpoint,
    Receive,
    new_client_id,
)
from localsync.channel.hub import (
    DEFAULT_HWM,
    HUB_HEARTBEAT_SECONDS,
    HUB_TIMEOUT_SECONDS,
    LocalHub,
    load_public_key,
    load_secret_key,
    tcp_endpoints,
)
from localsync.channel.presence import Presence, is_alive, sweep
from localsync.channel.runtime import ChannelPaths, channel_paths, validate_channel_name
from localsync.errors import ChannelError

__all__ = [
    "ChannelTransport",
    "Receive",
    "broadcast_topic",
    "new_client_id",
    "others_broadcast_prefixes",
]

BROADCAST = b"*"
ACK_TOPIC = b"A"
CLIENT_PREFIX = b"C"
_ID_BYTES = ID_ALPHABET.encode()
_PING = b"\x00P"
_BEAT = b"\x00K"  # heartbeat to our own topic: the hub answers (see localsync.channel.hub)
#: libzmq monitor events watched on a tcp participant's SUB socket while its path is proven,
#: to say why a hub did not answer (see ChannelTransport._why_no_hub)
_HANDSHAKE_EVENTS = int(
    zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

# plain ints: combining pyzmq's Flag enums costs more per message than the send itself
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

# pyzmq's Socket.send is a Python wrapper (routing ids, groups) around the backend's; the
# channel uses neither, and the wrapper's frame is on the path of every message sent
_send = zmq.backend.Socket.send


def broadcast_topic(client_id: str) -> bytes:
    """The topic of ``client_id``'s broadcasts."""
    return BROADCAST + client_id.encode()


def others_broadcast_prefixes(client_id: str) -> list[bytes]:
    """Prefixes that match every broadcast topic but ``client_id``'s own (see the module doc).

    Another id first differs from ours at some character; its topic matches exactly the
    prefix that is our topic up to there followed by its character, and ours matches none.
    """
    own = broadcast_topic(client_id)
    return [
        own[:position] + bytes([char])
        for position in range(1, len(own))
        for char in _ID_BYTES
        if char != own[position]
    ]


class ChannelTransport(ChannelEndpoint):
    """PUB/SUB plumbing for one participant: addressing, path proving, hub election.

    ``send`` and the receive callback run on the event loop thread that called :meth:`open`.
    """

    def __init__(
        self,
        name: str,
        *,
        hub: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        hwm: int = DEFAULT_HWM,
        connect_timeout_seconds: float = 5.0,
        on_ignored_error: Callable[[BaseException], None] | None = None,
        client_id: str | None = None,
        hub_key: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(hwm, int) or hwm < 0:
            raise ValueError(f"hwm must be a non-negative int, got {hwm!r}")
        super().__init__(validate_channel_name(name), client_id, on_ignored_error)
        self._own_topic = CLIENT_PREFIX + self._id_bytes
        self._broadcast_topic = broadcast_topic(self.client_id)
        self._hwm = hwm
        self._connect_timeout = connect_timeout_seconds
        self.local_hub: LocalHub | None = None
        self._paths: ChannelPaths | None
        if hub is None:
            paths = channel_paths(name, runtime_dir)
            self._paths = paths
            self.inbound, self.outbound = paths.inbound_endpoint, paths.outbound_endpoint
        else:
            self._paths = None
            self.inbound, self.outbound = tcp_endpoints(hub)
        # CURVE (tcp hubs started with --secret-key): (hub public, our public, our secret)
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if hub_key is not None:
            if hub is None:
                raise ValueError("hub_key is for tcp:// hubs; a local channel needs no keys")
            server = load_public_key(hub_key)
            if client_key is not None:
                public, secret = load_secret_key(client_key)
            else:
                public, secret = zmq.curve_keypair()  # a throw-away pair
            self._curve = (server, public, secret)
        elif client_key is not None:
            raise ValueError("client_key needs hub_key (the hub's public key)")
        self._presence: Presence | None = None
        self._pub: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ping_waiter: tuple[bytes, asyncio.Future[None]] | None = None
        # hub liveness (see localsync.channel.hub): heartbeat echoes heard, heartbeat turns without
        # hearing anything from the hub, the generation connected to
        self._generation = 0
        self._beats_heard = 0
        self._silent_turns = 0
        self._heard_at_last_turn = (0, 0)
        self._heartbeat: asyncio.TimerHandle | None = None
        # tcp hubs: libzmq's monitor of the SUB socket while the path is proven
        self._handshakes: zmq.Socket | None = None
        self._handshake_events: dict[int, int] = {}
        # hub_answering: False while the hub has not answered for HUB_TIMEOUT_SECONDS (tcp
        # hubs; a local channel elects a new hub generation instead)
        self.stats.update(hub_generation=0, hub_failovers=0)

    @property
    def has_presence(self) -> bool:  # type: ignore[override]
        """Local channels: peers' liveness is read from their presence files."""
        return self._paths is not None

    @property
    def paths(self) -> ChannelPaths | None:
        """The local channel's files (None for a tcp hub)."""
        return self._paths

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._paths is not None:
            sweep(self._paths.peers)
            self._presence = Presence(self._paths.peers, self.client_id)
            self._generation = self._paths.read_generation()
            self.stats["hub_generation"] = self._generation
            current = self._paths.at_generation(self._generation)
            self.inbound, self.outbound = current.inbound_endpoint, current.outbound_endpoint
            self.local_hub = LocalHub(self._paths, hwm=self._hwm, generation=self._generation)
            self.local_hub.start()
        context: zmq.Context[Any] = zmq.Context.instance()
        self._pub = pub = context.socket(zmq.PUB)
        self._sub = sub = context.socket(zmq.SUB)
        try:
            for sock in (pub, sub):
                sock.linger = 500
                sock.reconnect_ivl = 20
                sock.reconnect_ivl_max = 200
                if self._curve is not None:
                    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
            # data direction only; subscriptions (SUB -> hub -> PUB) get no mark (module doc):
            # a PUB with one would hold back the rest of the hub's burst until it is used, and
            # send its first messages knowing only some of the listeners
            pub.sndhwm = self._hwm
            sub.rcvhwm = self._hwm
            sub.sndhwm = 0
            pub.rcvhwm = 0
            if self._paths is None:
                # before connecting, so that no handshake goes unseen (closed once proven)
                self._handshakes = sub.get_monitor_socket(_HANDSHAKE_EVENTS)
            pub.connect(self.inbound)
            sub.connect(self.outbound)
            # own topic last: the XPUB applies one SUB's subscriptions in order, so the ping
            # that proves the path (own topic) also proves that the broadcast ones are in place
            for prefix in others_broadcast_prefixes(self.client_id):
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            sub.setsockopt(zmq.SUBSCRIBE, self._own_topic)
            self._loop.add_reader(cast(int, sub.getsockopt(zmq.FD)), self._on_readable)
            self._loop.call_soon(self._on_readable)
            await self._prove_path()
        except BaseException:
            self.close()  # (stops watching the handshakes first)
            raise
        self._stop_watching_handshakes()
        self._heartbeat = self._loop.call_later(HUB_HEARTBEAT_SECONDS, self._beat)

    async def _prove_path(self) -> None:
        assert self._loop is not None
        started = self._loop.time()
        deadline = started + self._connect_timeout
        extended = False
        while self._paths is not None:
            # a local hub that does not answer within HUB_TIMEOUT_SECONDS may be frozen:
            # follow a newer generation, or elect one (see localsync.channel.hub)
            if await self._ping_self(min(deadline, self._loop.time() + HUB_TIMEOUT_SECONDS)):
                return
            if self._loop.time() >= deadline or self._closed:
                break
            self._switch_generation(max(self._paths.read_generation(), self._generation + 1))
            if not extended:
                # the hub may only have been slow (a loaded machine): the generation elected
                # now gets a whole connect timeout of its own, once
                deadline = max(deadline, self._loop.time() + self._connect_timeout)
                extended = True
        while self._handshakes is not None:  # (tcp): collect handshake events meanwhile
            if await self._ping_self(min(deadline, self._loop.time() + 0.25)):
                return
            self._read_handshake_events()
            if self._loop.time() >= deadline or self._closed or self._handshake_refused():
                break
        refused = self._handshakes is not None and self._handshake_refused()
        if refused or not await self._ping_self(deadline):
            self._read_handshake_events()
            if refused:
                raise ChannelError(f"cannot join through {self.outbound}: {self._why_no_hub()}")
            raise ChannelError(
                f"no channel hub answered at {self.outbound} within "
                f"{self._loop.time() - started:.0f} s: {self._why_no_hub()}"
            )

    def _read_handshake_events(self) -> None:
        """Record the monitor events that arrived (event -> its last value)."""
        monitor = self._handshakes
        while monitor is not None:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2 and len(frames[0]) == 6:  # (event: u16, value: u32)
                event, value = struct.unpack("=HI", frames[0])
                self._handshake_events[event] = value

    def _stop_watching_handshakes(self) -> None:
        """Stop libzmq's monitor of the SUB socket, then close our end of it.

        Must run while the SUB socket is open: libzmq sends monitor events with a blocking send
        from its I/O thread, so an event of a closing SUB socket (a disconnect) sent after our
        end is gone blocks that thread for good, and with it every socket of the process's
        shared context.
        """
        monitor, self._handshakes = self._handshakes, None
        if monitor is not None:
            assert self._sub is not None and not self._sub.closed, "monitor outlived its socket"
            self._sub.disable_monitor()
            monitor.close(0)

    def _handshake_refused(self) -> bool:
        """The hub answered the handshake with a refusal (its key check, or a mechanism
        mismatch): waiting longer cannot help, so the path proof gives up at once."""
        seen = self._handshake_events
        return int(zmq.EVENT_HANDSHAKE_FAILED_AUTH) in seen or seen.get(
            int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        ) == int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)

    def _why_no_hub(self) -> str:
        """The likely cause of a failed path proof, from the handshake events seen (tcp)."""
        if self._paths is not None:
            return "the local hub did not forward our messages (is the machine overloaded?)"
        seen = self._handshake_events
        where = f"the hub at {self.outbound}"
        if int(zmq.EVENT_HANDSHAKE_FAILED_AUTH) in seen:
            status = seen[int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)]
            return (
                f"{where} refused this client's key (CURVE authentication failed, status "
                f"{status}): check that client_key is a .key_secret whose public .key file "
                "is in the hub's --allow folder"
            )
        protocol = seen.get(int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
        if protocol == int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
            if self._curve is None:
                return (
                    f"{where} requires CURVE keys: give hub_key (the hub's public key) "
                    "and, if the hub has an --allow list, client_key"
                )
            return (
                f"{where} does not use CURVE keys (started without --secret-key), "
                "but hub_key was given"
            )
        if protocol is not None:
            return (
                f"{where} failed the handshake (ZMTP protocol error {protocol:#x}): "
                "check that hub_key is the hub's public key"
            )
        connected = int(zmq.EVENT_CONNECTED) in seen
        succeeded = int(zmq.EVENT_HANDSHAKE_SUCCEEDED) in seen
        dropped = seen.keys() & {
            int(zmq.EVENT_DISCONNECTED),
            int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL),
        }
        if connected and dropped and self._curve is not None and not succeeded:
            return (
                f"{where} accepted connections but dropped them during the CURVE handshake: "
                "hub_key is probably not the hub's public key (a hub cannot read a "
                "handshake made for another key)"
            )
        if not connected:
            return (
                f"nothing accepts connections at {self.outbound}: is `localsync hub --bind "
                f"{self.inbound}` running there, and reachable?"
            )
        if not succeeded:
            return f"{where} accepted a connection but its handshake did not finish"
        return (
            f"{where} accepted connections but our messages did not come back through it "
            f"(is it a localsync hub? publishers use {self.inbound}, subscribers "
            f"{self.outbound}; check that hub_key and client_key match its --secret-key "
            "and --allow)"
        )

    async def _ping_self(self, deadline: float) -> bool:
        """Send pings to our own topic until one comes back through the hub (True) or the
        loop's clock passes ``deadline`` (False)."""
        assert self._loop is not None
        nonce = secrets.token_bytes(8)
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._ping_waiter = (nonce, waiter)
        # a ping sent before our subscription reached the hub is lost: the first ones follow
        # each other closely (a local hub answers within a millisecond), then every 20 ms
        interval = 0.001
        try:
            while not waiter.done():
                if self._loop.time() > deadline or self._closed:
                    return False
                self._send_raw(self._own_topic, _PING + nonce)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), interval)
                interval = min(interval * 2, 0.02)
            return True
        finally:
            self._ping_waiter = None

    async def flush_and_close(self) -> None:
        """:meth:`flush` (bounded by ``FLUSH_ON_CLOSE_SECONDS``), then :meth:`close`: how a
        synchronizer's ``destroy`` leaves, after sending what it still had queued."""
        try:
            if await self.flush() and self.local_hub is not None:
                # the hub is ours and leaves with us: wait until a peer has answered a hello
                # sent after our messages, so that one holds them too (its answer follows
                # everything we sent it through the same proxy); no answer within
                # DISCOVERY_SECONDS: nobody is there, or nobody could answer, and the proxy
                # has had that long to pass our messages on
                await self.discover_peers()
        finally:
            self.close()

    async def flush(self, timeout: float = FLUSH_ON_CLOSE_SECONDS) -> bool:
        """Wait until everything sent so far is at the hub: True when a ping sent after it
        came back through the hub within ``timeout`` seconds.

        Why: ZeroMQ writes from its I/O thread, which pyzmq does not wait for at exit, so a
        process that wrote and exited at once could lose its last changes. The hub receives
        each publisher's messages in order, so the ping's return proves that it holds the
        earlier ones; when we host the hub, :meth:`flush_and_close` also waits for a peer.
        """
        if self._pub is None or self._closed or self._loop is None:
            return False
        if self._ping_waiter is not None:  # (the path is still being proved)
            return False
        return await self._ping_self(self._loop.time() + timeout)

    # -- hub liveness ---------------------------------------------------------------------

    def _beat(self) -> None:
        """One heartbeat turn (every HUB_HEARTBEAT_SECONDS, on the loop; see localsync.channel.hub).

        Reads what already arrived first, so that a loop that was busy does not take its own
        backlog for silence; anything heard from the hub since the last turn counts.
        """
        self._heartbeat = None
        if self._closed or self._pub is None or self._loop is None:
            return
        self._on_readable()
        if self._closed:
            return
        heard = (self._beats_heard, self.stats["received"])
        if heard != self._heard_at_last_turn:
            self._heard_at_last_turn = heard
            self._silent_turns = 0
            self.hub_answering = True
        else:
            self._silent_turns += 1
        paths = self._paths
        if paths is not None:
            newest = paths.read_generation()
            if newest > self._generation:
                self._switch_generation(newest)
            elif self._silent_turns * HUB_HEARTBEAT_SECONDS >= HUB_TIMEOUT_SECONDS:
                self._switch_generation(self._generation + 1)
            elif newest < self._generation and self.local_hub and self.local_hub.is_host:
                paths.publish_generation(self._generation)  # (a racing publisher's older one)
        elif self._silent_turns * HUB_HEARTBEAT_SECONDS >= HUB_TIMEOUT_SECONDS:
            self.hub_answering = False
        with contextlib.suppress(ChannelError, zmq.ZMQError):
            self._send_raw(self._own_topic, _BEAT)
        self._heartbeat = self._loop.call_later(HUB_HEARTBEAT_SECONDS, self._beat)

    def _switch_generation(self, generation: int) -> None:
        """Reconnect to hub ``generation``'s sockets and have our hub compete for it."""
        assert self._paths is not None
        try:
            target = self._paths.at_generation(generation)
        except ValueError as error:  # (beyond MAX_GENERATION)
            self._ignore(error)
            return
        old_inbound, old_outbound = self.inbound, self.outbound
        self._generation = generation
        self.stats["hub_generation"] = generation
        self.stats["hub_failovers"] += 1
        self._silent_turns = 0
        self.inbound, self.outbound = target.inbound_endpoint, target.outbound_endpoint
        if self.local_hub is not None:
            self.local_hub.follow(generation)
        pub, sub = self._pub, self._sub
        if pub is None or sub is None or self._closed:
            return
        for sock, old, new in (
            (pub, old_inbound, self.inbound),
            (sub, old_outbound, self.outbound),
        ):
            with contextlib.suppress(zmq.ZMQError):
                sock.disconnect(old)
            sock.connect(new)

    def close(self) -> None:
        """Close the sockets and leave the hub election (a peer takes over a hosted hub)."""
        if self._closed:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._pub is not None and self._opening is not None and self._opening.done():
            self._say_goodbye()
        self._closed = True
        self._stop_watching_handshakes()
        if self._sub is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(cast(int, self._sub.getsockopt(zmq.FD)))
            self._sub.close(0)
        if self._pub is not None:
            self._pub.close()  # linger: let the last messages out
        if self.local_hub is not None:
            self.local_hub.stop()
        if self._presence is not None:
            self._presence.close()
        self._receive = None
        self.on_peer_left = None
        self.on_reconnected = None
        self.on_snapshot_ask = None
        self.on_snapshot_offer = None

    def peer_alive(self, client_id: str) -> bool:
        """False only when ``client_id`` is known to be gone: on a local channel at once when
        its presence lock is released (it exited, even by SIGKILL), and, as on tcp hubs, when
        it leaves a probe unanswered (a frozen process keeps its lock; see
        ChannelEndpoint.peer_alive)."""
        if (
            self._paths is not None
            and len(client_id) == CLIENT_ID_LENGTH
            and not is_alive(self._paths.peers, client_id)
        ):
            return False
        return super().peer_alive(client_id)

    # -- sending --------------------------------------------------------------------------

    def _send_raw(self, topic: bytes, payload: bytes) -> None:
        if self._pub is None or self._closed:
            raise ChannelError("channel transport is not open")
        # PUB never blocks: at the high-water mark the message is dropped (healed by
        # anti-entropy)
        pub = self._pub
        _send(pub, topic, _MORE)  # (the backend's send: see _send)
        _send(pub, payload, _NOBLOCK)

    def _send_payload(self, to_client_id: str | None, payload: bytes) -> None:
        if to_client_id is None:
            self._send_raw(self._broadcast_topic, payload)
        else:
            self._send_raw(CLIENT_PREFIX + to_client_id.encode(), payload)

    def _send_ack_payload(self, payload: bytes) -> None:
        self._send_raw(ACK_TOPIC, payload)

    # -- receiving ------------------------------------------------------------------------

    def _subscribe_acks(self) -> None:
        if self._sub is not None and not self._closed:
            self._sub.setsockopt(zmq.SUBSCRIBE, ACK_TOPIC)
            if self._loop is not None:
                self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        sub = self._sub
        if sub is None or self._closed:
            return
        # Frames are received uncopied; ZMQ_EVENTS ends every wake-up, as libzmq documents
        # for its edge-triggered descriptor. After a first message it is asked at once, so a
        # lone message costs no raised ``zmq.Again``; a burst is read until EAGAIN
        # (docs/design.md, "The receive loop"; docs/performance.md, "The channel's transport").
        recv = sub.recv
        handled = 0
        while True:
            try:
                topic = recv(_NOBLOCK, False)
                frames = 1
                payload = None
                if topic.more:
                    payload = recv(_NOBLOCK, False)
                    frames = 2
                    more = payload.more
                    while more:  # (frames of one message arrive together)
                        more = recv(_NOBLOCK, False).more
                        frames += 1
            except zmq.Again:
                if sub.get(_EVENTS) & _POLLIN:  # type: ignore[operator]  # (an int)
                    continue
                break
            if payload is not None and frames == 2:
                self._dispatch(topic.bytes, payload.bytes)
            else:
                self._ignore(ValueError(f"channel message with {frames} frames"))
            if self._closed:
                return
            handled += 1
            if handled == 1 and not sub.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
                break
            if handled >= 2000:  # let other tasks run; come back for the rest
                assert self._loop is not None
                self._loop.call_soon(self._on_readable)
                return

    def _dispatch(self, topic: bytes, payload: bytes) -> None:
        if payload[:1] == CONTROL:
            kind = payload[:2]
            if kind == _PING:
                waiter = self._ping_waiter
                if (
                    topic == self._own_topic
                    and waiter is not None
                    and payload == _PING + waiter[0]
                    and not waiter[1].done()
                ):
                    waiter[1].set_result(None)
            elif kind == _BEAT:
                if topic == self._own_topic:
                    self._beats_heard += 1
            else:
                self._on_control(payload, topic == self._own_topic, topic[:1] == BROADCAST)
            return
        if topic == ACK_TOPIC:
            self._on_ack_payload(payload)
            return
        self._on_data(payload)
