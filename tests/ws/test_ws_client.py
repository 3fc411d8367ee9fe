"""Our WebSocket synchronizer: syncing through our server, reconnecting, resyncing, and
reacting to bad frames exactly as TinyBase's client does (close codes from the vectors)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from localsync import create_mergeable_store
from localsync.ws.client import WsSynchronizer, create_ws_synchronizer
from localsync.ws.server import create_ws_server
from tests.helpers import VECTORS, WIRE_CASES, eventually, run


def same(*stores: Any) -> Callable[[], bool]:
    def check() -> bool:
        first = stores[0]
        return all(
            s.get_tables() == first.get_tables()
            and s.get_values() == first.get_values()
            and s.get_mergeable_content_hashes() == first.get_mergeable_content_hashes()
            for s in stores[1:]
        )

    return check


def fill(store: Any) -> None:
    with store.transaction():
        store.set_cell("t1", "r1", "s", 'héllo 😀 \n"q"')
        store.set_cell("t1", "r1", "n", 9007199254740991)
        store.set_cell("t1", "r1", "f", -1.5e-7)
        store.set_cell("t1", "r2", "b", True)
        store.set_cell("t1", "r2", "z", 0)
        store.set_cell("t2", "r", "obj", {"2": None, "b": [1, "é", {"x": 1.5}]})
        store.set_cell("t2", "r", "arr", [1, 2, [3]])
        store.set_value("v1", "x" * 100)
        store.set_value("v2", 1e300)
        store.set_value("v3", False)


def test_python_clients_sync_through_our_server() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a, b = create_mergeable_store(), create_mergeable_store()
            fill(a)
            sa = await create_ws_synchronizer(a, f"{server.url}/room", 0.5, fragment_size=2048)
            sb = create_ws_synchronizer(b, f"{server.url}/room", 0.5, fragment_size=2048)
            await sa.start_sync()
            await sb.start_sync()
            await eventually(same(a, b))
            assert b.get_cell("t2", "r", "obj") == {"2": None, "b": [1, "é", {"x": 1.5}]}
            b.set_cell("big", "r", "c", "ü" * 100_000)  # many fragments
            b.del_cell("t1", "r2", "z")
            b.del_value("v3")
            await eventually(same(a, b))
            assert a.get_cell("big", "r", "c") == "ü" * 100_000
            assert not a.has_value("v3")
            assert sa.get_synchronizer_stats()["receives"] > 0
            await sa.destroy()
            await sb.destroy()

    run(scenario())


def test_reconnects_and_resyncs_after_drop_and_server_restart() -> None:
    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0)
        port = server.port
        url = f"ws://127.0.0.1:{port}/room"
        a, b = create_mergeable_store(), create_mergeable_store()
        sa = create_ws_synchronizer(a, url, 0.3, min_backoff=0.05, max_backoff=0.2)
        sb = create_ws_synchronizer(b, url, 0.3, min_backoff=0.05, max_backoff=0.2)
        await sa.start_sync()
        await sb.start_sync()
        a.set_cell("t", "r", "before", 1)
        await eventually(same(a, b))

        # the server drops a's connection mid-sync: a reconnects by itself and catches up
        (ws_a,) = [
            c.ws
            for p in server._paths.values()
            for c in p.clients.values()
            if c.ws.request is not None
            and c.ws.request.headers["Sec-WebSocket-Key"]
            == sa.get_web_socket().request.headers["Sec-WebSocket-Key"]  # type: ignore[union-attr]
        ]
        b.set_cell("t", "r", "during", 2)
        await ws_a.close(1001, "going away")
        await eventually(lambda: sa.get_connection_stats()["connects"] == 2)
        await eventually(same(a, b))

        # the whole server goes away; both sides write while apart; it comes back
        await server.destroy()
        await eventually(lambda: not sa.is_connected() and not sb.is_connected())
        a.set_cell("t", "r", "apart_a", "a")
        b.set_cell("t", "r", "apart_b", "b")
        b.set_value("v", [1, {"k": "é"}])
        server = await create_ws_server("127.0.0.1", port)
        await eventually(lambda: sa.is_connected() and sb.is_connected())
        await eventually(same(a, b))
        assert a.get_row("t", "r") == {"before": 1, "during": 2, "apart_a": "a", "apart_b": "b"}
        assert a.get_value("v") == [1, {"k": "é"}]
        assert sa.get_connection_stats()["connects"] >= 3
        await sa.destroy()
        await sb.destroy()
        await server.destroy()

    run(scenario())


@pytest.mark.parametrize("case", WIRE_CASES, ids=[c["label"] for c in WIRE_CASES])
def test_client_reacts_to_wire_vectors(case: dict[str, Any]) -> None:
    """Frames from the vectors, sent by a raw server to our client: invalid ones close the
    socket with TinyBase's code and are reported; valid ones reach the engine."""

    async def scenario() -> None:
        closed: asyncio.Future[tuple[int | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )

        async def handler(ws: ServerConnection) -> None:
            for frame in case["frames"]:
                await ws.send(frame)
            try:
                async for _ in ws:
                    pass
            finally:
                if not closed.done():
                    closed.set_result((ws.close_code, ws.close_reason))

        errors: list[BaseException] = []
        received: list[tuple[Any, ...]] = []
        async with serve(handler, "127.0.0.1", 0) as raw:
            port = next(iter(raw.sockets)).getsockname()[1]
            store = create_mergeable_store()
            sync = create_ws_synchronizer(
                store,
                f"ws://127.0.0.1:{port}/room",
                0.2,
                on_receive=lambda *m: received.append(m),
                on_ignored_error=errors.append,
                reconnect=False,
            )
            assert await sync.wait_connected(5)
            if case["valid"]:
                await eventually(lambda: len(received) == 1, 5)
                assert received[0][0] == case["frames"][0].split("\n", 1)[0]
                assert sync.get_connection_stats()["invalid_frames"] == 0
            else:
                code, reason = await asyncio.wait_for(closed, 5)
                assert [code, reason] == case["socket_closed_with"]
                assert [str(e) for e in errors if str(e).startswith("tinybase:1")] == [
                    case["socket_closed_with"][1]
                ]
                assert received == []
            await sync.destroy()

    run(scenario(), timeout=30)


def test_client_frames_match_tinybase_client_frames() -> None:
    """What our client puts on the socket has the shape of TinyBase's client frames (vector
    ``client_frames_to_server``): a GetContentHashes request, then ContentHashes, then a
    ContentDiff with object cells encoded and deletions as U+FFFC."""
    vector = next(
        case
        for case in json.loads((VECTORS / "protocol_traces.json").read_text("utf-8"))
        if case.get("name") == "client_frames_to_server"
    )
    ids: dict[str, str] = {}

    def normalise(frame: str) -> str:
        def name(match: re.Match[str]) -> str:
            txn = ids.setdefault(match.group(1), f"T{len(ids) + 1}")
            return f'"{txn}' + (".R1" if match.group(2) else "") + '"'

        return re.sub(r'"([-0-9A-Za-z_]{11})(\.[-0-9A-Za-z_]{4})?"', name, frame)

    hashes: list[int] = []

    async def scenario() -> None:
        frames: list[str] = []

        async def handler(ws: ServerConnection) -> None:
            async for frame in ws:
                frames.append(str(frame))

        async with serve(handler, "127.0.0.1", 0) as raw:
            port = next(iter(raw.sockets)).getsockname()[1]
            store = create_mergeable_store()
            store.set_cell("t1", "r1", "c1", "gone")
            sync = create_ws_synchronizer(store, f"ws://127.0.0.1:{port}/room", 0.1)
            await sync.start_sync()
            hashes.extend(store.get_mergeable_content_hashes())
            with store.transaction():
                store.del_cell("t1", "r1", "c1")
                store.set_value("v2", {"2": None, "o": [1, "é"]})
            await eventually(lambda: len(frames) == 3, 5)
            await sync.destroy()
        got = [normalise(frame) for frame in frames]
        want = vector["frames"]
        assert got[0] == want[0]
        assert got[1] == want[1].replace("3050228347,827218949", f"{hashes[0]},{hashes[1]}")
        assert got[2].startswith('\n["T3",3,[[{"t1":[{"r1":[{"c1":["\ufffc","')
        assert '"v2":["\ufffd{\\"2\\":null,\\"o\\":[1,\\"é\\"]}","' in got[2]
        assert got[2].endswith("],1]]")

    run(scenario(), timeout=30)


def test_auth_refusal_is_final_and_token_header_works() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, token="t0k") as server:
            errors: list[BaseException] = []
            with pytest.raises(ConnectionError):
                await create_ws_synchronizer(
                    create_mergeable_store(),
                    f"{server.url}/room",
                    on_ignored_error=errors.append,
                    open_timeout=5,
                )
            assert any("401" in str(e) for e in errors)  # no token: refused, not retried
            a, b = create_mergeable_store(), create_mergeable_store()
            sa: WsSynchronizer = await create_ws_synchronizer(
                a, f"{server.url}/room", headers={"Authorization": "Bearer t0k"}
            )
            sb = await create_ws_synchronizer(b, f"{server.url}/room?token=t0k")
            await sa.start_sync()
            await sb.start_sync()
            a.set_value("hello", "world")
            await eventually(same(a, b))
            await sa.destroy()
            await sb.destroy()

    run(scenario())


