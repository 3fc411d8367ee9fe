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
from localsync.sync.synchronizer import ReceiveFn, SendFn, Synchronizer

__all__ = ["LocalSynchronizer", "create_local_synchronizer"]

# client id -> (receive, synchronizer); insertion order is the broadcast order, as in TinyBase.
_clients: dict[str, tuple[ReceiveFn, Synchronizer]] = {}


def _reachable(synchronizer: Synchronizer, loop: asyncio.AbstractEventLoop) -> bool:
    bound = synchronizer._loop
    return bound is None or bound is loop


class LocalSynchronizer(Synchronizer):
    """A Synchronizer on the process-wide in-memory bus; ``client_id`` names it on the bus."""

    client_id: str


def create_local_synchronizer(
    store: Any,
    on_send: SendFn | None = None,
    on_receive: ReceiveFn | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    request_timeout_seconds: float = 0.05,
    anti_entropy_seconds: float | None = None,
) -> LocalSynchronizer:
    """A synchronizer that talks to the other local synchronizers of this process."""
    client_id = get_unique_id()
    handles: set[asyncio.Handle] = set()

    def send(to_client_id: str | None, request_id: str | None, message: int, body: Any) -> None:
        loop = asyncio.get_running_loop()
        for other, (_, peer) in list(_clients.items()):
            if peer._loop is not None and peer._loop.is_closed():
                del _clients[other]  # left behind by a finished asyncio.run()
        if to_client_id is None:
            recipients = [other for other in _clients if other != client_id]
        else:
            recipients = [to_client_id]

        def deliver() -> None:
            handles.discard(handle)
            for recipient in recipients:
                entry = _clients.get(recipient)
                if entry is not None and _reachable(entry[1], loop):
                    entry[0](client_id, request_id, message, body)

        handle = loop.call_soon(deliver)
        handles.add(handle)

    registered: list[ReceiveFn] = []

    def register_receive(receive: ReceiveFn) -> None:
        registered.append(receive)

    def cancel_scheduled_messages() -> None:
        for handle in handles:
            handle.cancel()
        handles.clear()

    def destroy() -> None:
        _clients.pop(client_id, None)

    synchronizer = LocalSynchronizer(
        store,
        send,
        register_receive,
        destroy,
        request_timeout_seconds,
        on_send,
        on_receive,
        on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
        pre_destroy=cancel_scheduled_messages,
    )
    synchronizer.client_id = client_id
    _clients[client_id] = (registered[-1], synchronizer)
    return synchronizer
