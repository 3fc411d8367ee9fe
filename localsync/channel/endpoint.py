"""What every channel transport shares: client ids, the wire codec, presence control messages,
coordinator acknowledgements and the receive path (ZeroMQ: :mod:`localsync.channel.transport`,
NATS: :mod:`localsync.channel.nats`).

Payloads are msgspec msgpack of ``(from_client_id, request_id, message, body)``; a message that
claims to come from ourselves (a replay) is dropped. Control payloads start with a zero byte:
``HELLO`` + client id (broadcast: "is anyone here?"), ``HERE`` + the answerer's client id (the
directed answer), ``BYE`` + client id (broadcast when a participant leaves), ``SNAPSHOT_ASK`` +
client id (directed: "offer me a snapshot", :mod:`localsync.channel.snapshot`) and
``SNAPSHOT_OFFER`` + an encoded :class:`~localsync.channel.snapshot.Offer` (directed; nothing
after the kind: a refusal), ``ALIVE_ASK`` + client id (directed: "are you still there?", see
:meth:`ChannelEndpoint.peer_alive`) and ``ALIVE`` + the answerer's client id (its directed
answer); each transport may add its own kinds.
Acknowledgements are msgpack of ``(from_client_id, tables_hash, values_hash)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

import msgspec

from localsync.core.collector import BIG_MESSAGE, paused
from localsync.errors import ChannelError

__all__ = [
    "CLIENT_ID_LENGTH",
    "ChannelEndpoint",
    "Receive",
    "check_client_id",
    "decode_message",
    "encode_message",
    "new_client_id",
]

CLIENT_ID_LENGTH = 16
ID_ALPHABET = string.ascii_letters + string.digits + "-_"
_ID_SET = frozenset(ID_ALPHABET)
CONTROL = b"\x00"
HELLO = b"\x00H"  # + 16-byte client id, broadcast: "is anyone here?"
HERE = b"\x00h"  # directed answer to a hello
BYE = b"\x00B"  # + 16-byte client id, broadcast when a participant leaves
SNAPSHOT_ASK = b"\x00S"  # + 16-byte client id, directed
SNAPSHOT_OFFER = b"\x00O"  # + encoded offer (none: a refusal), directed
ALIVE_ASK = b"\x00A"  # + 16-byte client id, directed: "are you still there?"
ALIVE = b"\x00a"  # + 16-byte client id, directed answer to ALIVE_ASK
_FROM_HEADER = b"\x94\xb0"  # msgpack: array of 4, then a 16-byte str (our client id)

#: how long the first exchange waits for a hello answer (see ChannelEndpoint.discover_peers)
DISCOVERY_SECONDS = 0.25
#: a peer that leaves a liveness probe unanswered this long is taken for gone (see
#: ChannelEndpoint.peer_alive)
PROBE_TIMEOUT_SECONDS = 10.0
#: destroy waits at most this long for the hub or server to hold what this process sent
#: (see ChannelEndpoint.flush)
FLUSH_ON_CLOSE_SECONDS = 3.0

Receive = Callable[[str, "str | None", int, Any], None]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[str, str | None, int, Any])
_ack_decoder = msgspec.msgpack.Decoder(tuple[str, int, int])


def new_client_id() -> str:
    """A random 16-character id (TinyBase's alphabet); fixed length keeps topics unambiguous."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(CLIENT_ID_LENGTH))


def check_client_id(client_id: str | None) -> str:
    """``client_id``, or a new one when None; raises ``ValueError`` for a malformed id."""
    if client_id is None:
        return new_client_id()
    if (
        not isinstance(client_id, str)
        or len(client_id) != CLIENT_ID_LENGTH
        or not set(client_id) <= _ID_SET
    ):
        raise ValueError(f"client_id must be {CLIENT_ID_LENGTH} characters of {ID_ALPHABET!r}")
    return client_id


def encode_message(from_id: str, request_id: str | None, message: int, body: Any) -> bytes:
    """The wire form of one engine message (see the module doc)."""
    return _encoder.encode((from_id, request_id, message, body))


def decode_message(payload: bytes) -> tuple[str, str | None, int, Any]:
    """Inverse of :func:`encode_message`; raises ``msgspec.DecodeError`` on anything else."""
    return _decoder.decode(payload)


def encode_ack(from_id: str, tables_hash: int, values_hash: int) -> bytes:
    """The wire form of a coordinator's acknowledgement."""
    return _encoder.encode((from_id, tables_hash, values_hash))


class ChannelEndpoint:
    """One participant of a channel, whatever carries its bytes (a base class).

    A subclass provides ``_send_payload(to_client_id | None, payload)`` (None: every other
    participant), ``_send_ack_payload(payload)``, ``_subscribe_acks()``, ``open()``,
    ``flush_and_close()`` and ``close()``, and hands what arrives to :meth:`_on_control`,
    :meth:`_on_ack_payload` and :meth:`_on_data`. ``send`` and the receive callback run on the
    event loop thread that opened the transport.
    """

    #: the hub this participant hosts (local ZeroMQ channels only)
    local_hub: Any = None
    #: True on local channels: peers' presence files tell at once that a process exited (see
    #: :meth:`peer_alive`), and shared-memory snapshots are possible
    has_presence = False

    def __init__(
        self,
        name: str,
        client_id: str | None,
        on_ignored_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.name = name
        self.client_id = check_client_id(client_id)
        self._id_bytes = self.client_id.encode()
        self._on_ignored_error = on_ignored_error
        self._receive: Receive | None = None
        #: called with a peer's client id when it says goodbye
        self.on_peer_left: Callable[[str], None] | None = None
        #: called (on the loop) after the connection came back from a loss: resync
        self.on_reconnected: Callable[[], None] | None = None
        self._on_ack: Callable[[str, int, int], None] | None = None
        self._here_waiter: asyncio.Future[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._closed = False
        # set by the synchronizer once its engine answers GetContentHashes: a hello answer
        # promises that a request for content hashes will be answered
        self.answers_hello = False
        self.peers_answered = 0
        #: the client id of the first peer that answered a hello (None: none yet)
        self.first_answerer: str | None = None
        #: ``(asker_id)`` -> an encoded offer, b"" (a refusal) or None (no answer: a repeated
        #: request); unset: every request is refused
        self.on_snapshot_ask: Callable[[str], bytes | None] | None = None
        #: gets the bytes after SNAPSHOT_OFFER of an offer sent to us
        self.on_snapshot_offer: Callable[[bytes], None] | None = None
        #: False while the hub/server is known not to answer
        self.hub_answering = True
        # peers asked whether they are still there -> when (monotonic), until they answer
        self._probes: dict[str, float] = {}
        self.stats: dict[str, int] = {
            "sent": 0,
            "received": 0,
            "ignored": 0,
            "own_dropped": 0,
            "peers_unanswering": 0,
        }

    # -- for subclasses ---------------------------------------------------------------------

    def _send_payload(self, to_client_id: str | None, payload: bytes) -> None:
        raise NotImplementedError

    def _send_ack_payload(self, payload: bytes) -> None:
        raise NotImplementedError

    def _subscribe_acks(self) -> None:
        raise NotImplementedError

    async def _open(self) -> None:
        """Connect and prove the path (once; see :meth:`open`)."""
        raise NotImplementedError

    async def flush(self, timeout: float = FLUSH_ON_CLOSE_SECONDS) -> bool:
        """Wait until the hub or server holds everything sent so far (True), at most
        ``timeout`` seconds."""
        raise NotImplementedError

    async def flush_and_close(self) -> None:
        """Send what is still queued (bounded in time), then :meth:`close`."""
        raise NotImplementedError

    def close(self) -> None:
        """Leave the channel (a goodbye to peers when open); idempotent."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._opening is not None and self._opening.done() and not self._closed

    async def open(self) -> None:
        """Connect and prove the path; idempotent, concurrent callers share one attempt.
        Raises ``ChannelError``."""
        if self._closed:
            raise ChannelError("channel transport is closed")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    # -- sending ------------------------------------------------------------------------------

    def send(
        self, to_client_id: str | None, request_id: str | None, message: int, body: Any
    ) -> None:
        """The ``send`` of create_custom_synchronizer."""
        if to_client_id is not None and (
            not isinstance(to_client_id, str) or len(to_client_id) != CLIENT_ID_LENGTH
        ):
            raise ValueError(f"not a channel client id: {to_client_id!r}")
        self._send_payload(
            to_client_id, _encoder.encode((self.client_id, request_id, message, body))
        )
        self.stats["sent"] += 1

    def publish_ack(self, tables_hash: int, values_hash: int) -> None:
        """Announce durably saved content hashes (used by the coordinator)."""
        self._send_ack_payload(encode_ack(self.client_id, tables_hash, values_hash))

    def _say_goodbye(self) -> None:
        """Tell peers we leave: those waiting for our answers move on at once."""
        with contextlib.suppress(Exception):
            self._send_payload(None, BYE + self._id_bytes)

    # -- receiving ----------------------------------------------------------------------------

    def register_receive(self, receive: Receive, *_extra: object) -> None:
        """The ``register_receive`` of create_custom_synchronizer."""
        self._receive = receive

    def watch_acks(self, on_ack: Callable[[str, int, int], None]) -> None:
        """Also receive coordinator acknowledgements: ``on_ack(from_id, tables, values)``."""
        self._on_ack = on_ack
        self._subscribe_acks()

    def peer_alive(self, client_id: str) -> bool:
        """False only when ``client_id`` is known to be gone.

        Called again and again for a peer that owes answers (the synchronizer's liveness
        check). The first call asks the peer whether it is still there and answers True; the
        peer is known to be gone once that probe has been unanswered for
        ``PROBE_TIMEOUT_SECONDS`` (local channels also read presence files first, which tell
        at once that a process exited). A SIGKILLed process says no goodbye and a frozen one
        answers nothing: without the probe, a joiner whose answerer died or froze would wait
        out the whole join time-out. A peer whose loop is busy for that long also counts as
        gone, which costs a restarted pull, never data; ``peers_unanswering`` counts them.
        """
        if len(client_id) != CLIENT_ID_LENGTH or client_id == self.client_id or self._closed:
            return True
        now = time.monotonic()
        asked = self._probes.get(client_id)
        if asked is None or now - asked >= 2 * PROBE_TIMEOUT_SECONDS:  # (none, or a stale one)
            self._probes[client_id] = now
            self._send_payload(client_id, ALIVE_ASK + self._id_bytes)
            return True
        if now - asked < PROBE_TIMEOUT_SECONDS:
            return True
        del self._probes[client_id]
        self.stats["peers_unanswering"] += 1
        return False

    def _ignore(self, error: Exception) -> None:
        self.stats["ignored"] += 1
        if self._on_ignored_error is not None:
            with contextlib.suppress(Exception):
                self._on_ignored_error(error)

    def _on_control(self, payload: bytes, to_me: bool, broadcast: bool) -> None:
        """Handle a shared control payload (one of an unknown kind is ignored and counted)."""
        kind = payload[:2]
        if kind == HELLO and broadcast:
            if self.answers_hello:
                self._answer(payload[2:], HERE)
        elif kind == BYE and broadcast:
            leaver = payload[2:]
            if leaver != self._id_bytes and len(leaver) == CLIENT_ID_LENGTH:
                on_peer_left = self.on_peer_left
                if on_peer_left is not None:
                    on_peer_left(leaver.decode("ascii", "replace"))
        elif kind == HERE and to_me:
            self.peers_answered += 1
            answerer = payload[2:]
            if self.first_answerer is None and len(answerer) == CLIENT_ID_LENGTH:
                with contextlib.suppress(UnicodeDecodeError, ValueError):
                    self.first_answerer = check_client_id(answerer.decode("ascii"))
            if self._here_waiter is not None and not self._here_waiter.done():
                self._here_waiter.set_result(None)
        elif kind == ALIVE_ASK and to_me:
            self._answer(payload[2:], ALIVE)
        elif kind == ALIVE and to_me:
            with contextlib.suppress(UnicodeDecodeError):
                self._probes.pop(payload[2:].decode("ascii"), None)
        elif kind == SNAPSHOT_ASK and to_me:
            self._on_snapshot_ask(payload[2:])
        elif kind == SNAPSHOT_OFFER and to_me:
            on_offer = self.on_snapshot_offer
            if on_offer is None:
                self._ignore(ValueError("unexpected snapshot offer"))
            else:
                on_offer(payload[2:])
        else:
            self._ignore(ValueError(f"unknown channel control message {kind!r}"))

    def _answer(self, asker: bytes, kind: bytes) -> None:
        """Send ``kind`` + our client id to the peer whose id is ``asker`` (not to ourselves;
        a malformed id is ignored and counted)."""
        if asker == self._id_bytes or len(asker) != CLIENT_ID_LENGTH:
            return
        try:
            to = check_client_id(asker.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as error:
            self._ignore(error)
            return
        self._send_payload(to, kind + self._id_bytes)

    def _on_snapshot_ask(self, asker: bytes) -> None:
        """Answer a snapshot request with an offer or a refusal (a malformed one: ignored)."""
        try:
            to = check_client_id(asker.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as error:
            self._ignore(ValueError(f"invalid snapshot request: {error}"))
            return
        if to == self.client_id:
            return
        on_ask = self.on_snapshot_ask
        offer = on_ask(to) if on_ask is not None else b""
        if offer is not None:
            self._send_payload(to, SNAPSHOT_OFFER + offer)

    def ask_snapshot(self, to_client_id: str) -> None:
        """Ask ``to_client_id`` for a snapshot (its answer goes to ``on_snapshot_offer``)."""
        self._send_payload(check_client_id(to_client_id), SNAPSHOT_ASK + self._id_bytes)

    def _on_ack_payload(self, payload: bytes) -> None:
        on_ack = self._on_ack
        if on_ack is None:
            return
        try:
            from_id, tables_hash, values_hash = _ack_decoder.decode(payload)
        except msgspec.DecodeError as error:
            self._ignore(ValueError(f"invalid acknowledgement: {error}"))
            return
        on_ack(from_id, tables_hash, values_hash)

    def _on_data(self, payload: bytes) -> None:
        """An engine message (anything but a control payload or an acknowledgement)."""
        if payload[2:18] == self._id_bytes and payload[:2] == _FROM_HEADER:
            self.stats["own_dropped"] += 1
            return
        if len(payload) >= BIG_MESSAGE:
            # a joiner's diff: decode, check and merge it without the cyclic collector
            # rescanning the decoded temporaries (see localsync.core.collector.paused)
            with paused:
                self._decode_and_receive(payload)
            return
        self._decode_and_receive(payload)

    def _decode_and_receive(self, payload: bytes) -> None:
        try:
            from_id, request_id, message, body = _decoder.decode(payload)
        except msgspec.DecodeError as error:
            self._ignore(ValueError(f"invalid channel message: {error}"))
            return
        self.stats["received"] += 1
        receive = self._receive
        if receive is not None:
            receive(from_id, request_id, message, body)

    async def discover_peers(self, timeout: float = DISCOVERY_SECONDS) -> bool:
        """True if another syncing participant answers a hello within ``timeout`` seconds.

        Answered by the peers' transports (only once their engine answers GetContentHashes),
        not by their engines, so it is cheap; a peer whose event loop is busy for longer than
        ``timeout`` counts as absent.
        """
        await self.open()
        self._here_waiter = asyncio.get_running_loop().create_future()
        try:
            self._send_payload(None, HELLO + self._id_bytes)
            await asyncio.wait_for(asyncio.shield(self._here_waiter), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._here_waiter = None
