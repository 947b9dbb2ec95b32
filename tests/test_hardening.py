"""A real ``turbine serve`` against hostile and broken clients: one message must
never stall, bloat or break the broker for everyone."""

from __future__ import annotations

import resource
import socket
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from test_cli import TURBINE, Serve, ok, read_line, stop, tb

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
    # A hang detector: the backtracking matcher froze the broker for minutes;
    # 30 s is far above the 1-2 s a CLI process takes to start at load 10 (imports).
    try:
        for pattern in ("*" * 12 + "Q", "*a" * 500 + "Q"):
            done = tb(server.address, "ls", pattern, timeout=30)
            assert done.returncode == 0, done.stderr
        done = tb(server.address, "status", timeout=30)  # froze forever before
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
            with turbine.connect(server.address, name="seq") as client:
                src = client.open_source(SRC, channels={"x": "text/plain"})
                src.put("x", run.encode())
                src.flush()  # acknowledged: kept across the kill below, with --data-dir
                (frame,) = client.fetch(f"{SRC}/x", newest=1)
            seqs.append(frame.seq)
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


def first_message(address: str) -> dict:
    """Connect and read the broker's first message (its hello, or a refusal); the socket
    stays open, returned as the dict's ``sock``."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    data = b""
    while len(data) < 8 or len(data) < 8 + sum(struct.unpack(">II", data[:8])):
        chunk = sock.recv(65536)
        assert chunk, "the broker closed without a word"
        data += chunk
    (header_len,) = struct.unpack(">I", data[:4])
    msg = msgpack.unpackb(data[8 : 8 + header_len])
    msg["sock"] = sock
    return msg


def test_out_of_descriptors_a_client_is_refused_at_once_and_told_why():
    # The soft limit is raised to the hard one at start; at the hard limit a
    # new client gets an error instead of waiting for a hello that never comes.
    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 64))

    proc = subprocess.Popen(
        [TURBINE, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_descriptors,
    )
    held: list[socket.socket] = []
    try:
        address = read_line(proc.stdout).split()[-1]
        refusals = []
        for _ in range(80):
            msg = first_message(address)
            held.append(msg["sock"])
            if msg["type"] != "hello":
                refusals.append(msg)
                if len(refusals) == 3:
                    break
        assert len(refusals) == 3, "never out of descriptors at a hard limit of 64"
        assert len(held) > 40, "the soft limit of 40 was not raised"
        for msg in refusals:
            assert (msg["type"], msg["id"], msg["code"]) == ("error", None, "capacity")
            assert "out of file descriptors" in msg["message"]
            assert msg["sock"].recv(1) == b""  # and closed
        for sock in held[:10]:
            sock.close()
        deadline = time.monotonic() + 10
        while (msg := first_message(address))["type"] != "hello":  # until the closes are seen
            msg["sock"].close()
            assert time.monotonic() < deadline, "still refusing after connections closed"
        msg["sock"].close()
        while True:  # the broker may not have seen the probe close yet (its descriptor in use)
            try:
                with turbine.connect(address, name="status") as client:
                    status = client.status()
                break
            except turbine.ConnectionFailed as exc:
                assert "out of file descriptors" in str(exc)
                assert time.monotonic() < deadline, "still refusing after connections closed"
        assert status["files"]["limit"] == 64
        assert status["files"]["refused"] >= 3
        assert "capacity_refused" in {c["code"] for c in status["closed"]}
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert err.count("out of file descriptors") == 1, err  # once, not per refusal
