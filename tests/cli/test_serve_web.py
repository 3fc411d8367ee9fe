"""``localsync serve``'s HTTP side, as an operator meets it: /healthz, /metrics (Prometheus)
and, with --inspector, the inspector page; a real server process and real clients."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from localsync import create_mergeable_store, create_ws_synchronizer
from tests.ws.test_ws_trust import start_serve, stop_serve


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"] or "", error.read().decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def write_rows(port: int, count: int) -> None:
    store = create_mergeable_store()
    sync = await create_ws_synchronizer(store, f"ws://127.0.0.1:{port}/metrics")
    await sync.start_sync()
    for row in range(count):
        store.set_cell("t", str(row), "n", row)
    await asyncio.sleep(0.3)
    await sync.destroy()


def test_serve_answers_health_metrics_and_the_inspector(tmp_path: Path) -> None:
    proc, port = start_serve(tmp_path / "data", "--inspector", "--no-persist")
    try:
        assert proc.stdout is not None
        assert f"inspector at http://127.0.0.1:{port}/_inspect/" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        status, kind, body = get(base + "/healthz")
        assert (status, kind) == (200, "application/json") and '"status": "ok"' in body
        status, kind, before = get(base + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        received = "localsync_messages_received_total"
        assert samples(before, received) == {(): 0.0}
        # (a room may be called "metrics": only plain GETs go to the page)
        asyncio.run(write_rows(port, 20))
        after = get(base + "/metrics")[2]
        assert samples(after, received)[()] > 0
        status, kind, page = get(base + "/_inspect/")
        assert (status, kind) == (200, "text/html; charset=utf-8") and "<html" in page.lower()
    finally:
        stop_serve(proc)


def test_serve_without_metrics_and_inspector_and_with_a_token(tmp_path: Path) -> None:
    proc, port = start_serve(tmp_path / "data", "--no-metrics", "--token", "s3cret")
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/healthz")[0] == 200  # (probes carry no token)
        assert get(base + "/metrics")[0] == 400  # (not served: a plain GET of a room)
        assert get(base + "/_inspect/")[0] == 400  # (not served: not a room either)
    finally:
        stop_serve(proc)
    proc, port = start_serve(tmp_path / "data", "--token", "s3cret", "--inspector")
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/metrics?token=wrong")[0] == 403
        assert get(base + "/metrics?token=s3cret")[0] == 200
        assert get(base + "/_inspect/")[0] == 401
        assert get(base + "/_inspect/?token=s3cret")[0] == 200
    finally:
        stop_serve(proc)
