"""Channel transport without the sync engine: runtime folder, addressing, hub election."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from localsync.channel.runtime import (
    RuntimeDirError,
    channel_paths,
    resolve_runtime_dir,
    validate_channel_name,
)
from localsync.channel.transport import (
    ChannelTransport,
    broadcast_topic,
    others_broadcast_prefixes,
)
from localsync.errors import ChannelError
from tests.channel_procs import ROOT, Proc

pytestmark = pytest.mark.timeout(60)


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


# -- runtime folder ---------------------------------------------------------------------


def test_runtime_folder_is_created_private(rundir: Path) -> None:
    folder = resolve_runtime_dir(rundir / "sub")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert folder.stat().st_uid == os.getuid()


def test_runtime_folder_with_group_or_other_access_is_refused(rundir: Path) -> None:
    os.chmod(rundir, 0o755)
    with pytest.raises(RuntimeDirError, match="0755"):
        resolve_runtime_dir(rundir)
    with pytest.raises(RuntimeDirError):
        ChannelTransport("orders", runtime_dir=rundir)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_runtime_folder_owned_by_another_user_is_refused(rundir: Path) -> None:
    os.chown(rundir, 65534, 65534)
    with pytest.raises(RuntimeDirError, match="uid 65534"):
        resolve_runtime_dir(rundir)


def test_environment_variable_selects_folder(rundir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSYNC_RUNTIME_DIR", str(rundir))
    assert channel_paths("x").folder == rundir


def test_channel_names_are_validated(rundir: Path) -> None:
    with pytest.raises(TypeError):
        validate_channel_name(b"orders")
    with pytest.raises(ValueError, match="empty"):
        validate_channel_name("")
    with pytest.raises(ValueError, match="limit"):
        validate_channel_name("x" * 5000)
    # long and odd names are fine: files are named by a hash
    a = channel_paths("é/../" * 100, rundir)
    b = channel_paths("orders", rundir)
    assert a.inbound.parent == rundir and a.inbound != b.inbound
    deep = rundir / ("d" * 90)
    deep.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="107"):
        channel_paths("orders", deep)


# -- addressing, in one process -----------------------------------------------------------


async def _open_all(transports: list[ChannelTransport]) -> None:
    await asyncio.gather(*(t.open() for t in transports))


def test_addressing_own_broadcasts_and_invalid_messages(rundir: Path) -> None:
    async def scenario() -> None:
        ignored: list[Exception] = []
        ts = [
            ChannelTransport("orders", runtime_dir=rundir, on_ignored_error=ignored.append)
            for _ in range(3)
        ]
        got: dict[str, list[tuple[str, object]]] = {t.client_id: [] for t in ts}
        for t in ts:
            t.register_receive(lambda f, r, m, b, t=t: got[t.client_id].append((f, b)))
        await _open_all(ts)
        try:
            paths = channel_paths("orders", rundir)
            # exactly one hub; sockets private
            assert sum(t.local_hub is not None and t.local_hub.is_host for t in ts) == 1
            for path in (paths.inbound, paths.outbound, paths.lock):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
            a, b, c = ts
            a.send(None, "t1.r", 3, {"x": ["\ufffc", 1.5]})
            b.send(c.client_id, None, 0, [1, 2])
            # garbage from a rogue publisher on the same channel
            rogue = zmq.Context.instance().socket(zmq.PUB)
            rogue.rcvhwm = 0  # (to take in all 3,027 subscriptions of the participants)
            rogue.connect(paths.inbound_endpoint)
            await asyncio.sleep(0.2)  # (rogue has no path proof; give it its subscriptions)
            topic = broadcast_topic("R" * 16)
            rogue.send_multipart([topic, b"\x93not-a-message"])
            rogue.send_multipart([topic, b"a", b"b"])
            rogue.send_multipart([topic, b"\x00Z" + b"R" * 16])  # (no such control kind)
            for t in ts:  # a liveness probe from a malformed client id: not answered
                rogue.send_multipart([t._own_topic, b"\x00A" + b"!" * 16])
            deadline = time.monotonic() + 5
            while len(ignored) < 4 * len(ts) or len(got[c.client_id]) < 2:
                assert time.monotonic() < deadline, (got, ignored)
                await asyncio.sleep(0.01)
            rogue.close(0)
            assert got[a.client_id] == []  # own broadcast not delivered back
            assert got[b.client_id] == [(a.client_id, {"x": ["\ufffc", 1.5]})]
            assert got[c.client_id] == [
                (a.client_id, {"x": ["\ufffc", 1.5]}),
                (b.client_id, [1, 2]),
            ]
            # ... by the hub: it never reached a (before, it came back and was dropped)
            assert a.stats["own_dropped"] == 0 and a.stats["received"] == 0
            assert all(isinstance(e, ValueError) for e in ignored)
            assert sum("unknown channel control" in str(e) for e in ignored) == len(ts)
            assert all(t.stats["ignored"] == 4 for t in ts)
            with pytest.raises(ValueError):
                a.send("short", None, 0, None)
        finally:
            for t in ts:
                t.close()

    asyncio.run(scenario())


def test_unreachable_tcp_hub_fails_clearly() -> None:
    port = free_port_pair()

    async def scenario() -> None:
        t = ChannelTransport("orders", hub=f"tcp://127.0.0.1:{port}", connect_timeout_seconds=0.3)
        with pytest.raises(ChannelError, match="no channel hub answered"):
            await t.open()
        with pytest.raises(ChannelError):
            await t.open()

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        ChannelTransport("orders", hub="http://127.0.0.1:80")


# -- real processes -----------------------------------------------------------------------


def _await_recv(receiver: Proc, sender: Proc, body: str, timeout: float = 10.0) -> None:
    """Send ``body`` repeatedly until ``receiver`` reports it (raw transport has no healing)."""
    deadline = time.monotonic() + timeout
    while True:
        sender.send(cmd="send", body=body)
        try:
            receiver.expect("recv", 0.1, where=lambda e: e["body"] == body)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.process
def test_hub_host_killed_another_takes_over(rundir: Path) -> None:
    procs = [Proc("raw", "--channel", "failover", "--runtime-dir", str(rundir)) for _ in range(3)]
    try:
        for p in procs:
            p.expect("ready")
        hosts = [p for p in procs if p.ask("status", "status")["host"]]
        assert len(hosts) == 1
        host = hosts[0]
        rest = [p for p in procs if p is not host]
        _await_recv(rest[0], rest[1], "before")
        host.kill()
        # one survivor takes the lock and binds the same paths; the other reconnects to it
        deadline = time.monotonic() + 10
        while not any(p.ask("status", "status")["host"] for p in rest):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _await_recv(rest[0], rest[1], "after-1")
        _await_recv(rest[1], rest[0], "after-2")
    finally:
        for p in procs:
            p.kill()


@pytest.mark.process
def test_tcp_hub_command(rundir: Path) -> None:
    port = free_port_pair()
    hub = subprocess.Popen(
        [sys.executable, "-m", "localsync.cli", "hub", "--bind", f"tcp://127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    procs: list[Proc] = []
    try:
        assert hub.stdout is not None
        assert f"tcp://127.0.0.1:{port + 1}" in hub.stdout.readline()
        procs = [
            Proc("raw", "--channel", "net", "--hub", f"tcp://127.0.0.1:{port}") for _ in range(2)
        ]
        for p in procs:
            assert p.expect("ready")["host"] is False
        _await_recv(procs[0], procs[1], "over-tcp")
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(10) == 0
    finally:
        for p in procs:
            p.kill()
        if hub.poll() is None:
            hub.kill()
            hub.wait()


_FOREIGN_PROBE = """
import json, os, socket, sys
folder, sock_path = sys.argv[1], sys.argv[2]
out = {"uid": os.getuid()}
try:
    os.listdir(folder); out["listdir"] = "ok"
