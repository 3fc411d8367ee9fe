"""The coordinator: a channel participant that persists the channel's content.

Channels are peer-to-peer and keep data only in the memory of running processes. A
coordinator is one more participant with its own MergeableStore that (1) loads what it saved
last time before joining, so the data of workers that all exited is found again, (2) saves
after every burst of changes, and (3) answers later joiners like any peer (the sync engine's
anti-entropy makes sure a joiner ends with everything, whoever answers first).

Python API::

    coordinator = Coordinator("orders", "./data")            # persister="sqlite" | "file"
    await coordinator.start()
    await coordinator.wait_saved()       # everything currently in its store is on disk
    await coordinator.stop()             # final save, leave the channel

    Coordinator("orders", "./data").run()   # blocking, until SIGTERM/SIGINT (the CLI)

Command line (:mod:`localsync.cli.coordinator`): ``localsync coordinator --channel NAME
--data DIR [--persister sqlite|file] [--hub tcp://HOST:PORT|nats://HOST:PORT[,...]]
[--runtime-dir DIR] [--owner-wait SECONDS] [--exit-with-parent]``; prints one ``ready``
line (JSON) on stdout once it serves the channel; on SIGTERM or SIGINT it saves a last
time and exits 0. A wrong argument, or a channel that already has a coordinator, is one
line on stderr
(``localsync coordinator: error: ...``) and exit status 2.

The data file is ``DIR/NAME.sqlite`` (or ``.json`` for the file persister) when NAME is made
of letters, digits, ``.``, ``_`` and ``-`` (and does not start with a dot); otherwise
``DIR/channel-<16 hex digits of BLAKE2b(NAME)>.sqlite``.

PostgreSQL: ``--data postgresql://USER:PASSWORD@HOST:PORT/DBNAME`` (or ``postgres://``; the
``--persister`` choice is then ignored) keeps the channel in that database, in TinyBase's JSON
layout (:mod:`localsync.persisters.postgres`): one row ``_id = '_'`` of table
:func:`postgres_table_name` (NAME) - ``tinybase_NAME`` when NAME is made of letters, digits,
``_`` and ``-`` and that fits PostgreSQL's 63-byte identifiers, otherwise
``tinybase-<16 hex digits of BLAKE2b-64(NAME)>`` - so a TinyBase process with
``createPostgresPersister(store, sql, 'tinybase_NAME')`` shares the row. The owner file and
the messages name the database without its password (``postgresql://USER@HOST:PORT/DBNAME``
plus ``#`` and the table). A database that cannot be reached or refuses the credentials
stops the CLI at start with one line (exit 2).

One coordinator per channel
    A running coordinator owns its channel: it holds an exclusive ``flock`` on
    ``<hash>.coordinator`` in the channel's private runtime folder
    (:mod:`localsync.channel.runtime`;
    for a tcp hub ``tcp-<hash of hub and name>.coordinator``, for NATS servers
    ``nats-<hash of servers and name>.coordinator``: a lock of this machine only),
    and records there, as JSON, its PID, data folder and data file (and, once its synchronizer
    exists, its channel client id: joiners ask it for snapshots,
    :mod:`localsync.channel.snapshot`; it serves them like any local participant). The lock
    is taken before anything is loaded and released after the final save; the kernel
    releases it when the process dies, however it dies. A second coordinator of the channel
    (:class:`ChannelTakenError`):

    * refuses at once when the owner saves elsewhere (another data folder or persister):
      the message names the owner's data folder and PID. Two folders fed by one channel
      would each end up with the other's data;
    * waits up to ``owner_wait_seconds`` (default :data:`OWNER_WAIT_SECONDS`, 10 s) when the
      owner saves the very same file (a restart while the previous process is still dying:
      SIGKILLed, or busy with its final save), then refuses too: two coordinators saving one
      file would overwrite each other's saves.

    :func:`channel_owner` tells whether a channel has a live coordinator, and which.

Exit with parent
    With ``exit_with_parent=True`` (``--exit-with-parent``, what ``localsync demo`` uses) the
    coordinator stops as on SIGTERM (final save, exit 0) once the process that started it has
    ended, even by SIGKILL: it checks ``os.getppid()`` every half second. It first serves the
    other participants still on the (local) channel for up to
    :data:`PARENT_GONE_LINGER_SECONDS` (the demo's workers, stopping too, wait for their last
    rows to be acknowledged), then saves and exits. A parent that dies before the coordinator
    is ready cannot read the ``ready`` line: writing it fails, and the coordinator exits.

Acknowledged
    A change is *acknowledged* once the coordinator has durably saved content that includes
    it. After each save the coordinator broadcasts, on the channel's acknowledgement topic,
    the ``[tables_hash, values_hash]`` of the content it saved (read just before the save, so
    the saved content holds at least that), and repeats the latest one every
    ``ack_interval_seconds``. A participant calls ``await sync.wait_acknowledged(timeout)``
    (:class:`localsync.channel.synchronizer.ChannelSynchronizer`): it returns once an
    announced pair equals the hashes of a state its store passed through since the call,
    i.e. everything it held at the call is on disk and survives a coordinator restart, even
    while other processes keep writing. In-process, :meth:`Coordinator.wait_saved` and
    :attr:`Coordinator.saved_hashes` give the same guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localsync.channel.nats import is_nats_hub
from localsync.errors import ChannelTakenError
from localsync.persisters._common import PersistError
from localsync.sync import event_loop

if TYPE_CHECKING:
    from localsync.channel.runtime import ChannelPaths
    from localsync.channel.synchronizer import ChannelSynchronizer
    from localsync.core.mergeable_store import MergeableStore

__all__ = [
    "OWNER_WAIT_SECONDS",
    "ChannelTakenError",
    "Coordinator",
    "channel_owner",
    "check_postgres",
    "coordinator_client_id",
    "data_file",
    "is_postgres_url",
    "owner_file",
    "postgres_table_name",
]

logger = logging.getLogger("localsync.channel.coordinator")

# pauses between attempts when saving fails (full disk, read-only folder): short at first,
# so a transient error costs little, capped so a lasting one does not spin
_SAVE_RETRY_FIRST_SECONDS = 0.5
_SAVE_RETRY_MAX_SECONDS = 10.0

#: how long a coordinator waits for a previous coordinator of the same data file to go away
OWNER_WAIT_SECONDS = 10.0
# how long the lock must stay held before a coordinator with another data file is believed
# (a probe of :func:`channel_owner` holds it for an instant)
_OWNER_SETTLE_SECONDS = 0.3
_OWNER_POLL_SECONDS = 0.05
_PARENT_POLL_SECONDS = 0.5
#: how long a coordinator whose parent ended keeps serving participants still on the channel
PARENT_GONE_LINGER_SECONDS = 30.0

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
PERSISTERS = ("sqlite", "file")
_TABLE_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_PG_IDENTIFIER_BYTES = 63


def is_postgres_url(data: object) -> bool:
    """Whether ``data`` (a ``--data`` value) names a PostgreSQL database, not a folder."""
    return isinstance(data, str) and data.startswith(("postgresql://", "postgres://"))


def postgres_table_name(name: str) -> str:
    """The PostgreSQL table holding channel (or ``serve`` room) ``name`` (see module doc).

    ``tinybase_<name>`` when ``name`` is made of ``[A-Za-z0-9_-]`` and the result fits in
    PostgreSQL's 63-byte identifiers; otherwise ``tinybase-<16 hex of BLAKE2b-64(name)>``
    (a ``-`` after ``tinybase``, so a hashed name never equals a plain one).
    """
    plain = f"tinybase_{name}"
    if _TABLE_SAFE.fullmatch(name) and len(plain.encode()) <= _PG_IDENTIFIER_BYTES:
        return plain
    return "tinybase-" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def check_postgres(url: str) -> str | None:
    """Connect once to ``url``: ``None`` when it works, else a one-line reason without the
    password (psycopg missing, malformed URL, server down, credentials refused)."""
    try:
        import psycopg
        import psycopg.conninfo
    except ImportError:
        return "PostgreSQL needs psycopg 3: pip install 'localsync[postgres]'"
    from localsync.persisters.postgres import describe_conninfo

    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except Exception:
        return "not a valid PostgreSQL URL"  # (the message would echo it, password included)
    where = describe_conninfo(url)
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except Exception as error:
        text = " ".join(str(error).split()) or type(error).__name__
        if password:
            text = text.replace(str(password), "***")
        return f"cannot use PostgreSQL database {where}: {text}"
    return None


def postgres_location(url: str, table: str) -> str:
    """``postgresql://user@host:port/dbname#table``: never the password."""
    from localsync.persisters.postgres import describe_conninfo

    return f"{describe_conninfo(url)}#{table}"


