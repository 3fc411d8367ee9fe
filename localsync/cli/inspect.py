"""``localsync inspect PATH``: print persisted stores as text tables
(``localsync inspect --web CHANNEL``: a live page instead, see :mod:`localsync.cli.inspect_web`).

PATH is a file written by the file persister (or by TinyBase's ``createFilePersister``, for a
MergeableStore or a plain Store), an
SQLite database written by the SQLite persister, or a folder: then every persisted store
directly inside it is printed. Nothing is ever written: databases are opened read-only, so
inspecting a live store is safe, and so is a store on a read-only file system or in a folder
this user may not write (see ``_sqlitestore``: only a write-ahead log left there by a killed
writer makes such a database unreadable, which is reported).

What is shown is what a store loaded from that data would hold: deleted cells and values
(stamps holding ``undefined``) and rows whose cells are all deleted are left out, object and
array cells are shown as JSON. Strings are shown as they are; every other value as JSON
(``1``, ``1.5``, ``true``, ``null``), so ``"1"`` and ``1`` can be told apart by alignment only
in ``--json`` output, which prints ``{"tables": ..., "values": ...}`` per store.

Exit status: 0 when everything could be read, 1 when some store was unreadable (reported on
stderr, after the others are printed) or when PATH is a folder holding no persisted store
(nothing to show: "no persisted stores in DIR" on stderr), 2 when PATH does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from localsync.core.codec import JSON_PREFIX, UNDEFINED, js_stringify
from localsync.persisters._common import PersistError
from localsync.persisters._filestore import CorruptContentError, read_content
from localsync.persisters._sqlitestore import SqliteStorage

__all__ = ["configure", "load_persisted", "plain_content", "render", "run"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SKIPPED_SUFFIXES = (".tmp", "-wal", "-shm", "-journal")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="a persisted store (JSON file or SQLite) or a folder of them; with --web, a channel",
    )
    parser.add_argument("--json", action="store_true", help="print tables and values as JSON")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=100,
        metavar="N",
        help="rows shown per table (0: all; default 100)",
    )
    parser.add_argument(
        "--width", type=int, default=40, metavar="N", help="longest cell text shown (default 40)"
    )
    from localsync.cli.inspect_web import configure_web

    configure_web(parser)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def load_persisted(path: Path) -> tuple[str, list[Any]]:
    """(kind, encoded mergeable content) of a persisted store; ``CorruptContentError`` if not."""
    if _is_sqlite(path):
        storage = SqliteStorage(path, read_only=True)
        try:
            content = storage.read_content()
        finally:
            storage.close()
        kind = "sqlite"
    else:
        try:
            content = read_content(path)
            kind = "file"
        except CorruptContentError:
            # a plain Store's file ([tables, values]); if it is not that either, the first
            # error (about mergeable content) is the more useful one
            try:
                content = read_content(path, mergeable=False)
            except CorruptContentError:
                content = None
            if content is None:
                raise
            kind = "file, plain Store"
    if content is None:
        content = [[{}, "", 0], [{}, "", 0]]
    return kind, content


def _decode(thing: Any) -> Any:
    if isinstance(thing, str) and thing.startswith(JSON_PREFIX):
        try:
            return json.loads(thing[1:])
        except ValueError:
            return thing
    return thing


def _is_plain(content: list[Any]) -> bool:
    return isinstance(content[0], dict)


def plain_content(content: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(tables, values)`` a store loaded from ``content`` would return."""
    if _is_plain(content):
        return (
            {
                t: {r: {c: _decode(v) for c, v in row.items()} for r, row in rows.items()}
                for t, rows in content[0].items()
            },
            {k: _decode(v) for k, v in content[1].items()},
        )
    tables: dict[str, Any] = {}
    for table_id, table_stamp in content[0][0].items():
        rows: dict[str, Any] = {}
        for row_id, row_stamp in table_stamp[0].items():
            cells = {
                cell_id: _decode(stamp[0])
                for cell_id, stamp in row_stamp[0].items()
                if stamp[0] != UNDEFINED
            }
            if cells:
                rows[row_id] = cells
        if rows:
            tables[table_id] = rows
    values = {
        value_id: _decode(stamp[0])
        for value_id, stamp in content[1][0].items()
        if stamp[0] != UNDEFINED
    }
    return tables, values


