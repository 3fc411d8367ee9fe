"""tcp:// hubs with CURVE keys: encrypted, and only participants holding the right keys join."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from localsync import create_mergeable_store
from localsync.channel.hub import TcpHub, generate_keys, load_public_key
from localsync.channel.synchronizer import ChannelError, create_channel_synchronizer
from tests.channel.test_channel_api import until
from tests.channel.test_channel_transport import free_port_pair

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for name in ("hub", "alice", "bob"):
        generate_keys(folder, name)
    (folder / "allowed").mkdir()
    for name in ("alice", "bob"):  # only the public halves are admitted
        (folder / "allowed" / f"{name}.key").write_bytes((folder / f"{name}.key").read_bytes())
    return folder


async def converge_two(address: str, a_keys: dict, b_keys: dict) -> None:
    a, b = create_mergeable_store(), create_mergeable_store()
    sync_a = create_channel_synchronizer(a, "net", hub=address, **a_keys)
    sync_b = create_channel_synchronizer(b, "net", hub=address, **b_keys)
    await sync_a.start_sync()
    await sync_b.start_sync()
    try:
        a.set_cell("t", "r", "c", "secret over tcp")
        b.set_value("v", 42)
        await until(lambda: b.has_cell("t", "r", "c") and a.has_value("v"))
        assert a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
    finally:
        await sync_a.destroy()
        await sync_b.destroy()


async def refused(address: str, **keys: object) -> None:
    store = create_mergeable_store()
    sync = create_channel_synchronizer(
        store, "net", hub=address, connect_timeout_seconds=1.0, **keys
    )
    try:
        # (the message names the key at fault, see test_channel_trust)
        with pytest.raises(ChannelError, match=r"hub_key|client_key"):
            await sync.start_sync()
    finally:
        await sync.destroy()


def test_keys_on_disk(keys: Path) -> None:
    secret = keys / "hub.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    text = load_public_key(keys / "hub.key").decode()
    assert len(text) == 40 and load_public_key(text) == text.encode()
    with pytest.raises(ValueError, match="Z85"):
        load_public_key("#" * 40)
    with pytest.raises(ValueError, match="secret"):
        create_channel_synchronizer(
            create_mergeable_store(),
            "net",
            hub="tcp://127.0.0.1:7700",
            hub_key=keys / "hub.key",
            client_key=keys / "alice.key",  # the public half: no secret in it
        )
    with pytest.raises(ValueError, match="tcp"):
        create_channel_synchronizer(create_mergeable_store(), "net", hub_key=keys / "hub.key")


def test_keyed_hub_admits_clients_that_know_its_key_and_no_others(keys: Path) -> None:
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    hub_key = keys / "hub.key"

    async def scenario() -> None:
        # throw-away client keys are fine when the hub has no --allow list
        await converge_two(address, {"hub_key": hub_key}, {"hub_key": str(hub_key)})
        await refused(address)  # plain TCP: the handshake never completes
        await refused(address, hub_key=keys / "alice.key")  # not the hub's key

    with TcpHub(address, secret_key=keys / "hub.key_secret"):
        asyncio.run(scenario())


def test_allow_list_admits_only_listed_clients(keys: Path) -> None:
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    hub_key = load_public_key(keys / "hub.key").decode()

    async def scenario() -> None:
        await converge_two(
            address,
            {"hub_key": hub_key, "client_key": keys / "alice.key_secret"},
            {"hub_key": hub_key, "client_key": keys / "bob.key_secret"},
        )
        await refused(address, hub_key=hub_key)  # a throw-away key is not on the list
        await refused(address, hub_key=hub_key, client_key=keys / "hub.key_secret")

    with TcpHub(address, secret_key=keys / "hub.key_secret", allow=keys / "allowed"):
        asyncio.run(scenario())


def test_localsync_hub_command_with_keys(keys: Path, tmp_path: Path) -> None:
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "hub",
            "--keygen",
            str(tmp_path / "k"),
            "--name",
            "carol",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert (tmp_path / "k" / "carol.key_secret").exists() and "public key" in made.stdout
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "hub",
            "--bind",
            address,
            "--secret-key",
            str(keys / "hub.key_secret"),
            "--allow",
            str(keys / "allowed"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hub.stdout is not None
        line = hub.stdout.readline()
        assert "CURVE key " + load_public_key(keys / "hub.key").decode() in line
        asyncio.run(
            converge_two(
                address,
                {"hub_key": keys / "hub.key", "client_key": keys / "alice.key_secret"},
                {"hub_key": keys / "hub.key", "client_key": keys / "bob.key_secret"},
            )
        )
        asyncio.run(
            refused(
                address, hub_key=keys / "hub.key", client_key=tmp_path / "k" / "carol.key_secret"
            )
        )
    finally:
        hub.terminate()
        assert hub.wait(10) == 0
        if hub.stdout is not None:
            hub.stdout.close()
    bad = subprocess.run(
        [sys.executable, "-m", "localsync.cli", "hub", "--bind", address, "--allow", str(keys)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "secret_key" in bad.stderr  # (localsync hub: error: ...)


def test_a_keyed_hub_that_cannot_bind_leaves_no_authenticator_behind(keys: Path) -> None:
    import socket
    import threading

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = set(threading.enumerate())
        hub = TcpHub(f"tcp://127.0.0.1:{port}", secret_key=keys / "hub.key_secret", allow=keys)
        with pytest.raises(Exception, match="in use"):
            hub.start()
        assert set(threading.enumerate()) <= before
