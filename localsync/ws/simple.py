"""TinyBase's ``createWsServerSimple`` face: a relay without persistence or listeners."""

from __future__ import annotations

from typing import TYPE_CHECKING

from websockets.asyncio.server import Server

if TYPE_CHECKING:
    from localsync.ws.server import WsServer

__all__ = ["WsServerSimple"]


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
