"""What the sync engine, synchronizers and persisters need from a store (typing Protocols).

:class:`~localsync.core.store.Store` satisfies :class:`PersistableStore`;
:class:`~localsync.core.mergeable_store.MergeableStore` satisfies all of them. Bodies are the
*encoded* forms (object cells as U+FFFD + JSON, ``undefined`` as U+FFFC), hence ``Any``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeGuard

__all__ = [
    "HashTreeStore",
    "MergeableStoreLike",
    "PersistableStore",
    "SyncStore",
    "is_mergeable_store",
]


class PersistableStore(Protocol):
    """What a Persister needs from any store: encoded content, changes and transactions."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """The re-entrant lock held for the whole of every transaction."""

    def is_mergeable(self) -> bool: ...

    def get_content(self) -> list[Any]: ...

    def get_encoded_content(self) -> list[Any]: ...

    def set_content(self, content: Any) -> Any: ...

    def set_encoded_content(self, content: Any) -> Any: ...

    def apply_changes(self, changes: Any) -> Any: ...

    def get_encoded_transaction_changes(self) -> list[Any]: ...

    def add_did_finish_transaction_listener(self, listener: Callable[..., Any]) -> str: ...

    def del_listener(self, listener_id: str) -> Any: ...


class HashTreeStore(Protocol):
    """What the sync engine reads: the mergeable hash tree and the diffs against a peer's."""

    def get_mergeable_content_hashes(self) -> list[int]: ...

    def get_mergeable_table_hashes(self) -> dict[str, Any]: ...

    def get_mergeable_table_diff(self, other_table_hashes: Any) -> list[Any]: ...

    def get_mergeable_row_hashes(self, other_table_hashes: Any) -> dict[str, Any]: ...

    def get_mergeable_row_diff(self, other_table_row_hashes: Any) -> list[Any]: ...

    def get_mergeable_cell_hashes(self, other_table_row_hashes: Any) -> dict[str, Any]: ...

    def get_mergeable_cell_diff(self, other_table_row_cell_hashes: Any) -> list[Any]: ...

    def get_mergeable_value_hashes(self) -> dict[str, Any]: ...

    def get_mergeable_value_diff(self, other_value_hashes: Any) -> list[Any]: ...


class MergeableStoreLike(PersistableStore, Protocol):
    """What a Persister needs from a MergeableStore: encoded mergeable forms and hooks."""

    @property
    def ignored_count(self) -> int:
        """How many received or loaded changes were ignored as invalid or far-future."""

    def had_mutated(self) -> bool: ...

    def get_mergeable_content_hashes(self) -> list[int]: ...

    def get_encoded_mergeable_content(self) -> list[Any]: ...

    def encode_mergeable_content(self, encode: Callable[[Any], bytes]) -> bytes: ...

    def set_encoded_mergeable_content(self, mergeable_content: Any) -> Any: ...

    def apply_encoded_mergeable_changes(self, mergeable_changes: Any) -> Any: ...

    def set_default_content(self, content: Any) -> Any: ...

    def get_encoded_transaction_mergeable_changes(self, with_hashes: bool = False) -> list[Any]: ...

    def get_transaction_touched(self) -> Any: ...

    def get_encoded_mergeable_changes_of(
        self, touched: list[Any], max_stamps: int, max_bytes: int
    ) -> list[Any]: ...


class SyncStore(MergeableStoreLike, HashTreeStore, Protocol):
    """What a Synchronizer needs: a MergeableStore's encoded forms and its hash tree."""


def is_mergeable_store(store: PersistableStore) -> TypeGuard[MergeableStoreLike]:
    """True for a MergeableStore (``store.is_mergeable()``)."""
    return store.is_mergeable()
