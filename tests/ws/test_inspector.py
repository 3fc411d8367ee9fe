"""The inspector's backend over real sockets: a real server with the inspector route, Python
sync clients writing to a room, and a raw ``websockets`` client speaking the page's JSON."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from localsync import create_mergeable_store
from localsync.core.mergeable_store import MergeableStore
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.inspector import MAX_MESSAGE_BYTES, Inspector, RoomsSource, StoreSource
from localsync.ws.server import WsServer, create_ws_server
from tests.helpers import eventually, run

Json = dict[str, Any]


class Page:
    """A raw inspector socket: every JSON message it received, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[Json] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for data in self.ws:
            assert isinstance(data, str)
            self.messages.append(json.loads(data))

    async def send(self, message: Json | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def of(self, kind: str) -> list[Json]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait(self, check: Callable[[], bool]) -> None:
        await eventually(check, timeout=15)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@asynccontextmanager
async def inspected(**options: Any) -> AsyncIterator[tuple[WsServer, Inspector]]:
    server = await create_ws_server(port=0, **options)
    inspector = Inspector(RoomsSource(server))
    server.add_route(inspector.route())
    try:
        yield server, inspector
    finally:
        await inspector.close()
        await server.destroy()


async def open_page(server: WsServer, query: str = "") -> Page:
    ws = await connect(f"{server.url}/_inspect/socket{query}", open_timeout=10)
    return Page(ws)


async def client(server: WsServer, room: str) -> tuple[MergeableStore, Any]:
    store = create_mergeable_store()
    synchronizer = await create_ws_synchronizer(store, f"{server.url}/{room}")
    await synchronizer.start_sync()
    return store, synchronizer


def cells_of(page: Page) -> list[list[Any]]:
    return [cell for m in page.of("changes") for cell in m["cells"]]


def test_snapshot_live_changes_and_edits_reach_clients() -> None:
    async def scenario() -> None:
        async with inspected() as (server, inspector):
            store, synchronizer = await client(server, "shop")
            store.set_row("pets", "fido", {"species": "dog", "legs": 4})
            store.set_value("open", True)
            page = await open_page(server)
            await page.wait(lambda: bool(page.of("rooms")) and bool(page.of("stats")))
            assert page.messages[0] == {
                "type": "hello",
                "mode": "rooms",
                "title": "",
                "read_only": False,
            }
            rooms = page.of("rooms")[-1]["rooms"]
            assert [r["id"] for r in rooms] == ["shop"]
            assert rooms[0]["clients"] == server.get_client_ids("shop")
            assert "messages_received" in page.of("stats")[-1]["stats"]

            await page.send({"type": "watch", "room": "shop"})
            await page.wait(lambda: bool(page.of("snapshot")))
            snapshot = page.of("snapshot")[0]
            assert snapshot["tables"] == {"pets": {"fido": {"species": "dog", "legs": 4}}}
            assert snapshot["values"] == {"open": True}
            # the follower is in the room, but not listed as one of its clients
            await page.wait(lambda: page.of("rooms")[-1]["rooms"][0]["followers"] == 1)
            assert len(server.get_client_ids("shop")) == 2
            assert page.of("rooms")[-1]["rooms"][0]["clients"] == [
                c for c in server.get_client_ids("shop") if c.startswith("in-process") is False
            ]

            store.set_cell("pets", "rex", "species", "cat")
            store.del_cell("pets", "fido", "legs")
            store.set_value("open", False)
            await page.wait(lambda: ["pets", "fido", "legs"] in cells_of(page))
            assert ["pets", "rex", "species", "cat"] in cells_of(page)
            await page.wait(
                lambda: ["open", False] in [v for m in page.of("changes") for v in m["values"]]
            )
            await page.wait(lambda: page.of("rooms")[-1]["rooms"][0]["last_change"] is not None)

            await page.send(
                {"type": "set_cell", "table": "pets", "row": "fido", "cell": "legs", "value": 3}
            )
            await page.send({"type": "set_value", "id": "motto", "value": "hi"})
            await eventually(lambda: store.get_cell("pets", "fido", "legs") == 3, timeout=15)
            await eventually(lambda: store.get_value("motto") == "hi", timeout=15)
            # the page sees its own edit come back as a change
            await page.wait(lambda: ["pets", "fido", "legs", 3] in cells_of(page))
            await page.send({"type": "del_cell", "table": "pets", "row": "rex", "cell": "species"})
            await eventually(lambda: not store.has_row("pets", "rex"), timeout=15)
            assert inspector.get_stats()["edits"] == 3
            assert inspector.get_stats()["ignored"] == 0

            await page.close()
            await synchronizer.destroy()

    run(scenario())


def test_one_follower_per_room_shared_and_stopped() -> None:
    async def scenario() -> None:
        async with inspected() as (server, _inspector):
            store, synchronizer = await client(server, "a")
            store.set_cell("t", "r", "c", 1)
            pages = [await open_page(server) for _ in range(2)]
            for page in pages:
                await page.send({"type": "watch", "room": "a"})
            for page in pages:
                await page.wait(lambda page=page: bool(page.of("snapshot")))
            assert len(server.get_client_ids("a")) == 2  # one Python client, one follower
            store.set_cell("t", "r", "c", 2)
            for page in pages:
                await page.wait(lambda page=page: ["t", "r", "c", 2] in cells_of(page))
            await pages[0].send({"type": "watch", "room": None})
            await asyncio.sleep(0.2)
            assert len(server.get_client_ids("a")) == 2
            await pages[1].close()
            await eventually(lambda: len(server.get_client_ids("a")) == 1, timeout=15)
            # a room nobody else is in can be watched (and written) too
            await pages[0].send({"type": "watch", "room": "empty"})
            await pages[0].wait(lambda: any(s["room"] == "empty" for s in pages[0].of("snapshot")))
            await pages[0].send({"type": "set_value", "id": "v", "value": 1.5})
            await pages[0].wait(
                lambda: [["v", 1.5]] in [m["values"] for m in pages[0].of("changes")]
            )
            await pages[0].close()
            await eventually(lambda: server.get_client_ids("empty") == [], timeout=15)
            await synchronizer.destroy()

    run(scenario())


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        '{"type": "nope"}',
        '{"type": "watch", "room": 5}',
        '{"type": "set_cell", "table": "t", "row": "r", "cell": "c", "value": {"a": 1}}',
        '{"type": "set_cell", "table": "t", "row": "r", "cell": "c", "value": null}',
        '{"type": "set_cell", "table": "t", "row": 1, "cell": "c", "value": 1}',
        '{"type": "set_value", "id": "v", "value": NaN}',
        '{"type": "set_value", "id": "v", "value": 1e400}',
        '{"type": "set_value", "id": "v"}',
        '{"type": "set_value", "id": "v", "value": "x", "pad": "' + "x" * MAX_MESSAGE_BYTES + '"}',
    ],
)
def test_bad_messages_are_ignored_and_counted(bad: str) -> None:
    async def scenario() -> None:
        async with inspected() as (server, inspector):
            store, synchronizer = await client(server, "room")
            page = await open_page(server)
            await page.send({"type": "watch", "room": "room"})
            await page.wait(lambda: bool(page.of("snapshot")))
            await page.send(bad)
            await page.wait(lambda: bool(page.of("error")))
            assert inspector.get_stats()["ignored"] == 1
            # the session goes on: a good edit after it still works
            await page.send({"type": "set_value", "id": "ok", "value": "yes"})
            await eventually(lambda: store.get_value("ok") == "yes", timeout=15)
            assert store.get_values() == {"ok": "yes"}
            assert store.get_tables() == {}
            await page.close()
            await synchronizer.destroy()

    run(scenario())


