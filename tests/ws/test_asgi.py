"""The sync server as an ASGI app (localsync.ws.asgi) mounted in FastAPI and served by uvicorn
and hypercorn on loopback: TinyBase 10 and Python clients sync through it, rooms persist across
an app restart, shutdown closes clients, auth sees the ASGI scope, bad input and limits behave
as on the standalone server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from localsync import create_mergeable_store
from localsync.persisters.file import create_file_persister
from localsync.ws.asgi import AsgiApp, AsgiRequest, create_asgi_app
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import MAX_FRAME_SIZE
from localsync.ws.wire import MAX_PAYLOAD_SIZE
from tests import helpers, npm_env
from tests.asgi_app import build_app, cookie_of, serve_hypercorn, serve_uvicorn
from tests.interop.node_peers import NodeClient
from tests.ws.test_ws_persist import until_room_holds

ROOT = Path(__file__).resolve().parents[2]
OPS: list[list[Any]] = [
    ["setTables", {"t1": {"r1": {"s": "héllo 😀", "n": 9007199254740991, "f": -1.5e-7}}}],
    ["setCell", "t2", "r", "obj", {"b": [1, "é", {"x": 1.5}]}],
    ["setValues", {"v1": "x" * 100, "v2": False}],
]

# the shared-socket protocol's hello (TinyBase 9.3+): protocol version 1
HELLO = 'S\n["h1",-1,[0,1]]'

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------ helpers


class AppProcess:
    """``python -m tests.asgi_app`` (FastAPI + the sync app) in a process of its own."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info
        self.port = int(info["port"])

    @classmethod
    async def start(cls, *args: str) -> AppProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.asgi_app",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
        except TimeoutError:
            proc.kill()
            raise
        if not line:
            err = await proc.stderr.read()
            raise RuntimeError(f"the app did not start: {err.decode(errors='replace')[-3000:]}")
        return cls(proc, json.loads(line))

    async def stop(self) -> int:
        """SIGTERM (graceful shutdown); the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def served(app: Any, server: str = "uvicorn", **options: Any) -> AsyncIterator[int]:
    """Serve ``app`` in this event loop on a free loopback port; yields the port."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    if server == "uvicorn":
        # (a client that stopped reading would hold uvicorn's shutdown forever)
        options.setdefault("timeout_graceful_shutdown", 10)
        task = asyncio.ensure_future(serve_uvicorn(app, port.set_result, stop, **options))
    else:
        task = asyncio.ensure_future(serve_hypercorn(app, port.set_result, stop, **options))
    await asyncio.wait([task, port], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not port.done():
        task.cancel()
        raise RuntimeError(f"{server} did not start")
    try:
        yield port.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def mounted(sync: AsgiApp) -> FastAPI:
    app = FastAPI(lifespan=sync.lifespan)
    app.mount("/sync", sync)
    return app


def run(coro: Awaitable[Any], timeout: float = 90) -> Any:
    return helpers.run(coro, timeout)


eventually = helpers.eventually


def snapshot(store: Any) -> dict[str, Any]:
    return {
        "tables": store.get_tables(),
        "values": store.get_values(),
        "hashes": list(store.get_mergeable_content_hashes()),
    }


def holds(store: Any, want: dict[str, Any]) -> Callable[[], bool]:
    return lambda: snapshot(store) == want


async def refused_status(url: str, **options: Any) -> int:
    """The HTTP status a refused upgrade got (fails when the upgrade succeeds)."""
    with pytest.raises(InvalidStatus) as info:
        ws = await connect(url, open_timeout=10, **options)
        await ws.close()
    return info.value.response.status_code


async def close_code(ws: ClientConnection, timeout: float = 15) -> int | None:
    """The code of the close frame the server sent ``ws`` (waits for the close; whatever
    reads ``ws`` meanwhile, a synchronizer or nobody, frames still unread do not matter)."""
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def loaded(file: Path) -> Any:
    """A fresh store loaded from a room's JSON file."""
    store = create_mergeable_store()
    persister = create_file_persister(store, file)
    await persister.load()
    await persister.destroy()
    return store


# --------------------------------------------------------------- uvicorn, subprocess, npm


@pytest.mark.interop
@pytest.mark.process
def test_tinybase_and_python_clients_through_fastapi_under_uvicorn_across_a_restart(
    tmp_path: Path,
) -> None:
    npm_env.require_node()
    data = tmp_path / "data"

    async def scenario() -> None:
        app = await AppProcess.start("--data", str(data))
        # plain uvicorn picks websockets' sans-I/O implementation when websockets is installed
        assert (app.info["server"], app.info["ws"]) == ("uvicorn", "websockets_sansio_impl")
        url = f"ws://127.0.0.1:{app.port}/sync/room"
        js = await NodeClient.start("js1")
        py = create_mergeable_store()
        ws = await connect(url)
        sync = create_ws_synchronizer(py, ws, 0.5)
        try:
            await js.connect(url)
            await js.ops(*OPS)
            await sync.start_sync()
            py.set_cell("py", "r", "c", "from python")
            await js.ops(["setValue", "js", "from node"])
            await eventually(lambda: py.get_value("js") == "from node", 20)
            want = snapshot(py)
            assert want["tables"]["t1"]["r1"]["s"] == "héllo 😀"
            got = await js.wait(want["tables"], want["values"])
            assert got["ok"], got
            assert got["hashes"] == want["hashes"]
            # the host app's own routes are served beside the mount
            body = await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{app.port}/hello", timeout=10)
                    .read()
                    .decode()
                )
            )
            assert json.loads(body) == {"hello": "world"}
            # SIGTERM: uvicorn closes the open WebSockets itself (1012, "service restart")
            # before the lifespan's shutdown saves the rooms
            assert await app.stop() in (0, -signal.SIGTERM)
            assert await close_code(ws) == 1012
            assert (await js.get())["closed"][0] == 1012
        finally:
            await js.stop()
            await sync.destroy()
            await app.stop()
        assert (data / "room.json").exists()
        stored = await loaded(data / "room.json")
        assert snapshot(stored) == want
        # the app starts again on the same folder; new clients of either kind get everything
        app = await AppProcess.start("--data", str(data))
        url = f"ws://127.0.0.1:{app.port}/sync/room"
        js2 = await NodeClient.start("js2")
        later = create_mergeable_store()
        sync2 = create_ws_synchronizer(later, url, 0.5)
        try:
            await js2.connect(url)
            got = await js2.wait(want["tables"], want["values"])
            assert got["ok"], got
            assert got["hashes"] == want["hashes"]
            await sync2.start_sync()
            await eventually(holds(later, want), 20)
        finally:
            await js2.stop()
            await sync2.destroy()
            await app.stop()

    run(scenario(), 120)


