"""``localsync demo`` end to end: real coordinator, real workers, real files, run twice."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def run_demo(data: Path, channel: str, *extra: str) -> tuple[dict, str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "localsync.cli",
            "demo",
            "--data",
            str(data),
            "--channel",
            channel,
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return summary, result.stdout


def test_second_run_starts_from_the_first_runs_persisted_data(tmp_path: Path) -> None:
    channel = f"demo-test-{uuid.uuid4().hex[:12]}"
    first, out1 = run_demo(tmp_path, channel, "--workers", "2", "--rows", "60", "--rate", "0")
    assert "first run" in out1
    assert (first["run"], first["previous_orders"]) == (1, 0)
    assert first["written_by_workers"] == [60, 60]
    assert first["orders"] == first["orders_this_run"] == 120
    assert first["exit_codes"] == [0, 0] and first["coordinator_exit"] == 0
    assert Path(first["data_file"]).is_file()

    second, out2 = run_demo(tmp_path, channel, "--workers", "3", "--seconds", "1")
    assert "found 120 orders from 1 previous run(s)" in out2
    assert (second["run"], second["previous_runs"], second["previous_orders"]) == (2, 1, 120)
    assert second["previous_orders_kept"] is True
    assert second["orders_this_run"] == sum(second["written_by_workers"]) > 0
    assert second["orders"] == 120 + second["orders_this_run"]
    assert second["ok"] is True


def test_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    channel = f"demo-chaos-{uuid.uuid4().hex[:12]}"
    summary, out = run_demo(
        tmp_path, channel, "--workers", "2", "--rows", "400", "--rate", "200", "--chaos"
    )
    assert summary["restarts"][0] == 1
    assert summary["written_by_workers"] == [400, 400]
    assert summary["orders"] == 800
    assert summary["ok"] is True
    assert "killed by SIGKILL" in out


@pytest.mark.parametrize(
    "bad", [["--workers", "0"], ["--rows", "-1"], ["--seconds", "0"], ["--channel", ""]]
)
def test_bad_arguments_are_refused_before_anything_starts(bad: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localsync.cli", "demo", "--data", str(tmp_path / "data"), *bad],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2  # one line on stderr, as argparse's own errors
    assert result.stderr.splitlines()[-1].startswith("localsync demo: error: "), result.stderr
    assert not (tmp_path / "data").exists()


def test_progress_is_redrawn_in_place_on_a_terminal_and_plain_lines_otherwise() -> None:
    import io

    from localsync.cli.demo import Display

    live = io.StringIO()
    display = Display(live, live=True)
    display.show(["a", "b"], "plain")
    display.show(["c", "d"], "plain")
    # the second frame moves the cursor back up over the two lines it replaces
    assert live.getvalue() == "\x1b[2Ka\n\x1b[2Kb\n\x1b[2F\x1b[2Kc\n\x1b[2Kd\n"

    plain = io.StringIO()
    display = Display(plain, live=False)
    for _ in range(5):
        display.show(["a", "b"], "line")  # throttled to one line a second
    display.show(["a"], "last", force=True)
    assert plain.getvalue() == "line\nlast\n"
