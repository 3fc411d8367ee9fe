"""File, SQLite and PostgreSQL persister cost: ``python -m benchmarks.persist [--max-cells N]
[--tx 20] [--postgres-max-cells N | --no-postgres] [--out FILE]``.

Why: a persister's whole-store save/load bounds how fast a coordinator starts and how big a
store can be kept on disk, and the cost of auto-saving *one small transaction* decides whether
persistence can stay on for a busy store. The file persister rewrites the whole file on every
save (that is TinyBase's format), so its per-transaction cost grows with the store; the
SQLite persister writes only the touched stamps, so its cost must stay flat from 10^4 to
10^6 cells - the ``tx vs 10^4`` column shows it.

Baselines measured in the same run on the same content:

* ``raw json``: ``json.dumps`` + write + fsync of the same encoded content, and read +
  ``json.loads`` of it (what a file persister cannot beat);
* ``raw sqlite``: ``executemany`` of the same cells as rows into a fresh WAL database with
  ``synchronous=FULL`` + commit, and a ``SELECT`` of them back (``fetchall``).

Loads (ours and both raw ones) run with the cyclic garbage collector paused, as the file and
SQLite persisters pause it for a load (``localsync.core.collector.paused``); ``json gc on``
is the same ``json.loads`` with the collector running, for reference. A load figure is the
median of ``--load-repeats`` loads into a new store each (the previous one collected
first), ``install`` the median time of ``set_encoded_mergeable_content`` of the same
content into an empty store (validation included: what a snapshot join or a load pays once
the content is decoded).
* ``raw postgres``: ``json.dumps`` of the same content + one psycopg upsert of it as the one
  row of a table (autocommit: durable at commit), and a ``SELECT`` + ``json.loads`` of it back;
  its ``1 tx`` is that whole write again (the PostgreSQL persister's JSON mode - TinyBase's
  layout - rewrites the whole row on every save, so it cannot beat that).

PostgreSQL: a server started by the benchmark with ``pgserver`` (a temporary folder, Unix
socket, default ``fsync``/``synchronous_commit``; deleted at the end), measured at the sizes
up to ``--postgres-max-cells`` (default 100,000; 10^6 takes minutes). When pgserver or psycopg
is missing or the server cannot start, the reason is printed and the PostgreSQL rows are
skipped. Its ``cpu ms`` is this process's only (the server's CPU is not counted) and ``MB``
is ``pg_total_relation_size`` (TOAST compresses the JSON; row versions that the
auto-saved transactions left for VACUUM count too).

Stores are filled with ``set_encoded_mergeable_content`` from generated content (10 cells
per row), so building a 10^6-cell store does not dominate the run. Every save here is durable
(fsync). The per-transaction figure is the median over ``--tx`` transactions (5 for the file
persister from 10^5 cells, where each one rewrites the whole file) of: one
``set_cell`` under auto-save, then ``await persister.flush()`` (acknowledged as durable).
``burst writes`` counts the disk writes that 1,000 back-to-back auto-saved transactions caused.
``cpu ms`` is this process's CPU time per auto-saved transaction (worker threads included,
fsync waits and other processes excluded), the stable figure on a busy machine.
``rows/tx`` is SQLite's own count of rows written per auto-saved transaction: the cost that
does not depend on the disk (fsync latency varies with the filesystem and with how large the
WAL file already is, so the millisecond figure is noisy at this scale; the row count is not).

Results: a table on stdout and ``benchmarks/results/persist.json`` (or ``--out FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localsync import create_file_persister, create_mergeable_store, create_sqlite_persister
from localsync.core.collector import paused
from localsync.core.hash import get_value_in_values_hash as in_hash
from localsync.persisters._integrity import recompute_hashes
from localsync.persisters.postgres import create_postgres_persister

RESULTS = Path(__file__).parent / "results" / "persist.json"
CELLS_PER_ROW = 10
HLC = "NjEtLV-----VnP9x"


def make_content(cells: int) -> list[Any]:
    """Encoded mergeable content with ``cells`` cells, hashes consistent at every level."""
    rows = cells // CELLS_PER_ROW
    cell_ids = [f"c{c}" for c in range(CELLS_PER_ROW)]
    zero_terms = 0
    for cell_id in cell_ids:
        zero_terms ^= in_hash(cell_id, 0)
    table: dict[str, Any] = {}
    table_hash = 0
    for r in range(rows):
        row: dict[str, Any] = {}
        row_hash = zero_terms
        for c, cell_id in enumerate(cell_ids):
            value = f"value {r}/{c}" if c % 2 else r * CELLS_PER_ROW + c
            cell_hash = (r * 2654435761 + c * 40503) & 0xFFFFFFFF
            row[cell_id] = [value, HLC, cell_hash]
            row_hash ^= in_hash(cell_id, cell_hash)
        row_id = f"r{r}"
        table[row_id] = [row, "", row_hash]
        table_hash ^= in_hash(row_id, row_hash)
    tables_hash = in_hash("t", table_hash)
    content = [[{"t": [table, "", table_hash]}, "", tables_hash], [{}, "", 0]]
    # the cell hashes above are not the values' hashes: a load would recompute them (and
    # report HashesRepaired), so make every level what the store itself would compute
    recompute_hashes(content)
    return content


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def atimed(coro: Any) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


def paused_timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median time of ``fn()`` with the cyclic collector paused, its result freed inside."""

    def once() -> float:
        with paused:
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            del result
        return elapsed

    return statistics.median(once() for _ in range(repeats))


