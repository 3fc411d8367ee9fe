"""Fast JSON in and out for persisted mergeable content, with exact fallbacks.

Why not ``localsync.core.codec.js_stringify``: it is byte-exact with JavaScript but pure
Python, and a
persister writes whole stores (10^5..10^6 cells) on the hot path of every save. TinyBase only
needs to *parse* what we write, and ``JSON.parse`` reads ``1.0`` or ``1e20`` as the same numbers
JavaScript would have written differently, so msgspec's output is equivalent content. The
fallbacks cover what msgspec refuses: lone surrogates (which JavaScript strings may hold and
``JSON.stringify`` escapes) go through ``json`` with ``ensure_ascii``, which escapes them too.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from localsync.errors import ContentDecodeError

__all__ = ["ContentDecodeError", "dumps_bytes", "dumps_str", "loads"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON; non-ASCII stays raw (as ``JSON.stringify`` writes it)."""
    try:
        return _encoder.encode(obj)
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()


def dumps_str(obj: Any) -> str:
    """As ``dumps_bytes`` but as text, for SQLite TEXT columns."""
    try:
        return _encoder.encode(obj).decode()
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid content")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise ``ContentDecodeError`` for anything that is not valid JSON.

    msgspec first (fast); ``json`` second because msgspec rejects escaped lone surrogates and
    numbers beyond float range, which valid files written by JavaScript can contain; the
    second parse decides whether the text is really broken.
    """
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ContentDecodeError(f"not valid JSON: {error}") from error
