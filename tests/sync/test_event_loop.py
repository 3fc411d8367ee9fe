"""localsync.sync.event_loop: which loop the runners get, and channels across both kinds."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.channel.synchronizer import create_channel_synchronizer
from localsync.sync import event_loop
from localsync.sync.blocking import BackgroundLoop, BlockingSynchronizer

pytestmark = pytest.mark.timeout(60)

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _loop_module(loop: asyncio.AbstractEventLoop) -> str:
    return type(loop).__module__.split(".")[0]


def test_uvloop_is_the_default_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    expected = "uvloop" if HAVE_UVLOOP else "asyncio"
    assert event_loop.loop_kind() == expected
    loop = event_loop.new_event_loop()
    try:
        assert _loop_module(loop) == expected
    finally:
        loop.close()


def test_the_environment_forces_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    assert event_loop.loop_kind() == "asyncio"

    async def kind() -> str:
        return _loop_module(asyncio.get_running_loop())

    assert event_loop.run(kind()) == "asyncio"
    with BackgroundLoop() as bg:
        assert _loop_module(bg.loop) == "asyncio"


def test_an_unknown_loop_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    with pytest.raises(ValueError, match="LOCALSYNC_EVENT_LOOP must be"):
        event_loop.new_event_loop()


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed on this platform")
def test_the_background_loop_and_run_use_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "uvloop")

    async def kind() -> str:
        await asyncio.sleep(0)
        return _loop_module(asyncio.get_running_loop())

    assert event_loop.run(kind()) == "uvloop"
    with BackgroundLoop() as bg:
        assert bg.run(kind(), timeout=5) == "uvloop"


def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("not converged in time")
        time.sleep(0.02)


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed on this platform")
def test_a_channel_syncs_between_a_uvloop_and_an_asyncio_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each channel end reads its ZeroMQ socket through its own loop's add_reader."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    ends: list[tuple[Any, BlockingSynchronizer]] = []
    try:
        for kind in ("uvloop", "asyncio"):
            monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, kind)
            store = create_mergeable_store()
            sync = BlockingSynchronizer(
                create_channel_synchronizer, store, "loops", runtime_dir=str(runtime), timeout=20
            )
            assert _loop_module(sync.background_loop.loop) == kind
            sync.start_sync()
            ends.append((store, sync))
        (uv_store, _), (aio_store, _) = ends
        for i in range(50):
            uv_store.set_cell("t", f"u{i}", "n", i)
            aio_store.set_cell("t", f"a{i}", "n", -i)
        _wait_for(
            lambda: (
                uv_store.get_mergeable_content_hashes() == aio_store.get_mergeable_content_hashes()
                and uv_store.get_row_count("t") == 100
            )
        )
        assert uv_store.get_tables() == aio_store.get_tables()
        assert aio_store.get_cell("t", "u49", "n") == 49
        assert uv_store.get_cell("t", "a49", "n") == -49
    finally:
        for _store, sync in ends:
            sync.destroy()
            sync.close()


# -- start_eagerly ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_start_eagerly_runs_in_the_callers_turn_and_carries_on_after_a_wait(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed")
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, kind)
    steps: list[str] = []

    async def at_once() -> None:
        steps.append("at once")

    async def waits(gate: asyncio.Future[int]) -> None:
        steps.append("before")
        await asyncio.sleep(0)  # (a bare yield)
        steps.append(f"got {await gate}")
        try:
            await gate.get_loop().create_future()  # (never set: cancelled below)
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    async def fails_later(gate: asyncio.Future[int]) -> None:
        try:
            await gate
        except KeyError:
            steps.append("caught")

    async def fails_at_once() -> None:
        raise ValueError("before any wait")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert event_loop.start_eagerly(at_once()) is None
        assert steps == ["at once"]  # (done before start_eagerly returned)

        gate: asyncio.Future[int] = loop.create_future()
        task = event_loop.start_eagerly(waits(gate))
        assert task is not None and steps[-1] == "before"
        await asyncio.sleep(0.01)
        assert steps[-1] == "before"  # (still waiting for the gate)
        gate.set_result(7)
        await asyncio.sleep(0.01)
        assert steps[-1] == "got 7" and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert steps[-1] == "cancelled" and task.cancelled()

        failing: asyncio.Future[int] = loop.create_future()
        later = event_loop.start_eagerly(fails_later(failing))
        assert later is not None
        failing.set_exception(KeyError("x"))
        await later
        assert steps[-1] == "caught"

        with pytest.raises(ValueError, match="before any wait"):
            event_loop.start_eagerly(fails_at_once())

    event_loop.run(main())
