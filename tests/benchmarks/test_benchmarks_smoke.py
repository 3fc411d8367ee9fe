"""The benchmark suite runs end to end at tiny sizes and writes well-formed output.

Timings are not asserted (they belong to benchmarks/, as ratios); what is asserted is that
every output file exists and parses, that the baselines produced real measurements, and that
a subject which cannot run is reported as "not available" rather than given a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--skip-node", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


@pytest.mark.process
@pytest.mark.timeout(120)
def test_results_json_is_complete(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = smoke_run
    data = json.loads((out / "results.json").read_text())
    meta = data["meta"]
    assert meta["mode"] == "smoke"
    for key in ("python", "localsync", "pyzmq", "msgspec", "node", "tinybase"):
        assert key in meta["versions"]
    assert meta["machine"]["cpus"] >= 1
    figures = data["figures"]
    scenarios = {f["scenario"] for f in figures}
    assert {"fanout", "latency", "join", "memory"} <= scenarios
    for f in figures:
        # every figure is either a real positive number or explicitly not available
        assert (f["value"] is not None and f["value"] > 0) or f["note"].startswith("n/a"), f
    # the baselines that need nothing but Python must have really run
    by = {(f["scenario"], f["subject"], f["metric"]): f for f in figures}
    raw = by[("fanout", "raw pyzmq+msgspec", "convergence")]
    assert raw["value"] is not None and raw["ratio"] == pytest.approx(1.0)
    assert len(raw["extra"]["per_reader_seconds"]) == raw["params"]["readers"]
    assert by[("fanout", "Manager().dict()", "convergence")]["value"] is not None
    assert by[("fanout", "pycrdt over zmq", "convergence")]["value"] is not None
    p50 = by[("latency", "raw pyzmq+msgspec", "p50")]["value"]
    p99 = by[("latency", "raw pyzmq+msgspec", "p99")]["value"]
    assert p50 is not None and p99 is not None and p50 <= p99
    assert by[("memory", "plain dict", "bytes per cell")]["value"] is not None
    # Node was skipped on purpose: reported, not invented
    tb = by[("fanout", "TinyBase BroadcastChannel (Node workers)", "convergence")]
    assert tb["value"] is None and "skipped" in tb["note"]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_markdown_and_charts(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = smoke_run
    md = (out / "results.md").read_text()
    assert md.startswith("# localsync benchmarks (smoke mode)")
    for title in (
        "Fan-out convergence",
        "One-way latency",
        "Join",
        "Memory per cell",
        "WebSocket",
        "Persistence",
    ):
        assert title in md
    assert "| parameters | metric | subject | value | ratio | note |" in md
    assert md.index("## Targets (issue 19)") < md.index("## Method")
    charts = json.loads((out / "results.json").read_text())["meta"]["charts"]
    assert "fanout_vs_processes.png" in charts and "latency_vs_processes.png" in charts
    for name in charts:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in md
    # the progress bar went to stderr, the table to stdout
    assert "[" in proc.stderr and "/" in proc.stderr
    assert "# localsync benchmarks" in proc.stdout


def test_ratios_only_against_the_same_group() -> None:
    from benchmarks.report import Figure, compute_ratios

    figures = [
        Figure("fanout", "convergence", "raw", {"readers": 1}, 2.0, "s", "raw"),
        Figure("fanout", "convergence", "localsync", {"readers": 1}, 5.0, "s", "raw"),
        Figure("fanout", "convergence", "raw", {"readers": 3}, 4.0, "s", "raw"),
        Figure("fanout", "convergence", "localsync", {"readers": 3}, 6.0, "s", "raw"),
        # no reference measured for these parameters: no ratio rather than a wrong one
        Figure("fanout", "convergence", "localsync", {"readers": 7}, 9.0, "s", "raw"),
        Figure("fanout", "convergence", "localsync", {"readers": 9}, None, "s", "raw"),
    ]
    compute_ratios(figures)
    assert [f.ratio for f in figures] == [1.0, 2.5, 1.0, 1.5, None, None]


def test_targets_are_checked_from_the_figures() -> None:
    from benchmarks.report import Figure, check_targets, targets_table

    raw, pycrdt = "raw pyzmq+msgspec", "pycrdt over zmq"
    fan = {"readers": 1, "cells": 100_000}
    figures = [
        Figure("fanout", "convergence", "localsync", fan, 0.15, "s", raw),
        Figure("fanout", "convergence", raw, fan, 0.1, "s", raw),
        Figure("fanout", "convergence", pycrdt, fan, 0.2, "s", raw),
        Figure("join", "join time", "localsync", {"cells": 1_000_000}, 1.2, "s"),
        Figure("memory", "bytes per cell", "localsync", {"cells": 100_000}, 250.0, "B"),
        Figure("latency", "p99", "localsync", {"readers": 1, "samples": 9}, 1000.0, "us"),
        Figure(
            "ws",
            "fill (whole stack)",
            "Python clients + localsync server",
            {"clients": 8, "cells": 10},
            0.5,
            "s",
        ),
        Figure(
            "ws",
            "fill (whole stack)",
            "TinyBase clients + TinyBase server",
            {"clients": 8, "cells": 10},
            3.0,
            "s",
        ),
    ]
    rows = {(r["target"].figure, r["target"].baseline): r for r in check_targets(figures)}
    one = rows[("fan-out 10^5 cells, 1 reader", raw)]
    assert one["ratio"] == pytest.approx(1.5) and one["met"] is True  # <= 2x raw
    assert rows[("fan-out 10^5 cells, 1 reader", pycrdt)]["met"] is False  # 1.33x faster
    assert rows[("join 10^6 cells", "raw zmq REQ/REP msgpack snapshot")]["met"] is True
    memory = next(r for (name, _), r in rows.items() if name.startswith("memory, 10^5"))
    assert memory["met"] is False
    p99 = next(r for (name, _), r in rows.items() if name == "one-cell latency p99, 1 reader")
    assert p99["met"] is False  # < 1 ms, strictly
    stack = next(r for (name, _), r in rows.items() if name.endswith("8 clients: whole stack"))
    assert stack["met"] is True and stack["ratio"] == pytest.approx(0.5 / 3.0)
    # nothing measured: said so, never a verdict
    assert rows[("fan-out 10^5 cells, 3 readers", raw)]["met"] is None
    lines = targets_table(figures)
    assert len(lines) == 2 + len(rows)
    assert "| fan-out 10^5 cells, 1 reader | 150.0 ms | raw pyzmq+msgspec 100.0 ms | 1.50× |" in (
        "\n".join(lines)
    )
    assert sum("not measured" in line for line in lines) == len(rows) - 6


def test_readme_table_is_pasted_between_the_markers(tmp_path: Path) -> None:
    from benchmarks.report import README_BEGIN, README_END, paste_into_readme, readme_table

    meta = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())["meta"]
    lines = readme_table(meta, [])
    assert "benchmarks/results/results.md" in lines[0]
    assert lines[2].startswith(f"Run {meta['date']} on ")
    assert lines[4].startswith("| figure | localsync | baseline (same run) |")
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{README_BEGIN}\nold\n{README_END}\nrest\n", encoding="utf-8")
    paste_into_readme(readme, ["new", "table"])
    assert readme.read_text(encoding="utf-8") == (
        f"# t\n{README_BEGIN}\nnew\ntable\n{README_END}\nrest\n"
    )
    readme.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="benchmark table"):
        paste_into_readme(readme, ["new"])


def test_readme_table_is_the_committed_results() -> None:
    """The README's table is what ``python -m benchmarks.report`` writes from the committed
    results.json: after a suite run, that command updates it (no hand-edited figures)."""
    from benchmarks.report import README_BEGIN, README_END, load_results, readme_table

    meta, figures = load_results(ROOT / "benchmarks" / "results" / "results.json")
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    begin, end = text.index(README_BEGIN), text.index(README_END)
    assert text[begin + 1 : end] == readme_table(meta, figures), (
        "README.md's benchmark table differs from benchmarks/results/results.json: "
        "run python -m benchmarks.report"
    )


def test_missing_area_module_is_reported_not_invented() -> None:
    from benchmarks.suite import run_area

    info = run_area("no_such_area_module", quick=True, timeout=10)
    assert info["status"] == "not available" and "data" not in info


@pytest.mark.process
@pytest.mark.timeout(240)
def test_latency_split_measures_every_combination(tmp_path: Path) -> None:
    """Raw and channel ends interoperate: a raw publisher's ContentDiffs reach a channel
    reader's listener and a channel writer's diffs decode in a raw subscriber; every
    combination yields all of its samples (a refused message would leave one short)."""
    out = tmp_path / "split.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency_split", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["p50_ms"]) == {
        "raw -> raw",
        "raw -> raw-loop",
        "raw -> channel-transport",
        "raw -> channel",
        "channel -> raw",
        "channel -> channel",
    }
    assert data["samples_each"] == 40
    assert all(value > 0 for value in data["p50_ms"].values())
    assert len(data["steps_ms"]) == 4
