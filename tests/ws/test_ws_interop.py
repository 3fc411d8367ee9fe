"""Interop with real TinyBase 10.0.1 from npm: its WsSynchronizer clients through our server
(with persistence across a restart), and our Python client through TinyBase's createWsServer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.cli.serve import persister_factory
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import create_ws_server
from tests import helpers, npm_env
from tests.interop.node_peers import NodeClient, NodeServer

pytestmark = pytest.mark.interop

OPS: list[list[Any]] = [
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
BIG = "ü" * 150_000  # 300 kB of UTF-8: fragmented with a 16 kB fragment size


def run(coro: Awaitable[Any], timeout: float = 90) -> Any:
    npm_env.require_node()
    return helpers.run(coro, timeout)


async def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    await helpers.eventually(check, timeout)


def holds(store: Any, snapshot: dict[str, Any]) -> Callable[[], bool]:
    return lambda: (
        store.get_tables() == snapshot["tables"]
        and store.get_values() == snapshot["values"]
        and list(store.get_mergeable_content_hashes()) == snapshot["hashes"]
    )


def test_tinybase_and_python_clients_through_our_persisting_server(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0, persister_factory(data, "sqlite"))
        port = server.port
        url = f"ws://127.0.0.1:{port}/room"
        js1, js2 = await NodeClient.start("js1"), await NodeClient.start("js2")
        py = create_mergeable_store()
        sync = create_ws_synchronizer(py, url, 0.5, fragment_size=16_384)
        try:
            await js1.connect(url, fragment_size=16_384)
            await js1.ops(*OPS)
            await sync.start_sync()
            await js2.connect(url, fragment_size=16_384)
            py.set_cell("py", "r", "big", BIG)
            py.del_value("v3")
            await js2.ops(["delCell", "t1", "r2", "z"], ["setCell", "t1", "r2", "js2", "✓"])
            # everyone converges on the same content and the same hashes
            await eventually(
                lambda: py.has_cell("t1", "r2", "js2") and not py.has_cell("t1", "r2", "z")
            )
            want = {
                "tables": py.get_tables(),
                "values": py.get_values(),
                "hashes": list(py.get_mergeable_content_hashes()),
            }
            for js in (js1, js2):
                got = await js.wait(want["tables"], want["values"])
                assert got["ok"], got
                assert got["hashes"] == want["hashes"]
            assert py.get_cell("t2", "r", "obj") == {"2": None, "b": [1, "é", {"x": 1.5}]}
            # everybody leaves; the server's copy survives a restart
            await js1.close()
            await js2.close()
            await sync.destroy()
            await eventually(lambda: server.get_path_ids() == [])
            await server.destroy()
            assert (data / "room.sqlite").exists()
            server = await create_ws_server("127.0.0.1", port, persister_factory(data, "sqlite"))
            js3 = await NodeClient.start("js3")
            try:
                await js3.connect(url, fragment_size=16_384)
                got = await js3.wait(want["tables"], want["values"])
                assert got["ok"], got
                assert got["hashes"] == want["hashes"]
            finally:
                await js3.stop()
            later = create_mergeable_store()
            sync2 = await create_ws_synchronizer(later, url, 0.5)
            await sync2.start_sync()
            await eventually(holds(later, want))
            await sync2.destroy()
        finally:
            for js in (js1, js2):
                await js.stop()
            await sync.destroy()
            await server.destroy()

    run(scenario(), timeout=120)


@pytest.mark.parametrize("persist", [False, True], ids=["relay", "server-store"])
def test_python_client_through_tinybase_server(persist: bool) -> None:
    async def scenario() -> None:
        node_server = await NodeServer.start(persist=persist)
        url = f"{node_server.url}/room"
        js = await NodeClient.start("js")
        a, b = create_mergeable_store(), create_mergeable_store()
        sa = create_ws_synchronizer(a, url, 0.5, fragment_size=16_384)
        sb = create_ws_synchronizer(b, url, 0.5, fragment_size=16_384)
        try:
            await js.connect(url, fragment_size=16_384)
            await js.ops(*OPS)
            await sa.start_sync()
            await sb.start_sync()
            a.set_cell("py", "r", "big", BIG)
            b.del_cell("t1", "r2", "z")
            await js.ops(["delValue", "v3"])
            await eventually(
                lambda: (
                    a.has_cell("py", "r", "big")
                    and not a.has_cell("t1", "r2", "z")
                    and not a.has_value("v3")
                )
            )
            want = {
                "tables": a.get_tables(),
                "values": a.get_values(),
                "hashes": list(a.get_mergeable_content_hashes()),
            }
            await eventually(holds(b, want))
            got = await js.wait(want["tables"], want["values"])
            assert got["ok"], got
            assert got["hashes"] == want["hashes"]
            assert a.get_cell("py", "r", "big") == BIG
            assert b.get_cell("t2", "r", "arr") == [1, 2, [3]]
        finally:
            await sa.destroy()
            await sb.destroy()
            await js.stop()
            await node_server.stop()

    run(scenario())


def test_fragmented_payloads_on_a_shared_socket() -> None:
    """TinyBase's client fragments each channel's payloads; the server reassembles them per
    channel and relays the fragments to the room's other clients."""

    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0)
        base = f"ws://127.0.0.1:{server.port}/big"
        store = create_mergeable_store()
        sync = create_ws_synchronizer(store, f"{base}/docs", 0.5, fragment_size=300)
        try:
            await sync.start_sync()
            store.set_cell("py", "docs", "text", "ü" * 3_000)
            script = npm_env.INTEROP_DIR / "tb_shared.mjs"
            result = await asyncio.to_thread(
                npm_env.run_node_json, script, "--fragment=256", base, "docs", timeout=60
            )
            assert result["protocol"] == "tinybase"
            assert result["errors"] == []
            got = result["stores"]["docs"]
            assert got["tables"]["py"] == {"docs": {"text": "ü" * 3_000}}
            await eventually(lambda: store.get_cell("js", "docs", "text") == "é" * 2_000)
            assert got["tables"] == store.get_tables()
            assert got["hashes"] == list(store.get_mergeable_content_hashes())
        finally:
            await sync.destroy()
            await server.destroy()

    run(scenario())


