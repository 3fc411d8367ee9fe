"""The persisting server and ``localsync serve``: rooms survive everyone leaving and a server
restart; hostile path ids never reach the file system; the command shuts down cleanly."""

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
from websockets.exceptions import InvalidStatus

from localsync import create_mergeable_store
from localsync.cli.serve import persister_factory
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import create_ws_server
from tests.helpers import eventually, run


async def room_store_hashes(url: str) -> list[int]:
    """Ask the room's server-side store ("S") for its content hashes, as any client can."""
    async with connect(url, open_timeout=5) as ws:
        await ws.send('S\n["probe",1,""]')
        while True:
            frame = str(await asyncio.wait_for(ws.recv(), 5))
            if frame.startswith('S\n["probe",0,'):
                return list(json.loads(frame[2:])[2])


async def until_room_holds(url: str, store: Any, timeout: float = 10) -> None:
    want = list(store.get_mergeable_content_hashes())

    async def poll() -> None:
        while await room_store_hashes(url) != want:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_rooms_survive_leaving_and_restart(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        server = await create_ws_server(
            "127.0.0.1", 0, persister_factory(data, kind), request_timeout_seconds=0.3
        )
        port = server.port
        a = create_mergeable_store()
        sa = await create_ws_synchronizer(a, f"ws://127.0.0.1:{port}/room", 0.3)
        await sa.start_sync()
        with a.transaction():
            a.set_cell("t", "r", "c", "é😀")
            a.set_cell("t", "r", "o", {"k": [1, None]})
            a.set_value("v", 2**53)
        other = create_mergeable_store()
        so = await create_ws_synchronizer(other, f"ws://127.0.0.1:{port}/other", 0.3)
        await so.start_sync()
        other.set_value("only", "other")
        # the server's copy of each room follows its client (it is a peer like any other)
        await until_room_holds(f"ws://127.0.0.1:{port}/room", a)
        await until_room_holds(f"ws://127.0.0.1:{port}/other", other)
        await sa.destroy()
        await so.destroy()
        await eventually(lambda: server.get_path_ids() == [])
        # a new client of the same (now empty) room gets the data back from the server
        b = create_mergeable_store()
        sb = await create_ws_synchronizer(b, f"ws://127.0.0.1:{port}/room", 0.3)
        await sb.start_sync()
        await eventually(
            lambda: b.get_tables() == a.get_tables() and b.get_values() == a.get_values()
        )
        await sb.destroy()
        await server.destroy()
        # and so does one after a restart, in each room separately
        server = await create_ws_server(
            "127.0.0.1", port, persister_factory(data, kind), request_timeout_seconds=0.3
        )
        c, d = create_mergeable_store(), create_mergeable_store()
        sc = await create_ws_synchronizer(c, f"ws://127.0.0.1:{port}/room", 0.3)
        sd = await create_ws_synchronizer(d, f"ws://127.0.0.1:{port}/other", 0.3)
        await sc.start_sync()
        await sd.start_sync()
        await eventually(
            lambda: c.get_tables() == a.get_tables() and c.get_values() == a.get_values()
        )
        await eventually(lambda: d.get_values() == {"only": "other"})
        assert c.get_tables() == {"t": {"r": {"c": "é😀", "o": {"k": [1, None]}}}}
        await sc.destroy()
        await sd.destroy()
        await server.destroy()

    run(scenario())
    suffix = ".sqlite" if kind == "sqlite" else ".json"
    names = {p.name for p in data.iterdir()}
    assert {"room" + suffix, "other" + suffix} <= names


def test_hostile_path_ids_never_touch_the_file_system(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b" / "data"
    data.mkdir(parents=True)
    before = tree(tmp_path)

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, persister_factory(data)) as server:
            for path in ["../../etc/passwd", "..%2F..%2Fx", "..", "a/../../b", "x%00y", "/abs"]:
                with pytest.raises(InvalidStatus) as info:
                    await connect(f"{server.url}/{path}", open_timeout=5)
                assert info.value.response.status_code == 400
            assert server.get_path_ids() == []
            assert server.get_stats()["rejected"] == 6

    run(scenario())
    assert tree(tmp_path) == before
    with pytest.raises(ValueError):
        persister_factory(data)("../../etc/passwd")
    assert tree(tmp_path) == before


def test_nested_path_ids_become_flat_file_names(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        async with await create_ws_server("127.0.0.1", 0, persister_factory(data)) as server:
            a = create_mergeable_store()
            sa = await create_ws_synchronizer(a, f"{server.url}/org/doc", 0.3)
            await sa.start_sync()
            a.set_value("nested", True)
            assert server.get_path_ids() == ["org/doc"]
            await until_room_holds(f"{server.url}/org/doc", a)
            await sa.destroy()
            await eventually(lambda: server.get_path_ids() == [])
            b = create_mergeable_store()
            sb = await create_ws_synchronizer(b, f"{server.url}/org/doc", 0.3)
            await sb.start_sync()
            await eventually(lambda: b.get_values() == {"nested": True})
            await sb.destroy()

    run(scenario())
    assert {p.name for p in tmp_path.iterdir()} == {"data"}
    assert "org%2Fdoc.sqlite" in {p.name for p in data.iterdir()}
    assert not (data / "org").exists()


@pytest.mark.process
def test_serve_command_persists_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def start() -> tuple[subprocess.Popen[str], int]:
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
                "--summary-seconds",
                "0.2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        return proc, int(match.group(1))

    async def write(port: int) -> None:
        a = create_mergeable_store()
        sa = await create_ws_synchronizer(a, f"ws://127.0.0.1:{port}/cli", 0.3)
        await sa.start_sync()
        a.set_cell("t", "r", "c", "kept")
        await until_room_holds(f"ws://127.0.0.1:{port}/cli", a)
        await sa.destroy()

    async def read(port: int) -> Any:
        b = create_mergeable_store()
        sb = await create_ws_synchronizer(b, f"ws://127.0.0.1:{port}/cli", 0.3)
        await sb.start_sync()
        await eventually(lambda: b.has_cell("t", "r", "c"))
        await sb.destroy()
        return b.get_cell("t", "r", "c")

    for sig, do in [(signal.SIGTERM, write), (signal.SIGINT, read)]:
        proc, port = start()
        try:
            result = run(do(port), timeout=30)
            if do is read:
                assert result == "kept"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert "paths=" in err and "joined /cli" in err
    assert (data / "cli.sqlite").exists()
