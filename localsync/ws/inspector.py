"""The live inspector: a web page, served under ``/_inspect/`` by a sync server, that shows the
rooms, their clients and the server's stats, and one room's tables and values as they change;
a cell or value edited in the page is an ordinary synchronized write.

The page (``ws/static/inspector.*``, plain HTML/JS/CSS) talks JSON over a WebSocket at
``<prefix>/socket``. The data comes from a :class:`Source`:

* :class:`RoomsSource` (the default): the rooms of a :class:`~localsync.ws.server.WsServer`;
  a watched room is followed by one in-process MergeableStore per room, a client of the room
  through :class:`~localsync.ws.in_process.InProcessTransport` (so relay-only and persisted
  rooms look the same), shared by every page watching it and stopped when none does;
* :class:`StoreSource`: one store synchronized elsewhere (``localsync inspect --web CHANNEL``).

Page -> server: ``{"type": "watch", "room": id | null}``, ``{"type": "set_cell", "table",
"row", "cell", "value"}``, ``{"type": "del_cell", "table", "row", "cell"}``, ``{"type":
"set_value", "id", "value"}``, ``{"type": "del_value", "id"}``; ids are strings, values str,
finite numbers or booleans; anything else, or a message over :data:`MAX_MESSAGE_BYTES`, is
ignored and counted (``ignored`` in :meth:`Inspector.get_stats`).

Server -> page: ``hello`` (mode, title, read_only), ``rooms`` (``[{"id", "clients", "followers",
"last_change"}]``), ``stats`` (``{name: int}``, sent when changed, checked every second),
``snapshot`` (``room``, ``tables``, ``values``), ``changes`` (``room``, ``cells``: ``[t, r, c,
value]``, or ``[t, r, c]`` deleted, ``[t, r]`` row deleted, ``[t]`` table deleted; ``values``:
``[id, value]`` or ``[id]`` deleted) and ``error`` (``message``: why a message was ignored).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Protocol

from websockets.http11 import Request

from localsync.core.codec import UNDEFINED
from localsync.core.mergeable_store import MergeableStore, create_mergeable_store
from localsync.sync.synchronizer import Synchronizer
from localsync.ws.connection import Connection
from localsync.ws.http import HttpReply, Route, find_route
from localsync.ws.in_process import InProcessTransport
from localsync.ws.room import is_valid_path_id
from localsync.ws.server import WsServer

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Inspector",
    "RoomsSource",
    "Source",
    "StoreSource",
    "inspector_route",
]

#: the largest message a page may send, in characters (bigger ones are ignored and counted)
MAX_MESSAGE_BYTES = 64 * 1024
#: the longest id (table, row, cell, value, room) a page may name
MAX_ID_LENGTH = 1024
#: messages waiting to be written to one page; a page that falls further behind is closed
MAX_QUEUED = 10_000
STATS_SECONDS = 1.0
#: room lists are sent at most this often (clients joining and leaving come in bursts)
ROOMS_SECONDS = 0.1

Json = dict[str, Any]


class Followed(Protocol):
    """A store the inspector shows, and how to let it go."""

    store: MergeableStore

    async def close(self) -> None: ...


class Source(Protocol):
    """Where the inspector's rooms and stores come from."""

    mode: str
    #: pages may only look (edits are ignored and counted)
    read_only: bool

    def rooms(self, followers: Mapping[str, str]) -> list[Json]:
        """``[{"id", "clients", "followers"}]`` (``followers``: room -> the inspector's id)."""

    def stats(self) -> dict[str, int]: ...

    def watch_rooms(self, changed: Callable[[], None]) -> Callable[[], None]:
        """Call ``changed()`` whenever rooms or clients change; returns the unsubscribe."""

    async def follow(self, room: str) -> tuple[Followed, str | None]:
        """A store following ``room`` and its client id in the room (None: not a client)."""


class _RoomFollower:
    """An in-process MergeableStore joined to one room of a server."""

    def __init__(self, server: WsServer, room: str, timeout: float) -> None:
        self.store = create_mergeable_store()
        self.transport = InProcessTransport(server, room, request_timeout_seconds=timeout)
        self.synchronizer = Synchronizer(self.store, self.transport, timeout)

    async def close(self) -> None:
        await self.synchronizer.destroy()


