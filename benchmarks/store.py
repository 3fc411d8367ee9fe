"""Store write/read/merge cost per cell: ``python -m benchmarks.store [--rows N] [--profile]``.

Why: the per-cell cost of a MergeableStore decides how much a worker can write and how
large a store a late joiner can take in. The issue sets two targets for 100,000 cells
(10,000 rows x 10 cells, one transaction per row): >= 150,000 cells/s written with hashes
maintained, and <= 300 bytes per cell.

Every figure is measured in this run next to a baseline measured in the same run (plain
nested-dict writes of the same data), so the ratios are comparable between machines.
Timings are the best of ``--repeat`` runs. Memory is measured with ``tracemalloc`` in a
separate, untimed pass: bytes allocated while filling the store and still alive afterwards,
so the source data (ids and values built beforehand and shared with the store) is not
counted - for the store or for the dict baseline.

Results are printed as a table and written to ``benchmarks/results/store.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import platform
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localsync import create_mergeable_store, create_store

RESULTS = Path(__file__).parent / "results" / "store.json"
TABLE = "t"
CELLS_PER_ROW = 10
TARGET_CELLS_PER_SECOND = 150_000
TARGET_BYTES_PER_CELL = 300

Rows = list[tuple[str, dict[str, Any]]]


def make_rows(count: int) -> Rows:
    """Rows of mixed cells (ints, floats, strings, bools), as a typical app table has."""
    cell_ids = [f"c{j}" for j in range(CELLS_PER_ROW)]
    rows: Rows = []
    for i in range(count):
        row: dict[str, Any] = {}
        for j, cell_id in enumerate(cell_ids):
            kind = j % 4
            if kind == 0:
                row[cell_id] = i * CELLS_PER_ROW + j
            elif kind == 1:
                row[cell_id] = f"value {i}-{j}"
            elif kind == 2:
                row[cell_id] = i + j / 8
            else:
                row[cell_id] = (i + j) % 2 == 0
        rows.append((f"r{i}", row))
    return rows


# ------------------------------------------------------------------------- workloads


def write_dict(rows: Rows) -> dict[str, dict[str, dict[str, Any]]]:
    """Baseline: the same cell writes into nested dicts (no validation, stamps or hashes)."""
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    table = tables.setdefault(TABLE, {})
    for row_id, row in rows:
        target = table.setdefault(row_id, {})
        for cell_id, cell in row.items():
            target[cell_id] = cell
    return tables


def write_store(rows: Rows) -> Any:
    store = create_store()
    set_row = store.set_row
    for row_id, row in rows:
        set_row(TABLE, row_id, row)
    return store


def write_mergeable(rows: Rows) -> Any:
    """set_row per row, then read the content hashes so lazily kept hashes are settled."""
    store = create_mergeable_store("bench")
    set_row = store.set_row
    for row_id, row in rows:
        set_row(TABLE, row_id, row)
    store.get_mergeable_content_hashes()
    return store


def write_mergeable_transactions(rows: Rows) -> Any:
    """One explicit transaction of ten set_cell calls per row (the other common style)."""
    store = create_mergeable_store("bench")
    set_cell = store.set_cell
    for row_id, row in rows:
        with store.transaction():
            for cell_id, cell in row.items():
                set_cell(TABLE, row_id, cell_id, cell)
    store.get_mergeable_content_hashes()
    return store


# ------------------------------------------------------------------------- measuring


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def retained_bytes(fn: Callable[[], Any]) -> int:
    """Bytes allocated by ``fn`` that are still alive while its result is kept."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = fn()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del result
    return after - before


