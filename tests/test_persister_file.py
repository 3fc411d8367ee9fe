"""File persister: the disk layer (atomic replace, TinyBase file format, corrupt files) and the
persister built on it (load/save/auto-save against a real MergeableStore)."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from localsync.persisters._filestore import (
    CorruptContentError,
    decode_content,
    encode_content,
    read_content,
    write_atomic,
)

VECTORS = Path(__file__).parent / "conformance"


def _vector_contents() -> list[tuple[str, Any]]:
    """Final mergeable content of every TinyBase store trace: real shapes, made by TinyBase."""
    cases = json.loads((VECTORS / "store_traces.json").read_text())
    return [(case["name"], case["steps"][-1]["after"]["content"]) for case in cases]


@pytest.mark.parametrize(("name", "content"), _vector_contents())
def test_round_trip_of_tinybase_contents(tmp_path: Path, name: str, content: Any) -> None:
    path = tmp_path / f"{name}.json"
    write_atomic(path, encode_content(content))
    assert read_content(path) == content
    # what we write is what JSON.stringify would be parsed from: plain compact JSON
    assert json.loads(path.read_text("utf-8")) == content
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_undefined_and_unicode_are_written_raw_like_json_stringify(tmp_path: Path) -> None:
    content = [
        [
            {"t": [{"r": [{"c": ["\ufffc", "Nj", 1], "é": ["😀\u2028", "Nj", 2]}, "", 3]}, "", 4]},
            "",
            5,
        ],
        [{"v": [None, "Nj", 6], "o": ['\ufffd{"a":1}', "Nj", 7]}, "", 8],
    ]
    path = tmp_path / "u.json"
    write_atomic(path, encode_content(content))
    raw = path.read_bytes()
    assert "\ufffc".encode() in raw and "😀".encode() in raw
    assert b" " not in raw  # compact separators, as JSON.stringify
    assert read_content(path) == content


def test_lone_surrogates_survive(tmp_path: Path) -> None:
    content = [[{}, "", 0], [{"v": ["a\ud800b", "Nj", 1]}, "", 2]]
    path = tmp_path / "s.json"
    write_atomic(path, encode_content(content))
    assert b"\\ud800" in path.read_bytes()
    assert read_content(path) == content


def test_missing_and_empty_files_mean_nothing_saved(tmp_path: Path) -> None:
    assert read_content(tmp_path / "absent.json") is None
    (tmp_path / "empty.json").write_bytes(b"")
    assert read_content(tmp_path / "empty.json") is None
    (tmp_path / "blank.json").write_bytes(b" \n")
    assert read_content(tmp_path / "blank.json") is None


@pytest.mark.parametrize(
    "data",
    [b'[[{}, "", 0], [{}, "", 0]', b"\x00\x01garbage", b"{}", b"[1, 2]", b"[[1], [2]]", b"null"],
)
def test_corrupt_files_are_errors(data: bytes) -> None:
    with pytest.raises(CorruptContentError):
        decode_content(data)


def test_replace_keeps_mode_and_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    write_atomic(real, b"[1]")
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, b"[2]")
    assert link.is_symlink()
    assert real.read_bytes() == b"[2]"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores modes")
def test_failed_write_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "ro" / "store.json"
    target.parent.mkdir()
    write_atomic(target, b"[1]")
    os.chmod(target.parent, 0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomic(target, b"[2]")
    finally:
        os.chmod(target.parent, 0o700)
    assert target.read_bytes() == b"[1]"


def test_failed_write_on_full_disk_leaves_target_untouched(tmp_path: Path) -> None:
    """A file-size limit makes ``write`` fail mid-file (EFBIG), as a full disk does (ENOSPC)."""
    target = tmp_path / "store.json"
    write_atomic(target, b"[1]")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(OSError):
            write_atomic(target, b"[" + b"1," * 4096 + b"1]")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert target.read_bytes() == b"[1]"
    assert not list(tmp_path.glob("*.tmp"))
