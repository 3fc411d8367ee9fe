"""A FastAPI app with the sync ASGI app mounted at ``/sync``, served by uvicorn or hypercorn:
the app the ASGI tests and ``benchmarks/ws.py`` run in a process of its own.

``python -m tests.asgi_app [--data DIR] [--server uvicorn|hypercorn] [--token T]
[--cookie VALUE] [--max-clients N]`` listens on a free loopback port and prints one JSON line,
``{"port": P, "server": ..., "ws": ...}`` (``ws``: the WebSocket implementation the server
picked), once it accepts connections. SIGTERM (or SIGINT) shuts it down gracefully: the app's
lifespan saves every room's store (``--data``: one JSON file per room) and closes the
connections still open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from websockets.http11 import Request

from localsync.cli.serve import persister_factory
from localsync.ws.asgi import AsgiApp, create_asgi_app

COOKIE = "session"


def cookie_of(request: Request, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` header, or None."""
    for part in request.headers.get("Cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def cookie_check(expected: str) -> Callable[[str, Request], bool]:
    """An ``authenticate`` hook admitting requests whose ``session`` cookie is ``expected``."""

    def authenticate(_path_id: str, request: Request) -> bool:
        return cookie_of(request) == expected

    return authenticate


def build_app(
    data: Path | None = None,
    *,
    token: str | None = None,
    cookie: str | None = None,
    max_clients: int | None = None,
) -> tuple[FastAPI, AsgiApp]:
    """The FastAPI app and the sync app mounted in it at ``/sync``."""
    sync = create_asgi_app(
        persister_factory(data, "file") if data is not None else None,
        token=token,
        authenticate=cookie_check(cookie) if cookie is not None else None,
        max_clients=max_clients,
    )
    app = FastAPI(lifespan=sync.lifespan)

    @app.get("/hello")
    def hello() -> dict[str, str]:  # (the host app's own routes keep working)
        return {"hello": "world"}

    app.mount("/sync", sync)
    return app, sync


async def serve_uvicorn(
    app: Any, ready: Callable[[int], None], stop: asyncio.Event | None = None, **options: Any
) -> None:
    """Serve ``app`` with uvicorn on a free loopback port; ``ready(port)`` once it listens.

    Returns after a graceful shutdown: when ``stop`` is set, or (``stop`` None, main thread)
    on SIGINT/SIGTERM, which uvicorn handles itself."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.02)
    ready(int(server.servers[0].sockets[0].getsockname()[1]))
    if stop is not None:
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        server.should_exit = True
    await task


async def serve_hypercorn(
    app: Any, ready: Callable[[int], None], stop: asyncio.Event, **options: Any
) -> None:
    """Serve ``app`` with hypercorn on a free loopback port until ``stop`` is set."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        fd = os.dup(listener.fileno())  # (hypercorn owns and closes this one)
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.loglevel = "WARNING"
    for name, value in options.items():
        setattr(config, name, value)
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    # (hypercorn listens on the socket itself; the port is known before it accepts)
    await _until_accepting(port, task)
    ready(port)
    await task


async def _until_accepting(port: int, task: asyncio.Future[Any]) -> None:
    while True:
        if task.done():
            await task
            raise RuntimeError("the server did not start")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


def _ws_implementation(server: str) -> str:
    if server == "hypercorn":
        return "wsproto"
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    return getattr(AutoWebSocketsProtocol, "__module__", "none").rsplit(".", 1)[-1]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="persist each room in this folder")
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--token")
    parser.add_argument("--cookie", help="require the cookie session=<this>")
    parser.add_argument("--max-clients", type=int)
    args = parser.parse_args(argv)
    app, _sync = build_app(
        args.data, token=args.token, cookie=args.cookie, max_clients=args.max_clients
    )

    def ready(port: int) -> None:
        line = {"port": port, "server": args.server, "ws": _ws_implementation(args.server)}
        print(json.dumps(line), flush=True)

    if args.server == "uvicorn":
        await serve_uvicorn(app, ready)  # (uvicorn's own SIGTERM handler)
    else:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_hypercorn(app, ready, stop)


if __name__ == "__main__":
    asyncio.run(main())
