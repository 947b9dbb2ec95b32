"""The latency floor of this machine: what a bare relay costs, next to the broker.

The shared harness's latency row (1,000 B frames at 1,000 frames/s, one-way,
publisher, relay and subscriber each a process).  The publisher and the
subscriber are bare trio sockets; the relay in the middle is, row by row:

* ``sync``: blocking ``recv_into`` and ``sendall`` (what a C server's loop
  does, in Python: the kernel wakes the process straight from the socket);
* ``trio``: the same two calls on trio sockets (a wait in epoll, a pass of
  trio's run loop per frame): the least any trio broker does per frame;
* ``spin``: a non-blocking ``recv_into`` in a busy loop (the relay never
  sleeps: it burns a core, and shows what a wake-up costs);
* ``turbine``: ``turbine serve``, the publisher and subscriber turbine
  clients making the harness adapter's calls (``flush``, ``trio.sleep``,
  ``put``; iterating a subscription).

Prints p50/p99 one-way latency and the relay's CPU microseconds per frame
(``/proc/<pid>/task/*/schedstat``, over the timed frames).  On an idle core
a wake-up's CPU is mostly cold caches: compare the rows within one run.

Run: ``.venv/bin/python benchmarks/latency_floor.py [--frames 3000] [--relays sync,trio,spin,turbine]``
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cpu_seconds  # noqa: E402  (a sibling script, not a package)

SIZE = 1000
RATE = 1000.0
WARMUP = 300
STAMP = struct.Struct("<q")  # the publisher's time.monotonic_ns()
SOURCE, CHANNEL = "daq_floor_data_source", "x"


# --- the relays ----------------------------------------------------------------------


def _listeners() -> tuple[socket.socket, socket.socket]:
    """Two listening sockets (publisher's, subscriber's), their ports on stdout."""
    pub, sub = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    print(pub.getsockname()[1], sub.getsockname()[1], flush=True)
    return pub, sub


def _accept(pub_l: socket.socket, sub_l: socket.socket) -> tuple[socket.socket, socket.socket]:
    sub, _ = sub_l.accept()
    pub, _ = pub_l.accept()
    sub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return pub, sub


def relay_sync() -> None:
    pub, sub = _accept(*_listeners())
    buf = bytearray(65536)
    while n := pub.recv_into(buf):
        sub.sendall(memoryview(buf)[:n])


def relay_spin() -> None:
    pub, sub = _accept(*_listeners())
    pub.setblocking(False)
    buf = bytearray(65536)
    while True:
        try:
            n = pub.recv_into(buf)
        except BlockingIOError:
            continue
        if not n:
            return
        sub.sendall(memoryview(buf)[:n])


async def relay_trio() -> None:
    pub_l, sub_l = _listeners()
    pub_l.setblocking(False)
    sub_l.setblocking(False)
    sub_t, pub_t = trio.socket.from_stdlib_socket(sub_l), trio.socket.from_stdlib_socket(pub_l)
    sub, _ = await sub_t.accept()
    pub, _ = await pub_t.accept()
    sub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(65536)
    while n := await pub.recv_into(buf):
        view = memoryview(buf)[:n]
        while view:
            view = view[await sub.send(view) :]


# --- publisher and subscriber --------------------------------------------------------


async def publish(port: int, frames: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    pad = bytes(SIZE - STAMP.size)
    start = trio.current_time()
    for i in range(frames):
        await trio.sleep_until(start + i / RATE)
        await stream.send_all(STAMP.pack(time.monotonic_ns()) + pad)
    await stream.aclose()


async def publish_turbine(address: str, frames: int) -> None:
    import turbine

    pad = bytes(SIZE - STAMP.size)
    async with turbine.open_client(address) as tb:
        src = await tb.open_source(SOURCE, channels={CHANNEL: "application/octet-stream"})
        start = trio.current_time()
        for i in range(frames):
            await src.flush()
            await trio.sleep_until(start + i / RATE)
            await src.put(CHANNEL, STAMP.pack(time.monotonic_ns()) + pad)
        await src.flush()


async def subscribe(port: int, frames: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got, pending, lat = 0, b"", []
    while got < frames:
        data = await stream.receive_some(65536)
        now = time.monotonic_ns()
        pending += data
        while len(pending) >= SIZE:
            if got == WARMUP:
                print("timing", flush=True)
            if got >= WARMUP:
                lat.append(now - STAMP.unpack_from(pending)[0])
            pending, got = pending[SIZE:], got + 1
    _print_latencies(lat)


async def subscribe_turbine(address: str, frames: int) -> None:
    import turbine

    got, lat = 0, []
    async with turbine.open_client(address) as tb:
        async with tb.subscribe(f"{SOURCE}/{CHANNEL}", start="now") as sub:
            print("ready", flush=True)
            async for item in sub:
                if not isinstance(item, turbine.Frame):
                    continue
                now = time.monotonic_ns()
                if got == WARMUP:
                    print("timing", flush=True)
                if got >= WARMUP:
                    lat.append(now - STAMP.unpack_from(item.data)[0])
                got += 1
                if got == frames:
                    break
    _print_latencies(lat)


def _print_latencies(lat: list[int]) -> None:
    lat.sort()
    print(lat[len(lat) // 2], lat[int(len(lat) * 0.99)], flush=True)


# --- the runner ----------------------------------------------------------------------


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", *args], stdout=subprocess.PIPE, text=True
    )


def measure(relay: str, frames: int) -> tuple[float, float, float]:
    """One row: p50 and p99 latency (ms) and the relay's CPU µs per timed frame."""
    if relay == "turbine":
        broker = subprocess.Popen(
            [sys.executable, "-m", "turbine", "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert broker.stdout is not None
        target = broker.stdout.readline().split()[-1]
        sub = _child("sub-turbine", target, str(frames))
        assert sub.stdout is not None
        sub.stdout.readline()  # subscribed
        pub = _child("pub-turbine", target, str(frames))
        middle = broker
    else:
        middle = _child("relay-" + relay)
        assert middle.stdout is not None
        pub_port, sub_port = middle.stdout.readline().split()
        sub = _child("sub", sub_port, str(frames))
        time.sleep(0.2)  # connected and accepted before the publisher's first frame
        pub = _child("pub", pub_port, str(frames))
    assert sub.stdout is not None
    sub.stdout.readline()  # timing
    cpu0 = cpu_seconds(middle.pid)
    p50, p99 = map(int, sub.stdout.readline().split())
    cpu = cpu_seconds(middle.pid) - cpu0
    pub.wait()
    sub.wait()
    if relay in ("turbine", "spin"):
        middle.terminate()
    middle.wait()
    return p50 / 1e6, p99 / 1e6, cpu / (frames - WARMUP) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--relays", default="sync,trio,spin,turbine")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "relay-sync":
            relay_sync()
        elif role == "relay-spin":
            relay_spin()
        elif role == "relay-trio":
            trio.run(relay_trio)
        elif role == "pub":
            trio.run(publish, int(rest[0]), int(rest[1]))
        elif role == "sub":
            trio.run(subscribe, int(rest[0]), int(rest[1]))
        elif role == "pub-turbine":
            trio.run(publish_turbine, rest[0], int(rest[1]))
        elif role == "sub-turbine":
            trio.run(subscribe_turbine, rest[0], int(rest[1]))
        return
    print(f"1,000 B at {RATE:,.0f}/s, {args.frames - WARMUP} timed frames, one-way")
    print("| relay | p50 ms | p99 ms | relay CPU us per frame |")
    print("|---|---|---|---|")
    for relay in args.relays.split(","):
        p50, p99, cpu = measure(relay, args.frames)
        print(f"| {relay} | {p50:.3f} | {p99:.3f} | {cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