except PermissionError:
    out["listdir"] = "denied"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sock_path); out["connect"] = "ok"
except PermissionError:
    out["connect"] = "denied"
print(json.dumps(out))
"""


def _python_for(uid: int) -> str | None:
    """An interpreter that user ``uid`` may run (ours may live under a private home)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            try:
                ok = subprocess.run(
                    [candidate, "-c", "pass"], user=uid, group=uid, capture_output=True, timeout=20
                )
            except PermissionError:
                continue
            if ok.returncode == 0:
                return candidate
    return None


@pytest.mark.process
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another user")
def test_another_user_cannot_reach_the_channel(rundir: Path) -> None:
    python = _python_for(65534)
    if python is None:
        pytest.skip("no interpreter runnable by user nobody")

    async def scenario() -> None:
        t = ChannelTransport("private", runtime_dir=rundir)
        await t.open()
        try:
            paths = channel_paths("private", rundir)
            # the same probe as root succeeds, so a denial below is the permissions' doing
            mine = subprocess.run(
                [python, "-c", _FOREIGN_PROBE, str(rundir), str(paths.outbound)],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert json.loads(mine.stdout) == {"uid": 0, "listdir": "ok", "connect": "ok"}
            theirs = subprocess.run(
                [python, "-c", _FOREIGN_PROBE, str(rundir), str(paths.outbound)],
                user=65534,
                group=65534,
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert json.loads(theirs.stdout) == {
                "uid": 65534,
                "listdir": "denied",
                "connect": "denied",
            }
        finally:
            t.close()

    asyncio.run(scenario())


def test_payload_is_msgpack_of_four_fields(rundir: Path) -> None:
    """The documented wire format, observed with a plain SUB socket on the hub."""

    async def scenario() -> None:
        t = ChannelTransport("wire", runtime_dir=rundir)
        await t.open()
        try:
            spy = zmq.Context.instance().socket(zmq.SUB)
            spy.connect(channel_paths("wire", rundir).outbound_endpoint)
            spy.subscribe(b"*")
            deadline = time.monotonic() + 5
            while True:
                t.send(None, "req", 1, "")
                if spy.poll(20):
                    topic, payload = spy.recv_multipart()
                    break
                assert time.monotonic() < deadline
            spy.close(0)
            assert topic == broadcast_topic(t.client_id)
            assert msgspec.msgpack.decode(payload) == [t.client_id, "req", 1, ""]
        finally:
            t.close()

    asyncio.run(scenario())


_ids = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=16, max_size=16)


@given(own=_ids, other=_ids)
def test_broadcast_prefixes_match_every_topic_but_ones_own(own: str, other: str) -> None:
    prefixes = others_broadcast_prefixes(own)
    assert len(prefixes) == 16 * 63 and len(broadcast_topic(own)) == 17
    matching = [p for p in prefixes if broadcast_topic(other).startswith(p)]
    assert len(matching) == (0 if other == own else 1)
    assert not any(p.startswith((b"C", b"A")) for p in prefixes)  # (addressed, acks)


def test_client_ids_outside_the_alphabet_are_refused(rundir: Path) -> None:
    for bad in ("short", "a" * 17, "a" * 15 + "!", "a" * 15 + "\u00e9"):
        with pytest.raises(ValueError, match="client_id"):
            ChannelTransport("orders", runtime_dir=rundir, client_id=bad)


def test_a_late_joiner_is_heard_by_everyone_among_many(rundir: Path) -> None:
    """Eleven participants hold 11,099 subscriptions; the hub's XSUB sends them all to each
    publisher that connects. With ZeroMQ's default mark the burst stopped at 1,000, and the
    late joiner's publisher, whose topic sorts last ("z" is the greatest byte of the id
    alphabet), never learnt that anybody listens to it: its broadcasts never left."""

    async def scenario() -> None:
        early = [ChannelTransport("many", runtime_dir=rundir) for _ in range(10)]
        got: dict[str, set[str]] = {}
        for t in early:
            got[t.client_id] = set()
            t.register_receive(lambda f, r, m, b, t=t: got[t.client_id].add(f))
        await _open_all(early)
        late = ChannelTransport("many", runtime_dir=rundir, client_id="z" * 16)
        got[late.client_id] = set()
        late.register_receive(lambda f, r, m, b: got[late.client_id].add(f))
        await late.open()
        everyone = [*early, late]
        try:
            deadline = time.monotonic() + 10
            while any(
                got[t.client_id] != {u.client_id for u in everyone} - {t.client_id}
                for t in everyone
            ):
                assert time.monotonic() < deadline, {k: len(v) for k, v in got.items()}
                for t in everyone:
                    t.send(None, None, 1, "")
                await asyncio.sleep(0.05)
        finally:
            for t in everyone:
                t.close()

    asyncio.run(scenario())


# -- hub election -----------------------------------------------------------------------


def test_tcp_endpoints_layout() -> None:
    from localsync.channel.hub import tcp_endpoints

    assert tcp_endpoints("tcp://127.0.0.1:7700") == ("tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701")
    assert tcp_endpoints("tcp://[::1]:9") == ("tcp://[::1]:9", "tcp://[::1]:10")
    for bad in ("tcp://127.0.0.1", "ipc:///tmp/x", "tcp://h:65535"):
        with pytest.raises(ValueError):
            tcp_endpoints(bad)
    with pytest.raises(TypeError):
        tcp_endpoints(7700)  # type: ignore[arg-type]


def test_stopping_the_host_hands_the_hub_over(rundir: Path) -> None:
    from localsync.channel.hub import LocalHub

    paths = channel_paths("handover", rundir)
    first = LocalHub(paths).start()
    assert first.wait_host(5)
    second = LocalHub(paths).start()
    try:
        assert not second.wait_host(0.3)  # the lock is held: no second hub
        first.stop()
        assert not first.is_host
        assert second.wait_host(5)
        assert paths.inbound.exists() and paths.outbound.exists()
    finally:
        first.stop()
        second.stop()


def test_forked_child_does_not_keep_the_hub_lock(rundir: Path) -> None:
    from localsync.channel.hub import LocalHub

    paths = channel_paths("forked", rundir)
    host = LocalHub(paths).start()
    assert host.wait_host(5)
    pid = os.fork()
    if pid == 0:  # child: outlive the host's hub for a while, then vanish
        time.sleep(3)
        os._exit(0)
    successor = LocalHub(paths).start()
    try:
        host.stop()
        # the child inherited the lock file but closed it at fork: the lock is free now
        assert successor.wait_host(2)
    finally:
        successor.stop()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_presence_is_answered_by_transports(rundir: Path) -> None:
    async def scenario() -> None:
        first = ChannelTransport("presence", runtime_dir=rundir)
        assert await first.discover_peers(0.2) is False  # alone
        second = ChannelTransport("presence", runtime_dir=rundir)
        try:
            assert await second.discover_peers(0.2) is False  # first does not sync yet
            first.answers_hello = second.answers_hello = True
            # no receive callback registered: the transport itself answers
            assert await second.discover_peers(2.0) is True
            assert await first.discover_peers(2.0) is True
            assert second.peers_answered >= 1
        finally:
            first.close()
            second.close()

    asyncio.run(scenario())
