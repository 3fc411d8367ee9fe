"""A byte-bounded queue of outgoing WebSocket text frames, and the loop that drains it.

Why bounded: a peer that reads slower than we write must not make us buffer without limit.
The WebSocket client and the server (one queue per connected client) share this: a frame that
would take the queue past its limit, or is larger than TinyBase's payload limit, is refused and
the caller closes that connection with TinyBase's overflow code.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from localsync.ws.wire import MAX_PAYLOAD_SIZE

__all__ = ["FrameQueue"]


class FrameQueue:
    """Frames waiting for one socket, at most ``max_bytes`` of them (UTF-8 sizes)."""

    __slots__ = ("_frames", "_wake", "max_bytes", "queued")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.queued = 0
        self._frames: deque[tuple[str, int]] = deque()
        self._wake = asyncio.Event()

    def put(self, payload: str, size: int) -> bool:
        """Queue one frame of ``size`` bytes; False (nothing queued) when over a limit."""
        if size > MAX_PAYLOAD_SIZE or self.queued + size > self.max_bytes:
            return False
        self._frames.append((payload, size))
        self.queued += size
        self._wake.set()
        return True

    def clear(self) -> None:
        self._frames.clear()
        self.queued = 0

    async def drain(self, ws: Any, keep_going: Callable[[], bool]) -> None:
        """Send frames to ``ws`` in order while ``keep_going()``; ends when the socket closes."""
        frames = self._frames
        try:
            while keep_going():
                while frames and keep_going():
                    payload, size = frames.popleft()
                    self.queued -= size
                    await ws.send(payload)
                self._wake.clear()
                await self._wake.wait()
        except ConnectionClosed:
            pass