def data_file(channel: str, data_dir: str | os.PathLike[str], persister: str = "sqlite") -> Path:
    """Where a coordinator of ``channel`` keeps its data (see module doc)."""
    from localsync.channel.runtime import validate_channel_name

    validate_channel_name(channel)
    if persister not in PERSISTERS:
        raise ValueError(f"persister must be one of {PERSISTERS}, got {persister!r}")
    suffix = ".sqlite" if persister == "sqlite" else ".json"
    if _SAFE_NAME.fullmatch(channel):
        stem = channel
    else:
        stem = "channel-" + hashlib.blake2b(channel.encode(), digest_size=8).hexdigest()
    return Path(data_dir) / f"{stem}{suffix}"


def owner_file(
    channel: str,
    runtime_dir: str | os.PathLike[str] | None = None,
    hub: str | None = None,
) -> Path:
    """The file whose ``flock`` marks the live coordinator of ``channel`` (see module doc)."""
    from localsync.channel.runtime import channel_paths, resolve_runtime_dir, validate_channel_name

    if hub is None:
        return _local_owner_file(channel_paths(channel, runtime_dir))
    validate_channel_name(channel)
    digest = hashlib.blake2b(f"{hub}\0{channel}".encode(), digest_size=8).hexdigest()
    kind = "nats" if is_nats_hub(hub) else "tcp"
    return resolve_runtime_dir(runtime_dir) / f"{kind}-{digest}.coordinator"


