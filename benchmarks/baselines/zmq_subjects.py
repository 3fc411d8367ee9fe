"""Raw pyzmq+msgspec and pycrdt subjects, over the same XSUB/XPUB ipc:// broker.

``raw``: each row transaction is one msgspec-msgpack message ``{table: {row: cells}}``,
applied into nested dicts: the transport's own limit, what localsync cannot beat.
``pycrdt``: a Yjs document per process; the writer's per-transaction update bytes are
published, readers ``apply_update`` them: a CRDT that already exists in Python, same sockets.

Readers must not miss the start (PUB/SUB "slow joiner"), so the writer sends probes until every
reader has seen one, and only then starts the clock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from .common import (
    CELLS_PER_ROW,
    TABLE,
    FanoutResult,
    Proxy,
    collect,
    iter_rows,
    join_all,
    percentile,
    rows_for,
    run_group,
    scratch_dir,
    summarize,
)

PROBE = b"P"
DATA = b"D"


def _pub(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.SNDHWM, 0)
    s.connect(endpoint)
    return ctx, s


def _sub(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return ctx, s


def _probe_until_go(pub: zmq.Socket, go: Any) -> None:
    while not go.wait(0.005):
        pub.send_multipart([PROBE, b""])


def writer(kind: str, endpoint: str, cells: int, go: Any, queue: Any) -> None:
    ctx, pub = _pub(endpoint)
    encode = msgspec.msgpack.Encoder().encode
    _probe_until_go(pub, go)
    if kind == "raw":
        start = time.monotonic_ns()
        for row, row_cells in iter_rows(cells):
            pub.send_multipart([DATA, encode({TABLE: {row: row_cells}})])
    else:  # pycrdt
        from pycrdt import Doc, Map

        doc = Doc()
        ymap = doc.get(TABLE, type=Map)
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        start = time.monotonic_ns()
        for row, row_cells in iter_rows(cells):
            with doc.transaction():
                for cell, value in row_cells.items():
                    ymap[f"{row}/{cell}"] = value
            pub.send_multipart([DATA, updates.pop()])
    queue.put(("start", start))
    go.wait()  # keep the socket open until the runner has collected everyone
    time.sleep(0.2)
    pub.close(0)
    ctx.term()


def _host(folder: str | None) -> Proxy | None:
    """The run's proxy, in this process when ``folder`` is given (the first reader)."""
    return Proxy(Path(folder)) if folder is not None else None


def _unhost(proxy: Proxy | None, stop: Any) -> None:
    if proxy is not None:
        stop.wait(60)  # (the other processes may still be using it)
        proxy.close()


def reader(
    kind: str, endpoint: str, cells: int, index: int, queue: Any, host: str | None, stop: Any
) -> None:
    proxy = _host(host)
    ctx, sub = _sub(endpoint)
    decode = msgspec.msgpack.Decoder().decode
    ready = False
    count = 0
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    apply_update = None
    ymap = None
    if kind == "pycrdt":
        from pycrdt import Doc, Map

        doc = Doc()
        ymap = doc.get(TABLE, type=Map)
        apply_update = doc.apply_update
    last_key = f"r{rows_for(cells) - 1}/c{CELLS_PER_ROW - 1}"
    poller_timeout_ms = 60_000
    while count < cells:
        if not sub.poll(poller_timeout_ms):
            break
        tag, payload = sub.recv_multipart()
        if tag == PROBE:
            if not ready:
                ready = True
                queue.put(("ready", index))
            continue
        if kind == "raw":
            for table_id, rows in decode(payload).items():
                table = tables.setdefault(table_id, {})
                for row_id, row_cells in rows.items():
                    table.setdefault(row_id, {}).update(row_cells)
                    count += len(row_cells)
        else:
            assert apply_update is not None and ymap is not None
            apply_update(payload)
            # len() of a pycrdt Map is O(n) (0.65 ms at 10^5 keys): checking it per update
            # would make this baseline quadratic, so test the last key first, as localsync does
            if last_key in ymap:
                count = len(ymap)
    queue.put(("done", index, time.monotonic_ns() if count >= cells else None))
    sub.close(0)
    ctx.term()
    _unhost(proxy, stop)


def fanout(kind: str, readers: int, cells: int, timeout: float = 120.0) -> FanoutResult:
    """1 writer, ``readers`` readers; seconds from the first write to the last reader done."""
    from .common import CTX

    folder = scratch_dir("lsb-")
    pub_endpoint, sub_endpoint = Proxy.endpoints(folder)
    queue = CTX.Queue()
    go, stop = CTX.Event(), CTX.Event()
    deadline = time.monotonic() + timeout
    procs = run_group(
        reader,
        [
            (kind, sub_endpoint, cells, i, queue, str(folder) if i == 0 else None, stop)
            for i in range(readers)
        ],
        timeout,
    )
    procs += run_group(writer, [(kind, pub_endpoint, cells, go, queue)], timeout)
    try:
        got = collect(queue, readers, min(deadline, time.monotonic() + 30))
        if len(got) < readers:
            return FanoutResult(None, [None] * readers, "readers never saw the writer")
        go.set()
        events = collect(queue, readers + 1, deadline)
        start = next((e[1] for e in events if e[0] == "start"), None)
        finishes: list[int | None] = [None] * readers
        for e in events:
            if e[0] == "done":
                finishes[e[1]] = e[2]
        return summarize(start, finishes, readers)
    finally:
        go.set()
        stop.set()
        join_all(procs, time.monotonic() + 5)


