"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A short private runtime folder for channels (socket paths must stay under 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
