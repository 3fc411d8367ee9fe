"""Shared-memory snapshots of a local channel's content, for processes joining it.

A process joining a local channel (ipc:// sockets, same machine, same user) with an empty
store asks one peer for a snapshot instead of pulling everything through the hash-tree
exchange: the peer encodes its content once per content version into a segment in
``/dev/shm``, offers its name, size, BLAKE2b digest and content hashes on the channel, and
the joiner reads, verifies, decodes and installs it (:mod:`localsync.channel.synchronizer`).
The normal exchange runs afterwards and finds equal hashes, or the small diffs of writes made
since; any failure falls back to it.

Segments
    Files ``/dev/shm/localsync-snap-<uid>-<owner pid>-<32 random hex digits>`` created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600: readable by the user only, and the
    random part (``secrets.token_hex(16)``) makes a name impossible to derive from the pid
    or the channel. Layout: a 24-byte header (:data:`MAGIC`, :data:`FORMAT_VERSION`, a
    reserved word, the payload length, little-endian) then the payload, the store's
    ``get_encoded_mergeable_content()`` in msgspec msgpack. A joiner checks the name's uid,
    that the file is a regular file of the user with mode 0600, its size, the header and the
    digest before decoding; the content's top-level hashes must equal the offer's.

Removal
    The owner removes its segment when its content changes (a newer one replaces it), when
    nobody asked for :data:`KEEP_SECONDS`, when its synchronizer stops or is destroyed, and at
    interpreter exit (``atexit``). When the owner dies without any of these (SIGKILL, the OOM
    killer), two mechanisms remain. (1) Python's resource tracker
    (``multiprocessing.resource_tracker``, the helper process that also guards
    ``SharedMemory``): each segment is registered with it while it exists (from just after
    its first offer is sent: the few instants before are covered by the sweeps), and the tracker
    unlinks what is still registered once every process using it has exited (it warns
    "leaked shared_memory objects" on stderr when it does). Processes started by
    ``multiprocessing`` share their parent's tracker, so for them this happens when the whole
    tree has exited. (2) :func:`sweep`, which every local participant with snapshots on runs
    when it opens the channel, when it creates or opens a snapshot, when a peer says goodbye,
    and every :data:`SWEEP_SECONDS` while its channel is open. So a SIGKILLed owner's segment
    goes at once (the tracker), or within ``SWEEP_SECONDS`` while any participant of the user
    runs, or at the latest when the next one starts (both the owner and its tracker killed,
    nobody left). A recycled pid keeps a dead owner's segment from the sweep until that pid
    ends too.

Limits
    Payloads above :data:`MAX_SNAPSHOT_BYTES` are not offered. Local ZeroMQ channels only
    (tcp:// hubs and NATS reach other machines). Linux (``/dev/shm``); elsewhere snapshots
    are off (:func:`available`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from localsync.core.collector import paused
from localsync.core.protocols import SyncStore

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_SNAPSHOT_BYTES",
    "Offer",
    "SnapshotServer",
    "available",
    "create_segment",
    "read_snapshot",
    "remove_segment",
    "segment_path",
    "sweep",
    "track_segment",
]

SHM_DIR = Path("/dev/shm")
PREFIX = "localsync-snap"
MAGIC = b"LSSNAP\x00\x01"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ")  # magic, format version, reserved, payload length
HEADER_SIZE = _HEADER.size
#: largest payload offered (a bigger content joins through the normal exchange)
MAX_SNAPSHOT_BYTES = 1 << 30
DIGEST_SIZE = 32
#: the owner removes a segment nobody asked for during this long
KEEP_SECONDS = 10.0
#: period of the sweep of dead owners' segments while a local channel is open
SWEEP_SECONDS = 2.0
#: segments examined per sweep (bounds its cost)
SWEEP_LIMIT = 256
_NAME = re.compile(rf"{PREFIX}-(\d+)-(\d+)-[0-9a-f]{{32}}")

_encoder = msgspec.msgpack.Encoder()
_offer_decoder = msgspec.msgpack.Decoder(tuple[str, int, bytes, int, int])

# segments this process created: name -> (creating pid, registered with the resource
# tracker); a fork()ed child must not remove them
_owned: dict[str, tuple[int, bool]] = {}


def available() -> bool:
    """Whether this machine has a writable ``/dev/shm``."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK)


