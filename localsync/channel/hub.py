"""The hub of a channel: an XSUB/XPUB proxy, elected among participants or run standalone.

Local channels: every participant runs a :class:`LocalHub` thread that competes for
``fcntl.flock`` on the channel's lock file every ``retry_seconds`` (50 ms by default). The
holder binds XSUB at ``<hash>.in`` and XPUB at ``<hash>.out`` and runs
``zmq.proxy_steerable``; every participant, the host included, connects one PUB to ``.in``
and one SUB to ``.out``. The kernel drops a flock when its holder dies, so a successor takes
over within about one retry period. Socket files are only ever unlinked by the lock holder.

A frozen host (SIGSTOP, swapped out) keeps its lock, so participants send themselves a
heartbeat through the hub every :data:`HUB_HEARTBEAT_SECONDS`; one that hears nothing from
the hub for :data:`HUB_TIMEOUT_SECONDS` declares the hub's *generation* dead and moves to
generation N+1 (its own lock and socket files, ``<hash>.gN.*``; ``<hash>.gen`` records the
newest, see :mod:`localsync.channel.runtime`). Everyone follows the newest generation,
including the old host once it runs again. At most
:data:`localsync.channel.runtime.MAX_GENERATION` failovers per channel.

Beyond one machine: ``localsync hub --bind tcp://HOST:PORT`` (:class:`TcpHub`) runs the same
proxy with XSUB bound on ``PORT`` (publishers connect) and XPUB on ``PORT + 1`` (subscribers
connect); open a channel with ``create_channel_synchronizer(store, name,
hub="tcp://HOST:PORT")``. Plain TCP gives no access control: bind it to loopback or a
private network only. With CURVE keys a hub can face a wider network::

    localsync hub --keygen keys/ --name hub          # keys/hub.key (public), hub.key_secret
    localsync hub --keygen keys/ --name worker1      # one pair per machine that may join
    localsync hub --bind tcp://0.0.0.0:7700 --secret-key keys/hub.key_secret --allow keys/

    create_channel_synchronizer(store, "orders", hub="tcp://10.0.0.5:7700",
                                hub_key="keys/hub.key", client_key="keys/worker1.key_secret")

Participants must name the hub's public key (a ``.key`` file or its 40-character Z85 text).
``--allow DIR`` admits only clients whose public ``.key`` files are in DIR; without it any
client that knows the hub's key may join. A client without keys, or with the wrong ones,
fails its ``start_sync`` with ``ChannelError``. A tcp participant cannot elect another hub;
it reports whether its hub answers (``hub_answering``).

A fork()ed child of a host closes its inherited copy of the lock file
(:func:`localsync.channel.presence.close_in_forked_children`)
so that the lock is released as soon as the host itself dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.auth
import zmq.utils.z85

from localsync.channel.presence import close_in_forked_children
from localsync.channel.runtime import ChannelPaths

__all__ = [
    "DEFAULT_HWM",
    "HUB_BYTES_PER_QUEUED_MESSAGE",
    "HUB_HEARTBEAT_SECONDS",
    "HUB_QUEUE_BYTES",
    "HUB_SUBSCRIBER_HWM",
    "HUB_TIMEOUT_SECONDS",
    "LocalHub",
    "TcpHub",
    "generate_keys",
    "load_public_key",
    "load_secret_key",
    "tcp_endpoints",
]

#: High-water mark (messages) of hub and participant sockets. PUB/SUB drops, never blocks,
#: at the mark; drops are healed by anti-entropy, so the mark trades memory for latency.
#: The hub's queue towards each subscriber is bounded further, by bytes (below).
DEFAULT_HWM = 100_000

#: Memory the hub host may spend on the queue of one stalled subscriber (a SIGSTOPped or
#: swapped-out participant whose I/O thread reads nothing): beyond it, messages for that
#: subscriber are dropped, and anti-entropy repairs them once it runs again.
HUB_QUEUE_BYTES = 64 * 2**20
#: Worst-case memory one queued message keeps alive in the hub: the 18 KiB receive buffer
#: of libzmq's decoder that it shares (docs/performance.md, "The hub's memory per queued message").
HUB_BYTES_PER_QUEUED_MESSAGE = 18 * 1024
#: The hub's high-water mark (messages) towards each subscriber: HUB_QUEUE_BYTES divided by
#: the worst-case cost per message (3,640). A live participant's own SUB socket still takes
#: up to ``hwm`` messages (DEFAULT_HWM) into its own process, so a reader that is merely
#: busy, not stopped, does not lose messages to this smaller mark (it pays for them itself,
#: at the same worst-case cost per message: lower ``hwm`` to bound that); kernel socket buffers
#: (about 200 KiB per connection by default) are not counted in any process's memory.
HUB_SUBSCRIBER_HWM = HUB_QUEUE_BYTES // HUB_BYTES_PER_QUEUED_MESSAGE

#: Period of each participant's heartbeat through the hub (one tiny message to itself, and
#: a read of the generation file; see the module doc).
HUB_HEARTBEAT_SECONDS = 0.5
#: A participant that hears nothing from its hub for this long (counted in heartbeat turns
#: of its event loop, so a busy loop does not count as a dead hub) elects a new generation.
HUB_TIMEOUT_SECONDS = 3.0

_ids = itertools.count()


#: Length of a CURVE key written as Z85 text.
Z85_KEY_LENGTH = 40


def generate_keys(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair: ``folder/name.key`` (public) and ``name.key_secret`` (0600)."""
    target = Path(folder)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(target), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_public_key(key: str | os.PathLike[str]) -> bytes:
    """A public key given as its 40-character Z85 text or as a certificate file."""
    if isinstance(key, str) and len(key) == Z85_KEY_LENGTH and not os.path.exists(key):
        try:
            zmq.utils.z85.decode(key)
        except (ValueError, KeyError, IndexError, struct.error) as error:
            raise ValueError(f"not a Z85 key: {key!r}") from error
        return key.encode("ascii")
    public, _secret = _load_certificate(key)
    return public


