"""The Persister base: TinyBase's ``createCustomPersister`` lifecycle, as asyncio coroutines.

Files, databases *and* synchronizers share it (as in TinyBase, a synchronizer "loads" from peers
and "saves" to them), so status, statistics, scheduling and echo suppression are the same
everywhere. Build a persister with :func:`create_custom_persister` or subclass
:class:`Persister` and override the hooks (plain or coroutine functions):

``get_persisted() -> content | changes | None``
    What is persisted; ``None`` means nothing yet (``initial_content`` is used). For a
    MergeableStore, the *encoded* mergeable content or changes (a list whose third item is
    ``1``); anything else that is not a list is reported as ``tinybase:1``.
``set_persisted(get_content, changes=None)``
    Write: ``get_content()`` gives the whole encoded content; ``changes`` are the encoded
    transaction changes under auto-save, else ``None`` (a full save).
``add_persister_listener(listener) -> handle`` / ``del_persister_listener(handle)``
    Watch the storage: ``listener(content=None, changes=None)`` (from any thread) applies
    what it is given, or loads when given neither.

Errors never escape ``load``/``save``/auto-persisting: they go to ``on_ignored_error`` (or the
``localsync.sync.persister`` logger). Status (0 idle, 1 loading, 2 saving) is announced to
``add_status_listener`` listeners. A persister belongs to the event loop it is first used on;
transactions may run on other threads. Design: docs/design.md, "The sync engine".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from enum import IntEnum
from typing import Any, Final

from mypy_extensions import mypyc_attr

from localsync.core.collector import tune_collector
from localsync.core.protocols import MergeableStoreLike, PersistableStore, is_mergeable_store
from localsync.errors import TinyBaseError
from localsync.sync.awaiting import await_then, failure_of, maybe_await

__all__ = [
    "Persister",
    "Persists",
    "Status",
    "TinyBaseError",
    "create_custom_persister",
    "maybe_await",
]

logger = logging.getLogger("localsync.sync.persister")

ERROR_STORE_TYPE: Final = 0
ERROR_CONTENT: Final = 1

StatusListener = Callable[["Persister", int], None]
IgnoredErrorHandler = Callable[[BaseException], None]


class Status(IntEnum):
    """TinyBase's ``Status`` enum."""

    IDLE = 0
    LOADING = 1
    SAVING = 2


#: the members as globals for the per-transaction paths (an enum class lookup costs ~10x)
STATUS_IDLE: Final = Status.IDLE
STATUS_LOADING: Final = Status.LOADING
STATUS_SAVING: Final = Status.SAVING


class Persists(IntEnum):
    """TinyBase's ``Persists`` enum: which kind of store a persister accepts."""

    STORE_ONLY = 1
    MERGEABLE_STORE_ONLY = 2
    STORE_OR_MERGEABLE_STORE = 3


class _Schedule:
    """Actions of all persisters sharing one schedule id run one at a time, in order."""

    __slots__ = ("actions", "refs", "running")

    def __init__(self) -> None:
        self.actions: deque[_ScheduledAction] = deque()
        self.running = False
        self.refs = 0


class _ScheduledAction:
    __slots__ = ("complete", "owner", "run")

    def __init__(
        self,
        run: Callable[[], Awaitable[None]],
        complete: Callable[[], None] | None,
        owner: object,
    ) -> None:
        self.run = run
        self.complete = complete
        self.owner = owner


_schedules: Final[dict[Hashable, _Schedule]] = {}


def _has_changes(changes: Any, mergeable: bool = True) -> bool:
    """TinyBase's hasChanges: mergeable changes hold stamps, plain changes hold dicts."""
    try:
        if mergeable:
            return bool(changes[0][0]) or bool(changes[1][0])
        return bool(changes[0]) or bool(changes[1])
    except (TypeError, IndexError, KeyError):
        return False


