"""Errors a new user meets say what is wrong, the same way in every build (issue 18, item 7).

* A persister pointed at a directory says so (it used to report an "unreadable" file, or
  SQLite's "unable to open database file"), and leaves the directory alone.
* An id that is not a str raises ``TypeError: table id must be a str, not int`` from every
  public store method that takes ids (``... a str or None ...`` for listener ids, where None
  is the wildcard), in the compiled (mypyc) build - whose own argument check used to say
  ``str object expected; got int`` - and in the pure-Python build alike. Both builds run
  here, each in its own interpreter: the compiled one as installed, the pure one from a copy
  of the package without the compiled files.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localsync import create_mergeable_store
from localsync.persisters._common import StorageCreateError
from localsync.persisters.file import create_file_persister
from localsync.persisters.sqlite import create_sqlite_persister

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("create", "verb"), [(create_file_persister, "read"), (create_sqlite_persister, "open")]
)
def test_persister_pointed_at_a_directory_says_it_is_one(
    tmp_path: Path, create: object, verb: str
) -> None:
    folder = tmp_path / "data.store"
    folder.mkdir()

    async def scenario() -> None:
        store = create_mergeable_store()
        errors: list[BaseException] = []
        persister = create(store, folder, on_ignored_error=errors.append)  # type: ignore[operator]
        await persister.load()
        assert [str(e) for e in errors] == [
            f"cannot {verb} {folder}: it is a directory, not a file"
        ]
        assert isinstance(errors[0], StorageCreateError)
        store.set_cell("t", "r", "c", 1)
        with pytest.raises(StorageCreateError) as raised:
            await persister.save()
        write = "write" if verb == "read" else verb
        assert str(raised.value) == f"cannot {write} {folder}: it is a directory, not a file"
        await persister.destroy()

    asyncio.run(scenario())
    assert folder.is_dir() and list(folder.iterdir()) == []


# Every public method that takes ids, called with one bad id; prints what each raised.
_BAD_IDS = r"""
import json, sys
import localsync.core.store
from localsync import create_mergeable_store, create_store

def f(*args):
    pass

CALLS = [
    ("set_cell", (1, "r", "c", 1)),
    ("set_cell", ("t", b"r", "c", 1)),
    ("set_cell", ("t", "r", None, 1)),
    ("set_row", ("t", 2, {"c": 1})),
    ("set_row", ("t", "r", {3: 1})),
    ("set_partial_row", (1, "r", {"c": 1})),
    ("set_table", (1.5, {"r": {"c": 1}})),
    ("set_table", ("t", {1: {"c": 1}})),
    ("set_tables", ({1: {"r": {"c": 1}}},)),
    ("set_content", ([{"t": {"r": {4: 1}}}, {}],)),
    ("apply_changes", ([{"t": {1: {"c": 1}}}, {}, 1],)),
    ("add_row", (1, {"c": 1})),
    ("set_value", (1, 1)),
    ("set_values", ({1: 1},)),
    ("set_partial_values", ({None: 1},)),
    ("get_table", (1,)),
    ("get_table_cell_ids", (1,)),
    ("get_row_count", (1,)),
    ("get_row_ids", (1,)),
    ("get_row", ("t", 1)),
    ("get_cell_ids", (1, "r")),
    ("get_cell", ("t", "r", 1)),
    ("get_value", (1,)),
    ("has_table", (1,)),
    ("has_table_cell", ("t", 1)),
    ("has_row", ("t", 1)),
    ("has_cell", (1, "r", "c")),
    ("has_value", (1,)),
    ("del_table", (1,)),
    ("del_row", ("t", 1)),
    ("del_cell", ("t", "r", 1)),
    ("del_value", (1,)),
    ("for_each_row", (1, f)),
    ("for_each_cell", ("t", 1, f)),
    ("add_table_listener", (1, f)),
    ("add_has_table_listener", (1, f)),
    ("add_table_cell_ids_listener", (1, f)),
    ("add_has_table_cell_listener", ("t", 1, f)),
    ("add_row_count_listener", (1, f)),
    ("add_row_ids_listener", (1, f)),
    ("add_row_listener", ("t", 1, f)),
    ("add_has_row_listener", (1, None, f)),
    ("add_cell_ids_listener", (None, 1, f)),
    ("add_cell_listener", (None, None, 1, f)),
    ("add_has_cell_listener", (None, 1.0, None, f)),
    ("add_value_listener", (1, f)),
    ("add_has_value_listener", (1, f)),
]

