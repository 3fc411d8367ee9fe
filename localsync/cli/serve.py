"""``localsync serve``: a persisting WebSocket sync server for TinyBase and localsync clients.

Each URL path is a room whose MergeableStore is kept in ``--data DIR`` (one SQLite database
``<pathId>.sqlite`` or one TinyBase JSON file ``<pathId>.json`` per room, a ``/`` in the id
written as ``%2F``), so every client can
leave and come back to its data, also after a restart. Path ids are validated by the server
before a file name is made from them (see :mod:`localsync.ws.server`).

``--data postgresql://USER:PASSWORD@HOST:PORT/DBNAME`` (or ``postgres://``) keeps every room
in that PostgreSQL database instead, in TinyBase's JSON layout
(:mod:`localsync.persisters.postgres`): room PATH_ID is the one row (``_id = '_'``, column
``store``) of its own table, named by :func:`localsync.channel.coordinator.postgres_table_name`:
``tinybase_<PATH_ID>`` when the id is made of letters, digits, ``_`` and ``-`` and the name
fits PostgreSQL's 63-byte identifiers, otherwise ``tinybase-<16 hex digits of
BLAKE2b-64(PATH_ID)>`` (any id with a ``/`` or a ``.``). A TinyBase process with
``createPostgresPersister(store, sql, 'tinybase_<PATH_ID>')`` shares the room's row (and its
LISTEN/NOTIFY). The connection is checked once at start: a database that is down or refuses
the credentials is one line ``localsync serve: error: ...`` (exit 2), without the password.
Empty rooms are not discarded in PostgreSQL (their table stays, possibly shared with a TinyBase
process: dropping it would also drop that process's notification triggers).
Each open room holds two connections (saves, LISTEN for auto-load): keep ``--max-rooms`` under
half the server's ``max_connections`` (100 by default); a room whose store cannot connect
closes its clients with code 1011.

A room that never held data leaves no file behind: when its store stops empty (no data, not
even a deletion), its file is deleted ``DISCARD_GRACE_SECONDS`` (0.25 s) later, after checking
that the file itself holds nothing; a file that could not be read, holds data, is a symlink or
(SQLite) still has a ``-wal``/``-shm`` file beside it is always kept.

Room limits (refused with HTTP 503 at the upgrade, or close code 1013 ``tinybase:15:rooms``
for a shared socket's subscription): ``--max-rooms`` rooms open at once (default 10,000) and
``--max-rooms-per-address`` rooms joined at once by the clients of one remote address (default
1,000; behind a reverse proxy every client has the proxy's address, so raise or disable it with
0); a shared socket joins at most 100 rooms (TinyBase's channel limit).

``--backplane nats://HOST:4222`` (or ``tcp://HOST:PORT`` for a ``localsync hub``, or
``local`` for this machine's channels) shares every room with the other ``localsync serve``
instances on the same backplane (:mod:`localsync.ws.backplane`): each instance keeps its own
copy of a room in its own ``--data`` (or none with ``--no-persist``), and the copies converge
while the instances serve the room together. A hub that does not answer at start is one line
``localsync serve: error: --backplane ...`` (exit 2).

Besides the rooms it answers ``GET /healthz`` (for load balancers), ``GET /metrics``
(Prometheus, :mod:`localsync.metrics`; off with ``--no-metrics``) and, with ``--inspector``,
the live inspector page at ``/_inspect/`` (:mod:`localsync.ws.inspector`); with ``--token`` the
metrics and the inspector need the token too (``?token=`` in the page's URL).

Logs each connection and, every ``--summary-seconds``, a one-line summary; exits cleanly
(closing connections and saving every room) on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from localsync.channel.coordinator import check_postgres, is_postgres_url, postgres_table_name
from localsync.errors import ChannelError
from localsync.sync import event_loop
from localsync.ws.backplane import create_backplane
from localsync.ws.server import WsServer, create_ws_server, is_valid_path_id, path_file_name

__all__ = [
    "check_postgres",
    "configure",
    "empty_room_discarder",
    "persister_factory",
    "postgres_room_table",
    "run",
    "serve",
]

logger = logging.getLogger("localsync.serve")

SUFFIXES = {"sqlite": ".sqlite", "file": ".json"}


def persister_factory(
    data_dir: str | os.PathLike[str], kind: str = "sqlite"
) -> Callable[[str], Any]:
    """``create_persister(path_id)`` keeping each room's store in ``data_dir``.

    ``data_dir`` may be a ``postgresql://`` URL (``kind`` is then ignored; see module doc).
    Refuses (ValueError) a path id that is not valid, even though the server already refused
    it at the upgrade: a file name is never made from an unchecked id.
    """
    if is_postgres_url(data_dir):
        return _postgres_factory(str(data_dir))
    if kind not in SUFFIXES:
        raise ValueError(f"persister must be one of {sorted(SUFFIXES)}, not {kind!r}")
    folder = Path(data_dir).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # (private, as the files are)

    def create_persister(path_id: str) -> Any:
        target = _room_file(folder, path_id, kind)  # ValueError for an invalid id
        from localsync.core.mergeable_store import create_mergeable_store

        store = create_mergeable_store()
        if kind == "sqlite":
            from localsync.persisters.sqlite import create_sqlite_persister

            return create_sqlite_persister(store, target)
        from localsync.persisters.file import create_file_persister

        return create_file_persister(store, target)

    return create_persister


def postgres_room_table(path_id: str) -> str:
    """The PostgreSQL table of room ``path_id`` (see module doc); ValueError for a bad id."""
    if not is_valid_path_id(path_id):
        raise ValueError(f"invalid path id {path_id!r}")
    return postgres_table_name(path_id)


def _postgres_factory(url: str) -> Callable[[str], Any]:
    def create_persister(path_id: str) -> Any:
        table = postgres_room_table(path_id)
        from localsync.core.mergeable_store import create_mergeable_store
        from localsync.persisters.postgres import create_postgres_persister

        store = create_mergeable_store()
        return create_postgres_persister(store, url, table)

    return create_persister


def _room_file(folder: Path, path_id: str, kind: str) -> Path:
    target = folder / (path_file_name(path_id) + SUFFIXES[kind])  # ValueError for a bad id
    if target.parent != folder:  # belt and braces: the id cannot leave the folder
        raise ValueError(f"invalid path id {path_id!r}")
    return target


#: the tables of a localsync SQLite database (localsync.persisters._sqlitestore); a database
#: with any other set of tables is never taken for an empty room's
_SQLITE_TABLES = frozenset(
    ["localsync_meta", "localsync_tables", "localsync_rows", "localsync_cells", "localsync_values"]
)


def _sqlite_holds_nothing(target: Path) -> bool:
    # immutable: no locks, no -wal/-shm files made (only called when none exist)
    uri = "file:" + urllib.parse.quote(str(target)) + "?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if names != _SQLITE_TABLES:
            return False
        return all(
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
            for table in sorted(_SQLITE_TABLES - {"localsync_meta"})
        )
    finally:
        conn.close()


def _json_holds_nothing(target: Path) -> bool:
    data = target.read_bytes()
    if not data.strip():
        return True
    content = json.loads(data)
    return (
        isinstance(content, list)
        and len(content) == 2
        and all(isinstance(part, list) and part and part[0] == {} for part in content)
    )


def _holds_nothing(target: Path, kind: str) -> bool:
    """True only when ``target`` could be read and holds no data (any error: False)."""
    try:
        if kind == "sqlite":
            return _sqlite_holds_nothing(target)
        return _json_holds_nothing(target)
    except Exception:
        return False


#: how long a room's file is left alone after its persister was destroyed before it may be
#: discarded: a worker thread of that persister may still be touching it (see discard below)
DISCARD_GRACE_SECONDS = 0.25
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def empty_room_discarder(
    data_dir: str | os.PathLike[str], kind: str = "sqlite"
) -> Callable[[str], Awaitable[bool]]:
    """``await discard(path_id)``: delete the room's file in ``data_dir`` if it holds no data.

    For ``WsServer``'s ``discard_empty_path``: called after a room whose store was empty has
    stopped, so a probe of many room names leaves nothing on disk. Returns True when it deleted
    the file; a file that holds data, cannot be read, is a symlink, or (SQLite) still has a
    ``-wal``/``-shm`` file beside it after ``DISCARD_GRACE_SECONDS`` (a connection may still be
    open: unlinking an open SQLite database can corrupt the next one made under that name) is
    kept.
    """
    if kind not in SUFFIXES:
        raise ValueError(f"persister must be one of {sorted(SUFFIXES)}, not {kind!r}")
    folder = Path(data_dir).resolve()

    def side_files(target: Path) -> list[Path]:
        if kind != "sqlite":
            return []
        return [folder / (target.name + extra) for extra in _SQLITE_SIDE_FILES]

    async def discard(path_id: str) -> bool:
        target = _room_file(folder, path_id, kind)
        if not target.is_file() or target.is_symlink():
            return False
        # the persister's watch poll may have a thread in flight that reopens the database
        # after it was closed: let it finish, and keep a database someone still has open
        await asyncio.sleep(DISCARD_GRACE_SECONDS)
        if any(side.exists() for side in side_files(target)):
            return False
        if not await asyncio.to_thread(_holds_nothing, target, kind):
            return False
        target.unlink()
        return True

    return discard


#: errors of binding the listening socket that are the caller's to fix
_LISTEN_ERRORS = frozenset(
    {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM, errno.EAFNOSUPPORT}
)


def configure(parser: argparse.ArgumentParser) -> None:
    from localsync.cli.main import port_number

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=8048, help="port, 0..65535 (0 = any free port)"
    )
    parser.add_argument(
        "--data",
        default="localsync-data",
        help="folder for the rooms' stores, or a postgresql:// URL (one table per room)",
    )
    parser.add_argument(
        "--persister",
        choices=sorted(SUFFIXES),
        default="sqlite",
        help="one SQLite database or one TinyBase JSON file per room",
    )
    parser.add_argument(
        "--no-persist", action="store_true", help="relay only, keep nothing on disk"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LOCALSYNC_TOKEN"),
        help="require this token (Authorization: Bearer or ?token=); "
        "default: the environment's LOCALSYNC_TOKEN",
    )
    parser.add_argument("--max-clients", type=int, default=None, help="refuse more (503)")
    parser.add_argument(
        "--max-rooms", type=int, default=10_000, help="rooms open at once (0 = no limit)"
    )
    parser.add_argument(
        "--max-rooms-per-address",
        type=int,
        default=1_000,
        help="rooms one remote address may have joined at once (0 = no limit)",
    )
    parser.add_argument(
        "--summary-seconds",
        type=float,
        default=30.0,
        help="log a one-line summary (rooms, clients, messages) this often",
    )
    parser.add_argument(
        "--backplane",
        default=None,
        help="share the rooms with other instances: nats://HOST:PORT, tcp://HOST:PORT "
        "(a localsync hub) or 'local' (this machine)",
    )
    parser.add_argument(
        "--inspector",
        action="store_true",
        help="serve the live inspector page at /_inspect/ (rooms, tables, live edits; "
        "needs --token when one is set)",
    )
    parser.add_argument(
        "--no-metrics", action="store_true", help="do not serve Prometheus metrics at /metrics"
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _http_host(server: WsServer) -> str:
    host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"


def _summary(server: WsServer) -> str:
    s = server.get_stats()
    return (
        f"paths={s['paths']} rooms={s['rooms']} clients={s['clients']} "
        f"messages in={s['messages_received']} "
        f"out={s['messages_sent']} connections={s['connections']} rejected={s['rejected']} "
        f"invalid={s['invalid']} overflows={s['overflows']} "
        f"rooms_refused={s['rooms_refused']} rooms_discarded={s['rooms_discarded']}"
        + "".join(f" {key}={value}" for key, value in s.items() if key.startswith("backplane"))
    )


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set (or SIGINT/SIGTERM); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    postgres = is_postgres_url(args.data)
    factory = None if args.no_persist else persister_factory(args.data, args.persister)
    # (PostgreSQL: empty rooms' tables are kept, see the module doc)
    discard = (
        None if args.no_persist or postgres else empty_room_discarder(args.data, args.persister)
    )
    server = await create_ws_server(
        args.host,
        args.port,
        factory,
        token=args.token,
        max_clients=args.max_clients,
        max_rooms=args.max_rooms or None,
        max_rooms_per_address=args.max_rooms_per_address or None,
        discard_empty_path=discard,
        on_ignored_error=lambda error: logger.info("ignored: %s", error),
        backplane=args.backplane,
        metrics=not args.no_metrics,
        inspector=args.inspector,
    )
    if factory is None:
        where = ""
    elif postgres:
        from localsync.persisters.postgres import describe_conninfo

        where = f" (data in {describe_conninfo(args.data)}, postgresql)"
    else:
        where = f" (data in {Path(args.data).resolve()}, {args.persister})"
    if args.backplane is not None:
        where += f" (backplane {args.backplane})"
    print(f"localsync serve: listening on {server.url}{where}", flush=True)
    if args.inspector:
        print(f"localsync serve: inspector at http://{_http_host(server)}/_inspect/", flush=True)
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
    """The CLI: ordinary mistakes (a port in use, a host that does not resolve, ``--data``
    naming a file) raise :class:`localsync.cli.UsageError`, one line instead of a traceback."""
    from localsync.cli.main import UsageError

    if args.summary_seconds <= 0:
        raise UsageError(f"--summary-seconds must be positive, got {args.summary_seconds}")
    if not args.no_persist and is_postgres_url(args.data):
        problem = check_postgres(args.data)
        if problem is not None:
            raise UsageError(f"--data: {problem}")
    elif not args.no_persist:
        try:
            Path(args.data).mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"--data {args.data}: not a folder") from None
        except OSError as error:
            raise UsageError(f"--data {args.data}: {error.strerror or error}") from None
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.backplane is not None:
        try:
            create_backplane(args.backplane)
        except ValueError as error:
            raise UsageError(f"--backplane: {error}") from None
    try:
        return event_loop.run(serve(args))
    except ChannelError as error:
        raise UsageError(f"--backplane {args.backplane}: {error}") from None
    except socket.gaierror as error:
        raise UsageError(f"cannot resolve --host {args.host}: {error.strerror}") from None
    except OSError as error:
        # (asyncio and uvloop both say "error while attempting to bind on address ...")
        if error.errno not in _LISTEN_ERRORS or "bind" not in str(error):
            raise
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise UsageError(f"cannot listen on {args.host} port {args.port}: {reason}") from None
