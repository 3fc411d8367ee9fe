"""A store in this process joined to a channel, for code that does not use asyncio.

Workers (and the demo's observer) need a MergeableStore that stays in sync with the channel
while plain blocking code writes to it. The synchronizer runs on the engine's blocking facade
(:mod:`localsync.sync.blocking`, a private event-loop thread); the store's own lock makes writes
from the worker's thread safe, and the engine hands each local transaction to the loop.

Flushing is what makes a normal exit lose nothing:

``"sent"``
    every transaction committed so far has been handed to the channel's socket (the loop has
    run everything queued before the flush; closing then waits, at most
    ``FLUSH_ON_CLOSE_SECONDS``, until a ping sent after them has come back through the hub,
    or over NATS until the server answered a PING sent after them, so the hub or server holds
    them before the process exits). Needs nobody else; a message dropped by
    PUB/SUB after that point is only healed while some process still holds the data.
``"acknowledged"``
    additionally waits until a coordinator announces that it durably saved the content of
    a state this store passed through since the flush began
    (``ChannelSynchronizer.wait_acknowledged``): the data survives every process exiting.
    Needs a coordinator on the channel; other processes may keep writing meanwhile.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Literal

from localsync.core.mergeable_store import MergeableStore

FlushMode = Literal["sent", "acknowledged"]
FLUSH_MODES: tuple[str, ...] = ("sent", "acknowledged")


class StoreLink:
    """Owns one store, its channel synchronizer and the thread driving it."""

    def __init__(self, store: MergeableStore, sync: Any, flush_mode: FlushMode) -> None:
        self.store = store
        self.sync = sync
        self.flush_mode = flush_mode

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until our changes are out, per ``flush_mode``."""
        deadline = time.monotonic() + timeout
        try:
            # runs on the loop after every hand-off queued by our transactions so far, and
            # returns once the resulting sends (and any request in flight) are done
            if not self.sync.wait_until_idle(timeout):
                return False
            if self.flush_mode == "acknowledged":
                remaining = max(0.001, deadline - time.monotonic())
                self.sync.background_loop.run(
                    self.sync.synchronizer.wait_acknowledged(remaining), remaining + 5.0
                )
        except (TimeoutError, OSError):
            return False
        return True

    def close(self) -> None:
        """Leave the channel (ZeroMQ lingers to push out what is queued) and stop the thread."""
        with contextlib.suppress(Exception):
            self.sync.close()


def open_link(
    channel: str,
    options: Mapping[str, Any],
    start_timeout: float,
    flush_mode: FlushMode = "sent",
) -> StoreLink:
    """Create a store, join ``channel`` and finish the initial sync, or raise."""
    from localsync.channel.synchronizer import create_channel_synchronizer
    from localsync.core.mergeable_store import create_mergeable_store
    from localsync.sync.blocking import BlockingSynchronizer

    if flush_mode not in FLUSH_MODES:
        raise ValueError(f"flush must be one of {FLUSH_MODES}, not {flush_mode!r}")
    store = create_mergeable_store()
    sync = BlockingSynchronizer(
        create_channel_synchronizer, store, channel, timeout=start_timeout, **dict(options)
    )
    try:
        sync.start_sync(timeout=start_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            sync.close()
        raise
    return StoreLink(store, sync, flush_mode)
