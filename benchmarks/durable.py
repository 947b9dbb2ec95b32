"""Durable writes: SQLite (WAL) against an append-only segment log, against the raw disk.

Run by hand from the checkout (prints a table; about 20 s; the machine is shared,
so run it in short bursts and note ``uptime`` beside the table)::

    .venv/bin/python benchmarks/durable.py
    .venv/bin/python benchmarks/durable.py --duration 2 --sizes 64,1048576 --dir /var/tmp

Every store is driven the same way, the way a broker drives its archive: a
producer thread hands over put batches (up to 256 KiB or 4,096 frames, as
clients batch their puts) as fast as the store takes them (at most 16 MiB
waiting), and a committer thread takes everything that arrived since its last
commit, writes it and makes it durable with one sync (group commit).  A frame
counts once the sync covering it has returned: these are acknowledged rates.

- ``raw disk``: the payloads alone, written sequentially to one file with the
  same sync cadence: what the disk can do, the ceiling for the others.
- ``segment log``: the archive's own format (:mod:`turbine.archive._format`):
  frames records with length and CRC-32 headers, written with ``os.writev``
  (payloads not copied) and ``os.fdatasync`` per commit.
- ``sqlite wal``: the standard library's SQLite, ``journal_mode=WAL``,
  ``synchronous=FULL``, one transaction per commit, a table keyed by sequence
  number with an index on (channel, time), default auto-checkpoints.

``--recovery GIB`` instead builds a data directory of that many GiB with the
archive itself (three sources of 256 KiB frames, one of 64 B frames, as the
broker would write them), drops its files from the page cache
(``posix_fadvise``, this process's files only), and times opening it: the
lock, every sealed segment's index and a checked scan of each open segment.

``--day`` writes a day of 256 B frames at 10 Hz (864,000 frames) and times
fetching its first and its last minute through the index, cold and warm.

``--broker MIB`` measures ``turbine serve --data-dir`` with the default sync
policy through the client: 1 KB frames acknowledged per second, 100 KB and
1 MB frames in MB/s (one task puts without pause while another flushes in a
loop; the time runs until the last frame is acknowledged), the newest 1,000
frames of a channel whose ring holds 100 (from disk), and a replay of MIB
1 MiB frames from the oldest with ``fetch(after=...)``.

``newest 1,000`` reads back the newest thousand frames once the writes are done
(from the page cache: this compares the stores' read paths, not the disk).
"""

from __future__ import annotations

import collections
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from turbine.archive import _format as fmt
from turbine.archive._segment import write_all

BATCH_BYTES = 256 * 2**10
BATCH_FRAMES = 4096
MAX_WAITING_BYTES = 16 * 2**20

Batch = tuple[int, list[float], list[bytes]]  # first seq, timestamps, payloads


class RawDisk:
    name = "raw disk"

    def __init__(self, path: str) -> None:
        self.fd = os.open(os.path.join(path, "raw.bin"), os.O_WRONLY | os.O_CREAT)
        self.offset = 0

    def commit(self, batches: list[Batch]) -> None:
        bufs = [d for _, _, data in batches for d in data]
        write_all(self.fd, bufs, self.offset)
        self.offset += sum(map(len, bufs))
        os.fdatasync(self.fd)

    def newest(self, n: int) -> int:
        return 0

    def close(self) -> None:
        os.close(self.fd)


class SegmentLog:
    name = "segment log"

    def __init__(self, path: str) -> None:
        self.fd = os.open(os.path.join(path, "1.seg"), os.O_RDWR | os.O_CREAT)
        os.write(self.fd, fmt.encode_segment_header(1, time.time()))
        self.offset = fmt.SEGMENT_HEADER.size
        self.entries: list[tuple[int, int, int, int]] = []  # offset, body length, first seq, count

    def commit(self, batches: list[Batch]) -> None:
        bufs: list[Any] = []
        start = self.offset
        for first, ts, data in batches:
            sizes = list(map(len, data))
            rec = fmt.encode_record(fmt.frames_body(1, first, ts, sizes, "bench", data))
            body_len = sum(map(len, rec)) - fmt.RECORD_HEADER.size
            self.entries.append((self.offset, body_len, first, len(ts)))
            self.offset += fmt.RECORD_HEADER.size + body_len
            bufs += rec
        write_all(self.fd, bufs, start)
        os.fdatasync(self.fd)

    def newest(self, n: int) -> int:
        got = 0
        for offset, body_len, _first, _count in reversed(self.entries):
            buf = os.pread(self.fd, fmt.RECORD_HEADER.size + body_len, offset)
            head = fmt.parse_record_header(buf)
            assert (
                head is not None and fmt.crc(memoryview(buf)[fmt.RECORD_HEADER.size :]) == head[1]
            )
            rec = fmt.decode_body(memoryview(buf)[fmt.RECORD_HEADER.size :])
            assert isinstance(rec, fmt.FramesRecord)
            got += len(rec.data)
            if got >= n:
                break
        return min(got, n)

    def close(self) -> None:
        os.close(self.fd)


