"""Trust at the edges of the persisting server (issue 16): connection churn never locks a
room's data away or stalls shutdown; rooms that never held data leave nothing on disk; the
number of rooms a client, an address or the whole server may open is bounded.

Everything runs over real sockets against real SQLite databases and JSON files; the
``localsync serve`` cases run the command in a subprocess. Deadlines are generous (the bugs
they catch took 100 s and more), never performance thresholds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from localsync import create_mergeable_store
from localsync.cli.serve import persister_factory
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import create_ws_server
from tests.helpers import eventually, run

pytestmark = pytest.mark.timeout(120)

ROWS = 100
ROOT = Path(__file__).resolve().parents[2]


def seed_room(data: Path, kind: str, path_id: str, rows: int = ROWS) -> Any:
    """Write ``rows`` rows into the room's file the way the server's persister would."""

    async def seed() -> Any:
        persister = persister_factory(data, kind)(path_id)
        store = persister.get_store()
        with store.transaction():
            for i in range(rows):
                store.set_row("t", f"r{i}", {"n": i, "s": f"row {i}"})
        await persister.save()
        await persister.destroy()
        return store.get_tables()

    return run(seed(), timeout=30)


def read_room(data: Path, kind: str, path_id: str) -> Any:
    """The tables saved in the room's file (loaded by a fresh persister, nothing written)."""

    async def read() -> Any:
        persister = persister_factory(data, kind)(path_id)
        await persister.load()
        await persister.destroy()
        return persister.get_store().get_tables()

    return run(read(), timeout=30)


async def churn(url: str, count: int, parallel: int = 10) -> None:
    """``count`` short-lived connections to ``url``: closed right after the upgrade, in the
    middle of the handshake, and in the middle of a sync request; ``parallel`` at a time."""
    host, port, path = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)", url).groups()  # type: ignore[union-attr]

    async def one(i: int) -> None:
        kind = i % 3
        if kind == 0:  # upgrade, then close at once
            ws = await connect(url, open_timeout=10)
            await ws.close()
        elif kind == 1:  # half a handshake, then the TCP connection goes
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n".encode())
            await writer.drain()
            writer.close()
            with _nothing():
                await writer.wait_closed()
        else:  # ask the room's store for its hashes (a sync's first step), leave before the answer
            ws = await connect(url, open_timeout=10)
            await ws.send('S\n["churn",1,""]')
            await ws.send('\n["churn2",1,""]')
            await ws.close()

    for start in range(0, count, parallel):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + parallel))))


class _nothing:
    """A context manager that swallows connection errors (a peer may reset first)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, (OSError, ConnectionError))


async def synced_tables(url: str, want_rows: int, deadline: float = 10) -> Any:
    """A real client's view of the room: it must hold ``want_rows`` rows within ``deadline``."""
    store = create_mergeable_store()
    synchronizer = await create_ws_synchronizer(store, url, 1.0)
    try:
        await asyncio.wait_for(synchronizer.start_sync(), deadline)
        await eventually(lambda: len(store.get_row_ids("t")) == want_rows, deadline)
        return store.get_tables()
    finally:
        await synchronizer.destroy()


# ------------------------------------------------------------------------- item 2: churn


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_churn_never_locks_the_rooms_data_away(tmp_path: Path, kind: str) -> None:
    """150 churned connections on a persisted room, then a real client gets all of its rows
    within 10 s (before the fix: 0 rows after start_sync, all of them only ~100 s later,
    because every connection queued a start behind a stop that waited out a 1 s pull), and
    the server shuts down within 15 s with the data still on disk."""
    data = tmp_path / "data"
    want = seed_room(data, kind, "room")

    async def scenario() -> None:
        server = await create_ws_server(
            "127.0.0.1", 0, persister_factory(data, kind), request_timeout_seconds=1.0
        )
        url = f"{server.url}/room"
        await churn(url, 150)
        assert await synced_tables(url, ROWS) == want
        # a writer while more churn goes on: its change is kept
        store = create_mergeable_store()
        writer = await create_ws_synchronizer(store, url, 1.0)
        await asyncio.wait_for(writer.start_sync(), 10)
        store.set_row("t", "new", {"n": -1})
        churning = asyncio.ensure_future(churn(url, 60))
        await eventually(lambda: server.get_stats()["messages_received"] > 0)
        await churning
        await writer.destroy()
        await churn(url, 30)
        await asyncio.wait_for(server.destroy(), 15)
        assert server.get_stats()["rooms"] == 0

    run(scenario(), timeout=100)
    reread = read_room(data, kind, "room")
    assert len(reread["t"]) == ROWS + 1 and reread["t"]["new"] == {"n": -1}


