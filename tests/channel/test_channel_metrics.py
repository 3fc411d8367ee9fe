"""serve_metrics: a channel participant's counters on its own port, scraped over HTTP and parsed
with prometheus_client's parser while two real channel synchronizers sync."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localsync import create_mergeable_store
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.metrics import CONTENT_TYPE, serve_metrics
from localsync.persisters.file import create_file_persister
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_channel_participants_serve_their_metrics(rundir: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = create_mergeable_store(), create_mergeable_store()
        persister = create_file_persister(a, tmp_path / "a.json")
        await persister.start_auto_save()
        sync_a = create_channel_synchronizer(a, "metered", runtime_dir=rundir)
        sync_b = create_channel_synchronizer(b, "metered", runtime_dir=rundir)
        await sync_a.start_sync()
        await sync_b.start_sync()
        with (
            serve_metrics(sync_a, persister=persister) as handle_a,
            serve_metrics(sync_b) as handle_b,
        ):
            assert handle_a.port != handle_b.port
            label = {"channel": "metered"}
            before_a = await asyncio.to_thread(scrape, handle_a.url)
            before_b = await asyncio.to_thread(scrape, handle_b.url)
            for i in range(5):
                a.set_cell("t", str(i), "c", i)
            await eventually(lambda: b.get_row_ids("t") == [str(i) for i in range(5)], 20)

            def moved() -> bool:
                after_a, after_b = scrape(handle_a.url), scrape(handle_b.url)
                return (
                    value(after_a, "localsync_channel_messages_sent_total", **label)
                    > value(before_a, "localsync_channel_messages_sent_total", **label)
                    and value(after_a, "localsync_sync_saves_total", **label)
                    > value(before_a, "localsync_sync_saves_total", **label)
                    and value(after_b, "localsync_channel_messages_received_total", **label)
                    > value(before_b, "localsync_channel_messages_received_total", **label)
                    and value(after_b, "localsync_sync_receives_total", **label)
                    > value(before_b, "localsync_sync_receives_total", **label)
                    and value(after_a, "localsync_persister_saves_total", **label) >= 2
                    and value(after_a, "localsync_persister_unsaved_seconds", **label) == 0
                    and value(after_a, "localsync_sync_unsaved_seconds", **label) == 0
                )

            async def until_moved() -> None:
                while not await asyncio.to_thread(moved):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(until_moved(), 20)
            final = await asyncio.to_thread(scrape, handle_a.url)
            assert value(final, "localsync_sync_save_failures_total", **label) == 0
            assert value(final, "localsync_channel_ignored_total", reason="invalid", **label) == 0
            assert value(final, "localsync_channel_peers_unanswering_total", **label) == 0
            # b has no persister of its own: only the synchronizer's series
            assert not any(
                name.startswith("localsync_persister_")
                for name, _ in await asyncio.to_thread(scrape, handle_b.url)
            )
        # closed: the port no longer answers
        with pytest.raises(OSError):
            await asyncio.to_thread(urllib.request.urlopen, handle_a.url, None, 2)
        await sync_a.destroy()
        await sync_b.destroy()
        await persister.destroy()

    asyncio.run(scenario())
