"""WebSocket synchronizer that speaks TinyBase 10's legacy wire format.

Why: a Python process must be able to sync with TinyBase apps through TinyBase's own
``createWsServer`` (or through ``localsync serve``), so framing, fragmentation, validation and
close codes are TinyBase's (see :mod:`localsync.ws.wire`). Everything protocol-related is in the
engine; this file only moves text frames.

Usage::

    sync = create_ws_synchronizer(store, "ws://127.0.0.1:8048/room1")
    await sync.start_sync()          # connects first (bounded by open_timeout)
    ...
    await sync.destroy()

``await create_ws_synchronizer(...)`` also works and, like TinyBase's, returns once the
socket is open. If it cannot open within ``open_timeout`` (attempts are retried until then,
each failure reported to ``on_ignored_error``), it raises ``ConnectionError`` naming the URL
and the last cause (``could not open ws://127.0.0.1:1/x: [Errno 111] Connection refused``,
chained from it). A URL that is not a ``ws://``/``wss://`` URL raises ``ValueError`` at once,
from ``create_ws_synchronizer`` itself: no attempt could ever succeed.
From code that does not use asyncio::

    from localsync.sync.blocking import blocking

    with blocking(create_ws_synchronizer, store, "ws://127.0.0.1:8048/room1"):
        store.set_cell("t", "r", "c", 1)      # synchronized from a background loop thread

Beyond TinyBase, for long-running processes:

* **Reconnection**: when the connection drops (or cannot be made), it is retried with
  exponential back-off and full jitter between ``min_backoff`` and ``max_backoff`` seconds.
  An HTTP 4xx refusal (bad path, bad token) is final and reported, not retried.
* **Resync**: after every reconnect the synchronizer pulls from its peers and announces its
  content hashes again, so whatever changed on either side while apart is exchanged. A pull
  that fails (its requests time out) is tried again with back-off, up to
  ``RESYNC_ATTEMPTS`` pulls (counted in ``resync_retries``), as is ``start_sync``'s first
  pull, by a client that has heard from a peer.
  Messages sent while disconnected are dropped and counted (the resync covers them).
* **Bounds**: outgoing frames wait in a queue of at most ``max_queue_bytes``; frames over 16
  MiB or a full queue close the socket with 1013 ``tinybase:15:socket`` (then reconnect and
  resync). Invalid incoming frames are reported through ``on_ignored_error`` and close the
  socket with TinyBase's code (1007/1013), after which it reconnects.

Passing an already open ``websockets`` client connection instead of a URL uses it as is (no
reconnection, as TinyBase does with the WebSocket it is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Generator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from localsync.core.protocols import SyncStore
from localsync.sync.synchronizer import Synchronizer
from localsync.sync.transport import ReceiveFn, SendFn
from localsync.ws.frame_queue import FrameQueue
from localsync.ws.wire import (
    ERROR_MESSAGE,
    MAX_PAYLOAD_SIZE,
    PayloadDecoder,
    WireError,
    encode_payloads,
    overflow_error,
    payload_size,
)

__all__ = ["RESYNC_ATTEMPTS", "WsSynchronizer", "WsTransport", "create_ws_synchronizer"]

logger = logging.getLogger("localsync.ws")

_MAX_FRAME = MAX_PAYLOAD_SIZE + 64 * 1024  # larger frames: 1009 from websockets itself
_MAX_QUEUE = 4
#: pulls a resync after a reconnect makes at most (the first and its retries)
RESYNC_ATTEMPTS = 5


def describe_connect_error(error: BaseException | None, open_timeout: float) -> str:
    """The cause of a failed WebSocket open, as one short phrase for an error message.

    ``[Errno 111] Connection refused`` for an OS error (asyncio's own text, "Connect call
    failed ('127.0.0.1', 1)", hides the reason), the server's refusal for an HTTP status,
    ``no connection within N s`` when no attempt finished in time.
    """
    if error is None:
        return f"no connection within {open_timeout:g} s"
    if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
        return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    if isinstance(error, TimeoutError) and not str(error):
        return f"timed out after {open_timeout:g} s"
    return str(error) or repr(error)


class WsTransport:
    """The Transport of a WebSocket synchronizer: one logical connection to a URL (the socket
    of the moment, its queue and its decoder)."""

    def __init__(
        self,
        target: str | ClientConnection,
        *,
        request_timeout_seconds: float,
        fragment_size: int | None,
        reconnect: bool,
        min_backoff: float,
        max_backoff: float,
        open_timeout: float,
        max_queue_bytes: int,
        headers: dict[str, str] | None,
    ) -> None:
        self.url = target if isinstance(target, str) else None
        self.given = None if isinstance(target, str) else target
        self.timeout = request_timeout_seconds
        self.fragment_size = fragment_size
        self.reconnect = reconnect and self.url is not None
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self.headers = headers
        self.ws: ClientConnection | None = None
        self.queue = FrameQueue(max_queue_bytes)
        self.opened = asyncio.Event()
        self.receive: ReceiveFn | None = None
        self.report: Callable[[BaseException], None] = lambda _e: None
        self.on_open: Callable[[int], None] = lambda _g: None
        self.task: asyncio.Task[None] | None = None
        # an error after which no attempt is made any more (e.g. HTTP 401), and the latest
        # failed attempt's error (for the message when opening times out)
        self.failure: BaseException | None = None
        self.last_error: BaseException | None = None
        # how many awaits of the synchronizer are waiting for the first open: while one is,
        # a failed attempt without on_ignored_error is logged at DEBUG only (the await
        # raises its cause if no attempt succeeds, so a warning per retry is noise)
        self.awaiting_open = 0
        self.report_attempt: Callable[[BaseException], None] = lambda _e: None
        self.destroyed = False
        self.generation = 0
        self.stats = {
            "connects": 0,
            "disconnects": 0,
            "dropped_sends": 0,
            "invalid_frames": 0,
            "overflows": 0,
        }

    # ----------------------------------------------------------------------- sending

    def send(self, to: str | None, request_id: str | None, message: int, body: Any) -> None:
        ws = self.ws
        if ws is None:
            self.stats["dropped_sends"] += 1
            return
        for payload in encode_payloads(to, request_id, message, body, self.fragment_size):
            if not self.queue.put(payload, payload_size(payload)):
                self._overflow(ws)
                return

    def _overflow(self, ws: ClientConnection) -> None:
        self.stats["overflows"] += 1
        error = overflow_error("socket")
        self.report(error)
        self._drop_socket()
        self._spawn_close(ws, error.code, error.reason)

    def _drop_socket(self) -> None:
        self.ws = None
        self.opened.clear()
        self.queue.clear()

    def _spawn_close(self, ws: ClientConnection, code: int, reason: str) -> None:
        task = asyncio.ensure_future(ws.close(code, reason))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _write(self, ws: ClientConnection) -> None:
        await self.queue.drain(ws, lambda: self.ws is ws)

    def register_receive(self, receive: ReceiveFn) -> None:
        self.receive = receive

    def cancel(self) -> None:
        return None  # (frames already queued go out until the socket closes)

    # --------------------------------------------------------------------- connection

    def start(self) -> None:
        if self.task is None and not self.destroyed:
            self.task = asyncio.ensure_future(self._run())

    async def wait_open(self, timeout: float | None) -> bool:
        self.start()
        if self.ws is not None:
            return True
        waiter = asyncio.ensure_future(self.opened.wait())
        await asyncio.wait(
            [waiter, *([self.task] if self.task is not None else [])],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiter.cancel()
        return self.ws is not None

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff, self.min_backoff * (2**attempt))
        return random.uniform(self.min_backoff / 2, max(ceiling, self.min_backoff / 2))

    async def _open(self) -> ClientConnection:
        if self.given is not None:
            return self.given
        assert self.url is not None
        return await connect(
            self.url,
            compression=None,
            max_size=_MAX_FRAME,
            max_queue=_MAX_QUEUE,
            open_timeout=self.open_timeout,
            additional_headers=self.headers,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )

    async def _run(self) -> None:
        attempt = 0
        while not self.destroyed:
            try:
                ws = await self._open()
            except InvalidStatus as error:
                self.last_error = error
                self.report_attempt(error)
                if 400 <= error.response.status_code < 500 or not self.reconnect:
                    self.failure = error
                    return
            except (OSError, InvalidHandshake, TimeoutError) as error:
                self.last_error = error
                self.report_attempt(error)
                if not self.reconnect:
                    self.failure = error
                    return
            except Exception as error:
                # not a connection problem (an invalid URI, a bad option): retrying cannot
                # help; kept as the failure so that no task ends with an unretrieved error
                self.last_error = self.failure = error
                self.report_attempt(error)
                return
            else:
                attempt = 0
                await self._serve(ws)
                if not self.reconnect:
                    return
            if self.destroyed:
                return
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _serve(self, ws: ClientConnection) -> None:
        decoder = PayloadDecoder(self.timeout)
        self.ws = ws
        self.generation += 1
        self.stats["connects"] += 1
        writer = asyncio.ensure_future(self._write(ws))
        self.opened.set()
        logger.debug("connected to %s", self.url)
        try:
            self.on_open(self.generation)
        except Exception as error:
            self.report(error)
        try:
            async for data in ws:
                if self.ws is not ws:
                    break
                text = data if isinstance(data, str) else data.decode("utf-8", "replace")
                try:
                    messages = decoder.feed(text)
                except Exception as caught:  # (a check may raise: OverflowError for a huge int)
                    invalid = caught if isinstance(caught, WireError) else WireError(ERROR_MESSAGE)
                    self.stats["invalid_frames"] += 1
                    self.report(invalid)
                    await ws.close(invalid.code, invalid.reason)
                    break
                receive = self.receive
                if receive is None:
                    continue
                for message in messages:
                    try:
                        receive(
                            message.client_id, message.request_id, message.message, message.body
                        )
                    except Exception as error:
                        self.report(error)
        except ConnectionClosed:
            pass
        finally:
            if self.ws is ws:
                self._drop_socket()
            self.stats["disconnects"] += 1
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            with contextlib.suppress(Exception):
                await ws.close()
            logger.debug("disconnected from %s", self.url)

    async def destroy(self) -> None:
        self.destroyed = True
        ws = self.ws
        self._drop_socket()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class WsSynchronizer(Synchronizer):
    """A Synchronizer over one WebSocket (with reconnection when given a URL)."""

    _transport: WsTransport
    _sync_wanted: bool = False
    #: pulls tried again after one failed, at start_sync or after a reconnect (``_resync``)
    resync_retries: int = 0

    def get_web_socket(self) -> ClientConnection | None:
        """The socket of the moment (None while disconnected)."""
        return self._transport.ws

    def is_connected(self) -> bool:
        return self._transport.ws is not None

    def get_connection_stats(self) -> dict[str, int]:
        """Connects, disconnects, sends dropped while disconnected, invalid frames, overflows."""
        return dict(self._transport.stats)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Start connecting if needed; True once a socket is open, False on time-out/failure."""
        self._bind_loop()
        return await self._transport.wait_open(timeout)

    async def start_sync(self, initial_content: Any = None) -> WsSynchronizer:
        """Connect (waiting at most ``open_timeout``), then TinyBase's ``startSync``.

        If the server cannot be reached yet, syncing starts anyway and the first successful
        connection triggers a full resync.
        """
        transport = self._transport
        await self.wait_connected(transport.open_timeout)
        self._synced_generation = generation = transport.generation
        self._sync_wanted = True
        await super().start_sync(initial_content)
        if self._last_pull_failed and transport.ws is not None:
            # (as after a reconnect: tried again if a peer turns out to be there)
            self._spawn(self._resync(generation, 1))
        return self

    async def stop_sync(self) -> WsSynchronizer:
        self._sync_wanted = False
        await super().stop_sync()
        return self

    def _on_open(self, generation: int) -> None:
        if self._sync_wanted and generation != getattr(self, "_synced_generation", 0):
            self._synced_generation = generation
            self._spawn(self._resync(generation))

    async def _resync(self, generation: int, done: int = 0) -> None:
        """Pull what peers have, then offer our hashes; a pull that failed is tried again.

        Why again: a reconnect may hide anything, and a WebSocket client has no periodic
        anti-entropy by default, so one pull that timed out (a peer slower than the request
        time-out, as on a loaded machine) left the store behind until the next reconnect.
        At most ``RESYNC_ATTEMPTS`` pulls (``done`` of them made already), with the
        connection's back-off between them; it stops once the socket changes (that
        connection's own resync takes over) or syncing stops. Only a client that has heard
        from a peer (by the end of the pause) tries again: alone in a room every pull fails
        for want of an answer, and the next peer to join pulls from us and announces its
        hashes, which makes us pull from it.
        """
        transport = self._transport
        for attempt in range(done, RESYNC_ATTEMPTS):
            if attempt:
                await asyncio.sleep(transport._backoff(attempt - 1))
                if (
                    not self._sync_wanted
                    or self._destroyed
                    or transport.generation != generation
                    or transport.ws is None
                    or not self._engine.receives  # (asked after the pause: answers come late)
                ):
                    return
                self.resync_retries += 1
            try:
                await self.load()
                if self._sync_wanted:
                    await self.save()
            except Exception as error:
                self._report(error)
            if not self._last_pull_failed:
                return

    def __await__(self) -> Generator[Any, None, WsSynchronizer]:
        return self._await_open().__await__()

    async def _await_open(self) -> WsSynchronizer:
        """Wait for the socket (``open_timeout``); ``ConnectionError`` from the cause if not."""
        transport = self._transport
        transport.awaiting_open += 1
        try:
            opened = await self.wait_connected(transport.open_timeout)
        finally:
            transport.awaiting_open -= 1
        if not opened:
            cause = transport.failure or transport.last_error
            await self.destroy()
            raise ConnectionError(
                f"could not open {transport.url}: "
                f"{describe_connect_error(cause, transport.open_timeout)}"
            ) from cause
        return self

    def _report_attempt(self, error: BaseException) -> None:
        """Report a failed connection attempt (``on_ignored_error`` hears every one)."""
        if self._on_ignored_error is None and self._transport.awaiting_open:
            logger.debug("could not open %s (trying again): %r", self._transport.url, error)
            return
        self._report(error)


def create_ws_synchronizer(
    store: SyncStore,
    url_or_connection: str | ClientConnection,
    request_timeout_seconds: float = 1.0,
    on_send: SendFn | None = None,
    on_receive: ReceiveFn | None = None,
    on_ignored_error: Callable[[BaseException], None] | None = None,
    *,
    fragment_size: int | None = None,
    reconnect: bool = True,
    min_backoff: float = 0.1,
    max_backoff: float = 10.0,
    open_timeout: float = 10.0,
    max_queue_bytes: int = MAX_PAYLOAD_SIZE,
    headers: dict[str, str] | None = None,
    anti_entropy_seconds: float | None = None,
) -> WsSynchronizer:
    """A synchronizer for ``store`` through a TinyBase-compatible WebSocket server.

    ``url_or_connection``: ``ws://host:port/<pathId>`` (the path is the room) or an open
    ``websockets.asyncio.client.ClientConnection``. ``fragment_size`` (bytes) splits larger
    messages into fragments, as TinyBase's option does. ``headers`` are sent with the upgrade
    (e.g. ``{"Authorization": "Bearer <token>"}``). See the module docstring for the rest.
    Create it on (or await it from) the event loop that will run it.

    Raises ``ValueError`` (from websockets' ``InvalidURI`` or the URL parser's error) when
    ``url_or_connection`` is a string that is not a valid ``ws://``/``wss://`` URL.
    """
    if isinstance(url_or_connection, str):
        try:
            parse_uri(url_or_connection)
        except InvalidURI as error:
            raise ValueError(f"invalid WebSocket URL {url_or_connection!r}: {error.msg}") from error
        except ValueError as error:
            raise ValueError(f"invalid WebSocket URL {url_or_connection!r}: {error}") from error
    transport = WsTransport(
        url_or_connection,
        request_timeout_seconds=request_timeout_seconds,
        fragment_size=fragment_size,
        reconnect=reconnect,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        open_timeout=open_timeout,
        max_queue_bytes=max_queue_bytes,
        headers=headers,
    )

    synchronizer = WsSynchronizer(
        store,
        transport,
        request_timeout_seconds,
        on_send,
        on_receive,
        on_ignored_error,
        anti_entropy_seconds=anti_entropy_seconds,
    )
    transport.report = synchronizer._report
    transport.report_attempt = synchronizer._report_attempt
    transport.on_open = synchronizer._on_open
    return synchronizer
