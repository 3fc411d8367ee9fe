"""When and how soon a failed worker is started again.

Kept apart from the supervisor so the rule can be read (and tested) without processes: a
crash loop must slow down exponentially instead of burning a core, must end after a bounded
number of attempts so a broken deployment is reported rather than hidden, and a worker that
has been healthy for a while must not inherit the penalty of a crash from long ago.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RestartMode = Literal["on-failure", "never"]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart rules shared by every worker of a pool.

    ``mode``: ``"on-failure"`` restarts a worker whose attempt failed (exception in the
    function, non-zero exit, death by a signal it did not expect); ``"never"`` records the
    failure and leaves the slot failed. A worker that finished normally (exit code 0) or
    that was asked to stop is never restarted, whatever the mode.

    ``max_restarts``: consecutive restarts allowed before the supervisor gives up on a slot.
    ``backoff``: ``(first_delay, max_delay)`` in seconds; the n-th consecutive restart waits
    ``min(max_delay, first_delay * 2**n)``.
    ``healthy_after``: an attempt that ran at least this many seconds before failing resets
    the consecutive count, so a long-lived service that crashes rarely is not retired.
    """

    mode: RestartMode = "on-failure"
    max_restarts: int = 5
    backoff: tuple[float, float] = (0.1, 5.0)
    healthy_after: float | None = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("on-failure", "never"):
            raise ValueError(f"restart must be 'on-failure' or 'never', not {self.mode!r}")
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool):
            raise TypeError("max_restarts must be an int")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if len(self.backoff) != 2:
            raise ValueError("backoff must be a (first_delay, max_delay) pair")
        first, cap = self.backoff
        if not (first >= 0 and cap >= first):
            raise ValueError("backoff needs 0 <= first_delay <= max_delay")
        if self.healthy_after is not None and self.healthy_after < 0:
            raise ValueError("healthy_after must be >= 0 or None")

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before the restart that follows ``consecutive_failures`` failures.

        ``consecutive_failures`` counts from 1 (the failure that just happened).
        """
        first, cap = self.backoff
        exponent = max(0, consecutive_failures - 1)
        # cap the exponent too: 2**10000 as a float overflows long before the min applies
        return float(min(cap, first * 2.0 ** min(exponent, 64)))

    def should_restart(self, consecutive_failures: int) -> bool:
        """Whether a slot that just failed ``consecutive_failures`` times in a row runs again."""
        return self.mode == "on-failure" and consecutive_failures <= self.max_restarts

    def resets_after(self, ran_seconds: float) -> bool:
        """Whether an attempt that ran this long counts as healthy (clears the failure streak)."""
        return self.healthy_after is not None and ran_seconds >= self.healthy_after
