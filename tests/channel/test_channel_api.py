"""The channel synchronizer and the coordinator, in one process (one event loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store, create_store
from localsync.channel.coordinator import Coordinator, data_file
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.persisters.sqlite import create_sqlite_persister
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    await eventually(predicate, timeout)


def test_two_stores_sync_and_extras(rundir: Path) -> None:
    async def scenario() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sent: list[tuple[Any, ...]] = []
        sync_a = create_channel_synchronizer(
            a, "api", lambda *args: sent.append(args), runtime_dir=rundir
        )
        async with create_channel_synchronizer(b, "api", runtime_dir=rundir) as sync_b:
            # after the joining exchange both use the syncing time-out
            assert sync_b.engine.request_timeout_seconds == 2.0
            assert await sync_a.start_sync() is sync_a
            assert sync_a.engine.request_timeout_seconds == 2.0
            assert sync_a.get_channel_name() == "api"
            assert sync_a.client_id != sync_b.client_id
            assert [sync_a.is_hub_host, sync_b.is_hub_host].count(True) == 1
            a.set_cell("t", "r", "c", {"nested": [1, "x"]})
            b.set_value("v", 2.5)
            await until(lambda: a.get_content() == b.get_content() and a.has_value("v"))
            assert b.get_cell("t", "r", "c") == {"nested": [1, "x"]}
            assert a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
            assert sync_a.get_synchronizer_stats()["sends"] > 0
            assert sync_a.get_channel_stats()["sent"] == len(sent)
            await sync_a.destroy()
            # b keeps working alone (it may have become the hub host now)
            b.set_cell("t", "r2", "c", 1)

    asyncio.run(scenario())


def test_channel_synchronizer_needs_a_mergeable_store(rundir: Path) -> None:
    with pytest.raises(TypeError):
        create_channel_synchronizer(create_store(), "x", runtime_dir=rundir)
    with pytest.raises(ValueError):
        create_channel_synchronizer(create_mergeable_store(), "", runtime_dir=rundir)


def test_coordinator_saves_acknowledges_and_reloads(rundir: Path) -> None:
    async def scenario() -> None:
        data = rundir / "data"
        coordinator = await Coordinator("orders", data, runtime_dir=rundir).start()
        store = create_mergeable_store()
        sync = create_channel_synchronizer(store, "orders", runtime_dir=rundir)
        await sync.start_sync()
        store.set_row("t", "r", {"a": 1, "b": "x"})
        await sync.wait_acknowledged(20)
        assert coordinator.saved_hashes == tuple(store.get_mergeable_content_hashes())
        assert await coordinator.wait_saved(5) == coordinator.saved_hashes
        await sync.destroy()
        await coordinator.stop()
        again = await Coordinator("orders", data, runtime_dir=rundir).start()
        try:
            assert again.store.get_content() == store.get_content()
            assert again.store.get_mergeable_content() == store.get_mergeable_content()
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_sync_through_a_tcp_hub() -> None:
    from localsync.channel.hub import TcpHub
    from tests.channel.test_channel_transport import free_port_pair

    port = free_port_pair()

    async def scenario() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        address = f"tcp://127.0.0.1:{port}"
        sync_a = create_channel_synchronizer(a, "net", hub=address)
        sync_b = create_channel_synchronizer(b, "net", hub=address)
        await sync_a.start_sync()
        await sync_b.start_sync()
        try:
            assert not sync_a.is_hub_host and not sync_b.is_hub_host
            a.set_cell("t", "r", "c", "over tcp")
            b.set_value("v", True)
            await until(lambda: b.has_cell("t", "r", "c") and a.has_value("v"))
            assert a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
        finally:
            await sync_a.destroy()
            await sync_b.destroy()

    with TcpHub(f"tcp://127.0.0.1:{port}"):
        asyncio.run(scenario())


def test_blocking_facade_without_asyncio(rundir: Path) -> None:
    from localsync.sync.blocking import blocking

    a, b = create_mergeable_store(), create_mergeable_store()
    with (
        blocking(create_channel_synchronizer, a, "plain", runtime_dir=rundir, timeout=20),
        blocking(create_channel_synchronizer, b, "plain", runtime_dir=rundir, timeout=20),
    ):
        a.set_row("t", "r", {"n": 1})  # a plain call on this (non-loop) thread
        deadline = time.monotonic() + 10
        while b.get_row("t", "r") != {"n": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_acknowledged_while_another_process_keeps_writing(rundir: Path) -> None:
    async def scenario() -> None:
        data = rundir / "data"
        coordinator = await Coordinator("busy", data, runtime_dir=rundir).start()
        busy, leaving = create_mergeable_store(), create_mergeable_store()
        sync_busy = create_channel_synchronizer(busy, "busy", runtime_dir=rundir)
        sync_leaving = create_channel_synchronizer(leaving, "busy", runtime_dir=rundir)
        await sync_busy.start_sync()
        await sync_leaving.start_sync()
        stop = asyncio.Event()

        async def keep_writing() -> int:
            n = 0
            while not stop.is_set():
                busy.set_cell("busy", f"r{n}", "n", n)
                n += 1
                await asyncio.sleep(0.002)
            return n

        writer = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.2)
        leaving.set_row("mine", "r", {"v": "keep me"})
        mine = leaving.get_mergeable_content()[0][0]["mine"]
        await sync_leaving.wait_acknowledged(20)
        assert not writer.done()  # acknowledged while the other store never went quiet
        stop.set()
        await writer
        await sync_leaving.destroy()
        await sync_busy.destroy()
        # read the coordinator's database while it still runs (no final save has happened):
        # the acknowledged row is on disk
        check = create_mergeable_store()
        persister = create_sqlite_persister(check, str(data_file("busy", data)))
        await persister.load()
        try:
            assert check.get_mergeable_content()[0][0]["mine"] == mine
        finally:
            await persister.destroy()
            await coordinator.stop()

    asyncio.run(scenario())
