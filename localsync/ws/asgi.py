"""The sync server as an ASGI application: mount it in FastAPI, Starlette or Litestar and serve
it with uvicorn or hypercorn, on the app's own port, behind the app's own middleware.

It is a second face of the one server core (:class:`localsync.ws.server.WsServer`): rooms,
relay, persistence, limits, auth, listeners and stats are the same objects as in
:func:`localsync.ws.server.create_ws_server`, and so are the options. Only the transport
differs: the ASGI server does the HTTP upgrade and framing, and this module adapts its
``websocket.*`` events to the core's :class:`~localsync.ws.connection.Connection`.

Mounting::

    sync = create_asgi_app(create_persister=...)
    app = FastAPI(lifespan=sync.lifespan)      # stores saved and clients closed on shutdown
    app.mount("/sync", sync)                   # rooms at ws://host:port/sync/<pathId>

The path inside the mount is the room (``/sync/doc1`` is room ``doc1``); ``authenticate(path_id,
request)`` gets an :class:`AsgiRequest` whose ``headers`` (cookies included) and ``path`` (with
the query string) come from the ASGI scope, which is ``request.scope``. A refused upgrade is
answered with its HTTP status (403, 401, 503...) where the ASGI server supports the
``websocket.http.response`` extension (uvicorn, hypercorn), else closed with 1008 before the
handshake completes (the server answers 403).

Shutdown: Starlette does not pass lifespan events to mounted apps, so give the app
``lifespan=sync.lifespan`` (or call ``await sync.aclose()``). It saves every room's store and
closes the connections still open with 1001. uvicorn closes open WebSockets itself (code 1012)
before the lifespan's shutdown runs; hypercorn cancels them after its ``graceful_timeout``,
and this app then closes them with 1001; the stores are saved either way. Run directly as the
top-level app, this app answers lifespan events itself.

Frames larger than the core's limit are refused with 1009, as by the standalone server;
uvicorn's own ``ws_max_size`` (16 MiB by default) may refuse them earlier. Unlike the
standalone server, uvicorn and hypercorn negotiate permessage-deflate with clients that offer
it (TinyBase's ``ws`` client does), which costs CPU on large syncs; uvicorn's
``ws_per_message_deflate=False`` turns it off (hypercorn has no such option).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Unpack

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close
from websockets.http11 import Request

from localsync.ws.handshake import offered_subprotocols
from localsync.ws.http import HttpReply, find_route
from localsync.ws.multiplex import SUBPROTOCOL
from localsync.ws.server import MAX_FRAME_SIZE, ServerOptions, WsServer, server_settings

__all__ = ["AsgiApp", "AsgiRequest", "create_asgi_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class AsgiRequest(Request):
    """The upgrade request as the core and ``authenticate`` see it, with its ASGI ``scope``."""

    scope: Scope = field(default_factory=dict)


def route_path(scope: Scope) -> str:
    """The request path inside the mount (``root_path`` removed), as Starlette routes it."""
    path: str = scope.get("path", "/")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path if path.startswith("/") else "/" + path


def request_of(scope: Scope) -> AsgiRequest:
    """The websockets-style request (path with query string, headers) of an ASGI scope.

    The offered subprotocols are the scope's ``subprotocols`` when its headers lack them
    (uvicorn's wsproto implementation passes them only there).
    """
    path = route_path(scope)
    query = scope.get("query_string", b"")
    if query:
        path += "?" + query.decode("latin-1")
    headers = Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    )
    offered = scope.get("subprotocols")
    if offered and "Sec-WebSocket-Protocol" not in headers:
        headers["Sec-WebSocket-Protocol"] = ", ".join(offered)
    return AsgiRequest(path, headers, scope=scope)


class AsgiConnection:
    """An accepted ASGI WebSocket as the core's :class:`~localsync.ws.connection.Connection`."""

    def __init__(
        self, request: AsgiRequest, subprotocol: str | None, receive: Receive, send: Send
    ) -> None:
        self.request: Request | None = request
        self.subprotocol = subprotocol
        client = request.scope.get("client")
        self.remote_address: Any = tuple(client) if client else None
        self._receive = receive
        self._send = send
        self._closed: Close | None = None

    def _gone(self) -> Exception:
        closed = self._closed or Close(1006, "")
        if closed.code in (1000, 1001):
            return ConnectionClosedOK(closed, None)
        return ConnectionClosedError(closed, None)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while self._closed is None:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > MAX_FRAME_SIZE:
                    await self.close(1009, "frame too large")
                    return
                yield data
            elif kind == "websocket.disconnect":
                self._closed = Close(int(message.get("code", 1005)), message.get("reason") or "")
                return

    async def send(self, message: str) -> None:
        if self._closed is not None:
            raise self._gone()
        try:
            await self._send({"type": "websocket.send", "text": message})
        except Exception:  # (the ASGI server's own "client disconnected" errors)
            if self._closed is None:
                self._closed = Close(1006, "")
            raise self._gone() from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed is not None:
            return
        self._closed = Close(code, reason)
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class AsgiApp:
    """The sync server as an ASGI application (build it with :func:`create_asgi_app`).

    ``server`` is the core: ``get_stats()``, ``get_path_ids()``, listeners and routes work as
    on a standalone server.
    """

    def __init__(self, server: WsServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """A lifespan for the host app (``FastAPI(lifespan=sync.lifespan)``): checks the
        backplane on entry (:class:`~localsync.errors.ChannelError`), closes on exit."""
        await self.server.check_backplane()
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Save every room's store and close every connection still open (1001)."""
        await self.server.destroy()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.server.check_backplane()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request = request_of(scope)
        client = scope.get("client")
        address = str(client[0]) if client else ""
        refusal = await self.server.admission.admit(request, address)
        if refusal is not None:
            self.server.count_rejected(request, refusal[1])
            await _refuse(scope, send, *refusal)
            return
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered_subprotocols(request) else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        connection = AsgiConnection(request, subprotocol, receive, send)
        try:
            await self.server.serve_connection(connection)
        except asyncio.CancelledError:
            # the ASGI server is stopping without telling the app first (hypercorn cancels
            # open connections after its graceful timeout, then would close them with 1011)
            await connection.close(1001, "server shutting down")
            raise

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = request_of(scope)
        route = find_route(self.server.routes, request.path)
        method = scope.get("method", "GET")
        if route is None or route.http is None or method not in ("GET", "HEAD"):
            reply = HttpReply(404, b"not found\n")
        else:
            refusal = await self.server.admission.admit_route(route, request)
            if refusal is not None:
                self.server.count_rejected(request, refusal[1])
                reply = HttpReply(refusal[0].value, (refusal[1] + "\n").encode())
            else:
                reply = await self.server.answer_http(route, request)
        await _respond(send, reply, method == "HEAD")


async def _respond(send: Send, reply: HttpReply, head: bool = False) -> None:
    headers = [
        (b"content-type", reply.content_type.encode("latin-1")),
        (b"content-length", str(len(reply.body)).encode()),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers),
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def _refuse(scope: Scope, send: Send, status: HTTPStatus, text: str) -> None:
    """Refuse an upgrade with its HTTP status where the server can, else close with 1008."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (text + "\n").encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status.value,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": text})


def create_asgi_app(
    create_persister: Callable[[str], Any] | None = None, **options: Unpack[ServerOptions]
) -> AsgiApp:
    """A TinyBase-compatible sync server as an ASGI app; the options are
    :func:`~localsync.ws.server.create_ws_server`'s (without host and port, which belong to
    the ASGI server); the backplane is checked at the lifespan's startup."""
    return AsgiApp(WsServer("", 0, create_persister, server_settings(options)))
