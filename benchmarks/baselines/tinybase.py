"""TinyBase 10.0.1 itself, in Node: BroadcastChannelSynchronizer fan-out and heap per cell.

The benchmark installs ``tinybase@10.0.1`` and ``ws`` from the npm registry into the
git-ignored scratch folder ``benchmarks/.npm/`` the first time (under a file lock, so parallel
runs do not race), and copies the scripts from ``benchmarks/node/`` next to that
``node_modules`` because ES modules resolve packages from the script's own folder.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .common import FanoutResult

TINYBASE_VERSION = "10.0.1"
BENCH_DIR = Path(__file__).resolve().parents[1]
NPM_DIR = BENCH_DIR / ".npm"
NODE_DIR = BENCH_DIR / "node"


class NodeUnavailable(RuntimeError):
    """Node.js/npm missing or TinyBase not installable: the scenario reports "not available"."""


def node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        return subprocess.run([node, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def ensure_tinybase(timeout: float = 300.0) -> Path:
    """Folder whose node_modules holds tinybase@10.0.1 and ws; installs them once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeUnavailable("node/npm not found on PATH")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    marker = NPM_DIR / "node_modules" / "tinybase" / "package.json"
    with open(NPM_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(marker):
            if not (NPM_DIR / "package.json").exists():
                (NPM_DIR / "package.json").write_text(
                    '{"name": "localsync-bench", "private": true, "type": "module"}\n')
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                 f"tinybase@{TINYBASE_VERSION}", "ws"],
                cwd=NPM_DIR, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not _installed(marker):
                raise NodeUnavailable(f"npm install failed: {proc.stderr.strip()[-500:]}")
    for script in NODE_DIR.glob("*.mjs"):
        target = NPM_DIR / script.name
        if not target.exists() or target.read_bytes() != script.read_bytes():
            shutil.copyfile(script, target)
    return NPM_DIR


def _installed(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text()).get("version") == TINYBASE_VERSION
    except (OSError, ValueError):
        return False


def _run_script(name: str, args: list[str], timeout: float, node_flags: list[str] | None = None
                ) -> dict[str, Any]:
    folder = ensure_tinybase()
    node = shutil.which("node")
    assert node is not None
    try:
        proc = subprocess.run([node, *(node_flags or []), name, *args], cwd=folder,
                              capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as error:
        raise NodeUnavailable(f"{name} timed out") from error
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise NodeUnavailable(f"{name} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def fanout(readers: int, cells: int, timeout: float = 120.0) -> FanoutResult:
    out = _run_script("bc_fanout.mjs", [str(readers), str(cells), str(timeout)], timeout)
    note = "" if out["seconds"] is not None else "not all readers converged before the timeout"
    return FanoutResult(out["seconds"], out["per_reader"], note)


def memory_bytes_per_cell(cells: int, timeout: float = 300.0) -> float:
    return float(_run_script("memory.mjs", [str(cells)], timeout, ["--expose-gc"])
                 ["bytes_per_cell"])


def installed_version() -> str | None:
    try:
        return json.loads((NPM_DIR / "node_modules" / "tinybase" / "package.json").read_text())[
            "version"]
    except (OSError, ValueError, KeyError):
        return None


def join(cells: int, timeout: float = 30.0) -> float | None:
    """Seconds for a new worker to hold all N cells over BroadcastChannel; None if never."""
    return _run_script("bc_join.mjs", [str(cells), str(timeout)], timeout)["seconds"]
