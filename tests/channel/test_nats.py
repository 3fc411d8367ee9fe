"""The channel over one real nats-server: in one process, across processes, bad URLs, garbage."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.channel.nats import (
    NatsOptions,
    NatsTransport,
    is_nats_hub,
    nats_options,
    subject_prefix,
    subject_token,
)
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.errors import ChannelError
from tests.channel.test_channel_sync import contents, converge
from tests.channel_procs import Proc
from tests.helpers import eventually, run
from tests.nats_cluster import NatsCluster, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with NatsCluster(tmp_path, nodes=1) as server:
        yield server.url


def same(*stores: object) -> bool:
    hashes = [store.get_mergeable_content_hashes() for store in stores]  # type: ignore[attr-defined]
    return all(h == hashes[0] for h in hashes)


def test_subject_names_are_one_escaped_token() -> None:
    assert subject_token("orders") == "orders"
    assert subject_token("a.b c*>%") == "a%2Eb%20c%2A%3E%25"
    assert subject_token("é") == "%C3%A9"
    assert subject_token("a.b") != subject_token("a%2Eb")  # (escaping is injective)
    assert subject_prefix("x.y") == "localsync.x%2Ey"
    transport = NatsTransport("my.channel", "nats://127.0.0.1:1", client_id="A" * 16)
    assert transport.broadcast_subject == "localsync.my%2Echannel.all"
    assert transport.own_subject == "localsync.my%2Echannel.to." + "A" * 16
    assert transport.ack_subject == "localsync.my%2Echannel.ack"


def test_hub_forms() -> None:
    assert is_nats_hub("nats://h:4222") and is_nats_hub("tls://h:4222")
    assert is_nats_hub(["nats://a:1", "nats://b:2"])
    assert is_nats_hub({"servers": "nats://a:1", "user": "u"})
    assert is_nats_hub(NatsOptions("nats://a:1"))
    assert not is_nats_hub("tcp://h:7700") and not is_nats_hub(None) and not is_nats_hub([])
    assert nats_options("nats://a:1,nats://b:2").urls() == ["nats://a:1", "nats://b:2"]
    options = nats_options({"servers": ["nats://a:1"], "user": "u", "password": "p"})
    assert options.urls() == ["nats://a:1"] and dict(options.connect) == {
        "user": "u",
        "password": "p",
    }
    with pytest.raises(ValueError):
        nats_options(["nats://a:1", "http://b"])
    with pytest.raises(ValueError):
        create_channel_synchronizer(create_mergeable_store(), "c", hub=[1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        create_channel_synchronizer(
            create_mergeable_store(), "c", hub="nats://a:1", runtime_dir="/tmp"
        )


def test_two_synchronizers_in_one_process_converge(nats_url: str) -> None:
    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        a.set_cell("t", "before", "c", 1)
        sync_a = await create_channel_synchronizer(a, "one.process", hub=nats_url).start_sync()
        sync_b = await create_channel_synchronizer(b, "one.process", hub=[nats_url]).start_sync()
        try:
            await eventually(lambda: same(a, b), 20)
            b.set_cell("t", "r", "c", "from b")
            await eventually(lambda: a.get_cell("t", "r", "c") == "from b", 20)
            # one transaction bigger than the server's max_payload (1 MiB): sent in chunks
            with a.transaction():
                for i in range(20_000):
                    a.set_cell("big", f"r{i}", "c", "x" * 80)
            await eventually(lambda: same(a, b), 30)
            assert b.get_content() == a.get_content()
            assert len(b.get_row_ids("big")) == 20_000
            assert sync_a.get_channel_stats()["chunked"] >= 1
            assert sync_b.get_channel_stats()["ignored"] == 0
            # a late joiner receives the whole content (a diff above max_payload) in chunks
            c = create_mergeable_store()
            sync_c = await create_channel_synchronizer(c, "one.process", hub=nats_url).start_sync()
            try:
                await eventually(lambda: same(a, c), 30)
                assert c.get_content() == a.get_content()
                assert sync_c.get_channel_stats()["ignored"] == 0
            finally:
                await sync_c.destroy()
        finally:
            await sync_a.destroy()
            await sync_b.destroy()

    run(main())


def test_two_processes_converge(nats_url: str) -> None:
    procs = [Proc("sync", "--channel", "two-procs", "--hub", nats_url) for _ in range(2)]
    try:
        for p in procs:
            p.expect("ready", 30)
        procs[0].send(cmd="set", cells=[["t", "r0", "c", 0], ["t", "r1", "c", "one"]])
        procs[1].send(cmd="write_loop", table="w", count=300)
        procs[1].expect("written", 30)
        converge(procs)
        first, second = contents(procs)
        assert first == second
        assert first[0]["t"]["r1"]["c"] == "one" and len(first[0]["w"]) == 300
    finally:
        for p in procs:
            p.close()


def test_a_url_nobody_answers_fails_start_sync_in_bounded_time() -> None:
    async def attempt(hub: str) -> tuple[ChannelError, float]:
        sync = create_channel_synchronizer(
            create_mergeable_store(), "nobody", hub=hub, connect_timeout_seconds=1.0
        )
        started = time.monotonic()
        with pytest.raises(ChannelError) as caught:
            await sync.start_sync()
        elapsed = time.monotonic() - started
        await sync.destroy()
        return caught.value, elapsed

    error, elapsed = run(attempt(f"nats://127.0.0.1:{free_port()}"))
    assert "no NATS server answered" in str(error) and "Refused" in str(error)
    assert elapsed < 20  # (bounded: connect_timeout_seconds, whatever the load)

    # a port that accepts connections but never speaks NATS
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        error, elapsed = run(attempt(f"nats://127.0.0.1:{silent.getsockname()[1]}"))
    assert "no NATS server answered" in str(error)
    assert elapsed < 20


async def sync_then_refuse(hubs: tuple[Any, Any], refused_hub: Any, reason: str) -> None:
    """Two synchronizers joined through ``hubs`` pass a cell; one through ``refused_hub`` fails
    ``start_sync`` with a ChannelError naming ``reason``."""
    a, b = create_mergeable_store(), create_mergeable_store()
    sync_a = await create_channel_synchronizer(a, "opts", hub=hubs[0]).start_sync()
    sync_b = await create_channel_synchronizer(b, "opts", hub=hubs[1]).start_sync()
    try:
        a.set_cell("t", "r", "c", "passed")
        await eventually(lambda: b.get_cell("t", "r", "c") == "passed", 20)
    finally:
        await sync_a.destroy()
        await sync_b.destroy()
    refused = create_channel_synchronizer(
        create_mergeable_store(), "opts", hub=refused_hub, connect_timeout_seconds=1.0
    )
    with pytest.raises(ChannelError, match=reason):
        await refused.start_sync()
    await refused.destroy()


def test_credentials_go_to_the_connection(tmp_path: Path) -> None:
    """A server that wants a user: the options dict passes them; without, a clear error."""
    with NatsCluster(tmp_path, nodes=1, args=("--user", "ada", "--pass", "s3cret")) as server:
        hubs = (
            {"servers": [server.url], "user": "ada", "password": "s3cret"},
            NatsOptions(server.url, {"user": "ada", "password": "s3cret"}),
        )
        wrong = {"servers": server.url, "user": "ada", "password": "wrong"}
        run(sync_then_refuse(hubs, wrong, r"(?i)authorization"))


def test_tls_context_goes_to_the_connection(tmp_path: Path) -> None:
    """A TLS-only server with a self-signed certificate: joined with an ``ssl.SSLContext``."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl (to make a test certificate) not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls_args = ("--tls", "--tlscert", str(cert), "--tlskey", str(key))
    with NatsCluster(tmp_path, nodes=1, args=tls_args) as server:
        url = server.url.replace("nats://", "tls://")
        hub = {"servers": url, "tls": ssl.create_default_context(cafile=str(cert))}
        # without the certificate authority the server is not trusted
        untrusted = {"servers": url, "tls": ssl.create_default_context()}
        run(sync_then_refuse((hub, hub), untrusted, r"(?i)certificate"))


