"""Our WebSocket server as a relay, driven by real TinyBase clients and by raw frames.

No store is involved: the server must relay exactly as TinyBase's ``createWsServer`` does
(vectors from TinyBase), refuse bad paths and credentials at the upgrade, close only the
connection that misbehaves, and never buffer without bound for a slow client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from localsync.ws.server import WsServer, create_ws_server, create_ws_server_simple
from tests import npm_env
from tests.helpers import VECTORS, WIRE_CASES, run
from tests.interop.node_peers import NodeClient

WS_CASES = {
    case["name"]: case
    for case in json.loads((VECTORS / "protocol_traces.json").read_text("utf-8"))
    if case.get("type") == "websocket"
}


async def _raw(url: str, **kwargs: Any) -> tuple[ClientConnection, str]:
    ws = await connect(url, compression=None, open_timeout=5, **kwargs)
    assert ws.request is not None
    return ws, ws.request.headers["Sec-WebSocket-Key"]


async def _recv(ws: ClientConnection, timeout: float = 5) -> str:
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, str)
    return data


async def _closed_with(ws: ClientConnection, timeout: float = 5) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


async def _eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


# ----------------------------------------------------------------------------- vectors


def test_server_relay_vector() -> None:
    case = WS_CASES["server_relay"]

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            x, x_id = await _raw(f"{server.url}/room")
            y, y_id = await _raw(f"{server.url}/room")
            await _eventually(lambda: len(server.get_client_ids("room")) == 2)
            for frame in case["sent_by_x"]:
                await x.send(frame.replace("<clientY>", y_id))
            got = [await _recv(y) for _ in case["received_by_y"]]
            expected = [f.replace("<clientX>", x_id) for f in case["received_by_y"]]
            assert got == expected
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(x.recv(), 0.2)
            await x.close()
            await y.close()

    run(scenario())


@pytest.mark.parametrize("case", WIRE_CASES, ids=[c["label"] for c in WIRE_CASES])
def test_wire_vectors_against_server(case: dict[str, Any]) -> None:
    """Invalid frames close that socket with TinyBase's code; a bystander is unaffected."""

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            bad, bad_id = await _raw(f"{server.url}/room")
            good, _ = await _raw(f"{server.url}/room")
            for frame in case["frames"]:
                # the vector's frames carry a sender id; a client's first field is the recipient
                await bad.send(frame.replace("peer\n", "\n", 1))
            if case["valid"]:
                for frame in case["frames"]:  # fragments are relayed as they came
                    assert await _recv(good) == bad_id + "\n" + frame.split("\n", 1)[1]
                await bad.send('\n[null,1,""]')
                assert await _recv(good) == bad_id + '\n[null,1,""]'
            else:
                assert list(await _closed_with(bad)) == case["socket_closed_with"]
            # the other client and the server carry on
            other, other_id = await _raw(f"{server.url}/room")
            await other.send('\n["x",1,""]')
            assert await _recv(good) == other_id + '\n["x",1,""]'
            stats = server.get_stats()
            assert stats["invalid"] + stats["overflows"] == (0 if case["valid"] else 1)
            for ws in (bad, good, other):
                await ws.close()

    run(scenario())


def test_oversized_frame_closes_only_that_client() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            big, _ = await _raw(f"{server.url}/room", max_size=None)
            good, _ = await _raw(f"{server.url}/room")
            other, other_id = await _raw(f"{server.url}/room")
            await big.send("\n" + json.dumps([None, 3, "x" * (16 * 1024 * 1024)]))
            assert await _closed_with(big, timeout=20) == (1013, "tinybase:15:socket")
            await other.send('\n["y",1,""]')
            assert await _recv(good) == other_id + '\n["y",1,""]'
            assert server.get_stats()["overflows"] == 1
            await good.close()
            await other.close()

    run(scenario())


# ----------------------------------------------------------------------- server basics


