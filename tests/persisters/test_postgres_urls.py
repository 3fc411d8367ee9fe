"""``localsync serve --data postgresql://...`` and ``localsync coordinator --data
postgresql://...`` against a real PostgreSQL (pgserver, the fixture of
tests/persisters/test_persister_postgres.py): rooms and channels survive a restart, each in
the table the documented naming gives, and a database that refuses the credentials or is
down is one line (exit 2) without the password.
"""

# the pg and db fixtures are imported, then named as test arguments:
# ruff: noqa: F811
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.channel.coordinator import channel_owner, postgres_table_name
from localsync.cli.serve import postgres_room_table
from localsync.ws.client import create_ws_synchronizer
from tests.channel_procs import ROOT, Proc, start_coordinator
from tests.helpers import eventually, run
from tests.npm_env import run_node_json
from tests.persisters.test_persister_postgres import (  # noqa: F401  (pg, db, node: fixtures)
    BAD_USER,
    BAD_USER_PASSWORD,
    Server,
    db,
    node,
    pg,
)
from tests.ws.test_ws_persist import until_room_holds

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]


def _url(pg: Server, db: str) -> str:
    """The database as the password-checked role (so leaks of the password would show)."""
    pg.execute(f"GRANT ALL ON SCHEMA public TO {BAD_USER}", database=db)
    return pg.db_uri(db, BAD_USER, BAD_USER_PASSWORD)


def _row(pg: Server, db: str, table: str) -> list[Any]:
    rows = pg.execute(f'SELECT _id, store FROM "{table}"', database=db)
    assert rows is not None and len(rows) == 1 and rows[0][0] == "_", rows
    return list(json.loads(rows[0][1]))


def _start_serve(data: str) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localsync.cli", "serve", "--port", "0", "--data", data],
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
    return proc, int(match.group(1)), line


async def _write(port: int, rooms: dict[str, str]) -> None:
    for room, value in rooms.items():
        a = create_mergeable_store()
        sa = await create_ws_synchronizer(a, f"ws://127.0.0.1:{port}/{room}", 0.3)
        await sa.start_sync()
        a.set_cell("t", "r", "c", value)
        await until_room_holds(f"ws://127.0.0.1:{port}/{room}", a)
        await sa.destroy()


