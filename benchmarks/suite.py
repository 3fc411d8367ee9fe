"""The benchmark suite runner behind ``python -m benchmarks``.

Every scenario runs localsync and its baselines one after another in the same run, on the same
workload (:mod:`benchmarks.baselines.common`), so each localsync figure can be given as a ratio
to a baseline measured minutes earlier on the same machine, not to a number from elsewhere.
A subject that cannot run (Node missing, a localsync module not written yet, a timeout) is
recorded as "not available" with the reason; nothing is ever filled in.

The per-area benchmarks other modules own (``benchmarks/store.py``, ``local_sync.py``,
``persist.py``, ``channel.py``, ``ws.py``) are run as subprocesses, their JSON embedded;
scenario 5 (WebSocket) comes from ``ws`` this way; scenario 6 (persistence) is measured here
(coordinator under sustained writes) and complemented by ``persist`` (persister costs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import inspect
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import (
    PYTHON_STACK,
    RAW_JSON,
    RAW_SQLITE,
    RESULTS_DIR,
    TINYBASE_STACK,
    Figure,
    compute_ratios,
    write_charts,
    write_json,
    write_markdown,
)

RAW = "raw pyzmq+msgspec"
MANAGER = "Manager().dict()"
PYCRDT = "pycrdt over zmq"
TINYBASE = "TinyBase BroadcastChannel (Node workers)"
LOCALSYNC = "localsync"
AREA_MODULES = (
    "store",
    "store_receive",
    "local_sync",
    "persist",
    "channel",
    "ws",
    "workers",
    "nats",
)
# Arguments that make each per-area benchmark short, from its own argparse; a module that
# rejects them (exit 2, "unrecognized arguments") is retried with the next set.
QUICK_ARGS: dict[str, list[list[str]]] = {
    "store": [["--rows", "2000", "--repeat", "1"], []],
    "local_sync": [["--rows", "1000", "--repeat", "1"], []],
    "persist": [["--max-cells", "10000", "--tx", "5"], []],
    "channel": [["--quick"], []],
    "nats": [["--quick"], []],
    "workers": [["--workers", "2", "--repeat", "1"], []],
    "store_receive": [["--sizes", "100000", "--repeat", "1", "--no-port"], []],
}
# Full mode keeps each module's defaults except where they alone would break the suite's
# 20-minute budget on 2 cores: ws measures the ASGI app with raw clients only (its Python and
# TinyBase clients' fills are the clients' own work, minutes at 100,000 cells).
FULL_ARGS: dict[str, list[list[str]]] = {
    "ws": [["--cells", "100000", "--samples", "200", "--asgi-clients", "raw"], []],
    # the reference port's runs are a development comparison, minutes long at 10^6 cells
    "store_receive": [["--no-port"], []],
    # fan-out and latency as the suite's scenarios 1-2 measure them, once each (its defaults,
    # 3 fan-out runs and 5 latency rounds, took more than 4 minutes on 2 busy cores)
    "channel": [["--repeat", "1", "--latency-rounds", "2"], []],
}
# per-area time limits in full mode, where the default (Sizes.area_timeout) is too short
FULL_AREA_TIMEOUTS = {"channel": 420.0, "ws": 420.0}


@dataclass
class Sizes:
    """What each mode measures; quick trims combinations, smoke is for CI's "does it run"."""

    fanout: list[tuple[int, int]]  # (readers, cells)
    latency_readers: list[int]
    latency_samples: int
    join_cells: list[int]
    memory_cells: list[int]
    area_timeout: float
    timeout: float
    persist_rates: list[int] = field(default_factory=lambda: [2_000, 10_000])
    persist_seconds: float = 2.0
    repeat: int = 1  # fan-out and join runs per figure (median kept); --repeat
    node_join_timeout: float = 30.0  # TinyBase's BroadcastChannel may never deliver a big join
    area_modules: tuple[str, ...] = AREA_MODULES
    subjects: tuple[str, ...] = (LOCALSYNC, RAW, MANAGER, PYCRDT, TINYBASE)
    extra: dict[str, Any] = field(default_factory=dict)


