"""WebSocket sync servers that speak TinyBase 10's legacy wire format (``createWsServer``).

The URL path is the room (``ws://host:port/<pathId>``, see :mod:`localsync.ws.room`), a
client's id is its ``Sec-WebSocket-Key``, a payload ``to\\n[...]`` is relayed to ``to`` (or
to everyone else when ``to`` is empty) as ``from\\n[...]``, and a server-side MergeableStore
per path can take part as client ``"S"``. On top of TinyBase's behaviour:

* **Persistence**: ``create_persister(path_id) -> Persister | None`` (may be a coroutine);
  the room's store loads from it, saves every change, is synchronized like a client, and is
  stopped (saved, destroyed) when the last client leaves. One task per room starts and stops
  it, so churn costs at most one stop and one start before the next client is served.
* **Rooms that never held data** are handed to ``discard_empty_path(path_id)`` when given.
* **Path ids** are validated at the HTTP upgrade (400); the empty path only without
  persistence (:func:`is_valid_path_id`, :func:`path_file_name`).
* **Authentication**: ``token=`` (``Authorization: Bearer <t>`` or ``?token=<t>``; missing
  -> 401, wrong -> 403) and/or ``authenticate(path_id, request)`` (False -> 403).
* **Limits**: ``max_clients`` (503), ``max_rooms``, ``max_rooms_per_address`` (503 ``too
  many rooms`` at the upgrade; a shared socket's channel: close 1013 ``tinybase:15:rooms``)
  and ``max_rooms_per_socket`` (default and maximum 100: 1013 ``tinybase:15:channels``).
* **Back-pressure**: a client whose outgoing queue exceeds ``max_queue_bytes`` (16 MiB) is
  closed with 1013 ``tinybase:15:socket``.
* **Bad input** closes only that connection, with TinyBase's codes (1007 ``tinybase:14``,
  1013 ``tinybase:15:...``).
* **Shared sockets**: a client offering the ``tinybase`` subprotocol (TinyBase 9.3+) gets
  it; each of its channels joins the room ``<path>/<channel id>``
  (:mod:`localsync.ws.multiplex`).
* **Backplane**: ``backplane="nats://..."`` shares every room with other instances through a
  channel per room; each instance persists its own copy (:mod:`localsync.ws.backplane`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from localsync.core.collector import paused_for
from localsync.sync.engine import ERROR_SYNC_RESPONSE
from localsync.sync.persister import TinyBaseError
from localsync.ws.admission import Admission, Authenticate
from localsync.ws.connection import Connection
from localsync.ws.frame_queue import FrameQueue
from localsync.ws.handshake import select_subprotocol
from localsync.ws.http import HttpReply, Route, find_route, is_upgrade
from localsync.ws.multiplex import (
    MAX_CHANNELS,
    SUBPROTOCOL,
    ChannelMessage,
    MultiplexedSocket,
    Subscribe,
    channel_frame,
)
from localsync.ws.room import (
    Client,
    Room,
    address_of,
    is_valid_path_id,
    path_file_name,
    path_id_of,
)
from localsync.ws.room_store import RoomStores
from localsync.ws.simple import WsServerSimple, create_ws_server_simple
from localsync.ws.wire import (
    ERROR_MESSAGE,
    MAX_PAYLOAD_SIZE,
    SERVER_CLIENT_ID,
    Decoded,
    WireError,
    overflow_error,
    payload_size,
)

if TYPE_CHECKING:  # (the backplane, and the channel modules it needs, load when one is given)
    from localsync.ws.backplane import Backplane

__all__ = [
    "ServerOptions",
    "ServerSettings",
    "WsServer",
    "WsServerSimple",
    "create_ws_server",
    "create_ws_server_simple",
    "is_valid_path_id",
    "path_file_name",
    "server_settings",
]

logger = logging.getLogger("localsync.ws_server")

# messages buffered per path while its server store starts (TinyBase's limits)
MAX_START_BUFFER_COUNT = 1000
# Frames a little over the payload limit reach our decoder, which closes with TinyBase's 1013;
# anything larger is refused by websockets itself (1009) before it is buffered. At most
# _MAX_QUEUE frames wait unread per connection, so one connection holds at most ~64 MiB.
MAX_FRAME_SIZE = MAX_PAYLOAD_SIZE + 64 * 1024
_MAX_QUEUE = 4

PathIdsListener = Callable[["WsServer", str, int], None]
ClientIdsListener = Callable[["WsServer", str, str, int], None]
IgnoredErrorHandler = Callable[[BaseException], None]
DiscardEmptyPath = Callable[[str], "Any | Awaitable[Any]"]


@dataclass(frozen=True)
class ServerSettings:
    """What a :class:`WsServer` is configured with (the options of :func:`create_ws_server`)."""

    on_ignored_error: IgnoredErrorHandler | None = None
    request_timeout_seconds: float = 1.0
    fragment_size: int | None = None
    authenticate: Authenticate | None = None
    token: str | None = None
    max_queue_bytes: int = MAX_PAYLOAD_SIZE
    max_clients: int | None = None
    max_rooms: int | None = None
    max_rooms_per_address: int | None = None
    max_rooms_per_socket: int = MAX_CHANNELS
    discard_empty_path: DiscardEmptyPath | None = None
    backplane: Backplane | None = None
    health: bool = True
    metrics: bool = True
    inspector: bool = False


class ServerOptions(TypedDict, total=False):
    """The keyword options of :func:`create_ws_server` and
    :func:`~localsync.ws.asgi.create_asgi_app` (see :func:`create_ws_server`)."""

    on_ignored_error: IgnoredErrorHandler | None
    request_timeout_seconds: float
    fragment_size: int | None
    authenticate: Authenticate | None
    token: str | None
    max_queue_bytes: int
    max_clients: int | None
    max_rooms: int | None
    max_rooms_per_address: int | None
    max_rooms_per_socket: int
    discard_empty_path: DiscardEmptyPath | None
    backplane: str | Backplane | None
    health: bool
    metrics: bool
    inspector: bool


def server_settings(options: ServerOptions) -> ServerSettings:
    """The settings the options give (``TypeError`` for an unknown option, as a call would;
    ``ValueError`` for a backplane that is not ``"local"`` or a hub)."""
    unknown = set(options) - set(ServerOptions.__annotations__)
    if unknown:
        raise TypeError(f"unexpected option(s): {', '.join(sorted(unknown))}")
    given: dict[str, Any] = dict(options)
    spec = given.pop("backplane", None)
    backplane = None
    if spec is not None:
        from localsync.ws.backplane import create_backplane

        backplane = create_backplane(spec)
    return ServerSettings(**given, backplane=backplane)


class WsServer:
    """A running server; build it with ``await create_ws_server(...)``."""

    def __init__(
        self,
        host: str,
        port: int,
        create_persister: Callable[[str], Any] | None,
        settings: ServerSettings,
        *,
        listeners: bool = True,
    ) -> None:
        self._host = host
        self._requested_port = port
        # (the empty path has no file name: allowed only without the caller's persistence)
        persisted = create_persister is not None
        self._backplane = settings.backplane
        if self._backplane is not None:  # (every room gets a store, to put on its channel)
            create_persister = self._backplane.persisters(create_persister)
        self._create_persister = create_persister
        self._on_ignored_error = settings.on_ignored_error
        self._timeout = settings.request_timeout_seconds
        self._fragment_size = settings.fragment_size
        self._max_queue_bytes = settings.max_queue_bytes
        self._max_rooms_per_socket = min(settings.max_rooms_per_socket, MAX_CHANNELS)
        self._listeners_enabled = listeners
        # every room with a client or with a store still running (get_path_ids: with clients)
        self._paths: dict[str, Room] = {}
        self._server: Server | None = None
        # every open connection (closed with 1001 by destroy() when no websockets server does it)
        self._connections: set[Connection] = set()
        self._routes: list[Route] = []
        self._listeners: dict[str, tuple[str | None, Callable[..., None], bool]] = {}
        self._next_listener = 0
        self._destroying: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stats = {
            "connections": 0,
            "rejected": 0,
            "messages_received": 0,
            "messages_sent": 0,
            "bytes_received": 0,
            "bytes_sent": 0,
            "invalid": 0,
            "overflows": 0,
            "rooms_refused": 0,
            "rooms_discarded": 0,
        }
        self._stores = RoomStores(
            create_persister,
            self._backplane,
            request_timeout_seconds=self._timeout,
            fragment_size=self._fragment_size,
            discard_empty_path=settings.discard_empty_path,
            relay=self._relay_from_server,
            deliver=self._to_server,
            evict=self._evict,
            forget=self._forget,
            report=self._report,
            stats=self._stats,
        )
        self.admission = Admission(
            self._paths,
            self._routes,
            persisted=persisted,
            token=settings.token,
            authenticate=settings.authenticate,
            max_clients=settings.max_clients,
            max_rooms=settings.max_rooms,
            max_rooms_per_address=settings.max_rooms_per_address,
            report=self._report,
            stats=self._stats,
        )
        self._add_standard_routes(settings)

    # ----------------------------------------------------------------------------- start

    async def listen(self) -> None:
        """Start listening on the host and port given (the standalone face)."""
        await self.check_backplane()
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._process_request,
            select_subprotocol=select_subprotocol,
            max_size=MAX_FRAME_SIZE,
            max_queue=_MAX_QUEUE,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )

    @property
    def port(self) -> int:
        """The bound port (useful when created with port 0)."""
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}"

    def get_web_socket_server(self) -> Server | None:
        return self._server

    @property
    def backplane(self) -> Backplane | None:
        return self._backplane

    async def check_backplane(self) -> None:
        """:class:`~localsync.errors.ChannelError` (in bounded time) unless the hub answers."""
        if self._backplane is not None:
            await self._backplane.check()

    # ---------------------------------------------------------------------- public API

    def get_path_ids(self) -> list[str]:
        return [path_id for path_id, path in self._paths.items() if path.clients]

    def get_client_ids(self, path_id: str) -> list[str]:
        path = self._paths.get(path_id)
        return list(path.clients) if path is not None else []

    def add_path_ids_listener(self, listener: PathIdsListener) -> str:
        """``listener(server, path_id, +1 | -1)`` when a path gains its first client or empties."""
        return self._add_listener(None, listener, False)

    def add_client_ids_listener(self, path_id: str | None, listener: ClientIdsListener) -> str:
        """``listener(server, path_id, client_id, +1 | -1)``; ``path_id=None`` means any."""
        return self._add_listener(path_id, listener, True)

    def del_listener(self, listener_id: str) -> WsServer:
        self._listeners.pop(listener_id, None)
        return self

    def get_stats(self) -> dict[str, int]:
        """TinyBase's ``{"paths", "clients"}`` plus message, byte and error counters.

        ``paths`` counts rooms with clients; ``rooms`` also those whose store is still
        stopping; ``rooms_refused`` counts room-limit refusals and ``rooms_discarded`` the
        empty rooms whose files ``discard_empty_path`` deleted.
        """
        paths = sum(1 for path in self._paths.values() if path.clients)
        backplane = self._backplane.get_stats() if self._backplane is not None else {}
        return {
            "paths": paths,
            "clients": self.admission.client_count(),
            "rooms": len(self._paths),
            **self._stats,
            **backplane,
        }

    def get_persister_stats(self) -> dict[str, dict[str, float]]:
        """Each running room store's ``persister.get_stats()``, by path id (for metrics)."""
        return {
            path_id: room.persister.get_stats()
            for path_id, room in list(self._paths.items())
            if room.persister is not None
        }

    async def destroy(self) -> None:
        """Close every connection, stop every path (saving its store), stop listening."""
        if self._destroying is None:
            self.admission.shutting_down = True
            self._destroying = asyncio.ensure_future(self._destroy())
        await asyncio.shield(self._destroying)

    async def __aenter__(self) -> WsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()

    # ------------------------------------------------------------------------ listeners

    def _add_listener(
        self, path_id: str | None, listener: Callable[..., None], clients: bool
    ) -> str:
        if not self._listeners_enabled:
            raise TypeError("this server has no listeners (use create_ws_server)")
        self._next_listener += 1
        listener_id = str(self._next_listener)
        self._listeners[listener_id] = (path_id, listener, clients)
        return listener_id

    def _call_listeners(self, clients: bool, path_id: str, *args: Any) -> None:
        for wanted, listener, for_clients in list(self._listeners.values()):
            if for_clients is not clients or (clients and wanted not in (None, path_id)):
                continue
            try:
                listener(self, path_id, *args)
            except Exception as exc:  # a listener must not break the server
                self._report(exc)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, error: BaseException) -> None:
        if self._on_ignored_error is not None:
            try:
                self._on_ignored_error(error)
            except Exception:
                logger.exception("on_ignored_error failed")
        else:
            logger.debug("ignored: %r", error)

    # ------------------------------------------------------------------------- handshake

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        route = find_route(self._routes, request.path)
        if route is not None and not is_upgrade(request) and route.http is not None:
            refusal = await self.admission.admit_route(route, request)
            if refusal is not None:
                return self._reject(connection, *refusal)
            reply = await self.answer_http(route, request)
            headers = Headers([("Content-Type", reply.content_type), *reply.headers])
            headers["Content-Length"] = str(len(reply.body))
            status = HTTPStatus(reply.status)
            return Response(status.value, status.phrase, headers, reply.body)
        refusal = await self.admission.admit(request, address_of(connection))
        if refusal is not None:
            return self._reject(connection, *refusal)
        return None

    def _add_standard_routes(self, settings: ServerSettings) -> None:
        # (imported here, only when asked for: these modules build on this one)
        if settings.health or settings.metrics:
            from localsync.metrics import health_route, metrics_route

            if settings.health:
                self.add_route(health_route(self))
            if settings.metrics:
                self.add_route(metrics_route(self))
        if settings.inspector:
            from localsync.ws.inspector import inspector_route

            self.add_route(inspector_route(self, request_timeout_seconds=self._timeout))

    def add_route(self, route: Route) -> None:
        """Serve ``route`` (HTTP and/or WebSocket) under its prefix instead of a room."""
        self._routes.append(route)

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    async def answer_http(self, route: Route, request: Request) -> HttpReply:
        """The route's reply to a plain HTTP request (500 when its handler fails)."""
        assert route.http is not None
        try:
            reply = route.http(request)
            if inspect.isawaitable(reply):
                reply = await reply
            return reply
        except Exception as exc:
            self._report(exc)
            return HttpReply(500, b"internal error\n")

    def _reject(self, connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
        self.count_rejected(connection, text)
        return connection.respond(status, text + "\n")

    def count_rejected(self, connection: Any, text: str) -> None:
        """Count and log a refused request (either face)."""
        self._stats["rejected"] += 1
        logger.info("refused %s: %s", getattr(connection, "remote_address", "?"), text)

    # ----------------------------------------------------------------------- connection

    async def _handle(self, ws: ServerConnection) -> None:
        await self.serve_connection(ws)

    async def serve_connection(self, ws: Connection) -> None:
        """Serve one admitted connection (see :meth:`Admission.admit`) until it closes."""
        self._connections.add(ws)
        try:
            await self._serve(ws)
        finally:
            self._connections.discard(ws)

    async def _serve(self, ws: Connection) -> None:
        request = ws.request
        assert request is not None
        route = find_route(self._routes, request.path)
        if route is not None and route.socket is not None:
            try:
                await route.socket(ws)
            except ConnectionClosed:
                pass
            except Exception as exc:
                self._report(exc)
                with contextlib.suppress(Exception):
                    await ws.close(1011, "internal error")
            return
        path_id = path_id_of(request.path) or ""
        client_id = request.headers["Sec-WebSocket-Key"]
        self._stats["connections"] += 1
        if ws.subprotocol == SUBPROTOCOL:
            await self._handle_shared(ws, path_id, client_id)
            return
        path = self._paths.get(path_id)
        if path is not None and client_id in path.clients:
            await ws.close(1008, "duplicate client id")
            return
        if self.admission.room_refusal(path_id, address_of(ws)) is not None:  # (raced)
            error = overflow_error("rooms")
            await ws.close(error.code, error.reason)
            return
        path = self._add_client(path_id, client_id, ws)
        client = path.clients[client_id]
        client.writer = asyncio.ensure_future(self._write(client))
        logger.info("client %s joined /%s from %s", client_id, path_id, ws.remote_address)
        try:
            async for data in ws:
                if client.closing:
                    break
                text = data if isinstance(data, str) else data.decode("utf-8", "replace")
                self._stats["bytes_received"] += len(text)
                failed = self._receive(client, text)
                if failed is not None:
                    client.closing = True
                    await ws.close(failed.code, failed.reason)
                    break
        except ConnectionClosed:
            pass
        finally:
            client.closing = True
            self._del_client(client)
            if client.writer is not None:
                client.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await client.writer
            logger.info("client %s left /%s", client_id, path_id)

    def _receive(self, client: Client, text: str) -> WireError | None:
        """Decode and route one frame of a legacy socket; the error that must close it.

        Any error of the decoder's checks (such as OverflowError for a JSON integer too
        large for a float) is invalid input too, never a crash of the connection.
        """
        with paused_for(len(text)):  # (a large message is also dropped in the block)
            try:
                decoded = client.decoder.feed(text)
            except Exception as exc:
                client.decoder.clear()
                error = exc if isinstance(exc, WireError) else WireError(ERROR_MESSAGE)
                self._stats["invalid" if error.code == 1007 else "overflows"] += 1
                self._report(error)
                return error
            for message in decoded:
                self._stats["messages_received"] += 1
                self._route(client.path, client.id, message)
            del decoded
        return None

    async def _handle_shared(self, ws: Connection, base_path_id: str, socket_id: str) -> None:
        """A socket shared by TinyBase synchronizers: each channel is a client of its room."""
        shared = MultiplexedSocket(base_path_id, self._timeout)
        queue = FrameQueue(self._max_queue_bytes)  # (one per socket: frames stay in order)
        clients: dict[str, Client] = {}
        alive = [True]
        writer = asyncio.ensure_future(queue.drain(ws, lambda: alive[0]))
        logger.info("shared socket %s opened on /%s", socket_id, base_path_id)
        try:
            async for data in ws:
                text = data if isinstance(data, str) else data.decode("utf-8", "replace")
                self._stats["bytes_received"] += len(text)
                close = await self._shared_frame(ws, shared, text, socket_id, queue, clients)
                if close is not None:
                    alive[0] = False
                    await ws.close(*close)
                    break
                if any(client.closing for client in clients.values()):
                    break  # (a channel overflowed: the socket is being closed)
        except ConnectionClosed:
            pass
        finally:
            alive[0] = False
            shared.close()
            for client in clients.values():
                client.closing = True
                self._del_client(client)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            logger.info("shared socket %s closed", socket_id)

    async def _shared_frame(
        self,
        ws: Connection,
        shared: MultiplexedSocket,
        text: str,
        socket_id: str,
        queue: FrameQueue,
        clients: dict[str, Client],
    ) -> tuple[int, str] | None:
        """Handle one frame of a shared socket; the close code and reason when it must end."""
        try:
            with paused_for(len(text)):  # (messages are routed and dropped in the block)
                events, answers = shared.feed(text)
                for event in events:
                    if isinstance(event, ChannelMessage):
                        client = clients.get(event.channel_id)
                        if client is not None and not client.closing:
                            self._stats["messages_received"] += 1
                            self._route(client.path, socket_id, event.message)
                events = [e for e in events if not isinstance(e, ChannelMessage)]
            for event in events:
                if isinstance(event, Subscribe):
                    clients[event.channel_id] = await self._join_channel(
                        ws, event, socket_id, queue, clients
                    )
                else:
                    left = clients.pop(event.channel_id, None)
                    if left is not None:
                        left.closing = True
                        self._del_client(left)
        except WireError as error:
            self._stats["invalid" if error.code == 1007 else "overflows"] += 1
            self._report(error)
            return error.code, error.reason
        for answer in answers:  # (after the events: a channel is in its room when answered)
            if not queue.put(answer, payload_size(answer)):
                overflow = overflow_error("socket")
                self._stats["overflows"] += 1
                self._report(overflow)
                return overflow.code, overflow.reason
        return None

    async def _join_channel(
        self,
        ws: Connection,
        event: Subscribe,
        socket_id: str,
        queue: FrameQueue,
        joined: dict[str, Client],
    ) -> Client:
        """Add a shared socket's channel to its room; ``WireError`` when it may not join."""
        path_id = event.path_id
        if not is_valid_path_id(path_id):
            raise WireError(ERROR_MESSAGE)  # (not a path this server can name a room by)
        assert ws.request is not None
        if not await self.admission.allowed(path_id, ws.request):
            self._stats["rejected"] += 1
            raise WireError(ERROR_MESSAGE)
        existing = self._paths.get(path_id)
        if existing is not None and socket_id in existing.clients:
            raise WireError(ERROR_MESSAGE)
        if len(joined) >= self._max_rooms_per_socket:
            self._stats["rooms_refused"] += 1
            raise overflow_error("channels")
        if self.admission.room_refusal(path_id, address_of(ws)) is not None:
            raise overflow_error("rooms")
        path = self._add_client(path_id, socket_id, ws, queue, event.channel_id)
        return path.clients[socket_id]

    async def _write(self, client: Client) -> None:
        await client.queue.drain(client.ws, lambda: not client.closing)

    def _send_to(self, client: Client, payload: str, size: int) -> None:
        if client.closing:
            return
        if client.channel is not None:
            payload = channel_frame(client.channel, payload)
            size += payload_size(client.channel) + 3  # ("M" and two newlines)
        if not client.queue.put(payload, size):
            self._overflow(client, "socket")
            return
        self._stats["messages_sent"] += 1
        self._stats["bytes_sent"] += size

    def _overflow(self, client: Client, details: str) -> None:
        client.closing = True
        client.queue.clear()
        self._stats["overflows"] += 1
        error = overflow_error(details)
        self._report(error)
        logger.warning("client %s on /%s overflowed (%s)", client.id, client.path.id, details)
        self._del_client(client)
        self._spawn(client.ws.close(error.code, error.reason))

    # --------------------------------------------------------------------------- paths

    def _add_client(
        self,
        path_id: str,
        client_id: str,
        ws: Connection,
        queue: FrameQueue | None = None,
        channel: str | None = None,
    ) -> Room:
        path = self._paths.get(path_id)
        if path is None:
            path = Room(path_id)
            self._paths[path_id] = path
            if self._create_persister is None:
                path.ready = True
        if queue is None:
            queue = FrameQueue(self._max_queue_bytes)
        first = not path.clients
        client = Client(client_id, ws, path, self._timeout, queue, channel)
        path.clients[client_id] = client
        self.admission.joined(client.address, path_id)
        if first:
            self._call_listeners(False, path_id, 1)
        self._call_listeners(True, path_id, client_id, 1)
        self._stores.steer(path)
        return path

    def _del_client(self, client: Client) -> None:
        path = client.path
        if path.clients.get(client.id) is not client:
            return
        del path.clients[client.id]
        self.admission.left(client.address, path.id)
        self._call_listeners(True, path.id, client.id, -1)
        synchronizer = path.synchronizer
        if synchronizer is not None:
            # its requests to the client that left fail (or go to everyone) now, not after
            # their time-out
            try:
                synchronizer.peer_left(client.id)
            except Exception as exc:
                self._report(exc)
        if path.clients:
            return
        self._call_listeners(False, path.id, -1)
        if synchronizer is not None:
            # nobody is left to answer: a pull asking everyone would wait out its time-out
            synchronizer.engine.reject_pending_requests(
                TinyBaseError(ERROR_SYNC_RESPONSE, "everyone left")
            )
        if self._create_persister is None:
            if self._paths.get(path.id) is path:
                del self._paths[path.id]
        else:
            self._stores.steer(path)

    def _evict(self, path: Room) -> None:
        """Close every client of a room whose store could not start (1011)."""
        for client in list(path.clients.values()):
            client.closing = True
            self._del_client(client)
            self._spawn(client.ws.close(1011, "store unavailable"))

    def _forget(self, path: Room) -> None:
        """Drop a room that has no client, no store and nothing held for its store."""
        if not (path.clients or path.up or path.buffer) and self._paths.get(path.id) is path:
            del self._paths[path.id]

    # --------------------------------------------------------------------------- relay

    def _route(self, path: Room, from_id: str, message: Decoded) -> None:
        to = message.client_id
        if to == "" or to == SERVER_CLIENT_ID:
            if path.ready:
                self._to_server(path, from_id, message)
            else:
                self._hold(path, from_id, message)
            if to == SERVER_CLIENT_ID:
                return
        prefix = from_id + "\n"
        clients = path.clients
        for remainder in message.remainders:
            payload = prefix + remainder
            size = payload_size(payload)
            if to == "":
                for other_id, other in list(clients.items()):
                    if other_id != from_id:
                        self._send_to(other, payload, size)
            else:
                target = clients.get(to)
                if target is not None:
                    self._send_to(target, payload, size)

    def _hold(self, path: Room, from_id: str, message: Decoded) -> None:
        # the path's store is still loading: keep what is meant for it, bounded
        size = sum(payload_size(r) for r in message.remainders)
        if len(path.buffer) >= MAX_START_BUFFER_COUNT or path.buffered + size > MAX_PAYLOAD_SIZE:
            client = path.clients.get(from_id)
            if client is not None:
                self._overflow(client, "server")
            return
        path.buffer.append((from_id, message))
        path.buffered += size

    def _to_server(self, path: Room, from_id: str, message: Decoded) -> None:
        receive = path.receive
        if receive is not None:
            try:
                receive(from_id, message.request_id, message.message, message.body)
            except Exception as exc:
                self._report(exc)

    def _relay_from_server(self, path: Room, payload: str) -> None:
        at = payload.index("\n")
        to = payload[:at]
        forwarded = SERVER_CLIENT_ID + payload[at:]
        size = payload_size(forwarded)
        if to == "":
            for client in list(path.clients.values()):
                self._send_to(client, forwarded, size)
        else:
            target = path.clients.get(to)
            if target is not None:
                self._send_to(target, forwarded, size)

    # ------------------------------------------------------------------------- destroy

    async def _destroy(self) -> None:
        server = self._server
        if server is not None:
            server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 10)
        else:  # (another face accepted them: close them as websockets would, 1001)
            closing = [ws.close(1001, "server shutting down") for ws in list(self._connections)]
            await asyncio.gather(*closing, return_exceptions=True)
        for path in list(self._paths.values()):
            for client in list(path.clients.values()):
                client.closing = True
                self._del_client(client)
        # every room's lifecycle task stops its store (and nobody can start one any more)
        while True:
            running = [p.lifecycle for p in self._paths.values() if p.lifecycle is not None]
            if not running:
                break
            await asyncio.gather(*running, return_exceptions=True)


