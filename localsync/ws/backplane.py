"""Several WebSocket server instances sharing every room through a channel: the backplane.

``create_ws_server(..., backplane="nats://host:4222")`` (or ``"tcp://HOST:PORT"`` for a
``localsync hub``, or ``"local"`` for the ipc channels of this machine) makes each room's
server store (client ``"S"``, :mod:`localsync.ws.server`) a participant of one channel per
room, so a client on instance 1 and a client on instance 2 of the same path sync with each
other: client -> room -> room store -> channel -> room store on the other instance -> room ->
client. The channel is an ordinary channel synchronizer
(:func:`localsync.channel.synchronizer.create_channel_synchronizer`) on the same engine, so a
lost message costs latency (anti-entropy heals it), never data.

Every room of a server with a backplane has a store: the persister's
(``create_persister(path_id)``), or, for a relay-only room, an in-memory one that persists
nothing. One store per room per instance; the channel joins when the room's store has
started and leaves before it stops (when the last client left): :meth:`Backplane.detach`
destroys the channel synchronizer, which sends what the store still had and waits until the
hub (or NATS server) holds it, so the other instances get every change the room accepted.

**Who persists a path**: each instance with a persister keeps its own copy in its own
storage; the copies converge while the instances serve the room at the same time (each
store pulls from the others when its channel joins, and anti-entropy keeps them equal). An
instance that opens a room nobody else has open starts from its own copy and catches up
with the others' changes when they open the room too: no change is lost, but one may be
seen late. For a single authority, give every instance the same database
(``--data postgresql://...``) or run a coordinator on the rooms' channels.

**Channel names**: room ``path_id`` is channel :func:`channel_name` ``(path_id, prefix)``,
``<prefix>-<path_id>`` with ``.``, ``/`` and ``~`` written ``~2E``, ``~2F`` and ``~7E``: only
``A-Z a-z 0-9 _ - ~`` remain (usable in a NATS subject token and a file name), and distinct
path ids give distinct names. Instances share rooms when they use the same backplane and the
same ``prefix`` (default ``"localsync-ws"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from localsync.channel.nats import NatsOptions, nats_options
from localsync.channel.runtime import validate_channel_name
from localsync.channel.synchronizer import (
    ChannelSynchronizer,
    check_hub,
    create_channel_synchronizer,
)
from localsync.core.mergeable_store import create_mergeable_store
from localsync.core.protocols import SyncStore
from localsync.errors import ChannelError
from localsync.sync.persister import Persister, Persists, create_custom_persister

__all__ = ["DEFAULT_PREFIX", "LOCAL", "Backplane", "channel_name", "create_backplane"]

logger = logging.getLogger("localsync.ws_backplane")

#: the backplane spec for this machine's ipc channels (no hub URL)
LOCAL = "local"
DEFAULT_PREFIX = "localsync-ws"
_ESCAPES = {".": "~2E", "/": "~2F", "~": "~7E"}

CreatePersister = Callable[[str], Any]
#: what ``hub=`` of a channel synchronizer takes (None: this machine's ipc channels)
Hub = str | Sequence[str] | Mapping[str, Any] | NatsOptions | None


def channel_name(path_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The channel of room ``path_id`` (see the module doc); ValueError for a bad prefix."""
    escaped = "".join(_ESCAPES.get(char, char) for char in path_id)
    return validate_channel_name(f"{prefix}-{escaped}")


def _memory_persister(_path_id: str) -> Persister:
    """A persister of a new in-memory store that keeps nothing (a relay-only room's store)."""
    return create_custom_persister(
        create_mergeable_store(),
        lambda: None,
        lambda *_: None,
        lambda _listener: None,
        lambda _handle: None,
        persist=Persists.MERGEABLE_STORE_ONLY,
    )