def _text(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else js_stringify(value)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    if width > 1 and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    return [rule, line(header), rule, *(line(r) for r in rows), rule]


def render(
    name: str, kind: str, content: list[Any], max_rows: int = 100, width: int = 40
) -> list[str]:
    """Text lines describing one persisted store."""
    tables, values = plain_content(content)
    cell_count = sum(len(row) for rows in tables.values() for row in rows.values())
    row_count = sum(len(rows) for rows in tables.values())
    hashes = (
        ""
        if _is_plain(content)
        else f"; content hashes [{content[0][2] if len(content[0]) > 2 else 0}, "
        f"{content[1][2] if len(content[1]) > 2 else 0}]"
    )
    out = [
        f"== {name} ({kind}): {len(tables)} tables, {row_count} rows, {cell_count} cells, "
        f"{len(values)} values{hashes}"
    ]
    for table_id, rows in tables.items():
        cell_ids: dict[str, None] = {}
        for row in rows.values():
            cell_ids.update(dict.fromkeys(row))
        shown = list(rows.items())
        if max_rows > 0:
            shown = shown[:max_rows]
        body = [
            [_text(row_id, width)] + [_text(row[c], width) if c in row else "" for c in cell_ids]
            for row_id, row in shown
        ]
        out.append("")
        out.append(f"table {table_id!r} ({len(rows)} rows)")
        out.extend(_table(["row id", *(_text(c, width) for c in cell_ids)], body))
        if len(shown) < len(rows):
            out.append(f"... {len(rows) - len(shown)} more rows (--max-rows 0 shows all)")
    if values:
        out.append("")
        out.append(f"values ({len(values)})")
        out.extend(
            _table(
                ["value id", "value"],
                [[_text(k, width), _text(v, width)] for k, v in values.items()],
            )
        )
    return out


def _candidates(folder: Path) -> list[Path]:
    found = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.endswith(_SKIPPED_SUFFIXES):
            continue
        if _is_sqlite(entry) or entry.suffix.lower() == ".json":
            found.append(entry)
    return found


def inspect_paths(path: Path, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not path.exists():
        print(f"localsync inspect: {path}: no such file or folder", file=err)
        return 2
    paths = _candidates(path) if path.is_dir() else [path]
    if path.is_dir() and not paths:
        print(f"localsync inspect: {path}: no persisted stores found", file=err)
    status = 0
    first = True
    for store_path in paths:
        try:
            kind, content = load_persisted(store_path)
        except (CorruptContentError, OSError, PersistError) as error:
            print(f"localsync inspect: {store_path}: unreadable: {error}", file=err)
            status = 1
            continue
        if args.json:
            tables, values = plain_content(content)
            print(
                json.dumps(
                    {"path": str(store_path), "kind": kind, "tables": tables, "values": values},
                    ensure_ascii=False,
                ),
                file=out,
            )
            continue
        if not first:
            print(file=out)
        first = False
        lines = render(str(store_path), kind, content, args.max_rows, args.width)
        print("\n".join(lines), file=out)
    return status


def run(args: argparse.Namespace) -> int:
    from localsync.cli.main import UsageError

    if args.web:
        from localsync.cli.inspect_web import run_web

        return run_web(args)
    path = Path(os.fspath(args.path))
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_dir() and not _candidates(path):
        print(
            f"localsync inspect: no persisted stores in {path} "
            "(looked for JSON files and SQLite databases directly inside it)",
            file=sys.stderr,
        )
        return 1
    return inspect_paths(path, args, sys.stdout, sys.stderr)
