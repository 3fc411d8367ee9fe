"""The background-loop half of the blocking facade (no store involved)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from localsync.sync.blocking import BackgroundLoop, run_coroutine

pytestmark = pytest.mark.timeout(30)


def test_run_returns_result_from_the_loop_thread() -> None:
    with BackgroundLoop() as bg:

        async def where() -> str:
            await asyncio.sleep(0)
            return threading.current_thread().name

        assert bg.run(where(), timeout=5) == bg.thread.name
        assert bg.call(lambda a, b: a + b, 2, 3, timeout=5) == 5
    assert not bg.thread.is_alive()


def test_exceptions_propagate_and_timeouts_raise() -> None:
    with BackgroundLoop() as bg:

        async def boom() -> None:
            raise ValueError("x")

        with pytest.raises(ValueError, match="x"):
            bg.run(boom(), timeout=5)
        with pytest.raises(TimeoutError):
            bg.run(asyncio.sleep(10), timeout=0.05)
        # the loop is still usable after a time-out
        assert bg.call(lambda: 7, timeout=5) == 7


def test_closed_loop_refuses_work() -> None:
    bg = BackgroundLoop()
    bg.close()
    with pytest.raises(RuntimeError):
        bg.run(asyncio.sleep(0))


def test_shared_run_coroutine() -> None:
    async def double(x: int) -> int:
        return 2 * x

    assert run_coroutine(double(21), timeout=5) == 42
