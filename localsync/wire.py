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

from .codec import UNDEFINED, get_unique_id, js_stringify

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

_HLC = re.compile(r"[-0-9A-Z_a-z]{16}")
_FRAGMENT = re.compile(r"([-0-9A-Z_a-z]{16})\n([0-9]+)\n([0-9]+)\n(.*)", re.DOTALL)
_FRAGMENT_PAYLOAD = re.compile(r"[^\n]*\n[-0-9A-Z_a-z]{16}\n[0-9]+\n[0-9]+\n")
_MAX_HASH = 4294967295
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


def _is_hash(value: Any) -> bool:
    t = type(value)
    if t is int:
        return 0 <= value <= _MAX_HASH
    if t is float:
        return value.is_integer() and 0 <= value <= _MAX_HASH
    return False


def _is_hash_tree(tree: Any, depth: int) -> bool:
    if type(tree) is not dict:
        return False
    if depth:
        return all(_is_hash_tree(child, depth - 1) for child in tree.values())
    return all(_is_hash(child) for child in tree.values())


def _is_cell_or_value(value: Any) -> bool:
    # TinyBase 10: string, boolean, finite number, null, object, array (or undefined)
    if type(value) is float:
        return value - value == 0.0
    return value is None or type(value) in (str, int, bool, dict, list)


_HLC_RUN = re.compile(r"[-0-9A-Z_a-z]*")


def _hlcs_valid(hlcs: list[str]) -> bool:
    # every HLC 16 alphabet characters: checked in bulk, as one C-level pass over all of them
    return (not hlcs or set(map(len, hlcs)) == {16}) and _HLC_RUN.fullmatch(
        "".join(hlcs)
    ) is not None


def _stamp_ok(stamp: Any, depth: int, hlcs: list[str]) -> bool:
    """Structure of a stamp tree; non-empty HLC strings are collected into ``hlcs``."""
    if type(stamp) is not list:
        return False
    n = len(stamp)
    if n == 2:
        hlc = stamp[1]
        if type(hlc) is not str:
            return False
        if hlc:
            hlcs.append(hlc)
    elif n != 1:
        return False
    thing = stamp[0]
    if not depth:
        return _is_cell_or_value(thing)
    if type(thing) is not dict:
        return False
    depth -= 1
    if depth:
        return all(_stamp_ok(child, depth, hlcs) for child in thing.values())
    append = hlcs.append
    for leaf in thing.values():  # the hot path of a ContentDiff: cell and value stamps
        if type(leaf) is not list:
            return False
        n = len(leaf)
        if n == 2:
            hlc = leaf[1]
            if type(hlc) is not str:
                return False
            if hlc:
                append(hlc)
        elif n != 1:
            return False
        value = leaf[0]
        t = type(value)
        if t is float:
            if value - value != 0.0:
                return False
        elif not (t is str or t is int or t is bool or value is None or t is dict or t is list):
            return False
    return True


def _is_stamp(stamp: Any, depth: int) -> bool:
    hlcs: list[str] = []
    return _stamp_ok(stamp, depth, hlcs) and _hlcs_valid(hlcs)


def _is_content_hashes(body: Any) -> bool:
    return type(body) is list and len(body) == 2 and _is_hash(body[0]) and _is_hash(body[1])


def _is_content_or_changes(body: Any) -> bool:
    return (
        type(body) is list
        and (len(body) == 2 or (len(body) == 3 and body[2] == 1 and type(body[2]) is not bool))
        and _is_stamp(body[0], 3)
        and _is_stamp(body[1], 1)
    )


def _is_response(body: Any) -> bool:
    return (
        _is_content_hashes(body)
        or _is_stamp(body, 3)
        or _is_stamp(body, 1)
        or (
            type(body) is list
            and len(body) == 2
            and _is_stamp(body[0], 3)
            and (_is_hash_tree(body[1], 0) or _is_hash_tree(body[1], 1))
        )
    )


_BODY_CHECKS: dict[int, Callable[[Any], bool]] = {
    0: _is_response,
    1: lambda body: body == "" and type(body) is str,
    2: _is_content_hashes,
    3: _is_content_or_changes,
    4: lambda body: _is_hash_tree(body, 0),
    5: lambda body: _is_hash_tree(body, 1),
    6: lambda body: _is_hash_tree(body, 2),
    7: lambda body: _is_hash_tree(body, 0),
}


def _message_number(message: Any) -> int | None:
    t = type(message)
    if t is int:
        return message
    if t is float and message.is_integer():
        return int(message)
    return None


def is_protocol_message_valid(request_id: Any, message: Any, body: Any) -> bool:
    """TinyBase 10's ``isProtocolMessageValid`` on decoded (U+FFFC-marked) data."""
    if not (request_id is None or (type(request_id) is str and request_id != UNDEFINED)):
        return False
    number = _message_number(message)
    check = _BODY_CHECKS.get(number) if number is not None else None
    return check is not None and check(body)


# ------------------------------------------------------------------------------ decoding

_json_decode = msgspec.json.Decoder().decode


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _parse_json(text: str) -> Any:
    try:
        return _json_decode(text)
    except msgspec.DecodeError:
        # msgspec refuses lone surrogate escapes and out-of-range numbers, which
        # JSON.parse accepts (as a lone surrogate, or as Infinity); validation decides then
        return json.loads(text, parse_constant=_reject_constant)


def decode_remainder(remainder: str) -> tuple[str | None, int, Any] | None:
    """``(requestId, message, body)`` of a valid protocol message remainder, else None."""
    try:
        parsed = _parse_json(remainder)
    except (ValueError, RecursionError):
        return None
    if type(parsed) is not list or len(parsed) != 3:
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
        self.expire()
        key = client_id + MESSAGE_SEPARATOR + message_id
        pending = self._pending.get(key)
        if pending is None and len(self._pending) >= MAX_FRAGMENT_BUFFERS:
            raise self._invalid(overflow_error("fragments"))
        if pending is not None and (pending.total != total or pending.fragments[index] is not None):
            raise self._invalid()
        retained = payload_size(remainder) + (0 if pending is not None else payload_size(key))
        if self._buffered + retained > self._max:
            raise self._invalid(overflow_error("fragments"))
        if pending is None:
            pending = _Pending(int(total), self._clock() + self._timeout)
            self._pending[key] = pending
        index = int(index)
        pending.fragments[index] = chunk
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
