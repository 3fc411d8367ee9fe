"""The private runtime folder that holds a channel's lock file and ipc:// sockets.

A channel is reachable by anyone who can ``connect()`` to its socket files, and ZeroMQ has no
notion of who is on the other end of an ipc:// socket. The only access control is therefore
the file system: the folder is created mode 0700 and must be owned by the current user, and
socket files are chmod 0600 by the hub that binds them. A folder that exists with any other
owner or with group/other permission bits is refused rather than "fixed", because someone else
may already be listening there.

Where the folder is (first match wins):

1. the ``runtime_dir`` argument of :func:`resolve_runtime_dir`;
2. ``$LOCALSYNC_RUNTIME_DIR`` (handy to isolate tests and to share a folder across a process
   tree explicitly);
3. ``$XDG_RUNTIME_DIR/localsync`` when ``$XDG_RUNTIME_DIR`` is an existing folder owned by the
   user (systemd's per-user tmpfs, wiped at logout);
4. ``<tempfile.gettempdir()>/localsync-<uid>``.

Channel files are named by a 16-hex-digit BLAKE2b hash of the channel name, so any name
(within :data:`MAX_CHANNEL_NAME_LENGTH` characters) fits the ~107-byte limit of a Unix socket
path as long as the folder's own path is short; a path that would still be too long raises a
clear :class:`ValueError` instead of ZeroMQ's cryptic EINVAL.

Hub generations (:mod:`localsync.channel.hub`): generation 0 of a channel uses ``<hash>.lock``,
``<hash>.in`` and ``<hash>.out``; generation N > 0 (elected when generation N-1's hub stopped
answering) uses ``<hash>.gN.lock``, ``.gN.in`` and ``.gN.out``, and ``<hash>.gen`` holds the
newest generation's number. The socket path length is checked with room for generation
numbers up to :data:`MAX_GENERATION`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from localsync.errors import RuntimeDirError

__all__ = [
    "MAX_CHANNEL_NAME_LENGTH",
    "MAX_SOCKET_PATH_BYTES",
    "ChannelPaths",
    "RuntimeDirError",
    "channel_paths",
    "resolve_runtime_dir",
    "validate_channel_name",
]

#: Longest accepted channel name, in characters. Names are hashed for file names, so this is a
#: sanity bound (a name is sent nowhere), not a file system limit.
MAX_CHANNEL_NAME_LENGTH = 1024

#: sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

ENV_VAR = "LOCALSYNC_RUNTIME_DIR"

#: Highest hub generation whose socket paths are guaranteed to fit (checked up front); a
#: channel would need that many hub failovers to exceed it.
MAX_GENERATION = 999_999


@dataclass(frozen=True)
class ChannelPaths:
    """Files of one channel inside the runtime folder."""

    folder: Path
    lock: Path
    inbound: Path  # hub XSUB: every participant's PUB connects here
    outbound: Path  # hub XPUB: every participant's SUB connects here
    peers: Path  # one locked file per live participant (:mod:`localsync.channel.presence`)
    generation: int = 0  # hub generation these lock/socket paths belong to

    @property
    def generation_file(self) -> Path:
        """``<hash>.gen``: the newest hub generation's number (absent: 0)."""
        return self.folder / f"{self.peers.stem}.gen"

    def at_generation(self, generation: int) -> ChannelPaths:
        """The same channel's lock and socket paths for hub ``generation`` (see module doc)."""
        if not isinstance(generation, int) or not 0 <= generation <= MAX_GENERATION:
            raise ValueError(f"hub generation must be in 0..{MAX_GENERATION}, got {generation!r}")
        stem = self.peers.stem if generation == 0 else f"{self.peers.stem}.g{generation}"
        return replace(
            self,
            lock=self.folder / f"{stem}.lock",
            inbound=self.folder / f"{stem}.in",
            outbound=self.folder / f"{stem}.out",
            generation=generation,
        )

    def read_generation(self) -> int:
        """The newest hub generation recorded in :attr:`generation_file` (0 when unreadable)."""
        try:
            with open(self.generation_file, "rb") as file:
                text = file.read(32)
        except OSError:
            return 0
        try:
            value = int(text)
        except ValueError:
            return 0
        return value if 0 <= value <= MAX_GENERATION else 0

    def publish_generation(self, generation: int) -> None:
        """Record ``generation`` as the newest unless a newer one is recorded already.

        Written to a temporary file and renamed, so readers see the old or the new number,
        never a torn one. Two hosts publishing different generations at the same instant
        could leave the older one; a host re-publishes its generation while it hosts (see
        :mod:`localsync.channel.hub`), which repairs that.
        """
        if self.read_generation() >= generation:
            return
        temporary = self.folder / f".{self.peers.stem}.gen.{os.getpid()}.{threading.get_ident()}"
        with open(temporary, "w") as file:
            file.write(str(generation))
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.generation_file)

    @property
    def inbound_endpoint(self) -> str:
        return f"ipc://{self.inbound}"

    @property
    def outbound_endpoint(self) -> str:
        return f"ipc://{self.outbound}"


