"""0.1's path of :mod:`localsync.sync.local`."""

from localsync.sync.local import create_local_synchronizer

__all__ = ["create_local_synchronizer"]
