"""Our engine against TinyBase's own ``createCustomSynchronizer``, over plain pipes.

A Node process runs TinyBase 10.0.1 (npm) with a custom synchronizer whose messages are JSON
lines on stdout/stdin; this process runs ours with the same framing. No WebSocket code is
involved, so a difference can only come from the protocol engine or the store. Random writes
happen on both sides; afterwards both mergeable contents (every HLC and hash) must be equal.
A second test drops ContentDiffs in both directions and lets our anti-entropy repair them,
which works with an unmodified TinyBase peer because only TinyBase messages are used.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.engine import CONTENT_DIFF
from localsync.sync.synchronizer import create_custom_synchronizer
from tests.npm_env import ensure_tinybase, require_node

pytestmark = [pytest.mark.interop, pytest.mark.process, pytest.mark.timeout(120)]

NODE_PEER = r"""
import {createMergeableStore} from 'tinybase';
import {createCustomSynchronizer} from 'tinybase/synchronizers';
import readline from 'node:readline';

const U = '\uFFFC';
const out = (thing) => process.stdout.write(
  JSON.stringify(thing, (_k, v) => (v === undefined ? U : v)) + '\n');
const parse = (line) => JSON.parse(line, (_k, v) => (v === U ? undefined : v));

const store = createMergeableStore('tinybase-peer');
let receive;
let dropDiffs = false;
const errors = [];
const sync = createCustomSynchronizer(
  store,
  (to, requestId, message, body) => {
    if (!(dropDiffs && message == 3)) out(['msg', to, requestId, message, body]);
  },
  (r) => (receive = r),
  () => {},
  1,
  undefined,
  undefined,
  (error) => errors.push(String(error)),
);
const rl = readline.createInterface({input: process.stdin});
rl.on('line', async (line) => {
  const [cmd, ...args] = parse(line);
  if (cmd == 'msg') {
    receive(...args);
    return;
  }
  if (cmd == 'op') store[args[0]](...args[1]);
  if (cmd == 'start') await sync.startSync();
  if (cmd == 'drop') dropDiffs = args[0];
  if (cmd == 'quit') {
    await sync.destroy();
    out(['ok']);
    process.exit(0);
  }
  out(['ok', store.getMergeableContent(), store.getMergeableContentHashes(),
       store.getTables(), store.getValues(), errors]);
});
"""


class NodePeer:
    """The TinyBase process and the custom-synchronizer transport that talks to it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.replies: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.receive: Any = None
        self.drop_incoming_diffs = False
        self.drop_outgoing_diffs = False
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if message[0] == "msg":
                _, _to, request_id, number, body = message
                if not (self.drop_incoming_diffs and number == CONTENT_DIFF):
                    self.receive("tinybase", request_id, number, body)
            else:
                await self.replies.put(message)

    def _write(self, thing: list[Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(thing) + "\n").encode())

    def send(self, to: str | None, request_id: str | None, message: int, body: Any) -> None:
        if not (self.drop_outgoing_diffs and message == CONTENT_DIFF):
            self._write(["msg", "python", request_id, message, body])

    def register_receive(self, receive: Any) -> None:
        self.receive = receive

    async def command(self, *thing: Any) -> list[Any]:
        self._write(list(thing))
        return await asyncio.wait_for(self.replies.get(), 30)


async def start_peer(tmp_path: Path) -> NodePeer:
    require_node()
    (tmp_path / "node_modules").symlink_to(ensure_tinybase() / "node_modules")
    script = tmp_path / "peer.mjs"
    script.write_text(NODE_PEER, "utf-8")
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return NodePeer(proc)


async def stop_peer(peer: NodePeer) -> None:
    try:
        await asyncio.wait_for(peer.command("quit"), 10)
        await asyncio.wait_for(peer.proc.wait(), 10)
    finally:
        if peer.proc.returncode is None:
            peer.proc.kill()
            await peer.proc.wait()
        peer.reader.cancel()


VALUES: list[Any] = [1, -2.5, "text", "", True, False, None, {"a": 1, "2": [3]}, [1, "x"]]


def random_op(rnd: random.Random) -> tuple[str, list[Any]]:
    table, row, cell = rnd.choice("ab"), rnd.choice("xyz"), rnd.choice("cde")
    value = rnd.choice(VALUES)
    return rnd.choice(
        [
            ("setCell", [table, row, cell, value]),
            ("setCell", [table, row, cell, value]),
            ("delCell", [table, row, cell]),
            ("setRow", [table, row, {cell: value, "f": rnd.randint(0, 9)}]),
            ("delRow", [table, row]),
            ("setValue", [cell, value]),
            ("delValue", [cell]),
        ]
    )


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