class Backplane:
    """The channels that share a server's rooms with the other instances (see module doc).

    Args:
        hub: the channels' hub, given to every room's channel synchronizer as ``hub``:
            ``None`` for this machine's ipc channels, ``"tcp://HOST:PORT"`` (a ``localsync
            hub``), NATS server URLs (``"nats://HOST:4222"``, several comma-separated or in a
            list) or a :class:`~localsync.channel.nats.NatsOptions` (credentials, TLS).
        prefix: the first part of every room's channel name (instances that share rooms use
            the same one).
        connect_timeout_seconds: bound on opening a room's channel (and the probe of
            :meth:`check`); past it the room's clients are closed with 1011.
        on_ignored_error: gets the channels' ignored errors (garbage on a room's channel).
    """

    def __init__(
        self,
        hub: Hub = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout_seconds: float = 5.0,
        on_ignored_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        channel_name("", prefix)  # (a prefix that cannot name a channel fails here)
        self.hub = hub
        self.prefix = prefix
        self._connect_timeout = connect_timeout_seconds
        self._on_ignored_error = on_ignored_error
        self._channels: dict[str, ChannelSynchronizer] = {}
        self._starts: dict[str, asyncio.Future[Any]] = {}
        # counters of the channels already detached (live ones are added in get_stats)
        self._closed_totals = {"sent": 0, "received": 0}
        self._ignored_count = 0
        self._attach_failures = 0

    def __repr__(self) -> str:
        return f"Backplane({self.describe()!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        """The hub as text for messages (no credentials: ``user:password@`` is left out)."""
        if self.hub is None:
            return LOCAL
        if isinstance(self.hub, str) and self.hub.startswith("tcp://"):
            return self.hub
        urls = nats_options(self.hub).urls()
        return ",".join(re.sub(r"//[^/@]*@", "//", url) for url in urls)

    def persisters(self, create_persister: CreatePersister | None) -> CreatePersister:
        """``create_persister`` for the server: the caller's persister of a room, or (None, or
        no factory) a persister of an in-memory store, so that every room has a store."""

        async def create(path_id: str) -> Any:
            persister = create_persister(path_id) if create_persister is not None else None
            if inspect.isawaitable(persister):
                persister = await persister
            return persister if persister is not None else _memory_persister(path_id)

        return create

    def _synchronizer(self, store: SyncStore, name: str) -> ChannelSynchronizer:
        return create_channel_synchronizer(
            store,
            name,
            on_ignored_error=self._ignored,
            hub=self.hub,
            connect_timeout_seconds=self._connect_timeout,
        )

    def _ignored(self, error: BaseException) -> None:
        self._ignored_count += 1
        if self._on_ignored_error is not None:
            self._on_ignored_error(error)
        else:
            logger.debug("backplane ignored: %r", error)

    async def check(self) -> None:
        """Open and close a probe channel on the hub; :class:`ChannelError` (within about
        ``connect_timeout_seconds``) when it does not answer. Nothing to check locally."""
        if self.hub is None:
            return
        # (no path id gives this name: a room's channel has "-" after the prefix)
        probe_name = validate_channel_name(f"{self.prefix}~probe")
        probe = self._synchronizer(create_mergeable_store(), probe_name)
        try:
            await probe.transport.open()
        except ChannelError as error:
            raise ChannelError(f"backplane {self.describe()} does not answer: {error}") from error
        finally:
            await probe.destroy()

    async def attach(self, path_id: str, store: SyncStore) -> None:
        """Synchronize room ``path_id``'s store on its channel; :class:`ChannelError` when
        the channel cannot be opened.

        Returns once the channel is open and every later change of the store goes out as a
        ContentDiff (its auto-save); the first pull from the other instances goes on in the
        background. Called before the room's clients are synchronized: a change that reached
        the store before that would be announced only by hashes, which the other instances
        answer with requests that a room emptied at once no longer serves.
        """
        synchronizer = self._synchronizer(store, channel_name(path_id, self.prefix))
        self._channels[path_id] = synchronizer
        try:
            await synchronizer.start_auto_save()
            self._starts[path_id] = asyncio.ensure_future(synchronizer.start_sync())
        except BaseException as error:
            self._attach_failures += 1
            await self.detach(path_id)
            if isinstance(error, ChannelError):
                raise ChannelError(
                    f"backplane {self.describe()}: room /{path_id}: {error}"
                ) from error
            raise

    async def detach(self, path_id: str) -> None:
        """Leave room ``path_id``'s channel once what its store sent is at the hub."""
        synchronizer = self._channels.pop(path_id, None)
        if synchronizer is None:
            return
        start = self._starts.pop(path_id, None)
        try:
            await synchronizer.destroy()
            if start is not None:
                with contextlib.suppress(Exception):
                    await start
        finally:
            stats = synchronizer.get_channel_stats()
            for key in self._closed_totals:
                self._closed_totals[key] += stats.get(key, 0)

    def channel(self, path_id: str) -> ChannelSynchronizer | None:
        """Room ``path_id``'s channel synchronizer while the room's store runs."""
        return self._channels.get(path_id)

    def get_stats(self) -> dict[str, int]:
        """``backplane_rooms`` (channels open), ``backplane_sent``/``_received`` (channel
        messages), ``backplane_ignored`` (errors ignored: garbage on the channels) and
        ``backplane_failures`` (rooms whose channel could not be opened)."""
        totals = dict(self._closed_totals)
        for synchronizer in self._channels.values():
            stats = synchronizer.get_channel_stats()
            for key in totals:
                totals[key] += stats.get(key, 0)
        return {
            "backplane_rooms": len(self._channels),
            "backplane_sent": totals["sent"],
            "backplane_received": totals["received"],
            "backplane_ignored": self._ignored_count,
            "backplane_failures": self._attach_failures,
        }


def create_backplane(spec: str | Backplane | None) -> Backplane | None:
    """A :class:`Backplane` from a ``backplane=`` option: ``"local"``, hub URLs
    (``nats://...`` (several comma-separated), ``tls://...``, ``tcp://HOST:PORT``), a ready
    Backplane, or None (no backplane). ValueError for anything else."""
    if spec is None or isinstance(spec, Backplane):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backplane must be 'local' or a hub URL, not {spec!r}")
    if spec == LOCAL:
        return Backplane(None)
    try:
        check_hub(spec)
    except ValueError as error:
        raise ValueError(
            f"backplane must be 'local', nats://HOST:PORT or tcp://HOST:PORT, not {spec!r} "
            f"({error})"
        ) from None
    return Backplane(spec)
