"""``localsync inspect --web CHANNEL``: the live inspector page for a channel.

Joins the channel with a MergeableStore (:func:`create_channel_synchronizer`) and serves the
inspector (:mod:`localsync.ws.inspector`) following that store on
``http://HOST:PORT/_inspect/`` (``--port 0``: any free port; the URL is printed). Cells and
values edited in the page are written to that store, so they reach every participant of the
channel. The page's server serves nothing else: a WebSocket room on it is refused (403).
SIGINT/SIGTERM stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from urllib.parse import quote

from websockets.http11 import Request

from localsync.channel.runtime import validate_channel_name
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.core.mergeable_store import create_mergeable_store
from localsync.errors import ChannelError, UsageError
from localsync.sync import event_loop
from localsync.ws.inspector import Inspector, StoreSource
from localsync.ws.server import create_ws_server

__all__ = ["configure_web", "run_web", "serve_channel"]

PREFIX = "/_inspect"


def configure_web(parser: argparse.ArgumentParser) -> None:
    """The options ``--web`` adds to ``localsync inspect``."""
    from localsync.cli.main import port_number

    web = parser.add_argument_group("live page (--web CHANNEL)")
    web.add_argument(
        "--web", action="store_true", help="PATH is a channel: serve a live page following it"
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


async def serve_channel(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Follow channel ``args.path`` and serve its page until ``stop`` (or SIGINT/SIGTERM)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    name = args.path
    store = create_mergeable_store()
    synchronizer = create_channel_synchronizer(
        store, name, hub=args.hub, runtime_dir=args.runtime_dir
    )
    server = None
    inspector = None
    try:
        await synchronizer.start_sync()

        def stats() -> dict[str, int]:
            return {**synchronizer.get_synchronizer_stats(), **synchronizer.get_channel_stats()}

        server = await create_ws_server(
            args.host, args.port, token=args.token, authenticate=_only_the_page
        )
        inspector = Inspector(StoreSource(store, name, stats), PREFIX, title=f"channel {name}")
        server.add_route(inspector.route())
        query = f"?token={quote(args.token, safe='')}" if args.token else ""
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"localsync inspect: channel {name} on http://{host}:{server.port}{PREFIX}/{query}",
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if inspector is not None:
            await inspector.close()
        if server is not None:
            await server.destroy()
        await synchronizer.destroy()
    print("localsync inspect: stopped", flush=True)
    return 0


def run_web(args: argparse.Namespace) -> int:
    """``localsync inspect --web CHANNEL``; ordinary mistakes raise :class:`UsageError`."""
    try:
        validate_channel_name(args.path)
    except ValueError as error:
        raise UsageError(f"channel: {error}") from None
    try:
        return event_loop.run(serve_channel(args))
    except ChannelError as error:  # (before OSError: it is one)
        print(f"localsync inspect: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if "bind" in str(error):
            raise UsageError(f"cannot listen on {args.host} port {args.port}: {error}") from None
        raise
