"""Writes the suite's results: ``results.json``, ``results.md``, PNG charts, the README's table.

Every figure is stored with its absolute value and, where its group has one, its ratio to the
group's reference baseline measured in the same run; the Markdown table shows both, and the
machine the absolute figures came from heads the page, so no number stands without context.

``python -m benchmarks.report [--results FILE] [--readme [FILE]]`` pastes the target table of a
``results.json`` (default: ``benchmarks/results/results.json``) into the README, between the
lines ``README_BEGIN`` and ``README_END``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
#: the README lines between which ``paste_into_readme`` writes the summary table
README_BEGIN = "<!-- benchmark table: written by python -m benchmarks.report from results.json -->"
README_END = "<!-- end of benchmark table -->"


@dataclass
class Figure:
    """One measured number. ``value`` None means "not available"; ``note`` says why."""

    scenario: str
    metric: str
    subject: str
    params: dict[str, Any]
    value: float | None
    unit: str
    reference: str | None = None  # subject whose figure in the same group is the ratio's base
    ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def group_key(self) -> tuple[str, str, str]:
        return (self.scenario, self.metric, json.dumps(self.params, sort_keys=True))


def compute_ratios(figures: list[Figure]) -> None:
    """ratio = value / reference's value within (scenario, metric, params)."""
    groups: dict[tuple[str, str, str], list[Figure]] = defaultdict(list)
    for f in figures:
        groups[f.group_key()].append(f)
    for members in groups.values():
        for f in members:
            if f.reference is None or f.value is None:
                continue
            ref = next((m for m in members if m.subject == f.reference), None)
            if ref is not None and ref.value not in (None, 0):
                f.ratio = f.value / ref.value


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "us":
        return f"{value:.0f} µs" if value >= 10 else f"{value:.1f} µs"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "B":
        return f"{value:.0f} B"
    if unit in ("cells/s", "ops/s", "msg/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.4g} {unit}".strip()


def _params(params: dict[str, Any]) -> str:
    return (
        ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in params.items())
        or "-"
    )


def write_json(
    path: Path, meta: dict[str, Any], figures: list[Figure], areas: dict[str, Any]
) -> None:
    data = {"meta": meta, "figures": [asdict(f) for f in figures], "area_benchmarks": areas}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and len(value) <= 20:
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    elif isinstance(value, int | float | str | bool) or value is None:
        yield prefix, value