# --- one-way latency -------------------------------------------------------------------------


def latency_writer(endpoint: str, samples: int, gap: float, go: Any, queue: Any) -> None:
    ctx, pub = _pub(endpoint)
    encode = msgspec.msgpack.Encoder().encode
    _probe_until_go(pub, go)
    for i in range(samples):
        # a single-cell change: {table: {row: {cell: value}}} stamped with its send time
        pub.send_multipart([DATA, encode((time.monotonic_ns(), {TABLE: {"r0": {"c0": i}}}))])
        time.sleep(gap)
    queue.put(("start", 0))
    time.sleep(0.2)
    pub.close(0)
    ctx.term()


def latency_reader(
    endpoint: str, samples: int, index: int, queue: Any, host: str | None, stop: Any
) -> None:
    proxy = _host(host)
    ctx, sub = _sub(endpoint)
    decode = msgspec.msgpack.Decoder().decode
    ready = False
    deltas: list[int] = []
    table: dict[str, dict[str, Any]] = {}
    while len(deltas) < samples:
        if not sub.poll(30_000):
            break
        tag, payload = sub.recv_multipart()
        if tag == PROBE:
            if not ready:
                ready = True
                queue.put(("ready", index))
            continue
        sent, change = decode(payload)
        for row_id, row_cells in change[TABLE].items():
            table.setdefault(row_id, {}).update(row_cells)
        deltas.append(time.monotonic_ns() - sent)
    queue.put(("done", index, deltas))
    sub.close(0)
    ctx.term()
    _unhost(proxy, stop)


def latency(readers: int, samples: int, gap: float = 0.002, timeout: float = 60.0
            ) -> list[float] | None:
    """Every reader's one-way latencies in microseconds, pooled and sorted; None on failure."""
    from .common import CTX

    folder = scratch_dir("lsb-")
    pub_endpoint, sub_endpoint = Proxy.endpoints(folder)
    queue = CTX.Queue()
    go, stop = CTX.Event(), CTX.Event()
    deadline = time.monotonic() + timeout
    procs = run_group(
        latency_reader,
        [
            (sub_endpoint, samples, i, queue, str(folder) if i == 0 else None, stop)
            for i in range(readers)
        ],
        timeout,
    )
    procs += run_group(latency_writer, [(pub_endpoint, samples, gap, go, queue)], timeout)
    try:
        if len(collect(queue, readers, min(deadline, time.monotonic() + 30))) < readers:
            return None
        go.set()
        events = collect(queue, readers + 1, deadline)
        pooled: list[float] = []
        for e in events:
            if e[0] == "done":
                if len(e[2]) < samples:
                    return None
                pooled += [d / 1000 for d in e[2]]
        return sorted(pooled) if pooled else None
    finally:
        go.set()
        stop.set()
        join_all(procs, time.monotonic() + 5)


def latency_summary(values_us: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(values_us, q) for q in (50, 99, 99.9)}


# --- join: a newcomer receives a snapshot of N cells ------------------------------------------


def _snapshot_server(endpoint: str, cells: int, queue: Any) -> None:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoint)
    tables = {TABLE: dict(iter_rows(cells))}
    queue.put(("ready", 0))
    if rep.poll(60_000):
        rep.recv()
        rep.send(msgspec.msgpack.encode(tables))
    time.sleep(0.1)
    rep.close(0)
    ctx.term()


def _joiner(endpoint: str, cells: int, queue: Any) -> None:
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    start = time.monotonic_ns()
    req.connect(endpoint)
    req.send(b"snapshot")
    ok = False
    if req.poll(60_000):
        tables = msgspec.msgpack.decode(req.recv())
        ok = sum(len(r) for r in tables[TABLE].values()) == rows_for(cells) * CELLS_PER_ROW
    queue.put(("done", (time.monotonic_ns() - start) / 1e9 if ok else None))
    req.close(0)
    ctx.term()


def join(cells: int, timeout: float = 120.0) -> float | None:
    """Seconds for a new process to connect, fetch and decode a msgpack snapshot of N cells."""
    from .common import CTX

    folder = scratch_dir("lsb-")
    endpoint = f"ipc://{folder}/rep"
    queue = CTX.Queue()
    deadline = time.monotonic() + timeout
    procs = run_group(_snapshot_server, [(endpoint, cells, queue)], timeout)
    try:
        if not collect(queue, 1, deadline):
            return None
        procs += run_group(_joiner, [(endpoint, cells, queue)], timeout)
        got = collect(queue, 1, deadline)
        return got[0][1] if got else None
    finally:
        join_all(procs, time.monotonic() + 5)
