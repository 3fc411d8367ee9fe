"""0.1's path of :mod:`localsync.sync.blocking`."""

from localsync.sync.blocking import BlockingSynchronizer, blocking, run_coroutine

__all__ = ["BlockingSynchronizer", "blocking", "run_coroutine"]
