"""TinyBase's WebSocket text framing, sans-I/O: payloads in, protocol messages out.

Why a separate layer: the same framing is spoken by our client, our server's relay and the
server's own per-path synchronizer, and it must match TinyBase 10.0.1 byte for byte so that
JavaScript peers and servers interoperate. Keeping it free of sockets lets the conformance
vectors drive it directly.

A *payload* (one WebSocket text message) is ``clientId + "\\n" + remainder``. Sent by a
client, ``clientId`` is the recipient ("" = broadcast, "S" = the server's synchronizer); the
server swaps in the sender's id before relaying. The *remainder* is
``JSON.stringify([requestId, message, body])`` with JavaScript ``undefined`` written as U+FFFC
(in localsync the bodies already hold U+FFFC for undefined, and object cells as "\\ufffd" +
JSON, so they are written as they are).

A remainder too large for one frame may be split into *fragments*:
``clientId + "\\n" + messageId(16 id chars) + "\\n" + index + "\\n" + total + "\\n" + chunk``;
the chunks concatenated give the remainder back.

Limits (TinyBase's): a payload is at most 16 MiB of UTF-8; a fragmented message has at most
1,000 fragments; at most 100 partly received messages and 16 MiB of fragments are held per
connection; a partly received message is dropped after the fragment timeout. A payload that
breaks the framing or carries an invalid protocol message makes the decoder *invalid*: it
raises ``WireError`` once (close code 1007, reason ``tinybase:14``; 1013 with
``tinybase:15:<details>`` for an overflow) and ignores everything after, as TinyBase closes
that socket.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from localsync.core.codec import ALPHABET_PATTERN, get_unique_id, js_stringify
from localsync.core.collector import paused_for
from localsync.sync.engine import is_protocol_message_valid

__all__ = [
    "CLOSE_INVALID",
    "CLOSE_OVERFLOW",
    "ERROR_MESSAGE",
    "ERROR_OVERFLOW",
    "MAX_FRAGMENT_BUFFERS",
    "MAX_FRAGMENT_COUNT",
    "MAX_PAYLOAD_SIZE",
    "SERVER_CLIENT_ID",
    "Decoded",
    "PayloadDecoder",
    "WireError",
    "decode_remainder",
    "encode_payloads",
    "encode_remainder",
    "is_protocol_message_valid",
    "overflow_error",
    "parse_json",
    "parse_triple",
    "payload_size",
    "split_payload",
]

MESSAGE_SEPARATOR = "\n"
SERVER_CLIENT_ID = "S"
MAX_PAYLOAD_SIZE = 16 * 1024 * 1024
MAX_FRAGMENT_COUNT = 1000
MAX_FRAGMENT_BUFFERS = 100

CLOSE_INVALID = 1007
CLOSE_OVERFLOW = 1013
ERROR_MESSAGE = "tinybase:14"
ERROR_OVERFLOW = "tinybase:15"

_FRAGMENT = re.compile(rf"({ALPHABET_PATTERN}{{16}})\n([0-9]+)\n([0-9]+)\n(.*)", re.DOTALL)
_FRAGMENT_PAYLOAD = re.compile(rf"[^\n]*\n{ALPHABET_PATTERN}{{16}}\n[0-9]+\n[0-9]+\n")
_INFINITY = math.inf


class WireError(Exception):
    """A payload that ends the connection: ``code`` is the WebSocket close code to use."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = CLOSE_OVERFLOW if reason.startswith(ERROR_OVERFLOW) else CLOSE_INVALID


def overflow_error(details: str) -> WireError:
    return WireError(f"{ERROR_OVERFLOW}:{details}")


class Decoded(NamedTuple):
    """One complete protocol message; ``remainders`` are the raw texts it arrived in.

    ``client_id`` is the id before the newline: the sender on a client, the recipient
    ("" for everyone) on a server.
    """

    client_id: str
    remainders: list[str]
    request_id: str | None
    message: int
    body: Any


# ------------------------------------------------------------------------------- sizes


