"""Connections at scale: idle connections and subscribers held, the broker's memory per
connection, and the small-frame rate beside them.

One broker (``turbine serve`` on a free loopback port, its descriptor limit
raised to the hard limit as at every start).  This process opens ``--idle``
connections that greet the broker and then say nothing, then ``--subscribers``
clients with one subscription each (to a source nobody writes: held, not fed).
After each step it runs a 64 B 1 -> 1 rate test (a publisher and a
subscriber, each a process of its own, on a source of their own), reads the
broker's resident memory (``VmRSS``), then opens and closes ``CLOSES``
connections one at a time, each after the broker's trim for the one before
(``TRIM_INTERVAL_S``): the broker's CPU per close is what a close costs it
with that many connections held.  Prints a table::

    .venv/bin/python benchmarks/connections.py
    .venv/bin/python benchmarks/connections.py --idle 1000 --subscribers 100 --frames 100000

Needs a descriptor limit above the connections held, for this process and the
broker (``ulimit -Hn``): it says so and stops otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import sys
import time
from typing import Any

import click
import trio

sys.path.insert(0, os.path.dirname(__file__))
from throughput import Broker  # noqa: E402  (a sibling script, not a package)

import turbine  # noqa: E402
from turbine import messages as m  # noqa: E402
from turbine._address import parse_address  # noqa: E402
from turbine._client_link import handshake  # noqa: E402  (a bare greeting: an idle connection)
from turbine._constants import PROTOCOL_VERSION, TRIM_INTERVAL_S  # noqa: E402
from turbine.protocol import NEED_DATA, Connection, Role  # noqa: E402

#: Connections opened at once (the listen backlog and the loop's fairness, not a limit).
CONNECT_AT_ONCE = 200
#: Descriptors this process needs beyond the connections it holds.
SPARE_DESCRIPTORS = 200
RATE_SOURCE = "daq_rate_data_source"
HELD_PATTERN = "daq_held_data_source/x"
#: Connections opened and closed one by one after each step, for the broker's CPU per close.
CLOSES = 5


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def close_cost(address: str, broker: Broker) -> float:
    """The broker's CPU seconds per connection close: ``CLOSES`` times, greet it (as
    :func:`handshake` does, with a plain socket: this may run inside a trio run) and
    close, then wait past its trim."""
    host, port = parse_address(address)
    cpu = broker.cpu_s()
    for _ in range(CLOSES):
        with socket.create_connection((host, port), timeout=60) as sock:
            proto = Connection(Role.CLIENT)
            while proto.next_event() is NEED_DATA:
                proto.receive_data(sock.recv(65536))
            hello = m.ClientHello(protocol=PROTOCOL_VERSION, name="closer")
            sock.sendall(b"".join(proto.send(hello)))
        time.sleep(TRIM_INTERVAL_S + 0.3)
    return (broker.cpu_s() - cpu) / CLOSES


def _rate_subscriber(address: str, frames: int, ready: Any, out: Any) -> None:
    async def main() -> None:
        async with turbine.open_client(address, name="rate-sub") as client:
            async with client.subscribe(f"{RATE_SOURCE}/x", start="now") as sub:
                ready.release()
                got = missed = 0
                first = 0.0
                with trio.fail_after(300):
                    while got + missed < frames:
                        for item in await sub.receive_batch():
                            if isinstance(item, turbine.Gap):
                                missed += item.missed
                            else:
                                got += 1
                        if not first:
                            first = time.perf_counter()
                rate = (got - 1) / (time.perf_counter() - first) if got > 1 else 0.0
                out.put((rate, missed))

    trio.run(main)


def _rate_publisher(address: str, frames: int, size: int, cache_bytes: int | None) -> None:
    async def main() -> None:
        async with turbine.open_client(address, name="rate-pub") as client:
            src = await client.open_source(
                RATE_SOURCE,
                channels={"x": "application/octet-stream"},
                # Room for every frame unless told otherwise: a lag is not a loss.
                cache_frames=frames,
                cache_bytes=cache_bytes or frames * max(2 * size, 128),
            )
            put = src.put
            frame = bytes(size)
            for _ in range(frames):
                await put("x", frame)
            await src.flush()

    trio.run(main)


def rate(
    address: str,
    frames: int,
    size: int = 64,
    subscribers: int = 1,
    cache_bytes: int | None = None,
) -> tuple[float, int]:
    """Frames of ``size`` bytes a second from one publisher to each of ``subscribers``
    (first to last receive, the slowest subscriber's), and the most any subscriber
    missed (evicted before it read them)."""
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Semaphore(0), ctx.Queue()
    subs = [
        ctx.Process(target=_rate_subscriber, args=(address, frames, ready, out))
        for _ in range(subscribers)
    ]
    for sub in subs:
        sub.start()
    for _ in subs:
        if not ready.acquire(timeout=60):
            for sub in subs:
                sub.terminate()
            raise click.ClickException("a rate subscriber did not subscribe within 60 s")
    pub = ctx.Process(target=_rate_publisher, args=(address, frames, size, cache_bytes))
    pub.start()
    pub.join(300)
    if pub.exitcode != 0:
        for sub in subs:
            sub.terminate()
        raise click.ClickException(f"the rate publisher failed (exit code {pub.exitcode})")
    results = [out.get(timeout=300) for _ in subs]
    for sub in subs:
        sub.join(10)
    return min(float(r) for r, _ in results), max(int(m) for _, m in results)


async def hold_idle(address: str, count: int, held: list[Any]) -> None:
    """Open ``count`` connections that greet the broker and then stay silent."""

    async def one(i: int) -> None:
        stream, *_ = await handshake(address, f"idle{i}", 60.0, None, None)
        held.append(stream)

    for start in range(0, count, CONNECT_AT_ONCE):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(start + CONNECT_AT_ONCE, count)):
                nursery.start_soon(one, i)


async def hold_subscribers(
    nursery: trio.Nursery, address: str, count: int, stop: trio.Event
) -> None:
    """Start ``count`` clients with one subscription each; return once all are subscribed."""
    subscribed = trio.Semaphore(0)

    async def one(i: int) -> None:
        async with turbine.open_client(address, name=f"sub{i}", connect_timeout=60) as client:
            async with client.subscribe(HELD_PATTERN, start="now"):
                subscribed.release()
                await stop.wait()

    for start in range(0, count, CONNECT_AT_ONCE):
        for i in range(start, min(start + CONNECT_AT_ONCE, count)):
            nursery.start_soon(one, i)
        for _ in range(start, min(start + CONNECT_AT_ONCE, count)):
            await subscribed.acquire()


@click.command()
@click.option("--idle", "idle", default=10_000, show_default=True, help="Idle connections.")
@click.option("--subscribers", default=1_000, show_default=True, help="Subscribers held.")
@click.option("--frames", default=300_000, show_default=True, help="Frames per rate test.")
def main(idle: int, subscribers: int, frames: int) -> None:
    """Hold idle connections and subscribers; print the broker's memory and the 64 B rate."""
    need = idle + subscribers + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:
        raise click.ClickException(
            f"this needs {need} descriptors and the hard limit is {hard}: "
            "raise it (ulimit -Hn) or hold fewer (--idle, --subscribers)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    broker = Broker()
    rows: list[tuple[str, int, float, float, tuple[float, int], float, float]] = []

    def row(label: str, held: int, took: float) -> None:
        # The rate test first: its ring is full from the first row on, so
        # the memory added between rows is the connections'.
        cpu = broker.cpu_s()
        measured = rate(broker.address, frames)
        per_frame = (broker.cpu_s() - cpu) / frames * 1e6
        mib = rss_mib(broker.process.pid)
        rows.append(
            (label, held, mib, took, measured, per_frame, close_cost(broker.address, broker))
        )

    async def run() -> None:
        row("broker alone", 0, 0.0)
        streams: list[Any] = []
        t0 = time.perf_counter()
        await hold_idle(broker.address, idle, streams)
        row(f"+ {idle:,} idle connections", idle, time.perf_counter() - t0)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            await hold_subscribers(nursery, broker.address, subscribers, stop)
            took = time.perf_counter() - t0
            async with turbine.open_client(broker.address, name="status") as client:
                files = (await client.status()).get("files", {})
            await trio.to_thread.run_sync(
                row, f"+ {subscribers:,} subscribers", idle + subscribers, took
            )
            stop.set()
        for s in streams:
            await s.aclose()
        click.echo(f"broker descriptor limit (status.files): {files}")

    try:
        trio.run(run)
    finally:
        broker.stop()
    load = os.getloadavg()
    click.echo(
        f"# load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs, "
        f"{frames:,} frames per rate test"
    )
    click.echo(
        "| state | connections | broker RSS MiB | KiB per added connection | connect s "
        "| 64 B 1->1 frames/s | missed | broker CPU us per frame in it "
        "| broker CPU ms per close |"
    )
    click.echo("|---|---|---|---|---|---|---|---|---|")
    prev_held, prev_mib = 0, rows[0][2]
    for label, held, mib, took, (r, missed), cpu, close in rows:
        per = f"{(mib - prev_mib) * 1024 / (held - prev_held):.1f}" if held > prev_held else "-"
        click.echo(
            f"| {label} | {held:,} | {mib:.1f} | {per} | {took:.1f} | {r:,.0f} | {missed:,} "
            f"| {cpu:.2f} | {close * 1e3:.0f} |"
        )
        prev_held, prev_mib = held, mib


if __name__ == "__main__":
    main()
