"""Receiving side of a MergeableStore: ``python -m benchmarks.store_receive [--sizes ...]``.

Why: a reader on a channel applies every writer's ContentDiff, and a replica joining a large
channel applies the whole content at once; the holder builds that content (or a table diff)
for it. These three costs decide the channel's fan-out and join figures, so each is measured
here against a baseline doing the least any Python receiver must do with the same data, in the
same run (so the ratios compare between machines):

(a) ``set_encoded_mergeable_content`` of a store's full encoded content into an empty store,
    vs building the plain nested ``{table: {row: {cell: value}}}`` dict from that content;
(b) ``apply_encoded_mergeable_changes`` of 10-cell row ContentDiffs (what a writer's row
    transactions produce), one transaction each, vs updating a nested dict with each diff's
    cells; settling the hashes afterwards (the first hash read) is reported separately;
(c) ``get_mergeable_table_diff({})`` and ``get_encoded_mergeable_content()`` on the filled
    store, vs copying its plain nested data;
(d) what a joiner does with that table diff (the protocol's path): apply it as changes, then
    settle the hashes on the first read, vs building the plain nested dict from it.

"port" rows run the same operation through the line-by-line port of TinyBase's
mergeContentOrChanges that the tests use as the oracle (tests/core/oracle.py, never
compiled), i.e. what a faithful port costs next to the store's receive path. Timings are
CPU seconds (``time.process_time``), best of ``--repeat``. The baselines run with the
garbage collector disabled, so they are the strictest possible floor. Results are printed
and written to ``benchmarks/results/store_receive.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localsync import create_mergeable_store
from localsync.core.mergeable_store import MergeableStore
from tests.core import oracle

RESULTS = Path(__file__).parent / "results" / "store_receive.json"
TABLE = "t"
CELLS_PER_ROW = 10


def _row(i: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for j in range(CELLS_PER_ROW):
        kind = j % 4
        if kind == 0:
            row[f"c{j}"] = i * CELLS_PER_ROW + j
        elif kind == 1:
            row[f"c{j}"] = f"value {i}-{j}"
        elif kind == 2:
            row[f"c{j}"] = i + j / 8
        else:
            row[f"c{j}"] = (i + j) % 2 == 0
    return row


def make_source(cells: int) -> MergeableStore:
    store = create_mergeable_store("writer")
    with store.transaction():
        for i in range(cells // CELLS_PER_ROW):
            store.set_row(TABLE, f"r{i}", _row(i))
    return store


def make_row_diffs(cells: int) -> list[Any]:
    """The encoded ContentDiff of each of ``cells / 10`` row transactions of a writer."""
    store = create_mergeable_store("writer")
    diffs: list[Any] = []
    store.add_did_finish_transaction_listener(
        lambda s: diffs.append(s.get_encoded_transaction_mergeable_changes())
    )
    for i in range(cells // CELLS_PER_ROW):
        store.set_row(TABLE, f"r{i}", _row(i))
    return diffs


def cpu(
    fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None, no_gc: bool = False
) -> float:
    best = float("inf")
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        gc.collect()
        if no_gc:
            gc.disable()
        try:
            start = time.process_time()
            fn() if arg is None else fn(arg)
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
        del arg
    return best


def plain_from_content(content: Any) -> dict[str, Any]:
    return {
        t: {r: {c: s[0] for c, s in row[0].items()} for r, row in table[0].items()}
        for t, table in content[0][0].items()
    }


def apply_plain_diffs(diffs: list[Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for diff in diffs:
        for t, table in diff[0][0].items():
            rows = data.setdefault(t, {})
            for r, row in table[0].items():
                rows.setdefault(r, {}).update({c: s[0] for c, s in row[0].items()})
    return data


def receiver() -> MergeableStore:
    return create_mergeable_store("reader")


def run(sizes: list[int], repeat: int, port: bool) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    for cells in sizes:
        run_size(figures, cells, repeat, port)
    return figures


def run_size(figures: list[dict[str, Any]], cells: int, repeat: int, port: bool) -> None:
    def add(case: str, cells: int, subject: str, seconds: float, baseline: float) -> None:
        figures.append(
            {
                "case": case,
                "cells": cells,
                "subject": subject,
                "seconds": seconds,
                "us_per_cell": seconds / cells * 1e6,
                "ratio": seconds / baseline,
            }
        )

    source = make_source(cells)
    content = source.get_encoded_mergeable_content()
    expected = source.get_mergeable_content_hashes()

    # (a) full content into an empty store
    base = cpu(lambda: plain_from_content(content), repeat, no_gc=True)
    add("a: apply content", cells, "baseline: plain dict build", base, base)
    fast = cpu(lambda s: s.set_encoded_mergeable_content(content), repeat, setup=receiver)
    add("a: apply content", cells, "store", fast, base)
    if port:
        slow = cpu(lambda s: oracle.apply(s, content, True, True), 1, setup=receiver)
        add("a: apply content", cells, "port (the oracle)", slow, base)
    filled = receiver()
    filled.set_encoded_mergeable_content(content)
    assert filled.get_mergeable_content_hashes() == expected

    # (b) row-sized ContentDiffs, one transaction each
    diffs = make_row_diffs(cells)
    base = cpu(lambda: apply_plain_diffs(diffs), repeat, no_gc=True)
    add("b: apply row diffs", cells, "baseline: plain dict update", base, base)

    def apply_all(store: MergeableStore) -> None:
        for diff in diffs:
            store.apply_encoded_mergeable_changes(diff)

    fast = cpu(apply_all, repeat, setup=receiver)
    add("b: apply row diffs", cells, "store", fast, base)
    applied = receiver()
    apply_all(applied)
    settle = cpu(applied.get_mergeable_content_hashes, 1)
    add("b: apply row diffs", cells, "store: settle hashes afterwards", settle, base)
    if port:

        def apply_all_port(store: MergeableStore) -> None:
            for diff in diffs:
                oracle.apply(store, diff, False, True)

        slow = cpu(apply_all_port, 1, setup=receiver)
        add("b: apply row diffs", cells, "port (the oracle, hashes included)", slow, base)

    # (c) the holder's side: table diff and content for a joiner
    base = cpu(
        lambda: {
            t: {r: dict(row) for r, row in rows.items()} for t, rows in filled._tables.items()
        },
        repeat,
        no_gc=True,
    )
    add("c: build for a joiner", cells, "baseline: plain dict copy", base, base)
    add(
        "c: build for a joiner",
        cells,
        "get_mergeable_table_diff({})",
        cpu(lambda: filled.get_mergeable_table_diff({}), repeat),
        base,
    )
    add(
        "c: build for a joiner",
        cells,
        "get_encoded_mergeable_content()",
        cpu(filled.get_encoded_mergeable_content, repeat),
        base,
    )

    # (d) the joiner's side of the protocol: the table diff arrives as changes (no hashes),
    # then the first hash read settles them
    table_diff = [filled.get_mergeable_table_diff({})[0], [{}], 1]
    base = cpu(lambda: plain_from_content(table_diff), repeat, no_gc=True)
    add("d: join via table diff", cells, "baseline: plain dict build", base, base)
    joined: list[MergeableStore] = []

    def join(store: MergeableStore) -> None:
        store.apply_encoded_mergeable_changes(table_diff)
        joined.append(store)

    add(
        "d: join via table diff",
        cells,
        "store: apply",
        cpu(join, repeat, setup=receiver),
        base,
    )
    add(
        "d: join via table diff",
        cells,
        "store: settle hashes afterwards",
        cpu(joined[-1].get_mergeable_content_hashes, 1),
        base,
    )
    assert joined[-1].get_mergeable_content_hashes() == expected


def print_table(figures: list[dict[str, Any]]) -> None:
    print(f"{'case':<24}{'cells':>9}  {'subject':<36}{'s (CPU)':>9}{'us/cell':>9}{'x base':>8}")
    for f in figures:
        print(
            f"{f['case']:<24}{f['cells']:>9}  {f['subject']:<36}{f['seconds']:>9.3f}"
            f"{f['us_per_cell']:>9.2f}{f['ratio']:>8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="100000,1000000", help="comma-separated cell counts (multiples of 10)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-port", action="store_true", help="skip the (slow) runs of the reference port"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [1000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat
    figures = run(sizes, repeat, not args.no_port)
    print_table(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "meta": {
                    "python": sys.version.split()[0],
                    "machine": platform.machine(),
                    "repeat": repeat,
                    "timer": "process_time",
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                "figures": figures,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
