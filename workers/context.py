"""What the user's function gets inside a worker process.

The context is the worker's whole interface to the pool: who it is (index, attempt), whether
it is being asked to stop, and its synchronized store. Stopping is cooperative: SIGTERM and
SIGINT only set ``stop_event``, so a function that checks ``ctx.stopping`` (or sleeps with
``ctx.sleep``) gets to finish its current transaction and have it flushed to the channel,
instead of dying with half its work unsent. The pool escalates to SIGKILL after a grace period
for functions that never look.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from localsync.core.mergeable_store import MergeableStore


@dataclass
class WorkerContext:
    """Handed to the user function as its first argument: ``fn(ctx, *args, **kwargs)``.

    ``index``: 0-based position of the worker in the pool (stable across restarts).
    ``attempt``: 1 for the first run of this index, 2 for the first restart, ...
    ``count``: number of workers in the pool.
    ``channel``: the channel name the store is synchronized over, or ``None``.
    ``store``: a :class:`localsync.MergeableStore` created in this process and kept in sync
    over ``channel`` on a background thread (plain blocking calls, no asyncio); ``None`` when
    the pool has no channel.
    ``stop_event``: set when the pool (or anyone) sends SIGTERM/SIGINT to this worker.
    """

    index: int
    attempt: int
    count: int
    channel: str | None = None
    store: MergeableStore | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    _flush: Callable[[float], bool] | None = field(default=None, repr=False)

    @property
    def stopping(self) -> bool:
        """True once the worker has been asked to stop; return from the function soon."""
        return self.stop_event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on a stop request.

        Returns True if the worker should keep going (not stopping), so loops read naturally:
        ``while ctx.sleep(0.1): ...``.
        """
        return not self.stop_event.wait(max(0.0, seconds))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until this worker's changes so far have been handed to the channel.

        The worker does this by itself after the function returns; call it mid-run only to
        bound how much work a crash could lose. Returns False if not confirmed within
        ``timeout``; True at once when there is no channel.
        """
        return True if self._flush is None else self._flush(timeout)