def test_edit_without_a_watched_room_is_ignored() -> None:
    async def scenario() -> None:
        async with inspected() as (server, inspector):
            # (another page follows the room of the empty path: still not this page's room)
            store, synchronizer = await client(server, "")
            other = await open_page(server)
            await other.send({"type": "watch", "room": ""})
            await other.wait(lambda: bool(other.of("snapshot")))
            page = await open_page(server)
            await page.send({"type": "set_value", "id": "v", "value": 1})
            await page.wait(lambda: bool(page.of("error")))
            assert page.of("error")[0]["message"] == "no room watched"
            assert inspector.get_stats()["ignored"] == 1
            await asyncio.sleep(0.2)
            assert store.get_values() == {}
            await page.close()
            await other.close()
            await synchronizer.destroy()

    run(scenario())


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_token_is_required_for_page_and_socket() -> None:
    async def scenario() -> None:
        async with inspected(token="s3cret") as (server, _inspector):
            base = f"http://127.0.0.1:{server.port}/_inspect/"
            status, _, _ = await asyncio.to_thread(_get, base)
            assert status == 401
            status, _, _ = await asyncio.to_thread(_get, base + "?token=wrong")
            assert status == 403
            status, headers, body = await asyncio.to_thread(_get, base + "?token=s3cret")
            assert status == 200
            assert headers["Content-Type"].startswith("text/html")
            assert "script-src 'sha256-" in headers["Content-Security-Policy"]
            assert b"<script>" in body and b"inspector.js" not in body
            for query in ("", "?token=wrong"):
                with pytest.raises(InvalidStatus):
                    await open_page(server, query)
            page = await open_page(server, "?token=s3cret")
            await page.wait(lambda: bool(page.of("rooms")))
            await page.close()

    run(scenario())


