"""Use synchronizers (and any coroutine) from plain, non-asyncio Python.

Why: most worker programs are ordinary blocking code. They should be able to write to a store
and have it synchronized without learning asyncio. Here a synchronizer lives on a private event
loop running in a background thread; the program keeps calling store methods on its own thread
(the store serialises transactions with ``store.lock``, and the synchronizer hands each
transaction's changes over to its loop thread; transactions that pile up while the loop is
busy are sent as one merged ContentDiff, so a fast writer thread costs peers few messages).

Typical use::

    from localsync import create_mergeable_store
    from localsync.sync.blocking import blocking
    from localsync.channel.synchronizer import create_channel_synchronizer

    store = create_mergeable_store()
    with blocking(create_channel_synchronizer, store, "orders") as sync:   # start_sync() done
        store.set_cell("t", "r", "c", 1)        # plain call; broadcast in the background
        sync.wait_until_idle(timeout=5)         # optional: no request in flight
    # leaving the block destroys the synchronizer and stops its thread

API:

``BlockingSynchronizer(factory, *args, loop=None, start=True, timeout=None, **kwargs)``
    Calls ``factory(*args, **kwargs)`` *on the loop thread* (transports may need a running
    loop; an awaitable result is awaited). Methods: ``start_sync(initial_content=None)``,
    ``stop_sync()``, ``destroy()``, ``load()``, ``save()``, ``start_auto_load()``,
    ``start_auto_save()``, ``stop_auto_load()``, ``stop_auto_save()``, ``get_status()``,
    ``get_synchronizer_stats()``, ``get_stats()``, ``wait_until_idle(timeout)``,
    ``call(fn, *args)`` (run ``fn`` on the loop thread) and ``close()``. Any other attribute
    of the wrapped synchronizer is reachable too: coroutine methods are run to completion,
    plain methods are called on the loop thread. Each blocking call takes ``timeout=`` (seconds,
    default ``None`` = the wrapper's ``timeout``) and raises ``TimeoutError`` when exceeded.
    As a context manager it calls ``start_sync()`` on entry (unless ``start=False``) and
    ``destroy()`` plus ``close()`` on exit. ``.synchronizer`` is the wrapped object.
    Persisters work too (``start=False``; then ``load()``, ``start_auto_save()``, or any of
    their own coroutines such as ``flush()``, are blocking calls).
``blocking(factory, *args, **kwargs)``
    The same as ``BlockingSynchronizer(...)``, reads well in a ``with`` statement.
``BackgroundLoop(name=...)``
    The thread+loop pair, reusable: ``run(coro, timeout)``, ``call(fn, *args)``, ``close()``.
    Several BlockingSynchronizers may share one by passing ``loop=``.
``run_coroutine(coro, timeout=None)``
    Run one coroutine on a shared process-wide background loop and return its result.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from localsync.sync.event_loop import new_event_loop

__all__ = ["BackgroundLoop", "BlockingSynchronizer", "blocking", "run_coroutine"]

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self, name: str = "localsync-loop") -> None:
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (``TimeoutError`` after timeout)."""
        if self._closed or self.in_loop_thread():
            if inspect.iscoroutine(coro):
                coro.close()  # it will never run: do not leave a "never awaited" warning
            if self._closed:
                raise RuntimeError("this BackgroundLoop is closed")
            raise RuntimeError("blocking call made from the loop thread itself: use await")

        async def wrapper() -> T:
            return await coro

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kw: Any) -> T:
        """Call a plain function on the loop thread and return its result."""
        if self.in_loop_thread():
            return fn(*args, **kw)

        async def invoke() -> T:
            return fn(*args, **kw)

        return self.run(invoke(), timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the loop (cancelling what still runs on it) and join the thread."""
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: BackgroundLoop | None = None
_shared_lock = threading.Lock()


def _shared_loop() -> BackgroundLoop:
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = BackgroundLoop("localsync-shared-loop")
            atexit.register(_shared.close)
        return _shared


def run_coroutine(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run a coroutine on a shared background loop from blocking code; return its result."""
    return _shared_loop().run(coro, timeout)


class BlockingSynchronizer:
    """A synchronizer running on a background loop, driven by blocking calls."""

    def __init__(
        self,
        factory: Callable[..., Any],
        *args: Any,
        loop: BackgroundLoop | None = None,
        start: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._owns_loop = loop is None
        self._bg = loop if loop is not None else BackgroundLoop()
        self._start_on_enter = start
        self.timeout = timeout

        async def make() -> Any:
            made = factory(*args, **kwargs)
            if inspect.isawaitable(made):
                made = await made
            return made

        try:
            self.synchronizer = self._bg.run(make(), timeout)
        except BaseException:
            if self._owns_loop:
                self._bg.close()
            raise

    @property
    def background_loop(self) -> BackgroundLoop:
        return self._bg

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _run(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return self._bg.run(getattr(self.synchronizer, name)(*args), self._t(timeout))

    # lifecycle
    def start_sync(self, initial_content: Any = None, *, timeout: float | None = None) -> Any:
        return self._run("start_sync", initial_content, timeout=timeout)

    def stop_sync(self, *, timeout: float | None = None) -> Any:
        return self._run("stop_sync", timeout=timeout)

    def destroy(self, *, timeout: float | None = None) -> Any:
        return self._run("destroy", timeout=timeout)

    def load(self, initial_content: Any = None, *, timeout: float | None = None) -> Any:
        return self._run("load", initial_content, timeout=timeout)

    def save(self, *, timeout: float | None = None) -> Any:
        return self._run("save", timeout=timeout)

    def start_auto_load(self, initial_content: Any = None, *, timeout: float | None = None) -> Any:
        return self._run("start_auto_load", initial_content, timeout=timeout)

    def start_auto_save(self, *, timeout: float | None = None) -> Any:
        return self._run("start_auto_save", timeout=timeout)

    def stop_auto_load(self, *, timeout: float | None = None) -> Any:
        return self._run("stop_auto_load", timeout=timeout)

    def stop_auto_save(self, *, timeout: float | None = None) -> Any:
        return self._run("stop_auto_save", timeout=timeout)

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """True once no request is in flight and the status is idle; False on time-out."""
        limit = self._t(timeout)
        return bool(
            self._bg.run(
                self.synchronizer.wait_until_idle(limit),
                None if limit is None else limit + 5.0,
            )
        )

    # plain queries, evaluated on the loop thread so they see a consistent state
    def get_status(self) -> int:
        return int(self._bg.call(self.synchronizer.get_status, timeout=self.timeout))

    def get_stats(self) -> dict[str, int]:
        return dict(self._bg.call(self.synchronizer.get_stats, timeout=self.timeout))

    def get_synchronizer_stats(self) -> dict[str, int]:
        return dict(self._bg.call(self.synchronizer.get_synchronizer_stats, timeout=self.timeout))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the synchronizer's loop thread."""
        return self._bg.call(fn, *args, timeout=self._t(timeout))

    def __getattr__(self, name: str) -> Any:
        if name == "synchronizer" or name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self.synchronizer, name)
        if not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):

            def run_async(*args: Any, timeout: float | None = None, **kw: Any) -> Any:
                return self._bg.run(attr(*args, **kw), self._t(timeout))

            return run_async

        def run_sync(*args: Any, timeout: float | None = None, **kw: Any) -> Any:
            return self._bg.call(attr, *args, timeout=self._t(timeout), **kw)

        return run_sync

    def close(self) -> None:
        """Destroy the synchronizer (if not yet) and stop the loop thread if we own it."""
        try:
            if not getattr(self.synchronizer, "_destroyed", False):
                self.destroy()
        finally:
            if self._owns_loop:
                self._bg.close()

    def __enter__(self) -> BlockingSynchronizer:
        if self._start_on_enter:
            try:
                self.start_sync()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def blocking(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> BlockingSynchronizer:
    """``with blocking(create_x_synchronizer, store, ...) as sync:`` - see the module docs."""
    return BlockingSynchronizer(factory, *args, **kwargs)
