"""A WebSocket server's rooms: path ids, the clients in a room and the room's store state.

The URL path is the room (``ws://host:port/<pathId>``). Path ids are validated before
anything else: at most 128 characters in 1 to 8 ``/``-separated segments (``org/doc``
works, as in TinyBase), each segment from ``A-Z a-z 0-9 _ ~ - .`` and not starting with
``.``; no empty segment, no backslash, no NUL, no percent-decoding. So no file name is ever
made from anything else; :func:`path_file_name` turns a valid id into one flat file name.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from localsync.ws.connection import Connection
from localsync.ws.frame_queue import FrameQueue
from localsync.ws.wire import Decoded, PayloadDecoder

__all__ = [
    "MAX_PATH_ID_LENGTH",
    "MAX_PATH_ID_SEGMENTS",
    "Client",
    "Room",
    "address_of",
    "holds_no_data",
    "is_valid_path_id",
    "path_file_name",
    "path_id_of",
]

MAX_PATH_ID_LENGTH = 128
MAX_PATH_ID_SEGMENTS = 8
_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
_PATH_ID = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,{MAX_PATH_ID_SEGMENTS - 1}}}")


def is_valid_path_id(path_id: str, allow_empty: bool = False) -> bool:
    """True when ``path_id`` is safe to use as a room name and as part of a file name."""
    if path_id == "":
        return allow_empty
    return len(path_id) <= MAX_PATH_ID_LENGTH and _PATH_ID.fullmatch(path_id) is not None


def path_file_name(path_id: str) -> str:
    """A flat, collision-free file name (without suffix) for a valid path id."""
    if not is_valid_path_id(path_id):
        raise ValueError(f"invalid path id {path_id!r}")
    return path_id.replace("/", "%2F")


def address_of(connection: Connection) -> str:
    """The remote host of a connection (without its port), "" when unknown."""
    try:
        address = connection.remote_address
    except Exception:
        return ""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "")


def path_id_of(request_path: str) -> str | None:
    """The room a request path names (TinyBase: after the first "/", up to any "?")."""
    if not request_path.startswith("/"):
        return None
    return request_path[1:].split("?", 1)[0].split("#", 1)[0]


class Client:
    """A client in one path's room: a legacy socket, or one channel of a shared socket
    (``channel`` set: its frames are wrapped, and it shares the socket's queue)."""

    __slots__ = (
        "address",
        "channel",
        "closing",
        "decoder",
        "id",
        "path",
        "queue",
        "writer",
        "ws",
    )

    def __init__(
        self,
        client_id: str,
        ws: Connection,
        path: Room,
        timeout: float,
        queue: FrameQueue,
        channel: str | None = None,
    ):
        self.id = client_id
        self.ws = ws
        self.path = path
        self.decoder = PayloadDecoder(timeout)
        self.queue = queue
        self.channel = channel
        self.writer: asyncio.Task[None] | None = None
        self.closing = False
        self.address = address_of(ws)


class Room:
    """A room: its clients, and its server store's lifecycle (one task at a time per room)."""

    __slots__ = (
        "buffer",
        "buffered",
        "clients",
        "id",
        "lifecycle",
        "persister",
        "ready",
        "receive",
        "synchronizer",
        "up",
    )

    def __init__(self, path_id: str) -> None:
        self.id = path_id
        self.clients: dict[str, Client] = {}
        self.ready = False
        self.buffer: list[tuple[str, Decoded]] = []
        self.buffered = 0
        self.persister: Any = None
        self.synchronizer: Any = None
        self.receive: Callable[[str, str | None, int, Any], None] | None = None
        # the task that starts and stops the store until it matches "has clients"
        self.lifecycle: asyncio.Task[None] | None = None
        # a store was created (and must be stopped) for this room
        self.up = False


def holds_no_data(persister: Any) -> bool:
    """True when the persister's store holds no data at all (not even deletions)."""
    try:
        tables, values = persister.get_store().get_mergeable_content()[:2]
    except Exception:
        return False
    return not tables[0] and not values[0]
