"""TinyBase's JSON-mode database layout, the part every SQL dialect shares.

TinyBase's database persisters (``createSqlite3Persister``, ``createPostgresPersister``, ...)
in JSON mode keep a whole store in one row of one table: table ``tinybase`` with columns
``_id`` and ``store`` (names configurable), the row whose ``_id`` is ``'_'``, the ``store``
cell holding the JSON of the encoded mergeable content. The SQLite and PostgreSQL backends
(:mod:`._sqlite_json`, :mod:`.postgres`) build their SQL from these helpers.
"""

from __future__ import annotations

from typing import Any

from localsync.core.protocols import PersistableStore, is_mergeable_store
from localsync.persisters._common import Backend
from localsync.persisters._filestore import CorruptContentError, decode_content
from localsync.persisters._jsonio import dumps_str

__all__ = [
    "SINGLE_ROW_ID",
    "JsonRowBackend",
    "decode_row",
    "encode_row",
    "escape_id",
    "escaped_names",
    "json_mode_names",
]

SINGLE_ROW_ID = "_"


def escape_id(name: str) -> str:
    """TinyBase's ``escapeId``: each dot-separated part double-quoted (``a.b`` is schema.table)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def escaped_names(table: str, id_column: str, store_column: str) -> tuple[str, str, str]:
    """The three JSON-mode names, each escaped with :func:`escape_id`, for building SQL."""
    return escape_id(table), escape_id(id_column), escape_id(store_column)


def json_mode_names(config_or_store_table_name: Any) -> tuple[str, str, str]:
    """``(table, id column, store column)`` from TinyBase's ``DatabasePersisterConfig``.

    Args:
        config_or_store_table_name: ``None`` (defaults ``tinybase``/``_id``/``store``), a table
            name, or ``{"mode": "json", "storeTableName", "storeIdColumnName",
            "storeColumnName"}`` (missing or empty names take the defaults, as in TinyBase).

    Raises ``ValueError`` for another mode (tabular is not supported) and ``TypeError`` for
    anything that is not a dict, a string or ``None``, or names that are not strings.
    """
    if config_or_store_table_name is None:
        config: dict[str, Any] = {}
    elif isinstance(config_or_store_table_name, str):
        config = {"storeTableName": config_or_store_table_name}
    elif isinstance(config_or_store_table_name, dict):
        config = config_or_store_table_name
    else:
        raise TypeError("config_or_store_table_name must be a dict, a table name or None")
    if config.get("mode", "json") != "json":
        raise ValueError("only TinyBase's JSON mode is supported ({'mode': 'json', ...})")
    names = (
        config.get("storeTableName") or "tinybase",
        config.get("storeIdColumnName") or "_id",
        config.get("storeColumnName") or "store",
    )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"table and column names must be strings, not {name!r}")
    return names


def encode_row(content: Any) -> str:
    """The ``store`` cell TinyBase writes for encoded mergeable ``content`` (compact JSON)."""
    return dumps_str(content)


def decode_row(text: Any, column: str = "store") -> Any | None:
    """Content from a ``store`` cell: ``None`` for NULL/``null``/empty (nothing saved).

    Raises ``CorruptContentError`` when the cell is not text, not JSON, or not mergeable
    content (the persister then refuses to overwrite it).
    """
    if text is None:
        return None
    if isinstance(text, bytes):
        data = text
    elif isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    else:
        raise CorruptContentError(f"column {column!r} does not hold text")
    if data.strip() == b"null":
        return None  # TinyBase writes null for "nothing"
    return decode_content(data, True)


class JsonRowBackend(Backend[PersistableStore]):
    """A backend keeping the whole store in TinyBase's one JSON row; every save rewrites it.

    Subclasses set ``table``, ``id_column`` and ``store_column`` and implement
    :meth:`_write_row` for their SQL dialect.
    """

    table: str
    id_column: str
    store_column: str

    def _save_sync(self, full: bool) -> tuple[int, bool]:
        store = self.store
        assert is_mergeable_store(store)  # JSON mode persists a MergeableStore only
        return self.save_whole_content(store.get_encoded_mergeable_content, self._save_row)

    def _save_row(self, content: Any) -> None:
        names = escaped_names(self.table, self.id_column, self.store_column)
        self._write_row(encode_row(content), *names)

    def _write_row(self, text: str, table: str, id_column: str, store_column: str) -> None:
        """Make row ``'_'`` hold ``text`` and delete every other row, in one transaction."""
        raise NotImplementedError
