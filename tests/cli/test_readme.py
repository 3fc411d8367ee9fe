"""Every code block in README.md and docs/guide.md runs as written, and names what exists.

Each ```python block is written to a file and run with this interpreter in a fresh
subprocess; each ```bash block is run with ``bash -e``. The blocks of one document share one
temporary working folder, in order, as a reader following it would (the key pair that one block
writes is read by the next), with ``PYTHONPATH`` set to the repository root and the
``localsync`` command of this environment on ``PATH``. Channels get a private runtime folder
(``LOCALSYNC_RUNTIME_DIR``, the variable ``localsync.channel.runtime`` documents for isolating
tests),
so the README's channel names cannot meet another test's or another run's.

A block may be skipped only with a marker on the line right before its opening fence (blank
lines allowed in between)::

    <!-- not run: <reason> -->

for what a test cannot do: installing packages, running the demo or the whole test or
benchmark suite, servers that run until they are stopped. An unmarked block that would run
``pip install`` fails without being run. Fences without a language (directory trees, output)
are not code and are not run; a fence in any language other than python or bash fails the
test, so that no new block escapes it.

A block fails when it exits non-zero, runs past its timeout, or prints a traceback (an
exception in a thread or a worker process does not change the exit code). The failure names
every failing block by its line in its document.

The same documents may name only modules, attributes and repository paths that exist
(``localsync.sync.engine.MAX_PENDING_REQUESTS``, ``localsync/persisters/_sqlitestore.py``), so
that a module that moves cannot leave its old path behind in them.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the documents whose code blocks run and whose names are checked
DOCUMENTS = ("README.md", "docs/guide.md")
BLOCK_TIMEOUT_SECONDS = 120.0
RUN_LANGUAGES = ("python", "bash")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
DOTTED_NAME = re.compile(r"(?<![\w/.-])((?:localsync|workers|benchmarks)(?:\.[A-Za-z_]\w*)+)")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:localsync|tests|benchmarks|workers|docs)/[\w/.-]*\w)")
#: paths that exist only once something ran (npm's install folder for the interop tests)
CREATED_PATHS = ("tests/.npm",)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence in README.md
    lang: str  # "" for a fence without a language
    code: str
    not_run: str | None  # the marker's reason, or None


def parse_blocks(text: str, name: str = "README.md") -> list[Block]:
    """The fenced blocks of a Markdown text (``name`` for messages), with their not-run markers."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{name}:{start + 1}: code fence never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NOT_RUN.match(lines[k].strip()) if k >= 0 else None
        blocks.append(
            Block(
                line=start + 1,
                lang=fence["lang"],
                code="\n".join(lines[start + 1 : j]) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        i = j + 1
    return blocks


def document_blocks(name: str) -> list[Block]:
    return parse_blocks((ROOT / name).read_text(encoding="utf-8"), name)


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is an importable module, or an attribute path inside one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> str | None:
    """Run one block; None when it succeeded, else why it failed."""
    if block.lang == "python":
        script = cwd / f"readme_block_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, script.name]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills what it started too
    )
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return f"still running after {BLOCK_TIMEOUT_SECONDS:.0f} s\n{_tail(out, err)}"
    if proc.returncode != 0:
        return f"exited with {proc.returncode}\n{_tail(out, err)}"
    if "Traceback (most recent call last)" in err:
        return f"exited 0 but printed a traceback\n{_tail(out, err)}"
    return None


def _tail(out: str, err: str, limit: int = 3000) -> str:
    return f"--- stdout ---\n{out[-limit:]}--- stderr ---\n{err[-limit:]}"


def block_env(runtime_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["LOCALSYNC_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("LOCALSYNC_CHAOS_SECONDS", None)
    return env


def test_parse_blocks_reads_languages_lines_and_markers() -> None:
    text = (
        "# t\n"
        "```python\nprint(1)\n```\n"
        "<!-- not run: starts a server -->\n\n"
        "```bash\nlocalsync serve\n```\n"
        "```\ntree\n```\n"
    )
    blocks = parse_blocks(text)
    assert [(b.line, b.lang, b.code, b.not_run) for b in blocks] == [
        (2, "python", "print(1)\n", None),
        (7, "bash", "localsync serve\n", "starts a server"),
        (10, "", "tree\n", None),
    ]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documents_have_only_runnable_or_marked_blocks(name: str) -> None:
    blocks = document_blocks(name)
    assert sum(b.lang == "python" for b in blocks) >= 5
    for block in blocks:
        assert block.lang in ("", *RUN_LANGUAGES), (
            f"{name}:{block.line}: a ```{block.lang} block; this test runs only "
            f"{' and '.join(RUN_LANGUAGES)} (or mark the block not run, with a reason)"
        )
        if block.lang == "":
            assert block.not_run is None, f"{name}:{block.line}: marker on a non-code block"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documents_name_existing_modules_and_paths(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    missing = sorted(
        {n for n in DOTTED_NAME.findall(text) if not resolves(n)}
        | {
            p
            for p in REPO_PATH.findall(text)
            if not (ROOT / p).exists() and not p.startswith(CREATED_PATHS)
        }
    )
    assert not missing, f"{name} names modules, attributes or paths that do not exist: {missing}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_document_code_block_runs(name: str, tmp_path: Path) -> None:
    blocks = [b for b in document_blocks(name) if b.lang in RUN_LANGUAGES]
    runtime_dir = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))  # socket paths stay short
    env = block_env(runtime_dir)
    failures: list[str] = []
    ran = 0
    try:
        for block in blocks:
            if block.not_run is not None:
                continue
            if "pip install" in block.code:
                failures.append(
                    f"{name}:{block.line} ({block.lang} block) would install packages: "
                    "not run; mark it <!-- not run: <reason> -->"
                )
                continue
            ran += 1
            why = run_block(block, tmp_path, env)
            if why is not None:
                failures.append(f"{name}:{block.line} ({block.lang} block) {why}")
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    skipped = [f"{name}:{b.line}: {b.not_run}" for b in blocks if b.not_run is not None]
    print(f"ran {ran} blocks of {name}; not run:\n" + "\n".join(skipped))
    if failures:
        pytest.fail(
            f"{len(failures)} of {ran} {name} code blocks failed:\n\n" + "\n\n".join(failures),
            pytrace=False,
        )
