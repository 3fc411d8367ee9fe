"""0.1's path of :mod:`localsync.ws.client`."""

from localsync.ws.client import WsSynchronizer, create_ws_synchronizer

__all__ = ["WsSynchronizer", "create_ws_synchronizer"]