def test_http_paths() -> None:
    async def scenario() -> None:
        async with inspected() as (server, _inspector):
            base = f"http://127.0.0.1:{server.port}/_inspect"
            redirect = urllib.request.Request(base + "?token=x")

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args: Any) -> None:
                    return None

            opener = urllib.request.build_opener(NoRedirect)
            with pytest.raises(urllib.error.HTTPError) as caught:
                await asyncio.to_thread(opener.open, redirect, None, 10)
            assert caught.value.code == 302
            assert caught.value.headers["Location"] == "_inspect/?token=x"
            assert (await asyncio.to_thread(_get, base + "/nothing"))[0] == 404
            assert (await asyncio.to_thread(_get, base + "/socket"))[0] == 426
            # only <prefix>/socket is the page's socket
            ws = await connect(f"{server.url}/_inspect/other", open_timeout=10)
            await ws.wait_closed()
            assert ws.close_code == 1008

    run(scenario())


def test_store_source_follows_one_store() -> None:
    async def scenario() -> None:
        server = await create_ws_server(port=0)
        store = create_mergeable_store()
        store.set_cell("t", "r", "c", "x")
        inspector = Inspector(StoreSource(store, "chan", lambda: {"sends": 7}), title="chan")
        server.add_route(inspector.route())
        try:
            page = await open_page(server)
            await page.wait(lambda: bool(page.of("rooms")) and bool(page.of("stats")))
            assert page.messages[0] == {
                "type": "hello",
                "mode": "store",
                "title": "chan",
                "read_only": False,
            }
            assert page.of("rooms")[-1]["rooms"][0]["id"] == "chan"
            assert page.of("stats")[-1]["stats"]["sends"] == 7
            await page.send({"type": "watch", "room": "other"})
            await page.wait(lambda: bool(page.of("error")))
            await page.send({"type": "watch", "room": "chan"})
            await page.wait(lambda: bool(page.of("snapshot")))
            assert page.of("snapshot")[0]["tables"] == {"t": {"r": {"c": "x"}}}
            store.set_cell("t", "r", "c", "y")
            await page.wait(lambda: ["t", "r", "c", "y"] in cells_of(page))
            # a write on another thread (a worker's) reaches the page through the loop
            await asyncio.to_thread(store.set_value, "from_thread", 1)
            await page.wait(
                lambda: [["from_thread", 1]] in [m["values"] for m in page.of("changes")]
            )
            await page.send(
                {"type": "set_cell", "table": "t", "row": "r2", "cell": "c", "value": 2}
            )
            await eventually(lambda: store.get_cell("t", "r2", "c") == 2, timeout=15)
            await page.close()
            await inspector.close()
            # the store is borrowed: the inspector leaves it as it was, listeners included
            assert store.get_listener_stats().get("transaction", 0) == 0
        finally:
            await server.destroy()

    run(scenario())


def test_inspector_through_the_asgi_app_mounted_in_fastapi() -> None:
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from localsync.ws.asgi import create_asgi_app

    async def scenario() -> None:
        sync = create_asgi_app()
        inspector = Inspector(RoomsSource(sync.server))
        sync.server.add_route(inspector.route())
        app = fastapi.FastAPI(lifespan=sync.lifespan)
        app.mount("/sync", sync)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        web = uvicorn.Server(config)
        serving = asyncio.ensure_future(web.serve())
        try:
            await eventually(lambda: web.started, timeout=30)
            port = web.servers[0].sockets[0].getsockname()[1]
            status, _, body = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}/sync/_inspect/"
            )
            assert status == 200 and b"localsync inspector" in body
            store = create_mergeable_store()
            synchronizer = await create_ws_synchronizer(store, f"ws://127.0.0.1:{port}/sync/cafe")
            await synchronizer.start_sync()
            store.set_cell("menu", "tea", "price", 2.5)
            ws = await connect(f"ws://127.0.0.1:{port}/sync/_inspect/socket", open_timeout=10)
            page = Page(ws)
            await page.wait(lambda: any(r["rooms"] for r in page.of("rooms")))
            assert page.of("rooms")[-1]["rooms"][0]["id"] == "cafe"
            await page.send({"type": "watch", "room": "cafe"})
            await page.wait(lambda: bool(page.of("snapshot")))
            assert page.of("snapshot")[0]["tables"] == {"menu": {"tea": {"price": 2.5}}}
            await page.send(
                {"type": "set_cell", "table": "menu", "row": "tea", "cell": "price", "value": 3}
            )
            await eventually(lambda: store.get_cell("menu", "tea", "price") == 3, timeout=15)
            await page.close()
            await synchronizer.destroy()
        finally:
            await inspector.close()
            web.should_exit = True
            await asyncio.wait_for(serving, 30)

    run(scenario())