async def create_ws_server(
    host: str = "127.0.0.1",
    port: int = 8048,
    create_persister: Callable[[str], Any] | None = None,
    **options: Unpack[ServerOptions],
) -> WsServer:
    """Start a TinyBase-compatible sync server on ``host:port`` (port 0 = any free port).

    ``create_persister(path_id)`` returns a Persister of a MergeableStore (or an awaitable of
    one, or None for a relay-only path). Keyword options (:class:`ServerOptions`):

    - ``on_ignored_error(error)``: told of every input ignored (bad frames, failed listeners);
    - ``request_timeout_seconds`` (1.0) and ``fragment_size`` (None: unfragmented) of the
      rooms' server stores;
    - ``authenticate(path_id, request)`` (may be a coroutine; False: 403) and ``token``
      (``Authorization: Bearer`` or ``?token=``; missing 401, wrong 403);
    - ``max_queue_bytes`` (16 MiB per client), ``max_clients``, ``max_rooms``,
      ``max_rooms_per_address``, ``max_rooms_per_socket`` (100): see the module docstring;
    - ``discard_empty_path(path_id)`` (may be a coroutine): called after a room whose store
      holds no data at all was stopped, so that the caller can delete what its persister left
      on disk; it returns True when it deleted something;
    - ``backplane`` (``"nats://..."``, ``"tcp://..."``, ``"local"`` or a
      :class:`~localsync.ws.backplane.Backplane`) shares the rooms with other instances; a hub
      that does not answer raises :class:`~localsync.errors.ChannelError` here;
    - ``health`` (True) serves ``GET /healthz``, ``metrics`` (True) ``GET /metrics``
      (Prometheus; :mod:`localsync.metrics`), ``inspector`` (False) the live inspector page
      under ``/_inspect/`` (:mod:`localsync.ws.inspector`); the metrics and the inspector need
      ``token`` when given.
    """
    server = WsServer(host, port, create_persister, server_settings(options))
    await server.listen()
    return server
