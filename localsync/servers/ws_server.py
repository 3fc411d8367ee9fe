"""0.1's path of :mod:`localsync.ws.server`."""

from localsync.ws.server import WsServer, WsServerSimple, create_ws_server, create_ws_server_simple

__all__ = ["WsServer", "WsServerSimple", "create_ws_server", "create_ws_server_simple"]