def segment_path(name: str) -> Path:
    """The file of segment ``name``; raises ``ValueError`` for a name that is not one of
    this user's segments."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) != os.getuid():
        raise ValueError(f"not a snapshot segment of this user: {name!r}")
    return SHM_DIR / name


@dataclass(frozen=True)
class Offer:
    """What an owner tells a joiner: where the snapshot is and what it must hash to."""

    name: str
    size: int
    digest: bytes
    tables_hash: int
    values_hash: int

    def encode(self) -> bytes:
        return _encoder.encode(
            (self.name, self.size, self.digest, self.tables_hash, self.values_hash)
        )

    @classmethod
    def decode(cls, data: bytes) -> Offer:
        """Inverse of :meth:`encode`; raises ``ValueError`` for a malformed or unbounded one."""
        try:
            name, size, digest, tables_hash, values_hash = _offer_decoder.decode(data)
        except msgspec.DecodeError as error:
            raise ValueError(f"invalid snapshot offer: {error}") from None
        segment_path(name)
        if not 0 <= size <= MAX_SNAPSHOT_BYTES or len(digest) != DIGEST_SIZE:
            raise ValueError("invalid snapshot offer: size or digest out of bounds")
        return cls(name, size, digest, tables_hash, values_hash)


def _digest(payload: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2b(payload, digest_size=DIGEST_SIZE).digest()


def create_segment(payload: bytes) -> tuple[str, bytes]:
    """Write ``payload`` to a new private segment; returns its name and digest.

    Written with ``pwrite`` rather than through a mapping, so a full ``/dev/shm`` is an
    ``OSError`` (removed at once), not a SIGBUS. Raises ``ValueError`` above
    :data:`MAX_SNAPSHOT_BYTES`.
    """
    if len(payload) > MAX_SNAPSHOT_BYTES:
        raise ValueError(f"snapshot of {len(payload)} bytes exceeds {MAX_SNAPSHOT_BYTES}")
    name = f"{PREFIX}-{os.getuid()}-{os.getpid()}-{secrets.token_hex(16)}"
    path = SHM_DIR / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _owned[name] = (os.getpid(), False)
    try:
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload))
        _write_all(fd, header, 0)
        _write_all(fd, memoryview(payload), HEADER_SIZE)
    except BaseException:
        remove_segment(name)
        raise
    finally:
        os.close(fd)
    return name, _digest(payload)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def track_segment(name: str) -> None:
    """Register a segment this process created with the resource tracker (see the module
    doc); separate from :func:`create_segment` so that it can wait until the offer is sent
    (the first registration imports and starts the tracker: ~10 ms)."""
    owned = _owned.get(name)
    if owned is not None and not owned[1] and owned[0] == os.getpid():
        _owned[name] = (owned[0], _track(name, True))


def _track(name: str, register: bool) -> bool:
    """(Un)register a segment with Python's resource tracker, the helper process that
    unlinks what a process left registered when it dies, even by SIGKILL; True if done."""
    try:
        from multiprocessing import resource_tracker

        if register:
            resource_tracker.register(f"/{name}", "shared_memory")
        else:
            resource_tracker.unregister(f"/{name}", "shared_memory")
    except Exception:  # (no tracker: the sweeps remain)
        return False
    return True


def remove_segment(name: str) -> None:
    """Remove a segment this process created (absent: nothing to do)."""
    owned = _owned.pop(name, None)
    if owned is not None and owned[0] == os.getpid():
        with contextlib.suppress(OSError):
            (SHM_DIR / name).unlink()
        if owned[1]:
            _track(name, False)


@atexit.register
def _remove_owned() -> None:
    """At interpreter exit: remove the segments this process (not a parent) created."""
    for name in list(_owned):
        remove_segment(name)


def read_snapshot(offer: Offer) -> Any:
    """The content of ``offer``'s segment, verified; raises ``OSError`` (absent, unreadable)
    or ``ValueError`` (not private, wrong size, header, digest, encoding or hashes).

    The segment is read into private memory (one copy at memory speed) rather than decoded
    from a mapping: a segment truncated while mapped would kill the reader with SIGBUS.
    """
    path = segment_path(offer.name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) != 0o600
        ):
            raise ValueError(f"snapshot segment {offer.name} is not a private file")
        total = HEADER_SIZE + offer.size
        if info.st_size != total:
            raise ValueError(f"snapshot segment has {info.st_size} bytes, expected {total}")
        data = bytearray(total)
        view = memoryview(data)
        got = 0
        while got < total:
            count = os.preadv(fd, [view[got:]], got)
            if count <= 0:
                raise ValueError("snapshot segment truncated while read")
            got += count
    finally:
        os.close(fd)
    magic, version, _reserved, length = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION or length != offer.size:
        raise ValueError("snapshot segment header does not match the offer")
    payload = view[HEADER_SIZE:]
    if not hmac.compare_digest(_digest(payload), offer.digest):
        raise ValueError("snapshot digest does not match the offer")
    try:
        with paused:  # millions of decoded lists: see localsync.core.collector.paused
            content = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as error:
        raise ValueError(f"snapshot does not decode: {error}") from None
    if not _hashes_of(content) == (offer.tables_hash, offer.values_hash):
        raise ValueError("snapshot content hashes do not match the offer")
    return content


def _hashes_of(content: Any) -> tuple[int, int] | None:
    """The top-level ``(tables hash, values hash)`` of a mergeable content, or None."""
    try:
        tables, values = content
        return tables[2], values[2]
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _pid_alive(pid: int) -> bool:
    """False when ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (exists, another user's: not ours to judge)
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read(512).rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state != [b"Z"]


def sweep(limit: int = SWEEP_LIMIT) -> int:
    """Remove up to ``limit`` of this user's segments whose owner has exited; returns how
    many were removed."""
    own = f"{PREFIX}-{os.getuid()}-"
    removed = 0
    alive: dict[int, bool] = {}
    try:
        entries = os.scandir(SHM_DIR)
    except OSError:
        return 0
    with entries:
        examined = 0
        for entry in entries:
            name = entry.name
            if not name.startswith(own):
                continue
            match = _NAME.fullmatch(name)
            if match is None:
                continue
            examined += 1
            if examined > limit:
                break
            pid = int(match.group(2))
            if pid not in alive:
                alive[pid] = _pid_alive(pid)
            if not alive[pid]:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class SnapshotServer:
    """The owner side: one segment per content version of ``store``, made when asked.

    :meth:`offer` answers a joiner at most once per (joiner, content version) and replaces
    the cached segment when the content changed; :meth:`close` removes it.
    """

    #: (joiner, tables hash, values hash) triples remembered to refuse repeated requests
    MAX_REMEMBERED = 10_000

    def __init__(self, store: SyncStore) -> None:
        self._store = store
        self._segment: Offer | None = None  # (of the content it was made from)
        self._served: set[tuple[str, int, int]] = set()
        self.last_used = 0.0

    @property
    def segment_name(self) -> str | None:
        """The cached segment's name (None when there is none)."""
        return None if self._segment is None else self._segment.name

    def offer(self, asker: str, now: float) -> Offer | None:
        """An offer of the current content for ``asker``; None when ``asker`` already got
        this content version. Raises ``OSError`` (``/dev/shm`` full) or ``ValueError`` (too
        big)."""
        store = self._store
        with store.lock:
            tables_hash, values_hash = store.get_mergeable_content_hashes()
            key = (asker, tables_hash, values_hash)
            if key in self._served:
                return None
            cached = self._segment
            if cached is None or (cached.tables_hash, cached.values_hash) != key[1:]:
                payload = store.encode_mergeable_content(_encoder.encode)
                name, digest = create_segment(payload)
                self.close()
                cached = Offer(name, len(payload), digest, tables_hash, values_hash)
                self._segment = cached
        if len(self._served) >= self.MAX_REMEMBERED:
            self._served.clear()
        self._served.add(key)
        self.last_used = now
        return cached

    def after_offer(self) -> None:
        """Once the last :meth:`offer` was sent: register its segment with the resource
        tracker."""
        if self._segment is not None:
            track_segment(self._segment.name)

    def close(self) -> None:
        """Remove the cached segment (idempotent)."""
        cached, self._segment = self._segment, None
        if cached is not None:
            remove_segment(cached.name)