class RoomsSource:
    """The rooms of a :class:`WsServer`; each watched room is followed by an in-process store."""

    mode = "rooms"
    read_only = False

    def __init__(self, server: WsServer, request_timeout_seconds: float = 1.0) -> None:
        self.server = server
        self.timeout = request_timeout_seconds

    def rooms(self, followers: Mapping[str, str]) -> list[Json]:
        ids = list(dict.fromkeys([*self.server.get_path_ids(), *followers]))
        return [
            {
                "id": room,
                "clients": [
                    c for c in self.server.get_client_ids(room) if c != followers.get(room)
                ],
                "followers": 1 if room in followers else 0,
            }
            for room in sorted(ids)
        ]

    def stats(self) -> dict[str, int]:
        return self.server.get_stats()

    def watch_rooms(self, changed: Callable[[], None]) -> Callable[[], None]:
        ids = [
            self.server.add_path_ids_listener(lambda *_: changed()),
            self.server.add_client_ids_listener(None, lambda *_: changed()),
        ]

        def stop() -> None:
            for listener_id in ids:
                self.server.del_listener(listener_id)

        return stop

    async def follow(self, room: str) -> tuple[Followed, str | None]:
        """Join ``room`` (ValueError: not a room this server could have)."""
        if find_route(self.server.routes, "/" + room) is not None:
            raise ValueError("a page of the server, not a room")
        if not is_valid_path_id(room) and room not in self.server.get_path_ids():
            raise ValueError("invalid room id")
        follower = _RoomFollower(self.server, room, self.timeout)
        try:
            await follower.synchronizer.start_sync()
        except BaseException:
            await follower.close()
            raise
        return follower, follower.transport.client_id


class _Borrowed:
    """A store the inspector shows but does not own (closing it does nothing)."""

    def __init__(self, store: MergeableStore) -> None:
        self.store = store

    async def close(self) -> None:
        return None


