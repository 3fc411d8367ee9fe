"""A bounded fuzz of a running WsServer over real sockets, in both framings.

What runs: a persisting server (SQLite) whose room ``room`` holds data in its server-side
store; a real synchronizer exchange is recorded first (every payload sent and received), and
then several connections at once send mutations of those payloads for a while: flipped and
inserted characters, truncations, JSON values swapped for wrong types, huge numbers, broken
HLCs, random recipients, bogus fragments, oversized frames, invalid UTF-8 in text frames and
binary frames - as legacy payloads (``to\\n[...]``), or on a ``tinybase`` shared socket as
channel frames and control messages with random channel ids.

What must hold afterwards: no connection handler crashed (nothing logged at ERROR level), the
server still accepts a fresh client that syncs the room and ends up with exactly the server
store's content, that content is consistent (a fresh store given the same content computes
the same hashes), the room's file holds the same content after the server stopped, every
file left holds data (empty rooms' files are discarded), and the stats counted the refused
input.

Bounded: about 24 s in all by default; ``LOCALSYNC_FUZZ_SECONDS`` sets the fuzzing time of
each framing (e.g. 600 by hand), ``LOCALSYNC_FUZZ_SEED`` replays a seed (printed on failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from localsync import create_mergeable_store
from localsync.cli.serve import empty_room_discarder, persister_factory
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.server import WsServer, create_ws_server
from localsync.ws.wire import MAX_PAYLOAD_SIZE, encode_payloads
from tests.helpers import eventually, run

FUZZ_SECONDS = float(os.environ.get("LOCALSYNC_FUZZ_SECONDS", "10"))
CONNECTIONS = 4

pytestmark = pytest.mark.timeout(int(FUZZ_SECONDS) + 120)


# ------------------------------------------------------------------------------ corpus


async def record_exchange(url: str) -> list[str]:
    """Payloads (``to\\n[...]``, some fragmented) of a real exchange between two clients."""
    corpus: list[str] = []

    def recorder(fragment_size: int | None) -> Any:
        def on_message(to: str | None, request_id: str | None, message: int, body: Any) -> None:
            corpus.extend(encode_payloads(to, request_id, message, body, fragment_size))

        return on_message

    a, b = create_mergeable_store(), create_mergeable_store()
    sa = await create_ws_synchronizer(
        a, f"{url}/rec", 0.5, on_send=recorder(None), on_receive=recorder(None)
    )
    await sa.start_sync()
    with a.transaction():
        for i in range(6):
            a.set_row("pets", f"p{i}", {"name": f"pet {i}", "age": i, "ok": i % 2 == 0})
        a.set_value("open", True)
        a.set_value("count", 3.5)
    a.set_cell("pets", "p1", "obj", {"k": [1, None, "é"]})
    a.del_row("pets", "p2")
    sb = await create_ws_synchronizer(
        b, f"{url}/rec", 0.5, on_send=recorder(48), on_receive=recorder(None), fragment_size=48
    )
    await sb.start_sync()
    await eventually(lambda: b.get_tables() == a.get_tables())
    b.set_cell("pets", "p3", "name", "renamed")
    b.del_value("count")
    a.set_cell("toys", "t1", "n", 1)
    await eventually(lambda: a.get_mergeable_content_hashes() == b.get_mergeable_content_hashes())
    await sa.destroy()
    await sb.destroy()
    return corpus


# ---------------------------------------------------------------------------- mutators

WEIRD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    10**400,
    -(2**63),
    1e308,
    0.5,
    "",
    "x",
    "\ufffc",
    "\ud800",
    "Nn1JUF-----FnHIC",
    "zzzzzzzzzzzzzzzz",
    "Nn1JUF----",
    [],
    {},
    [[]],
    {"": []},
    [None, None, None],
]


def _walk_replace(rng: random.Random, node: Any, depth: int = 0) -> Any:
    """``node`` with one randomly chosen value somewhere inside it replaced."""
    if isinstance(node, list) and node and rng.random() < 0.75 and depth < 12:
        i = rng.randrange(len(node))
        node = list(node)
        node[i] = _walk_replace(rng, node[i], depth + 1)
        return node
    if isinstance(node, dict) and node and rng.random() < 0.75 and depth < 12:
        key = rng.choice(list(node))
        node = dict(node)
        if rng.random() < 0.2:
            node[rng.choice(["", "\n", "\ufffc", "a" * 300, key + "x"])] = node.pop(key)
        else:
            node[key] = _walk_replace(rng, node[key], depth + 1)
        return node
    if isinstance(node, str) and len(node) == 16 and rng.random() < 0.5:  # an HLC, likely
        chars = list(node)
        chars[rng.randrange(16)] = rng.choice("-_0aZ~ \n")
        return "".join(chars)
    return rng.choice(WEIRD_VALUES)


def _json_mutation(rng: random.Random, remainder: str) -> str | None:
    try:
        parsed = json.loads(remainder)
    except ValueError:
        return None
    choice = rng.random()
    if choice < 0.6:
        mutated = _walk_replace(rng, parsed)
    elif choice < 0.75:  # deep nesting
        mutated = parsed
        for _ in range(rng.choice([10, 100, 2000])):
            mutated = [mutated]
    elif choice < 0.9 and isinstance(parsed, list) and len(parsed) == 3:  # wrong message type
        mutated = [parsed[0], rng.choice([-1, 0, 1, 2, 3, 4, 5, 6, 7, 99, 1.5, "1"]), parsed[2]]
    else:
        mutated = rng.choice(WEIRD_VALUES)
    try:
        return json.dumps(mutated, ensure_ascii=rng.random() < 0.5)
    except (ValueError, RecursionError):
        return None


def mutate(rng: random.Random, payload: str, client_ids: list[str]) -> str | bytes:
    """One mutation of a recorded payload (bytes: send as is, maybe as a text frame)."""
    to, _, remainder = payload.partition("\n")
    kind = rng.randrange(10)
    if kind == 0:  # flip characters
        chars = list(payload)
        for _ in range(rng.randint(1, 8)):
            if chars:
                chars[rng.randrange(len(chars))] = chr(
                    rng.choice([0, 10, 34, 44, 91, 93, 0xFFFC, rng.randrange(32, 0x2FFF)])
                )
        return "".join(chars)
    if kind == 1:  # truncate
        return payload[: rng.randrange(len(payload) + 1)]
    if kind in (2, 3, 4):  # JSON-level
        mutated = _json_mutation(rng, remainder)
        if mutated is not None:
            return to + "\n" + mutated
        return payload + rng.choice(["]", "x", "\n"])
    if kind == 5:  # another recipient
        recipient = rng.choice(["", "S", "M", "nobody", "\ufffc", *client_ids])
        return recipient + "\n" + remainder
    if kind == 6:  # bogus fragments
        message_id = "".join(rng.choice("abcXYZ019_-") for _ in range(rng.choice([15, 16, 17])))
        total = rng.choice([0, 1, 2, 1000, 1001, 10**20])
        index = rng.choice([0, 1, total, -1])
        return f"{to}\n{message_id}\n{index}\n{total}\n{remainder[: rng.randrange(1, 40)]}"
    if kind == 7:  # bytes: invalid UTF-8 or just binary
        raw = payload.encode()
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + raw[cut:]
    if kind == 8:  # padding (rarely: over the payload limit)
        if rng.random() < 0.02:
            return payload + " " * (MAX_PAYLOAD_SIZE + 10 - len(payload))
        return to + "\n" + remainder + " " * rng.randrange(1, 5000)
    return payload  # (now and then a valid one, to get further into the protocol)


def shared_frame(rng: random.Random, payload: str | bytes, channels: list[str]) -> str | bytes:
    """Wrap a (mutated) legacy payload for a shared socket, or make a control message."""
    if isinstance(payload, bytes):
        return payload
    choice = rng.random()
    if choice < 0.15:
        request_id = rng.choice(["r", None, 1, "", "\ufffc"])
        control = rng.choice([0, 1, 2, 3, -1, 1.0, "1"])
        body: Any = rng.choice([*channels, "", ".", "..", "a/../b", "x?y", "c" * 1100, 1, None])
        message = rng.choice([-1, -1, -1, 0, "-1"])
        return "S\n" + json.dumps([request_id, message, [control, body]])
    channel = rng.choice([*channels, "unknown", "", "a\nb", "c" * 1100])
    return f"M\n{channel}\n{payload}"


# ----------------------------------------------------------------------------- fuzzers


async def drain(ws: ClientConnection) -> None:
    """Read and drop everything (so the server never blocks on us); ends when closed."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


