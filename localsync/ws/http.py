"""Requests a sync server answers besides its rooms: plain HTTP pages and extra WebSocket
endpoints (health checks, metrics, the inspector), registered once and served by both faces
(the ``websockets`` server and the ASGI app).

A route owns a URL prefix (``/healthz``, ``/_inspect``); a request whose path is the prefix or
lies under it goes to the route instead of a room, so a room cannot be named by a registered
prefix. ``auth=True`` routes pass the server's ``token`` and ``authenticate(name, request)``
checks first (``name`` is the prefix without its ``/``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.http11 import Request

from localsync.ws.connection import Connection

__all__ = ["HttpHandler", "HttpReply", "Route", "SocketHandler", "find_route", "is_upgrade"]


@dataclass(frozen=True)
class HttpReply:
    """An HTTP response to a plain (non-upgrade) GET request."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


HttpHandler = Callable[[Request], "HttpReply | Awaitable[HttpReply]"]
SocketHandler = Callable[[Connection], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """A URL prefix and what answers under it: an HTTP handler, a WebSocket handler or both."""

    prefix: str
    http: HttpHandler | None = None
    socket: SocketHandler | None = None
    auth: bool = True

    @property
    def name(self) -> str:
        return self.prefix.strip("/")

    def matches(self, path: str) -> bool:
        path = path.split("?", 1)[0]
        return path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/")


def find_route(routes: list[Route], path: str) -> Route | None:
    """The first route whose prefix covers ``path`` (a request path, query string allowed)."""
    for route in routes:
        if route.matches(path):
            return route
    return None


def is_upgrade(request: Request) -> bool:
    """True for a WebSocket upgrade request."""
    return "Sec-WebSocket-Key" in request.headers