out = {"compiled": localsync.core.store.__file__.endswith((".so", ".pyd")), "results": {}}
for kind, store in (("Store", create_store()), ("MergeableStore", create_mergeable_store())):
    results = []
    for name, args in CALLS:
        try:
            getattr(store, name)(*args)
            results.append(f"{name}: no error")
        except TypeError as error:
            results.append(f"{name}: {error}")
    # None is the wildcard for listener ids, and nothing of a refused call was applied
    store.add_cell_listener(None, None, None, f)
    store.add_has_table_cell_listener(None, None, f)
    results.append(f"content after: {store.get_content()}")
    out["results"][kind] = results
print(json.dumps(out))
"""

_EXPECTED = [
    "set_cell: table id must be a str, not int",
    "set_cell: row id must be a str, not bytes",
    "set_cell: cell id must be a str, not NoneType",
    "set_row: row id must be a str, not int",
    "set_row: cell id must be a str, not int",
    "set_partial_row: table id must be a str, not int",
    "set_table: table id must be a str, not float",
    "set_table: row id must be a str, not int",
    "set_tables: table id must be a str, not int",
    "set_content: cell id must be a str, not int",
    "apply_changes: row id must be a str, not int",
    "add_row: table id must be a str, not int",
    "set_value: value id must be a str, not int",
    "set_values: value id must be a str, not int",
    "set_partial_values: value id must be a str, not NoneType",
    "get_table: table id must be a str, not int",
    "get_table_cell_ids: table id must be a str, not int",
    "get_row_count: table id must be a str, not int",
    "get_row_ids: table id must be a str, not int",
    "get_row: row id must be a str, not int",
    "get_cell_ids: table id must be a str, not int",
    "get_cell: cell id must be a str, not int",
    "get_value: value id must be a str, not int",
    "has_table: table id must be a str, not int",
    "has_table_cell: cell id must be a str, not int",
    "has_row: row id must be a str, not int",
    "has_cell: table id must be a str, not int",
    "has_value: value id must be a str, not int",
    "del_table: table id must be a str, not int",
    "del_row: row id must be a str, not int",
    "del_cell: cell id must be a str, not int",
    "del_value: value id must be a str, not int",
    "for_each_row: table id must be a str, not int",
    "for_each_cell: row id must be a str, not int",
    "add_table_listener: table id must be a str or None, not int",
    "add_has_table_listener: table id must be a str or None, not int",
    "add_table_cell_ids_listener: table id must be a str or None, not int",
    "add_has_table_cell_listener: cell id must be a str or None, not int",
    "add_row_count_listener: table id must be a str or None, not int",
    "add_row_ids_listener: table id must be a str or None, not int",
    "add_row_listener: row id must be a str or None, not int",
    "add_has_row_listener: table id must be a str or None, not int",
    "add_cell_ids_listener: row id must be a str or None, not int",
    "add_cell_listener: cell id must be a str or None, not int",
    "add_has_cell_listener: row id must be a str or None, not float",
    "add_value_listener: value id must be a str or None, not int",
    "add_has_value_listener: value id must be a str or None, not int",
    "content after: [{}, {}]",
]


def bad_ids(pythonpath: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _BAD_IDS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pythonpath,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_non_str_ids_raise_the_same_type_error_in_both_builds(tmp_path: Path) -> None:
    pure_root = tmp_path / "pure"
    shutil.copytree(
        ROOT / "localsync",
        pure_root / "localsync",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    pure = bad_ids(pure_root)
    assert pure["compiled"] is False
    as_installed = bad_ids(ROOT)
    expected = {"Store": _EXPECTED, "MergeableStore": _EXPECTED}
    assert pure["results"] == expected
    assert as_installed["results"] == expected
    if not as_installed["compiled"]:
        pytest.skip("this checkout is not compiled (pure-Python build): one build checked")