MODES: dict[str, Sizes] = {
    "full": Sizes(
        fanout=[(r, c) for c in (10_000, 100_000) for r in (1, 3, 7)],
        latency_readers=[1, 3, 7],
        latency_samples=2000,
        join_cells=[10_000, 100_000, 1_000_000],
        memory_cells=[100_000, 1_000_000],
        area_timeout=240,
        timeout=180,
        persist_rates=[2_000, 10_000, 50_000],
        persist_seconds=5.0,
        node_join_timeout=20.0,
    ),
    "quick": Sizes(
        fanout=[(1, 10_000), (3, 10_000), (1, 100_000)],
        latency_readers=[3],
        latency_samples=300,
        join_cells=[10_000, 100_000],
        memory_cells=[100_000],
        area_timeout=60,
        timeout=60,
        node_join_timeout=5.0,
        persist_rates=[2_000, 10_000, 50_000],
        area_modules=("store", "store_receive", "local_sync", "persist", "ws"),
    ),
    "smoke": Sizes(
        fanout=[(1, 500)],
        latency_readers=[1],
        latency_samples=20,
        join_cells=[500],
        memory_cells=[20_000],
        area_timeout=20,
        timeout=20,
        area_modules=(),
        persist_rates=[1_000],
        persist_seconds=0.5,
    ),
}


