"""In-process synchronizer: TinyBase's ``createLocalSynchronizer``.

Every local synchronizer in this process that runs on the same event loop is on one bus (one
loop plays the part of one JavaScript realm; synchronizers bound to another loop, or to a
closed one, are not reached). Messages are delivered on a later loop turn (``call_soon``,
TinyBase's ``setTimeout(0)``) so that a sender never re-enters a receiver from inside its own
transaction, and so that delivery order is the send order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from localsync.core.codec import get_unique_id
from localsync.core.protocols import SyncStore
from localsync.sync.synchronizer import Synchronizer
from localsync.sync.transport import ReceiveFn, SendFn

__all__ = ["LocalSynchronizer", "LocalTransport", "create_local_synchronizer"]

# client id -> its transport; insertion order is the broadcast order, as in TinyBase.
_clients: dict[str, LocalTransport] = {}


class LocalTransport:
    """The Transport of a local synchronizer: the process-wide in-memory bus."""

    def __init__(self) -> None:
        self.client_id = get_unique_id()
        self.receive: ReceiveFn | None = None
        self.synchronizer: Synchronizer | None = None
        self._handles: set[asyncio.Handle] = set()

    def _reachable_from(self, loop: asyncio.AbstractEventLoop) -> bool:
        bound = self.synchronizer._loop if self.synchronizer is not None else None
        return bound is None or bound is loop

    def _left_behind(self) -> bool:
        bound = self.synchronizer._loop if self.synchronizer is not None else None
        return bound is not None and bound.is_closed()

    def send(
        self, to_client_id: str | None, request_id: str | None, message: int, body: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        client_id = self.client_id
        for other, peer in list(_clients.items()):
            if peer._left_behind():
                del _clients[other]  # left behind by a finished asyncio.run()
        if to_client_id is None:
            recipients = [other for other in _clients if other != client_id]
        else:
            recipients = [to_client_id]

        def deliver() -> None:
            self._handles.discard(handle)
            for recipient in recipients:
                peer = _clients.get(recipient)
                if peer is not None and peer.receive is not None and peer._reachable_from(loop):
                    peer.receive(client_id, request_id, message, body)

        handle = loop.call_soon(deliver)
        self._handles.add(handle)

    def register_receive(self, receive: ReceiveFn) -> None:
        self.receive = receive

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    def destroy(self) -> None:
        _clients.pop(self.client_id, None)


class LocalSynchronizer(Synchronizer):
    """A Synchronizer on the process-wide in-memory bus; ``client_id`` names it on the bus."""

    _transport: LocalTransport

    @property
    def client_id(self) -> str:
        return self._transport.client_id


def create_local_synchronizer(
    store: SyncStore,
    on_send: SendFn | None = None,
    on_receive: ReceiveFn | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    request_timeout_seconds: float = 0.05,
    anti_entropy_seconds: float | None = None,
) -> LocalSynchronizer:
    """A synchronizer that talks to the other local synchronizers of this process."""
    transport = LocalTransport()
    synchronizer = LocalSynchronizer(
        store,
        transport,
        request_timeout_seconds,
        on_send=on_send,
        on_receive=on_receive,
        on_ignored_error=on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
    )
    transport.synchronizer = synchronizer
    _clients[transport.client_id] = transport
    return synchronizer
