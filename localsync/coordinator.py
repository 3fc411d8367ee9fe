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

Command line: ``localsync coordinator --channel NAME --data DIR [--persister sqlite|file]
[--hub tcp://HOST:PORT]``; prints one ``ready`` line (JSON) on stdout once it serves the
channel; on SIGTERM or SIGINT it saves a last time and exits 0.

The data file is ``DIR/NAME.sqlite`` (or ``.json`` for the file persister) when NAME is made
of letters, digits, ``.``, ``_`` and ``-`` (and does not start with a dot); otherwise
``DIR/channel-<16 hex digits of BLAKE2b(NAME)>.sqlite``.

Acknowledged
    A change is *acknowledged* once the coordinator has durably saved content that includes
    it. After each save the coordinator broadcasts, on the channel's acknowledgement topic,
    the ``[tables_hash, values_hash]`` of the content it saved (read just before the save, so
    the saved content holds at least that), and repeats the latest one every
    ``ack_interval_seconds``. A participant calls ``await sync.wait_acknowledged(timeout)``
    (:class:`localsync.synchronizers.channel.ChannelSynchronizer`): it returns once an
    announced pair equals the hashes of a state its store passed through since the call,
    i.e. everything it held at the call is on disk and survives a coordinator restart, even
    while other processes keep writing. In-process, :meth:`Coordinator.wait_saved` and
    :attr:`Coordinator.saved_hashes` give the same guarantee.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from . import event_loop
from .persisters._common import PersistError

__all__ = ["Coordinator", "configure", "data_file", "run"]

logger = logging.getLogger("localsync.coordinator")

# pauses between attempts when saving fails (full disk, read-only folder): short at first,
# so a transient error costs little, capped so a lasting one does not spin
_SAVE_RETRY_FIRST_SECONDS = 0.5
_SAVE_RETRY_MAX_SECONDS = 10.0

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
PERSISTERS = ("sqlite", "file")


def data_file(channel: str, data_dir: str | os.PathLike[str], persister: str = "sqlite") -> Path:
    """Where a coordinator of ``channel`` keeps its data (see module doc)."""
    from .runtime import validate_channel_name

    validate_channel_name(channel)
    if persister not in PERSISTERS:
        raise ValueError(f"persister must be one of {PERSISTERS}, got {persister!r}")
    suffix = ".sqlite" if persister == "sqlite" else ".json"
    if _SAFE_NAME.fullmatch(channel):
        stem = channel
    else:
        stem = "channel-" + hashlib.blake2b(channel.encode(), digest_size=8).hexdigest()
    return Path(data_dir) / f"{stem}{suffix}"


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
    ) -> None:
        self.channel = channel
        self.path = data_file(channel, data_dir, persister)
        self.data_dir = Path(data_dir)
        self.persister_kind = persister
        self._hub = hub
        self._runtime_dir = runtime_dir
        self._anti_entropy = anti_entropy_seconds
        self._ack_interval = ack_interval_seconds
        self.store: Any = None
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
        from .mergeable_store import create_mergeable_store
        from .synchronizers.channel import create_channel_synchronizer

        # private like the live sockets: the persisted channel is readable by its user only
        # (an existing folder keeps the mode its owner gave it)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = create_mergeable_store()
        if self.persister_kind == "sqlite":
            from .persisters.sqlite import create_sqlite_persister

            self.persister = create_sqlite_persister(self.store, str(self.path))
        else:
            from .persisters.file import create_file_persister

            self.persister = create_file_persister(self.store, str(self.path))
        await self.persister.load()
        self._dirty = asyncio.Event()
        self._saved = asyncio.Condition()
        loop = asyncio.get_running_loop()
        dirty = self._dirty

        def on_transaction(_store: Any) -> None:
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
            runtime_dir=self._runtime_dir,
            anti_entropy_seconds=self._anti_entropy,
            on_ignored_error=self._on_ignored_error,
        )
        await self.synchronizer.start_sync()
        self._dirty.set()  # first save: makes the loaded content's hashes acknowledged
        self._tasks = [
            asyncio.create_task(self._save_loop(), name="localsync-coordinator-save"),
            asyncio.create_task(self._ack_loop(), name="localsync-coordinator-ack"),
        ]
        return self

    def _on_ignored_error(self, error: BaseException) -> None:
        # expected now and then (a request nobody answered: alone on the channel, a peer that
        # died mid-exchange, invalid input); anti-entropy retries, so this is not a warning
        self.ignored_errors += 1
        logger.debug("ignored: %r", error)

    async def _save_once(self) -> None:
        assert self._saved is not None
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
            assert self._saved is not None
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

    async def __aenter__(self) -> Coordinator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            print(
                json.dumps(
                    {
                        "event": "ready",
                        "channel": self.channel,
                        "data": str(self.path),
                        "client_id": self.synchronizer.client_id,
                        "pid": os.getpid(),
                    }
                ),
                flush=True,
            )
            await stop.wait()
        finally:
            await self.stop()

    def run(self) -> None:
        """Blocking: serve until SIGTERM/SIGINT (for programs without asyncio)."""
        event_loop.run(self.serve_until_signal())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channel", required=True, help="channel name")
    parser.add_argument("--data", required=True, metavar="DIR", help="folder for the data file")
    parser.add_argument("--persister", choices=PERSISTERS, default="sqlite")
    parser.add_argument("--hub", metavar="tcp://HOST:PORT", help="external hub (default: local)")
    parser.add_argument("--runtime-dir", help="private runtime folder (default: see docs)")


def run(args: argparse.Namespace) -> int:
    try:
        coordinator = Coordinator(
            args.channel,
            args.data,
            args.persister,
            hub=args.hub,
            runtime_dir=args.runtime_dir,
        )
    except (TypeError, ValueError) as error:
        print(f"localsync coordinator: {error}", file=sys.stderr)
        return 2
    from .runtime import RuntimeDirError
    from .synchronizers.channel import ChannelError

    try:
        coordinator.run()
    except (ChannelError, RuntimeDirError, OSError) as error:
        print(f"localsync coordinator: {error}", file=sys.stderr)
        return 1
    if coordinator.final_save_failed:
        print("localsync coordinator: the final save failed (see the log)", file=sys.stderr)
        return 1
    return 0
