"""/metrics and /healthz on a real server (standalone and ASGI under uvicorn), scraped over HTTP
and parsed with prometheus_client's parser while real clients sync through it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from localsync import create_mergeable_store
from localsync.cli.serve import persister_factory
from localsync.metrics import CONTENT_TYPE, health_route, metrics_route
from localsync.sync.persister import Persister, create_custom_persister
from localsync.ws.asgi import AsgiApp, create_asgi_app
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import WsServer, create_ws_server
from tests.helpers import eventually, run

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    """GET ``url`` (blocking): status, content type and body, also for error statuses."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


async def get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(http_get, url, token)


async def scrape(url: str, token: str | None = None) -> Samples:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    status, content_type, body = await get(url, token)
    assert status == 200, body
    assert content_type == CONTENT_TYPE
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until_scraped(url: str, check: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    """Scrape until ``check`` holds for the samples (TimeoutError after ``timeout``)."""

    async def poll() -> Samples:
        while True:
            samples = await scrape(url)
            if check(samples):
                return samples
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def send_garbage(url: str) -> int | None:
    """Send an undecodable frame as a raw client; the close code the server answered with."""
    async with connect(url, open_timeout=10) as ws:
        await ws.send("\n{this is not json")
        with pytest.raises(Exception):  # noqa: B017 (closed: ConnectionClosed*)
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code


async def sync_and_check(ws_base: str, http_base: str, rooms_checked: WsServer) -> None:
    """Clients sync through the server; the counters and the clients gauge follow them."""
    metrics = f"{http_base}/metrics"
    a, b, c = create_mergeable_store(), create_mergeable_store(), create_mergeable_store()
    sa = await create_ws_synchronizer(a, f"{ws_base}/room", 1.0)
    sb = await create_ws_synchronizer(b, f"{ws_base}/room", 1.0)
    sc = await create_ws_synchronizer(c, f"{ws_base}/other", 1.0)
    for s in (sa, sb, sc):
        await s.start_sync()
    try:
        before = await until_scraped(
            metrics,
            lambda s: (
                value(s, "localsync_clients", path="room") == 2
                and value(s, "localsync_clients", path="other") == 1
            ),
        )
        assert value(before, "localsync_paths") == 2
        assert value(before, "localsync_connections_total") >= 3  # (more if one reconnected)
        a.set_cell("t", "r", "c", "x" * 1000)
        await eventually(lambda: b.get_cell("t", "r", "c") == "x" * 1000, 10)
        after = await scrape(metrics)
        for name in ("messages_received", "messages_sent", "bytes_received", "bytes_sent"):
            key = f"localsync_{name}_total"
            assert value(after, key) > value(before, key), key
        # the 1000 characters went in (from a) and out (to b) at least once
        assert (
            value(after, "localsync_bytes_received_total")
            - value(before, "localsync_bytes_received_total")
            >= 1000
        )
        assert value(after, "localsync_ignored_total", reason="invalid") == 0
        # the page reads the server's own counters: nothing is counted twice
        stats = rooms_checked.get_stats()
        assert value(after, "localsync_messages_received_total") <= stats["messages_received"]

        code = await send_garbage(f"{ws_base}/room")
        assert code == 1007
        await until_scraped(
            metrics, lambda s: value(s, "localsync_ignored_total", reason="invalid") == 1
        )

        async def health() -> dict[str, Any]:
            status, content_type, body = await get(f"{http_base}/healthz")
            assert (status, content_type) == (200, "application/json")
            return dict(json.loads(body))

        # (the refused client leaves its room once the server's side of the close is done)
        while (await health())["clients"] != 3:
            await asyncio.sleep(0.05)
        assert await health() == {"status": "ok", "paths": 2, "rooms": 2, "clients": 3}
    finally:
        for s in (sa, sb, sc):
            await s.destroy()
    await until_scraped(metrics, lambda s: value(s, "localsync_paths") == 0)


def test_standalone_server_metrics_move_with_clients() -> None:
    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0)
        server.add_route(metrics_route(server))
        server.add_route(health_route(server))
        http_base = f"http://127.0.0.1:{server.port}"
        try:
            await sync_and_check(server.url, http_base, server)
        finally:
            await server.destroy()
        # a stopped standalone server no longer listens: the health check fails
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(urllib.request.urlopen, f"{http_base}/healthz", None, 5)

    run(scenario())


def test_token_protects_metrics_not_health() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, token="s3cret") as server:
            server.add_route(metrics_route(server))
            server.add_route(health_route(server))
            base = f"http://127.0.0.1:{server.port}"
            assert (await get(f"{base}/metrics"))[0] == 401
            assert (await get(f"{base}/metrics", "wrong"))[0] == 403
            assert (await get(f"{base}/metrics", "s3cret"))[0] == 200
            assert (await get(f"{base}/metrics?token=s3cret"))[0] == 200
            assert (await scrape(f"{base}/metrics", "s3cret"))[("localsync_rooms", ())] == 0
            assert (await get(f"{base}/healthz"))[0] == 200
            # two servers in one process: separate registries, separate numbers
            async with await create_ws_server("127.0.0.1", 0) as other:
                other.add_route(metrics_route(other))
                store = create_mergeable_store()
                sync = await create_ws_synchronizer(store, f"{other.url}/solo", 1.0)
                await sync.start_sync()
                await until_scraped(
                    f"http://127.0.0.1:{other.port}/metrics",
                    lambda s: value(s, "localsync_clients", path="solo") == 1,
                )
                mine = await scrape(f"{base}/metrics", "s3cret")
                assert value(mine, "localsync_clients", path="solo") == 0
                await sync.destroy()

    run(scenario())


