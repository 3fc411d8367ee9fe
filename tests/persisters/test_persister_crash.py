"""Crash safety with real processes: a writer auto-saving transactions is SIGKILLed at random
points; every reload must succeed and hold every change that was acknowledged as saved.

The writer (``python -m tests.persisters.test_persister_crash KIND PATH``) loads what the previous
(killed) writer left, prints ``ready N`` and then, forever, sets row ``r<i % 1000>`` and
value ``last`` to ``i`` in one transaction, printing ``ack i`` each time its persister's saved
listener reports that transaction durable. A line is printed only after the save that covers
it returned from fsync/commit, so whatever the test read from the pipe before the kill is an
acknowledged change. After each kill the test loads the data in its own process and checks
it; the next writer continues on top of it, so loads after crashes are exercised too. Every
97th transaction is followed by a peer's stamp-only change (a deletion of a cell the writer
never had), so the SQLite persister's repair path is killed mid-way too.

``LOCALSYNC_CRASH_KILLS`` (default 30) sets the kills per persister; the benchmark-style long
run is ``LOCALSYNC_CRASH_KILLS=300 pytest tests/persisters/test_persister_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("LOCALSYNC_CRASH_KILLS", "30"))
SLOTS = 1000  # rows are reused round-robin, so the store stays small over many runs


def _persister(kind: str, store: Any, path: str, on_error: Any = None) -> Any:
    if kind == "file":
        from localsync import create_file_persister

        return create_file_persister(store, path, on_error)
    from localsync import create_sqlite_persister

    return create_sqlite_persister(store, path, on_error)


async def _writer(kind: str, path: str) -> None:
    from localsync import create_mergeable_store

    store = create_mergeable_store()
    persister = _persister(kind, store, path, lambda e: print(f"error {e!r}", flush=True))
    await persister.load()
    last = store.get_value("last")
    i = -1 if last is None else int(last)
    pending: deque[tuple[int, int]] = deque()  # (transaction number, i), oldest first

    def on_saved(_persister: Any, durable: int) -> None:
        acked = None
        while pending and pending[0][0] <= durable:
            acked = pending.popleft()[1]
        if acked is not None:
            sys.stdout.write(f"ack {acked}\n")
            sys.stdout.flush()

    persister.add_saved_listener(on_saved)
    await persister.start_auto_save()
    print(f"ready {i}", flush=True)
    while True:
        i += 1
        with store.transaction():
            store.set_cell("t", f"r{i % SLOTS}", "v", i)
            store.set_value("last", i)
        pending.append((persister.get_save_stats()["transactions"], i))
        if i % 97 == 0:
            # a peer's deletion of a cell this store never had: a stamp-only change, which
            # the SQLite persister saves through its hash-tree repair path
            peer = create_mergeable_store()
            peer.set_cell("peer", f"x{i}", "c", i)
            peer.del_cell("peer", f"x{i}", "c")
            store.apply_mergeable_changes(peer.get_mergeable_content())
        await asyncio.sleep(0 if i % 50 else 0.001)


def _check(kind: str, path: Path, acked: int) -> int:
    """Load in this process; every acknowledged row must be there, hashes must be sound."""
    from localsync import create_mergeable_store

    errors: list[BaseException] = []

    async def load() -> Any:
        store = create_mergeable_store()
        persister = _persister(kind, store, str(path), errors.append)
        await persister.load()
        await persister.destroy()
        return store

    store = asyncio.run(load())
    assert not errors, f"reload failed: {errors!r}"
    last = store.get_value("last")
    assert acked < 0 or (last is not None and last >= acked), (last, acked)
    rows = store.get_table("t")
    # what is there is exactly the state after transaction `last` (no torn save): slot k
    # holds the latest i <= last with i % SLOTS == k
    top = -1 if last is None else int(last)
    expected = {f"r{k}": {"v": top - (top - k) % SLOTS} for k in range(min(top + 1, SLOTS))}
    assert rows == expected, f"state is not the snapshot after transaction {top}"
    # the persisted hashes must describe the persisted cells: re-merging recomputes them
    fresh = create_mergeable_store()
    fresh.apply_mergeable_changes(store.get_mergeable_content())
    assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
    return -1 if last is None else int(last)


def _run_until_killed(kind: str, path: Path, rng: random.Random) -> int:
    """Start a writer, kill it at a random point after it is ready; return the last ack."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.persisters.test_persister_crash", kind, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    acked = -1
    try:
        deadline = time.monotonic() + 30
        line = ""
        while not line.startswith("ready"):
            ready, _, _ = select.select(
                [proc.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                pytest.fail("writer never became ready")
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {proc.stderr.read() if proc.stderr else ''}")
            assert not line.startswith("error"), line
        time.sleep(rng.uniform(0.0, 0.25))
    finally:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    for line in out.splitlines():
        assert not line.startswith("error"), (line, err[-2000:])
        if line.startswith("ack "):
            acked = max(acked, int(line.split()[1]))
    return acked


@pytest.mark.process
@pytest.mark.timeout(60 + 3 * KILLS)  # each kill cycle takes ~0.5-1 s; generous under load
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_sigkill_never_loses_acknowledged_saves(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("store.json" if kind == "file" else "store.sqlite")
    rng = random.Random(f"{kind}-{os.getpid()}-{time.time()}")
    acked_total = 0
    highest = -1
    for _ in range(KILLS):
        acked = _run_until_killed(kind, path, rng)
        highest = _check(kind, path, max(acked, highest))
        acked_total += acked >= 0
    assert highest > 0, "the writers never got a save acknowledged"
    assert acked_total > KILLS // 2, "too few runs got as far as an acknowledged save"


if __name__ == "__main__":
    asyncio.run(_writer(sys.argv[1], sys.argv[2]))