# --------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of issue 19, checked against a run's figures.

    The figure is localsync's (``subject``) in ``scenario``/``metric`` whose params include
    ``params``; ``baseline`` is the subject beside it in the same run. ``kind``:
    ``"ratio"``: localsync ÷ baseline ≤ ``limit``; ``"speedup"``: baseline ÷ localsync ≥
    ``limit``; ``"value"``: localsync's own figure ≤ ``limit`` (in the figure's unit),
    ``"under"``: < ``limit``.
    """

    figure: str
    scenario: str
    metric: str
    params: tuple[tuple[str, Any], ...]
    baseline: str
    kind: str
    limit: float
    goal: str
    subject: str = "localsync"


RAW = "raw pyzmq+msgspec"
PYCRDT = "pycrdt over zmq"
SNAPSHOT = "raw zmq REQ/REP msgpack snapshot"
TINYBASE_MEMORY = "TinyBase MergeableStore (Node heap)"
TINYBASE_SERVER = "TinyBase createWsServer"
RAW_JSON = "json.loads of the same file"
RAW_SQLITE = "raw sqlite SELECT"
PYTHON_STACK = "Python clients + localsync server"
TINYBASE_STACK = "TinyBase clients + TinyBase server"


def _readers(n: int) -> str:
    return f"{n} reader" + ("" if n == 1 else "s")


def _targets() -> list[Target]:
    fan = "fan-out 10^5 cells, "
    ws_tb = "no slower than on TinyBase's server"
    # (figure, scenario, metric, params, baseline, kind, limit, goal[, subject])
    # fmt: off
    rows: list[tuple[Any, ...]] = [
        *[(fan + _readers(r), "fanout", "convergence", (("readers", r), ("cells", 100_000)),
           RAW, "ratio", 2.0, "≤ 2× raw") for r in (1, 3)],
        *[(fan + _readers(r), "fanout", "convergence", (("readers", r), ("cells", 100_000)),
           PYCRDT, "speedup", 1.5, "≥ 1.5× faster than pycrdt") for r in (1, 3)],
        ("join 10^5 cells", "join", "join time", (("cells", 100_000),), SNAPSHOT, "ratio", 5.0,
         "≤ 5× raw snapshot"),
        ("join 10^6 cells", "join", "join time", (("cells", 1_000_000),), SNAPSHOT, "value", 1.5,
         "≤ 1.5 s"),
        *[(f"load 10^{e} cells, {persister} persister", "load", "load",
           (("cells", 10**e), ("persister", persister)), raw, "value", limit, f"≤ {limit:g} s")
          for persister, raw in (("file", RAW_JSON), ("SQLite", RAW_SQLITE))
          for e, limit in ((5, 0.3), (6, 3.0))],
        *[(f"memory, 10^{e} cells (RSS)", "memory", "bytes per cell", (("cells", 10**e),),
           TINYBASE_MEMORY, "value", 200.0, "≤ 200 B/cell") for e in (5, 6)],
        *[row for r in (1, 3) for row in (
            (f"one-cell latency p50, {_readers(r)}", "latency", "p50", (("readers", r),), RAW,
             "ratio", 1.3, "≤ 1.3× raw"),
            (f"one-cell latency p99, {_readers(r)}", "latency", "p99", (("readers", r),), RAW,
             "under", 1000.0, "< 1 ms"))],
        *[(f"WebSocket fill, {n} raw clients: our server alone", "ws", "fill",
           (("clients", f"{n} raw"),), TINYBASE_SERVER, "speedup", 5.0,
           "≥ 5× faster than TinyBase's server") for n in (2, 8)],
        *[(f"WebSocket fill, {n} clients: whole stack", "ws", "fill (whole stack)",
           (("clients", n),), TINYBASE_STACK, "speedup", 5.0, "≥ 5× faster than TinyBase's",
           PYTHON_STACK) for n in (2, 8)],
        *[(f"WebSocket {m}, {n} TinyBase clients: on our server", "ws", m,
           (("clients", f"{n} tinybase"),), TINYBASE_SERVER, "ratio", 1.0, ws_tb)
          for n in (2, 8) for m in ("fill", "p50")],
    ]
    # fmt: on
    return [Target(*row) for row in rows]


#: issue 19's targets, in the order of its list
TARGETS = _targets()


def _find(
    figures: list[Figure],
    scenario: str,
    metric: str,
    subject: str,
    params: tuple[tuple[str, Any], ...],
) -> Figure | None:
    for f in figures:
        if (
            f.scenario == scenario
            and f.metric == metric
            and f.subject == subject
            and all(f.params.get(k) == v for k, v in params)
        ):
            return f
    return None


def check_targets(figures: list[Figure]) -> list[dict[str, Any]]:
    """One row per target: the two figures, the ratio, and ``met`` (None: not measured)."""
    rows = []
    for target in TARGETS:
        ours = _find(figures, target.scenario, target.metric, target.subject, target.params)
        base = _find(figures, target.scenario, target.metric, target.baseline, target.params)
        value = None if ours is None else ours.value
        base_value = None if base is None else base.value
        ratio = value / base_value if value is not None and base_value else None
        met: bool | None = None
        if target.kind == "value" and value is not None:
            met = value <= target.limit
        elif target.kind == "under" and value is not None:
            met = value < target.limit
        elif target.kind == "ratio" and ratio is not None:
            met = ratio <= target.limit
        elif target.kind == "speedup" and ratio is not None:
            met = 1 / ratio >= target.limit
        rows.append(
            {
                "target": target,
                "value": value,
                "baseline_value": base_value,
                "ratio": ratio,
                "met": met,
                "unit": next((f.unit for f in (ours, base) if f is not None), ""),
            }
        )
    return rows


def targets_table(figures: list[Figure]) -> list[str]:
    """The "Targets (issue 19)" table: figure, localsync, baseline, ratio, target, verdict."""
    lines = [
        "| figure | localsync | baseline (same run) | ratio | target | |",
        "|---|---:|---|---:|---|---|",
    ]
    for row in check_targets(figures):
        target: Target = row["target"]
        unit = row["unit"]
        if row["ratio"] is None:
            ratio = "n/a"
        elif target.kind == "speedup":
            ratio = f"{1 / row['ratio']:.2f}× faster"
        else:
            ratio = f"{row['ratio']:.2f}×"
        verdict = {True: "met", False: "**missed**", None: "not measured"}[row["met"]]
        subject = "" if target.subject == "localsync" else f" ({target.subject})"
        lines.append(
            f"| {target.figure}{subject} | {_fmt(row['value'], unit)} | "
            f"{target.baseline} {_fmt(row['baseline_value'], unit)} | {ratio} | "
            f"{target.goal} | {verdict} |"
        )
    return lines


SCENARIO_TITLES = {
    "fanout": "1. Fan-out convergence (1 writer, N readers, row transactions)",
    "latency": "2. One-way latency of a single-cell change",
    "join": "3. Join: a new process catching up with N cells",
    "memory": "4. Memory per cell",
    "ws": "5. WebSocket server: ours (standalone; ASGI app under uvicorn) vs TinyBase "
    "createWsServer (from `benchmarks/ws.py`)",
    "persist": "6. Persistence: a coordinator under sustained writes, quiescence to durable "
    "(file/SQLite persister costs: per-area benchmark `persist` below)",
    "load": "7. Load: a persister fills an empty store from disk (from `benchmarks/persist.py`)",
}


METHOD = [
    "## Method",
    "",
    "- Workload, identical for every subject: table `t`, rows `r<i>`, 10 integer cells per "
    "row, one transaction (or message, or `update()`) per row.",
    "- Every participant is its own process (fork server; Node subjects are worker threads "
    "of one Node process). Participants first prove they are connected (localsync: "
    "`start_sync()` returned; raw/pycrdt: a probe arrived through the proxy); the clock starts "
    "only then. Times are `CLOCK_MONOTONIC`, shared by all processes of the machine.",
    "- Fan-out: from the writer's first write to the last reader holding every cell. "
    "Raw pyzmq+msgspec and pycrdt go through the same XSUB/XPUB proxy on ipc:// sockets as "
    "localsync's channel hub. Manager readers poll `len()` every ms, then copy the dict.",
    "- Latency: a single-cell change every 2 ms carrying its send time; pooled over readers.",
    "- Join: from the newcomer opening the channel (or connecting) to holding all cells, "
    "measured inside the newcomer; process start-up excluded for every subject.",
    "- Memory: RSS growth of a fresh process while building the content (Python subjects), "
    "V8 `heapUsed` growth after GC (TinyBase); ids and values count for every subject.",
    "- Persistence: writer paced at the target rate for the stated seconds, then quiet; "
    "localsync is durable when its `wait_acknowledged()` returns (a SQLite coordinator saved "
    "content with its hashes), the raw sink when its commit includes the last row.",
    "",
]


def _machine_line(meta: dict[str, Any]) -> str:
    """The run's date, machine and versions, in one line."""
    m = meta["machine"]
    v = meta["versions"]
    return (
        f"Run {meta['date']} on **{m['cpu']}**, {m['cpus']} CPUs, {m['memory_gb']} GB RAM, "
        f"{m['platform']}. Python {v['python']}, localsync {v['localsync']}, pyzmq "
        f"{v['pyzmq']} (libzmq {v['libzmq']}), msgspec {v['msgspec']}, pycrdt "
        f"{v['pycrdt']}, node {v['node']}, tinybase {v['tinybase']}. "
        f"Suite took {meta['elapsed_seconds']:.0f} s."
    )