class Sqlite:
    name = "sqlite wal"

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(os.path.join(path, "frames.db"), check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE frames (seq INTEGER PRIMARY KEY, channel INTEGER, ts REAL, "
            "writer TEXT, data BLOB)"
        )
        self.db.execute("CREATE INDEX frames_time ON frames (channel, ts)")

    def commit(self, batches: list[Batch]) -> None:
        with self.db:
            for first, ts, data in batches:
                self.db.executemany(
                    "INSERT INTO frames VALUES (?, 1, ?, 'bench', ?)",
                    zip(range(first, first + len(ts)), ts, data, strict=True),
                )

    def newest(self, n: int) -> int:
        rows = self.db.execute("SELECT seq, ts, data FROM frames ORDER BY seq DESC LIMIT ?", (n,))
        return len(rows.fetchall())

    def close(self) -> None:
        self.db.close()


def run(store: Any, size: int, duration: float) -> dict[str, float]:
    per_batch = max(1, min(BATCH_FRAMES, BATCH_BYTES // size))
    payload = os.urandom(size)
    waiting: collections.deque[Batch] = collections.deque()
    lock = threading.Condition()
    state = {"waiting_bytes": 0, "stop": False}
    acked = {"frames": 0, "commits": 0, "last": 0.0}

    def produce() -> None:
        seq = 1
        while not state["stop"]:
            batch = (seq, [time.time()] * per_batch, [payload] * per_batch)
            seq += per_batch
            with lock:
                while state["waiting_bytes"] > MAX_WAITING_BYTES and not state["stop"]:
                    lock.wait(0.1)
                waiting.append(batch)
                state["waiting_bytes"] += per_batch * size
                lock.notify_all()

    def commit() -> None:
        while True:
            with lock:
                while not waiting and not state["stop"]:
                    lock.wait(0.1)
                if not waiting:
                    return
                batches = list(waiting)
                waiting.clear()
                state["waiting_bytes"] = 0
                lock.notify_all()
            store.commit(batches)
            acked["frames"] += sum(len(b[1]) for b in batches)
            acked["commits"] += 1
            acked["last"] = time.perf_counter()

    threads = [threading.Thread(target=produce), threading.Thread(target=commit)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration)
    state["stop"] = True  # the producer stops; the committer makes what waits durable, then stops
    with lock:
        lock.notify_all()
    for t in threads:
        t.join()
    elapsed = acked["last"] - t0
    frames, commits = acked["frames"], acked["commits"]
    t1 = time.perf_counter()
    got = store.newest(1000)
    read_ms = (time.perf_counter() - t1) * 1e3
    return {
        "frames/s": frames / elapsed,
        "MB/s": frames * size / elapsed / 1e6,
        "syncs/s": commits / elapsed,
        "newest_ms": read_ms if got else float("nan"),
    }


def build_data_dir(root: str, gib: float) -> int:
    """Write about ``gib`` GiB of sources into ``root`` with the archive; return bytes written."""
    from turbine.archive import Declare, Put, SourceLog

    total = 0
    plan = [(f"video_cam{i}_data_source", 256 * 2**10, gib * 0.3) for i in range(3)]
    plan.append(("daq_rig_data_source", 64, gib * 0.1))
    for name, size, share in plan:
        log = SourceLog.create(
            os.path.join(root, "sources", name), {"archive_bytes": 2**40}, time.time()
        )
        log.write([Declare("x", "application/octet-stream", 1)], time.time())
        per = max(1, 4 * 2**20 // size)
        payload = os.urandom(size)
        seq, written, t = 1, 0, 1.7e9
        while written < share * 2**30:
            log.write(
                [Put("x", seq, [t + i for i in range(per)], [size] * per, [payload] * per, "b")], t
            )
            seq, written, t = seq + per, written + per * size, t + per
        log.sync()
        total += log.bytes
        log.close()
    _uncache(root)
    return total


def time_day(root: str) -> list[tuple[str, float]]:
    """A day of 256 B frames at 10 Hz in one source; time fetching its first and last minute."""
    from turbine.archive import Declare, Put, SourceLog

    log = SourceLog.create(os.path.join(root, "day"), {"archive_bytes": 2**40}, 0.0)
    log.write([Declare("x", "application/octet-stream", 1)], 0.0)
    payload = os.urandom(256)
    per, t0 = 36_000, 1.7e9  # an hour per put
    for hour in range(24):
        ts = [t0 + 3600 * hour + i / 10 for i in range(per)]
        log.write([Put("x", 1 + per * hour, ts, [256] * per, [payload] * per, "b")], ts[0])
    log.sync()
    log.close()
    _uncache(root)
    log = SourceLog.open(os.path.join(root, "day"))
    out = []
    for label, start in (("first minute", t0), ("last minute", t0 + 86400 - 60)):
        for when in ("cold", "warm"):
            t = time.perf_counter()
            runs = log.time_range("x", start, start + 60, 10_000)
            took = time.perf_counter() - t
            assert sum(len(r.ts) for r in runs) == 600
            out.append((f"{label} ({when})", took))
    log.close()
    return out


def _uncache(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def broker_rows(root: str, duration: float, replay_mb: int) -> list[tuple[str, str]]:
    """Rows of issue 11's table for ``turbine serve --data-dir`` (policy "always")."""
    import statistics

    import trio

    import turbine

    exe = os.path.join(os.path.dirname(sys.executable), "turbine")
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "--port",
            "0",
            "--max-memory",
            "2GiB",
            "--data-dir",
            root,
            "--archive-bytes",
            "64GiB",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().split()[-1]
    rows: list[tuple[str, str]] = []

    async def put_rate(client: Any, name: str, size: int) -> float:
        """Frames acknowledged per second: one task puts, another flushes in a loop (a
        flush acknowledges every frame put before it began); at most 64 MiB unacknowledged."""
        src = await client.open_source(name, {"x": "application/octet-stream"}, cache_frames=100)
        payload = os.urandom(size)
        put = acked = 0
        window = max(1, 64 * 2**20 // size)
        progress = trio.Event()
        t0 = time.perf_counter()
        end = t0 + duration

        async def producer() -> None:
            nonlocal put
            while time.perf_counter() < end:
                while put - acked >= window:
                    await progress.wait()
                await src.put("x", payload)
                put += 1

        async def flusher() -> None:
            nonlocal acked, progress
            while time.perf_counter() < end:
                before = put
                await src.flush()  # on stable storage
                acked = before
                progress.set()
                progress = trio.Event()
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            nursery.start_soon(flusher)
        await src.flush()
        return put / (time.perf_counter() - t0)

    async def measure() -> None:
        async with turbine.open_client(address, name="durable-bench") as client:
            rate = await put_rate(client, "daq_k_data_source", 1024)
            rows.append(("1 KB frames acknowledged", f"{rate:,.0f} frames/s"))
            for size, label in ((100 * 1024, "100 KB"), (2**20, "1 MB")):
                rate = await put_rate(client, f"video_s{size}_data_source", size)
                rows.append((f"{label} frames acknowledged", f"{rate * size / 1e6:,.1f} MB/s"))
            path = "daq_k_data_source/x"  # its ring holds 100: the newest 1,000 come from disk
            took = []
            for _ in range(5):
                t = time.perf_counter()
                got = await client.fetch(path, newest=1000)
                took.append(time.perf_counter() - t)
                assert len(got) == 1000
            rows.append(("newest 1,000 (from disk)", f"{statistics.median(took) * 1e3:.1f} ms"))
            src = await client.open_source(
                "video_replay_data_source", {"x": "application/octet-stream"}, cache_frames=10
            )
            payload = os.urandom(2**20)
            for i in range(replay_mb):
                await src.put("x", payload)
                if i % 64 == 63:
                    await src.flush()
            await src.flush()
            t, after, total = time.perf_counter(), 0, 0
            while total < replay_mb:
                got = await client.fetch("video_replay_data_source/x", after=after)
                if not got:
                    break
                total += len(got)
                after = got[-1].seq
            took_s = time.perf_counter() - t
            rows.append(
                (
                    f"replay of {replay_mb} MiB from oldest",
                    f"{total * 2**20 / took_s / 1e6:,.0f} MB/s",
                )
            )

    try:
        trio.run(measure)
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def time_recovery(root: str) -> tuple[float, int]:
    import trio

    from turbine.archive import open_archive

    async def open_it() -> tuple[float, int]:
        t0 = time.perf_counter()
        async with open_archive(root) as archive:
            took = time.perf_counter() - t0
            return took, len(archive.logs)

    return trio.run(open_it)


STORES: dict[str, Callable[[str], Any]] = {"raw": RawDisk, "segments": SegmentLog, "sqlite": Sqlite}


@click.command()
@click.option("--duration", default=2.0, show_default=True, help="Seconds per measurement.")
@click.option("--sizes", default="64,1048576", show_default=True, help="Frame sizes in bytes.")
@click.option("--stores", default="raw,segments,sqlite", show_default=True)
@click.option("--dir", "where", default=None, help="Directory on the disk to measure.")
@click.option(
    "--repeat", default=2, show_default=True, help="Rounds (stores interleaved); best kept."
)
@click.option("--recovery", type=float, default=None, help="Time recovery of a data dir of GIB.")
@click.option("--day", is_flag=True, help="Time the first and last minute of a 24 h archive.")
@click.option(
    "--broker",
    "replay_mb",
    type=int,
    default=None,
    metavar="MIB",
    help="Measure turbine serve --data-dir (issue 11's rows), replaying MIB from disk.",
)
def main(
    duration: float,
    sizes: str,
    stores: str,
    where: str | None,
    repeat: int,
    recovery: float | None,
    day: bool,
    replay_mb: int | None,
) -> None:
    """Print acknowledged write rates of each store under group commit."""
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load: {load}")
    if replay_mb is not None:
        root = tempfile.mkdtemp(prefix="durable-broker-", dir=where)
        try:
            for label, value in broker_rows(root, duration, replay_mb):
                print(f"{label:<32} {value:>16}")
        finally:
            shutil.rmtree(root)
        return
    if day:
        root = tempfile.mkdtemp(prefix="durable-day-", dir=where)
        try:
            for label, took in time_day(root):
                print(f"time range, 600 frames, {label:<22} {took * 1e3:8.2f} ms")
        finally:
            shutil.rmtree(root)
        return
    if recovery is not None:
        root = tempfile.mkdtemp(prefix="durable-recovery-", dir=where)
        try:
            t0 = time.perf_counter()
            held = build_data_dir(root, recovery)
            print(f"built {held / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
            cold, n = time_recovery(root)
            warm, _ = time_recovery(root)
            print(
                f"recovery of {held / 2**30:.2f} GiB, {n} sources: {cold:.2f} s cold, {warm:.2f} s warm"
            )
        finally:
            shutil.rmtree(root)
        return
    print(
        f"{'store':<12} {'frame':>8} {'frames/s':>12} {'MB/s':>9} {'syncs/s':>8} {'newest 1k ms':>13}"
    )
    for size in (int(s) for s in sizes.split(",")):
        best: dict[str, dict[str, float]] = {}
        names: dict[str, str] = {}
        for _ in range(repeat):
            for key in stores.split(","):
                path = tempfile.mkdtemp(prefix="durable-", dir=where)
                store = STORES[key](path)
                names[key] = store.name
                try:
                    r = run(store, size, duration)
                finally:
                    store.close()
                    shutil.rmtree(path)
                if key not in best or r["MB/s"] > best[key]["MB/s"]:
                    best[key] = r
        raw_mb = best["raw"]["MB/s"] if "raw" in best else None
        for key, r in best.items():
            share = f" ({r['MB/s'] / raw_mb:.0%} of raw)" if raw_mb and key != "raw" else ""
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            print(
                f"{names[key]:<12} {label:>8} {r['frames/s']:>12,.0f} {r['MB/s']:>9.1f} "
                f"{r['syncs/s']:>8.0f} {r['newest_ms']:>13.1f}{share}"
            )


if __name__ == "__main__":
    main()