def validate_channel_name(name: object) -> str:
    """Reject names that cannot be a channel early, with a message naming the problem."""
    if not isinstance(name, str):
        raise TypeError(f"channel name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("channel name must not be empty")
    if len(name) > MAX_CHANNEL_NAME_LENGTH:
        raise ValueError(
            f"channel name is {len(name)} characters long; the limit is {MAX_CHANNEL_NAME_LENGTH}"
        )
    if "\x00" in name:
        raise ValueError("channel name must not contain NUL characters")
    return name


def _check_private(folder: Path) -> None:
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"runtime folder {folder} is not a plain directory")
    if info.st_uid != os.getuid():
        raise RuntimeDirError(
            f"runtime folder {folder} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}); refusing to place channel sockets there"
        )
    if info.st_mode & 0o077:
        raise RuntimeDirError(
            f"runtime folder {folder} has mode {stat.S_IMODE(info.st_mode):04o}; it must be "
            "0700 (no group/other access) so other users cannot reach the channel sockets"
        )


def _default_folder() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        xdg_path = Path(xdg)
        try:
            info = xdg_path.stat()
            if (
                stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.getuid()
                and os.access(xdg_path, os.W_OK | os.X_OK)
            ):
                return xdg_path / "localsync"
        except OSError:
            pass
    return Path(tempfile.gettempdir()) / f"localsync-{os.getuid()}"


def resolve_runtime_dir(runtime_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the private runtime folder, creating it mode 0700 if missing.

    Raises :class:`RuntimeDirError` if it exists but is not private to this user.
    """
    folder = Path(runtime_dir) if runtime_dir is not None else _default_folder()
    folder = folder.absolute()
    try:
        # mkdir's mode is filtered by the umask, which can only remove bits: 0700 stays <= 0700
        folder.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    _check_private(folder)
    return folder


def channel_paths(name: str, runtime_dir: str | os.PathLike[str] | None = None) -> ChannelPaths:
    """Files for channel ``name``; validates the name, the folder and the socket path length."""
    validate_channel_name(name)
    folder = resolve_runtime_dir(runtime_dir)
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).hexdigest()
    paths = ChannelPaths(
        folder=folder,
        lock=folder / f"{digest}.lock",
        inbound=folder / f"{digest}.in",
        outbound=folder / f"{digest}.out",
        peers=folder / f"{digest}.peers",
    )
    furthest = paths.at_generation(MAX_GENERATION)
    longest = max(len(os.fsencode(furthest.inbound)), len(os.fsencode(furthest.outbound)))
    if longest > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"socket path {furthest.outbound} (of hub generation {MAX_GENERATION}) is "
            f"{longest} bytes long; Unix sockets allow at most "
            f"{MAX_SOCKET_PATH_BYTES}. Use a shorter runtime folder (runtime_dir= or "
            f"${ENV_VAR})."
        )
    return paths
