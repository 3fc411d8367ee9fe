"""The channel over a real 3-node NATS cluster: processes on different nodes, a node killed
(SIGKILL) mid-stream and restarted, a late joiner, the coordinator and workers on NATS; and,
over NATS, a tcp hub and a local channel, a joiner whose answerer freezes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.channel.test_channel_sync import contents, converge
from tests.channel.test_coordinator import CoordinatorProc, acknowledge, eventually_holds
from tests.channel_procs import Proc
from tests.nats_cluster import NatsCluster, monitor

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

ROWS = 600


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path, nodes=3) as nodes:
        yield nodes


def joined(url: str, channel: str) -> Proc:
    """A sync process on ``channel`` through the node at ``url`` (others found by discovery)."""
    proc = Proc("sync", "--channel", channel, "--hub", url)
    proc.expect("ready", 30)
    return proc


def test_a_node_killed_mid_stream_loses_nothing(
    cluster: NatsCluster, record_property: Callable[[str, object], None]
) -> None:
    procs = [joined(url, "killed-node") for url in cluster.urls]
    try:
        # each process is connected to its own node
        for node in cluster.nodes:
            connections = monitor(node.monitor_port, "connz")["num_connections"]
            assert connections == 1, (node.name, connections)
        writer = procs[0]
        procs[1].send(cmd="set", cells=[["t", "from1", "c", 1]])
        procs[2].send(cmd="set", cells=[["t", "from2", "c", 2]])
        converge(procs)

        # the writer's node dies while it writes (one message per cell), then comes back;
        # then a reader's node, while the writer writes another table
        tables: list[dict] = []
        for killed, table in ((0, "w"), (2, "w2")):
            writer.send(cmd="write_loop", table=table, count=ROWS, pause=0.002)
            writer.expect("writing", 10)
            time.sleep(0.5)
            cluster.kill(killed)
            killed_at = time.monotonic()
            time.sleep(0.5)
            cluster.restart(killed)
            writer.expect("written", 60)
            written_at = time.monotonic()
            converge(procs, 60)
            converged_at = time.monotonic()
            tables = [content[0] for content in contents(procs)]
            lost = [ROWS - len(t.get(table, {})) for t in tables]
            print(
                f"\nNATS node {killed} killed: converged {converged_at - killed_at:.2f} s after "
                f"the kill, {converged_at - written_at:.2f} s after the last write; "
                f"rows lost: {lost}"
            )
            record_property(
                f"node{killed}_converge_after_kill_s", round(converged_at - killed_at, 3)
            )
            record_property(f"node{killed}_rows_lost", lost)
            assert lost == [0, 0, 0]
            assert all(t == tables[0] for t in tables)
            assert all(tables[0][table][f"r{i}"]["c"] == i for i in range(ROWS))
        assert tables[0]["t"] == {"from1": {"c": 1}, "from2": {"c": 2}}
        # the writer and the reader on the killed nodes moved to another node and back
        for proc in (writer, procs[2]):
            stats = proc.ask("stats", "stats")["channel"]
            assert stats["reconnects"] >= 1 and stats["disconnects"] >= 1, stats

        # a process that joins late, on the restarted node, gets everything
        late = joined(cluster.urls[0], "killed-node")
        procs.append(late)
        converge(procs, 30)
        assert contents([late])[0][0] == tables[0]
    finally:
        for proc in procs:
            proc.close()


def test_a_reconnected_synchronizer_resyncs_at_once(tmp_path: Path) -> None:
    """Without anti-entropy, only the resync after the reconnect brings what was published
    while this process had no connection (nobody keeps NATS messages for it)."""
    from localsync import create_mergeable_store
    from localsync.channel.synchronizer import create_channel_synchronizer
    from tests.helpers import eventually, run

    async def main(cluster: NatsCluster) -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        sync_a, sync_b = (
            create_channel_synchronizer(store, "resync", hub=url, anti_entropy_seconds=None)
            for store, url in ((a, cluster.urls[0]), (b, cluster.urls[1]))
        )
        await sync_a.start_sync()
        await sync_b.start_sync()
        try:
            a.set_cell("t", "before", "c", 1)
            await eventually(lambda: b.get_cell("t", "before", "c") == 1, 20)
            cluster.kill(1)  # b's node (the only one b knows: the nodes do not advertise)
            await eventually(lambda: sync_b.get_channel_stats()["disconnects"] >= 1, 20)
            assert not sync_b.hub_answering
            a.set_cell("t", "during", "c", 2)  # (published where b is not subscribed)
            await sync_a.transport.flush()
            cluster.restart(1)
            await eventually(lambda: b.get_cell("t", "during", "c") == 2, 20)
            stats = sync_b.get_channel_stats()
            assert stats["disconnects"] >= 1 and stats["reconnects"] >= 1
            assert a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes()
        finally:
            await sync_a.destroy()
            await sync_b.destroy()

    with NatsCluster(tmp_path, nodes=2, args=("--no_advertise",)) as cluster:
        run(main(cluster))


def test_coordinator_on_nats_persists_and_a_fresh_run_reloads(
    cluster: NatsCluster, rundir: Path
) -> None:
    data = rundir / "data"
    hub = ",".join(cluster.urls)
    coordinator = CoordinatorProc(rundir, data, "persisted", "sqlite", "--hub", hub)
    procs: list[Proc] = []
    try:
        assert coordinator.ready["channel"] == "persisted"
        a = joined(cluster.urls[1], "persisted")
        procs.append(a)
        a.send(cmd="set", cells=[["t", "a", "n", 1], ["t", "a", "o", {"x": [1]}]])
        a.send(cmd="write_loop", table="many", count=300)
        a.expect("written", 30)
        acked = acknowledge(a)
        assert len(acked[0]["many"]) == 300
        assert a.close() == 0
        assert coordinator.terminate() == 0  # SIGTERM: final save, exit 0
        assert Path(coordinator.ready["data"]).exists()

        # nobody on the channel; a fresh coordinator reloads, a late process gets it all
        coordinator = CoordinatorProc(rundir, data, "persisted", "sqlite", "--hub", hub)
        late = joined(cluster.urls[2], "persisted")
        procs.append(late)
        eventually_holds(late, acked)
    finally:
        for proc in procs:
            proc.kill()
        coordinator.kill()


def test_coordinator_rejects_a_malformed_nats_hub(rundir: Path) -> None:
    import subprocess
    import sys

    from tests.channel_procs import ROOT

    result = subprocess.run(
        [
            *(sys.executable, "-m", "localsync.cli", "coordinator", "--channel", "c"),
            *("--data", str(rundir / "d"), "--hub", "nats://a:1,http://b:2"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--hub" in result.stderr and "NATS" in result.stderr


def test_workers_on_a_nats_cluster_converge(cluster: NatsCluster) -> None:
    from tests.workers.test_workers_channel import write_and_read_everyone
    from workers import WorkerPool

    rows = 30
    hub = ",".join(cluster.urls)  # (nats-py picks a node at random for each worker)
    with WorkerPool(
        write_and_read_everyone,
        3,
        channel="nats-workers",
        args=(rows, 30.0),
        channel_options={"hub": hub},
    ) as pool:
        assert pool.join(60)
    assert pool.errors == [], "\n".join(map(str, pool.errors))
    results = pool.results
    assert [r["rows"] for r in results] == [3 * rows] * 3
    assert all(r["others"] == [0, 1, 2] for r in results)
    assert len({json.dumps(r["hashes"]) for r in results}) == 1
    assert all(r["content"] == results[0]["content"] for r in results)


@pytest.fixture(params=["nats", "tcp", "local"])
def where(request: pytest.FixtureRequest, tmp_path: Path, rundir: Path) -> Iterator[dict[str, str]]:
    """Where a channel runs, as create_channel_synchronizer options: one nats-server, a tcp
    hub (``localsync hub``), or the local channels of a runtime folder."""
    if request.param == "nats":
        with NatsCluster(tmp_path, nodes=1) as cluster:
            yield {"hub": cluster.urls[0]}
    elif request.param == "tcp":
        from localsync.channel.hub import TcpHub
        from tests.channel.test_channel_transport import free_port_pair

        address = f"tcp://127.0.0.1:{free_port_pair()}"
        with TcpHub(address):
            yield {"hub": address}
    else:
        yield {"runtime_dir": str(rundir)}


def test_a_joiner_whose_answerer_freezes_gets_everything_from_another(
    where: dict[str, str], record_property: Callable[[str, object], None]
) -> None:
    """A process that answered a joiner and then stops answering (SIGSTOP; it keeps its
    presence lock on a local channel, and a SIGKILLed one on a hub says no goodbye either) is
    probed, taken for gone after PROBE_TIMEOUT_SECONDS, and the joiner pulls from the other
    peer (before: it waited out the 30 s join time-out). Nothing is lost, and the frozen peer
    converges once it resumes."""
    import asyncio
    import os
    import signal

    from prometheus_client import CollectorRegistry, generate_latest

    from localsync import create_mergeable_store
    from localsync.channel.endpoint import PROBE_TIMEOUT_SECONDS
    from localsync.channel.synchronizer import JOIN_REQUEST_TIMEOUT, create_channel_synchronizer
    from localsync.metrics import ChannelCollector
    from tests.helpers import eventually, run

    def registry_of(collector: ChannelCollector) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        return registry

    rows = 20_000
    args = [f"--{key.replace('_', '-')}={value}" for key, value in where.items()]
    peers: dict[str, Proc] = {}
    for _ in range(2):
        proc = Proc("sync", "--channel", "frozen", *args)
        peers[proc.expect("ready", 30)["id"]] = proc
    a, b = peers.values()
    frozen: Proc | None = None
    try:
        for start in range(0, rows, 1000):  # (a command is one line of at most 64 KiB)
            a.send(cmd="set", cells=[["t", f"r{i}", "c", i] for i in range(start, start + 1000)])
        hashes = converge([a, b])

        async def main() -> float:
            nonlocal frozen
            store = create_mergeable_store()
            # (no shared-memory snapshot on a local channel: the pull is what is tested)
            sync = create_channel_synchronizer(store, "frozen", snapshots=False, **where)
            joining = asyncio.ensure_future(sync.start_sync())
            try:
                # freeze the peer the joiner is pulling from, while it owes an answer
                while not joining.done():
                    owed = sync.engine.awaited_peers(0.0) & peers.keys()
                    if owed:
                        frozen = peers[owed.pop()]
                        os.kill(frozen.popen.pid, signal.SIGSTOP)
                        break
                    await asyncio.sleep(0.0005)
                assert frozen is not None, "the joiner never waited for a peer's answer"
                frozen_at = time.monotonic()
                await joining
                await eventually(lambda: len(store.get_row_ids("t")) == rows, 20)
                took = time.monotonic() - frozen_at
                assert list(store.get_mergeable_content_hashes()) == hashes
                assert sync.get_channel_stats()["peers_unanswering"] >= 1
                scraped = generate_latest(registry_of(ChannelCollector(sync))).decode()
                assert 'localsync_channel_peers_unanswering_total{channel="frozen"} 1.0' in scraped
                os.kill(frozen.popen.pid, signal.SIGCONT)
                frozen = None
                store.set_cell("t", "after", "c", 1)  # (reaches both, the resumed one too)
                deadline = time.monotonic() + 20
                for proc in (a, b):
                    while True:
                        content = await asyncio.to_thread(proc.ask, "content", "content")
                        if "after" in content["value"][0]["t"]:
                            break
                        assert time.monotonic() < deadline, "a peer never got the write"
                        await asyncio.sleep(0.05)
                return took
            finally:
                await sync.destroy()

        took = run(main(), timeout=60)
        record_property("recovered_after_freeze_seconds", round(took, 2))
        assert took < JOIN_REQUEST_TIMEOUT / 2, took
        assert took >= PROBE_TIMEOUT_SECONDS * 0.9, took  # (it did wait for the probe)
        converge([a, b])
    finally:
        if frozen is not None:
            os.kill(frozen.popen.pid, signal.SIGCONT)
        for proc in peers.values():
            proc.close()