async def send_all(ws: ClientConnection, frames: list[str | bytes], rng: random.Random) -> None:
    reader = asyncio.ensure_future(drain(ws))
    try:
        for frame in frames:
            if isinstance(frame, bytes):
                await asyncio.wait_for(ws.send(frame, text=rng.random() < 0.7), 10)
            else:  # (a lone surrogate goes out as the invalid UTF-8 it is)
                raw = frame.encode("utf-8", "surrogatepass")
                await asyncio.wait_for(ws.send(raw, text=True), 10)
            if rng.random() < 0.1:
                await asyncio.sleep(rng.random() * 0.05)
    except (ConnectionClosed, TimeoutError, OSError, AttributeError):
        pass  # (AttributeError: websockets' send may abort a transport already lost)
    finally:
        if rng.random() < 0.5:  # sometimes wait for the server's verdict, sometimes just go
            await asyncio.sleep(0.05)
        await ws.close()
        reader.cancel()


async def fuzz_connection(
    url: str, framing: str, rng: random.Random, corpus: list[str], client_ids: list[str]
) -> None:
    frames_count = rng.choice([1, 3, 10, 40])
    payloads = [mutate(rng, rng.choice(corpus), client_ids) for _ in range(frames_count)]
    try:
        if framing == "legacy":
            path = rng.choice(["room", "room", "room", "other", "deep/er"])
            ws = await connect(f"{url}/{path}", open_timeout=10, max_size=None)
            await send_all(ws, payloads, rng)
            return
        ws = await connect(
            f"{url}/",
            subprotocols=["tinybase"],  # type: ignore[list-item]
            open_timeout=10,
            max_size=None,
        )
        channels = ["room", "other", rng.choice(["x", "deep/er", "room"])]
        frames: list[str | bytes] = []
        if rng.random() < 0.9:
            frames.append('S\n["h",-1,[0,1]]')
            for i, channel in enumerate(channels):
                if rng.random() < 0.8:
                    frames.append(f'S\n["s{i}",-1,[1,{json.dumps(channel)}]]')
        frames.extend(shared_frame(rng, p, channels) for p in payloads)
        await send_all(ws, frames, rng)
    except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, AttributeError):
        pass  # (refused or closed: exactly what bad input may get)


