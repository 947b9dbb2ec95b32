"""A real ``turbine serve`` against hostile and broken clients: one message must
never stall, bloat or break the broker for everyone."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from test_cli import TURBINE, Serve, ok, stop, tb

import turbine
from turbine._constants import PROTOCOL_VERSION

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


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_connection(address: str, name: str = "raw") -> socket.socket:
    """A blocking socket past the handshake (the broker's hello read and dropped)."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = msgpack.packb({"type": "client_hello", "protocol": PROTOCOL_VERSION, "name": name})
    sock.sendall(struct.pack(">II", len(head), 0) + head)
    return sock


def test_declared_lengths_take_no_memory_until_the_bytes_arrive(server):
    ok(server.address, "status")
    before = rss(server.proc.pid)
    # The finding: twelve of these took the broker from 29 to 810 MiB.
    socks = [raw_connection(server.address) for _ in range(12)]
    try:
        for sock in socks:
            sock.sendall(struct.pack(">II", 20, 68157440) + b"\x85")
        ok(server.address, "status")  # every one of them has been read by now
        grown = rss(server.proc.pid) - before
    finally:
        for sock in socks:
            sock.close()
    assert grown < 32 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("durable", [False, True])
def test_sequence_numbers_after_a_restart_are_what_the_docs_say(tmp_path, durable):
    # docs/protocol.rst, "sequence number": memory only, a restart starts every
    # channel at 1 again; with --data-dir the channels continue.
    args = ["--data-dir", str(tmp_path / "data")] if durable else []
    seqs = []
    for run in ("1", "2"):
        server = Serve(*args)
        try:
            ok(server.address, "put", f"{SRC}/x", run)
            out = ok(server.address, "fetch", f"{SRC}/x", "--newest", "1", "--format", "json")
            seqs.append(json.loads(out)["seq"])
        finally:
            server.stop()
    assert seqs == ([1, 2] if durable else [1, 1])


def test_deleting_a_source_gives_its_memory_back(server):
    # Frame buffers come from the heap (reused by later frames, no page faults
    # per frame); the broker hands the freed pages back when a source is deleted,
    # not only when a connection closes: this client stays connected throughout.
    with turbine.connect(server.address, name="rss") as client:
        src = client.open_source(
            SRC, channels={"x": "application/octet-stream"}, cache_bytes=128 * 2**20
        )
        before = rss(server.proc.pid)
        frame = bytes(2**20)
        for _ in range(96):
            src.put("x", frame)
        src.flush()
        held = rss(server.proc.pid) - before
        client.delete(SRC)
        client.status()  # the delete is applied and the trim asked for by now
        deadline = time.monotonic() + 10
        while (left := rss(server.proc.pid) - before) > 24 * 2**20:
            assert time.monotonic() < deadline, f"RSS still {left / 2**20:.0f} MiB over"
            client.status()
    assert held > 80 * 2**20, f"96 MiB of frames held only {held / 2**20:.0f} MiB"
