"""``localsync inspect``: run as a real command on files and databases holding TinyBase-made
content; what it shows must be what TinyBase's getTables()/getValues() returned."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localsync.persisters._filestore import encode_content, write_atomic
from localsync.persisters._sqlitestore import SqliteStorage

VECTORS = Path(__file__).parents[1] / "conformance"
ROOT = Path(__file__).resolve().parents[2]


def _cases() -> list[dict[str, Any]]:
    return json.loads((VECTORS / "store_traces.json").read_text())


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localsync.cli", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def _encoded(content: list[Any]) -> list[Any]:
    """Vector contents hold decoded object cells; persisted data holds them encoded."""
    from localsync.core.codec import encode_if_json

    def cells(stamp_map: dict[str, Any]) -> dict[str, Any]:
        return {k: [encode_if_json(s[0]), *s[1:]] for k, s in stamp_map.items()}

    tables = {
        t: [{r: [cells(rs[0]), *rs[1:]] for r, rs in ts[0].items()}, *ts[1:]]
        for t, ts in content[0][0].items()
    }
    return [[tables, *content[0][1:]], [cells(content[1][0]), *content[1][1:]]]


def test_folder_of_files_and_databases_matches_tinybase(tmp_path: Path) -> None:
    expected = {}
    for i, case in enumerate(_cases()):
        after = case["steps"][-1]["after"]
        content = _encoded(after["content"])
        if i % 2:
            path = tmp_path / f"{case['name']}.json"
            write_atomic(path, encode_content(content))
        else:
            path = tmp_path / f"{case['name']}.sqlite"
            storage = SqliteStorage(path)
            storage.write_content(content)
            storage.close()
        expected[str(path)] = (after["tables"], after["values"])
    result = _inspect(str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    shown = [json.loads(line) for line in result.stdout.split("\n") if line]
    assert {s["path"] for s in shown} == set(expected)
    for store in shown:
        assert (store["tables"], store["values"]) == expected[store["path"]], store["path"]


def test_text_tables_show_cells_and_values(tmp_path: Path) -> None:
    case = next(c for c in _cases() if c["name"] == "json_object_array_cells")
    path = tmp_path / "objects.json"
    write_atomic(path, encode_content(_encoded(case["steps"][-1]["after"]["content"])))
    result = _inspect(str(path))
    assert result.returncode == 0, result.stderr
    assert "table 't1'" in result.stdout
    assert '{"1":"y","2":"x","z":0}' in result.stdout  # object cell as JavaScript prints it
    assert "values (2)" in result.stdout


def test_unreadable_store_is_reported_and_others_still_shown(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[[{")
    good = tmp_path / "good.json"
    write_atomic(good, encode_content([[{}, "", 0], [{"v": ["x", "NjEtLV-----VnP9x", 1]}, "", 2]]))
    result = _inspect(str(tmp_path))
    assert result.returncode == 1
    assert "bad.json" in result.stderr and "unreadable" in result.stderr
    assert "good.json" in result.stdout and "values (1)" in result.stdout


def test_missing_path(tmp_path: Path) -> None:
    assert _inspect(str(tmp_path / "nope")).returncode == 2


def test_inspecting_never_writes(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    result = _inspect(str(foreign))
    assert result.returncode == 1
    assert "not a localsync database" in result.stderr
    assert foreign.read_bytes() == before
    assert not (tmp_path / "foreign.db-wal").exists()


@pytest.mark.parametrize("rows", [3])
def test_max_rows_truncates(tmp_path: Path, rows: int) -> None:
    table = {f"r{i}": [{"c": [i, "NjEtLV-----VnP9x", i]}, "", i] for i in range(rows + 2)}
    path = tmp_path / "many.json"
    write_atomic(path, encode_content([[{"t": [table, "", 1]}, "", 1], [{}, "", 0]]))
    result = _inspect(str(path), "--max-rows", str(rows))
    assert result.returncode == 0
    assert "2 more rows" in result.stdout


def test_plain_store_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    tables = {"t": {"r": {"c": 1, "o": {"a": [1]}}}}
    write_atomic(path, encode_content([{"t": {"r": {"c": 1, "o": '\ufffd{"a":[1]}'}}}, {"v": "x"}]))
    result = _inspect(str(path), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["tables"], shown["values"]) == (tables, {"v": "x"})
    assert "plain Store" in shown["kind"]