def write_markdown(
    path: Path, meta: dict[str, Any], figures: list[Figure], areas: dict[str, Any]
) -> None:
    lines = [
        f"# localsync benchmarks ({meta['mode']} mode)",
        "",
        _machine_line(meta),
        "",
        "Absolute figures are from that machine only; the **ratio** column divides each figure "
        "by the reference baseline's figure for the same parameters in the same run "
        "(lower is better unless the note says otherwise: >1 means slower/bigger than the "
        "reference).",
        "",
    ]
    lines += [
        "## Targets (issue 19)",
        "",
        "Each localsync figure beside its baseline from this run (ratio: localsync ÷ "
        "baseline, or how many times faster); generated from the figures below.",
        "",
        *targets_table(figures),
        "",
    ]
    lines += METHOD
    by_scenario: dict[str, list[Figure]] = defaultdict(list)
    for f in figures:
        by_scenario[f.scenario].append(f)
    for scenario, title in SCENARIO_TITLES.items():
        lines += [f"## {title}", ""]
        members = by_scenario.get(scenario, [])
        if not members:
            lines += ["Not available in this run (see notes below).", ""]
            continue
        ref = next((f.reference for f in members if f.reference), None)
        if ref:
            lines += [f"Reference for ratios: **{ref}**.", ""]
        lines += [
            "| parameters | metric | subject | value | ratio | note |",
            "|---|---|---|---:|---:|---|",
        ]
        for f in members:
            ratio = "n/a" if f.ratio is None else f"{f.ratio:.2f}×"
            subject = f"**{f.subject}**" if f.subject == "localsync" else f.subject
            lines.append(
                f"| {_params(f.params)} | {f.metric} | {subject} | "
                f"{_fmt(f.value, f.unit)} | {ratio} | {f.note} |"
            )
        lines.append("")
    lines += _localsync_vs_baselines(figures)
    lines += [
        "## Per-area benchmarks",
        "",
        "Run by the suite as subprocesses (`python -m benchmarks.<name>`); their own "
        "JSON is embedded in results.json under `area_benchmarks`.",
        "",
    ]
    for name, info in areas.items():
        lines.append(f"### {name}: {info['status']}")
        lines.append("")
        if info.get("note"):
            lines += [info["note"], ""]
        flat = list(_flatten(info.get("data")))
        numeric = [
            (k, v) for k, v in flat if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if numeric:
            lines += ["| key | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.6g} |" for k, v in numeric[:60]]
            if len(numeric) > 60:
                lines.append(f"| … {len(numeric) - 60} more in results.json | |")
            lines.append("")
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    lines += ["## Charts", ""] + [f"![{c}]({c})" for c in meta.get("charts", [])] + [""]
    path.write_text("\n".join(lines))


def _localsync_vs_baselines(figures: list[Figure]) -> list[str]:
    """localsync divided by every other subject, group by group: where it is slower, and how."""
    groups: dict[tuple[str, str, str], list[Figure]] = defaultdict(list)
    for f in figures:
        groups[f.group_key()].append(f)
    rows = []
    for (scenario, metric, params), members in groups.items():
        ours = next((f for f in members if f.subject == "localsync" and f.value), None)
        if ours is None or ours.value is None:
            continue
        for other in members:
            if other is ours or not other.value:
                continue
            r = ours.value / other.value
            verdict = "slower/bigger" if r > 1.05 else ("faster/smaller" if r < 0.95 else "same")
            rows.append(
                f"| {scenario} | {_params(json.loads(params))} | {metric} | "
                f"{other.subject} | {r:.2f}× | {verdict} |"
            )
    if not rows:
        return [
            "## localsync against each baseline",
            "",
            "No localsync figure was available in this run.",
            "",
        ]
    return [
        "## localsync against each baseline",
        "",
        "localsync's figure divided by the baseline's (same parameters, same run).",
        "",
        "| scenario | parameters | metric | baseline | localsync ÷ baseline | verdict |",
        "|---|---|---|---|---:|---|",
        *rows,
        "",
    ]


def readme_table(meta: dict[str, Any], figures: list[Figure]) -> list[str]:
    """The README's one benchmark table: issue 19's targets (:func:`targets_table`) from a
    run, with a sentence naming the run and the machine, and the link to the full results."""
    command = "python -m benchmarks" + ("" if meta["mode"] == "full" else f" --{meta['mode']}")
    return [
        f"Our speed targets against the latest {meta['mode']}-mode run (`{command}`), each "
        "localsync figure beside its baseline measured in the same run. Every figure, the "
        "method and the charts: [benchmarks/results/results.md](benchmarks/results/results.md); "
        "running the suite: [docs/performance.md](docs/performance.md).",
        "",
        f"{_machine_line(meta)}",
        "",
        *targets_table(figures),
    ]


def paste_into_readme(readme: Path, lines: list[str]) -> None:
    """Replace what is between ``README_BEGIN`` and ``README_END`` in ``readme`` by ``lines``.

    Raises ValueError when either marker line is missing or they are out of order.
    """
    text = readme.read_text(encoding="utf-8").split("\n")
    try:
        begin = text.index(README_BEGIN)
        end = text.index(README_END, begin)
    except ValueError:
        raise ValueError(f"{readme}: no {README_BEGIN!r} ... {README_END!r} lines") from None
    readme.write_text("\n".join([*text[: begin + 1], *lines, *text[end:]]), encoding="utf-8")


def load_results(path: Path) -> tuple[dict[str, Any], list[Figure]]:
    """The meta and figures of a ``results.json`` written by :func:`write_json`."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["meta"], [Figure(**f) for f in data["figures"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Paste a run's summary table into the README.",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "results.json")
    parser.add_argument(
        "--readme", type=Path, nargs="?", const=README, default=README, help="(default README.md)"
    )
    args = parser.parse_args(argv)
    meta, figures = load_results(args.results)
    paste_into_readme(args.readme, readme_table(meta, figures))
    print(f"{args.readme}: benchmark table of {meta['date']} ({meta['mode']} mode) pasted")
    return 0


def write_charts(folder: Path, figures: list[Figure]) -> list[str]:
    """PNG charts (Agg backend); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    # one colour per subject across every chart, so localsync is the same line everywhere
    palette = {name: f"C{i % 10}" for i, name in enumerate(sorted({f.subject for f in figures}))}

    def series(
        scenario: str, metric: str, fixed: dict[str, Any], x: str
    ) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for f in figures:
            if f.scenario != scenario or f.metric != metric or f.value is None:
                continue
            if any(f.params.get(k) != v for k, v in fixed.items()) or x not in f.params:
                continue
            out[f.subject].append((f.params[x], f.value))
        return {k: sorted(v) for k, v in out.items()}

    def plot(
        name: str,
        panels: list[tuple[str, dict[str, list[tuple[float, float]]]]],
        xlabel: str,
        ylabel: str,
        logx: bool = False,
    ) -> None:
        panels = [p for p in panels if p[1]]
        if not panels:
            return
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (title, data) in zip(axes[0], panels, strict=True):
            xs_all = sorted({x for points in data.values() for x, _ in points})
            if len(xs_all) == 1:
                # one parameter value only (quick mode): bars read better than lone dots
                names = sorted(data)
                ax.bar(
                    range(len(names)),
                    [data[n][0][1] for n in names],
                    color=[palette[n] for n in names],
                )
                ax.set_xticks(
                    range(len(names)),
                    [n.replace(" (", "\n(") for n in names],
                    rotation=30,
                    ha="right",
                    fontsize=7,
                )
                ax.set_xlabel(f"{xlabel} = {xs_all[0]:,}")
            else:
                for subject, points in sorted(data.items()):
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        label=subject,
                        color=palette[subject],
                        linewidth=2.5 if subject == "localsync" else 1.2,
                    )
                if logx:
                    ax.set_xscale("log")
                ax.set_xticks(xs_all, [f"{x:,}" for x in xs_all])
                ax.set_xlabel(xlabel)
                ax.legend(fontsize=7)
                ax.set_yscale("log")  # subjects differ by orders of magnitude
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fan = [f for f in figures if f.scenario == "fanout"]
    cells_values = sorted({f.params["cells"] for f in fan})
    reader_values = sorted({f.params["readers"] for f in fan})
    plot(
        "fanout_vs_processes.png",
        [
            (f"{c:,} cells", series("fanout", "convergence", {"cells": c}, "readers"))
            for c in cells_values
        ],
        "reader processes",
        "convergence time (s)",
    )
    plot(
        "fanout_vs_cells.png",
        [
            (f"{r} reader(s)", series("fanout", "convergence", {"readers": r}, "cells"))
            for r in reader_values
        ],
        "cells",
        "convergence time (s)",
        logx=True,
    )
    plot(
        "latency_vs_processes.png",
        [(p, series("latency", p, {}, "readers")) for p in ("p50", "p99", "p99.9")],
        "reader processes",
        "one-way latency (µs)",
    )
    plot(
        "join_vs_cells.png",
        [("join", series("join", "join time", {}, "cells"))],
        "cells held by the channel",
        "time to hold them all (s)",
        logx=True,
    )
    plot(
        "memory_vs_cells.png",
        [("memory", series("memory", "bytes per cell", {}, "cells"))],
        "cells",
        "bytes per cell",
        logx=True,
    )
    return written


if __name__ == "__main__":
    raise SystemExit(main())
