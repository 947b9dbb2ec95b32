"""What the durable archive costs the broker: CPU seconds per GB with ``--data-dir`` against without.

Run by hand from the checkout (about a minute; prints a markdown table)::

    .venv/bin/python benchmarks/data_dir_cpu.py
    .venv/bin/python benchmarks/data_dir_cpu.py --size 1000000 --runs 5 --dir /var/tmp
    .venv/bin/python benchmarks/data_dir_cpu.py --paced 1000 --size 1000 --mb 5

``--paced RATE`` is the harness's latency row instead: the publisher puts one
frame and flushes it, then sleeps until its next turn, ``RATE`` times a
second; the figures are then per flush (microseconds of broker CPU, and the
context switches of the broker's threads), with ``--data-dir`` each flush a
commit under the default ``--sync always``.

``--commits N`` measures the archive alone, in this process, with no broker
and no network: N commits of one 1 KB put, each flushed once per channel of
a two-channel source, as the broker flushes them; it prints per commit the
event loop's and the writer threads' CPU, the context switches, the run
loop's passes and each task's steps (load-independent, unlike the rates).

Each run starts a ``turbine serve`` (memory only, or ``--data-dir`` in a fresh
directory under ``--dir``, default sync policy), a subscriber process and a
publisher process (the public client API, the peer harness's large-frame row:
frames put without pause, one flush at the end), and takes from ``/proc``
the broker's CPU seconds from the first put until the subscriber has the
last frame: the event loop's thread and the archive's writer threads apart.
The modes alternate run by run (wall rates swing with the load on shared
cores; the CPU a GB costs much less).

``steal`` is the CPU time the hypervisor took from this machine's processors
meanwhile (``/proc/stat``), per GB: on the 2-core virtual machine this
project is benchmarked on, writing to its disk costs the host CPU that
shows here as steal once both processors are busy (1.3-2.9 s per GB
written, measured with plain ``O_DIRECT`` writes and both processors
kept busy), and none while one is idle: with ``--data-dir`` the
large-frame rows pay it, memory-only ones do not.  The third row puts that
apart from the archive's own work: a memory-only broker while another
process writes the same bytes to the disk as the archive would (``O_DIRECT``,
8 MiB writes, synced every 16 MiB).
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import click
import trio

TICK = os.sysconf("SC_CLK_TCK")
SOURCE = "daq_cpu_data_source"

CHILD = r"""
import sys, time, trio, turbine
role, address, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
SOURCE, rate = sys.argv[5], float(sys.argv[6])

async def publish():
    frame = b"x" * size
    async with turbine.open_client(address) as tb:
        src = await tb.open_source(SOURCE, channels={"x": "application/octet-stream"},
                                   cache_frames=5_000_000, cache_bytes=2**30)
        print("ready", flush=True)
        sys.stdin.readline()
        if rate:  # the latency row: one frame, its flush, a sleep until the next turn
            began = trio.current_time()
            for i in range(count):
                await src.put("x", frame)
                await src.flush()
                await trio.sleep_until(began + (i + 1) / rate)
        else:
            for _ in range(count):
                await src.put("x", frame)
        await src.flush()

async def subscribe():
    async with turbine.open_client(address) as tb:
        async with tb.subscribe(f"{SOURCE}/x", start="now") as sub:
            print("ready", flush=True)
            n = 0
            async for item in sub:
                if isinstance(item, turbine.Frame):
                    n += 1
                    if n == count:
                        break
    print(time.monotonic(), flush=True)

trio.run(publish if role == "pub" else subscribe)
"""

#: The same bytes written to the disk by another process, as the archive writes them
#: (``O_DIRECT`` from a kept buffer, 8 MiB at a time, synced every 16 MiB).
DISK_WRITER = r"""
import mmap, os, sys
path, total = sys.argv[1], int(sys.argv[2])
buf = mmap.mmap(-1, 8 * 2**20)
buf[:] = b"x" * len(buf)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
sys.stdin.readline()
done = 0
while done < total:
    done += os.pwrite(fd, buf, done)
    if done % (16 * 2**20) == 0:
        os.fdatasync(fd)
