"""localsync: TinyBase-compatible MergeableStores kept in sync between Python processes.

Every public name is importable from here. Names are resolved lazily, so that importing the
package for one store does not pay for the ZeroMQ, websockets and database imports that only
some programs need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from localsync.compiled import warn_if_stale as _warn_if_stale

_warn_if_stale()

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "UNDEFINED": "localsync.core.codec",
    "JSON_PREFIX": "localsync.core.codec",
    "get_unique_id": "localsync.core.codec",
    "get_hash": "localsync.core.hash",
    "get_cell_hash": "localsync.core.hash",
    "get_value_hash": "localsync.core.hash",
    "get_value_in_values_hash": "localsync.core.hash",
    "add_or_remove_hash": "localsync.core.hash",
    "get_values_hash": "localsync.core.hash",
    "get_table_hash": "localsync.core.hash",
    "get_tables_hash": "localsync.core.hash",
    "get_cell_in_row_hash": "localsync.core.hash",
    "get_row_hash": "localsync.core.hash",
    "get_row_in_table_hash": "localsync.core.hash",
    "get_table_in_tables_hash": "localsync.core.hash",
    "get_hlc_functions": "localsync.core.hlc",
    "Store": "localsync.core.store",
    "create_store": "localsync.core.store",
    "MergeableStore": "localsync.core.mergeable_store",
    "create_mergeable_store": "localsync.core.mergeable_store",
    "SyncEngine": "localsync.sync.engine",
    "Persister": "localsync.sync.persister",
    "Persists": "localsync.sync.persister",
    "Status": "localsync.sync.persister",
    "create_custom_persister": "localsync.sync.persister",
    "Synchronizer": "localsync.sync.synchronizer",
    "create_custom_synchronizer": "localsync.sync.synchronizer",
    "create_local_synchronizer": "localsync.sync.local",
    "BlockingSynchronizer": "localsync.sync.blocking",
    "blocking": "localsync.sync.blocking",
    "run_coroutine": "localsync.sync.blocking",
    "ChannelSynchronizer": "localsync.channel.synchronizer",
    "create_channel_synchronizer": "localsync.channel.synchronizer",
    "Coordinator": "localsync.channel.coordinator",
    "NatsOptions": "localsync.channel.nats",
    "WsSynchronizer": "localsync.ws.client",
    "create_ws_synchronizer": "localsync.ws.client",
    "WsServer": "localsync.ws.server",
    "WsServerSimple": "localsync.ws.server",
    "create_ws_server": "localsync.ws.server",
    "create_ws_server_simple": "localsync.ws.simple",
    "AsgiApp": "localsync.ws.asgi",
    "create_asgi_app": "localsync.ws.asgi",
    "FilePersister": "localsync.persisters.file",
    "create_file_persister": "localsync.persisters.file",
    "SqlitePersister": "localsync.persisters.sqlite",
    "create_sqlite_persister": "localsync.persisters.sqlite",
    "PostgresPersister": "localsync.persisters.postgres",
    "create_postgres_persister": "localsync.persisters.postgres",
    "ChannelError": "localsync.errors",
    "ChannelTakenError": "localsync.errors",
    "ContentDecodeError": "localsync.errors",
    "CorruptContentError": "localsync.errors",
    "DatabaseUnreachableError": "localsync.errors",
    "PersistError": "localsync.errors",
    "ReadOnlyStorageError": "localsync.errors",
    "RuntimeDirError": "localsync.errors",
    "StorageCreateError": "localsync.errors",
    "TinyBaseError": "localsync.errors",
    "UsageError": "localsync.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'localsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from localsync.channel.coordinator import Coordinator
    from localsync.channel.nats import NatsOptions
    from localsync.channel.synchronizer import ChannelSynchronizer, create_channel_synchronizer
    from localsync.core.codec import JSON_PREFIX, UNDEFINED, get_unique_id
    from localsync.core.hash import (
        add_or_remove_hash,
        get_cell_hash,
        get_cell_in_row_hash,
        get_hash,
        get_row_hash,
        get_row_in_table_hash,
        get_table_hash,
        get_table_in_tables_hash,
        get_tables_hash,
        get_value_hash,
        get_value_in_values_hash,
        get_values_hash,
    )
    from localsync.core.hlc import get_hlc_functions
    from localsync.core.mergeable_store import MergeableStore, create_mergeable_store
    from localsync.core.store import Store, create_store
    from localsync.errors import (
        ChannelError,
        ChannelTakenError,
        ContentDecodeError,
        CorruptContentError,
        DatabaseUnreachableError,
        PersistError,
        ReadOnlyStorageError,
        RuntimeDirError,
        StorageCreateError,
        TinyBaseError,
        UsageError,
    )
    from localsync.persisters.file import FilePersister, create_file_persister
    from localsync.persisters.postgres import PostgresPersister, create_postgres_persister
    from localsync.persisters.sqlite import SqlitePersister, create_sqlite_persister
    from localsync.sync.blocking import BlockingSynchronizer, blocking, run_coroutine
    from localsync.sync.engine import SyncEngine
    from localsync.sync.local import create_local_synchronizer
    from localsync.sync.persister import Persister, Persists, Status, create_custom_persister
    from localsync.sync.synchronizer import Synchronizer, create_custom_synchronizer
    from localsync.ws.asgi import AsgiApp, create_asgi_app
    from localsync.ws.client import WsSynchronizer, create_ws_synchronizer
    from localsync.ws.server import (
        WsServer,
        WsServerSimple,
        create_ws_server,
        create_ws_server_simple,
    )
