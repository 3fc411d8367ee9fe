"""What the server core needs of one WebSocket connection, whichever server accepted it.

The rooms, relay and persistence of :mod:`localsync.ws.server` are written once against this
protocol; a ``websockets`` :class:`~websockets.asyncio.server.ServerConnection` satisfies it
as it is, and :mod:`localsync.ws.asgi` adapts an ASGI WebSocket to it. Iterating yields the
received frames and ends when the peer closes; ``send`` raises
:class:`websockets.exceptions.ConnectionClosed` once the connection is gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from websockets.http11 import Request

__all__ = ["Connection"]


class Connection(Protocol):
    """One accepted WebSocket connection, as the server core uses it."""

    @property
    def request(self) -> Request | None:
        """The upgrade request (path with query string, headers)."""

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol chosen at the handshake (``"tinybase"`` for a shared socket)."""

    @property
    def remote_address(self) -> Any:
        """The peer's address, ``(host, port)`` for TCP."""

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...