def profile(fn: Callable[[], Any], top: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run(rows_count: int, repeat: int) -> dict[str, Any]:
    rows = make_rows(rows_count)
    cells = rows_count * CELLS_PER_ROW

    t_dict, _ = best_time(lambda: write_dict(rows), repeat)
    t_store, _ = best_time(lambda: write_store(rows), repeat)
    t_merge, store = best_time(lambda: write_mergeable(rows), repeat)
    t_merge_tx, _ = best_time(lambda: write_mergeable_transactions(rows), repeat)
    t_content, content = best_time(store.get_mergeable_content, repeat)

    def apply_to_empty() -> Any:
        fresh = create_mergeable_store("fresh")
        fresh.apply_mergeable_changes(content)
        fresh.get_mergeable_content_hashes()
        return fresh

    t_apply, fresh = best_time(apply_to_empty, repeat)
    converged = (
        fresh.get_mergeable_content_hashes() == store.get_mergeable_content_hashes()
        and fresh.get_tables() == store.get_tables()
    )
    del fresh

    mem_dict = retained_bytes(lambda: write_dict(rows))
    mem_store = retained_bytes(lambda: write_store(rows))
    mem_merge = retained_bytes(lambda: write_mergeable(rows))

    def rate(seconds: float) -> float:
        return cells / seconds

    return {
        "rows": rows_count,
        "cells": cells,
        "repeat": repeat,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "memory_method": "tracemalloc: bytes allocated while filling and still alive "
        "(source ids/values built beforehand are not counted)",
        "write": {
            "dict_baseline": {"seconds": t_dict, "cells_per_second": rate(t_dict)},
            "store_set_row": {"seconds": t_store, "cells_per_second": rate(t_store)},
            "mergeable_set_row_hashed": {"seconds": t_merge, "cells_per_second": rate(t_merge)},
            "mergeable_transaction_set_cell_hashed": {
                "seconds": t_merge_tx,
                "cells_per_second": rate(t_merge_tx),
            },
        },
        "ratios_vs_dict": {
            "store_set_row": t_store / t_dict,
            "mergeable_set_row_hashed": t_merge / t_dict,
            "mergeable_transaction_set_cell_hashed": t_merge_tx / t_dict,
        },
        "mergeable_vs_store": t_merge / t_store,
        "get_mergeable_content_seconds": t_content,
        "apply_to_empty_store_seconds": t_apply,
        "apply_to_empty_converged": converged,
        "bytes_per_cell": {
            "dict_baseline": mem_dict / cells,
            "store": mem_store / cells,
            "mergeable": mem_merge / cells,
        },
        "targets": {
            "cells_per_second": TARGET_CELLS_PER_SECOND,
            "bytes_per_cell": TARGET_BYTES_PER_CELL,
            "write_target_met": rate(t_merge) >= TARGET_CELLS_PER_SECOND,
            "memory_target_met": mem_merge / cells <= TARGET_BYTES_PER_CELL,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    cells = result["cells"]
    write = result["write"]
    base = write["dict_baseline"]["seconds"]
    print(
        f"\nstore benchmark: {result['rows']:,} rows x {CELLS_PER_ROW} = {cells:,} cells, "
        f"best of {result['repeat']} (Python {result['python']})\n"
    )
    print(f"{'write path':44} {'seconds':>9} {'cells/s':>12} {'x dict':>8}")
    labels = {
        "dict_baseline": "nested dict (baseline)",
        "store_set_row": "Store.set_row",
        "mergeable_set_row_hashed": "MergeableStore.set_row + hashes settled",
        "mergeable_transaction_set_cell_hashed": "MergeableStore tx of 10 set_cell + hashes",
    }
    for key, label in labels.items():
        entry = write[key]
        print(
            f"{label:44} {entry['seconds']:9.3f} {entry['cells_per_second']:12,.0f} "
            f"{entry['seconds'] / base:8.1f}"
        )
    print()
    print(
        f"{'get_mergeable_content':44} {result['get_mergeable_content_seconds']:9.3f} "
        f"{cells / result['get_mergeable_content_seconds']:12,.0f}"
    )
    print(
        f"{'apply_mergeable_changes(content) to empty':44} "
        f"{result['apply_to_empty_store_seconds']:9.3f} "
        f"{cells / result['apply_to_empty_store_seconds']:12,.0f}"
        f"   converged: {result['apply_to_empty_converged']}"
    )
    print()
    memory = result["bytes_per_cell"]
    print(f"{'memory (tracemalloc, retained)':44} {'bytes/cell':>9} {'x dict':>12}")
    for key, label in (
        ("dict_baseline", "nested dict (baseline)"),
        ("store", "Store"),
        ("mergeable", "MergeableStore"),
    ):
        print(f"{label:44} {memory[key]:9.0f} {memory[key] / memory['dict_baseline']:12.1f}")
    targets = result["targets"]
    print(
        f"\ntargets: >= {targets['cells_per_second']:,} cells/s hashed: "
        f"{'met' if targets['write_target_met'] else 'MISSED'}; "
        f"<= {targets['bytes_per_cell']} bytes/cell: "
        f"{'met' if targets['memory_target_met'] else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of the hashed write path"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    result = run(args.rows, args.repeat)
    print_table(result)
    if args.profile:
        rows = make_rows(args.rows)
        print("\ncProfile: MergeableStore.set_row + hashes settled")
        print(profile(lambda: write_mergeable(rows)))
        store = write_mergeable(rows)
        content = store.get_mergeable_content()
        print("\ncProfile: apply_mergeable_changes(content) to an empty store")
        print(profile(lambda: create_mergeable_store("f").apply_mergeable_changes(content)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