async def converge(peer: NodePeer, store: Any, timeout: float = 20.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        reply = await peer.command("dump")
        if reply[2] == store.get_mergeable_content_hashes():
            return reply
        if loop.time() > end:
            raise AssertionError(
                f"no convergence: {reply[2]} vs {store.get_mergeable_content_hashes()}"
            )
        await asyncio.sleep(0.05)


def test_random_writes_on_both_sides_converge_exactly(tmp_path: Path) -> None:
    async def main() -> None:
        peer = await start_peer(tmp_path)
        errors: list[BaseException] = []
        store = create_mergeable_store("python-peer")
        sync = create_custom_synchronizer(
            store, peer.send, peer.register_receive, None, 1.0, on_ignored_error=errors.append
        )
        try:
            rnd = random.Random(20261126)
            store.set_tables({"a": {"x": {"c": "python first"}}})
            await peer.command("op", "setValues", [{"d": "tinybase first"}])
            await peer.command("start")  # alone: its first request times out
            await sync.start_sync()
            for _ in range(60):
                method, args = random_op(rnd)
                if rnd.random() < 0.5:
                    getattr(store, snake(method))(*args)
                else:
                    await peer.command("op", method, args)
                await asyncio.sleep(rnd.choice([0, 0, 0.001, 0.01]))
            reply = await converge(peer, store)
            _, content, hashes, tables, values, node_errors = reply
            assert content == store.get_mergeable_content()
            assert hashes == store.get_mergeable_content_hashes()
            assert tables == store.get_tables() and values == store.get_values()
            assert [e for e in node_errors if "tinybase:14" in e] == []
            assert not [e for e in errors if getattr(e, "code", "") == "tinybase:14"]
            assert sync.get_synchronizer_stats()["receives"] > 0
        finally:
            await sync.destroy()
            await stop_peer(peer)

    asyncio.run(main())


def test_anti_entropy_repairs_lost_diffs_with_an_unmodified_tinybase_peer(tmp_path: Path) -> None:
    async def main() -> None:
        peer = await start_peer(tmp_path)
        store = create_mergeable_store("python-peer")
        sync = create_custom_synchronizer(
            store,
            peer.send,
            peer.register_receive,
            None,
            1.0,
            on_ignored_error=lambda e: None,
            anti_entropy_seconds=0.05,
        )
        try:
            await peer.command("start")
            await sync.start_sync()
            await converge(peer, store)
            # from now on every ContentDiff is lost, both ways
            peer.drop_outgoing_diffs = peer.drop_incoming_diffs = True
            await peer.command("drop", True)
            store.set_cell("t", "r", "from_python", 1)
            await peer.command("op", "setCell", ["t", "r", "from_tinybase", 2])
            reply = await converge(peer, store)
            assert reply[3] == {"t": {"r": {"from_python": 1, "from_tinybase": 2}}}
            assert reply[1] == store.get_mergeable_content()
            assert sync.engine.anti_entropy_probes > 0
        finally:
            await sync.destroy()
            await stop_peer(peer)

    asyncio.run(main())


def test_coalesced_diffs_are_applied_exactly_by_tinybase(tmp_path: Path) -> None:
    """Bursts merged into one ContentDiff (same turn, and from a thread) are valid TinyBase."""

    async def main() -> None:
        peer = await start_peer(tmp_path)
        errors: list[BaseException] = []
        sent: list[int] = []
        store = create_mergeable_store("python-peer")
        sync = create_custom_synchronizer(
            store,
            peer.send,
            peer.register_receive,
            None,
            1.0,
            on_send=lambda to, request_id, message, body: sent.append(message),
            on_ignored_error=errors.append,
        )
        try:
            await peer.command("start")  # alone: its first request times out
            await sync.start_sync()
            await converge(peer, store)
            sent.clear()
            rnd = random.Random(7)
            for _ in range(80):  # one loop turn: one diff (deletions and overwrites included)
                method, args = random_op(rnd)
                getattr(store, snake(method))(*args)

            def burst() -> None:
                for i in range(80):
                    method, args = random_op(rnd)
                    getattr(store, snake(method))(*args)
                    store.set_cell("t", f"r{i % 7}", "n", i)

            await asyncio.to_thread(burst)
            reply = await converge(peer, store)
            _, content, hashes, tables, values, node_errors = reply
            assert content == store.get_mergeable_content()
            assert hashes == store.get_mergeable_content_hashes()
            assert tables == store.get_tables() and values == store.get_values()
            assert [e for e in node_errors if "tinybase:3:" not in e] == []  # start-up only
            assert not [e for e in errors if getattr(e, "code", "") == "tinybase:14"]
            diffs = sent.count(CONTENT_DIFF)
            assert 1 <= diffs < 160 and diffs + sync.coalesced_transactions <= 240
            assert sync.coalesced_transactions >= 79
        finally:
            await sync.destroy()
            await stop_peer(peer)

    asyncio.run(main())
