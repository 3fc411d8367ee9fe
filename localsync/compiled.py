"""Which of localsync's modules run compiled (mypyc, see setup.py), and stale-build checks.

An editable install compiles ``COMPILED_MODULES`` next to their sources, and Python imports
the compiled file first: an edit to such a source has no effect until the install runs
again. ``import localsync`` therefore warns when a compiled module is older than its source.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import warnings

#: the modules setup.py compiles, in this order of dependence (setup.py reads this list)
COMPILED_MODULES = (
    "core.codec",
    "core.hash",
    "core.hlc",
    "core.content",
    "core.changes",
    "core.listeners",
    "core.store",
    "core.validation",
    "core.stamps",
    "core.diff",
    "core.merge",
    "core.mergeable_store",
    "sync.engine",
    "sync.coalesce",
    "sync.persister",
    "sync.synchronizer",
)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def compiled_modules() -> list[str]:
    """The names of ``COMPILED_MODULES`` that are loaded from a compiled extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in COMPILED_MODULES:
        module = importlib.import_module(f"localsync.{name}")
        if (getattr(module, "__file__", None) or "").endswith(suffixes):
            found.append(name)
    return found


def stale_modules(package_dir: str = _PACKAGE_DIR) -> list[str]:
    """Compiled modules whose source changed after they were built (without importing them).

    Only in a source checkout (an editable install: setup.py beside the package), where the
    build wrote each extension after its source; an installed wheel keeps no such order.
    """
    if not os.path.exists(os.path.join(package_dir, os.pardir, "setup.py")):
        return []
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    stale = []
    for name in COMPILED_MODULES:
        folder, _, leaf = name.rpartition(".")
        directory = os.path.join(package_dir, *folder.split("."))
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        source = os.path.join(directory, f"{leaf}.py")
        built = [e for e in entries if e.startswith(f"{leaf}.") and e.endswith(suffixes)]
        if not built or not os.path.exists(source):
            continue
        newest = max(os.path.getmtime(os.path.join(directory, e)) for e in built)
        if os.path.getmtime(source) > newest:
            stale.append(name)
    return stale


def warn_if_stale() -> None:
    stale = stale_modules()
    if stale:
        warnings.warn(
            f"localsync: the compiled {', '.join(stale)} predate their sources, so the edits are "
            "not in effect: run `pip install -e .` again (LOCALSYNC_PURE_PYTHON=1 builds "
            "without compiling)",
            RuntimeWarning,
            stacklevel=3,
        )


__all__ = ["COMPILED_MODULES", "compiled_modules", "stale_modules", "warn_if_stale"]
