"""``localsync inspect --web CHANNEL|FILE``: the live inspector page for a channel or a file.

For a channel, joins it with a MergeableStore (:func:`create_channel_synchronizer`) and serves
the inspector (:mod:`localsync.ws.inspector`) following that store on
``http://HOST:PORT/_inspect/`` (``--port 0``: any free port; the URL is printed). Cells and
values edited in the page are written to that store, so they reach every participant of the
channel. When PATH is an existing file (a persisted store, as ``localsync inspect PATH``
reads it), the page shows it read-only and follows it: the file is read again (never
written) whenever it, or its SQLite write-ahead log, changes. The page's server serves
nothing else: a WebSocket room on it is refused (403). SIGINT/SIGTERM stop it cleanly (exit
status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from websockets.http11 import Request

from localsync.channel.runtime import validate_channel_name
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.cli.inspect import load_persisted, plain_content
from localsync.core.mergeable_store import MergeableStore, create_mergeable_store
from localsync.errors import ChannelError, PersistError, UsageError
from localsync.sync import event_loop
from localsync.ws.inspector import Inspector, StoreSource
from localsync.ws.server import create_ws_server

__all__ = ["configure_web", "run_web", "serve_page"]

PREFIX = "/_inspect"
#: how often a followed file is checked for changes
FILE_POLL_SECONDS = 0.1


def configure_web(parser: argparse.ArgumentParser) -> None:
    """The options ``--web`` adds to ``localsync inspect``."""
    from localsync.cli.main import port_number

    web = parser.add_argument_group("live page (--web CHANNEL)")
    web.add_argument(
        "--web",
        action="store_true",
        help="serve a live page following channel PATH (or file PATH, read-only)",
    )
    web.add_argument("--host", default="127.0.0.1", help="address of the page (default 127.0.0.1)")
    web.add_argument(
        "--port", type=port_number, default=0, help="port of the page (default 0: any free one)"
    )
    web.add_argument("--token", help="require ?token=TOKEN to open the page")
    web.add_argument("--hub", metavar="tcp://HOST:PORT", help="the channel's external hub")
    web.add_argument("--runtime-dir", metavar="DIR", help="the channel's private runtime folder")


def _only_the_page(name: str, _request: Request) -> bool:
    """The server's auth hook: the inspector route, never a room."""
    return name == PREFIX.strip("/")


class _FileFollower:
    """Reads a persisted store into ``store`` again whenever the file changes (read-only)."""

    def __init__(self, path: Path, store: MergeableStore) -> None:
        self.path = path
        self.store = store
        self.stats = {"reloads": 0, "unreadable": 0}
        self._seen: object = None

    def _token(self) -> object:
        return tuple(
            (s.st_ino, s.st_size, s.st_mtime_ns) if s is not None else None
            for s in (_stat(self.path), _stat(Path(f"{self.path}-wal")))
        )

    def read(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tables, values) of the file if it changed since the last read, else None."""
        token = self._token()
        if token == self._seen:
            return None
        self._seen = token
        try:
            _kind, content = load_persisted(self.path)
        except (OSError, ValueError, PersistError):
            self.stats["unreadable"] += 1  # (being rewritten, say: its next change retries)
            return None
        return plain_content(content)

    def apply(self, content: tuple[dict[str, Any], dict[str, Any]]) -> None:
        """Make the store hold ``content`` (one transaction: listeners see the differences)."""
        tables, values = content
        with self.store.transaction():  # (empty tables or values: setting them is a no-op)
            if tables:
                self.store.set_tables(tables)
            else:
                self.store.del_tables()
            if values:
                self.store.set_values(values)
            else:
                self.store.del_values()
        self.stats["reloads"] += 1

    async def run(self) -> None:
        """Read the file in a thread whenever it changes; write the store on the loop."""
        while True:
            content = await asyncio.to_thread(self.read)
            if content is not None:
                self.apply(content)
            await asyncio.sleep(FILE_POLL_SECONDS)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


async def serve_page(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Follow channel or file ``args.path`` and serve its page until ``stop`` (or
    SIGINT/SIGTERM)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    name = args.path
    store = create_mergeable_store()
    path = Path(name or ".")
    synchronizer = None
    watcher = None
    server = None
    inspector = None
    try:
        if path.is_file():
            follower = _FileFollower(path, store)
            first = follower.read()
            if first is not None:
                follower.apply(first)
            watcher = asyncio.ensure_future(follower.run())
            source = StoreSource(store, path.name, lambda: follower.stats, read_only=True)
            what = f"file {path}"
        else:
            synchronizer = create_channel_synchronizer(
                store, name, hub=args.hub, runtime_dir=args.runtime_dir
            )
            await synchronizer.start_sync()
            channel = synchronizer

            def stats() -> dict[str, int]:
                return {**channel.get_synchronizer_stats(), **channel.get_channel_stats()}

            source = StoreSource(store, name, stats)
            what = f"channel {name}"
        server = await create_ws_server(
            args.host, args.port, token=args.token, authenticate=_only_the_page
        )
        inspector = Inspector(source, PREFIX, title=what)
        server.add_route(inspector.route())
        query = f"?token={quote(args.token, safe='')}" if args.token else ""
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"localsync inspect: {what} on http://{host}:{server.port}{PREFIX}/{query}",
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
        if inspector is not None:
            await inspector.close()
        if server is not None:
            await server.destroy()
        if synchronizer is not None:
            await synchronizer.destroy()
    print("localsync inspect: stopped", flush=True)
    return 0


def run_web(args: argparse.Namespace) -> int:
    """``localsync inspect --web CHANNEL|FILE``; ordinary mistakes raise :class:`UsageError`."""
    is_file = bool(args.path) and Path(args.path).is_file()  # (Path("") is ".")
    if args.path and Path(args.path).is_dir():
        raise UsageError(f"{args.path}: a folder (--web follows one file or a channel)")
    if not is_file:
        try:
            validate_channel_name(args.path)
        except ValueError as error:
            raise UsageError(f"channel: {error}") from None
    else:
        try:
            load_persisted(Path(args.path))
        except (OSError, ValueError, PersistError) as error:
            print(f"localsync inspect: {args.path}: unreadable: {error}", file=sys.stderr)
            return 1
    try:
        return event_loop.run(serve_page(args))
    except ChannelError as error:  # (before OSError: it is one)
        print(f"localsync inspect: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if "bind" in str(error):
            raise UsageError(f"cannot listen on {args.host} port {args.port}: {error}") from None
        raise