def load_secret_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate file."""
    public, secret = _load_certificate(path)
    if secret is None:
        raise ValueError(f"{os.fspath(path)} holds no secret key (give the .key_secret file)")
    return public, secret


def _load_certificate(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read a CURVE key from {os.fspath(path)}: {error}") from error
    if public is None:
        raise ValueError(f"{os.fspath(path)} holds no public key")
    return public, secret


def tcp_endpoints(address: str) -> tuple[str, str]:
    """Map ``tcp://HOST:PORT`` to (publishers' endpoint, subscribers' endpoint) = PORT, PORT+1."""
    if not isinstance(address, str):
        raise TypeError(f"hub address must be a str, not {type(address).__name__}")
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"hub address must look like tcp://HOST:PORT, got {address!r}")
    if not 0 < parts.port < 65535:
        raise ValueError(f"hub port must be in 1..65534 (PORT+1 is used too), got {parts.port}")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"tcp://{host}:{parts.port}", f"tcp://{host}:{parts.port + 1}"


class _Proxy:
    """One XSUB/XPUB proxy that can be stopped from another thread."""

    def __init__(
        self,
        context: zmq.Context,
        inbound: str,
        outbound: str,
        hwm: int,
        curve: tuple[bytes, bytes] | None = None,
        subscriber_hwm: int = HUB_SUBSCRIBER_HWM,
    ) -> None:
        self._context = context
        self._inbound = inbound
        self._outbound = outbound
        self._hwm = hwm
        # the smaller of the two marks (0 means none, ZeroMQ's convention)
        marks = [mark for mark in (hwm, subscriber_hwm) if mark > 0]
        self._outbound_hwm = min(marks) if marks else 0
        self._curve = curve  # (public, secret): the sockets act as CURVE servers
        self._control = f"inproc://localsync-hub-{os.getpid()}-{next(_ids)}"
        self._state = threading.Lock()
        self._running = False
        self._stopped = False
        self._done = threading.Event()

    def run(self, after_bind: Callable[[], None] | None = None) -> None:
        """Bind and proxy until :meth:`stop`; the caller's thread is used for the proxy."""
        xsub = self._context.socket(zmq.XSUB)
        xpub = self._context.socket(zmq.XPUB)
        control = self._context.socket(zmq.PAIR)
        try:
            for sock in (xsub, xpub, control):
                sock.linger = 0
            # the mark limits data only: subscriptions travel the other way (XPUB -> XSUB)
            # and a dropped subscription would silence a participant for good. XSUB sends
            # every subscription it holds to a publisher that connects, in one burst: each
            # participant holds 1,009 (localsync.channel.transport), more than ZeroMQ's
            # default mark of 1,000, past which the rest of the burst would be dropped.
            xsub.rcvhwm = self._hwm
            xsub.sndhwm = 0
            xpub.sndhwm = self._outbound_hwm  # (bounds memory per stalled subscriber)
            if self._curve is not None:
                for sock in (xsub, xpub):
                    sock.curve_publickey, sock.curve_secretkey = self._curve
                    sock.curve_server = True
            xsub.bind(self._inbound)
            xpub.bind(self._outbound)
            control.bind(self._control)
            if after_bind is not None:
                after_bind()
            with self._state:
                if self._stopped:
                    return
                self._running = True
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            # (LocalHub removes the ipc files while it still holds the lock)
            xsub.close(0)
            xpub.close(0)
            control.close(0)
            self._done.set()

    def stop(self, timeout: float = 5.0) -> None:
        with self._state:
            self._stopped = True
            if not self._running:
                return
            self._running = False
        control = self._context.socket(zmq.PAIR)
        control.linger = 0
        try:
            control.connect(self._control)
            control.send(b"TERMINATE")
            # keep our end open until the proxy has read the command: a PAIR drops unread
            # messages when its peer disconnects
            self._done.wait(timeout)
        finally:
            control.close()