def payload_size(text: str) -> int:
    """UTF-8 length as TinyBase counts it (a lone surrogate counts 3 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def split_payload(payload: str) -> tuple[str, str] | None:
    """``(clientId, remainder)`` split at the first newline, or None when there is none."""
    at = payload.find(MESSAGE_SEPARATOR)
    if at < 0:
        return None
    return payload[:at], payload[at + 1 :]


# ------------------------------------------------------------------------------ encoding


def encode_remainder(request_id: str | None, message: int, body: Any) -> str:
    """``JSON.stringify([requestId, message, body])`` byte for byte as TinyBase writes it."""
    return js_stringify([request_id, message, body])


def _fragments(remainder: str, max_size: int) -> list[str]:
    # chunks of at most max_size UTF-8 bytes, cut only between code points, as TinyBase cuts
    if remainder.isascii():
        return [remainder[i : i + max_size] for i in range(0, len(remainder), max_size)] or [""]
    data = remainder.encode("utf-8", "surrogatepass")
    chunks: list[str] = []
    start = 0
    total = len(data)
    while start < total:
        end = min(start + max_size, total)
        while end < total and (data[end] & 0xC0) == 0x80:
            end -= 1
        chunks.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return chunks or [""]


def encode_payloads(
    to_client_id: str | None,
    request_id: str | None,
    message: int,
    body: Any,
    fragment_size: int | None = None,
) -> list[str]:
    """The text frames for one message, fragmented when it is larger than ``fragment_size``.

    With ``fragment_size=None`` there is one frame whatever its size, as in TinyBase; a frame
    over ``MAX_PAYLOAD_SIZE`` is the transport's to refuse (an overflow). Fragmenting cannot
    lift that limit: receivers hold at most 16 MiB of fragments per connection.
    """
    client_id = to_client_id or ""
    remainder = encode_remainder(request_id, message, body)
    return fragment_remainder(client_id, remainder, fragment_size)


def fragment_remainder(client_id: str, remainder: str, fragment_size: int | None) -> list[str]:
    """Frames carrying an already encoded remainder (see ``encode_payloads``)."""
    size = None
    if fragment_size is not None and math.floor(fragment_size) >= 1:
        size = math.floor(fragment_size)
    if size is None:
        return [client_id + MESSAGE_SEPARATOR + remainder]
    remainder_size = payload_size(remainder)
    size = max(size, -(-remainder_size // MAX_FRAGMENT_COUNT) + 3)
    if remainder_size <= size:
        return [client_id + MESSAGE_SEPARATOR + remainder]
    chunks = _fragments(remainder, size)
    total = len(chunks)
    if total == 1:
        return [client_id + MESSAGE_SEPARATOR + remainder]
    message_id = get_unique_id()
    prefix = f"{client_id}\n{message_id}\n"
    return [f"{prefix}{index}\n{total}\n{chunk}" for index, chunk in enumerate(chunks)]


# ---------------------------------------------------------------------------- validation


# Message validation is the engine's (``localsync.sync.engine.is_protocol_message_valid``): one
# definition of what TinyBase 10 accepts, shared by the engine, the client and the relay server.


# ------------------------------------------------------------------------------ decoding

_json_decode = msgspec.json.Decoder().decode


def reject_constant(name: str) -> Any:
    raise ValueError(name)


def _parse_json(text: str) -> Any:
    try:
        return _json_decode(text)
    except msgspec.DecodeError:
        # msgspec refuses lone surrogate escapes and out-of-range numbers, which
        # JSON.parse accepts (as a lone surrogate, or as Infinity); validation decides then
        return json.loads(text, parse_constant=reject_constant)


def parse_json(text: str) -> Any:
    """``JSON.parse`` as TinyBase's peers see it (also what msgspec alone refuses); raises
    ``ValueError`` for text that is not JSON."""
    return _parse_json(text)


def parse_triple(remainder: str) -> list[Any] | None:
    """The JSON array of three items a remainder holds (unchecked), else None."""
    try:
        parsed = _parse_json(remainder)
    except (ValueError, RecursionError):
        return None
    if type(parsed) is not list or len(parsed) != 3:
        return None
    return parsed


def decode_remainder(remainder: str) -> tuple[str | None, int, Any] | None:
    """``(requestId, message, body)`` of a valid protocol message remainder, else None
    (parsed with the collector paused when large: ``localsync.core.collector.paused_for``)."""
    with paused_for(len(remainder)):
        return _decode_remainder(remainder)


def _decode_remainder(remainder: str) -> tuple[str | None, int, Any] | None:
    parsed = parse_triple(remainder)
    if parsed is None:
        return None
    request_id, message, body = parsed
    if not is_protocol_message_valid(request_id, message, body):
        return None
    return request_id, int(message), body


def _parse_count(digits: str) -> float:
    # parseInt of a run of ASCII digits, without Python's int-from-long-string limit
    digits = digits.lstrip("0") or "0"
    return _INFINITY if len(digits) > 15 else int(digits)


class _Pending:
    __slots__ = ("deadline", "fragments", "missing", "remainders", "retained", "total")

    def __init__(self, total: int, deadline: float) -> None:
        self.fragments: list[str | None] = [None] * total
        self.remainders: list[str | None] = [None] * total
        self.total = total
        self.missing = total
        self.deadline = deadline
        self.retained = 0


class PayloadDecoder:
    """TinyBase's payload decoder for one connection: framing, fragments, validation.

    ``feed(payload)`` returns the complete messages it carried (none while a fragmented
    message is still partial). The first invalid payload raises ``WireError`` and makes the
    decoder ignore everything after it, as the connection is then being closed.
    Fragment buffers that wait longer than ``fragment_timeout_seconds`` are dropped.
    """

    def __init__(
        self,
        fragment_timeout_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
    ) -> None:
        self._timeout = fragment_timeout_seconds
        self._clock = clock
        self._max = max_payload_size
        self._pending: dict[str, _Pending] = {}
        self._buffered = 0
        self.valid = True

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def buffered_size(self) -> int:
        return self._buffered

    def clear(self) -> None:
        self._pending.clear()
        self._buffered = 0

    def expire(self, now: float | None = None) -> None:
        """Drop partial messages whose fragment timeout has passed."""
        if not self._pending:
            return
        now = self._clock() if now is None else now
        for key in [key for key, p in self._pending.items() if p.deadline <= now]:
            self._buffered -= self._pending.pop(key).retained

    def _invalid(self, error: WireError | None = None) -> WireError:
        self.valid = False
        self.clear()
        return error or WireError(ERROR_MESSAGE)

    def feed(self, payload: str) -> list[Decoded]:
        if not self.valid:
            return []
        if payload_size(payload) > self._max:
            details = "fragments" if _FRAGMENT_PAYLOAD.match(payload) else "socket"
            raise self._invalid(overflow_error(details))
        at = payload.find(MESSAGE_SEPARATOR)
        if at < 0:
            raise self._invalid()
        client_id = payload[:at]
        remainder = payload[at + 1 :]
        decoded = decode_remainder(remainder)
        if decoded is not None:
            return [Decoded(client_id, [remainder], *decoded)]
        match = _FRAGMENT.fullmatch(remainder)
        if match is None:
            raise self._invalid()
        message_id, index_text, total_text, chunk = match.groups()
        index = _parse_count(index_text)
        total = _parse_count(total_text)
        if total > MAX_FRAGMENT_COUNT:
            raise self._invalid(overflow_error("fragments"))
        if not (total > 0 and 0 <= index < total):
            raise self._invalid()
        slot = int(index)  # (finite now: below total, itself at most MAX_FRAGMENT_COUNT)
        self.expire()
        key = client_id + MESSAGE_SEPARATOR + message_id
        pending = self._pending.get(key)
        if pending is None and len(self._pending) >= MAX_FRAGMENT_BUFFERS:
            raise self._invalid(overflow_error("fragments"))
        if pending is not None and (pending.total != total or pending.fragments[slot] is not None):
            raise self._invalid()
        retained = payload_size(remainder) + (0 if pending is not None else payload_size(key))
        if self._buffered + retained > self._max:
            raise self._invalid(overflow_error("fragments"))
        if pending is None:
            pending = _Pending(int(total), self._clock() + self._timeout)
            self._pending[key] = pending
        index = int(index)
        pending.fragments[slot] = chunk
        pending.remainders[index] = remainder
        pending.missing -= 1
        pending.retained += retained
        self._buffered += retained
        if pending.missing:
            return []
        del self._pending[key]
        self._buffered -= pending.retained
        whole = "".join(pending.fragments)  # type: ignore[arg-type]
        decoded = decode_remainder(whole)
        if decoded is None:
            raise self._invalid()
        return [Decoded(client_id, pending.remainders, *decoded)]  # type: ignore[arg-type]
