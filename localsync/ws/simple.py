"""TinyBase's ``createWsServerSimple`` face: a relay without persistence or listeners."""

from __future__ import annotations

from typing import TYPE_CHECKING

from websockets.asyncio.server import Server

from localsync.ws.wire import MAX_PAYLOAD_SIZE

if TYPE_CHECKING:
    from localsync.ws.server import Authenticate, IgnoredErrorHandler, WsServer

__all__ = ["WsServerSimple", "create_ws_server_simple"]


class WsServerSimple:
    """TinyBase's ``createWsServerSimple``: a pure relay, no persistence, no listeners."""

    def __init__(self, inner: WsServer) -> None:
        self._inner = inner

    @property
    def port(self) -> int:
        return self._inner.port

    @property
    def url(self) -> str:
        return self._inner.url

    def get_web_socket_server(self) -> Server | None:
        return self._inner.get_web_socket_server()

    def get_stats(self) -> dict[str, int]:
        return self._inner.get_stats()

    async def destroy(self) -> None:
        await self._inner.destroy()

    async def __aenter__(self) -> WsServerSimple:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()


async def create_ws_server_simple(
    host: str = "127.0.0.1",
    port: int = 8048,
    *,
    on_ignored_error: IgnoredErrorHandler | None = None,
    authenticate: Authenticate | None = None,
    token: str | None = None,
    max_queue_bytes: int = MAX_PAYLOAD_SIZE,
    max_clients: int | None = None,
) -> WsServerSimple:
    """Start a relay-only server (TinyBase's ``createWsServerSimple``)."""
    from localsync.ws.server import ServerSettings, WsServer  # (it builds on this module)

    settings = ServerSettings(
        on_ignored_error=on_ignored_error,
        authenticate=authenticate,
        token=token,
        max_queue_bytes=max_queue_bytes,
        max_clients=max_clients,
    )
    server = WsServer(host, port, None, settings, listeners=False)
    await server.listen()
    return WsServerSimple(server)
