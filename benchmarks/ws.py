"""WebSocket sync benchmark: our server (standalone and as an ASGI app under uvicorn) against
TinyBase's own ``createWsServer``.

Run: ``python -m benchmarks.ws`` (``--quick`` for a small smoke run, which measures the ASGI
app with raw clients only; ``--clients``, ``--servers``, ``--sizes``, ``--asgi-clients``
choose the combinations). Prints a table and writes ``benchmarks/results/ws.json``.

The servers run as separate processes on loopback, relay only: ours is
``localsync serve --no-persist`` (``ours``), the same core as an ASGI app mounted at ``/sync``
in FastAPI under plain uvicorn (``asgi``, tests/asgi_app.py), TinyBase's is ``createWsServer``
on a ``ws`` WebSocketServer in Node (tests/interop/tb_server.mjs). Against each, the same
clients:

* raw clients (the server alone): store-less clients in this process (:class:`RawSocket`,
  asyncio sockets that count frames without decoding them) send ready-made frames (a
  ``cells``-cell ContentDiff; a one-cell ContentDiff, latency = time until the first peer
  got it, the others drained before the next).
* Python clients: one process per client (``create_ws_synchronizer``); TinyBase clients: the
  legacy ``WsSynchronizer`` from npm, all in one Node process (tests/interop/bench_clients.mjs).
* fill: N clients (N = 2 and 8) on one path; client 0 writes ``cells`` integer cells (rows
  of 10) in one transaction; the time from just before the write until every other client
  holds all of them.
* latency (measured first, on small stores, so that it is the path through the server):
  client 0 sets a value ``samples`` times (Python: every 20 ms; Node: each after the last
  arrived); one-way time until client 1 sees it (CLOCK_MONOTONIC is system-wide on Linux,
  so processes' timestamps compare), p50 and p99.

Ratios are TinyBase's (and the ASGI app's) figure divided by our standalone server's (> 1
means the standalone server is faster), measured in the same run with the same clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
INTEROP = ROOT / "tests" / "interop"
_ctx = mp.get_context("spawn")


# ------------------------------------------------------------------------------- servers


SERVER_KINDS = ("ours", "asgi", "tinybase")
CLIENT_KINDS = ("raw", "python", "tinybase")


class Server:
    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.prefix = "/sync" if kind == "asgi" else ""  # (the path the rooms are under)
        commands = {
            "ours": [sys.executable, "-m", "localsync.cli", "serve", "--no-persist", "--quiet"],
            "asgi": [sys.executable, "-m", "tests.asgi_app", "--server", "uvicorn"],
            "tinybase": ["node", "tb_server.mjs", "relay"],
        }
        self.proc = subprocess.Popen(
            commands[kind] + (["--port", "0"] if kind == "ours" else []),
            cwd=folder if kind == "tinybase" else ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if kind == "ours":
            match = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
            assert match, line
            self.port = int(match.group(1))
        else:  # (both print a JSON line with the port)
            self.port = int(json.loads(line)["port"])

    def stop(self) -> None:
        if self.kind in ("ours", "asgi"):
            self.proc.terminate()
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ python clients


def _py_client(
    url: str, index: int, rows: int, samples: int, rounds: int, q: Any, go: Any, barrier: Any
) -> None:
    asyncio.run(_py_client_main(url, index, rows, samples, rounds, q, go, barrier))


async def _py_client_main(
    url: str, index: int, rows: int, samples: int, rounds: int, q: Any, go: Any, barrier: Any
) -> None:
    from localsync import create_mergeable_store
    from localsync.ws.client import create_ws_synchronizer

    store = create_mergeable_store(f"py{index}")
    sync = create_ws_synchronizer(store, url, 5.0)
    await sync.start_sync()
    latencies: list[float] = []
    if index == 1:
        store.add_value_listener(
            "ping", lambda _s, _id, value, *_: latencies.append(time.monotonic() - value)
        )
    q.put(("ready", index, None))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    # latency first, on small stores, so that it measures the path through the server
    if index == 0:
        for _ in range(samples):
            store.set_value("ping", time.monotonic())
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
    elif index == 1:
        deadline = time.monotonic() + 30
        while len(latencies) < samples and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        q.put(("latency", index, latencies))
    last = f"r{rows - 1}"
    for k in range(rounds):  # each round fills a new table, so every round costs the same
        await loop.run_in_executor(None, barrier.wait)
        table = f"t{k}"
        if index == 0:
            start = time.monotonic()
            with store.transaction():
                for r in range(rows):
                    row = f"r{r}"
                    for c in range(10):
                        store.set_cell(table, row, f"c{c}", r * 10 + c)
            q.put((f"start{k}", index, start))
        else:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if len(store.get_row_ids(table)) == rows and store.has_cell(table, last, "c9"):
                    break
                await asyncio.sleep(0.001)
            q.put((f"done{k}", index, time.monotonic()))
    await loop.run_in_executor(None, barrier.wait)
    await sync.destroy()
    q.put(("exit", index, None))


def run_python_clients(
    url: str, clients: int, cells: int, samples: int, rounds: int
) -> dict[str, Any]:
    rows = cells // 10
    q = _ctx.Queue()
    go = _ctx.Event()
    barrier = _ctx.Barrier(clients, timeout=120)
    procs = [
        _ctx.Process(
            target=_py_client, args=(url, i, rows, samples, rounds, q, go, barrier), daemon=True
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    events: dict[str, dict[int, Any]] = {}

    def wait_for(kind: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(events.get(kind, {})) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(kind)
            k, i, v = q.get(timeout=left)
            events.setdefault(k, {})[i] = v

    try:
        wait_for("ready", clients, 60)
        time.sleep(0.2)
        go.set()
        wait_for("latency", 1, 60)
        latencies = [x * 1000 for x in events["latency"][1]]
        fills = []
        for k in range(rounds):
            wait_for(f"start{k}", 1, 300)
            wait_for(f"done{k}", clients - 1, 300)
            fills.append(max(events[f"done{k}"].values()) - events[f"start{k}"][0])
        fill = statistics.median(fills)
        wait_for("exit", clients, 30)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    return {"fill_seconds": fill, "fills": fills, "latency_ms": latencies}


# -------------------------------------------------------------------------- node clients


def run_node_clients(
    folder: Path, url: str, clients: int, cells: int, samples: int, rounds: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            "node",
            "bench_clients.mjs",
            url,
            str(clients),
            str(cells),
            str(samples),
            "300",
            str(rounds),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=400,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- raw clients


class RawSocket(asyncio.Protocol):
    """The thinnest WebSocket client: counts the messages it receives without reading them.

    Why not a WebSocket library: receiving a 3 MB frame costs ``websockets`` ~5 ms of Python
    (buffer appends, slicing, UTF-8 decoding), 7 clients' worth of it would be the larger part
    of a fill, and the figure is meant to be the server's. Frames are sent with the zero mask
    key (the payload as is; RFC 6455 lets a server only unmask, never refuse it).
    """

    def __init__(self, host: str, path: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: "
            f"{base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._head = b""  # the handshake answer, then a partial frame header
        self._skip = 0  # payload bytes of the current frame not yet received
        self._final = False  # the current frame ends a message
        self._control = b""  # a ping's payload, collected to answer it
        self._in_control = 0
        self.received = 0  # complete messages
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(self._head[:200].decode()))
                return
            data, self._head = self._head[end + 4 :], b""
            self.opened.set_result(None)
        view = memoryview(data)
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                if self._in_control:
                    self._control += bytes(view[:taken])
                self._skip -= taken
                view = view[taken:]
                if not self._skip:
                    self._frame_done()
                continue
            need = self._header_size() - len(self._head)
            self._head += bytes(view[:need])
            view = view[need:]
            if len(self._head) == self._header_size():
                self._start_frame()
                if not self._skip:
                    self._frame_done()

    def _header_size(self) -> int:
        if len(self._head) < 2:
            return 2
        length = self._head[1] & 0x7F
        return 2 + (2 if length == 126 else 8 if length == 127 else 0)

    def _start_frame(self) -> None:
        head, self._head = self._head, b""
        length = head[1] & 0x7F
        self._skip = int.from_bytes(head[2:]) if length >= 126 else length
        self._final = bool(head[0] & 0x80)
        opcode = head[0] & 0x0F
        self._in_control = opcode if opcode >= 8 else 0
        self._control = b""

    def _frame_done(self) -> None:
        if self._in_control == 9:  # ping: pong with its payload
            self._send(0xA, self._control)
        elif not self._in_control and self._final:
            self.received += 1
            waiter = self._waiter
            if waiter is not None and self.received >= waiter[0] and not waiter[1].done():
                waiter[1].set_result(None)
        self._in_control = 0

    def _send(self, opcode: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2)
        else:
            head = bytes([0x80 | opcode, 0xFF]) + n.to_bytes(8)
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + data)

    def send_text(self, data: bytes) -> None:
        self._send(0x1, data)

    async def wait(self, count: int) -> None:
        """Until ``count`` messages in all were received."""
        if self.received >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiter = (count, future)
        await future

    def close(self) -> None:
        if self.transport is not None:
            self._send(0x8, (1000).to_bytes(2))
            self.transport.close()


def run_raw_clients(
    url: str, clients: int, cells: int, samples: int, rounds: int
) -> dict[str, Any]:
    """The server alone: store-less clients (:class:`RawSocket`) send ready-made frames."""
    from localsync.ws.wire import encode_payloads

    rows = cells // 10
    hlcs = [f"NjEtLV----{c}VnP9x" for c in range(10)]
    body = [
        [
            {
                "t": [
                    {
                        f"r{r}": [{f"c{c}": [r * 10 + c, hlcs[c]] for c in range(10)}]
                        for r in range(rows)
                    }
                ]
            }
        ],
        [{}],
        1,
    ]
    (big_text,) = encode_payloads(None, "abcdefghijk", 3, body)
    big = big_text.encode()
    small = b'\n["abcdefghijk",3,[[{}],[{"ping":[1,"NjEtLV----0VnP9x"]}],1]]'
    host_port, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = host_port.rpartition(":")

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        socks: list[RawSocket] = []
        for _ in range(clients):
            _, sock = await loop.create_connection(
                lambda: RawSocket(host_port, "/" + path), host, int(port)
            )
            await asyncio.wait_for(sock.opened, 30)
            socks.append(sock)
        await asyncio.sleep(0.2)
        latencies = []
        for k in range(1, samples + 1):
            start = time.monotonic()
            socks[0].send_text(small)
            await socks[1].wait(k)
            latencies.append((time.monotonic() - start) * 1000)
            await asyncio.gather(*[s.wait(k) for s in socks[2:]])
        fills = []
        for k in range(samples + 1, samples + rounds + 1):
            start = time.monotonic()
            socks[0].send_text(big)
            await asyncio.gather(*[s.wait(k) for s in socks[1:]])
            fills.append(time.monotonic() - start)
        for sock in socks:
            sock.close()
        return {"fill_seconds": statistics.median(fills), "fills": fills, "latency_ms": latencies}

    return asyncio.run(main())


# ---------------------------------------------------------------------------------- main


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="fills per run (median used)")
    parser.add_argument(
        "--raw-rounds", type=int, default=9, help="fills per run with raw clients (cheap)"
    )
    parser.add_argument(
        "--clients", action="append", choices=CLIENT_KINDS, help="client kinds (default all)"
    )
    parser.add_argument(
        "--servers", action="append", choices=SERVER_KINDS, help="server kinds (default all)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="client counts (default 2 and 8; quick: 2)"
    )
    parser.add_argument(
        "--asgi-clients",
        action="append",
        choices=CLIENT_KINDS,
        help="client kinds run against the ASGI app (default all; quick: raw)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ws.json", help="results JSON")
    args = parser.parse_args(argv)
    cells = 5_000 if args.quick else args.cells
    samples = 20 if args.quick else args.samples
    sizes = args.sizes or ([2] if args.quick else [2, 8])
    rounds = 1 if args.quick else args.rounds
    client_kinds = args.clients or list(CLIENT_KINDS)
    server_kinds = args.servers or list(SERVER_KINDS)
    asgi_clients = args.asgi_clients or (["raw"] if args.quick else list(CLIENT_KINDS))

    sys.path.insert(0, str(ROOT))
    from tests import npm_env

    folder = npm_env.ensure_tinybase()
    for script in ("bench_clients.mjs", "tb_server.mjs"):
        shutil.copy(INTEROP / script, folder / script)

    rows: list[dict[str, Any]] = []
    for client_kind in client_kinds:
        for n in sizes:
            for server_kind in server_kinds:
                if server_kind == "asgi" and client_kind not in asgi_clients:
                    continue
                server = Server(server_kind, folder)
                url = f"ws://127.0.0.1:{server.port}{server.prefix}/bench{n}"
                try:
                    if client_kind == "raw":
                        raw_rounds = rounds if args.quick else args.raw_rounds
                        result = run_raw_clients(url, n, cells, samples, raw_rounds)
                    elif client_kind == "python":
                        result = run_python_clients(url, n, cells, samples, rounds)
                    else:
                        result = run_node_clients(folder, url, n, cells, samples, rounds)
                finally:
                    server.stop()
                lat = result["latency_ms"]
                row = {
                    "clients": client_kind,
                    "n": n,
                    "server": server_kind,
                    "cells": cells,
                    "fill_seconds": result["fill_seconds"],
                    "fills": result.get("fills"),
                    "latency_p50_ms": _pct(lat, 0.5),
                    "latency_p99_ms": _pct(lat, 0.99),
                    "latency_mean_ms": statistics.fmean(lat) if lat else None,
                    "samples": len(lat),
                }
                rows.append(row)
                print(
                    f"  {client_kind:8} clients x{n}  {server_kind:8} server: "
                    f"fill {row['fill_seconds']:.3f} s, p50 {row['latency_p50_ms']:.2f} ms, "
                    f"p99 {row['latency_p99_ms']:.2f} ms",
                    flush=True,
                )

    ratios: dict[str, list[dict[str, Any]]] = {"tinybase": [], "asgi": []}
    print()
    print(
        f"{'clients':9} {'N':>2} {'server':9} {'fill s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        "  ratio server/ours"
    )
    for row in rows:
        mate = next(
            (
                r
                for r in rows
                if r["clients"] == row["clients"] and r["n"] == row["n"] and r["server"] == "ours"
            ),
            None,
        )
        ratio_text = ""
        if row["server"] in ratios and mate is not None:
            fill_ratio = row["fill_seconds"] / mate["fill_seconds"]
            p50_ratio = row["latency_p50_ms"] / mate["latency_p50_ms"]
            ratios[row["server"]].append(
                {"clients": row["clients"], "n": row["n"], "fill": fill_ratio, "p50": p50_ratio}
            )
            ratio_text = f"fill {fill_ratio:.2f}x, p50 {p50_ratio:.2f}x"
        print(
            f"{row['clients']:9} {row['n']:>2} {row['server']:9} {row['fill_seconds']:8.3f} "
            f"{row['latency_p50_ms']:8.2f} {row['latency_p99_ms']:8.2f}  {ratio_text}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "rows": rows,
        "ratios_tinybase_over_ours": ratios["tinybase"],
        "ratios_asgi_over_ours": ratios["asgi"],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
