"""The compiled build (setup.py compiles the per-cell modules with mypyc).

CI installs with a C compiler, so the suite must be exercising the compiled modules there;
an editable checkout must say when a compiled module is older than its source.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
from pathlib import Path

import pytest

from localsync.compiled import COMPILED_MODULES, compiled_modules, stale_modules

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.skipif(
    os.environ.get("LOCALSYNC_PURE_PYTHON", "") not in ("", "0")
    or (shutil.which("cc") is None and shutil.which("gcc") is None),
    reason="pure-Python build requested, or no C compiler to build with",
)
def test_the_suite_runs_the_compiled_modules() -> None:
    assert compiled_modules() == list(COMPILED_MODULES)


def test_setup_compiles_the_listed_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup.py's list of sources to compile is ``COMPILED_MODULES``, in order (run with a
    metadata-only command line and ``setup`` replaced, so that nothing is built)."""
    import runpy

    import setuptools

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr("sys.argv", ["setup.py", "egg_info"])
    setup_py = Path(__file__).resolve().parents[2] / "setup.py"
    names = runpy.run_path(str(setup_py))
    assert names["COMPILED"] == [
        f"localsync/{name.replace('.', '/')}.py" for name in COMPILED_MODULES
    ]
    assert calls == [{"ext_modules": []}]  # (metadata only: no build)


def _package(tmp_path: Path) -> Path:
    (tmp_path / "setup.py").write_text("")
    package = tmp_path / "localsync"
    (package / "core").mkdir(parents=True)
    return package


def test_a_source_edited_after_the_build_is_reported(tmp_path: Path) -> None:
    package = _package(tmp_path)
    built = package / "core" / f"store{SUFFIX}"
    source = package / "core" / "store.py"
    built.write_bytes(b"")
    source.write_text("")
    os.utime(built, (1_000_000, 1_000_000))
    os.utime(source, (2_000_000, 2_000_000))
    assert stale_modules(str(package)) == ["core.store"]
    os.utime(built, (3_000_000, 3_000_000))
    assert stale_modules(str(package)) == []


def test_installed_packages_are_not_checked(tmp_path: Path) -> None:
    package = tmp_path / "localsync"  # no setup.py beside it: an installed wheel
    package.mkdir()
    (package / f"hlc{SUFFIX}").write_bytes(b"")
    (package / "hlc.py").write_text("")
    os.utime(package / f"hlc{SUFFIX}", (1_000_000, 1_000_000))
    assert stale_modules(str(package)) == []


def test_the_pure_python_sources_stay_importable() -> None:
    """Every compiled module keeps its source beside it (the fallback without a compiler)."""
    package = Path(__file__).resolve().parents[2] / "localsync"
    for name in COMPILED_MODULES:
        assert (package / f"{name.replace('.', '/')}.py").is_file()
