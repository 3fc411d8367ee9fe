"""Real TinyBase peers for tests: a WsSynchronizer client and createWsServer, in Node.js.

Both run as child processes under asyncio with every wait bounded, and are killed on exit,
so a misbehaving Node process fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from tests import npm_env


async def _spawn(script: str, *args: str) -> asyncio.subprocess.Process:
    folder = npm_env.ensure_tinybase()
    source = (npm_env.INTEROP_DIR / script).read_bytes()
    local = folder / script
    if not local.exists() or local.read_bytes() != source:
        tmp = local.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(source)
        os.replace(tmp, local)
    return await asyncio.create_subprocess_exec(
        "node",
        str(local),
        *args,
        cwd=folder,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=256 * 1024 * 1024,
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class NodeClient:
    """A TinyBase MergeableStore with a legacy WsSynchronizer (tests/interop/tb_client.mjs)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, unique_id: str = "") -> NodeClient:
        return cls(await _spawn("tb_client.mjs", unique_id))

    async def command(self, command: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = b""
            if self.proc.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(self.proc.stderr.read(), 2)
            raise RuntimeError(f"node client died: {err.decode(errors='replace')[-3000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    async def connect(self, url: str, fragment_size: int | None = None) -> None:
        await self.command({"cmd": "connect", "url": url, "fragmentSize": fragment_size})

    async def ops(self, *ops: list[Any]) -> None:
        await self.command({"cmd": "ops", "ops": list(ops)})

    async def get(self) -> dict[str, Any]:
        return await self.command({"cmd": "get"})

    async def wait(
        self, tables: dict[str, Any], values: dict[str, Any], timeout: float = 10
    ) -> dict[str, Any]:
        return await self.command(
            {"cmd": "wait", "tables": tables, "values": values, "timeout": timeout}, timeout + 10
        )

    async def raw(self, payload: str) -> None:
        await self.command({"cmd": "raw", "payload": payload})

    async def close(self) -> None:
        await self.command({"cmd": "close"})

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.command({"cmd": "exit"}, 3)
        await _stop(self.proc)


class NodeServer:
    """TinyBase's own ``createWsServer`` (tests/interop/tb_server.mjs) on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"

    @classmethod
    async def start(cls, persist: bool = False) -> NodeServer:
        proc = await _spawn("tb_server.mjs", "persist" if persist else "relay")
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            await _stop(proc)
            raise RuntimeError("TinyBase server did not start")
        return cls(proc, int(json.loads(line)["port"]))

    async def stop(self) -> None:
        await _stop(self.proc)
