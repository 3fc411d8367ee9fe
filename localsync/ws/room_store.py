"""The server store of each room: loaded from its persister when the room gains a client,
synchronized with the room's clients as client ``"S"`` (and with the other server instances
through the backplane), saved and closed when the room empties.

One task per room does every start and stop in turn (:meth:`RoomStores.steer`), so connection
churn costs at most one stop and one start before the next client is served. Messages for the
store that arrive while it loads are held by the server (``Room.buffer``) and handed over here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localsync.errors import TinyBaseError
from localsync.sync.engine import ERROR_SYNC_RESPONSE
from localsync.ws.room import Room, holds_no_data
from localsync.ws.wire import Decoded, encode_payloads

if TYPE_CHECKING:
    from localsync.ws.backplane import Backplane

__all__ = ["RoomStores"]

logger = logging.getLogger("localsync.ws_server")


class RoomStores:
    """Starts and stops the rooms' server stores for one server.

    ``relay(room, payload)`` sends the store's payload (``to\\n[...]``) to the room's clients,
    ``deliver(room, from_id, message)`` hands a held message to the store, ``evict(room)``
    closes the clients of a room whose store could not start, ``forget(room)`` drops a room
    that is empty and idle; ``stats`` is the server's counter dict.
    """

    def __init__(
        self,
        create_persister: Callable[[str], Any] | None,
        backplane: Backplane | None,
        *,
        request_timeout_seconds: float,
        fragment_size: int | None,
        discard_empty_path: Callable[[str], Any] | None,
        relay: Callable[[Room, str], None],
        deliver: Callable[[Room, str, Decoded], None],
        evict: Callable[[Room], None],
        forget: Callable[[Room], None],
        report: Callable[[BaseException], None],
        stats: dict[str, int],
    ) -> None:
        self._create_persister = create_persister
        self._backplane = backplane
        self._timeout = request_timeout_seconds
        self._fragment_size = fragment_size
        self._discard_empty_path = discard_empty_path
        self._relay = relay
        self._deliver = deliver
        self._evict = evict
        self._forget = forget
        self._report = report
        self._stats = stats

    def steer(self, path: Room) -> None:
        """Run the room's lifecycle task unless it runs already (it re-checks when done)."""
        if self._create_persister is not None and path.lifecycle is None:
            path.lifecycle = asyncio.ensure_future(self._run_lifecycle(path))

    async def _run_lifecycle(self, path: Room) -> None:
        """Start or stop the room's store until it matches whether the room has clients.

        One task per room does every start and stop in turn, so churn collapses: a start
        never waits behind a queue of stops, and a client that comes back while the store is
        still up keeps it. A room without clients and without a store is forgotten.
        """
        try:
            while True:
                if (path.clients or path.buffer) and not path.up:
                    await self._start_store(path)
                elif not path.clients and path.up:
                    await self._stop_store(path)
                else:
                    break
        finally:
            path.lifecycle = None
            self._forget(path)

    async def _start_store(self, path: Room) -> None:
        """Load the room's store from its persister and start syncing it as client "S"."""
        path.ready = False  # (until it can take messages, they are held: see _hold)
        try:
            assert self._create_persister is not None
            persister = self._create_persister(path.id)
            if inspect.isawaitable(persister):
                persister = await persister
            path.up = True
            if persister is not None:
                from localsync.sync.synchronizer import create_custom_synchronizer

                path.persister = persister
                store = persister.get_store()

                def send(to: str | None, request_id: str | None, message: int, body: Any) -> None:
                    for payload in encode_payloads(
                        to, request_id, message, body, self._fragment_size
                    ):
                        self._relay(path, payload)

                def register_receive(receive: Callable[..., None]) -> None:
                    path.receive = receive

                path.synchronizer = create_custom_synchronizer(
                    store,
                    send,
                    register_receive,
                    lambda: None,
                    self._timeout,
                    on_ignored_error=self._report,
                )
                await persister.start_auto_load()
                await persister.start_auto_save()
                if self._backplane is not None:  # (before the clients' changes: see attach)
                    await self._backplane.attach(path.id, store)
                syncing = asyncio.ensure_future(path.synchronizer.start_sync())
                # messages held back while the store loaded go in as soon as the synchronizer
                # accepts them: before its own first pull completes, which waits for clients
                # whose answers may be among them
                while not syncing.done() and not path.synchronizer.is_auto_loading():
                    await asyncio.sleep(0)
                self._flush(path)
                if not path.clients:  # (they left while it loaded: nobody will answer)
                    path.synchronizer.engine.reject_pending_requests(
                        TinyBaseError(ERROR_SYNC_RESPONSE, "everyone left")
                    )
                await syncing
        except Exception as exc:
            self._report(exc)
            logger.exception("could not start the store of /%s", path.id)
            path.buffer, path.buffered = [], 0
            self._evict(path)
            return
        finally:
            self._flush(path)

    def _flush(self, path: Room) -> None:
        path.ready = True
        buffered, path.buffer, path.buffered = path.buffer, [], 0
        for from_id, message in buffered:
            # also from clients that left meanwhile: their changes must reach the store
            self._deliver(path, from_id, message)

    async def _stop_store(self, path: Room) -> None:
        """Save and close the room's store; discard its file when it never held data."""
        path.ready = False  # (a client joining meanwhile waits for the next start)
        synchronizer, persister = path.synchronizer, path.persister
        path.synchronizer = path.persister = path.receive = None
        empty = False
        try:
            if synchronizer is not None:
                try:  # first: it fails what it still waits for (nobody is left to answer)
                    await synchronizer.destroy()
                except Exception as exc:
                    self._report(exc)
            if self._backplane is not None:
                try:  # (the other instances get what the store still had first)
                    await self._backplane.detach(path.id)
                except Exception as exc:
                    self._report(exc)
            if persister is not None:
                try:  # (no more watching the file: the store is going)
                    await persister.stop_auto_load()
                except Exception as exc:
                    self._report(exc)
                try:  # whatever the last changes were, they are on disk before the store goes
                    await persister.save()
                except Exception as exc:
                    self._report(exc)
                try:
                    await persister.destroy()
                except Exception as exc:
                    self._report(exc)
                empty = holds_no_data(persister)
        finally:
            path.up = False
        if empty and self._discard_empty_path is not None:
            try:
                discarded = self._discard_empty_path(path.id)
                if inspect.isawaitable(discarded):
                    discarded = await discarded
                if discarded:
                    self._stats["rooms_discarded"] += 1
            except Exception as exc:
                self._report(exc)