@mypyc_attr(allow_interpreted_subclasses=True)
class Persister:
    """TinyBase's Persister (``createCustomPersister``) with coroutine lifecycle methods.

    Subclasses override :meth:`_get_persisted`, :meth:`_set_persisted`,
    :meth:`_add_persister_listener`, :meth:`_del_persister_listener` and optionally
    :meth:`_destroy_extra` (see the module docstring for their contracts).
    """

    def __init__(
        self,
        store: PersistableStore,
        *,
        on_ignored_error: IgnoredErrorHandler | None = None,
        persist: int = Persists.STORE_OR_MERGEABLE_STORE,
        schedule_id: Hashable | None = None,
        is_synchronizer: bool = False,
    ) -> None:
        tune_collector()  # a process that syncs or persists a store: see localsync.core.collector
        self._store = store
        self._on_ignored_error = on_ignored_error
        self._is_synchronizer = is_synchronizer
        self._status = Status.IDLE
        self._loads = 0
        self._saves = 0
        self._load_failures = 0
        self._save_failures = 0
        # time.monotonic() of the oldest change whose save has not completed (None: all saved)
        # and whether the latest save failed (its changes stay unsaved until a save succeeds)
        self._unsaved_since: float | None = None
        self._save_failed = False
        self._auto_load_handle: Any = None
        self._auto_load_active = False
        self._auto_load_task: asyncio.Future[Any] | None = None
        self._auto_load_generation = 0
        self._pending_auto_loads = 0
        self._pending_scheduled_auto_loads = 0
        self._auto_load_after_save_generation = 0
        self._initial_load_pending = False
        self._auto_save_listener_id: Any = None
        self._auto_save_generation = 0
        self._destroyed = False
        self._destroying: asyncio.Future[Any] | None = None
        self._active_action: asyncio.Future[None] | None = None
        self._applying = 0
        self._queued_saves = 0
        self._set_persisted_kind: bool | None = None
        self._status_listeners: dict[str, StatusListener] = {}
        self._next_listener_id = 0
        # a MergeableStore's hooks (had_mutated, ignored_count), whatever ``persist`` says
        self._hooked_store: MergeableStoreLike | None = store if is_mergeable_store(store) else None
        # the store's hook, looked up once (a received change asks for it every time)
        self._had_mutated: Callable[[], bool] | None = (
            self._hooked_store.had_mutated if self._hooked_store is not None else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._schedule_owner = object()
        self._schedule_id: Hashable = schedule_id if schedule_id is not None else object()
        sched = _schedules.setdefault(self._schedule_id, _Schedule())
        sched.refs += 1
        self._configure_store(persist)

    # -- store access -------------------------------------------------------------------------

    def _configure_store(self, persist: int) -> None:
        store = self._store
        if persist != Persists.STORE_ONLY and is_mergeable_store(store):
            self._mergeable_store: MergeableStoreLike | None = store
            self._get_content: Callable[[], Any] = store.get_encoded_mergeable_content
            with_hashes = not self._is_synchronizer
            self._get_changes: Callable[[], Any] = lambda: (
                store.get_encoded_transaction_mergeable_changes(with_hashes)
            )
            self._set_default_content: Callable[[Any], Any] = store.set_default_content
        elif persist != Persists.MERGEABLE_STORE_ONLY:
            self._mergeable_store = None
            self._get_content = store.get_encoded_content
            self._get_changes = store.get_encoded_transaction_changes
            self._set_default_content = store.set_content
        else:
            raise TypeError(f"tinybase:{ERROR_STORE_TYPE}: this persister needs a MergeableStore")
        self._is_mergeable_store = self._mergeable_store is not None

    def _set_content_or_changes(self, content_or_changes: Any) -> None:
        """Apply loaded content (or changes), marking it as ours so it is not saved back."""
        store = self._store
        is_changes = len(content_or_changes) > 2 and content_or_changes[2] == 1
        hooked = self._hooked_store
        ignored_before = hooked.ignored_count if hooked is not None else 0
        self._applying += 1
        try:
            mergeable = self._mergeable_store
            if mergeable is not None and isinstance(content_or_changes[0], list):
                if is_changes:
                    mergeable.apply_encoded_mergeable_changes(content_or_changes)
                else:
                    mergeable.set_encoded_mergeable_content(content_or_changes)
            elif is_changes:
                store.apply_changes(content_or_changes)
            else:
                store.set_encoded_content(content_or_changes)
        finally:
            self._applying -= 1
        if hooked is not None and hooked.ignored_count > ignored_before:
            # the store drops invalid or far-future data silently, as TinyBase does; say so
            raise TinyBaseError(ERROR_CONTENT, "ignored invalid or far-future mergeable data")

    def get_store(self) -> PersistableStore:
        return self._store

    # -- errors, status, listeners ------------------------------------------------------------

    def _report(self, error: BaseException) -> None:
        """Pass an ignored error on; never let a faulty handler break the persister."""
        handler = self._on_ignored_error
        if handler is None:
            # a request nobody answered (alone on a channel, a peer that left) is routine and
            # retried by anti-entropy: not worth a warning on every start; the rest is
            level = (
                logging.DEBUG
                if isinstance(error, TinyBaseError) and error.code == "tinybase:3"
                else logging.WARNING
            )
            logger.log(level, "ignored error in %s: %r", type(self).__name__, error)
            return
        try:
            handler(error)
        except Exception:  # pragma: no cover - the user's handler failed
            logger.exception("on_ignored_error handler raised")

    def _set_status(self, status: Status) -> None:
        if status != self._status:
            self._status = status
            if not self._status_listeners:
                return
            for listener in list(self._status_listeners.values()):
                try:
                    listener(self, int(status))
                except Exception as error:
                    self._report(error)

    def get_status(self) -> int:
        return int(self._status)

    def add_status_listener(self, listener: StatusListener) -> str:
        listener_id = str(self._next_listener_id)
        self._next_listener_id += 1
        self._status_listeners[listener_id] = listener
        return listener_id

    def del_listener(self, listener_id: str) -> Persister:
        self._status_listeners.pop(listener_id, None)
        return self

    def get_stats(self) -> dict[str, float]:
        """TinyBase's ``loads``, ``saves``; ``load_failures``, ``save_failures`` (hooks that
        raised) and ``unsaved_seconds``: the age of the oldest change not yet saved (0.0 when
        all are saved; a change whose save failed stays unsaved until a save succeeds)."""
        return {
            "loads": self._loads,
            "saves": self._saves,
            "load_failures": self._load_failures,
            "save_failures": self._save_failures,
            "unsaved_seconds": self._unsaved_seconds(),
        }

    def _unsaved_seconds(self) -> float:
        since = self._unsaved_since
        pending = self._queued_saves or self._status is not Status.IDLE or self._save_failed
        if since is None or not (pending or self._has_unsent_changes()):
            return 0.0  # (all saved: the next change that has to wait resets the timestamp)
        return max(0.0, time.monotonic() - since)

    def _has_unsent_changes(self) -> bool:
        """Changes taken from transactions but not yet handed to a save (synchronizers)."""
        return False

    def _save_done(self, ok: bool) -> None:
        """Account for a finished save (a failed one leaves its changes unsaved)."""
        self._save_failed = not ok
        if not ok:
            self._save_failures += 1
            self._unsaved_since = self._unsaved_since or time.monotonic()

    # -- hooks (override) ---------------------------------------------------------------------

    def _get_persisted(self) -> Any:
        raise NotImplementedError

    def _set_persisted(self, get_content: Callable[[], Any], changes: Any = None) -> Any:
        raise NotImplementedError

    def _add_persister_listener(self, listener: Callable[..., None]) -> Any:
        return None

    def _del_persister_listener(self, handle: Any) -> Any:
        return None

    def _destroy_extra(self) -> Any:
        return None

    def _after_load(self, applied: bool) -> None:
        """Called after ``load`` handed persisted content to the store (loop thread).

        ``applied`` is False when the store ignored it as invalid (``ignored_count`` rose:
        invalid or far-future stamps, which the store drops silently as TinyBase does) or
        applying it raised. Content that was valid but merged only partly (older stamps
        losing to newer ones) counts as applied. Persisters that must not overwrite storage
        the store could not take (file, SQLite) override this; the base does nothing.
        """

    # -- loop plumbing --------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or (self._loop is not loop and self._loop.is_closed()):
            # first use, or the previous loop is gone (e.g. a second asyncio.run())
            self._loop = loop
            self._loop_thread = threading.get_ident()
        return loop

    def _on_loop_thread(self) -> bool:
        return self._loop_thread is None or self._loop_thread == threading.get_ident()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Run a coroutine in the background, reporting (not losing) its failure."""
        assert self._loop is not None
        task = asyncio.ensure_future(coro, loop=self._loop)
        self._tasks.add(task)

        def done(fut: asyncio.Future[Any]) -> None:
            self._tasks.discard(fut)
            if not fut.cancelled() and fut.exception() is not None:
                self._report(fut.exception())  # type: ignore[arg-type]

        task.add_done_callback(done)

    # -- scheduling -----------------------------------------------------------------------------

    def _schedule_idle(self) -> bool:
        sched = _schedules.get(self._schedule_id)
        return sched is None or (not sched.running and not sched.actions)

    async def _run_schedule(self) -> None:
        sched = _schedules.get(self._schedule_id)
        if sched is None or sched.running:
            return
        sched.running = True
        try:
            while sched.actions:
                action = sched.actions.popleft()
                await action.run()
        finally:
            sched.running = False
            self._prune_schedule()

    def _prune_schedule(self) -> None:
        sched = _schedules.get(self._schedule_id)
        if sched is not None and not sched.refs and not sched.running and not sched.actions:
            del _schedules[self._schedule_id]

    async def schedule(self, *actions: Callable[[], Any]) -> Persister:
        """Run ``actions`` one after another, after anything already scheduled on this id.

        Errors of an action go to ``on_ignored_error`` (as TinyBase's schedule does).
        """
        loop = self._bind_loop()
        if not actions:
            return self
        completion: asyncio.Future[None] = loop.create_future()
        sched = _schedules.setdefault(self._schedule_id, _Schedule())
        last_index = len(actions) - 1

        def resolve() -> None:
            if not completion.done():
                completion.set_result(None)

        for index, action in enumerate(actions):

            async def run(
                action: Callable[[], Any] = action, last: bool = index == last_index
            ) -> None:
                active: asyncio.Future[None] = loop.create_future()
                self._active_action = active
                try:
                    try:
                        await maybe_await(action())
                    except Exception as error:
                        self._report(error)
                    if last:
                        resolve()
                finally:
                    self._active_action = None
                    if not active.done():  # (cancelled when an asyncio.run shut down)
                        active.set_result(None)

            complete = resolve if index == last_index else None
            sched.actions.append(_ScheduledAction(run, complete, self._schedule_owner))
        await self._run_schedule()
        await completion
        return self

    # -- load -------------------------------------------------------------------------------

    async def load(self, initial_content: Any = None) -> Persister:
        """Load persisted content into the store (TinyBase ``load``)."""
        self._bind_loop()
        if self._status != Status.SAVING:
            try:
                self._set_status(Status.LOADING)
                self._loads += 1
                await self.schedule(lambda: self._load_action(initial_content))
            finally:
                self._set_status(Status.IDLE)
            await self._save_after_mutated()
        return self

    async def _load_action(self, initial_content: Any) -> None:
        try:
            content = await maybe_await(self._get_persisted())
            if isinstance(content, list):
                applied = False
                try:
                    self._set_content_or_changes(content)
                    applied = True
                finally:
                    self._after_load(applied)
            elif content is None and initial_content is not None:
                self._set_default_content(initial_content)
            elif content is not None:
                self._after_load(False)
                raise TinyBaseError(ERROR_CONTENT, repr(content)[:100])
        except Exception as error:
            self._load_failures += 1
            self._report(error)
            if initial_content is not None:
                self._set_default_content(initial_content)

    async def _save_after_mutated(self) -> None:
        had_mutated = self._had_mutated
        if self.is_auto_saving() and had_mutated is not None and had_mutated():
            await self._save_whole()

    async def _run_auto_load_after_save(self) -> None:
        generation = self._auto_load_after_save_generation
        self._auto_load_after_save_generation = 0
        if generation and generation == self._auto_load_generation and not self._destroyed:
            if self._status == Status.SAVING:
                self._auto_load_after_save_generation = generation
            else:
                await self.load()

    def _persister_listener(self, generation: int) -> Callable[..., None]:
        """The callback handed to ``add_persister_listener`` (thread-safe)."""

        def listener(content: Any = None, changes: Any = None) -> None:
            # (_on_loop_thread inlined here and in the auto-save listener: both run for every
            # synced message, and each Python call is more code to run with cold caches)
            loop_thread = self._loop_thread
            if loop_thread is not None and loop_thread != threading.get_ident():
                assert self._loop is not None
                self._loop.call_soon_threadsafe(listener, content, changes)
                return
            if generation == self._auto_load_generation and not self._destroyed:
                self._storage_changed(content, changes)

        return listener

    def _storage_changed(self, content: Any, changes: Any) -> None:
        """Auto-load what the storage reported (loop thread): apply it, or reload with neither."""
        if changes is not None or content is not None:
            self._auto_load_changes(content, changes)
        elif self._status == STATUS_SAVING:
            self._auto_load_after_save_generation = self._auto_load_generation
        else:
            self._spawn(self.load())

    def _auto_load_changes(self, content: Any, changes: Any) -> None:
        """Apply pushed content synchronously when nothing else is in flight.

        Synchronous on purpose: TinyBase sets "loading" and applies before its first await, so
        the transaction this causes is recognised as an echo and not saved back.
        """
        should_schedule = (
            self._initial_load_pending
            or self._status == STATUS_SAVING
            or bool(self._pending_scheduled_auto_loads)
        )
        payload = changes if changes is not None else content
        if should_schedule:
            self._pending_auto_loads += 1
            self._pending_scheduled_auto_loads += 1
            self._set_status(STATUS_LOADING)
            self._loads += 1
            self._spawn(self._scheduled_auto_load(payload))
            return
        self._pending_auto_loads += 1
        try:
            self._set_status(STATUS_LOADING)
            self._loads += 1
            try:
                self._set_content_or_changes(payload)
            finally:
                self._set_status(STATUS_IDLE)
        except Exception as error:
            self._load_failures += 1
            self._report(error)
        finally:
            self._pending_auto_loads -= 1
            if not self._pending_auto_loads and self._status != STATUS_IDLE:
                self._set_status(STATUS_IDLE)
        if not self._pending_auto_loads:
            had_mutated = self._had_mutated
            if had_mutated is not None and self.is_auto_saving() and had_mutated():
                self._spawn(self._save_whole())

    async def _scheduled_auto_load(self, payload: Any) -> None:
        try:
            await self.schedule(lambda: self._apply_pushed(payload))
        finally:
            self._pending_scheduled_auto_loads -= 1
            self._pending_auto_loads -= 1
            if not self._pending_auto_loads:
                self._set_status(STATUS_IDLE)
        if not self._pending_auto_loads:
            await self._save_after_mutated()

    def _apply_pushed(self, payload: Any) -> None:
        try:
            self._set_content_or_changes(payload)
        except Exception:
            self._load_failures += 1
            raise

    async def start_auto_load(self, initial_content: Any = None) -> Persister:
        """Load now, then apply every change the storage reports (TinyBase ``startAutoLoad``)."""
        self._bind_loop()
        self._auto_load_generation += 1
        generation = self._auto_load_generation
        self._initial_load_pending = True
        await self.stop_auto_load(keep_generation=True)
        if generation == self._auto_load_generation and not self._destroyed:
            try:
                handle = await maybe_await(
                    self._add_persister_listener(self._persister_listener(generation))
                )
            except Exception as error:
                self._report(error)
            else:
                if generation == self._auto_load_generation and not self._destroyed:
                    self._auto_load_handle = handle
                    self._auto_load_active = True
                else:
                    await self._del_listener_quietly(handle)
            if generation == self._auto_load_generation and not self._destroyed:
                try:
                    await self.load(initial_content)
                finally:
                    self._initial_load_pending = False
        return self

    async def _del_listener_quietly(self, handle: Any) -> None:
        try:
            await maybe_await(self._del_persister_listener(handle))
        except Exception as error:
            self._report(error)

    async def stop_auto_load(self, keep_generation: bool = False) -> Persister:
        self._auto_load_after_save_generation = 0
        if not keep_generation:
            self._auto_load_generation += 1
        was_active = self._auto_load_active
        handle = self._auto_load_handle
        self._auto_load_handle = None
        self._auto_load_active = False
        if was_active:
            await self._del_listener_quietly(handle)
        return self

    def is_auto_loading(self) -> bool:
        return self._auto_load_active

    # -- save -------------------------------------------------------------------------------

    async def save(self) -> Persister:
        """Save the whole store (TinyBase ``save``); skipped while loading, as in TinyBase.

        Errors go to ``on_ignored_error`` here; a subclass may also raise them (the file and
        SQLite persisters do), which is why the base's own saves call ``_save_whole``.
        """
        await self._save_whole()
        return self

    async def _save_whole(self) -> None:
        """``save`` without any raising a subclass adds (for saves the base starts itself)."""
        self._bind_loop()
        if self._status != Status.LOADING:
            await self._save_impl(None)

    async def _save_impl(self, changes: Any) -> None:
        await await_then(self._scheduled_save(changes), self._run_auto_load_after_save)

    async def _scheduled_save(self, changes: Any) -> None:
        try:
            self._set_status(Status.SAVING)
            self._saves += 1
            await self.schedule(
                lambda: self._counted(self._set_persisted, self._get_content, changes)
            )
        finally:
            self._set_status(Status.IDLE)

    async def _counted(self, hook: Callable[..., Any], *args: Any) -> None:
        """Run a save hook inside the schedule, counting whether it failed (then re-raise)."""
        try:
            await maybe_await(hook(*args))
        except Exception:
            self._save_done(False)
            raise
        self._save_done(True)

    def _set_persisted_is_coroutine(self) -> bool:
        """``inspect.iscoroutinefunction(self._set_persisted)``, found once (a class's hook)."""
        kind = self._set_persisted_kind
        if kind is None:
            kind = self._set_persisted_kind = inspect.iscoroutinefunction(self._set_persisted)
        return kind

    def _save_changes_now(self, changes: Any) -> None:
        """Save one transaction's changes, synchronously when the schedule is free (TinyBase
        sends a ContentDiff inside the transaction listener, before any other message)."""
        if self._destroyed or self._auto_save_listener_id is None:  # (is_auto_saving())
            return
        if (
            self._status is STATUS_IDLE
            and not self._queued_saves
            and self._schedule_idle()
            and not self._set_persisted_is_coroutine()
        ):
            self._set_status(STATUS_SAVING)
            self._saves += 1
            deferred = False
            try:
                result = self._set_persisted(self._get_content, changes)
                if result is not None and inspect.isawaitable(result):
                    # an asynchronous hook behind a plain function: finish it inside the
                    # schedule, so that later saves queue behind it instead of overlapping it
                    deferred = True
                    self._queued_saves += 1
                    self._spawn(self._finish_inline_save(result))
                else:  # (every change is saved now: nothing was queued before this one)
                    self._save_failed = False
                    self._unsaved_since = None
            except Exception as error:
                self._save_done(False)
                self._report(error)
            finally:
                if not deferred:
                    self._set_status(STATUS_IDLE)
            if self._auto_load_after_save_generation:
                self._spawn(self._run_auto_load_after_save())
            return
        if self._unsaved_since is None or not (self._queued_saves or self._save_failed):
            self._unsaved_since = time.monotonic()  # (the first change waiting for a save)
        self._queue_save(changes)

    def _queue_save(self, changes: Any) -> None:
        """Save ``changes`` after what the schedule holds (a synchronizer merges queued saves)."""
        self._queued_saves += 1
        self._spawn(self._queued_save(changes))

    async def _finish_inline_save(self, pending: Any) -> None:
        """The rest of an inline save whose hook returned an awaitable (status stays SAVING)."""
        try:
            try:
                await self.schedule(lambda: self._counted(lambda: pending))
            finally:
                self._set_status(STATUS_IDLE)
        finally:
            self._queued_saves -= 1

    async def _queued_save(self, changes: Any) -> None:
        """A save that could not run inline; later inline saves wait for it (order kept)."""
        try:
            await self._save_impl(changes)
        finally:
            self._queued_saves -= 1

    def _make_auto_save_listener(self, generation: int) -> Callable[[Any], None]:
        def on_transaction(_store: object) -> None:
            if generation != self._auto_save_generation or self._destroyed:
                return
            loop_thread = self._loop_thread
            on_loop = loop_thread is None or loop_thread == threading.get_ident()
            if on_loop and self._applying:
                return  # our own load being applied: saving it back would be an echo
            self._local_transaction(generation, on_loop)

        return on_transaction

    def _local_transaction(self, generation: int, on_loop: bool) -> None:
        """Auto-save a local transaction's changes (called inside its transaction listener)."""
        try:
            changes = self._get_changes()
        except Exception as error:
            self._report(error)
            return
        if changes is not None and not _has_changes(changes, self._is_mergeable_store):
            return
        if on_loop:
            self._save_changes_now(changes)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._save_changes_from_thread, generation, changes)

    def _drain_handover(self) -> None:
        """Send local transactions still queued (a synchronizer queues them; the base does not)."""

    def _save_changes_from_thread(self, generation: int, changes: Any) -> None:
        if generation == self._auto_save_generation and not self._destroyed:
            self._save_changes_now(changes)

    async def start_auto_save(self) -> Persister:
        """Save now, then save every transaction's changes (TinyBase ``startAutoSave``)."""
        self._bind_loop()
        self._auto_save_generation += 1
        generation = self._auto_save_generation
        await self.stop_auto_save(keep_generation=True)
        if generation == self._auto_save_generation and not self._destroyed:
            await self.save()
            if generation == self._auto_save_generation and not self._destroyed:
                self._auto_save_listener_id = self._store.add_did_finish_transaction_listener(
                    self._make_auto_save_listener(generation)
                )
        return self

    async def stop_auto_save(self, keep_generation: bool = False) -> Persister:
        self._drain_handover()  # transactions made before the stop are still saved
        if not keep_generation:
            self._auto_save_generation += 1
        listener_id = self._auto_save_listener_id
        self._auto_save_listener_id = None
        if listener_id is not None:
            self._store.del_listener(listener_id)
        return self

    def is_auto_saving(self) -> bool:
        return self._auto_save_listener_id is not None

    async def start_auto_persisting(
        self, initial_content: Any = None, start_save_first: bool = False
    ) -> Persister:
        if start_save_first:
            await self.start_auto_save()
            failure = await failure_of(self.start_auto_load(initial_content))
            if failure is not None:
                await self.stop_auto_load()
                await self.stop_auto_save()
                raise failure
        else:
            await self.start_auto_load(initial_content)
            failure = await failure_of(self.start_auto_save())
            if failure is not None:
                await self.stop_auto_save()
                await self.stop_auto_load()
                raise failure
        return self

    async def stop_auto_persisting(self, stop_save_first: bool = False) -> Persister:
        if stop_save_first:
            await await_then(self.stop_auto_save(), self.stop_auto_load)
        else:
            await await_then(self.stop_auto_load(), self.stop_auto_save)
        return self

    # -- destroy ------------------------------------------------------------------------------

    async def destroy(self) -> Persister:
        """Stop persisting, let the running action finish, release resources. Idempotent."""
        if self._destroying is None:
            self._drain_handover()  # transactions made before destroy are still saved
            self._destroyed = True
            self._destroying = asyncio.ensure_future(self._destroy_impl())
        await asyncio.shield(self._destroying)
        return self

    async def _destroy_impl(self) -> None:
        sched = _schedules.get(self._schedule_id)
        active = self._active_action
        if sched is not None:
            remaining: deque[_ScheduledAction] = deque()
            for action in sched.actions:
                if action.owner is self._schedule_owner:
                    if action.complete is not None:
                        action.complete()
                else:
                    remaining.append(action)
            sched.actions = remaining
        try:
            stopping = self.stop_auto_persisting()
            if active is not None:  # (the running action finishes first)
                stopping = await_then(stopping, functools.partial(asyncio.shield, active))
            await await_then(stopping, lambda: maybe_await(self._destroy_extra()))
        finally:
            sched = _schedules.get(self._schedule_id)
            if sched is not None:
                sched.refs -= 1
            self._prune_schedule()

    async def __aenter__(self) -> Persister:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()


class _CustomPersister(Persister):
    """A Persister whose hooks are plain callables (``create_custom_persister``)."""

    def __init__(
        self,
        store: PersistableStore,
        get_persisted: Callable[[], Any],
        set_persisted: Callable[..., Any],
        add_persister_listener: Callable[[Callable[..., None]], Any],
        del_persister_listener: Callable[[Any], Any],
        extra_destroy: Callable[[], Any] | None,
        *,
        on_ignored_error: IgnoredErrorHandler | None,
        persist: int,
        schedule_id: Hashable | None,
    ) -> None:
        self._get_persisted_hook = get_persisted
        self._set_persisted_hook = set_persisted
        self._add_persister_listener_hook = add_persister_listener
        self._del_persister_listener_hook = del_persister_listener
        self._extra_destroy_hook = extra_destroy
        super().__init__(
            store, on_ignored_error=on_ignored_error, persist=persist, schedule_id=schedule_id
        )
        self._set_persisted_kind = inspect.iscoroutinefunction(set_persisted)  # (the hook's)

    def _get_persisted(self) -> Any:
        return self._get_persisted_hook()

    def _set_persisted(self, get_content: Callable[[], Any], changes: Any = None) -> Any:
        return self._set_persisted_hook(get_content, changes)

    def _add_persister_listener(self, listener: Callable[..., None]) -> Any:
        return self._add_persister_listener_hook(listener)

    def _del_persister_listener(self, handle: Any) -> Any:
        return self._del_persister_listener_hook(handle)

    def _destroy_extra(self) -> Any:
        extra = self._extra_destroy_hook
        return extra() if extra is not None else None


def create_custom_persister(
    store: PersistableStore,
    get_persisted: Callable[[], Any],
    set_persisted: Callable[..., Any],
    add_persister_listener: Callable[[Callable[..., None]], Any],
    del_persister_listener: Callable[[Any], Any],
    on_ignored_error: IgnoredErrorHandler | None = None,
    persist: int = Persists.STORE_OR_MERGEABLE_STORE,
    *,
    extra_destroy: Callable[[], Any] | None = None,
    schedule_id: Hashable | None = None,
) -> Persister:
    """TinyBase's ``createCustomPersister``; hooks may be plain or coroutine functions."""
    return _CustomPersister(
        store,
        get_persisted,
        set_persisted,
        add_persister_listener,
        del_persister_listener,
        extra_destroy,
        on_ignored_error=on_ignored_error,
        persist=persist,
        schedule_id=schedule_id,
    )
