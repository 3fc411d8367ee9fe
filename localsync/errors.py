"""Every public exception of localsync, in one module at the bottom of the layers.

Each layer raises these; callers catch them from ``localsync`` (or here) without importing
the transport or persister that raised them.
"""

from __future__ import annotations

from typing import Any


class UsageError(Exception):
    """A mistake in a command's arguments or surroundings (a port in use, a file where a folder
    belongs): ``main`` prints it as one line, ``localsync NAME: error: ...``, and exits 2, as
    argparse does for its own checks. Subcommands raise it instead of letting a traceback out.
    """


class RuntimeDirError(PermissionError):
    """The runtime folder is not private to this user, so joining a channel there is unsafe."""


class TinyBaseError(Exception):
    """An error with TinyBase's message text (``tinybase:<code>[:<details>]``).

    Kept as one exception type so that ``on_ignored_error`` handlers can tell protocol
    problems (``.code``) from programming errors without parsing strings.
    """

    def __init__(self, code: int, details: str | None = None) -> None:
        self.code = f"tinybase:{code}"
        self.details = details
        super().__init__(self.code if details is None else f"{self.code}:{details}")


class PersistError(RuntimeError):
    """A save could not be made durable (reported through ``on_ignored_error`` too)."""


class StorageCreateError(PersistError):
    """The storage's folder or file could not be created or used (the message says which, and
    why: ``cannot create folder data/rooms: permission denied``, ``cannot write x.json: it is
    a directory, not a file``)."""


class ReadOnlyStorageError(PersistError):
    """The storage is read-only (read-only file system, or no write permission).

    Raised by a save (``cannot write x.sqlite: read-only (...)``): such storage is loaded
    read-only and never written. Also raised by a load when not even reading is possible
    without writing (an SQLite write-ahead log left beside the database in a read-only
    folder: reading it needs a ``-shm`` file SQLite cannot create there).
    """


class CorruptContentError(ValueError):
    """The persisted data exists but cannot be loaded; it is left untouched on disk."""


class ContentDecodeError(ValueError):
    """Persisted bytes are not JSON (truncated, garbage): the content is corrupt."""


class DatabaseUnreachableError(PersistError):
    """The server is down, unreachable, refused the credentials or dropped the connection."""


class ChannelError(ConnectionError):
    """The channel could not be joined (no hub reachable, closed transport)."""


class ChannelTakenError(RuntimeError):
    """The channel already has a live coordinator (see "One coordinator per channel")."""

    def __init__(self, message: str, owner: dict[str, Any]) -> None:
        super().__init__(message)
        self.owner = owner
