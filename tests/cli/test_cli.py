"""The ``localsync`` command on first contact: real invocations (``python -m localsync.cli``)
against real sockets, files and pipes.

An ordinary mistake (a port in use, a host that does not resolve, a file where a folder
belongs, a key pair that is already there) ends with one line on stderr,
``localsync NAME: error: ...``, and exit status 2, never a traceback; argparse's own checks
(``--port 99999``) print the usage before that line, as argparse always does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from localsync.persisters._filestore import encode_content, write_atomic

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run ``localsync ARGS``. A command that should have refused but started serving instead
    (it printed a first line on stdout and kept running) is stopped, and its result returned
    for the assertions to fail on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localsync.cli", *args],
        cwd=cwd,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # (unbuffered: communicate() below reads what readline() left)
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()
    if first and proc.poll() is None and any(word in first for word in ("listening", "publishers")):
        proc.kill()  # it serves: the mistake went unnoticed
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, first + out.decode(), err.decode())


def assert_usage_error(result: Result, command: str, *, usage_first: bool = False) -> str:
    """Exit status 2, no traceback, and exactly one ``localsync COMMAND: error:`` line, the
    last; nothing else on stderr unless argparse printed its usage first. Returns the line."""
    prefix = f"localsync {command}: error: "
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result
    assert lines, result
    assert [line for line in lines if line.startswith(prefix)] == [lines[-1]], result.stderr
    if usage_first:
        assert lines[0].startswith(f"usage: localsync {command}"), result.stderr
    else:
        assert len(lines) == 1, result.stderr
    return lines[-1][len(prefix) :]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1 (and its successor free, for a hub)."""
    for _ in range(50):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            port: int = listener.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            listener.listen()
            yield port
            return
    pytest.fail("no free port pair")


# -- serve ------------------------------------------------------------------------------------


def test_serve_on_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = cli("serve", "--no-persist", "--port", str(taken_port), cwd=tmp_path)
    message = assert_usage_error(result, "serve")
    assert str(taken_port) in message and "in use" in message


def test_serve_on_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    result = cli("serve", "--no-persist", "--host", "nonexistent.invalid", cwd=tmp_path)
    assert "nonexistent.invalid" in assert_usage_error(result, "serve")


@pytest.mark.parametrize("port", ["-1", "65536", "99999"])
def test_serve_refuses_a_port_out_of_range(tmp_path: Path, port: str) -> None:
    # (99999 used to listen on 99999 % 65536 = 34463, 65536 on a random port)
    result = cli("serve", "--no-persist", "--port", port, cwd=tmp_path)
    message = assert_usage_error(result, "serve", usage_first=True)
    assert message.startswith("argument --port:") and port in message
    assert result.stdout == ""


def test_serve_with_data_naming_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    result = cli("serve", "--port", "0", "--data", "afile", cwd=tmp_path)
    assert "afile: not a folder" in assert_usage_error(result, "serve")
    result = cli("serve", "--port", "0", "--data", "afile/rooms", cwd=tmp_path)
    assert "afile/rooms" in assert_usage_error(result, "serve")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_serve_refuses_summary_seconds_that_are_not_positive(tmp_path: Path) -> None:
    result = cli("serve", "--no-persist", "--port", "0", "--summary-seconds", "0", cwd=tmp_path)
    assert "--summary-seconds" in assert_usage_error(result, "serve")


# -- hub --------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["nonsense", "tcp://127.0.0.1", "tcp://127.0.0.1:65535"])
def test_hub_with_a_bad_bind_address(tmp_path: Path, address: str) -> None:
    result = cli("hub", "--bind", address, cwd=tmp_path)
    assert_usage_error(result, "hub")
    assert result.stdout == ""


def test_hub_on_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = cli("hub", "--bind", f"tcp://127.0.0.1:{taken_port}", cwd=tmp_path)
    assert "in use" in assert_usage_error(result, "hub")


def test_hub_without_bind(tmp_path: Path) -> None:
    assert "--bind" in assert_usage_error(cli("hub", cwd=tmp_path), "hub")