# --------------------------------------------------------------------------------- test


class ErrorLog(logging.Handler):
    """Collects ERROR records: a crashed connection handler or room is logged at ERROR."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def room_store(server: WsServer) -> Any:
    path = server._paths["room"]
    assert path.persister is not None
    return path.persister.get_store()


def consistent(store: Any) -> bool:
    """The store's hashes are what its own content recomputes to in a fresh store."""
    fresh = create_mergeable_store()
    fresh.set_mergeable_content(store.get_mergeable_content())
    return bool(
        fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
        and fresh.get_tables() == store.get_tables()
        and fresh.get_values() == store.get_values()
    )


@pytest.mark.parametrize("framing", ["legacy", "tinybase"])
def test_fuzzed_input_never_breaks_the_server(tmp_path: Path, framing: str) -> None:
    seed = int(os.environ.get("LOCALSYNC_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz seed: LOCALSYNC_FUZZ_SEED={seed} ({framing})")
    data = tmp_path / "data"
    errors = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("localsync", "websockets.server")]
    for logger in loggers:
        logger.addHandler(errors)
    ignored: list[BaseException] = []

    async def scenario() -> None:
        server = await create_ws_server(
            "127.0.0.1",
            0,
            persister_factory(data),
            request_timeout_seconds=0.3,
            on_ignored_error=ignored.append,
            discard_empty_path=empty_room_discarder(data),
        )
        url = server.url
        corpus = await record_exchange(url)
        assert len(corpus) > 10
        # the room's server store holds data, and an idle client keeps the room open
        writer_store = create_mergeable_store()
        writer = await create_ws_synchronizer(writer_store, f"{url}/room", 0.5)
        await writer.start_sync()
        writer_store.set_tables({"t": {"r": {"c": 1, "d": "x"}}, "u": {"v": {"w": True}}})
        writer_store.set_value("v", "é")
        anchor = await connect(f"{url}/room", open_timeout=10)
        anchor_reader = asyncio.ensure_future(drain(anchor))
        await eventually(
            lambda: (
                room_store(server).get_mergeable_content_hashes()
                == writer_store.get_mergeable_content_hashes()
            )
        )
        client_ids = server.get_client_ids("room")
        await writer.destroy()

        rng = random.Random(seed)
        deadline = time.monotonic() + FUZZ_SECONDS
        connections = 0

        async def worker(index: int) -> None:
            nonlocal connections
            worker_rng = random.Random(rng.randrange(2**32) + index)
            while time.monotonic() < deadline:
                await fuzz_connection(url, framing, worker_rng, corpus, client_ids)
                connections += 1

        await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
        print(f"fuzz: {connections} connections, stats {server.get_stats()}")

        # the server still works: a fresh client gets exactly the room store's content
        store = room_store(server)
        assert consistent(store)
        fresh = create_mergeable_store()
        synchronizer = await create_ws_synchronizer(fresh, f"{url}/room", 1.0)
        await asyncio.wait_for(synchronizer.start_sync(), 10)
        await eventually(
            lambda: fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
        )
        assert fresh.get_tables() == store.get_tables()
        assert fresh.get_values() == store.get_values()
        assert consistent(fresh)
        await synchronizer.destroy()
        final = list(store.get_mergeable_content_hashes())
        stats = server.get_stats()
        assert stats["invalid"] + stats["overflows"] > 0
        assert ignored
        anchor_reader.cancel()
        await anchor.close()
        await asyncio.wait_for(server.destroy(), 30)
        assert server.get_stats()["rooms"] == 0

        # what the room's file holds is the store's content; the files left all hold data
        persister = persister_factory(data)("room")
        await persister.load()
        await persister.destroy()
        assert list(persister.get_store().get_mergeable_content_hashes()) == final
        for file in data.glob("*.sqlite"):
            path_id = file.name.removesuffix(".sqlite").replace("%2F", "/")
            persister = persister_factory(data)(path_id)
            await persister.load()
            await persister.destroy()
            assert persister.get_store().get_mergeable_content() != [[{}, "", 0], [{}, "", 0]]

    try:
        run(scenario(), timeout=FUZZ_SECONDS + 90)
        crashes = [r for r in errors.records if r.levelno >= logging.ERROR]
        assert not crashes, [r.getMessage() for r in crashes]
    except BaseException as error:
        raise AssertionError(f"fuzz failed; replay with LOCALSYNC_FUZZ_SEED={seed}") from error
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