def test_paths_clients_listeners_and_stats() -> None:
    async def scenario() -> None:
        server: WsServer = await create_ws_server("127.0.0.1", 0)
        events: list[tuple[Any, ...]] = []
        server.add_path_ids_listener(lambda s, p, d: events.append(("path", p, d)))
        lid = server.add_client_ids_listener("a", lambda s, p, c, d: events.append(("a", c, d)))
        server.add_client_ids_listener(None, lambda s, p, c, d: events.append(("any", p, d)))
        a1, a1_id = await _raw(f"{server.url}/a")
        b1, _ = await _raw(f"{server.url}/b")
        a2, a2_id = await _raw(f"{server.url}/a")
        await _eventually(lambda: server.get_stats()["clients"] == 3)
        assert sorted(server.get_path_ids()) == ["a", "b"]
        assert set(server.get_client_ids("a")) == {a1_id, a2_id}
        assert server.get_client_ids("nope") == []
        # rooms: a broadcast in /a reaches /a only
        await a1.send('\n[null,1,""]')
        assert await _recv(a2) == a1_id + '\n[null,1,""]'
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b1.recv(), 0.2)
        # a message to one client reaches only that client
        await b1.send(a1_id + '\n[null,1,""]')  # not in b's room: dropped
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a1.recv(), 0.2)
        server.del_listener(lid)
        await a1.close()
        await a2.close()
        await _eventually(lambda: server.get_path_ids() == ["b"])
        stats = server.get_stats()
        assert (stats["paths"], stats["clients"]) == (1, 1)
        assert stats["messages_received"] == 2 and stats["messages_sent"] == 1
        await b1.close()
        await server.destroy()
        assert ("path", "a", 1) in events and ("path", "a", -1) in events
        assert [e for e in events if e[0] == "a"] == [("a", a1_id, 1), ("a", a2_id, 1)]
        assert ("any", "b", 1) in events and ("any", "b", -1) in events

    run(scenario())


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "..", "a/..", "a//b", "%2e%2e", "x" * 129, ".hidden", "a%00b", "a\\b", ""],
)
def test_invalid_path_refused_before_the_file_system(path: str, tmp_path: Path) -> None:
    calls: list[str] = []

    def create_persister(path_id: str) -> Any:
        calls.append(path_id)
        raise AssertionError("must not be reached")

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, create_persister) as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{server.url}/{path}", open_timeout=5)
            assert info.value.response.status_code == 400
            assert server.get_stats()["rejected"] == 1
            assert server.get_path_ids() == []

    run(scenario())
    assert calls == []


def test_token_and_authenticate_hook() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def authenticate(path_id: str, request: Any) -> bool:
            seen.append(path_id)
            return path_id != "private"

        async with await create_ws_server(
            "127.0.0.1", 0, token="s3cret", authenticate=authenticate
        ) as server:
            for url, headers, status in [
                (f"{server.url}/room", None, 401),
                (f"{server.url}/room?token=nope", None, 403),
                (f"{server.url}/room", {"Authorization": "Bearer wrong"}, 403),
                (f"{server.url}/private?token=s3cret", None, 403),
            ]:
                with pytest.raises(InvalidStatus) as info:
                    await connect(url, additional_headers=headers, open_timeout=5)
                assert info.value.response.status_code == status
            ok1, id1 = await _raw(f"{server.url}/room?token=s3cret")
            ok2, _ = await _raw(
                f"{server.url}/room", additional_headers={"Authorization": "Bearer s3cret"}
            )
            await ok1.send('\n[null,1,""]')
            assert await _recv(ok2) == id1 + '\n[null,1,""]'
            assert seen == ["private", "room", "room"]
            await ok1.close()
            await ok2.close()

    run(scenario())