def test_hub_with_a_secret_key_file_that_is_missing(tmp_path: Path, taken_port: int) -> None:
    result = cli(
        "hub",
        "--bind",
        f"tcp://127.0.0.1:{taken_port + 1}",
        "--secret-key",
        "missing.key_secret",
        cwd=tmp_path,
    )
    assert "missing.key_secret" in assert_usage_error(result, "hub")


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_keygen_into_a_folder_that_cannot_be_made(tmp_path: Path, where: str) -> None:
    if where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip("no /proc")
        folder = "/proc/nokeys"
    else:
        (tmp_path / "afile").write_text("")
        folder = str(tmp_path / "afile" / "keys")
    result = cli("hub", "--keygen", folder, cwd=tmp_path)
    assert folder in assert_usage_error(result, "hub")


def test_keygen_refuses_to_replace_a_key_pair_without_force(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made = cli("hub", "--keygen", str(keys), "--name", "hub", cwd=tmp_path)
    assert made.returncode == 0 and "public key" in made.stdout, made
    before = {name: (keys / name).read_bytes() for name in ("hub.key", "hub.key_secret")}

    again = cli("hub", "--keygen", str(keys), "--name", "hub", cwd=tmp_path)
    assert "--force" in assert_usage_error(again, "hub")
    assert {name: (keys / name).read_bytes() for name in before} == before
    (keys / "hub.key").unlink()  # half a pair left: still refused (the secret would be lost)
    assert "--force" in assert_usage_error(
        cli("hub", "--keygen", str(keys), "--name", "hub", cwd=tmp_path), "hub"
    )

    forced = cli("hub", "--keygen", str(keys), "--name", "hub", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "public key" in forced.stdout, forced
    assert (keys / "hub.key_secret").read_bytes() != before["hub.key_secret"]
    assert (keys / "hub.key").exists()
    assert (keys / "hub.key_secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["../escape", "sub/name", ".hidden", ""])
def test_keygen_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "sub").mkdir()
    result = cli("hub", "--keygen", str(keys), "--name", name, cwd=tmp_path)
    assert "--name" in assert_usage_error(result, "hub", usage_first=True)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_a_path_that_does_not_exist(tmp_path: Path) -> None:
    result = cli("inspect", str(tmp_path / "nope"), cwd=tmp_path)
    assert "no such file or folder" in assert_usage_error(result, "inspect")


def test_inspect_an_empty_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a store")
    result = cli("inspect", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"localsync inspect: no persisted stores in {tmp_path} "
        "(looked for JSON files and SQLite databases directly inside it)"
    ]


def test_inspect_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    """``localsync inspect BIG | head -1``: the output (MBs) cannot fit in the pipe, so the
    command is still writing when the reader goes away."""
    rows = {
        f"r{i:05}": [{"text": ["x" * 200, "NjEtLV-----VnP9x", 0]}, "", 0] for i in range(10_000)
    }
    path = tmp_path / "big.json"
    write_atomic(path, encode_content([[{"t": [rows, "", 0]}, "", 0], [{}, "", 0]]))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "localsync.cli", "inspect", str(path)),
            *("--max-rows", "0", "--width", "0"),
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # head -1 has what it wanted
    err = proc.stderr.read()
    proc.stderr.close()
    status = proc.wait(timeout=120)
    assert first.startswith(f"== {path} (file)")
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert "Traceback" not in err, err
    assert err == ""
    assert status == 1  # as Python's documentation advises for a broken pipe


# -- the command itself -----------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"localsync {version('localsync')}"


def test_help_is_plain_text_and_shows_defaults(tmp_path: Path) -> None:
    top = cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "``" not in top.stdout
    assert all(command in top.stdout for command in ("serve", "hub", "inspect", "--version"))

    env = {**ENV, "LOCALSYNC_TOKEN": "do-not-print-me"}
    serve = cli("serve", "--help", cwd=tmp_path, env=env)
    assert serve.returncode == 0
    text = " ".join(serve.stdout.split())  # (argparse wraps lines)
    assert "(default: 8048)" in text and "(default: 127.0.0.1)" in text
    summary = text[text.index("--summary-seconds SUMMARY_SECONDS") :]
    assert summary.split()[2] != "--quiet"  # it has help text
    assert "(default: 30.0)" in summary
    assert "do-not-print-me" not in serve.stdout  # a token is a secret

    hub = cli("hub", "--help", cwd=tmp_path)
    assert "--force" in hub.stdout and "(default: hub)" in " ".join(hub.stdout.split())
