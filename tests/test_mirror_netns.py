"""A mirror across a real network boundary: A and B in two network namespaces
joined by a veth pair, the link shaped with ``tc``, and cut for 10 s.

Needs root (``ip netns``); skipped with the reason where that is not allowed.
The brokers, the mirror and the clients are processes inside the namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.netns import Link
from tests.test_cli import TURBINE, read_line

pytestmark = pytest.mark.slow

SRC = "daq_rig_data_source"
PORT = 3333  # each namespace has its own ports


def serve(link: Link, ns: str, host: str) -> None:
    proc = link.start(ns, TURBINE, "serve", "--host", host, "--port", str(PORT), "--insecure")
    line = read_line(proc.stdout)
    assert line.startswith(f"turbine listening on {host}:{PORT}"), line


CLIENT = textwrap.dedent(
    """
    import json, sys, trio
    from turbine import open_client

    async def main(address, what, first, last):
        with trio.fail_after(60):
            async with open_client(address, name="daq") as tb:
                if what == "put":
                    src = await tb.open_source("{src}", cache_frames=100000)
                    for i in range(first, last + 1):
                        await src.put("x", b"frame %d" % i, timestamp=float(i))
                    await tb.flush()
                    print(json.dumps([]))
                    return
                got = []
                async with tb.subscribe("{src}/x", start=first) as sub:
                    while len(got) < last - first + 1:
                        for item in await sub.receive_batch():
                            seq = getattr(item, "seq", None)
                            got.append([seq, bytes(item.data).decode() if seq else repr(item)])
                print(json.dumps(got))

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    """
).replace("{src}", SRC)


def client(link: Link, tmp_path: Path, ns: str, address: str, what: str, first: int, last: int):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = link.check(ns, sys.executable, str(script), address, what, str(first), str(last))
    return json.loads(out)


def frames(first: int, last: int) -> list[list[object]]:
    return [[i, f"frame {i}"] for i in range(first, last + 1)]


def start_mirror(link: Link) -> subprocess.Popen[str]:
    """The mirror beside B (pull), across the link from A."""
    proc = link.start(
        link.b,
        TURBINE,
        "mirror",
        "--from",
        f"{link.addr_a}:{PORT}",
        "--to",
        f"127.0.0.1:{PORT}",
        "--poll",
        "0.1",
        "daq_*",
    )
    return proc


def test_across_a_delayed_lossy_link_the_mirror_keeps_up(link, tmp_path):
    shaped = link.shape("netem", "delay", "20ms", "5ms", "loss", "1%")
    if shaped.returncode:
        pytest.skip(f"tc netem is not available here ({shaped.stderr.strip()})")
    serve(link, link.a, "0.0.0.0")
    serve(link, link.b, "127.0.0.1")
    start_mirror(link)
    a, b = f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT}"
    client(link, tmp_path, link.a, a, "put", 1, 2000)
    assert client(link, tmp_path, link.b, b, "get", 1, 2000) == frames(1, 2000)


def test_the_mirror_recovers_after_the_link_is_cut_for_10_s(link, tmp_path):
    # a slow link (1 Mbit/s) where the kernel has tbf; netem where it has that too
    link.shape("tbf", "rate", "1mbit", "burst", "32kbit", "latency", "100ms")
    serve(link, link.a, "0.0.0.0")
    serve(link, link.b, "127.0.0.1")
    mirror = start_mirror(link)
    a, b = f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT}"
    client(link, tmp_path, link.a, a, "put", 1, 500)
    assert client(link, tmp_path, link.b, b, "get", 1, 500) == frames(1, 500)
    link.cut(up=False)
    client(link, tmp_path, link.a, a, "put", 501, 1000)  # over lo, inside A's namespace
    time.sleep(10)  # real time: the cut the issue asks for, in real network stacks
    link.cut(up=True)
    assert client(link, tmp_path, link.b, b, "get", 1, 1000) == frames(1, 1000)
    assert mirror.poll() is None  # still running