def start_serve(data: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """``localsync serve`` on a free port; the process and its port."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "serve",
            "--port",
            "0",
            "--data",
            str(data),
            "--quiet",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        raise AssertionError(line + (proc.stderr.read() if proc.stderr else ""))
    return proc, int(match.group(1))


def stop_serve(proc: subprocess.Popen[str], deadline: float = 15) -> tuple[str, str]:
    """SIGTERM, then the output once it exited (TimeoutExpired after ``deadline`` s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.process
def test_serve_exits_promptly_on_sigterm_after_churn(tmp_path: Path) -> None:
    """200 churned connections, then SIGTERM: ``localsync serve`` exits within 15 s (before
    the fix: ~194 s, one stop after another) and the room's data is on disk."""
    data = tmp_path / "data"
    want = seed_room(data, "sqlite", "room")
    proc, port = start_serve(data)
    try:
        url = f"ws://127.0.0.1:{port}/room"

        async def scenario() -> None:
            store = create_mergeable_store()
            writer = await create_ws_synchronizer(store, url, 1.0)
            await asyncio.wait_for(writer.start_sync(), 10)
            await eventually(lambda: len(store.get_row_ids("t")) == ROWS, 10)
            store.set_row("t", "late", {"n": 1})
            await asyncio.sleep(0.2)
            await writer.destroy()
            await churn(url, 200, parallel=1)  # (one after another, as a simple script would)

        run(scenario(), timeout=60)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    out, _ = stop_serve(proc)
    assert "stopped" in out
    reread = read_room(data, "sqlite", "room")
    assert set(reread["t"]) == set(want["t"]) | {"late"}


# ------------------------------------------------------------ item 8: rooms on disk, limits


def probe(url: str, count: int) -> None:
    """Open ``count`` distinct rooms under ``url``, each with one short-lived client."""

    async def go() -> None:
        for i in range(count):
            room = f"{url}/probe-{i}"
            if i % 4 == 0:  # a real synchronizer that never writes
                synchronizer = await create_ws_synchronizer(create_mergeable_store(), room, 0.3)
                await synchronizer.start_sync()
                await synchronizer.destroy()
            else:
                async with connect(room, open_timeout=10) as ws:
                    if i % 2:
                        await ws.send('S\n["p",1,""]')

    run(go(), timeout=60)


@pytest.mark.process
@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_rooms_that_never_held_data_leave_no_files(tmp_path: Path, kind: str) -> None:
    """Probing 40 room names leaves no file behind (before: a 24 KB database per name), while
    rooms with data, with only deletions, and an unreadable file all stay on disk."""
    data = tmp_path / "data"
    data.mkdir()
    suffix = ".sqlite" if kind == "sqlite" else ".json"
    (data / ("broken" + suffix)).write_bytes(b"\x00not a store\xff" * 10)
    proc, port = start_serve(data, "--persister", kind)
    try:
        url = f"ws://127.0.0.1:{port}"

        async def writes() -> None:
            kept = create_mergeable_store()
            sk = await create_ws_synchronizer(kept, f"{url}/kept", 0.3)
            await sk.start_sync()
            kept.set_value("v", 1)
            gone = create_mergeable_store()
            sg = await create_ws_synchronizer(gone, f"{url}/deleted", 0.3)
            await sg.start_sync()
            gone.set_value("v", 1)
            gone.del_value("v")  # (a deletion is data: peers must learn about it)
            await asyncio.sleep(0.5)
            await sk.destroy()
            await sg.destroy()
            # a client of the room whose file is unreadable (the server may close it)
            try:
                async with connect(f"{url}/broken", open_timeout=10) as ws:
                    await ws.send('S\n["p",1,""]')
                    await asyncio.wait_for(ws.recv(), 2)
            except (ConnectionClosed, InvalidStatus, TimeoutError):
                pass

        run(writes(), timeout=60)
        probe(url, 40)

        async def settled() -> None:
            # a fresh client of an empty room sees no data, and the probed names stay absent
            store = create_mergeable_store()
            s = await create_ws_synchronizer(store, f"{url}/probe-1", 0.3)
            await s.start_sync()
            assert store.get_tables() == {} and store.get_values() == {}
            await s.destroy()

            def files() -> set[str]:
                return {p.name for p in data.iterdir()}

            await eventually(
                lambda: files() == {"kept" + suffix, "deleted" + suffix, "broken" + suffix}, 15
            )

        run(settled(), timeout=60)
    finally:
        stop_serve(proc)
    assert {p.name for p in data.iterdir()} == {
        "kept" + suffix,
        "deleted" + suffix,
        "broken" + suffix,
    }
    assert (data / ("broken" + suffix)).read_bytes() == b"\x00not a store\xff" * 10


def control(request_id: str | None, kind: int, body: Any) -> str:
    return "S\n" + json.dumps([request_id, -1, [kind, body]], separators=(",", ":"))


async def shared_socket(url: str) -> Any:
    ws = await connect(url, subprotocols=["tinybase"], open_timeout=10)  # type: ignore[list-item]
    await ws.send(control("h", 0, 1))
    assert await asyncio.wait_for(ws.recv(), 10) == control("h", 0, 1)
    return ws


async def closed_with(ws: Any) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


def test_room_limits_refuse_clearly(tmp_path: Path) -> None:
    """``max_rooms`` (server), ``max_rooms_per_address`` and ``max_rooms_per_socket``: a
    legacy client of one room too many gets HTTP 503; a shared socket's subscription to one
    closes it with 1013 ``tinybase:15:rooms`` (``...:channels`` for its own limit). Rooms
    already open can still be joined, and a room counts until its store stopped."""
    data = tmp_path / "data"

    async def scenario() -> None:
        server = await create_ws_server(
            "127.0.0.1", 0, persister_factory(data), max_rooms=3, request_timeout_seconds=0.3
        )
        url = server.url
        held = [await connect(f"{url}/r{i}", open_timeout=10) for i in range(3)]
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/r3", open_timeout=10)
        assert info.value.response.status_code == 503
        assert b"too many rooms" in info.value.response.body
        again = await connect(f"{url}/r0", open_timeout=10)  # an open room: fine
        ws = await shared_socket(f"{url}/s")
        await ws.send(control("j", 1, "c"))
        assert await closed_with(ws) == (1013, "tinybase:15:rooms")
        for conn in [*held, again]:
            await conn.close()
        await eventually(lambda: server.get_stats()["rooms"] == 0)
        ok = await connect(f"{url}/r3", open_timeout=10)
        await ok.close()
        assert server.get_stats()["rooms_refused"] == 2
        await server.destroy()

        server = await create_ws_server("127.0.0.1", 0, None, max_rooms_per_address=2)
        url = server.url
        a = await connect(f"{url}/a", open_timeout=10)
        b = await connect(f"{url}/b", open_timeout=10)
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/c", open_timeout=10)
        assert info.value.response.status_code == 503
        b2 = await connect(f"{url}/b", open_timeout=10)  # (a room it is in already)
        await b.close()
        await b2.close()
        ws = await shared_socket(f"{url}/")
        await ws.send(control("j1", 1, "a"))  # (joined by this address already)
        assert await asyncio.wait_for(ws.recv(), 10) == control("j1", 1, "a")
        await ws.send(control("j2", 1, "x"))
        assert await asyncio.wait_for(ws.recv(), 10) == control("j2", 1, "x")
        await ws.send(control("j3", 1, "y"))  # a third room for the address: refused
        assert await closed_with(ws) == (1013, "tinybase:15:rooms")
        await a.close()
        await server.destroy()

        server = await create_ws_server("127.0.0.1", 0, None, max_rooms_per_socket=2)
        ws = await shared_socket(f"{server.url}/")
        for i in range(2):
            await ws.send(control(f"k{i}", 1, f"k{i}"))
            await asyncio.wait_for(ws.recv(), 10)
        await ws.send(control("k2", 1, "k2"))  # a third channel on one socket
        assert await closed_with(ws) == (1013, "tinybase:15:channels")
        await server.destroy()

    run(scenario(), timeout=60)


# ------------------------------------------- a hostile frame through a non-validating relay


def test_a_huge_json_integer_from_a_relay_never_stops_a_client() -> None:
    """TinyBase's own server relays payloads without checking them, so any peer can send a
    client ``[null, 1e400-as-an-integer, ...]``: the client closes that socket as invalid
    (1007) and reconnects, and then syncs as usual (before the fix the check's OverflowError
    ended the client's connection task for good: no reconnect, no more syncing)."""
    from websockets.asyncio.server import ServerConnection, serve

    hostile = "X\n[null," + "9" * 400 + ',""]'
    closes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        if not closes:
            await ws.send(hostile)
        else:  # later connections: a peer "P" announces a value (a ContentDiff)
            peer = create_mergeable_store()
            peer.set_value("after", "reconnect")
            hlc = peer.get_mergeable_content()[1][0]["after"][1]
            changes = [[{}], [{"after": ["reconnect", hlc]}], 1]
            await ws.send("P\n" + json.dumps(["tx", 3, changes]))
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        closes.append(ws.close_code)

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            store = create_mergeable_store()
            synchronizer = create_ws_synchronizer(
                store, f"ws://127.0.0.1:{port}/room", 0.3, min_backoff=0.05, max_backoff=0.2
            )
            await synchronizer.start_sync()
            await eventually(lambda: store.get_values() == {"after": "reconnect"})
            stats = synchronizer.get_connection_stats()
            assert stats["invalid_frames"] == 1 and stats["connects"] >= 2
            assert closes[0] == 1007
            await synchronizer.destroy()

    run(scenario(), timeout=60)


@pytest.mark.process
def test_serve_refuses_rooms_over_max_rooms(tmp_path: Path) -> None:
    """``localsync serve --max-rooms 2``: a client of a third room gets HTTP 503 while two
    rooms are open, and is served once one of them closed."""
    proc, port = start_serve(tmp_path / "data", "--max-rooms", "2")
    try:
        url = f"ws://127.0.0.1:{port}"

        async def scenario() -> None:
            a = await connect(f"{url}/a", open_timeout=10)
            b = await connect(f"{url}/b", open_timeout=10)
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{url}/c", open_timeout=10)
            assert info.value.response.status_code == 503
            await a.close()

            async def third() -> None:
                while True:
                    try:
                        c = await connect(f"{url}/c", open_timeout=10)
                    except InvalidStatus:
                        await asyncio.sleep(0.05)
                    else:
                        await c.close()
                        return

            await asyncio.wait_for(third(), 10)
            await b.close()

        run(scenario(), timeout=60)
    finally:
        stop_serve(proc)
