"""Worker processes that each get a synchronized store (built on ``multiprocess``).

``WorkerPool(fn, count, channel="orders")`` starts ``count`` processes running
``fn(ctx, *args, **kwargs)``; ``ctx.store`` is a MergeableStore kept in sync with every other
process on the channel. The pool restarts crashed workers with exponential backoff, collects
their tracebacks and exit codes, and stops them cleanly (SIGTERM, then SIGKILL).
``run_workers(fn, count, channel=...)`` does all of that in one call.
"""

from .context import WorkerContext
from .errors import WorkerError, WorkersFailed
from .policy import RestartPolicy
from .pool import WorkerPool, run_workers
from .supervisor import WorkerInfo

__all__ = [
    "RestartPolicy",
    "WorkerContext",
    "WorkerError",
    "WorkerInfo",
    "WorkerPool",
    "WorkersFailed",
    "run_workers",
]
