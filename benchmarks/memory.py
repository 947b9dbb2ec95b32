"""The broker's resident memory against its ``--max-memory`` bound, per workload.

For each workload a fresh broker (``turbine serve --max-memory LIMIT`` on a
free loopback port) takes frames from one publisher into a source whose ring
may hold half the limit, and delivers them to the subscribers (each a process
of its own), writing several times the limit in all, so the ring fills and
evicts.  Meanwhile this process samples the broker's ``VmRSS`` every 20 ms.
After the stream the source is deleted and the RSS read again once the broker
trimmed.  Prints a table with the bound of the speed issue
(``1.15 x limit + 80 MiB``)::

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --limit 128MiB --tests small,large1m
"""

from __future__ import annotations

import os
import sys
import threading
import time

import click
import trio

sys.path.insert(0, os.path.dirname(__file__))
import throughput  # noqa: E402  (a sibling script, not a package)
from connections import RATE_SOURCE, rate, rss_mib  # noqa: E402

import turbine  # noqa: E402

MiB = 2**20
#: The bound the speed issue sets: limit times this, plus BOUND_EXTRA_MIB.
BOUND_FACTOR = 1.15
BOUND_EXTRA_MIB = 80
SAMPLE_S = 0.02
#: Seconds the broker gets to trim after the delete (it trims at most once a second).
TRIM_WAIT_S = 2.5

#: name -> (frame bytes, subscribers, bytes written as a multiple of the limit, most frames)
WORKLOADS = {
    "small": (64, 1, 2, 2_000_000),
    "fanout": (64, 4, 1, 1_000_000),
    "large100k": (100_000, 1, 4, 100_000),
    "large1m": (1_000_000, 1, 4, 10_000),
}


def parse_size(text: str) -> int:
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


class Sampler(threading.Thread):
    """The highest RSS of a process, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self._done.wait(SAMPLE_S)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


async def delete_source(address: str) -> None:
    async with turbine.open_client(address, name="rate-pub") as client:  # its holder's name
        await client.delete(RATE_SOURCE)


@click.command()
@click.option("--limit", default="256MiB", show_default=True, help="The broker's --max-memory.")
@click.option("--tests", default=",".join(WORKLOADS), show_default=True, help="Workloads to run.")
def main(limit: str, tests: str) -> None:
    """Stream each workload through a broker with --max-memory LIMIT; print its peak RSS."""
    limit_bytes = parse_size(limit)
    bound = BOUND_FACTOR * limit_bytes / MiB + BOUND_EXTRA_MIB
    throughput.SERVE_ARGS.extend(["--max-memory", limit])  # the last --max-memory wins
    rows = []
    for name in tests.split(","):
        size, subscribers, times, most = WORKLOADS[name]
        frames = min(times * limit_bytes // size, most)
        broker = throughput.Broker()
        try:
            start = rss_mib(broker.process.pid)
            sampler = Sampler(broker.process.pid)
            sampler.start()
            frames_s, missed = rate(
                broker.address, frames, size, subscribers, cache_bytes=limit_bytes // 2
            )
            peak = sampler.stop()
            trio.run(delete_source, broker.address)
            time.sleep(TRIM_WAIT_S)
            after = rss_mib(broker.process.pid)
        finally:
            broker.stop()
        rows.append((name, size, subscribers, frames, start, peak, after, frames_s, missed))
    load = os.getloadavg()
    click.echo(
        f"# --max-memory {limit}, bound {bound:.0f} MiB ({BOUND_FACTOR} x limit + "
        f"{BOUND_EXTRA_MIB} MiB); load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    click.echo(
        "| workload | frames | broker RSS at start MiB | peak MiB | within bound "
        "| after delete MiB | frames/s (slowest sub) | missed |"
    )
    click.echo("|---|---|---|---|---|---|---|---|")
    for name, size, subs, frames, start, peak, after, frames_s, missed in rows:
        click.echo(
            f"| {name}: {size:,} B 1->{subs} | {frames:,} | {start:.1f} | {peak:.1f} "
            f"| {'yes' if peak <= bound else 'NO'} | {after:.1f} | {frames_s:,.0f} | {missed:,} |"
        )


if __name__ == "__main__":
    main()
