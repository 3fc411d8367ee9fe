"""What the HTTP upgrade of a WebSocket sync connection carries: subprotocols and tokens."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request
from websockets.typing import Subprotocol

from localsync.ws.multiplex import SUBPROTOCOL

__all__ = ["offered_subprotocols", "request_token", "select_subprotocol"]


def offered_subprotocols(request: Request) -> list[str]:
    """The subprotocols a request offers (every ``Sec-WebSocket-Protocol`` header, split)."""
    offered: list[str] = []
    for header in request.headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(part.strip() for part in header.split(","))
    return offered


def select_subprotocol(_connection: object, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """TinyBase's shared-socket protocol when offered, else None (legacy: anything else is
    accepted as legacy, as TinyBase's server treats it)."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def request_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <t>``, else of ``?token=<t>``, else None."""
    header = request.headers.get("Authorization")
    if header is not None and header.lower().startswith("bearer "):
        return header[7:].strip()
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None