# ------------------------------------------------------------------------ ASGI under uvicorn


@asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn in this event loop on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or serving.done(), 20)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 20)
        sock.close()


class Gate:
    """Room stores kept in memory whose saves wait while ``closing`` is set (a slow disk)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.released = asyncio.Event()
        self.content: dict[str, Any] = {}

    def create_persister(self, path_id: str) -> Persister:
        async def get_persisted() -> Any:
            return self.content.get(path_id)

        async def set_persisted(get_content: Callable[[], Any], _changes: Any = None) -> None:
            if self.closing.is_set():
                await self.released.wait()
            self.content[path_id] = get_content()

        return create_custom_persister(
            create_mergeable_store(), get_persisted, set_persisted, lambda _l: None, lambda _h: None
        )


def test_asgi_app_under_uvicorn_metrics_and_health_during_shutdown() -> None:
    async def scenario() -> None:
        gate = Gate()
        sync_app: AsgiApp = create_asgi_app(gate.create_persister)
        core = sync_app.server
        core.add_route(metrics_route(core))
        core.add_route(health_route(core))
        app = Starlette(lifespan=sync_app.lifespan)
        app.mount("/sync", sync_app)
        async with uvicorn_serving(app) as port:
            http_base = f"http://127.0.0.1:{port}/sync"
            await sync_and_check(f"ws://127.0.0.1:{port}/sync", http_base, core)
            # the rooms' stores saved what the clients wrote (persister series per room)
            store = create_mergeable_store()
            sync = await create_ws_synchronizer(store, f"ws://127.0.0.1:{port}/sync/kept", 1.0)
            await sync.start_sync()
            store.set_value("v", 1)
            await until_scraped(
                f"{http_base}/metrics",
                lambda s: (
                    value(s, "localsync_persister_saves_total", path="kept") >= 2
                    and value(s, "localsync_persister_unsaved_seconds", path="kept") == 0
                ),
            )
            assert (await get(f"{http_base}/healthz"))[0] == 200
            # shutting down: the room's last save hangs, and meanwhile /healthz says 503
            gate.closing.set()
            closing = asyncio.ensure_future(sync_app.aclose())

            async def refused() -> None:
                while (await get(f"{http_base}/healthz"))[0] != 503:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(refused(), 20)
            assert not closing.done()
            gate.released.set()
            await asyncio.wait_for(closing, 20)
            await sync.destroy()
            assert gate.content["kept"] is not None

    run(scenario())


# ------------------------------------------------------------------------------ persistence


def test_persister_saves_and_failures_in_metrics(tmp_path: Path) -> None:
    """A file-persisted room's saves rise; once its folder is replaced by a file (a real
    ENOTDIR on every write), its saves fail and the unsaved lag grows."""
    data = tmp_path / "data"

    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0, persister_factory(data, "file"))
        server.add_route(metrics_route(server))
        metrics = f"http://127.0.0.1:{server.port}/metrics"
        store = create_mergeable_store()
        sync = await create_ws_synchronizer(store, f"{server.url}/doc", 1.0)
        await sync.start_sync()
        try:
            store.set_cell("t", "r", "c", 1)
            first = await until_scraped(
                metrics,
                lambda s: (
                    value(s, "localsync_persister_saves_total", path="doc") >= 2
                    and (data / "doc.json").exists()
                ),
            )
            assert value(first, "localsync_persister_save_failures_total", path="doc") == 0
            store.set_cell("t", "r", "c", 2)
            saved = await until_scraped(
                metrics,
                lambda s: (
                    value(s, "localsync_persister_saves_total", path="doc")
                    > value(first, "localsync_persister_saves_total", path="doc")
                    and value(s, "localsync_persister_unsaved_seconds", path="doc") == 0
                ),
            )
            assert value(saved, "localsync_persister_save_failures_total", path="doc") == 0
            # the storage goes away under the running store: its folder is now a file
            shutil.rmtree(data)
            data.write_text("not a folder")
            store.set_cell("t", "r", "c", 3)
            failing = await until_scraped(
                metrics,
                lambda s: (
                    value(s, "localsync_persister_save_failures_total", path="doc") >= 1
                    and value(s, "localsync_persister_unsaved_seconds", path="doc") > 0
                ),
            )
            # the lag keeps growing while nothing can be saved
            await asyncio.sleep(0.2)
            later = await scrape(metrics)
            assert value(later, "localsync_persister_unsaved_seconds", path="doc") > value(
                failing, "localsync_persister_unsaved_seconds", path="doc"
            )
            # the storage comes back: the next save succeeds and the lag returns to 0
            os.remove(data)
            data.mkdir(mode=0o700)
            store.set_cell("t", "r", "c", 4)
            await until_scraped(
                metrics,
                lambda s: value(s, "localsync_persister_unsaved_seconds", path="doc") == 0,
            )
        finally:
            await sync.destroy()
            await server.destroy()

    run(scenario())