def _serve_and_write(url: str, rooms: dict[str, str]) -> None:
    proc, port, _ = _start_serve(url)
    try:
        run(_write(port, rooms), timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


TINYBASE_READ = """
import postgres from 'postgres';
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createPostgresPersister} from 'tinybase/persisters/persister-postgres';
const [socket, database, table] = process.argv.slice(2);
const sql = postgres({path: socket, database, username: 'postgres', onnotice: () => {}});
const store = createMergeableStore('tinybase-reader');
const persister = await createPostgresPersister(store, sql, table);
await persister.load();
console.log(JSON.stringify({tables: store.getTables()}));
await persister.destroy();
await sql.end();
"""


@pytest.mark.interop
def test_tinybase_reads_a_served_room_from_the_documented_table(
    pg: Server, db: str, node: None, tmp_path: Path
) -> None:
    rooms = {"room-1": "plain", "org/doc": "nested"}
    _serve_and_write(pg.db_uri(db), rooms)
    script = tmp_path / "localsync_serve_room_read.mjs"
    script.write_text(TINYBASE_READ)
    for room, value in rooms.items():
        table = postgres_room_table(room)
        got = run_node_json(script, pg.socket_file(), db, table, timeout=120)
        assert got == {"tables": {"t": {"r": {"c": value}}}}, (room, table, got)


def test_serve_keeps_rooms_in_postgres_across_a_restart(pg: Server, db: str) -> None:
    url = _url(pg, db)
    rooms = {"room-1": "plain", "org/doc": "nested"}

    async def read(port: int) -> dict[str, Any]:
        got = {}
        for room in rooms:
            b = create_mergeable_store()
            sb = await create_ws_synchronizer(b, f"ws://127.0.0.1:{port}/{room}", 0.3)
            await sb.start_sync()
            await eventually(lambda b=b: b.has_cell("t", "r", "c"))  # type: ignore[misc]
            got[room] = b.get_cell("t", "r", "c")
            await sb.destroy()
        return got

    proc, port, line = _start_serve(url)
    try:
        assert BAD_USER_PASSWORD not in line and "postgresql" in line
        run(_write(port, rooms), timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert BAD_USER_PASSWORD not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # the documented tables: tinybase_<id>, or tinybase-<hash> for an id with a "/"
    assert postgres_room_table("room-1") == "tinybase_room-1"
    assert re.fullmatch(r"tinybase-[0-9a-f]{16}", postgres_room_table("org/doc"))
    for room, value in rooms.items():
        content = _row(pg, db, postgres_room_table(room))
        assert content[0][0]["t"][0]["r"][0]["c"][0] == value

    proc, port, _ = _start_serve(url)
    try:
        assert run(read(port), timeout=30) == rooms
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _one_line_error(argv: list[str], password: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "localsync.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert password not in proc.stderr + proc.stdout
    return lines[0]


def test_a_bad_password_or_a_down_server_is_one_line(pg: Server, db: str, rundir: Path) -> None:
    wrong = "wrong-secret-71b"
    bad = pg.db_uri(db, BAD_USER, wrong)
    down = f"postgresql://{BAD_USER}:{wrong}@/{db}?host={rundir / 'nowhere'}"
    for url in (bad, down, "postgresql://u:" + wrong + "@[bad"):
        line = _one_line_error(["serve", "--port", "0", "--data", url], wrong)
        assert line.startswith("localsync serve: error: --data"), line
    for url in (bad, down):
        line = _one_line_error(
            ["coordinator", "--channel", "c1", "--data", url, "--runtime-dir", str(rundir)],
            wrong,
        )
        assert line.startswith("localsync coordinator: error:"), line
        assert "PostgreSQL" in line


class _Coordinator:
    def __init__(self, rundir: Path, url: str, channel: str) -> None:
        self.popen = start_coordinator(rundir, url, channel, "sqlite")  # type: ignore[arg-type]
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(self.popen.stderr.read() if self.popen.stderr else "no output")
        self.line = line
        self.ready = json.loads(line)

    def terminate(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(30)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


def _worker(rundir: Path, channel: str) -> Proc:
    p = Proc("sync", "--channel", channel, "--runtime-dir", str(rundir))
    p.expect("ready", 20)
    return p


def test_coordinator_keeps_a_channel_in_postgres(pg: Server, db: str, rundir: Path) -> None:
    url = _url(pg, db)
    channel = "orders"
    table = postgres_table_name(channel)
    assert table == "tinybase_orders"
    coordinator = _Coordinator(rundir, url, channel)
    procs: list[Proc] = []
    try:
        assert BAD_USER_PASSWORD not in coordinator.line
        assert coordinator.ready["data"].endswith("#tinybase_orders")
        owner = channel_owner(channel, rundir)
        assert owner is not None and owner["file"] == coordinator.ready["data"]
        assert BAD_USER_PASSWORD not in json.dumps(owner)
        a = _worker(rundir, channel)
        procs.append(a)
        a.send(cmd="set", cells=[["t", "a", "n", 1], ["t", "a", "o", "kept"]])
        assert a.ask("wait_ack", "acked", 40, timeout=30)["ok"] is True
        assert a.close() == 0
        assert coordinator.terminate() == 0
        content = _row(pg, db, table)
        assert content[0][0]["t"][0]["a"][0]["o"][0] == "kept"

        coordinator = _Coordinator(rundir, url, channel)
        late = _worker(rundir, channel)
        procs.append(late)
        deadline = time.monotonic() + 20
        while True:
            tables = late.ask("content", "content")["value"][0]
            if tables.get("t", {}).get("a") == {"n": 1, "o": "kept"}:
                break
            assert time.monotonic() < deadline, tables
            time.sleep(0.1)
        assert coordinator.terminate() == 0
    finally:
        for p in procs:
            p.kill()
        coordinator.kill()