def view_of(page: Page, room: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The tables a page shows for ``room``: its last snapshot with the changes after it."""
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for message in page.messages:
        if message.get("room") != room:
            continue
        if message["type"] == "snapshot":
            tables = json.loads(json.dumps(message["tables"]))
        elif message["type"] == "changes":
            for change in message["cells"]:
                if len(change) == 4:
                    tables.setdefault(change[0], {}).setdefault(change[1], {})[change[2]] = change[
                        3
                    ]
                elif len(change) == 3:
                    tables.get(change[0], {}).get(change[1], {}).pop(change[2], None)
                elif len(change) == 2:
                    tables.get(change[0], {}).pop(change[1], None)
                else:
                    tables.pop(change[0], None)
    return tables


def test_persisted_room_without_clients_is_loaded_followed_and_saved(tmp_path: Any) -> None:
    from localsync.cli.serve import persister_factory

    async def scenario() -> None:
        async with inspected(create_persister=persister_factory(tmp_path)) as (server, _inspector):
            store, synchronizer = await client(server, "kept")
            store.set_row("notes", "n1", {"text": "saved"})
            await synchronizer.destroy()  # the room's store is saved and stopped
            await eventually(lambda: server.get_stats()["rooms"] == 0, timeout=15)

            page = await open_page(server)
            await page.send({"type": "watch", "room": "kept"})
            await page.wait(lambda: view_of(page, "kept") == {"notes": {"n1": {"text": "saved"}}})
            await page.send(
                {"type": "set_cell", "table": "notes", "row": "n2", "cell": "text", "value": "new"}
            )
            await page.wait(lambda: "n2" in view_of(page, "kept").get("notes", {}))
            await page.close()
            await eventually(lambda: server.get_stats()["rooms"] == 0, timeout=15)

            later, synchronizer = await client(server, "kept")
            await eventually(lambda: later.get_cell("notes", "n2", "text") == "new", timeout=15)
            await synchronizer.destroy()

    run(scenario())


def test_server_shutdown_with_a_page_watching_a_room() -> None:
    async def scenario() -> None:
        server = await create_ws_server(port=0)
        inspector = Inspector(RoomsSource(server))
        server.add_route(inspector.route())
        store, synchronizer = await client(server, "busy")
        page = await open_page(server)
        await page.send({"type": "watch", "room": "busy"})
        await page.wait(lambda: bool(page.of("snapshot")))
        await asyncio.wait_for(server.destroy(), 30)
        await asyncio.wait_for(page.ws.wait_closed(), 30)
        assert page.ws.close_code == 1001
        # the page's session ended and let its follower go
        await eventually(lambda: inspector.get_stats()["pages"] == 0, timeout=15)
        await synchronizer.destroy()
        store.set_cell("t", "r", "c", 1)  # (nobody listens any more: nothing breaks)

    run(scenario())


def test_a_burst_of_writes_and_deletes_ends_as_the_store_is() -> None:
    async def scenario() -> None:
        async with inspected() as (server, _inspector):
            store, synchronizer = await client(server, "burst")
            page = await open_page(server)
            await page.send({"type": "watch", "room": "burst"})
            await page.wait(lambda: bool(page.of("snapshot")))
            for i in range(300):
                table, row = f"t{i % 3}", f"r{i % 17}"
                if i % 11 == 0:
                    store.del_row(table, row)
                elif i % 29 == 0:
                    store.del_table(table)
                elif i % 7 == 0:
                    store.del_cell(table, row, f"c{i % 4}")
                else:
                    store.set_cell(table, row, f"c{i % 4}", i if i % 2 else str(i))
                if i % 50 == 0:
                    await asyncio.sleep(0)
            expected = store.get_tables()
            assert expected  # (the mix leaves something to compare)
            await page.wait(lambda: view_of(page, "burst") == expected)
            # fewer messages than transactions: each loop turn's changes go as one
            assert len(page.of("changes")) < 300
            await page.close()
            await synchronizer.destroy()

    run(scenario())


@pytest.mark.parametrize(
    ("room", "why"),
    [
        ("../etc", "invalid room id"),
        ("a\x00b", "invalid room id"),
        ("", "invalid room id"),
        ("_inspect/socket", "a page of the server, not a room"),
        ("_inspect", "a page of the server, not a room"),
    ],
)
def test_a_page_cannot_follow_what_is_not_a_room(room: str, why: str) -> None:
    async def scenario() -> None:
        async with inspected() as (server, inspector):
            page = await open_page(server)
            await page.send({"type": "watch", "room": room})
            await page.wait(lambda: bool(page.of("error")))
            assert page.of("error")[0]["message"] == f"cannot follow this room: {why}"
            assert inspector.get_stats()["ignored"] == 1
            assert server.get_stats()["clients"] == 0
            assert inspector.get_stats()["pages"] == 1
            await page.close()

    run(scenario())