def test_tinybase_synchronizers_sharing_one_socket_through_our_server(tmp_path: Path) -> None:
    """TinyBase 9.3+'s shared socket (subprotocol 'tinybase'): one room per channel."""
    data = tmp_path / "data"

    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0, persister_factory(data, "sqlite"))
        base = f"ws://127.0.0.1:{server.port}/shop"
        stores: dict[str, Any] = {}
        syncs = []
        try:
            for channel in ("pets", "staff"):
                store = stores[channel] = create_mergeable_store()
                sync = create_ws_synchronizer(store, f"{base}/{channel}", 0.5)
                await sync.start_sync()
                syncs.append(sync)
                store.set_cell("py", channel, "n", 10)
            script = npm_env.INTEROP_DIR / "tb_shared.mjs"
            result = await asyncio.to_thread(
                npm_env.run_node_json, script, base, "pets", "staff", timeout=60
            )
            assert result["protocol"] == "tinybase"
            assert result["errors"] == []
            for index, channel in enumerate(("pets", "staff"), start=1):
                store = stores[channel]
                await eventually(lambda: store.get_cell("js", channel, "n") == index)  # noqa: B023
                # each channel holds its own room's data only, the same on both sides
                got = result["stores"][channel]
                assert got["tables"] == {"py": {channel: {"n": 10}}, "js": {channel: {"n": index}}}
                assert got["tables"] == store.get_tables()
                assert got["hashes"] == list(store.get_mergeable_content_hashes())
        finally:
            for sync in syncs:
                await sync.destroy()
        await eventually(lambda: server.get_path_ids() == [])
        await server.destroy()
        # the server persisted each channel's room under its own name, and serves it again
        assert sorted(p.name for p in data.iterdir() if p.suffix == ".sqlite") == [
            "shop%2Fpets.sqlite",
            "shop%2Fstaff.sqlite",
        ]
        server = await create_ws_server("127.0.0.1", 0, persister_factory(data, "sqlite"))
        later = create_mergeable_store()
        sync = create_ws_synchronizer(later, f"ws://127.0.0.1:{server.port}/shop/staff", 0.5)
        try:
            await sync.start_sync()
            await eventually(lambda: later.get_tables() == stores["staff"].get_tables())
        finally:
            await sync.destroy()
            await server.destroy()

    run(scenario())