def raw_json(content: list[Any], folder: Path, repeats: int) -> tuple[float, float, float]:
    """(write + fsync, read + ``json.loads`` paused, the same with the collector on) seconds."""
    path = folder / "raw.json"

    def write() -> None:
        data = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    write_s = timed(write)
    read_s = paused_timed(lambda: json.loads(path.read_bytes()), repeats)
    gc_on_s = timed(lambda: json.loads(path.read_bytes()))
    return write_s, read_s, gc_on_s


def install(content: list[Any], repeats: int) -> float:
    """Median seconds of ``set_encoded_mergeable_content`` of ``content`` into an empty store."""
    times = []
    for _ in range(repeats):
        store = create_mergeable_store()
        start = time.perf_counter()
        store.set_encoded_mergeable_content(content)
        times.append(time.perf_counter() - start)
        del store
        gc.collect()
    return statistics.median(times)


def raw_sqlite(content: list[Any], folder: Path, repeats: int) -> tuple[float, float]:
    path = folder / "raw.sqlite"
    rows = [
        (table_id, row_id, cell_id, json.dumps(stamp[0]), stamp[1], stamp[2])
        for table_id, table_stamp in content[0][0].items()
        for row_id, row_stamp in table_stamp[0].items()
        for cell_id, stamp in row_stamp[0].items()
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE c (t TEXT, r TEXT, c TEXT, thing TEXT, hlc TEXT, hash INTEGER, "
        "PRIMARY KEY (t, r, c)) WITHOUT ROWID"
    )

    def write() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO c VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    write_s = timed(write)
    read_s = paused_timed(lambda: conn.execute("SELECT * FROM c").fetchall(), repeats)
    conn.close()
    return write_s, read_s


class Postgres:
    """A PostgreSQL server started by pgserver for this run (``start`` returns None + reason)."""

    def __init__(self, handle: Any, uri: str, folder: Path) -> None:
        self.handle, self.uri, self.folder = handle, uri, folder

    @staticmethod
    def start() -> tuple[Postgres | None, str]:
        import shutil
        import warnings

        try:
            import psycopg  # noqa: F401

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
                import pgserver
        except ImportError as error:
            return None, f"needs psycopg and pgserver (pip install -e '.[test]'): {error}"
        # not under a private folder: as root, the server runs as user "pgserver"
        folder = Path(tempfile.mkdtemp(prefix="localsync-bench-pg-"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                handle = pgserver.get_server(folder / "data", cleanup_mode="delete")
            return Postgres(handle, handle.get_uri(), folder), ""
        except Exception as error:
            shutil.rmtree(folder, ignore_errors=True)
            return None, f"pgserver could not start a server here: {error!r}"

    def stop(self) -> None:
        import shutil

        try:
            self.handle.cleanup()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def execute(self, sql: str, params: Any = None) -> Any:
        import psycopg

        with psycopg.connect(self.uri, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None


def raw_postgres(content: list[Any], pg: Postgres, table: str, transactions: int) -> dict[str, Any]:
    """The same JSON written and read by plain psycopg (one row, upsert, autocommit)."""
    import psycopg

    with psycopg.connect(pg.uri, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{table}"(_id text PRIMARY KEY, store text)')

        def write() -> None:
            text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
            conn.execute(
                f'INSERT INTO "{table}" VALUES(%s,%s) '
                "ON CONFLICT(_id) DO UPDATE SET store=excluded.store",
                ["_", text],
            )

        def read() -> Any:
            row = conn.execute(f'SELECT store FROM "{table}" WHERE _id=%s', ["_"]).fetchone()
            assert row is not None
            return json.loads(row[0])

        save_s = timed(write)
        load_s = timed(read)
        per_tx = [timed(write) for _ in range(transactions)]
    return {"save_s": save_s, "load_s": load_s, "tx_s": statistics.median(per_tx)}


async def measure_persister(
    kind: str,
    content: list[Any],
    folder: Path,
    transactions: int,
    pg: Postgres | None = None,
    load_repeats: int = 1,
) -> dict[str, Any]:
    path = folder / ("store.json" if kind == "file" else "store.sqlite")
    table = f"bench_{len(content[0][0]['t'][0]) * CELLS_PER_ROW}"

    def factory(store: Any, path: Path) -> Any:
        if kind == "postgres":
            assert pg is not None
            return create_postgres_persister(store, pg.uri, table)
        if kind == "file":
            return create_file_persister(store, path)
        return create_sqlite_persister(store, path)

    store = create_mergeable_store()
    store.set_encoded_mergeable_content(content)
    persister = factory(store, path)
    save_s = await atimed(persister.save())

    loads = []
    for _ in range(load_repeats):
        fresh = create_mergeable_store()
        reader = factory(fresh, path)
        loads.append(await atimed(reader.load()))
        assert fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
        await reader.destroy()
        del fresh, reader
        gc.collect()  # (each load starts from a heap without the last one's cyclic garbage)
    load_s = statistics.median(loads)

    await persister.start_auto_save()
    rows = len(content[0][0]["t"][0])
    if kind in ("file", "postgres") and len(content[0][0]["t"][0]) * CELLS_PER_ROW >= 100_000:
        transactions = min(transactions, 5)  # each one rewrites the whole file / row
    per_tx = []
    conn = persister._backend.storage._connect() if kind == "sqlite" else None
    changes_before = conn.total_changes if conn is not None else 0
    cpu_before = time.process_time()
    for k in range(transactions):
        start = time.perf_counter()
        store.set_cell("t", f"r{(k * 7919) % rows}", "c0", -(k + 1))
        await persister.flush()
        per_tx.append(time.perf_counter() - start)

    cpu_per_tx = (time.process_time() - cpu_before) / transactions
    rows_per_tx = (conn.total_changes - changes_before) / transactions if conn else None
    before = persister.get_save_stats()["writes"]
    for k in range(1000):
        store.set_cell("t", f"r{k % rows}", "c1", f"burst {k}")
    await persister.flush()
    burst_writes = persister.get_save_stats()["writes"] - before
    await persister.destroy()
    if kind == "postgres":
        assert pg is not None
        size = pg.execute("SELECT pg_total_relation_size(%s)", [f'"{table}"'])[0][0]
    else:
        size = path.stat().st_size
    return {
        "save_s": save_s,
        "load_s": load_s,
        "tx_s": statistics.median(per_tx),
        "tx_mean_s": statistics.fmean(per_tx),
        "tx_cpu_s": cpu_per_tx,
        "sqlite_rows_per_tx": rows_per_tx,
        "burst_writes": burst_writes,
        "bytes": size,
    }


async def run(
    max_cells: int, transactions: int, postgres_max_cells: int = 100_000, load_repeats: int = 3
) -> dict[str, Any]:
    sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= max_cells]
    results: dict[str, Any] = {"sizes": {}}
    pg: Postgres | None = None
    if postgres_max_cells > 0 and sizes and sizes[0] <= postgres_max_cells:
        print("  starting PostgreSQL (pgserver) ...", file=sys.stderr, flush=True)
        pg, reason = Postgres.start()
        if pg is None:
            print(f"PostgreSQL skipped: {reason}", flush=True)
            results["postgres_skipped"] = reason
    try:
        await _run_sizes(sizes, transactions, postgres_max_cells, pg, results, load_repeats)
    finally:
        if pg is not None:
            pg.stop()
    return results


async def _run_sizes(
    sizes: list[int],
    transactions: int,
    postgres_max_cells: int,
    pg: Postgres | None,
    results: dict[str, Any],
    load_repeats: int = 3,
) -> None:
    for cells in sizes:
        content = make_content(cells)
        with tempfile.TemporaryDirectory(prefix="localsync-bench-") as tmp:
            folder = Path(tmp)
            raw_json_w, raw_json_r, raw_json_gc_on = raw_json(content, folder, load_repeats)
            raw_sql_w, raw_sql_r = raw_sqlite(content, folder, load_repeats)
            entry: dict[str, Any] = {
                "raw_json": {
                    "save_s": raw_json_w,
                    "load_s": raw_json_r,
                    "load_gc_on_s": raw_json_gc_on,
                },
                "raw_sqlite": {"save_s": raw_sql_w, "load_s": raw_sql_r},
                "install": {"load_s": install(content, load_repeats)},
            }
            for kind in ("file", "sqlite"):
                print(f"  {cells:>9,} cells: {kind} ...", file=sys.stderr, flush=True)
                entry[kind] = await measure_persister(
                    kind, content, folder, transactions, load_repeats=load_repeats
                )
            if pg is not None and cells <= postgres_max_cells:
                print(f"  {cells:>9,} cells: postgres ...", file=sys.stderr, flush=True)
                raw_tx = min(transactions, 5) if cells >= 100_000 else transactions
                entry["raw_postgres"] = raw_postgres(content, pg, f"raw_{cells}", raw_tx)
                entry["postgres"] = await measure_persister(
                    "postgres", content, folder, transactions, pg, load_repeats
                )
        results["sizes"][str(cells)] = entry


def table(results: dict[str, Any]) -> str:
    sizes = list(results["sizes"])
    first = sizes[0]
    lines = [
        f"{'cells':>10} {'persister':<8} {'save s':>8} {'x raw':>6} {'load s':>8} {'x raw':>6} "
        f"{'1 tx ms':>8} {'tx vs 10^4':>10} {'cpu ms':>7} {'cpu vs 10^4':>11} {'rows/tx':>7} "
        f"{'burst writes':>12} {'MB':>7}",
    ]
    for size in sizes:
        entry = results["sizes"][size]
        for kind, raw in (
            ("file", "raw_json"),
            ("sqlite", "raw_sqlite"),
            ("postgres", "raw_postgres"),
        ):
            if kind not in entry or kind not in results["sizes"][first]:
                continue
            row = entry[kind]
            base = entry[raw]
            growth = row["tx_s"] / results["sizes"][first][kind]["tx_s"]
            cpu_growth = row["tx_cpu_s"] / results["sizes"][first][kind]["tx_cpu_s"]
            row["tx_cpu_vs_smallest"] = cpu_growth
            rows_per_tx = (
                "-" if row["sqlite_rows_per_tx"] is None else f"{row['sqlite_rows_per_tx']:.1f}"
            )
            row["save_x_raw"] = row["save_s"] / base["save_s"]
            row["load_x_raw"] = row["load_s"] / base["load_s"]
            row["tx_vs_smallest"] = growth
            lines.append(
                f"{int(size):>10,} {kind:<8} {row['save_s']:>8.3f} {row['save_x_raw']:>6.1f} "
                f"{row['load_s']:>8.3f} {row['load_x_raw']:>6.1f} {row['tx_s'] * 1000:>8.2f} "
                f"{growth:>10.2f} {row['tx_cpu_s'] * 1000:>7.2f} {cpu_growth:>11.2f} "
                f"{rows_per_tx:>7} {row['burst_writes']:>12} "
                f"{row['bytes'] / 1e6:>7.1f}"
            )
        lines.append(
            f"{'':>10} {'baseline':<8} raw json save {entry['raw_json']['save_s']:.3f} s, "
            f"load {entry['raw_json']['load_s']:.3f} s (gc on "
            f"{entry['raw_json']['load_gc_on_s']:.3f} s); raw sqlite save "
            f"{entry['raw_sqlite']['save_s']:.3f} s, load {entry['raw_sqlite']['load_s']:.3f} s; "
            f"install into an empty store {entry['install']['load_s'] * 1000:.1f} ms"
        )
        if "raw_postgres" in entry:
            raw = entry["raw_postgres"]
            lines.append(
                f"{'':>10} {'baseline':<8} raw psycopg save {raw['save_s']:.3f} s, "
                f"load {raw['load_s']:.3f} s, 1 tx (the whole JSON again) "
                f"{raw['tx_s'] * 1000:.2f} ms"
            )
    if "postgres_skipped" in results:
        lines.append(f"PostgreSQL skipped: {results['postgres_skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.persist", description=__doc__)
    parser.add_argument("--max-cells", type=int, default=1_000_000)
    parser.add_argument("--tx", type=int, default=50, help="transactions timed per size")
    parser.add_argument(
        "--postgres-max-cells",
        type=int,
        default=100_000,
        help="largest size measured with PostgreSQL (1000000 for 10^6: minutes)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--load-repeats", type=int, default=3, help="loads per size and persister (median)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON file")
    args = parser.parse_args(argv)
    postgres_max = 0 if args.no_postgres else args.postgres_max_cells
    results = asyncio.run(run(args.max_cells, args.tx, postgres_max, args.load_repeats))
    text = table(results)
    print(text)
    results["machine"] = {"python": sys.version.split()[0], "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