def test_blocking_facade_with_ws() -> None:
    from localsync.sync.blocking import BackgroundLoop, blocking

    with BackgroundLoop() as loop:
        server = loop.run(create_ws_server("127.0.0.1", 0), timeout=10)
        try:
            a, b = create_mergeable_store(), create_mergeable_store()
            url = f"{server.url}/room"
            with (
                blocking(create_ws_synchronizer, a, url, loop=loop, timeout=20),
                blocking(create_ws_synchronizer, b, url, loop=loop, timeout=20),
            ):
                a.set_cell("t", "r", "c", "from a plain thread")
                loop.run(eventually(same(a, b)), timeout=20)
                assert b.get_cell("t", "r", "c") == "from a plain thread"
        finally:
            loop.run(server.destroy(), timeout=20)


def test_open_connection_is_used_as_is() -> None:
    from websockets.asyncio.client import connect

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a, b = create_mergeable_store(), create_mergeable_store()
            ws = await connect(f"{server.url}/room", compression=None)
            sa = await create_ws_synchronizer(a, ws, 0.3)
            assert sa.get_web_socket() is ws
            sb = await create_ws_synchronizer(b, f"{server.url}/room", 0.3)
            await sa.start_sync()
            await sb.start_sync()
            a.set_cell("t", "r", "c", 1)
            await eventually(same(a, b))
            await sa.destroy()
            await eventually(lambda: ws.close_code is not None)
            await sb.destroy()

    run(scenario())


