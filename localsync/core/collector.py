"""Python's cyclic garbage collector, tuned for processes that keep a synchronized store.

Why: a MergeableStore is millions of small lists and dicts (stamps, rows), and syncing
allocates more for every message (decoded bodies, change records). With CPython's default
first-generation threshold of 700 allocations, the collector runs every few rows written or
received, and its older generations repeatedly walk the whole store, none of which is ever
cyclic garbage (figures: docs/performance.md, "The garbage collector"). Cycles are still
collected, only in larger batches, so memory held by real cyclic garbage is bounded by
~10,000 young objects instead of 700.

The change is process-wide, so it is made only where a program asked for synchronization
(creating a synchronizer or a persister) and only while the application has left the
thresholds at CPython's defaults: a program that tuned them keeps its own. Set the
environment variable ``LOCALSYNC_GC_TUNING=0`` to leave the collector alone entirely.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from contextlib import AbstractContextManager

__all__ = ["BIG_MESSAGE", "GEN0_THRESHOLD", "paused", "paused_for", "tune_collector"]

#: First-generation threshold set by :func:`tune_collector` (CPython's default is 700).
GEN0_THRESHOLD = 10_000

_DEFAULT_GEN0 = 700
ENV_VAR = "LOCALSYNC_GC_TUNING"


def tune_collector() -> bool:
    """Raise the first-generation threshold unless the program chose its own; True if set."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 != _DEFAULT_GEN0:
        return gen0 == GEN0_THRESHOLD
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    return True


class _Paused:
    """Pause Python's cyclic garbage collector around bulk work on stamps and content.

    Receiving or building a large store (or decoding a joiner's big diff) allocates millions
    of lists and dicts, none of them cyclic garbage, that each round of the collector would
    rescan; paused, the temporaries are freed by reference counting before it ever looks
    (figures: docs/performance.md, "The garbage collector"). Pausing is process-wide, so it
    is reference-counted across threads and never re-enables a collector someone else
    disabled.
    """

    __slots__ = ()
    _lock = threading.Lock()
    _depth = 0
    _resume = False

    def __enter__(self) -> None:
        cls = _Paused
        with cls._lock:
            if cls._depth == 0:
                cls._resume = gc.isenabled()
                if cls._resume:
                    gc.disable()
            cls._depth += 1

    def __exit__(self, *exc: object) -> None:
        cls = _Paused
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._resume:
                cls._resume = False
                gc.enable()


#: ``with paused:`` - no cyclic collection inside (reference-counted across threads)
paused = _Paused()

#: a received message of this many bytes (or characters) or more is decoded and handled with
#: the collector paused (:func:`paused_for`)
BIG_MESSAGE = 1 << 16
_NOT_PAUSED = contextlib.nullcontext()


def paused_for(size: int) -> AbstractContextManager[None]:
    """:data:`paused` for a message of ``size`` from :data:`BIG_MESSAGE` on, else a no-op.

    Why: the hundreds of thousands of lists and strings a big diff decodes to are never
    cyclic garbage, yet each collection round would rescan them (a 3.3 MB diff parses in
    14 ms paused, 50 ms not); what is decoded should be dropped before the block ends.
    """
    return paused if size >= BIG_MESSAGE else _NOT_PAUSED