class StoreSource:
    """One store kept by someone else (a channel's synchronizer, a file watcher), shown as the
    only room ``name``; ``stats()`` gives the counters shown beside it."""

    mode = "store"

    def __init__(
        self,
        store: MergeableStore,
        name: str,
        stats: Callable[[], Mapping[str, int]] | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        self.store = store
        self.name = name
        self._stats = stats
        self.read_only = read_only

    def rooms(self, followers: Mapping[str, str]) -> list[Json]:
        return [{"id": self.name, "clients": [], "followers": 1 if followers else 0}]

    def stats(self) -> dict[str, int]:
        return dict(self._stats()) if self._stats is not None else {}

    def watch_rooms(self, changed: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    async def follow(self, room: str) -> tuple[Followed, str | None]:
        if room != self.name:
            raise ValueError(f"only {self.name!r} can be followed here")
        return _Borrowed(self.store), None


class _Session:
    """One open page: its socket, its outgoing queue and the room it watches."""

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.room: str | None = None
        self.primed = False  # (has had the snapshot of self.room: changes may follow)
        self.last_stats: dict[str, int] | None = None
        self.closed = False

    def put(self, message: Json | str) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED:  # the page cannot keep up: let it reconnect
            self.closed = True
            self.queue.put_nowait(None)
            return
        text = message if isinstance(message, str) else _dumps(message)
        self.queue.put_nowait(text)


class _Room:
    """A followed room: its store, the pages watching it and when it last changed."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.sessions: set[_Session] = set()
        self.followed: Followed | None = None
        self.client_id: str | None = None
        self.error = ""  # (why it could not be followed)
        self.listener: str | None = None
        # changes of the transactions of this loop turn, sent as one message (see _flush)
        self.cells: list[list[Any]] = []
        self.values: list[list[Any]] = []
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Inspector:
    """The inspector's backend: the page's HTTP answers and its socket sessions, over a source.

    Build it with :func:`inspector_route` (or directly, then serve :meth:`route`).
    """

    def __init__(self, source: Source, prefix: str = "/_inspect", title: str = "") -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must start with '/' and not end with one: {prefix!r}")
        self.source = source
        self.prefix = prefix
        self.title = title
        self._sessions: set[_Session] = set()
        self._rooms: dict[str, _Room] = {}
        self._last_change: dict[str, float] = {}
        self._stats = {"page_messages": 0, "ignored": 0, "edits": 0}
        self._rooms_pending = False
        self._unwatch: Callable[[], None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._page: HttpReply | None = None

    def route(self) -> Route:
        """The :class:`Route` serving the page and its socket under the prefix (auth like a
        room: the server's token and ``authenticate("_inspect", request)``)."""
        return Route(self.prefix, http=self.answer_http, socket=self.serve_socket, auth=True)

    def get_stats(self) -> dict[str, int]:
        """``pages`` (open now), ``page_messages`` (received), ``ignored`` (bad messages) and
        ``edits`` (writes made for pages)."""
        return {"pages": len(self._sessions), **self._stats}

    async def close(self) -> None:
        """Close every page and stop following every room."""
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(1001, "inspector closing")
        for room, state in list(self._rooms.items()):
            state.sessions.clear()
            await self._release(room)
        self._stop()

    # ----------------------------------------------------------------------------- HTTP

    def answer_http(self, request: Request) -> HttpReply:
        """The page (``<prefix>/``), a redirect from ``<prefix>`` to it, else 404."""
        path, _, query = request.path.partition("?")
        rest = path[len(self.prefix) :]
        if rest == "":
            location = self.prefix.rsplit("/", 1)[-1] + "/" + ("?" + query if query else "")
            return HttpReply(302, b"", headers=(("Location", location),))
        if rest in ("/", "/index.html"):
            return self._page_reply()
        if rest == "/socket":
            return HttpReply(426, b"a WebSocket endpoint\n", headers=(("Upgrade", "websocket"),))
        return HttpReply(404, b"not found\n")

    def _page_reply(self) -> HttpReply:
        if self._page is None:
            self._page = _build_page()
        return self._page

    # --------------------------------------------------------------------------- socket

    async def serve_socket(self, ws: Connection) -> None:
        """One page's session until its socket closes."""
        request = ws.request
        if request is None or request.path.partition("?")[0] != self.prefix + "/socket":
            await ws.close(1008, "not an inspector socket")
            return
        self._start()
        session = _Session(ws)
        self._sessions.add(session)
        writer = asyncio.ensure_future(self._write(session))
        session.put(
            {
                "type": "hello",
                "mode": self.source.mode,
                "title": self.title,
                "read_only": self.source.read_only,
            }
        )
        session.put(self._rooms_message())
        self._send_stats(session)
        try:
            async for data in ws:
                if session.closed:
                    break
                self._stats["page_messages"] += 1
                error = await self._handle(session, data)
                if error is not None:
                    self._stats["ignored"] += 1
                    session.put({"type": "error", "message": error})
        finally:
            session.closed = True
            self._sessions.discard(session)
            if session.room is not None:
                await self._unwatch_room(session)
            session.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
            if not self._sessions:
                self._stop()

    async def _write(self, session: _Session) -> None:
        while True:
            text = await session.queue.get()
            if text is None:
                break
            await session.ws.send(text)
        if session.closed and session in self._sessions:  # (overflowed)
            await session.ws.close(1013, "inspector page too slow")

    def _start(self) -> None:
        if self._unwatch is None:
            self._unwatch = self.source.watch_rooms(self._rooms_changed)
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick())

    def _stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(STATS_SECONDS)
            for session in list(self._sessions):
                self._send_stats(session)

    def _send_stats(self, session: _Session) -> None:
        stats = {
            **self.source.stats(),
            **{f"inspector_{k}": v for k, v in self.get_stats().items()},
        }
        if stats != session.last_stats:
            session.last_stats = stats
            session.put({"type": "stats", "stats": stats})

    def _rooms_changed(self) -> None:
        """Rooms or clients changed: one ``rooms`` message per page a little later."""
        if not self._rooms_pending:
            self._rooms_pending = True
            asyncio.get_running_loop().call_later(ROOMS_SECONDS, self._broadcast_rooms)

    def _broadcast_rooms(self) -> None:
        self._rooms_pending = False
        if not self._sessions:
            return
        text = _dumps(self._rooms_message())
        for session in list(self._sessions):
            session.put(text)

    def _rooms_message(self) -> Json:
        followers = {
            room: state.client_id or "" for room, state in self._rooms.items() if state.followed
        }
        rooms = self.source.rooms(followers)
        for room in rooms:
            changed = self._last_change.get(room["id"])
            room["last_change"] = None if changed is None else round(changed * 1000)
        return {"type": "rooms", "rooms": rooms}

    # ------------------------------------------------------------------------ messages

    async def _handle(self, session: _Session, data: str | bytes) -> str | None:
        """Act on one message of a page; why it was ignored, or None."""
        if len(data) > MAX_MESSAGE_BYTES:
            return "message too large"
        try:
            message = json.loads(data, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError):
            return "not JSON"
        if not isinstance(message, dict):
            return "not a JSON object"
        kind = message.get("type")
        if kind == "watch":
            room = message.get("room")
            if room is not None and not _is_id(room):
                return "bad room id"
            return await self._watch(session, room)
        if kind not in _EDITS:
            return "unknown message type"
        ids = [message.get(key) for key in _EDITS[kind]]
        if not all(_is_id(i) for i in ids):
            return "bad ids"
        if kind.startswith("set_") and not _is_value(message.get("value")):
            return "bad value: a string, a finite number or a boolean"
        if self.source.read_only:
            return "read-only"
        state = None if session.room is None else self._rooms.get(session.room)
        if state is None or state.followed is None:
            return "no room watched"
        store = state.followed.store
        try:
            if kind == "set_cell":
                store.set_cell(ids[0], ids[1], ids[2], message["value"])
            elif kind == "del_cell":
                store.del_cell(ids[0], ids[1], ids[2])
            elif kind == "set_value":
                store.set_value(ids[0], message["value"])
            else:
                store.del_value(ids[0])
        except (TypeError, ValueError) as error:  # (the store's own checks)
            return f"refused by the store: {error}"
        self._stats["edits"] += 1
        return None

    async def _watch(self, session: _Session, room: str | None) -> str | None:
        if room == session.room:
            return None
        if session.room is not None:
            await self._unwatch_room(session)
        if room is None:
            return None
        session.room, session.primed = room, False
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(room)
            state.sessions.add(session)
            await self._follow(room, state)
        else:
            state.sessions.add(session)
            await asyncio.shield(state.ready)
        if session.room != room or session.closed:
            return None
        if state.followed is None:  # (the follow failed; the room state is gone)
            session.room = None
            return f"cannot follow this room: {state.error}"
        store = state.followed.store
        session.put(
            {
                "type": "snapshot",
                "room": room,
                "tables": _jsonable(store.get_tables()),
                "values": _jsonable(store.get_values()),
            }
        )
        session.primed = True
        return None

    async def _follow(self, room: str, state: _Room) -> None:
        try:
            followed, client_id = await self.source.follow(room)
            state.followed, state.client_id = followed, client_id
        except Exception as error:
            state.error = str(error) if isinstance(error, ValueError) else "cannot follow it"
            return
        finally:
            if state.followed is None and self._rooms.get(room) is state:
                del self._rooms[room]  # (failed or cancelled: the next watch tries again)
            if not state.ready.done():
                state.ready.set_result(None)
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def did_finish(store: MergeableStore) -> None:
            cells, values = _page_changes(store.get_transaction_changes())
            if not cells and not values:
                return
            if threading.get_ident() == loop_thread:
                self._changed(state, cells, values)
            else:
                loop.call_soon_threadsafe(self._changed, state, cells, values)

        state.listener = followed.store.add_did_finish_transaction_listener(did_finish)
        self._rooms_changed()

    def _changed(self, state: _Room, cells: list[list[Any]], values: list[list[Any]]) -> None:
        """Queue a transaction's changes; the first of a loop turn schedules the flush."""
        if not state.cells and not state.values:
            asyncio.get_running_loop().call_soon(self._flush, state)
        state.cells.extend(cells)
        state.values.extend(values)

    def _flush(self, state: _Room) -> None:
        """One ``changes`` message for what a room's store did since the last one, to the
        pages that have its snapshot (a snapshot newer than some of these changes is fine:
        applying them in order ends in the same state)."""
        room = state.room
        message = {"type": "changes", "room": room, "cells": state.cells, "values": state.values}
        state.cells, state.values = [], []
        self._last_change[room] = time.time()
        text = _dumps(message)
        for session in state.sessions:
            if session.primed and session.room == room:
                session.put(text)
        self._rooms_changed()

    async def _unwatch_room(self, session: _Session) -> None:
        room, session.room, session.primed = session.room, None, False
        if room is None:
            return
        state = self._rooms.get(room)
        if state is None:
            return
        state.sessions.discard(session)
        if not state.sessions:
            await self._release(room)

    async def _release(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        await asyncio.shield(state.ready)
        if state.sessions and state.followed is not None:
            return  # (someone came back while it started)
        self._rooms.pop(room, None)
        if state.followed is not None:
            if state.listener is not None:
                state.followed.store.del_listener(state.listener)
            await state.followed.close()
        self._rooms_changed()


_EDITS: dict[str, tuple[str, ...]] = {
    "set_cell": ("table", "row", "cell"),
    "del_cell": ("table", "row", "cell"),
    "set_value": ("id",),
    "del_value": ("id",),
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_id(thing: object) -> bool:
    return isinstance(thing, str) and len(thing) <= MAX_ID_LENGTH


def _is_value(thing: object) -> bool:
    if isinstance(thing, bool | str):
        return True
    if isinstance(thing, int):
        return abs(thing) <= 2**53
    return isinstance(thing, float) and math.isfinite(thing)


def _jsonable(thing: Any) -> Any:
    """``thing`` with non-finite numbers as None (JSON has none; the page shows them empty)."""
    if isinstance(thing, float) and not math.isfinite(thing):
        return None
    if isinstance(thing, dict):
        return {k: _jsonable(v) for k, v in thing.items()}
    if isinstance(thing, list):
        return [_jsonable(v) for v in thing]
    return thing


def _dumps(message: Json) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def _page_changes(changes: list[Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """The ``cells`` and ``values`` of a ``changes`` message for ``[tables, values, 1]``."""
    tables, values = changes[0], changes[1]
    cells: list[list[Any]] = []
    for t, rows in tables.items():
        if rows == UNDEFINED:
            cells.append([t])
            continue
        for r, row in rows.items():
            if row == UNDEFINED:
                cells.append([t, r])
                continue
            for c, cell in row.items():
                cells.append([t, r, c] if cell == UNDEFINED else [t, r, c, _jsonable(cell)])
    value_list = [[v, _jsonable(x)] if x != UNDEFINED else [v] for v, x in values.items()]
    return cells, value_list


def _static(name: str) -> str:
    return resources.files("localsync.ws").joinpath("static", name).read_text("utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _build_page() -> HttpReply:
    """The page with its script and style inlined (so that a token in the page's URL is all
    it needs) and a Content-Security-Policy allowing exactly them."""
    html, script, style = (_static(f"inspector.{ext}") for ext in ("html", "js", "css"))
    html = html.replace(
        '<link rel="stylesheet" href="inspector.css">', f"<style>{style}</style>"
    ).replace('<script src="inspector.js"></script>', f"<script>{script}</script>")
    policy = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = (
        ("Content-Security-Policy", policy),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
    )
    return HttpReply(200, html.encode(), "text/html; charset=utf-8", headers)


def inspector_route(
    server: WsServer,
    source: Source | None = None,
    prefix: str = "/_inspect",
    *,
    title: str = "",
    request_timeout_seconds: float = 1.0,
) -> Route:
    """A :class:`Route` serving the inspector page under ``prefix`` of ``server``.

    Register it with ``server.add_route(...)``. ``source`` defaults to the server's rooms
    (:class:`RoomsSource`); pass a :class:`StoreSource` to show one store instead. To read the
    inspector's own stats, build an :class:`Inspector` and register ``inspector.route()``.
    """
    if source is None:
        source = RoomsSource(server, request_timeout_seconds)
    return Inspector(source, prefix, title).route()
