"""``localsync inspect --web CHANNEL`` as a real process: it joins the channel, serves the
inspector page following the channel's store, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from localsync import create_mergeable_store
from localsync.channel.synchronizer import create_channel_synchronizer
from tests.cli.test_cli import assert_usage_error, cli
from tests.helpers import eventually, run
from tests.ws.test_inspector import Page, cells_of, view_of

ROOT = Path(__file__).resolve().parents[2]


def _start(runtime: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCALSYNC_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localsync.cli", "inspect", "--web", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://\S+", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.communicate()}")
    return proc, found.group(0)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


async def _open(url: str) -> Page:
    """The page's socket for the page at ``url``."""
    socket_url = url.replace("http://", "ws://").replace("/_inspect/", "/_inspect/socket")
    return Page(await connect(socket_url, open_timeout=10))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_channel_page_follows_the_channel_and_edits_reach_it(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    store = create_mergeable_store()
    store.set_cell("pets", "fido", "species", "dog")

    async def scenario(url: str) -> None:
        async with create_channel_synchronizer(store, "pets", runtime_dir=runtime) as sync:
            await sync.start_sync()
            assert await asyncio.to_thread(_status, url) == 200
            page = await _open(url)
            await page.wait(lambda: bool(page.of("rooms")))
            assert page.messages[0]["mode"] == "store"
            assert [r["id"] for r in page.of("rooms")[0]["rooms"]] == ["pets"]
            await page.send({"type": "watch", "room": "pets"})
            # the channel's data reaches the page (in its snapshot, or pulled after it)
            await page.wait(lambda: view_of(page, "pets") == {"pets": {"fido": {"species": "dog"}}})
            store.set_cell("pets", "rex", "species", "cat")
            await page.wait(lambda: ["pets", "rex", "species", "cat"] in cells_of(page))
            edit = {"type": "set_cell", "table": "pets", "row": "rex", "cell": "legs", "value": 4}
            await page.send(edit)
            await eventually(lambda: store.get_cell("pets", "rex", "legs") == 4, 30)
            assert "sends" in page.of("stats")[-1]["stats"]
            await page.close()
            # the page's server serves the page only, not rooms
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    url.split("/_inspect/")[0].replace("http", "ws") + "/room", open_timeout=10
                )
            assert refused.value.response.status_code == 403

    proc, url = _start(runtime, "pets", "--port", "0")
    try:
        assert url.endswith("/_inspect/")
        run(scenario(url), timeout=120)
    finally:
        code, out, err = _stop(proc)
    assert code == 0, err
    assert "stopped" in out


def test_channel_page_with_a_token(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc, url = _start(runtime, "tok", "--token", "a b")
    try:
        assert url.endswith("/_inspect/?token=a%20b")
        assert _status(url) == 200
        assert _status(url.split("?")[0]) == 401
    finally:
        code, out, err = _stop(proc, signal.SIGINT)  # (Ctrl-C)
    assert code == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_bad_channel_name_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCALSYNC_RUNTIME_DIR": str(tmp_path)}
    result = cli("inspect", "--web", "", cwd=tmp_path, env=env)
    assert assert_usage_error(result, "inspect").startswith("channel:")


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_file_page_follows_the_file_read_only(tmp_path: Path, kind: str) -> None:
    from localsync.persisters.file import create_file_persister
    from localsync.persisters.sqlite import create_sqlite_persister

    target = tmp_path / ("store.json" if kind == "file" else "store.sqlite")
    writer = create_mergeable_store()
    create = create_file_persister if kind == "file" else create_sqlite_persister
    persister = create(writer, str(target))
    writer.set_row("pets", "fido", {"species": "dog"})
    run(persister.save())

    async def scenario(url: str) -> None:
        page = await _open(url)
        await page.wait(lambda: bool(page.messages))
        assert page.messages[0]["read_only"] is True
        assert page.messages[0]["title"] == f"file {target}"
        await page.send({"type": "watch", "room": target.name})
        await page.wait(lambda: bool(page.of("snapshot")))
        assert page.of("snapshot")[0]["tables"] == {"pets": {"fido": {"species": "dog"}}}
        # another process writes the file: the page follows
        writer.set_cell("pets", "rex", "species", "cat")
        await persister.save()
        await page.wait(lambda: ["pets", "rex", "species", "cat"] in cells_of(page))
        # the page cannot write it
        before = target.read_bytes()
        await page.send(
            {"type": "set_cell", "table": "pets", "row": "rex", "cell": "x", "value": 1}
        )
        await page.wait(lambda: bool(page.of("error")))
        assert page.of("error")[0]["message"] == "read-only"
        assert target.read_bytes() == before
        await page.close()

    proc, url = _start(tmp_path, str(target))
    try:
        run(scenario(url), timeout=120)
    finally:
        code, out, err = _stop(proc)
        run(persister.destroy())
    assert code == 0, err
    assert "stopped" in out


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    target = tmp_path / "broken.json"
    target.write_text("{not json", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = cli("inspect", "--web", str(target), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"localsync inspect: {target}: unreadable: ")
    assert "Traceback" not in result.stderr
