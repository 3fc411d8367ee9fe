"""CheckedChanges: a received ContentDiff whose shape the sync engine has checked.

A module of its own because it subclasses ``list``: the modules the build compiles with
mypyc (see setup.py) cannot define such a class, and both the engine (which makes them)
and the store (which trusts their shape) use it.
"""

from __future__ import annotations

from typing import Any


class CheckedChanges(list):  # type: ignore[type-arg]
    """Mergeable changes whose shape a sync engine has already checked, plus what it gathered.

    Made by :func:`localsync.core.validation.check_content_diff` for every received
    ContentDiff, so that applying it does not walk every cell a second time: ``hlcs`` holds
    every non-empty HLC of the body and ``special`` every value the store must still look at
    (object cells, ``"\ufffd"`` strings, numbers beyond 2**53). Only the engine makes them;
    the store trusts the shape, never the values
    (:meth:`localsync.core.validation.Validator.checked`).
    """

    __slots__ = ("hlcs", "special")

    hlcs: list[str]
    special: list[Any]


__all__ = ["CheckedChanges"]
