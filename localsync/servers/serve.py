"""``localsync serve``: a persisting WebSocket sync server for TinyBase and localsync clients.

Each URL path is a room whose MergeableStore is kept in ``--data DIR`` (one SQLite database
``<pathId>.sqlite`` or one TinyBase JSON file ``<pathId>.json`` per room, a ``/`` in the id
written as ``%2F``), so every client can
leave and come back to its data, also after a restart. Path ids are validated by the server
before a file name is made from them (see :mod:`localsync.servers.ws_server`).

Logs each connection and, every ``--summary-seconds``, a one-line summary; exits cleanly
(closing connections and saving every room) on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import event_loop
from .ws_server import WsServer, create_ws_server, path_file_name

__all__ = ["configure", "persister_factory", "run", "serve"]

logger = logging.getLogger("localsync.serve")

SUFFIXES = {"sqlite": ".sqlite", "file": ".json"}


def persister_factory(
    data_dir: str | os.PathLike[str], kind: str = "sqlite"
) -> Callable[[str], Any]:
    """``create_persister(path_id)`` keeping each room's store in ``data_dir``.

    Refuses (ValueError) a path id that is not valid, even though the server already refused
    it at the upgrade: a file name is never made from an unchecked id.
    """
    if kind not in SUFFIXES:
        raise ValueError(f"persister must be one of {sorted(SUFFIXES)}, not {kind!r}")
    folder = Path(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)

    def create_persister(path_id: str) -> Any:
        name = path_file_name(path_id)  # ValueError for an invalid id
        from ..mergeable_store import create_mergeable_store

        target = folder / (name + SUFFIXES[kind])
        if target.parent != folder:  # belt and braces: the id cannot leave the folder
            raise ValueError(f"invalid path id {path_id!r}")
        store = create_mergeable_store()
        if kind == "sqlite":
            from ..persisters.sqlite import create_sqlite_persister

            return create_sqlite_persister(store, target)
        from ..persisters.file import create_file_persister

        return create_file_persister(store, target)

    return create_persister


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8048, help="port (0 = any free port)")
    parser.add_argument("--data", default="localsync-data", help="folder for the rooms' stores")
    parser.add_argument("--persister", choices=sorted(SUFFIXES), default="sqlite")
    parser.add_argument(
        "--no-persist", action="store_true", help="relay only, keep nothing on disk"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LOCALSYNC_TOKEN"),
        help="require this token (Authorization: Bearer or ?token=); env LOCALSYNC_TOKEN",
    )
    parser.add_argument("--max-clients", type=int, default=None, help="refuse more (503)")
    parser.add_argument("--summary-seconds", type=float, default=30.0)
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _summary(server: WsServer) -> str:
    s = server.get_stats()
    return (
        f"paths={s['paths']} clients={s['clients']} messages in={s['messages_received']} "
        f"out={s['messages_sent']} connections={s['connections']} rejected={s['rejected']} "
        f"invalid={s['invalid']} overflows={s['overflows']}"
    )


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set (or SIGINT/SIGTERM); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    factory = None if args.no_persist else persister_factory(args.data, args.persister)
    server = await create_ws_server(
        args.host,
        args.port,
        factory,
        token=args.token,
        max_clients=args.max_clients,
        on_ignored_error=lambda error: logger.info("ignored: %s", error),
    )
    where = "" if factory is None else f" (data in {Path(args.data).resolve()}, {args.persister})"
    print(f"localsync serve: listening on {server.url}{where}", flush=True)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.summary_seconds)
            except TimeoutError:
                logger.info("%s", _summary(server))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        logger.info("shutting down: %s", _summary(server))
        await server.destroy()
    print("localsync serve: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return event_loop.run(serve(args))
