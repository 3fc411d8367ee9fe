"""A WebSocket synchronizer that cannot open says why, once (issue 18, item 6).

The defects were output noise and lost causes, so each scenario runs in a real subprocess
and the test reads exactly what it printed: ``ConnectionError: could not open ...: None``,
"Task exception was never retrieved" at exit, a warning per retry. Sockets are real: a port
bound but not listening refuses every connection, and a TCP server that counts and drops
connections counts the attempts independently of the synchronizer.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localsync import create_mergeable_store, create_ws_synchronizer

ROOT = Path(__file__).resolve().parents[2]

_OPEN = """
import asyncio, sys
from localsync import create_mergeable_store, create_ws_synchronizer

async def main(url):
    try:
        sync = create_ws_synchronizer(create_mergeable_store(), url, open_timeout=1)
    except Exception as error:
        print(f"create raised {type(error).__name__}: {error}")
        print(f"cause {type(error.__cause__).__name__}")
        return
    try:
        await sync
    except Exception as error:
        print(f"await raised {type(error).__name__}: {error}")
        print(f"cause {type(error.__cause__).__name__}")
    else:
        print("opened")
        await sync.destroy()

asyncio.run(main(sys.argv[1]))
"""


def _run(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _OPEN, url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8048/room", "scheme isn't ws or wss"),
        ("not a url", "scheme isn't ws or wss"),
        ("ws://127.0.0.1:99999/room", "Port out of range 0-65535"),
    ],
)
def test_invalid_url_is_a_value_error_at_once_and_silent(url: str, why: str) -> None:
    result = _run(url)
    assert result.returncode == 0, result.stderr
    # raised by the call itself, before anything was tried, with the reason
    assert result.stdout.splitlines() == [
        f"create raised ValueError: invalid WebSocket URL {url!r}: {why}",
        f"cause {'InvalidURI' if 'scheme' in why else 'ValueError'}",
    ]
    assert result.stderr == ""  # no "Task exception was never retrieved"


def test_refused_connection_names_the_cause_without_noise() -> None:
    with socket.socket() as bound:  # bound, never listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{bound.getsockname()[1]}/room"
        result = _run(url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"await raised ConnectionError: could not open {url}: [Errno 111] Connection refused",
        "cause ConnectionRefusedError",
    ]
    # no warning per retry (the raised error carries the cause), no unretrieved task
    assert result.stderr == ""


def test_on_ignored_error_hears_each_failed_attempt_once() -> None:
    async def scenario() -> None:
        accepted = 0

        async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        errors: list[BaseException] = []
        with pytest.raises(ConnectionError) as raised:
            await create_ws_synchronizer(
                create_mergeable_store(),
                f"ws://127.0.0.1:{port}/room",
                on_ignored_error=errors.append,
                open_timeout=1,
                min_backoff=0.05,
                max_backoff=0.1,
            )
        server.close()
        await server.wait_closed()
        assert accepted >= 2  # it was retried
        # one report per failed attempt (an attempt still in flight when the time is up is
        # cancelled, not failed: it may be the one accepted connection without a report)
        assert accepted - 1 <= len(errors) <= accepted
        assert raised.value.__cause__ is errors[-1]
        assert str(raised.value) == (f"could not open ws://127.0.0.1:{port}/room: {errors[-1]}")

    asyncio.run(scenario())