def test_garbage_on_the_subjects_is_ignored_and_counted(nats_url: str) -> None:
    import nats

    async def main() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        errors: list[BaseException] = []
        sync_a = create_channel_synchronizer(a, "garbage", None, None, errors.append, hub=nats_url)
        await sync_a.start_sync()
        sync_b = await create_channel_synchronizer(b, "garbage", hub=nats_url).start_sync()
        transport = sync_a.transport
        assert isinstance(transport, NatsTransport)
        acked = asyncio.ensure_future(sync_a.wait_acknowledged(30))  # (subscribes to acks)
        raw = await nats.connect(nats_url)
        try:
            await eventually(lambda: transport._acks_subscribed, 10)
            await raw.flush()
            garbage = [
                (transport.broadcast_subject, b""),
                (transport.broadcast_subject, b"\xc1\xc1 not msgpack"),
                (transport.broadcast_subject, b"\x93\x01\x02\x03"),  # (wrong shape)
                (transport.own_subject, b"\x00Zunknown control"),
                (transport.own_subject, b"\x00Ftruncated chunk"),
                (transport.own_subject, b"\x00F" + b"X" * 16 + bytes(12)),  # (0 chunks)
                (transport.ack_subject, b"\x01\x02"),
            ]
            for subject, payload in garbage:
                await raw.publish(subject, payload)
            await raw.flush()
            await eventually(lambda: transport.stats["ignored"] >= len(garbage), 10)
            assert transport.stats["ignored"] == len(garbage)
            # (reported through on_ignored_error too, beside the engine's own reports)
            assert len([e for e in errors if isinstance(e, ValueError)]) == len(garbage)
            # still syncing both ways
            a.set_cell("t", "r", "c", "after garbage")
            b.set_cell("t", "r2", "c", "from b")
            await eventually(lambda: same(a, b) and b.get_cell("t", "r", "c") is not None, 20)
        finally:
            acked.cancel()
            await raw.close()
            await sync_a.destroy()
            await sync_b.destroy()

    run(main())


