"""Ports for a child process to listen on, chosen by the test before the child starts.

A test that can give a process port 0 and read back what it bound should do
that.  Where a process must be told its port (a site file's viewer, ffmpeg's
``-listen``), or a test needs a port nobody listens on, these choose one.

The usual way, binding port 0 and closing the socket, hands the port straight
back to the kernel's ephemeral range: on a machine where other tests run, the
next process to bind port 0 or to connect anywhere can take it before the child
binds it (seen: the demo's viewer URL answered by some other broker).  These
ports come from outside that range (``net.ipv4.ip_local_port_range``), where
only a process that names the port can get it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000  # below: the well-known and configured ports (3333, 8080 ...)


def _ephemeral() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that nothing on 127.0.0.1 listens on now, outside the
    ephemeral range (inside it only if the range leaves no room)."""
    ephemeral = _ephemeral()
    candidates = [p for p in range(_LOWEST, 65536) if p not in ephemeral]
    if len(candidates) < 100 * n:
        candidates = list(range(_LOWEST, 65536))
    rng = random.Random()  # not the tests' seeded one: two runs must not agree
    ports: list[int] = []
    for port in rng.sample(candidates, len(candidates)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        ports.append(port)
        if len(ports) == n:
            return ports
    raise AssertionError(f"fewer than {n} free ports on 127.0.0.1")


def free_port() -> int:
    """One port, as :func:`free_ports`."""
    (port,) = free_ports(1)
    return port
