"""A client of a server's room that lives in the server's own process: the inspector's view of a
room and any other in-process follower join a room this way, through the same relay, limits and
stats as a socket, without a socket.

:class:`InProcessConnection` is a :class:`~localsync.ws.connection.Connection` whose frames
are pushed in by the caller and whose outgoing frames are handed to a callback;
:class:`InProcessTransport` puts a :class:`~localsync.sync.transport.Transport` on top, so
``Synchronizer(store, InProcessTransport(server, path_id), timeout)`` makes a store a client of
the room like any remote TinyBase client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Close
from websockets.http11 import Request

from localsync.sync.transport import ReceiveFn
from localsync.ws.connection import Connection
from localsync.ws.wire import PayloadDecoder, WireError, encode_payloads

__all__ = ["InProcessConnection", "InProcessTransport"]

_ids = itertools.count(1)


class ServesConnections(Protocol):
    """What an in-process client needs of a server (a :class:`~localsync.ws.server.WsServer`)."""

    async def serve_connection(self, ws: Connection) -> None: ...


class InProcessConnection:
    """One in-process client of room ``path_id``: ``push(frame)`` sends a frame to the room,
    frames for the client go to ``deliver(frame)``; ``close()`` leaves the room."""

    def __init__(
        self, path_id: str, deliver: Callable[[str], None], client_id: str | None = None
    ) -> None:
        self.client_id = client_id or f"in-process-{next(_ids)}"
        self.request: Request | None = Request(
            "/" + path_id, Headers({"Sec-WebSocket-Key": self.client_id})
        )
        self.subprotocol: str | None = None
        self.remote_address: Any = None
        self._deliver = deliver
        self._frames: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed: Close | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def push(self, frame: str) -> None:
        """Send ``frame`` (``to\\n[...]``) to the room, in order."""
        if self._closed is None:
            self._frames.put_nowait(frame)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while True:
            frame = await self._frames.get()
            if frame is None:
                return
            yield frame

    async def send(self, message: str) -> None:
        if self._closed is not None:
            raise ConnectionClosedOK(self._closed, None)
        self._deliver(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed is None:
            self._closed = Close(code, reason)
            self._frames.put_nowait(None)


class InProcessTransport:
    """A synchronizer transport into one room of an in-process server.

    Joins the room at construction (``server.serve_connection`` runs as a task until
    ``destroy``); messages are encoded and decoded with TinyBase's wire format, as a socket's
    would be, so the room cannot tell this client from a remote one.
    """

    def __init__(
        self,
        server: ServesConnections,
        path_id: str,
        *,
        request_timeout_seconds: float = 1.0,
        fragment_size: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._decoder = PayloadDecoder(request_timeout_seconds)
        self._fragment_size = fragment_size
        self._receive: ReceiveFn | None = None
        self._on_error = on_error
        self.connection = InProcessConnection(path_id, self._deliver)
        self._task = asyncio.ensure_future(server.serve_connection(self.connection))

    @property
    def client_id(self) -> str:
        return self.connection.client_id

    def _deliver(self, frame: str) -> None:
        receive = self._receive
        if receive is None:
            return
        try:
            for message in self._decoder.feed(frame):
                receive(message.client_id, message.request_id, message.message, message.body)
        except WireError as error:  # (the server only relays what it checked: never expected)
            if self._on_error is not None:
                self._on_error(error)

    def send(
        self, to_client_id: str | None, request_id: str | None, message: int, body: Any
    ) -> None:
        for payload in encode_payloads(
            to_client_id, request_id, message, body, self._fragment_size
        ):
            self.connection.push(payload)

    def register_receive(self, receive: ReceiveFn) -> None:
        self._receive = receive

    def cancel(self) -> None:
        self._receive = None

    async def destroy(self) -> None:
        await self.connection.close()
        with contextlib.suppress(Exception):
            await self._task