def test_channels_on_one_shared_connection(nats_url: str) -> None:
    """Several channels (and participants) on one nats-py connection owned by the caller."""
    import nats

    async def main() -> None:
        connection = await nats.connect(nats_url)
        shared = NatsOptions(connection=connection)
        stores = [create_mergeable_store() for _ in range(4)]
        hubs: list[Any] = [shared, shared, nats_url, shared]
        names = ["one", "one", "one", "two"]
        syncs = [
            await create_channel_synchronizer(store, name, hub=hub).start_sync()
            for store, name, hub in zip(stores, names, hubs, strict=True)
        ]
        try:
            stores[0].set_cell("t", "r", "c", "from 0")
            stores[2].set_cell("t", "r2", "c", "from 2")
            with stores[1].transaction():  # (big: its chunks echo back to the connection)
                for i in range(20_000):
                    stores[1].set_cell("big", f"r{i}", "c", "x" * 80)
            await eventually(lambda: same(*stores[:3]), 30)
            assert stores[2].get_cell("t", "r", "c") == "from 0"
            assert len(stores[0].get_row_ids("big")) == 20_000
            assert stores[3].get_tables() == {}  # (another channel)
            # own messages come back on the shared connection and are dropped, not merged
            assert syncs[0].get_channel_stats()["own_dropped"] > 0
            assert all(sync.get_channel_stats()["ignored"] == 0 for sync in syncs)
            await syncs[0].destroy()  # leaves the connection to the others
            assert connection.is_connected
            stores[1].set_cell("t", "after", "c", 1)
            await eventually(lambda: stores[2].get_cell("t", "after", "c") == 1, 20)
        finally:
            for sync in syncs:
                await sync.destroy()
            await connection.close()

    run(main())


def test_channels_with_different_names_do_not_mix(nats_url: str) -> None:
    async def main() -> None:
        stores = [create_mergeable_store() for _ in range(3)]
        names = ["left", "left", "left.right"]  # ("left.right" is not a sub-subject of "left")
        syncs = [
            await create_channel_synchronizer(store, name, hub=nats_url).start_sync()
            for store, name in zip(stores, names, strict=True)
        ]
        try:
            stores[0].set_cell("t", "r", "c", "left")
            stores[2].set_cell("t", "r", "c", "left.right")
            await eventually(lambda: stores[1].get_cell("t", "r", "c") == "left", 20)
            await asyncio.sleep(1.5)  # (anti-entropy rounds that would leak, if anything did)
            assert stores[2].get_cell("t", "r", "c") == "left.right"
            assert stores[0].get_cell("t", "r", "c") == "left"
        finally:
            for sync in syncs:
                await sync.destroy()

    run(main())


def test_blocking_facade_and_threads(nats_url: str) -> None:
    """Writes from another thread reach a peer (the transport queues on its loop)."""
    from localsync.sync.blocking import blocking

    a, b = create_mergeable_store(), create_mergeable_store()
    with (
        blocking(create_channel_synchronizer, a, "threads", hub=nats_url),
        blocking(create_channel_synchronizer, b, "threads", hub=nats_url),
    ):
        writer = threading.Thread(
            target=lambda: [a.set_cell("t", f"r{i}", "c", i) for i in range(200)]
        )
        writer.start()
        writer.join()
        deadline = time.monotonic() + 20
        while not same(a, b) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.get_content() == a.get_content()
        assert len(b.get_row_ids("t")) == 200
