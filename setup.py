"""Build hook: compile the per-cell modules (and the synchronizer layer above them) with mypyc.

Why: every figure localsync reports is bounded by per-cell Python work (stamping a write,
hashing, checking and merging a received diff) and, for one-cell messages, by the persister and
synchronizer calls each message passes through; compiled from the same annotated sources,
those modules run about twice as fast with the same behaviour (the test suite runs against the
compiled build). In compiled modules, constants on per-cell paths are ``Final`` and clock times
are ``hlc.Number``, not ``float`` (docs/design.md, "Compiled modules", says why).

Everything else stays pure Python; without a C compiler, or with
``LOCALSYNC_PURE_PYTHON=1`` in the environment, the package installs as pure Python (the
extensions are optional). After editing one of ``COMPILED`` in an editable install, run the
install again (``pip install -e .``): the compiled module is what Python imports, and
``import localsync`` warns when it is older than its source.

mypyc runs only for the commands that build extensions (``BUILD_COMMANDS``): a PEP 517
build runs this file once per hook (``egg_info`` for the build requirements, ``dist_info``
for the metadata, then ``bdist_wheel``), and the metadata steps need no extensions. The
modules share one runtime library, ``localsync/_native__mypyc*.so`` (``GROUP_NAME``), inside
the package rather than under a hash name at the top level of site-packages.
"""

from __future__ import annotations

import os
import sys
from runpy import run_path
from typing import Any

from setuptools import setup

#: compiled in this order of dependence: ``localsync.compiled.COMPILED_MODULES``, read from its
#: file (importing the package would import its dependencies, which a build may not have yet)
COMPILED = [
    f"localsync/{name.replace('.', '/')}.py"
    for name in run_path(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "localsync", "compiled.py")
    )["COMPILED_MODULES"]
]


#: mypyc's group: its shared runtime library is built as ``localsync._native__mypyc``
GROUP_NAME = "localsync._native"

#: setup.py commands that compile (or install, and so compile) the extensions
BUILD_COMMANDS = frozenset(
    {
        "build",
        "build_ext",
        "bdist",
        "bdist_wheel",
        "bdist_egg",
        "bdist_dumb",
        "bdist_rpm",
        "editable_wheel",
        "develop",
        "install",
    }
)


def _builds_extensions(argv: list[str]) -> bool:
    return any(arg in BUILD_COMMANDS for arg in argv[1:])


def _ext_modules() -> list[Any]:
    if os.environ.get("LOCALSYNC_PURE_PYTHON", "") not in ("", "0"):
        return []
    if not _builds_extensions(sys.argv):
        return []  # metadata only (egg_info, dist_info, sdist): no need to run mypyc
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("localsync: mypyc is not available, installing pure Python", file=sys.stderr)
        return []
    try:
        # (the build environment lacks the runtime dependencies: their imports are Any here;
        # CI type-checks the whole package against them)
        print(
            "localsync: compiling with mypyc (about a minute; LOCALSYNC_PURE_PYTHON=1 skips it)",
            file=sys.stderr,
        )
        extensions = mypycify(
            [*COMPILED, "--ignore-missing-imports"], opt_level="3", group_name=GROUP_NAME
        )
    except (Exception, SystemExit) as error:
        print(f"localsync: mypyc failed ({error!r}), installing pure Python", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True  # no C compiler: the pure-Python modules are used
    return list(extensions)


setup(ext_modules=_ext_modules())