class Progress:
    """A plain text progress bar on stderr: no dependency, readable in CI logs too."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def finish(self) -> None:
        if self.enabled:
            self.step("done")
            sys.stderr.write("\n")


Task = tuple[str, Callable[[], list[Figure]]]


def _na(
    scenario: str,
    metric: str,
    subject: str,
    params: dict[str, Any],
    unit: str,
    reference: str | None,
    why: str,
) -> Figure:
    return Figure(scenario, metric, subject, params, None, unit, reference, note=f"n/a: {why}")


def _localsync_missing() -> str | None:
    from .baselines.localsync_subject import available

    return available()


def fanout_tasks(sizes: Sizes, skip_node: bool) -> list[Task]:
    from .baselines import localsync_subject, manager_dict, zmq_subjects

    def make(subject: str, readers: int, cells: int) -> Callable[[], list[Figure]]:
        params = {"readers": readers, "cells": cells}

        def run() -> list[Figure]:
            if subject == LOCALSYNC and (why := _localsync_missing()):
                return [_na("fanout", "convergence", subject, params, "s", RAW, why)]
            if subject == TINYBASE and skip_node:
                return [
                    _na("fanout", "convergence", subject, params, "s", RAW, "skipped (--skip-node)")
                ]
            fn: Callable[[], Any] = {
                RAW: lambda: zmq_subjects.fanout("raw", readers, cells, sizes.timeout),
                PYCRDT: lambda: zmq_subjects.fanout("pycrdt", readers, cells, sizes.timeout),
                MANAGER: lambda: manager_dict.fanout(readers, cells, sizes.timeout),
                LOCALSYNC: lambda: localsync_subject.fanout(readers, cells, sizes.timeout),
                TINYBASE: lambda: _tinybase_fanout(readers, cells, sizes.timeout),
            }[subject]
            runs = [fn() for _ in range(sizes.repeat)]
            ok = [r for r in runs if r.seconds is not None]
            value = statistics.median(r.seconds for r in ok) if ok else None  # type: ignore[misc]
            note = (
                runs[-1].note
                if not ok
                else (
                    f"median of {len(ok)}"
                    + (f"; {len(runs) - len(ok)} run(s) failed" if len(ok) < len(runs) else "")
                    if sizes.repeat > 1
                    else ""
                )
            )
            return [
                Figure(
                    "fanout",
                    "convergence",
                    subject,
                    params,
                    value,
                    "s",
                    RAW,
                    note=note,
                    extra={
                        "runs_seconds": [r.seconds for r in runs],
                        "per_reader_seconds": [r.per_reader for r in runs],
                        "cells_per_second": None if not value else cells / value,
                    },
                )
            ]

        return run

    return [
        (f"fan-out {s} readers={r} cells={c:,}", make(s, r, c))
        for r, c in sizes.fanout
        for s in sizes.subjects
    ]


def _tinybase_fanout(readers: int, cells: int, timeout: float) -> Any:
    from .baselines import tinybase

    return tinybase.fanout(readers, cells, timeout)


def latency_tasks(sizes: Sizes) -> list[Task]:
    from .baselines import localsync_subject, zmq_subjects

    def make(subject: str, readers: int) -> Callable[[], list[Figure]]:
        params = {"readers": readers, "samples": sizes.latency_samples}

        def run() -> list[Figure]:
            if subject == LOCALSYNC and (why := _localsync_missing()):
                return [
                    _na("latency", p, subject, params, "us", RAW, why)
                    for p in ("p50", "p99", "p99.9")
                ]
            module = zmq_subjects if subject == RAW else localsync_subject
            values = module.latency(readers, sizes.latency_samples, timeout=sizes.timeout)
            if values is None:
                return [
                    _na(
                        "latency",
                        p,
                        subject,
                        params,
                        "us",
                        RAW,
                        "some changes never arrived before the timeout",
                    )
                    for p in ("p50", "p99", "p99.9")
                ]
            summary = zmq_subjects.latency_summary(values)
            return [Figure("latency", p, subject, params, v, "us", RAW) for p, v in summary.items()]

        return run

    return [
        (f"latency {s} readers={r}", make(s, r))
        for r in sizes.latency_readers
        for s in (LOCALSYNC, RAW)
    ]


def join_tasks(sizes: Sizes, skip_node: bool) -> list[Task]:
    from .baselines import localsync_subject, manager_dict, tinybase, zmq_subjects

    snapshot = "raw zmq REQ/REP msgpack snapshot"
    subjects: dict[str, Callable[[int], float | None]] = {
        LOCALSYNC: lambda c: localsync_subject.join(c, sizes.timeout * 2),
        f"{LOCALSYNC} (no snapshot)": lambda c: localsync_subject.join(
            c, sizes.timeout * 2, snapshots=False),
        snapshot: lambda c: zmq_subjects.join(c, sizes.timeout * 2),
        MANAGER: lambda c: manager_dict.join(c, sizes.timeout * 2),
    }
    join_with: Callable[..., float | None] = localsync_subject.join
    if "snapshots" in inspect.signature(join_with).parameters:
        # (the normal hash-tree exchange beside the shared-memory snapshot join)
        subjects[f"{LOCALSYNC} (no snapshot)"] = lambda c: join_with(
            c, sizes.timeout * 2, snapshots=False
        )
    if not skip_node:
        subjects[TINYBASE] = lambda c: tinybase.join(c, sizes.node_join_timeout)

    failed_at: dict[str, int] = {}  # subject -> smallest size it failed to join in this run

    def make(subject: str, cells: int) -> Callable[[], list[Figure]]:
        params = {"cells": cells}

        def run() -> list[Figure]:
            if subject == LOCALSYNC and (why := _localsync_missing()):
                return [_na("join", "join time", subject, params, "s", snapshot, why)]
            if subject in failed_at:
                # a join that failed at a smaller size is not retried bigger: it would only
                # spend the timeout again (TinyBase's 10 ms BroadcastChannel requests)
                return [
                    _na(
                        "join",
                        "join time",
                        subject,
                        params,
                        "s",
                        snapshot,
                        f"not run: already failed at {failed_at[subject]:,} cells",
                    )
                ]
            runs = [subjects[subject](cells) for _ in range(sizes.repeat)]
            ok = [r for r in runs if r is not None]
            value = statistics.median(ok) if ok else None
            if value is None:
                failed_at[subject] = cells
            limit = sizes.node_join_timeout if subject == TINYBASE else sizes.timeout * 2
            return [
                Figure(
                    "join",
                    "join time",
                    subject,
                    params,
                    value,
                    "s",
                    snapshot,
                    extra={"runs_seconds": runs},
                    note=(f"median of {len(ok)}/{len(runs)}" if sizes.repeat > 1 else "")
                    if value is not None
                    else f"n/a: did not hold all {cells:,} cells within {limit:.0f} s",
                )
            ]

        return run

    return [(f"join {s} cells={c:,}", make(s, c)) for c in sizes.join_cells for s in subjects]


def memory_tasks(sizes: Sizes, skip_node: bool) -> list[Task]:
    from .baselines import memory, tinybase

    plain = "plain dict"

    def figure(subject: str, cells: int, value: float, note: str) -> list[Figure]:
        return [
            Figure(
                "memory", "bytes per cell", subject, {"cells": cells}, value, "B", plain, note=note
            )
        ]

    def not_available(subject: str, cells: int, why: str) -> list[Figure]:
        return [_na("memory", "bytes per cell", subject, {"cells": cells}, "B", plain, why)]

    def py(kind: str, subject: str, cells: int) -> Callable[[], list[Figure]]:
        def run() -> list[Figure]:
            if kind != "dict" and (why := _localsync_missing()):
                return not_available(subject, cells, why)
            value = memory.bytes_per_cell(kind, cells, sizes.timeout * 3)
            return figure(subject, cells, value, "RSS growth")

        return run

    def node(cells: int) -> Callable[[], list[Figure]]:
        def run() -> list[Figure]:
            subject = "TinyBase MergeableStore (Node heap)"
            if skip_node:
                return not_available(subject, cells, "skipped (--skip-node)")
            value = tinybase.memory_bytes_per_cell(cells, sizes.timeout * 3)
            return figure(subject, cells, value, "V8 heapUsed growth")

        return run

    tasks: list[Task] = []
    for cells in sizes.memory_cells:
        tasks += [
            (f"memory {LOCALSYNC} cells={cells:,}", py("localsync_mergeable", LOCALSYNC, cells)),
            (
                f"memory localsync Store cells={cells:,}",
                py("localsync_store", "localsync Store", cells),
            ),
            (f"memory plain dict cells={cells:,}", py("dict", plain, cells)),
            (f"memory TinyBase cells={cells:,}", node(cells)),
        ]
    return tasks


def persist_tasks(sizes: Sizes) -> list[Task]:
    from .baselines import persist_subjects

    raw = "raw zmq -> sqlite sink"

    def make(subject: str, rate: int) -> Callable[[], list[Figure]]:
        params = {"target_rate": rate, "seconds": sizes.persist_seconds}

        def run() -> list[Figure]:
            if subject == LOCALSYNC and (why := _localsync_missing()):
                return [
                    _na("persist", m, subject, params, u, raw, why)
                    for m, u in (
                        ("quiescence to durable", "s"),
                        ("sustained write rate", "cells/s"),
                    )
                ]
            fn = persist_subjects.localsync if subject == LOCALSYNC else persist_subjects.raw
            out = fn(rate, sizes.persist_seconds, sizes.timeout)
            if out is None:
                why = (
                    "wait_acknowledged() did not return within the timeout"
                    if subject == LOCALSYNC
                    else "the sink never committed every row"
                )
                return [_na("persist", "quiescence to durable", subject, params, "s", raw, why)]
            extra = {
                k: v for k, v in out.items() if k not in ("quiescence_to_durable", "achieved_rate")
            }
            return [
                Figure(
                    "persist",
                    "quiescence to durable",
                    subject,
                    params,
                    out["quiescence_to_durable"],
                    "s",
                    raw,
                    extra=extra,
                ),
                Figure(
                    "persist",
                    "sustained write rate",
                    subject,
                    params,
                    out["achieved_rate"],
                    "cells/s",
                    raw,
                    note="higher is better",
                ),
            ]

        return run

    return [
        (f"persist {s} rate={r:,}/s", make(s, r))
        for r in sizes.persist_rates
        for s in (LOCALSYNC, raw)
    ]


def run_area(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name>`` and read the JSON it writes; never invent data.

    The module's own ``results/<name>.json`` belongs to its owner (often committed from a
    full run), so it is restored afterwards: the suite's copy lives in results.json only.
    """
    module_file = Path(__file__).resolve().parent / f"{name}.py"
    if not module_file.exists():
        return {
            "status": "not available",
            "note": f"benchmarks/{name}.py does not exist yet in this tree.",
        }
    out_file = RESULTS_DIR / f"{name}.json"
    try:
        previous: bytes | None = out_file.read_bytes()
    except OSError:
        previous = None
    try:
        return _run_area(name, quick, timeout, out_file)
    finally:
        try:
            if previous is None:
                out_file.unlink(missing_ok=True)
            else:
                out_file.write_bytes(previous)
        except OSError:
            pass


