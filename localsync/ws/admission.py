"""Who may connect: the checks a WebSocket server makes before it serves a request.

Both faces of a :class:`~localsync.ws.server.WsServer` (its own listener and the ASGI app)
ask :meth:`Admission.admit` at the upgrade, or :meth:`Admission.admit_route` for a route's
page or socket, and refuse with the status and text given. The checks, in order: shutting
down, path id, client limit, room limits, token, the ``authenticate`` hook. A shared socket's
channels are checked again as they subscribe (:meth:`Admission.room_refusal`,
:meth:`Admission.allowed`), since its rooms are only named then.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from websockets.http11 import Request

from localsync.ws.handshake import offered_subprotocols, request_token
from localsync.ws.http import Route, find_route, is_upgrade
from localsync.ws.multiplex import SUBPROTOCOL
from localsync.ws.room import Room, is_valid_path_id, path_id_of

__all__ = ["Admission", "Authenticate", "Refusal"]

#: (status, text) of a refused request
Refusal = tuple[HTTPStatus, str]
Authenticate = Callable[[str, Request], "bool | Awaitable[bool]"]


class Admission:
    """The upgrade checks of one server, and the count of rooms each address is in.

    Args:
        rooms: the server's rooms by path id (read: room and client counts).
        routes: the server's routes (a request for one is checked as the route asks).
        persisted: whether rooms are persisted (then the empty path, which has no file name,
            is refused).
        token: the bearer token every request must carry, if any (401 without, 403 wrong).
        authenticate: ``authenticate(path_id, request)``; False or an exception -> 403.
        max_clients, max_rooms, max_rooms_per_address: limits (503 when reached).
        report: where a failing ``authenticate`` hook's exception goes.
        stats: the server's counters (``rooms_refused`` is counted here).
    """

    def __init__(
        self,
        rooms: Mapping[str, Room],
        routes: list[Route],
        *,
        persisted: bool,
        token: str | None,
        authenticate: Authenticate | None,
        max_clients: int | None,
        max_rooms: int | None,
        max_rooms_per_address: int | None,
        report: Callable[[BaseException], None],
        stats: dict[str, int],
    ) -> None:
        self._rooms = rooms
        self._routes = routes
        self._persisted = persisted
        self._token = token
        self._authenticate = authenticate
        self._max_clients = max_clients
        self._max_rooms = max_rooms
        self._max_rooms_per_address = max_rooms_per_address
        self._report = report
        self._stats = stats
        # the rooms each remote address is in, with how many of its clients are in each
        self._address_rooms: dict[str, dict[str, int]] = {}
        #: set when the server starts shutting down: every request is refused (503)
        self.shutting_down = False

    async def admit(self, request: Request, address: str) -> Refusal | None:
        """Why a WebSocket upgrade from ``address`` is refused, or None to accept it."""
        route = find_route(self._routes, request.path)
        if route is not None and route.socket is not None:
            return await self.admit_route(route, request)
        path_id = path_id_of(request.path)
        if self.shutting_down:
            return HTTPStatus.SERVICE_UNAVAILABLE, "shutting down"
        shared = SUBPROTOCOL in offered_subprotocols(request)
        # (a shared socket's own path is only a prefix: its rooms are path/channel)
        if path_id is None or not is_valid_path_id(
            path_id, allow_empty=shared or not self._persisted
        ):
            return HTTPStatus.BAD_REQUEST, "invalid path id"
        if not is_upgrade(request):
            return HTTPStatus.BAD_REQUEST, "not a WebSocket request"
        if self._max_clients is not None and self.client_count() >= self._max_clients:
            return HTTPStatus.SERVICE_UNAVAILABLE, "too many clients"
        if not shared:  # (a shared socket's rooms are checked as its channels subscribe)
            refusal = self.room_refusal(path_id, address)
            if refusal is not None:
                return HTTPStatus.SERVICE_UNAVAILABLE, refusal
        token_refusal = self._token_refusal(request)
        if token_refusal is not None:
            return token_refusal
        if not await self.allowed(path_id, request):
            return HTTPStatus.FORBIDDEN, "forbidden"
        return None

    async def admit_route(self, route: Route, request: Request) -> Refusal | None:
        """Why a request for ``route`` is refused, or None to serve it (a route that asks
        for it gets the token and ``authenticate`` checks, with its name as the path id)."""
        if self.shutting_down:
            return HTTPStatus.SERVICE_UNAVAILABLE, "shutting down"
        if not route.auth:
            return None
        refusal = self._token_refusal(request)
        if refusal is not None:
            return refusal
        if not await self.allowed(route.name, request):
            return HTTPStatus.FORBIDDEN, "forbidden"
        return None

    def room_refusal(self, path_id: str, address: str) -> str | None:
        """Why a client from ``address`` may not join ``path_id`` now (room limits), or None;
        a refusal is counted in ``rooms_refused``."""
        refusal = None
        limit = self._max_rooms
        if limit is not None and path_id not in self._rooms and len(self._rooms) >= limit:
            refusal = "too many rooms"
        limit = self._max_rooms_per_address
        if refusal is None and limit is not None:
            rooms = self._address_rooms.get(address, {})
            if path_id not in rooms and len(rooms) >= limit:
                refusal = "too many rooms for this address"
        if refusal is not None:
            self._stats["rooms_refused"] += 1
        return refusal

    async def allowed(self, path_id: str, request: Request) -> bool:
        """The ``authenticate`` hook's verdict (True without one; False when it raises)."""
        if self._authenticate is None:
            return True
        try:
            allowed = self._authenticate(path_id, request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception as exc:
            self._report(exc)
            return False
        return bool(allowed)

    def client_count(self) -> int:
        """Clients in every room (a shared socket counts once per channel)."""
        return sum(len(room.clients) for room in self._rooms.values())

    def joined(self, address: str, path_id: str) -> None:
        """Count a client from ``address`` in ``path_id`` (for ``max_rooms_per_address``)."""
        rooms = self._address_rooms.setdefault(address, {})
        rooms[path_id] = rooms.get(path_id, 0) + 1

    def left(self, address: str, path_id: str) -> None:
        """Uncount a client that :meth:`joined`."""
        rooms = self._address_rooms.get(address)
        if rooms is None:
            return
        left = rooms.get(path_id, 0) - 1
        if left > 0:
            rooms[path_id] = left
            return
        rooms.pop(path_id, None)
        if not rooms:
            del self._address_rooms[address]

    def _token_refusal(self, request: Request) -> Refusal | None:
        if self._token is None:
            return None
        supplied = request_token(request)
        if supplied is None:
            return HTTPStatus.UNAUTHORIZED, "token required"
        if not hmac.compare_digest(supplied.encode(), self._token.encode()):
            return HTTPStatus.FORBIDDEN, "bad token"
        return None