def _local_owner_file(paths: ChannelPaths) -> Path:
    return paths.folder / f"{paths.peers.stem}.coordinator"


def _read_owner(path: Path) -> dict[str, Any]:
    """What the owner recorded (``{}`` while it is being written or if unreadable)."""
    try:
        with open(path, "rb") as file:
            record = json.loads(file.read(65536) or b"null")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def channel_owner(
    channel: str,
    runtime_dir: str | os.PathLike[str] | None = None,
    hub: str | None = None,
) -> dict[str, Any] | None:
    """The live coordinator of ``channel`` (``pid``, ``data``, ``file``), or ``None``.

    The record may be ``{}`` for an instant, while a new owner writes it.
    """
    return _live_owner(owner_file(channel, runtime_dir, hub))


def coordinator_client_id(paths: ChannelPaths) -> str | None:
    """The channel client id of the live coordinator of the local channel at ``paths``
    (None: no coordinator, or it has not joined yet)."""
    client_id = (_live_owner(_local_owner_file(paths)) or {}).get("client_id")
    return client_id if isinstance(client_id, str) else None


def _live_owner(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _write_record(fd: int, record: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _describe(owner: dict[str, Any]) -> str:
    pid = owner.get("pid", "unknown")
    return f"PID {pid}, data folder {owner.get('data', 'unknown')}"


def _positive_seconds(name: str, value: float, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class Coordinator:
    """Persists a channel and serves it to joiners (see module doc)."""

    def __init__(
        self,
        channel: str,
        data_dir: str | os.PathLike[str],
        persister: str = "sqlite",
        *,
        hub: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        anti_entropy_seconds: float = 1.0,
        ack_interval_seconds: float = 0.5,
        owner_wait_seconds: float = OWNER_WAIT_SECONDS,
        exit_with_parent: bool = False,
    ) -> None:
        self.channel = channel
        self.postgres_url: str | None = None
        if is_postgres_url(data_dir):
            from localsync.channel.runtime import validate_channel_name

            validate_channel_name(channel)
            self.postgres_url = str(data_dir)
            self.table = postgres_table_name(channel)
            self.persister_kind = "postgres"
            # no password in here: it goes to the owner file, the ready line and messages
            self.location = postgres_location(self.postgres_url, self.table)
            self.path: Path | None = None
        else:
            self.path = data_file(channel, data_dir, persister)
            self.data_dir = Path(data_dir)
            self.persister_kind = persister
            self.location = str(self.path.resolve())
        if hub is not None:
            from localsync.channel.synchronizer import check_hub

            check_hub(hub)  # a malformed address fails here, before anything starts
        self._hub = hub
        self._runtime_dir = runtime_dir
        self._anti_entropy = _positive_seconds("anti_entropy_seconds", anti_entropy_seconds)
        self._ack_interval = _positive_seconds("ack_interval_seconds", ack_interval_seconds)
        self._owner_wait = _positive_seconds("owner_wait_seconds", owner_wait_seconds, True)
        self._exit_with_parent = bool(exit_with_parent)
        self._owner_fd: int | None = None
        self._owner_record: dict[str, Any] = {}
        self.store: MergeableStore | None = None
        self.persister: Any = None
        self.synchronizer: Any = None
        self.saved_hashes: tuple[int, int] | None = None
        self.saves = 0
        self.save_errors = 0
        self.final_save_failed = False
        self.ignored_errors = 0
        self._dirty: asyncio.Event | None = None
        self._saved: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Any = None
        self._stopping = False

    async def start(self) -> Coordinator:
        """Load persisted content, then join the channel and start saving."""
        from localsync.channel.synchronizer import create_channel_synchronizer
        from localsync.core.mergeable_store import create_mergeable_store

        # private like the live sockets: the persisted channel is readable by its user only
        # (an existing folder keeps the mode its owner gave it)
        if self.postgres_url is None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._claim_channel()
        try:
            await self._start(create_mergeable_store, create_channel_synchronizer)
        except BaseException:
            self._release_channel()
            raise
        return self

    async def _claim_channel(self) -> None:
        """Take the channel's coordinator lock (see "One coordinator per channel")."""
        path = owner_file(self.channel, self._runtime_dir, self._hub)
        record = {
            "pid": os.getpid(),
            "channel": self.channel,
            "data": self._data_description(),
            "file": self.location,
        }
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            started = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                waited = time.monotonic() - started
                owner = _read_owner(path)
                same = owner.get("file") == record["file"]
                if owner and not same and waited >= _OWNER_SETTLE_SECONDS:
                    raise ChannelTakenError(
                        f"channel {self.channel!r} already has a coordinator "
                        f"({_describe(owner)}, file {owner.get('file', 'unknown')}); "
                        f"refusing to persist it into {self._data_description()} as well",
                        owner,
                    )
                if waited >= max(self._owner_wait, _OWNER_SETTLE_SECONDS):
                    what = "the same data file" if same else "a data file"
                    raise ChannelTakenError(
                        f"channel {self.channel!r} already has a coordinator saving {what} "
                        f"({_describe(owner)}) and it did not exit within "
                        f"{self._owner_wait:g} s; two coordinators must not save one file",
                        owner,
                    )
                await asyncio.sleep(_OWNER_POLL_SECONDS)
            _write_record(fd, record)
        except BaseException:
            os.close(fd)
            raise
        self._owner_fd = fd
        self._owner_record = record

    def _data_description(self) -> str:
        if self.postgres_url is not None:
            from localsync.persisters.postgres import describe_conninfo

            return describe_conninfo(self.postgres_url)
        return str(self.data_dir.resolve())

    def _release_channel(self) -> None:
        if self._owner_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._owner_fd)  # closing the only descriptor releases the flock
            self._owner_fd = None

    async def _start(
        self,
        create_mergeable_store: Callable[[], MergeableStore],
        create_channel_synchronizer: Callable[..., ChannelSynchronizer],
    ) -> None:
        self.store = create_mergeable_store()
        if self.postgres_url is not None:
            from localsync.persisters.postgres import create_postgres_persister

            self.persister = create_postgres_persister(self.store, self.postgres_url, self.table)
        elif self.persister_kind == "sqlite":
            from localsync.persisters.sqlite import create_sqlite_persister

            self.persister = create_sqlite_persister(self.store, self.location)
        else:
            from localsync.persisters.file import create_file_persister

            self.persister = create_file_persister(self.store, self.location)
        await self.persister.load()
        self._dirty = asyncio.Event()
        self._saved = asyncio.Condition()
        loop = asyncio.get_running_loop()
        dirty = self._dirty

        def on_transaction(_store: object) -> None:
            # transactions normally happen on this loop's thread; be safe if not
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                dirty.set()
            else:
                loop.call_soon_threadsafe(dirty.set)

        self._listener = self.store.add_did_finish_transaction_listener(on_transaction)
        self.synchronizer = create_channel_synchronizer(
            self.store,
            self.channel,
            hub=self._hub,
            runtime_dir=None if is_nats_hub(self._hub) else self._runtime_dir,
            anti_entropy_seconds=self._anti_entropy,
            on_ignored_error=self._on_ignored_error,
        )
        if self._owner_fd is not None:
            # joiners ask the coordinator for snapshots (localsync.channel.snapshot)
            self._owner_record["client_id"] = self.synchronizer.client_id
            with contextlib.suppress(OSError):
                _write_record(self._owner_fd, self._owner_record)
        await self.synchronizer.start_sync()
        self._dirty.set()  # first save: makes the loaded content's hashes acknowledged
        self._tasks = [
            asyncio.create_task(self._save_loop(), name="localsync-coordinator-save"),
            asyncio.create_task(self._ack_loop(), name="localsync-coordinator-ack"),
        ]

    def _on_ignored_error(self, error: BaseException) -> None:
        # expected now and then (a request nobody answered: alone on the channel, a peer that
        # died mid-exchange, invalid input); anti-entropy retries, so this is not a warning
        self.ignored_errors += 1
        logger.debug("ignored: %r", error)

    async def _save_once(self) -> None:
        assert self._saved is not None and self.store is not None
        hashes = tuple(self.store.get_mergeable_content_hashes())
        # flush(), not save(): save() reports a failure (full disk, read-only folder) only to
        # listeners, and announcing hashes that are not on disk would break "acknowledged".
        await self.persister.flush()
        self.saves += 1
        self.saved_hashes = (hashes[0], hashes[1])
        self._announce()
        async with self._saved:
            self._saved.notify_all()

    def _announce(self) -> None:
        if self.saved_hashes is not None and self.synchronizer is not None:
            with contextlib.suppress(Exception):
                self.synchronizer.transport.publish_ack(*self.saved_hashes)

    async def _save_loop(self) -> None:
        assert self._dirty is not None
        backoff = _SAVE_RETRY_FIRST_SECONDS
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._save_once()
            except PersistError as error:
                # keep serving and keep the data in memory; nothing is acknowledged until a
                # save succeeds, and the next attempt comes after a growing pause
                self.save_errors += 1
                logger.error("save failed (attempt again in %.1f s): %s", backoff, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _SAVE_RETRY_MAX_SECONDS)
                self._dirty.set()
            else:
                backoff = _SAVE_RETRY_FIRST_SECONDS

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_interval)
            self._announce()

    async def wait_saved(self, timeout: float | None = None) -> tuple[int, int]:
        """Wait until the current content is saved; returns its hashes."""
        assert self._saved is not None and self.store is not None

        async def until() -> tuple[int, int]:
            assert self._saved is not None and self.store is not None
            async with self._saved:
                while True:
                    current = tuple(self.store.get_mergeable_content_hashes())
                    if self.saved_hashes == current:
                        return self.saved_hashes
                    await self._saved.wait()

        return await asyncio.wait_for(until(), timeout)

    async def stop(self) -> None:
        """Leave the channel, then save one last time (nothing received is left unsaved)."""
        if self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.synchronizer is not None:
            await self.synchronizer.destroy()
        if self.persister is not None:
            try:
                await self.persister.flush()
                self.saves += 1
            except PersistError as error:
                self.save_errors += 1
                self.final_save_failed = True
                logger.error("final save failed: %s", error)
            destroy = getattr(self.persister, "destroy", None)
            if destroy is not None:
                await destroy()
        if self._listener is not None and self.store is not None:
            self.store.del_listener(self._listener)
        self._release_channel()

    async def __aenter__(self) -> Coordinator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _others_on_channel(self) -> bool:
        """Whether a participant other than this one is alive on the local channel."""
        from localsync.channel.presence import is_alive
        from localsync.channel.runtime import channel_paths

        if self._hub is not None or self.synchronizer is None:
            return False  # no presence files on a tcp hub
        folder = channel_paths(self.channel, self._runtime_dir).peers
        try:
            names = [n for n in os.listdir(folder) if not n.startswith(".")]
        except OSError:
            return False
        own = self.synchronizer.client_id
        return any(is_alive(folder, name) for name in names if name != own)

    def _watch_parent(self, stop: asyncio.Event) -> asyncio.Task[None]:
        """Set ``stop`` once the parent has ended (see "Exit with parent")."""
        parent = os.getppid()

        async def watch() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(_PARENT_POLL_SECONDS)
            logger.info("the parent process %d has ended: stopping", parent)
            deadline = time.monotonic() + PARENT_GONE_LINGER_SECONDS
            while time.monotonic() < deadline and self._others_on_channel():
                await asyncio.sleep(_PARENT_POLL_SECONDS)
            stop.set()

        return asyncio.create_task(watch(), name="localsync-coordinator-parent")

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watcher = self._watch_parent(stop) if self._exit_with_parent else None
        try:
            await self.start()
        except BaseException:
            if watcher is not None:
                watcher.cancel()
            raise
        try:
            print(
                json.dumps(
                    {
                        "event": "ready",
                        "channel": self.channel,
                        "data": self.location if self.path is None else str(self.path),
                        "client_id": self.synchronizer.client_id,
                        "pid": os.getpid(),
                    }
                ),
                flush=True,
            )
            await stop.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.stop()

    def run(self) -> None:
        """Blocking: serve until SIGTERM/SIGINT (for programs without asyncio)."""
        event_loop.run(self.serve_until_signal())