def test_slow_client_is_closed_with_overflow_others_unaffected() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, max_queue_bytes=256 * 1024) as server:
            fast, fast_id = await _raw(f"{server.url}/room")
            slow, _ = await _raw(f"{server.url}/room", max_queue=1)
            reader, _ = await _raw(f"{server.url}/room", max_queue=None)
            slow.transport.pause_reading()  # a client that stops reading
            frame = "\n" + json.dumps([None, 2, [1, 2]]) + " " * 20_000
            sent = 0
            # in lock-step with a healthy reader, so only the stalled client falls behind
            while server.get_stats()["overflows"] == 0 and sent < 20_000:
                await fast.send(frame)
                sent += 1
                assert await _recv(reader) == fast_id + frame
            assert server.get_stats()["overflows"] == 1
            slow.transport.resume_reading()
            code, reason = await _closed_with(slow, timeout=10)
            assert (code, reason) == (1013, "tinybase:15:socket")
            assert len(server.get_client_ids("room")) == 2
            await fast.send('\n["z",1,""]')
            assert await _recv(reader) == fast_id + '\n["z",1,""]'
            assert fast_id in server.get_client_ids("room")
            await fast.close()
            await reader.close()

    run(scenario(), timeout=90)


def test_max_clients_refuses_with_503() -> None:
    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, max_clients=2) as server:
            a, _ = await _raw(f"{server.url}/x")
            b, _ = await _raw(f"{server.url}/y")
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{server.url}/x", open_timeout=5)
            assert info.value.response.status_code == 503
            await a.close()
            await _eventually(lambda: server.get_stats()["clients"] == 1)
            c, _ = await _raw(f"{server.url}/x")
            await b.close()
            await c.close()

    run(scenario())


def test_simple_server_relays() -> None:
    async def scenario() -> None:
        async with await create_ws_server_simple("127.0.0.1", 0) as server:
            a, a_id = await _raw(f"{server.url}/")
            b, _ = await _raw(f"{server.url}/")
            await a.send('\n[null,1,""]')
            assert await _recv(b) == a_id + '\n[null,1,""]'
            assert server.get_stats()["clients"] == 2
            with pytest.raises(TypeError):
                server._inner.add_path_ids_listener(lambda *a: None)
            await a.close()
            await b.close()

    run(scenario())


# --------------------------------------------------------------------- TinyBase clients

CONTENT_OPS: list[list[Any]] = [
    [
        "setTables",
        {
            "t1": {
                "r1": {"s": 'héllo 😀 \n"q"', "n": 9007199254740991, "f": -1.5e-7},
                "r2": {"b": True, "z": 0, "nul": None},
            }
        },
    ],
    ["setCell", "t2", "r", "obj", {"2": None, "b": [1, "é", {"x": 1.5}]}],
    ["setCell", "t2", "r", "arr", [1, 2, [3]]],
    ["setValues", {"v1": "x" * 100, "v2": 1e300, "v3": False}],
]
DELETE_OPS: list[list[Any]] = [
    ["delCell", "t1", "r2", "z"],
    ["delValue", "v3"],
    ["delRow", "t1", "r1"],
]


@pytest.mark.interop
def test_tinybase_clients_sync_through_our_server() -> None:
    npm_env.require_node()

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0) as server:
            a = await NodeClient.start("a")
            b = await NodeClient.start("b")
            c = await NodeClient.start("c")
            try:
                await a.connect(f"{server.url}/room", fragment_size=4096)
                await a.ops(*CONTENT_OPS)
                await b.connect(f"{server.url}/room", fragment_size=4096)
                await c.connect(f"{server.url}/elsewhere")
                # a large write that must travel as many fragments
                await a.ops(["setCell", "big", "r", "c", "ü" * 200_000])
                want = await a.get()
                got = await b.wait(want["tables"], want["values"])
                assert got["ok"], got
                assert got["hashes"] == want["hashes"]
                await b.ops(*DELETE_OPS)
                want = await b.get()
                got = await a.wait(want["tables"], want["values"])
                assert got["ok"] and got["hashes"] == want["hashes"]
                assert "r1" not in got["tables"]["t1"]
                other = await c.get()
                assert other["tables"] == {} and other["values"] == {}
                # only the expected time-out of a lone first client's request (tinybase:3)
                for errors in (got["errors"], (await b.get())["errors"]):
                    assert [e for e in errors if not e.startswith("tinybase:3:")] == []
            finally:
                for peer in (a, b, c):
                    await peer.stop()

    run(scenario(), timeout=90)