def test_failing_room_store_closes_its_clients_only() -> None:
    def create_persister(path_id: str) -> Any:
        if path_id == "broken":
            raise OSError("disk on fire")
        return None  # relay only for the others

    async def scenario() -> None:
        errors: list[BaseException] = []
        async with await create_ws_server(
            "127.0.0.1", 0, create_persister, on_ignored_error=errors.append
        ) as server:
            from websockets.asyncio.client import connect
            from websockets.exceptions import ConnectionClosed

            broken = await connect(f"{server.url}/broken")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(broken.recv(), 5)
            assert broken.close_code == 1011
            assert any("disk on fire" in str(e) for e in errors)
            a, b = create_mergeable_store(), create_mergeable_store()
            sa = await create_ws_synchronizer(a, f"{server.url}/fine", 0.3)
            sb = await create_ws_synchronizer(b, f"{server.url}/fine", 0.3)
            await sa.start_sync()
            await sb.start_sync()
            a.set_value("still", "working")
            await eventually(same(a, b))
            await sa.destroy()
            await sb.destroy()

    run(scenario())


def abort_connection(server: Any, sync: WsSynchronizer) -> None:
    """Kill ``sync``'s TCP connection from the server's side, without a close handshake."""
    key = sync.get_web_socket().request.headers["Sec-WebSocket-Key"]  # type: ignore[union-attr]
    (client,) = [c for p in server._paths.values() for c in p.clients.values() if c.id == key]
    client.ws.transport.abort()