os.fdatasync(fd)
"""


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's main thread and of its other threads, and
    the context switches of all its threads."""
    out = {"loop": 0.0, "threads": 0.0, "switches": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read().split("\n")
        except FileNotFoundError:
            continue  # (a worker thread that ended meanwhile: its time is lost)
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        out["loop" if tid == str(pid) else "threads"] += seconds
        out["switches"] += sum(int(line.split()[1]) for line in status if "ctxt_sw" in line)
    return out


def _steal() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / TICK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, broker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            raise click.ClickException("the broker exited before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise click.ClickException("the broker did not listen within 30 s")


def one_run(
    size: int, count: int, data_dir: str | None, disk: str | None, rate: float = 0.0
) -> dict[str, float]:
    """One row's run; ``disk``: a file that another process writes the same bytes to
    meanwhile; ``rate``: flushes a second, one frame each (0: no pause, one flush)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "turbine", "serve", "--port", str(port), "--max-memory", "4GiB"]
    if data_dir is not None:
        cmd += ["--data-dir", data_dir]
    broker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[subprocess.Popen[str]] = []
    try:
        _wait_port(port, broker)
        args = [f"127.0.0.1:{port}", str(size), str(count), SOURCE, str(rate)]
        sub = subprocess.Popen(
            [sys.executable, "-c", CHILD, "sub", *args], stdout=subprocess.PIPE, text=True
        )
        children.append(sub)
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        pub = subprocess.Popen(
            [sys.executable, "-c", CHILD, "pub", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(pub)
        assert pub.stdin is not None and pub.stdout is not None
        assert pub.stdout.readline().strip() == "ready"
        starts = [pub]
        if disk is not None:
            writer = subprocess.Popen(
                [sys.executable, "-c", DISK_WRITER, disk, str(size * count)],
                stdin=subprocess.PIPE,
                text=True,
            )
            children.append(writer)
            starts.append(writer)
        before, steal, began = _cpu(broker.pid), _steal(), time.monotonic()
        for p in starts:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        last = float(sub.stdout.readline())
        after, stolen = _cpu(broker.pid), _steal() - steal
        if pub.wait(60) or sub.wait(60):
            raise click.ClickException("a client failed")
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.terminate()
        broker.wait()
    per = count / 1e6 if rate else size * count / 1e9  # per flush in µs, or per GB in s
    loop = (after["loop"] - before["loop"]) / per
    threads = (after["threads"] - before["threads"]) / per
    return {
        "MB/s": size * count / 1e6 / (last - began),
        "broker": loop + threads,
        "loop": loop,
        "threads": threads,
        "switches": (after["switches"] - before["switches"]) / count,
        "steal": stolen / per,
    }


class _Steps(trio.abc.Instrument):
    """A trio instrument: the run loop's passes and each task's steps, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.counts: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: Any) -> None:
        if self.on:
            self.counts[task.name.rsplit(".", 1)[-1]] += 1

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.counts["(run-loop passes)"] += 1


def commits_in_process(count: int, where: str | None) -> None:
    """The archive alone, in this process: ``count`` commits of one 1 KB put (and
    its producer record), each flushed once per channel of a two-channel source
    as the broker does; CPU per commit (``/proc``), run-loop passes, task steps."""
    from turbine.archive import Declare, Put, open_archive
    from turbine.archive._ops import Producer

    steps, frame = _Steps(), b"x" * 1000

    async def run(root: str) -> dict[str, float]:
        async with open_archive(root) as archive:
            archive.create_source(SOURCE, {"archive_bytes": 2**30})
            for channel in ("x", "y"):
                archive.append(SOURCE, Declare(channel, "application/octet-stream", 0))
            await archive.flush([SOURCE])
            before, steps.on = _cpu(os.getpid()), True
            for i in range(count):
                archive.append(SOURCE, Put("x", i, [time.time()], [len(frame)], [frame], "w"))
                archive.append(SOURCE, Producer("p", i))
                for _ in range(2):
                    await archive.flush([SOURCE])
            steps.on, after = False, _cpu(os.getpid())
        return {k: (after[k] - before[k]) / count for k in after}

    work = tempfile.mkdtemp(prefix="turbine-data-dir-cpu-", dir=where)
    try:
        cpu = trio.run(run, os.path.join(work, "data"), instruments=[steps])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{count:,} commits of one 1 KB put, load {os.getloadavg()[0]:.1f}; per commit:\n")
    print(
        f"- event loop CPU {cpu['loop'] * 1e6:.0f} us, writer threads {cpu['threads'] * 1e6:.0f} us"
    )
    print(f"- context switches (all threads) {cpu['switches']:.2f}")
    for name, n in steps.counts.most_common():
        print(f"- {name}: {n / count:.2f}")


DATA_DIR = "--data-dir"
#: Memory only while another process writes as many bytes to the disk: what the
#: disk's writes cost the machine without any archive code (the --data-dir row's
#: yardstick).
DISK_BUSY = "memory only, the disk written alongside"
MODES = ("memory only", DATA_DIR, DISK_BUSY)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


@click.command()
@click.option("--size", default=100_000, show_default=True, help="Frame size in bytes.")
@click.option("--mb", default=1000, show_default=True, help="Megabytes put per run.")
@click.option("--runs", default=3, show_default=True, help="Runs of each mode.")
@click.option("--dir", "where", default=None, help="Directory for the data dirs (on the disk).")
@click.option("--paced", "rate", default=0.0, help="Flushes a second, one frame each (0: none).")
@click.option("--commits", default=0, help="Instead: this many commits of the archive in process.")
def main(size: int, mb: int, runs: int, where: str | None, rate: float, commits: int) -> None:
    """Broker CPU per GB of one large-frame row, memory only against --data-dir
    (or per flush of the latency row: --paced; or the archive alone: --commits)."""
    if commits:
        commits_in_process(commits, where)
        return
    count = mb * 10**6 // size
    modes = MODES[:2] if rate else MODES
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(runs):
        for mode, rows in results.items():
            work = tempfile.mkdtemp(prefix="turbine-data-dir-cpu-", dir=where)
            try:
                data_dir = os.path.join(work, "data") if mode == DATA_DIR else None
                disk = os.path.join(work, "disk") if mode == DISK_BUSY else None
                rows.append(one_run(size, count, data_dir, disk, rate))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{size:,} B frames, {mb:,} MB a run, {runs} runs each, load {os.getloadavg()[0]:.1f}")
    if rate:
        print(f"paced: {rate:g} flushes a second, one frame each")
        print("median (min-max); CPU and steal in microseconds per flush\n")
    else:
        print("median (min-max); CPU and steal in seconds per GB\n")
    keys = ("MB/s", "broker", "loop", "threads", "switches", "steal")
    print("| broker | MB/s | broker CPU | event loop | writer threads | switches/frame | steal |")
    print("|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        print(f"| {mode} | " + " | ".join(_spread([r[k] for r in rows]) for k in keys) + " |")


if __name__ == "__main__":
    main()