def _run_area(name: str, quick: bool, timeout: float, out_file: Path) -> dict[str, Any]:
    started = time.time()
    root = Path(__file__).resolve().parents[1]
    attempts = QUICK_ARGS.get(name, [["--quick"], []]) if quick else FULL_ARGS.get(name, [[]])
    proc = None
    for extra in attempts:
        # (its own session: a module that times out is killed with every process it started)
        with subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{name}", *extra],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as popen:
            try:
                stdout, stderr = popen.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.communicate()
                return {
                    "status": "not available",
                    "note": f"timed out after {timeout:.0f} s (args {extra}).",
                }
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
        if not (proc.returncode == 2 and "unrecognized arguments" in proc.stderr):
            break
    assert proc is not None
    if proc.returncode != 0:
        return {
            "status": "failed",
            "args": extra,
            "note": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}",
        }
    try:
        fresh = out_file.stat().st_mtime >= started - 1
        data = json.loads(out_file.read_text()) if fresh else None
    except (OSError, ValueError) as error:
        return {"status": "failed", "note": f"no readable {out_file.name}: {error}"}
    if data is None:
        return {"status": "failed", "note": f"{out_file.name} was not rewritten by this run."}
    return {"status": "ok", "args": extra, "seconds": round(time.time() - started, 1), "data": data}


