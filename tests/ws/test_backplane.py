"""Server instances sharing rooms through a backplane (localsync.ws.backplane), over the local
channel and over NATS (two nodes of a real ``nats-server`` cluster, one per instance): clients
on two ``localsync serve`` processes converge (Python and TinyBase clients), each instance
persists everything, a room leaves its channel when it empties, bad backplanes and garbage on a
room's channel are handled."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from localsync import create_mergeable_store
from localsync.channel.nats import subject_prefix
from localsync.channel.runtime import channel_paths
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.channel.transport import broadcast_topic
from localsync.errors import ChannelError
from localsync.persisters.sqlite import create_sqlite_persister
from localsync.ws.asgi import create_asgi_app
from localsync.ws.backplane import Backplane, channel_name, create_backplane
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import create_ws_server
from tests import npm_env
from tests.helpers import eventually, run
from tests.interop.node_peers import NodeClient
from tests.nats_cluster import NatsCluster, free_port
from tests.ws.test_ws_persist import until_room_holds

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """A ``localsync serve --backplane ...`` process on a free port."""

    def __init__(self, backplane: str, data: Path | None) -> None:
        store = ["--data", str(data)] if data is not None else ["--no-persist"]
        options = [*store, "--backplane", backplane, "--quiet"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localsync.cli", "serve", "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(line + err)
        self.url = f"ws://127.0.0.1:{match.group(1)}"

    def stop(self) -> None:
        """SIGTERM, and the clean exit that saves every room."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, err
        assert "stopped" in out


def pair(
    serves: list[Serve], backplanes: list[str], data: tuple[Path | None, Path | None] = (None, None)
) -> tuple[Serve, Serve]:
    """Two instances, one on each backplane (recorded in ``serves`` to be killed at the end)."""
    for backplane, folder in zip(backplanes, data, strict=True):
        serves.append(Serve(backplane, folder))
    return serves[-2], serves[-1]


def stop(*serves: Serve) -> None:
    for serve in serves:
        serve.stop()


