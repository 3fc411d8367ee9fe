"""localsync: TinyBase-compatible MergeableStores kept in sync between Python processes.

Names are resolved lazily so that importing the package for one store does not pay for
ZeroMQ, websockets and sqlite imports that only some programs need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .compiled import warn_if_stale as _warn_if_stale

_warn_if_stale()

# public name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    # pure helpers
    "UNDEFINED": ".codec",
    "get_unique_id": ".codec",
    "get_hash": ".hash",
    "get_cell_hash": ".hash",
    "get_value_hash": ".hash",
    "get_value_in_values_hash": ".hash",
    "add_or_remove_hash": ".hash",
    "get_values_hash": ".hash",
    "get_table_hash": ".hash",
    "get_tables_hash": ".hash",
    "get_cell_in_row_hash": ".hash",
    "get_row_hash": ".hash",
    "get_row_in_table_hash": ".hash",
    "get_table_in_tables_hash": ".hash",
    "JSON_PREFIX": ".codec",
    "get_hlc_functions": ".hlc",
    # stores
    "Store": ".store",
    "create_store": ".store",
    "MergeableStore": ".mergeable_store",
    "create_mergeable_store": ".mergeable_store",
    # persistence and sync
    "Persister": ".persister",
    "Status": ".persister",
    "create_custom_persister": ".persister",
    "Synchronizer": ".synchronizer",
    "create_custom_synchronizer": ".synchronizer",
    "create_local_synchronizer": ".synchronizers.local",
    "Persists": ".persister",
    "SyncEngine": ".protocol",
    "BlockingSynchronizer": ".blocking",
    "run_coroutine": ".blocking",
    "create_channel_synchronizer": ".synchronizers.channel",
    "Coordinator": ".coordinator",
    "create_ws_synchronizer": ".synchronizers.ws",
    "create_file_persister": ".persisters.file",
    "create_sqlite_persister": ".persisters.sqlite",
    "FilePersister": ".persisters.file",
    "SqlitePersister": ".persisters.sqlite",
    "PersistError": ".persisters.file",
    "CorruptContentError": ".persisters.file",
    "create_ws_server": ".servers.ws_server",
    "create_ws_server_simple": ".servers.ws_server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'localsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .codec import UNDEFINED, get_unique_id
    from .hash import (
        add_or_remove_hash,
        get_cell_hash,
        get_hash,
        get_table_hash,
        get_tables_hash,
        get_value_hash,
        get_value_in_values_hash,
        get_values_hash,
    )
    from .hlc import get_hlc_functions
    from .mergeable_store import MergeableStore, create_mergeable_store
    from .store import Store, create_store