def test_connection_aborted_during_a_large_transfer_heals() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a, b = create_mergeable_store(), create_mergeable_store()
            url = f"{server.url}/room"
            sa = await create_ws_synchronizer(a, url, 0.5, min_backoff=0.05, max_backoff=0.2)
            sb = await create_ws_synchronizer(b, url, 0.5, min_backoff=0.05, max_backoff=0.2)
            await sa.start_sync()
            await sb.start_sync()
            with a.transaction():
                for r in range(2000):
                    for c in range(10):
                        a.set_cell("t", f"r{r}", f"c{c}", r * 10 + c)
            # while that ContentDiff is on its way, b's TCP connection dies without a close
            abort_connection(server, sb)
            await eventually(lambda: sb.get_connection_stats()["connects"] >= 2, 10)
            await eventually(same(a, b), 20)
            assert b.get_cell("t", "r1999", "c9") == 19999
            await sa.destroy()
            await sb.destroy()

    run(scenario())


def test_a_resync_that_fails_is_tried_again() -> None:
    """After a reconnect the client pulls what it missed; when that pull fails (here its
    requests time out, as a peer slower than the time-out on a loaded machine makes them),
    it is tried again with back-off instead of leaving the store behind until the next
    reconnect (WebSocket clients have no periodic anti-entropy by default)."""

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a, b = create_mergeable_store(), create_mergeable_store()
            url = f"{server.url}/room"
            errors: list[BaseException] = []
            sa = await create_ws_synchronizer(a, url, 2.0)
            sb = await create_ws_synchronizer(
                b, url, 2.0, on_ignored_error=errors.append, min_backoff=0.6, max_backoff=0.6
            )
            await sa.start_sync()
            await sb.start_sync()
            a.set_cell("t", "before", "c", 1)
            await eventually(same(a, b))
            abort_connection(server, sb)
            await eventually(lambda: not sb.is_connected(), 5)
            for r in range(50):  # (b is away: it misses these)
                a.set_cell("t", f"r{r}", "c", r)
            sb.engine.request_timeout_seconds = 1e-6  # its resync's requests all time out
            await eventually(lambda: sb.get_connection_stats()["connects"] >= 2, 10)
            await eventually(lambda: any(":3" in str(e) for e in errors), 5)
            assert b.get_cell("t", "r49", "c") is None
            sb.engine.request_timeout_seconds = 2.0
            await eventually(same(a, b), 10)
            assert sb.get_connection_stats()["connects"] == 2  # (healed without reconnecting)
            assert sb.resync_retries >= 1
            await sa.destroy()
            await sb.destroy()

    run(scenario())


def test_a_first_pull_that_fails_is_tried_again() -> None:
    """start_sync's pull times out (a slow peer) yet the peer answers late: the client tries
    again and gets the content; a client alone in its room does not keep asking."""

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a, b, lone = (create_mergeable_store() for _ in range(3))
            errors: list[BaseException] = []
            sa = await create_ws_synchronizer(a, f"{server.url}/room", 2.0)
            await sa.start_sync()
            for r in range(50):
                a.set_cell("t", f"r{r}", "c", r)
            sb = await create_ws_synchronizer(
                b,
                f"{server.url}/room",
                2.0,
                on_ignored_error=errors.append,
                min_backoff=0.6,
                max_backoff=0.6,
            )
            sb.engine.request_timeout_seconds = 1e-6  # its first pull times out
            await sb.start_sync()
            assert any(":3" in str(e) for e in errors)
            # (meanwhile a, hearing b's hashes, pulls from b and announces its own, which
            # makes b pull again, and time out again: only the retry is left)
            await asyncio.sleep(0.3)
            assert b.get_cell("t", "r49", "c") is None
            sb.engine.request_timeout_seconds = 2.0
            await eventually(same(a, b), 10)
            await eventually(lambda: sb.resync_retries >= 1, 5)
            sl = await create_ws_synchronizer(
                lone, f"{server.url}/alone", 0.05, min_backoff=0.05, max_backoff=0.05
            )
            await sl.start_sync()
            await asyncio.sleep(0.5)
            assert sl.resync_retries == 0 and sl.engine.receives == 0
            for s in (sa, sb, sl):
                await s.destroy()

    run(scenario())