@pytest.fixture
def channel_env(rundir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every instance of the test (in-process or not) on the local channels of ``rundir``."""
    monkeypatch.setenv("LOCALSYNC_RUNTIME_DIR", str(rundir))
    return {"LOCALSYNC_RUNTIME_DIR": str(rundir)}


@pytest.fixture(params=["local", "nats"])
def backplanes(
    request: pytest.FixtureRequest, channel_env: dict[str, str], tmp_path: Path
) -> Iterator[list[str]]:
    """The backplanes of two instances: the local channel, or two nodes of a NATS cluster."""
    if request.param == "local":
        yield ["local", "local"]
        return
    folder = tmp_path / "nats"
    folder.mkdir()
    with NatsCluster(folder, nodes=2) as cluster:
        yield cluster.urls


@pytest.fixture
def serves(channel_env: dict[str, str]) -> Iterator[list[Serve]]:
    """The serve processes a test starts (appended to the list); killed if still running."""
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.communicate(timeout=10)


async def client(url: str) -> tuple[Any, Any]:
    store = create_mergeable_store()
    sync = create_ws_synchronizer(store, url, 0.5)
    await sync.start_sync()
    return store, sync


def content(store: Any) -> tuple[Any, Any, list[int]]:
    return store.get_tables(), store.get_values(), list(store.get_mergeable_content_hashes())


@pytest.mark.process
def test_python_clients_on_two_serve_processes(serves: list[Serve], backplanes: list[str]) -> None:
    one, two = pair(serves, backplanes)

    async def scenario() -> None:
        a, sa = await client(f"{one.url}/org/doc")
        b, sb = await client(f"{two.url}/org/doc")
        elsewhere, se = await client(f"{two.url}/org~doc")  # (another room, another channel)
        try:
            a.set_cell("t", "r", "from_a", 1)
            await eventually(lambda: b.get_cell("t", "r", "from_a") == 1, 20)
            with b.transaction():
                b.set_cell("t", "r", "from_b", "é😀")
                b.set_value("v", [1, {"k": None}])
            await eventually(lambda: a.get_cell("t", "r", "from_b") == "é😀", 20)
            await eventually(lambda: content(a) == content(b), 20)
            # a client that joins later, on either instance, gets everything
            c, sc = await client(f"{one.url}/org/doc")
            await eventually(lambda: content(c) == content(b), 20)
            await sc.destroy()
            assert elsewhere.get_tables() == {} and elsewhere.get_values() == {}
        finally:
            for sync in (sa, sb, se):
                await sync.destroy()

    run(scenario(), timeout=60)
    stop(one, two)


@pytest.mark.process
@pytest.mark.interop
def test_tinybase_clients_on_two_serve_processes(
    serves: list[Serve], backplanes: list[str]
) -> None:
    npm_env.require_node()
    npm_env.ensure_tinybase()
    one, two = pair(serves, backplanes)

    async def scenario() -> None:
        js1, js2 = await NodeClient.start("js1"), await NodeClient.start("js2")
        try:
            await js1.connect(f"{one.url}/room")
            await js2.connect(f"{two.url}/room")
            await js1.ops(["setCell", "t", "r", "js1", "é😀"], ["setValue", "v", 1])
            got = await js2.wait({"t": {"r": {"js1": "é😀"}}}, {"v": 1}, timeout=20)
            assert got["ok"], got
            await js2.ops(["setCell", "t", "r", "js2", {"k": [1, None]}], ["delValue", "v"])
            want = {"t": {"r": {"js1": "é😀", "js2": {"k": [1, None]}}}}
            got1 = await js1.wait(want, {}, timeout=20)
            assert got1["ok"], got1
            got2 = await js2.wait(want, {}, timeout=20)
            assert got2["hashes"] == got1["hashes"]
        finally:
            await js1.stop()
            await js2.stop()

    run(scenario(), timeout=90)
    stop(one, two)


def _stored(data: Path) -> tuple[Any, Any]:
    """The room's content as saved in ``data`` (read back with a persister, no server)."""

    async def load() -> tuple[Any, Any]:
        store = create_mergeable_store()
        persister = create_sqlite_persister(store, data / "room.sqlite")
        await persister.load()
        await persister.destroy()
        return store.get_tables(), store.get_values()

    result: tuple[Any, Any] = run(load(), timeout=30)
    return result


@pytest.mark.process
def test_each_instance_persists_everything(
    serves: list[Serve], backplanes: list[str], tmp_path: Path
) -> None:
    one, two = pair(serves, backplanes, (tmp_path / "one", tmp_path / "two"))

    async def scenario() -> None:
        a, sa = await client(f"{one.url}/room")
        b, sb = await client(f"{two.url}/room")
        try:
            a.set_cell("t", "a", "n", 1)
            b.set_cell("t", "b", "n", 2)
            await eventually(lambda: content(a) == content(b) and len(a.get_table("t")) == 2, 20)
            # a's last change, held by instance one's room store, and at once instance one
            # goes (its client with it)
            a.set_cell("t", "a", "last", "kept")
            await until_room_holds(f"{one.url}/room", a)
            await asyncio.to_thread(one.stop)
            await eventually(lambda: b.get_cell("t", "a", "last") == "kept", 20)
            b.set_value("closing", True)
            await asyncio.sleep(0.3)  # (b's write is out before it leaves)
        finally:
            await sa.destroy()
            await sb.destroy()

    run(scenario(), timeout=60)
    two.stop()
    want = (
        {"t": {"a": {"n": 1, "last": "kept"}, "b": {"n": 2}}},
        {"closing": True},
    )
    assert _stored(tmp_path / "two") == want
    one_tables, one_values = _stored(tmp_path / "one")
    assert one_tables == want[0]  # (one had stopped before b's closing value)
    assert one_values == {}
    # restarted, instance one serves its own copy until two serves the room too
    one, two = pair(serves, backplanes, (tmp_path / "one", tmp_path / "two"))

    async def restarted() -> None:
        c, sc = await client(f"{one.url}/room")
        await eventually(lambda: c.get_tables() == want[0])
        assert c.get_values() == {}
        d, sd = await client(f"{two.url}/room")
        try:
            for store in (c, d):
                await eventually(lambda s=store: (s.get_tables(), s.get_values()) == want, 20)
        finally:
            await sc.destroy()
            await sd.destroy()

    run(restarted(), timeout=60)
    stop(one, two)
    assert _stored(tmp_path / "one") == want


def test_a_room_leaves_its_channel_when_it_empties(backplanes: list[str]) -> None:
    async def scenario() -> None:
        one = await create_ws_server("127.0.0.1", 0, backplane=backplanes[0])
        two = await create_ws_server("127.0.0.1", 0, backplane=create_backplane(backplanes[1]))
        try:
            b, sb = await client(f"{two.url}/room")
            for n in range(1, 4):  # (churn: the room opens and closes its channel each time)
                a, sa = await client(f"{one.url}/room")
                await eventually(lambda: one.get_stats()["backplane_rooms"] == 1)
                a.set_cell("t", "r", "n", n)
                await sa.destroy()  # (right after the write: it still reaches b)
                await eventually(lambda: one.get_stats()["rooms"] == 0, 20)
                assert one.get_stats()["backplane_rooms"] == 0
                assert one.backplane is not None and one.backplane.channel("room") is None
            await eventually(lambda: b.get_cell("t", "r", "n") == 3, 20)
            stats = one.get_stats()
            assert stats["backplane_sent"] > 0 and stats["backplane_failures"] == 0
            await sb.destroy()
            await eventually(lambda: two.get_stats()["backplane_rooms"] == 0, 20)
        finally:
            await one.destroy()
            await two.destroy()

    run(scenario(), timeout=60)


async def _publish_garbage(backplane: str, rundir: Path, seen: Callable[[], bool]) -> None:
    """Bytes that are no channel message, on room ``room``'s channel, from a rogue publisher,
    until ``seen()`` (a local rogue's first messages are lost until the hub has its
    connection: PUB/SUB drops what it cannot route yet)."""
    name = channel_name("room")
    if backplane == "local":
        rogue = zmq.Context.instance().socket(zmq.PUB)
        try:
            paths = channel_paths(name, rundir)
            rogue.connect(paths.at_generation(paths.read_generation()).inbound_endpoint)
            topic = broadcast_topic("R" * 16)
            deadline = time.monotonic() + 20
            while not seen() and time.monotonic() < deadline:
                rogue.send_multipart([topic, b"\x93not-a-message"])
                rogue.send_multipart([topic, b"a", b"b"])
                await asyncio.sleep(0.2)
        finally:
            rogue.close(0)
        await asyncio.sleep(0.3)  # (what was still on its way has arrived)
        return
    import nats

    connection = await nats.connect(backplane)
    try:
        await connection.publish(subject_prefix(name) + ".all", b"\x93not-a-message")
        await connection.publish(subject_prefix(name) + ".all", b"")
        await connection.flush()
    finally:
        await connection.close()


def test_garbage_on_a_rooms_channel_is_ignored_and_counted(
    backplanes: list[str], rundir: Path
) -> None:
    async def scenario() -> None:
        one = await create_ws_server("127.0.0.1", 0, backplane=backplanes[0])
        two = await create_ws_server("127.0.0.1", 0, backplane=backplanes[1])
        try:
            a, sa = await client(f"{one.url}/room")
            b, sb = await client(f"{two.url}/room")
            await eventually(
                lambda: all(s.get_stats()["backplane_rooms"] == 1 for s in (one, two)), 20
            )

            def ignored() -> list[int]:
                return [s.get_stats()["backplane_ignored"] for s in (one, two)]

            await _publish_garbage(backplanes[0], rundir, lambda: min(ignored()) >= 2)
            await eventually(lambda: min(ignored()) >= 2, 20)
            before = ignored()
            # well-formed channel messages with nonsense inside reach the engines: ignored too
            peer = create_channel_synchronizer(
                create_mergeable_store(), channel_name("room"), hub=_hub(backplanes[0])
            )
            await peer.transport.open()
            peer.transport.send(None, None, 99, "junk")
            peer.transport.send(None, "x", 1, {"not": "hashes"})
            await eventually(
                lambda: all(now >= was + 2 for now, was in zip(ignored(), before, strict=True)), 20
            )
            await peer.destroy()
            a.set_cell("t", "r", "after", "garbage")
            await eventually(lambda: b.get_cell("t", "r", "after") == "garbage", 20)
            await sa.destroy()
            await sb.destroy()
        finally:
            await one.destroy()
            await two.destroy()

    run(scenario(), timeout=60)


def _hub(backplane: str) -> str | None:
    return None if backplane == "local" else backplane


def test_bad_backplanes_fail_clearly(channel_env: dict[str, str]) -> None:
    for spec in ("", "nats-host", 7):
        with pytest.raises(ValueError):
            create_backplane(spec)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Backplane(None, prefix="\x00")
    assert channel_name("a.b/c~d") == "localsync-ws-a~2Eb~2Fc~7Ed"
    names = {channel_name(p) for p in ("a.b", "a/b", "a~b", "a~2Eb", "a~2Fb", "", "a")}
    assert len(names) == 7

    async def scenario() -> None:
        started = time.monotonic()
        for url in ("tcp://127.0.0.1:9", f"nats://127.0.0.1:{free_port()}"):
            dead = Backplane(url, connect_timeout_seconds=0.5)
            with pytest.raises(ChannelError, match="does not answer"):
                await create_ws_server("127.0.0.1", 0, backplane=dead)
        assert time.monotonic() - started < 20

    run(scenario(), timeout=30)


@pytest.mark.process
@pytest.mark.parametrize(
    ("backplane", "says"),
    [("tcp://127.0.0.1:9", "does not answer"), ("nats-host", "must be 'local'")],
    ids=["dead", "malformed"],
)
def test_serve_with_a_bad_backplane_exits_with_one_line(
    channel_env: dict[str, str], backplane: str, says: str
) -> None:
    serve = [sys.executable, "-m", "localsync.cli", "serve", "--port", "0", "--no-persist"]
    proc = subprocess.run(
        [*serve, "--backplane", backplane],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backplane" in lines[0] and says in lines[0], proc.stderr


def test_an_asgi_app_and_a_standalone_server_share_rooms(backplanes: list[str]) -> None:
    import uvicorn

    async def scenario() -> None:
        app = create_asgi_app(backplane=backplanes[0])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        web = uvicorn.Server(config)
        serving = asyncio.ensure_future(web.serve())
        await eventually(lambda: web.started or serving.done(), 20)
        assert web.started, serving
        port = web.servers[0].sockets[0].getsockname()[1]
        two = await create_ws_server("127.0.0.1", 0, backplane=backplanes[1])
        try:
            a, sa = await client(f"ws://127.0.0.1:{port}/doc")
            b, sb = await client(f"{two.url}/doc")
            a.set_cell("t", "r", "asgi", 1)
            b.set_cell("t", "r", "standalone", 2)
            await eventually(lambda: content(a) == content(b) and len(a.get_row("t", "r")) == 2)
            assert app.server.get_stats()["backplane_rooms"] == 1
            await sa.destroy()
            await sb.destroy()
        finally:
            web.should_exit = True
            await serving
            await two.destroy()
        assert app.server.get_stats()["backplane_rooms"] == 0

    run(scenario(), timeout=60)


def test_an_asgi_apps_startup_fails_on_a_dead_backplane() -> None:
    async def scenario() -> list[dict[str, Any]]:
        app = create_asgi_app(backplane=Backplane("tcp://127.0.0.1:9", connect_timeout_seconds=0.3))
        events = [{"type": "lifespan.startup"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return events.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        with pytest.raises(ChannelError, match="does not answer"):
            async with app.lifespan():
                pass
        return sent

    sent = run(scenario(), timeout=30)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "does not answer" in sent[0]["message"]


def test_a_nats_node_killed_mid_stream_loses_nothing(
    channel_env: dict[str, str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    rows = 300

    async def scenario(cluster: NatsCluster) -> None:
        # each instance on its own node; nats-py learns the others from the cluster
        one = await create_ws_server("127.0.0.1", 0, backplane=cluster.urls[0])
        two = await create_ws_server("127.0.0.1", 0, backplane=cluster.urls[1])
        try:
            a, sa = await client(f"{one.url}/room")
            b, sb = await client(f"{two.url}/room")
            await eventually(lambda: one.get_stats()["backplane_rooms"] == 1, 20)

            async def write() -> None:
                for i in range(rows):
                    a.set_cell("w", f"r{i}", "c", i)
                    await asyncio.sleep(0.002)

            writing = asyncio.ensure_future(write())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cluster.kill, 0)  # (instance one's node)
            killed_at = time.monotonic()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cluster.restart, 0)
            await writing
            await eventually(lambda: len(b.get_table("w")) == rows, 30)
            converged = time.monotonic() - killed_at
            record_property("converged_after_node_kill_s", round(converged, 3))
            assert content(a) == content(b)
            assert all(b.get_cell("w", f"r{i}", "c") == i for i in range(rows))
            channel = one.backplane.channel("room") if one.backplane is not None else None
            assert channel is not None and channel.get_channel_stats()["reconnects"] >= 1
            await sa.destroy()
            await sb.destroy()
        finally:
            await one.destroy()
            await two.destroy()

    folder = tmp_path / "nats"
    folder.mkdir()
    with NatsCluster(folder, nodes=3) as cluster:
        run(scenario(cluster), timeout=90)


def test_a_backplane_keeps_the_empty_path_open_unless_rooms_are_persisted(
    channel_env: dict[str, str], tmp_path: Path
) -> None:
    """The backplane gives every room a store of its own, but only the caller's persistence
    needs a file name: the empty path is served as without a backplane (400 when persisted)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def scenario() -> None:
        one = await create_ws_server("127.0.0.1", 0, backplane="local")
        two = await create_ws_server("127.0.0.1", 0, backplane="local")
        persisted = await create_ws_server(
            "127.0.0.1",
            0,
            lambda path_id: create_sqlite_persister(
                create_mergeable_store(), str(tmp_path / f"{path_id}.sqlite")
            ),
            backplane="local",
        )
        try:
            a, sa = await client(one.url)
            b, sb = await client(two.url)
            a.set_cell("t", "r", "c", 1)
            await eventually(lambda: b.get_cell("t", "r", "c") == 1, 20)
            with pytest.raises(InvalidStatus) as info:
                await connect(persisted.url, open_timeout=5)
            assert info.value.response.status_code == 400
            await sa.destroy()
            await sb.destroy()
        finally:
            for server in (one, two, persisted):
                await server.destroy()

    run(scenario(), timeout=60)
