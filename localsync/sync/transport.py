"""What a synchronizer needs from whatever carries its messages: the :class:`Transport`.

Every synchronizer is a :class:`~localsync.sync.synchronizer.Synchronizer` built from a store and
a Transport, as TinyBase builds each of its synchronizers through ``createCustomSynchronizer``.
A new transport is one short class (or three functions handed to
:func:`~localsync.sync.synchronizer.create_custom_synchronizer`)::

    class MyTransport:
        def send(self, to_client_id, request_id, message, body): ...  # queue, never block
        def register_receive(self, receive): ...  # call receive(from_id, request_id, msg, body)
        def cancel(self): ...
        def destroy(self): ...

    synchronizer = Synchronizer(store, MyTransport(), request_timeout_seconds=1.0)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["FunctionTransport", "ReceiveFn", "SendFn", "Transport"]

#: ``send(to_client_id, request_id, message, body)``; ``to_client_id`` None broadcasts.
SendFn = Callable[[str | None, str | None, int, Any], None]
#: ``receive(from_client_id, request_id, message, body)``.
ReceiveFn = Callable[[str, str | None, int, Any], None]


class Transport(Protocol):
    """Carries the engine's messages between peers; makes no protocol decision.

    ``send`` must not block (queue the bytes); it is called on the synchronizer's event loop
    thread. The function given to ``register_receive`` should be called on that thread too
    (calls from other threads are handed over to it).
    """

    def send(
        self, to_client_id: str | None, request_id: str | None, message: int, body: Any
    ) -> None:
        """Send one message to ``to_client_id`` (None: every peer)."""

    def register_receive(self, receive: ReceiveFn) -> None:
        """Remember ``receive``: call it with every message a peer sends us."""

    def cancel(self) -> None:
        """First step of ``destroy``, before syncing stops: drop messages not delivered yet."""

    def destroy(self) -> Awaitable[None] | None:
        """Last step of ``destroy``, after syncing stopped: release the connection."""


class FunctionTransport:
    """A Transport made of plain functions (``create_custom_synchronizer``'s arguments).

    ``destroy`` may return an awaitable; ``cancel`` and ``destroy`` may be None (nothing to do).
    """

    send: SendFn

    def __init__(
        self,
        send: SendFn,
        register_receive: Callable[[ReceiveFn], Any],
        destroy: Callable[[], Any] | None = None,
        cancel: Callable[[], Any] | None = None,
    ) -> None:
        self.send = send  # (the function itself: one call less per message)
        self._register_receive = register_receive
        self._destroy = destroy
        self._cancel = cancel

    def register_receive(self, receive: ReceiveFn) -> None:
        self._register_receive(receive)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    def destroy(self) -> Awaitable[None] | None:
        if self._destroy is None:
            return None
        result: Awaitable[None] | None = self._destroy()
        return result