def ws_figures(area: dict[str, Any]) -> list[Figure]:
    """Scenario 5 from ``benchmarks/ws.py``'s JSON: our server (standalone, and the ASGI app
    under uvicorn) vs TinyBase's, same clients.

    Only its ``rows`` are read (fill time and one-way latency per client kind and count); if
    the module changes its format, the scenario shows as not available instead of guessing.
    """
    if area.get("status") != "ok":
        return []
    tb_server = "TinyBase createWsServer"
    subjects = {"ours": LOCALSYNC, "asgi": "localsync ASGI app (uvicorn)", "tinybase": tb_server}
    figures = []
    for row in area.get("data", {}).get("rows", []):
        try:
            subject = subjects[row["server"]]
            params = {"clients": f"{row['n']} {row['clients']}", "cells": row["cells"]}
            figures += [
                Figure(
                    "ws",
                    "fill",
                    subject,
                    params,
                    row["fill_seconds"],
                    "s",
                    tb_server,
                    note="all clients hold the cells",
                ),
                Figure(
                    "ws",
                    "p50",
                    subject,
                    params,
                    row["latency_p50_ms"],
                    "ms",
                    tb_server,
                    note=f"{row.get('samples', '?')} samples",
                ),
                Figure("ws", "p99", subject, params, row["latency_p99_ms"], "ms", tb_server),
            ]
            # the whole stack a user deploys: Python clients on our server against TinyBase
            # clients on TinyBase's server (issue 19's restated WebSocket target)
            stack = {
                ("python", "ours"): PYTHON_STACK,
                ("tinybase", "tinybase"): TINYBASE_STACK,
            }.get((row["clients"], row["server"]))
            if stack is not None:
                figures.append(
                    Figure(
                        "ws",
                        "fill (whole stack)",
                        stack,
                        {"clients": row["n"], "cells": row["cells"]},
                        row["fill_seconds"],
                        "s",
                        TINYBASE_STACK,
                        note="all clients hold the cells",
                    )
                )
        except (KeyError, TypeError):
            return []
    return figures