class LocalHub:
    """Competes for a local channel's hub role in a background thread (see module doc).

    ``paths`` are the channel's (generation 0) paths; the hub competes for the generation
    given (default: the newest recorded one) and moves on when :meth:`follow` names a newer
    one. ``retry_seconds`` is the period of lock attempts while another process hosts.
    """

    def __init__(
        self,
        paths: ChannelPaths,
        *,
        hwm: int = DEFAULT_HWM,
        retry_seconds: float = 0.05,
        context: zmq.Context | None = None,
        generation: int | None = None,
        subscriber_hwm: int = HUB_SUBSCRIBER_HWM,
    ) -> None:
        self.paths = paths.at_generation(0)
        self._hwm = hwm
        self._subscriber_hwm = subscriber_hwm
        self._retry = retry_seconds
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._hosting = threading.Event()
        self._state = threading.Lock()
        self._generation = paths.read_generation() if generation is None else generation
        self._proxy: tuple[int, _Proxy] | None = None  # (generation, proxy) being hosted
        self._fd: int | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"localsync-hub-{paths.lock.stem}", daemon=True
        )
        self.times_hosted = 0

    @property
    def is_host(self) -> bool:
        """True while this process holds the current generation's lock and runs the proxy."""
        return self._hosting.is_set()

    @property
    def generation(self) -> int:
        """The hub generation this hub competes for (or hosts)."""
        return self._generation

    def start(self) -> LocalHub:
        close_in_forked_children(self)
        self._thread.start()
        return self

    def wait_host(self, timeout: float | None = None) -> bool:
        return self._hosting.wait(timeout)

    def follow(self, generation: int) -> None:
        """Compete for ``generation`` from now on if it is newer than the current one.

        A proxy this process runs for an older generation is stopped and its lock released
        (a host that was frozen while the others elected a successor steps down this way).
        Raises ``ValueError`` for a generation beyond
        :data:`localsync.channel.runtime.MAX_GENERATION`.
        """
        self.paths.at_generation(generation)  # (validates)
        with self._state:
            if generation <= self._generation:
                return
            self._generation = generation
            current = self._proxy
        if current is not None and current[0] < generation:
            current[1].stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop competing; if hosting, stop the proxy and release the lock (a peer takes over)."""
        self._stop.set()
        with self._state:
            current = self._proxy
        if current is not None:
            current[1].stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _forget_in_child(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            generation = self._generation
            paths = self.paths.at_generation(generation)
            fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd = fd
            try:
                os.fchmod(fd, 0o600)
                while not self._stop.is_set() and self._generation == generation:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        self._stop.wait(self._retry)
                        continue
                    try:
                        self._host(paths)
                    finally:
                        self._hosting.clear()
                        with self._state:
                            self._proxy = None
                        # still holding the lock: these are ours (libzmq leaves them behind)
                        for path in (paths.inbound, paths.outbound):
                            with contextlib.suppress(OSError):
                                path.unlink(missing_ok=True)
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    if self._generation == generation:
                        return  # stopped, or the proxy ended (context terminated)
            finally:
                self._fd = None
                os.close(fd)

    def _host(self, paths: ChannelPaths) -> None:
        # we hold the lock: any socket file here belongs to a dead (or stale) hub
        for path in (paths.inbound, paths.outbound):
            path.unlink(missing_ok=True)

        def after_bind() -> None:
            os.chmod(paths.inbound, 0o600)
            os.chmod(paths.outbound, 0o600)
            if paths.generation > 0:
                paths.publish_generation(paths.generation)
                self._remove_older_generations(paths.generation)
            self.times_hosted += 1
            self._hosting.set()

        proxy = _Proxy(
            self._context,
            paths.inbound_endpoint,
            paths.outbound_endpoint,
            self._hwm,
            subscriber_hwm=self._subscriber_hwm,
        )
        with self._state:
            if self._stop.is_set() or self._generation != paths.generation:
                return
            self._proxy = (paths.generation, proxy)
        proxy.run(after_bind)

    def _remove_older_generations(self, generation: int) -> None:
        """Remove the files of older generations (> 0) that nobody hosts any more.

        A file is removed only while its lock is held by us, as for a stale socket file; a
        process that has not yet heard of the newer generation may still lock a removed
        lock file and host that stale generation until it hears (harmless: nobody follows
        an older generation).
        """
        stem = self.paths.peers.stem
        for lock in self.paths.folder.glob(f"{stem}.g*.lock"):
            try:
                older = int(lock.name[len(stem) + 2 : -len(".lock")])
            except ValueError:
                continue
            if not 0 < older < generation:
                continue
            stale = self.paths.at_generation(older)
            try:
                fd = os.open(stale.lock, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for path in (stale.inbound, stale.outbound, stale.lock):
                    path.unlink(missing_ok=True)
            except OSError:
                pass  # held: its host is frozen or has not stepped down yet
            finally:
                os.close(fd)


class TcpHub:
    """A standalone hub on ``tcp://HOST:PORT`` (XSUB) and ``PORT+1`` (XPUB), in a thread.

    ``secret_key`` (a ``.key_secret`` file) makes it a CURVE server; ``allow`` (a folder of
    public ``.key`` files) then admits only those clients (see the module doc).
    """

    def __init__(
        self,
        bind: str,
        *,
        hwm: int = DEFAULT_HWM,
        context: zmq.Context | None = None,
        secret_key: str | os.PathLike[str] | None = None,
        allow: str | os.PathLike[str] | None = None,
        subscriber_hwm: int = HUB_SUBSCRIBER_HWM,
    ) -> None:
        self.inbound, self.outbound = tcp_endpoints(bind)
        if allow is not None and secret_key is None:
            raise ValueError("allow= needs secret_key=: client keys are checked by CURVE")
        if allow is not None and not os.path.isdir(allow):
            raise ValueError(f"allow= must be a folder of public .key files: {os.fspath(allow)}")
        curve = load_secret_key(secret_key) if secret_key is not None else None
        self.public_key = curve[0].decode("ascii") if curve is not None else None
        # a hub with keys gets a context of its own: an authenticator serves a whole context
        self._own_context = context is None and curve is not None
        ctx = context or (zmq.Context() if curve is not None else zmq.Context.instance())
        self._context = ctx
        self._allow = os.fspath(allow) if allow is not None else None
        self._auth: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._proxy = _Proxy(ctx, self.inbound, self.outbound, hwm, curve, subscriber_hwm)
        self._thread = threading.Thread(target=self._run, name="localsync-tcp-hub", daemon=True)

    def _run(self) -> None:
        try:
            self._proxy.run(self._ready.set)
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()

    def start(self, timeout: float = 5.0) -> TcpHub:
        if self._allow is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self._allow)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("hub did not bind in time")
        if self._error is not None:
            self.stop()  # (the authenticator and our own context must not outlive a failure)
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._proxy.stop()
        self._thread.join(timeout)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._own_context = False
            self._context.term()

    def __enter__(self) -> TcpHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
