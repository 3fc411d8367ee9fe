"""The collector tuning: made where a store is synchronized or persisted, never over a choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import gc, sys
if sys.argv[1] != "default":
    gc.set_threshold(int(sys.argv[1]), 10, 10)
from localsync import create_mergeable_store
from localsync.sync.local import create_local_synchronizer
store = create_mergeable_store()
print(gc.get_threshold()[0])
create_local_synchronizer(store)
print(gc.get_threshold()[0])
"""


def thresholds(first: str, env: dict[str, str]) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, first],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**{k: v for k, v in os.environ.items() if k != "LOCALSYNC_GC_TUNING"}, **env},
        timeout=60,
    )
    return [int(line) for line in result.stdout.split()]


@pytest.mark.parametrize(
    ("first", "env", "expected"),
    [
        ("default", {}, [700, 10_000]),  # a plain store changes nothing; a synchronizer tunes
        ("2500", {}, [2500, 2500]),  # the program's own choice is kept
        ("default", {"LOCALSYNC_GC_TUNING": "0"}, [700, 700]),  # opted out
    ],
)
def test_collector_tuning(first: str, env: dict[str, str], expected: list[int]) -> None:
    assert thresholds(first, env) == expected