# ------------------------------------------------------------------- shutdown: 1001 path


def test_aclose_saves_every_room_and_closes_open_clients_with_1001(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app, sync = build_app(data)

    async def scenario() -> None:
        async with served(app) as port:
            url = f"ws://127.0.0.1:{port}/sync"
            store = create_mergeable_store()
            ws = await connect(f"{url}/doc")
            synchronizer = create_ws_synchronizer(store, ws, 0.5)
            await synchronizer.start_sync()
            store.set_cell("t", "r", "c", "kept")
            await until_room_holds(f"{url}/doc", store, 20)
            other = await connect(f"{url}/other")
            await eventually(lambda: sorted(sync.server.get_path_ids()) == ["doc", "other"])
            try:
                await sync.aclose()
                assert await close_code(ws) == 1001
                assert await close_code(other) == 1001
                assert sync.server.get_stats()["clients"] == 0
                # while it is shut down, upgrades are refused
                assert await refused_status(f"{url}/doc") == 503
            finally:
                await synchronizer.destroy()
        # the lifespan's own shutdown (aclose again) is harmless
        assert snapshot(await loaded(data / "doc.json"))["tables"] == {"t": {"r": {"c": "kept"}}}

    run(scenario())


def test_served_alone_the_app_answers_its_own_lifespan(tmp_path: Path) -> None:
    """Not mounted: uvicorn gives the app the lifespan events itself; the rooms are saved."""
    data = tmp_path / "data"
    _app, sync = build_app(data)

    async def scenario() -> None:
        async with served(sync, lifespan="on") as port:
            url = f"ws://127.0.0.1:{port}/doc"
            store = create_mergeable_store()
            ws = await connect(url)
            synchronizer = create_ws_synchronizer(store, ws, 0.5)
            try:
                await synchronizer.start_sync()
                store.set_value("v", "saved on shutdown")
                await until_room_holds(url, store, 20)
                closed = asyncio.ensure_future(close_code(ws, 30))
            finally:
                await asyncio.sleep(0)
        try:
            assert await closed == 1012  # (uvicorn's own close, before the lifespan's)
        finally:
            await synchronizer.destroy()
        assert sync.server.get_stats()["clients"] == 0
        assert (await loaded(data / "doc.json")).get_values() == {"v": "saved on shutdown"}

    run(scenario())


# -------------------------------------------------------------------- shared socket (npm)


@pytest.mark.interop
def test_tinybase_shared_socket_through_the_asgi_app(tmp_path: Path) -> None:
    """TinyBase's synchronizers sharing one socket (subprotocol ``tinybase``) sync each channel
    with its room's server-side store, loaded from and saved to the room's file."""
    npm_env.require_node()
    data = tmp_path / "data"
    app, sync = build_app(data)

    async def scenario() -> None:
        async with served(app) as port:
            base = f"ws://127.0.0.1:{port}/sync/shop"
            channels = ("pets", "staff")
            # each channel's room gets data from a Python client that leaves again: the room's
            # store saves it and stops
            for channel in channels:
                seed = create_mergeable_store()
                seeder = create_ws_synchronizer(seed, f"{base}/{channel}", 0.5)
                try:
                    await seeder.start_sync()
                    seed.set_cell("py", channel, "n", 10)
                    await until_room_holds(f"{base}/{channel}", seed, 20)
                finally:
                    await seeder.destroy()
            await eventually(lambda: sync.server.get_stats()["rooms"] == 0, 20)
            script = npm_env.INTEROP_DIR / "tb_shared.mjs"
            result = await asyncio.to_thread(
                npm_env.run_node_json, script, base, *channels, timeout=60
            )
            assert result["protocol"] == "tinybase"
            assert result["errors"] == []
            for index, channel in enumerate(channels, start=1):
                got = result["stores"][channel]
                assert got["tables"] == {"py": {channel: {"n": 10}}, "js": {channel: {"n": index}}}
                # what the channel wrote is in its room: a later legacy client gets it all
                later = create_mergeable_store()
                reader = create_ws_synchronizer(later, f"{base}/{channel}", 0.5)
                try:
                    await reader.start_sync()
                    await eventually(lambda: later.get_tables() == got["tables"], 20)  # noqa: B023
                    assert list(later.get_mergeable_content_hashes()) == got["hashes"]
                finally:
                    await reader.destroy()
        assert sorted(p.name for p in data.iterdir() if p.suffix == ".json") == [
            "shop%2Fpets.json",
            "shop%2Fstaff.json",
        ]

    run(scenario())


@pytest.mark.parametrize(
    ("server", "options"),
    [("uvicorn", {"ws": "websockets-sansio"}), ("uvicorn", {"ws": "wsproto"}), ("hypercorn", {})],
    ids=["uvicorn-websockets", "uvicorn-wsproto", "hypercorn"],
)
def test_shared_socket_under_each_websocket_implementation(
    server: str, options: dict[str, Any]
) -> None:
    """The subprotocol is negotiated whether the ASGI server passes the offer in the headers
    or only in the scope's ``subprotocols`` (uvicorn's wsproto implementation), and channel
    frames relay to and from a legacy client of the channel's room."""
    sync = create_asgi_app()

    async def scenario() -> None:
        async with served(mounted(sync), server, **options) as port:
            url = f"ws://127.0.0.1:{port}/sync"
            shared = await connect(f"{url}/shop", subprotocols=["tinybase"])  # type: ignore[list-item]
            assert shared.subprotocol == "tinybase"
            await shared.send(HELLO)
            assert await asyncio.wait_for(shared.recv(), 10) == HELLO
            subscribe = 'S\n["s1",-1,[1,"pets"]]'
            await shared.send(subscribe)
            assert await asyncio.wait_for(shared.recv(), 10) == subscribe
            [socket_id] = sync.server.get_client_ids("shop/pets")
            legacy = await connect(f"{url}/shop/pets")
            await eventually(lambda: len(sync.server.get_client_ids("shop/pets")) == 2)
            await shared.send('M\npets\n\n[null,1,""]')
            assert await asyncio.wait_for(legacy.recv(), 10) == f'{socket_id}\n[null,1,""]'
            await legacy.send("\n[null,2,[1,2]]")
            relayed = str(await asyncio.wait_for(shared.recv(), 10))
            assert relayed.startswith("M\npets\n") and relayed.endswith("\n[null,2,[1,2]]")
            await shared.close()
            await legacy.close()
            await eventually(lambda: sync.server.get_path_ids() == [])

    run(scenario())


# ---------------------------------------------------------------------------------- auth


def test_authenticate_gets_the_asgi_scope_and_the_cookie() -> None:
    seen: list[tuple[str, AsgiRequest]] = []

    def authenticate(path_id: str, request: Any) -> bool:
        seen.append((path_id, request))
        return cookie_of(request) == "good"

    sync = create_asgi_app(authenticate=authenticate)

    async def without_extensions(scope: Any, receive: Any, send: Any) -> None:
        # an ASGI server without the websocket.http.response extension: refused with 1008
        await sync({**scope, "extensions": {}}, receive, send)

    app = mounted(sync)
    app.mount("/plain", without_extensions)

    async def scenario() -> None:
        async with served(app) as port:
            for prefix in ("sync", "plain"):
                url = f"ws://127.0.0.1:{port}/{prefix}/room?x=1"
                assert await refused_status(url) == 403
                bad = {"Cookie": "session=bad"}
                assert await refused_status(url, additional_headers=bad) == 403
            assert sync.server.get_stats()["rejected"] == 4
            path_id, request = seen[0]
            assert path_id == "room"
            assert isinstance(request, AsgiRequest)
            assert request.path == "/room?x=1"
            assert request.scope["type"] == "websocket"
            assert request.scope["root_path"] == "/sync"
            assert request.scope["query_string"] == b"x=1"
            # with the right cookie, two clients sync
            headers = {"Cookie": "theme=dark; session=good"}
            a, b = create_mergeable_store(), create_mergeable_store()
            sa = create_ws_synchronizer(a, f"ws://127.0.0.1:{port}/sync/room", 0.5, headers=headers)
            sb = create_ws_synchronizer(b, f"ws://127.0.0.1:{port}/sync/room", 0.5, headers=headers)
            try:
                await sa.start_sync()
                await sb.start_sync()
                a.set_cell("t", "r", "c", 1)
                b.set_value("v", "b")
                await eventually(lambda: b.get_cell("t", "r", "c") == 1 and a.get_value("v") == "b")
            finally:
                await sa.destroy()
                await sb.destroy()
            assert seen[-1][1].headers["Cookie"] == headers["Cookie"]
            assert sync.server.get_stats()["rejected"] == 4

    run(scenario())


def test_token_as_on_the_standalone_server() -> None:
    sync = create_asgi_app(token="s3cret")

    async def scenario() -> None:
        async with served(mounted(sync)) as port:
            url = f"ws://127.0.0.1:{port}/sync/room"
            assert await refused_status(url) == 401
            assert await refused_status(f"{url}?token=wrong") == 403
            wrong = {"Authorization": "Bearer wrong"}
            assert await refused_status(url, additional_headers=wrong) == 403
            good = {"Authorization": "Bearer s3cret"}
            async with (
                connect(url, additional_headers=good) as one,
                connect(f"{url}?token=s3cret") as two,
            ):
                await eventually(lambda: len(sync.server.get_client_ids("room")) == 2)
                await one.send('\n[null,1,""]')
                frame = await asyncio.wait_for(two.recv(), 10)
                assert str(frame).endswith('\n[null,1,""]')
            assert sync.server.get_stats()["rejected"] == 3

    run(scenario())


# ------------------------------------------------------------------------------ hypercorn


def test_hypercorn_serves_the_app_to_two_clients(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app, sync = build_app(data)

    async def scenario() -> None:
        async with served(app, "hypercorn", graceful_timeout=1.0) as port:
            url = f"ws://127.0.0.1:{port}/sync/room"
            a, b = create_mergeable_store(), create_mergeable_store()
            sa = create_ws_synchronizer(a, url, 0.5)
            sb = create_ws_synchronizer(b, url, 0.5)
            try:
                await sa.start_sync()
                await sb.start_sync()
                a.set_cell("t", "r", "a", "from a")
                b.set_cell("t", "r", "b", "from b")
                both = {"t": {"r": {"a": "from a", "b": "from b"}}}
                await eventually(lambda: a.get_tables() == b.get_tables() == both)
                assert sync.server.get_stats()["clients"] == 2
                # refusals are HTTP statuses under hypercorn too
                assert await refused_status(f"ws://127.0.0.1:{port}/sync/..") == 400
                want = snapshot(a)
                await until_room_holds(url, a, 20)
            finally:
                await sa.destroy()
                await sb.destroy()
            # hypercorn cancels the connections still open when its graceful timeout ends
            # (before the lifespan's shutdown): the app closes them with 1001, not 1011
            still_open = await connect(url)
            await eventually(lambda: sync.server.get_stats()["clients"] == 1)
            closed = asyncio.ensure_future(close_code(still_open, 30))
        assert await closed == 1001
        assert still_open.close_reason == "server shutting down"
        assert snapshot(await loaded(data / "room.json")) == want

    run(scenario())


# ----------------------------------------------------------------------- bad input, limits


def test_garbage_and_oversized_frames_close_only_their_connection() -> None:
    errors: list[BaseException] = []
    sync = create_asgi_app(on_ignored_error=errors.append)

    async def scenario() -> None:
        # (uvicorn's own frame limit raised so that the app's limits are the ones met)
        async with served(mounted(sync), ws_max_size=4 * MAX_FRAME_SIZE) as port:
            url = f"ws://127.0.0.1:{port}/sync/room"
            one, two = await connect(url), await connect(url, max_size=None)
            await eventually(lambda: len(sync.server.get_client_ids("room")) == 2)
            bad = await connect(url)
            await bad.send("garbage without a newline")
            assert await close_code(bad) == 1007
            assert bad.close_reason == "tinybase:14"
            assert sync.server.get_stats()["invalid"] == 1
            # a payload over TinyBase's 16 MiB: the decoder's 1013
            big = await connect(url, max_size=None)
            await big.send("\n" + "x" * (MAX_PAYLOAD_SIZE + 10))
            assert await close_code(big) == 1013
            assert sync.server.get_stats()["overflows"] == 1
            # a frame over the app's frame limit: refused unread with 1009
            huge = await connect(url, max_size=None)
            await huge.send("\n" + "x" * (MAX_FRAME_SIZE + 10))
            assert await close_code(huge) == 1009
            # the others were not touched
            assert len(sync.server.get_client_ids("room")) == 2
            await one.send('\n[null,1,""]')
            frame = await asyncio.wait_for(two.recv(), 10)
            assert str(frame).endswith('\n[null,1,""]')
            # a shared socket's garbage closes it with 1007 as well
            shared = await connect(f"ws://127.0.0.1:{port}/sync/shop", subprotocols=["tinybase"])  # type: ignore[list-item]
            assert shared.subprotocol == "tinybase"
            await shared.send(HELLO)
            assert await asyncio.wait_for(shared.recv(), 10) == HELLO
            await shared.send("garbage")
            assert await close_code(shared) == 1007
            assert sync.server.get_stats()["invalid"] == 2
            await one.close()
            await two.close()
        assert len(errors) >= 3

    run(scenario())


def test_uvicorn_frame_limit_refuses_oversized_frames_first() -> None:
    sync = create_asgi_app()

    async def scenario() -> None:
        async with served(mounted(sync)) as port:  # (uvicorn's default ws_max_size, 16 MiB)
            url = f"ws://127.0.0.1:{port}/sync/room"
            ws = await connect(url, max_size=None)
            await ws.send("\n" + "x" * (MAX_PAYLOAD_SIZE + 10))
            assert await close_code(ws) == 1009

    run(scenario())


def test_max_clients_refuses_at_the_upgrade() -> None:
    sync = create_asgi_app(max_clients=2)

    async def scenario() -> None:
        async with served(mounted(sync)) as port:
            url = f"ws://127.0.0.1:{port}/sync/room"
            one, two = await connect(url), await connect(url)
            await eventually(lambda: sync.server.get_stats()["clients"] == 2)
            assert await refused_status(url) == 503
            assert await refused_status(f"ws://127.0.0.1:{port}/sync/other") == 503
            await one.close()
            await eventually(lambda: sync.server.get_stats()["clients"] == 1)
            three = await connect(url)
            await eventually(lambda: sync.server.get_stats()["clients"] == 2)
            await two.close()
            await three.close()
            assert sync.server.get_stats()["rejected"] == 2

    run(scenario())


def test_a_slow_client_is_closed_with_overflow_others_unaffected() -> None:
    """Back-pressure through the ASGI server: uvicorn's send waits while the socket cannot
    take more, so the core's per-client queue fills and closes only the stalled client."""
    sync = create_asgi_app(max_queue_bytes=256 * 1024)

    async def scenario() -> None:
        async with served(mounted(sync)) as port:
            url = f"ws://127.0.0.1:{port}/sync/room"
            # (no permessage-deflate, which uvicorn would negotiate: the padding must not shrink)
            fast = await connect(url, compression=None)
            slow = await connect(url, max_queue=1, compression=None)
            reader = await connect(url, max_queue=None, compression=None)
            await eventually(lambda: len(sync.server.get_client_ids("room")) == 3)
            fast_id = next(
                client_id
                for client_id in sync.server.get_client_ids("room")
                if fast.request is not None
                and client_id == fast.request.headers["Sec-WebSocket-Key"]
            )
            slow.transport.pause_reading()  # a client that stops reading
            frame = "\n" + json.dumps([None, 2, [1, 2]]) + " " * 20_000
            sent = 0
            # in lock-step with a healthy reader, so only the stalled client falls behind
            while sync.server.get_stats()["overflows"] == 0 and sent < 20_000:
                await fast.send(frame)
                sent += 1
                assert await asyncio.wait_for(reader.recv(), 10) == fast_id + frame
            assert sync.server.get_stats()["overflows"] == 1
            slow.transport.resume_reading()
            with pytest.raises(ConnectionClosed):  # (reads what was queued before the close)
                while True:
                    await asyncio.wait_for(slow.recv(), 20)
            assert slow.close_code == 1013
            assert slow.close_reason == "tinybase:15:socket"
            assert len(sync.server.get_client_ids("room")) == 2
            assert fast_id in sync.server.get_client_ids("room")
            await fast.send('\n["z",1,""]')
            assert await asyncio.wait_for(reader.recv(), 10) == fast_id + '\n["z",1,""]'
            await fast.close()
            await reader.close()

    run(scenario())


def test_room_limits_per_address_use_the_asgi_client_address() -> None:
    """``max_rooms_per_address`` counts rooms by the ASGI scope's client host: a legacy client
    of one room too many gets 503, a shared socket's channel 1013 ``tinybase:15:rooms``."""
    sync = create_asgi_app(max_rooms_per_address=2)

    async def scenario() -> None:
        async with served(mounted(sync)) as port:
            url = f"ws://127.0.0.1:{port}/sync"
            held = [await connect(f"{url}/{room}") for room in ("a", "b")]
            assert await refused_status(f"{url}/c") == 503
            again = await connect(f"{url}/b")  # (a room this address is in already)
            shared = await connect(f"{url}/", subprotocols=["tinybase"])  # type: ignore[list-item]
            await shared.send(HELLO)
            assert await asyncio.wait_for(shared.recv(), 10) == HELLO
            join_a = 'S\n["j1",-1,[1,"a"]]'
            await shared.send(join_a)
            assert await asyncio.wait_for(shared.recv(), 10) == join_a
            await shared.send('S\n["j2",-1,[1,"z"]]')  # a third room for 127.0.0.1
            assert await close_code(shared) == 1013
            assert shared.close_reason == "tinybase:15:rooms"
            assert sync.server.get_stats()["rooms_refused"] == 2
            for ws in [*held, again]:
                await ws.close()
            await eventually(lambda: sync.server.get_stats()["rooms"] == 0)
            later = await connect(f"{url}/c")  # (the address left its rooms)
            await later.close()

    run(scenario())