def load_figures(area: dict[str, Any]) -> list[Figure]:
    """Scenario 7 from ``benchmarks/persist.py``'s JSON: a persister's ``load()`` into an empty
    store, beside the raw read of the same content (``json.loads`` of the same file, a
    ``SELECT`` of the same cells) at every size it measured."""
    if area.get("status") != "ok":
        return []
    figures = []
    for cells, entry in area.get("data", {}).get("sizes", {}).items():
        for kind, persister, raw_key, raw_subject in (
            ("file", "file", "raw_json", RAW_JSON),
            ("sqlite", "SQLite", "raw_sqlite", RAW_SQLITE),
        ):
            try:
                params = {"cells": int(cells), "persister": persister}
                ours, raw = entry[kind]["load_s"], entry[raw_key]["load_s"]
            except (KeyError, TypeError, ValueError):
                continue
            figures += [
                Figure(
                    "load",
                    "load",
                    LOCALSYNC,
                    params,
                    ours,
                    "s",
                    raw_subject,
                    note="content and hashes equal the saved store's",
                ),
                Figure("load", "load", raw_subject, params, raw, "s", raw_subject),
            ]
    return figures


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    import msgspec
    import zmq

    from .baselines import tinybase

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        import localsync

        ours: str | None = localsync.__version__
    except Exception:
        ours = None
    return {
        "python": platform.python_version(),
        "localsync": ours,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "pycrdt": dist("pycrdt"),
        "matplotlib": dist("matplotlib"),
        "node": tinybase.node_version(),
        "tinybase": tinybase.installed_version(),
    }


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def run_suite(
    mode: str = "quick",
    out_dir: Path = RESULTS_DIR,
    skip_node: bool = False,
    only: set[str] | None = None,
    progress: bool = True,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run the scenarios of ``mode``; write results.json, results.md and charts into out_dir."""
    sizes = dataclasses.replace(MODES[mode], repeat=max(1, repeat))
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    notes: list[str] = []
    if not skip_node:
        from .baselines import tinybase

        try:
            tinybase.ensure_tinybase()
        except tinybase.NodeUnavailable as error:
            skip_node = True
            notes.append(f"TinyBase baselines not available: {error}")

    def want(scenario: str) -> bool:
        return only is None or scenario in only

    tasks: list[Task] = []
    if want("fanout"):
        tasks += fanout_tasks(sizes, skip_node)
    if want("latency"):
        tasks += latency_tasks(sizes)
    if want("join"):
        tasks += join_tasks(sizes, skip_node)
    if want("memory"):
        tasks += memory_tasks(sizes, skip_node)
    if want("persist"):
        tasks += persist_tasks(sizes)
    if mode == "quick" and only is None:
        notes.append(
            "Quick mode skips the per-area `channel` benchmark (scenarios 1-3 measure "
            "the channel); the full mode runs it."
        )
    area_names = [a for a in sizes.area_modules if only is None or a in only or "areas" in only]
    bar = Progress(len(tasks) + len(area_names), progress)
    figures: list[Figure] = []
    for label, task in tasks:
        bar.step(label)
        try:
            figures += task()
        except Exception as error:  # one broken subject must not sink the whole suite
            scenario = label.split()[0].replace("fan-out", "fanout")
            notes.append(f"{label}: {type(error).__name__}: {error}")
            figures.append(
                Figure(
                    scenario,
                    "error",
                    label,
                    {},
                    None,
                    "",
                    None,
                    note=f"n/a: {type(error).__name__}: {error}",
                )
            )
            if os.environ.get("LOCALSYNC_BENCH_DEBUG"):
                traceback.print_exc()
        bar.advance()
    areas: dict[str, Any] = {}
    for name in area_names:
        bar.step(f"area benchmark {name}")
        limit = FULL_AREA_TIMEOUTS.get(name, 0.0) if mode == "full" else 0.0
        areas[name] = run_area(name, mode != "full", max(limit, sizes.area_timeout))
        bar.advance()
    bar.finish()
    if "ws" in areas:
        figures += ws_figures(areas["ws"])
    if "persist" in areas:
        figures += load_figures(areas["persist"])
    for scenario, area in (("ws", "ws"),):
        if want(scenario) and areas.get(area, {}).get("status") != "ok":
            notes.append(
                f"Scenario {scenario}: localsync's benchmarks/{area}.py result is "
                f"not available ({areas.get(area, {}).get('note', 'not run')})."
            )
    compute_ratios(figures)
    meta: dict[str, Any] = {
        "mode": mode,
        "repeat": sizes.repeat,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "versions": versions(),
        "git_commit": git_commit(),
        "elapsed_seconds": time.monotonic() - started,
        "notes": notes,
        "workload": "table t, rows r<i>, 10 integer cells per row, one transaction per row",
    }
    try:
        meta["charts"] = write_charts(out_dir, figures)
    except Exception as error:
        meta["charts"] = []
        notes.append(f"charts not written: {type(error).__name__}: {error}")
    write_json(out_dir / "results.json", meta, figures, areas)
    write_markdown(out_dir / "results.md", meta, figures, areas)
    return {"meta": meta, "figures": figures, "areas": areas}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="mode",
        help="fewer combinations and sizes (under 2 minutes)",
    )
    parser.add_argument(
        "--smoke",
        action="store_const",
        const="smoke",
        dest="mode",
        help="tiny sizes, no per-area benchmarks (CI: proves the suite runs)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="output folder (default benchmarks/results)"
    )
    parser.add_argument(
        "--skip-node", action="store_true", help="do not run the TinyBase (Node.js) baselines"
    )
    parser.add_argument(
        "--only",
        action="append",
        help="run only these scenarios: fanout, latency, join, memory, areas, "
        "or an area module name (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per fan-out and join figure, median reported (default 1)",
    )
    args = parser.parse_args(argv)
    mode = args.mode or "full"
    result = run_suite(
        mode,
        args.out,
        args.skip_node,
        set(args.only) if args.only else None,
        not args.no_progress,
        args.repeat,
    )
    print((args.out / "results.md").read_text())
    missing = [f for f in result["figures"] if f.value is None]
    print(
        f"{len(result['figures'])} figures, {len(missing)} not available; written to {args.out}",
        file=sys.stderr,
    )
    return 0
