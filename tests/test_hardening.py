"""A real ``turbine serve`` against hostile and broken clients: one message must
never stall, bloat or break the broker for everyone."""

from __future__ import annotations

import subprocess

import pytest
from test_cli import TURBINE, Serve, ok, stop, tb

pytestmark = pytest.mark.slow

SRC = "daq_a_data_source"


@pytest.fixture
def server():
    server = Serve()
    try:
        yield server
    finally:
        server.stop()


def test_a_pathological_pattern_does_not_stall_the_broker(server):
    ok(server.address, "put", f"{SRC}/x", "1")
    tap = subprocess.Popen(
        [TURBINE, "tap", "*" * 1000 + "/nomatch", "--turbine", server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for pattern in ("*" * 12 + "Q", "*a" * 500 + "Q"):
            done = tb(server.address, "ls", pattern, timeout=8)
            assert done.returncode == 0, done.stderr
        done = tb(server.address, "status", timeout=8)  # froze forever before
        assert done.returncode == 0, done.stderr
    finally:
        stop(tap)
