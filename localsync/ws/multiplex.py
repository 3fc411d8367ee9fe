"""TinyBase's shared-socket WebSocket protocol (subprotocol ``tinybase``), server side, sans I/O.

Why: since TinyBase 9.3 a browser may open one WebSocket with the ``tinybase`` subprotocol
and run several WsSynchronizers over it, one per *channel*; each channel is the room
``<socket path>/<channel id>``. The server's side of that, as TinyBase's ``createWsServer``
does it:

* ``S\\n[requestId, -1, [0, 1]]`` (hello, protocol version 1) is answered with the same
  control message; nothing else is accepted before it.
* ``S\\n[requestId, -1, [1, channelId]]`` subscribes: the connection joins the channel's room
  (as a client with the socket's id) and the control message is answered;
  ``S\\n[null, -1, [2, channelId]]`` unsubscribes (no answer).
* ``M\\n<channelId>\\n<payload>`` carries one legacy payload (``to\\n[...]``, fragments too)
  for that channel; the server sends ``M\\n<channelId>\\n<from>\\n[...]`` the same way.
* Limits: 100 channels per socket; a channel id of at most 1,024 UTF-8 bytes, not empty,
  without ``\\n``, ``\\r``, ``?`` or ``#``, and no empty, ``.`` or ``..`` segment. Too many
  channels or a too long id close the socket with 1013 ``tinybase:15:channels``; anything
  else unexpected with 1007 ``tinybase:14``. The fragment budget (100 partial messages,
  16 MiB) is shared by all channels of the socket, as in TinyBase.

:class:`MultiplexedSocket` turns received frames into :class:`Subscribe`,
:class:`Unsubscribe` and :class:`ChannelMessage` events plus the frames to answer with;
:mod:`localsync.ws.server` does the I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localsync.ws.wire import (
    ERROR_MESSAGE,
    MAX_FRAGMENT_BUFFERS,
    MAX_PAYLOAD_SIZE,
    SERVER_CLIENT_ID,
    Decoded,
    PayloadDecoder,
    WireError,
    encode_remainder,
    overflow_error,
    parse_triple,
    payload_size,
    split_payload,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_CHANNEL_ID_SIZE",
    "SUBPROTOCOL",
    "ChannelMessage",
    "MultiplexedSocket",
    "Subscribe",
    "Unsubscribe",
    "channel_frame",
]

SUBPROTOCOL = "tinybase"
MULTIPLE_CLIENT_ID = "M"
MULTIPLE_MESSAGE = -1
VERSION = 1
HELLO, SUBSCRIBE, UNSUBSCRIBE = 0, 1, 2
MAX_CHANNELS = 100
MAX_CHANNEL_ID_SIZE = 1024
_INVALID_CHANNEL_CHARACTERS = re.compile(r"[\n\r?#]")


@dataclass(frozen=True)
class Subscribe:
    """Join ``path_id`` (the socket's path, ``/``, the channel id) as this socket's client."""

    channel_id: str
    path_id: str


@dataclass(frozen=True)
class Unsubscribe:
    channel_id: str


@dataclass(frozen=True)
class ChannelMessage:
    """One complete legacy message received on a subscribed channel."""

    channel_id: str
    message: Decoded


Event = Subscribe | Unsubscribe | ChannelMessage


def channel_frame(channel_id: str, payload: str) -> str:
    """The frame that carries a legacy ``payload`` on ``channel_id``."""
    return f"{MULTIPLE_CLIENT_ID}\n{channel_id}\n{payload}"


def _too_large(channel_id: str) -> bool:
    return payload_size(channel_id) > MAX_CHANNEL_ID_SIZE


def _well_formed(channel_id: str) -> bool:
    return (
        channel_id != ""
        and _INVALID_CHANNEL_CHARACTERS.search(channel_id) is None
        and all(part not in ("", ".", "..") for part in channel_id.split("/"))
    )


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _loosely_one(value: Any) -> bool:
    # JavaScript's ``body == 1`` for the values JSON can carry
    if value is True:
        return True
    if _is_number(value):
        return bool(value == 1)
    if type(value) is str:
        try:
            return float(value.strip() or "nan") == 1
        except ValueError:
            return False
    return False


class MultiplexedSocket:
    """The state of one shared socket: negotiated or not, its channels and their decoders."""

    def __init__(
        self,
        base_path_id: str,
        fragment_timeout_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_path_id = base_path_id
        self.negotiated = False
        self.channels: dict[str, PayloadDecoder] = {}
        self._timeout = fragment_timeout_seconds
        self._clock = clock
        self.valid = True

    def path_id(self, channel_id: str) -> str:
        base = self.base_path_id
        return f"{base}/{channel_id}" if base else channel_id

    def _invalid(self, error: WireError | None = None) -> WireError:
        self.valid = False
        for decoder in self.channels.values():
            decoder.clear()
        return error or WireError(ERROR_MESSAGE)

    def feed(self, payload: str) -> tuple[list[Event], list[str]]:
        """Events from one received frame, and the frames to send back (control answers).

        Raises ``WireError`` (its ``code`` is the close code) when the socket must close;
        after that the socket ignores everything.
        """
        if not self.valid:
            return [], []
        if payload_size(payload) > MAX_PAYLOAD_SIZE:
            raise self._invalid(overflow_error("socket"))
        split = split_payload(payload)
        if split is None:
            raise self._invalid()
        kind, remainder = split
        if kind == SERVER_CLIENT_ID:
            control = self._control(remainder)
            if control is not None:
                return self._handle_control(*control)
        elif kind == MULTIPLE_CLIENT_ID:
            channel_split = split_payload(remainder)
            if channel_split is not None:
                channel_id, channel_payload = channel_split
                if _too_large(channel_id):
                    raise self._invalid(overflow_error("channels"))
                if _well_formed(channel_id):
                    return self._channel_payload(channel_id, channel_payload), []
        raise self._invalid()

    def _control(self, remainder: str) -> tuple[str | None, int, str | int] | None:
        parsed = parse_triple(remainder)
        if parsed is None:
            return None
        request_id, message, control_and_body = parsed
        if not (request_id is None or type(request_id) is str):
            return None
        if not (_is_number(message) and message == MULTIPLE_MESSAGE):
            return None
        if type(control_and_body) is not list or len(control_and_body) != 2:
            return None
        control, body = control_and_body
        if not _is_number(control):
            return None
        if control == HELLO:
            if type(request_id) is str and _loosely_one(body):
                return request_id, HELLO, body
        elif control in (SUBSCRIBE, UNSUBSCRIBE):
            # (a subscription carries a request id to answer; an unsubscription none)
            expected_id = (type(request_id) is str) if control == SUBSCRIBE else request_id is None
            if expected_id and type(body) is str and (_too_large(body) or _well_formed(body)):
                return request_id, int(control), body
        return None

    def _handle_control(
        self, request_id: str | None, control: int, body: Any
    ) -> tuple[list[Event], list[str]]:
        # (TinyBase answers a hello and a subscription with the control message itself)
        answer = [
            f"{SERVER_CLIENT_ID}\n{encode_remainder(request_id, MULTIPLE_MESSAGE, [control, body])}"
        ]
        if control == HELLO:
            self.negotiated = True
            return [], answer
        if not self.negotiated:
            return [], []  # (TinyBase ignores channel controls before the hello)
        if control == SUBSCRIBE:
            subscribed = body in self.channels
            if _too_large(body) or (not subscribed and len(self.channels) >= MAX_CHANNELS):
                raise self._invalid(overflow_error("channels"))
            if subscribed:
                return [], answer
            self.channels[body] = PayloadDecoder(self._timeout, self._clock)
            return [Subscribe(body, self.path_id(body))], answer
        if _too_large(body):
            raise self._invalid(overflow_error("channels"))
        decoder = self.channels.pop(body, None)
        if decoder is None:
            return [], []
        decoder.clear()
        return [Unsubscribe(body)], []

    def _channel_payload(self, channel_id: str, payload: str) -> list[Event]:
        decoder = self.channels.get(channel_id) if self.negotiated else None
        if decoder is None:
            raise self._invalid()
        try:
            messages = decoder.feed(payload)
        except WireError as error:
            raise self._invalid(error) from None
        except Exception:  # (a check that raised, e.g. OverflowError for a huge JSON integer)
            raise self._invalid() from None
        # one fragment budget for the whole socket
        decoders = self.channels.values()
        if (
            sum(d.pending_count for d in decoders) > MAX_FRAGMENT_BUFFERS
            or sum(d.buffered_size for d in decoders) > MAX_PAYLOAD_SIZE
        ):
            raise self._invalid(overflow_error("fragments"))
        return [ChannelMessage(channel_id, message) for message in messages]

    def close(self) -> None:
        """Forget every channel (the socket closed); later frames are ignored."""
        self._invalid()
        self.channels.clear()
