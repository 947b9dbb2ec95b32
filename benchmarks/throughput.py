"""Throughput, fan-out, large-frame, latency and history benchmark for the broker.

Run by hand from the checkout (prints a table; the whole run takes about a
minute, ``--quick`` about half that)::

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --quick --tests small,latency
    .venv/bin/python benchmarks/throughput.py --tests small --duration 5 --profile /tmp/prof

Every test starts its own broker (``turbine serve`` on a free loopback port)
and runs the publisher and each subscriber in a process of its own, talking
to the broker through the public client API, so that the numbers are those a
component author would see.  Each frame starts with a sequence number and the
publisher's ``time.monotonic_ns()`` (one clock for every process on Linux), so
a subscriber measures loss, order and one-way latency itself.

``--profile DIR`` samples every process of a streaming test with py-spy
(``pip install py-spy``) and prints the hottest functions of each.

The targets and the best peer broker are those of the benchmark issue, measured
on the same 2-core machine by the shared side-by-side harness.  Numbers on 2
shared cores vary by 20-30 % from run to run: rerun before trusting a miss.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import click
import trio

import turbine

HOST = "127.0.0.1"
CHANNEL = "x"
CONTENT_TYPE = "application/octet-stream"

#: Every frame begins with ``seq | t_send_ns`` (little-endian u64s), zero-padded to its size.
HEADER = struct.Struct("<QQ")
#: The sequence number of the end marker the publisher sends once it is done.
END_SEQ = 2**64 - 1

#: Broker memory and per-source rings for the streaming tests: large enough that
#: a subscriber somewhat slower than the publisher loses nothing in a few seconds
#: (the peers are given 512 MB slow-consumer buffers by the shared harness).
BROKER_MEMORY = "4GiB"
STREAM_CACHE_FRAMES = 5_000_000
STREAM_CACHE_BYTES = 2**30

#: Limits that keep a broken run from hanging: connect/subscribe phase, the
#: time subscribers get to catch up after the publisher is done, and the grace
#: before a child that ignores "stop" is killed.
SETUP_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 10.0
KILL_GRACE_S = 3.0
#: How often the history reader repeats its fetch (the first one is reported too).
HISTORY_REPEATS = 10


# --- the workload -------------------------------------------------------------------


@attrs.frozen
class Test:
    """One test's workload.

    Exactly one of ``duration`` (publish as fast as possible, or at ``rate``,
    for that long) and ``count`` (publish that many frames, then a late reader
    fetches the newest ``history_newest``) is set.
    """

    name: str
    title: str
    size: int
    subscribers: int = 1
    duration: float | None = None
    rate: float | None = None
    count: int | None = None
    cache_frames: int = STREAM_CACHE_FRAMES
    cache_bytes: int = STREAM_CACHE_BYTES
    history_newest: int = 0

    @property
    def source(self) -> str:
        return f"daq_bench{self.name}_data_source"

    @property
    def path(self) -> str:
        return f"{self.source}/{CHANNEL}"


@attrs.frozen
class Target:
    """What the issue asks for and what the best peer broker did on this machine."""

    text: str
    best_peer: str
    met: Callable[[Result], bool]


def make_tests(quick: bool) -> dict[str, Test]:
    d = 1.0 if quick else 3.0
    return {
        t.name: t
        for t in (
            Test("small", "64 B, 1 -> 1, max rate", size=64, duration=d),
            Test("fanout", "64 B, 1 -> 4, max rate", size=64, subscribers=4, duration=d),
            Test("large100k", "100 KB, 1 -> 1, max rate", size=100_000, duration=d),
            Test("large1m", "1 MB, 1 -> 1, max rate", size=1_000_000, duration=d),
            Test(
                "latency",
                "1 KB at 1,000 frames/s",
                size=1000,
                duration=2.0 if quick else 5.0,
                rate=1000.0,
            ),
            Test(
                "history",
                "newest 1,000 of 10,000 x 1 KB",
                size=1000,
                subscribers=0,
                count=10_000,
                cache_frames=10_000,
                cache_bytes=64 * 2**20,
                history_newest=1000,
            ),
        )
    }


TARGETS: dict[str, Target] = {
    "small": Target(">= 150,000 frames/s", "100,000", lambda r: r.rate >= 150_000),
    "fanout": Target(">= 75,000 frames/s per sub", "52,000", lambda r: r.rate >= 75_000),
    "large100k": Target(">= 600 MB/s", "280-310", lambda r: r.mbps >= 600),
    "large1m": Target(">= 600 MB/s", "280-310", lambda r: r.mbps >= 600),
    "latency": Target(
        "p50 < 0.3 ms, p99 < 1.5 ms",
        "0.3 / 1.2-4.6 ms",
        lambda r: r.p50_ms < 0.3 and r.p99_ms < 1.5,
    ),
    "history": Target("< 5 ms", "7-14 ms", lambda r: r.fetch_ms < 5.0),
}


def make_frame(seq: int, pad: bytes) -> bytes:
    return HEADER.pack(seq, time.monotonic_ns()) + pad


# --- child processes ------------------------------------------------------------------
# Each runs trio.run() and talks to the coordinator over a multiprocessing pipe:
# it sends {"event": "ready"}, the publisher waits for "go", a subscriber stops
# at the end marker or when told "stop", and each sends its figures last.


def _cpu_s() -> float:
    return time.process_time()


async def _next_message(conn: multiprocessing.connection.Connection) -> Any:
    """The coordinator's next word; cancellable (the blocked thread is left behind)."""
    return await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)


def publisher_main(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    trio.run(_publish, conn, address, test)


async def _publish(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    pad = bytes(test.size - HEADER.size)
    async with turbine.open_client(address, name="bench-publisher") as tb:
        src = await tb.open_source(
            test.source,
            channels={CHANNEL: CONTENT_TYPE},
            cache_frames=test.cache_frames,
            cache_bytes=test.cache_bytes,
        )
        conn.send({"event": "ready"})
        with trio.fail_after(SETUP_TIMEOUT_S + 10):
            await _next_message(conn)  # "go"
        cpu0, t0 = _cpu_s(), time.monotonic_ns()
        if test.rate is not None:
            assert test.duration is not None
            published = await _put_paced(src, pad, test.rate, int(test.rate * test.duration))
        elif test.count is not None:
            published = await _put_count(src, pad, test.count)
        else:
            assert test.duration is not None
            published = await _put_for(src, pad, test.duration, test.size)
        await src.flush()
        elapsed = (time.monotonic_ns() - t0) / 1e9
        cpu = _cpu_s() - cpu0
        if test.count is None:
            await src.put(CHANNEL, make_frame(END_SEQ, pad))
            await src.flush()
    conn.send({"event": "done", "published": published, "elapsed": elapsed, "cpu": cpu})


async def _put_for(src: turbine.Source, pad: bytes, duration: float, size: int) -> int:
    """Put frames as fast as the client takes them for ``duration`` seconds."""
    put, pack, now = src.put, HEADER.pack, time.monotonic_ns
    stop = now() + int(duration * 1e9)
    between_checks = 256 if size < 10_000 else 1
    seq = 0
    while True:
        for _ in range(between_checks):
            await put(CHANNEL, pack(seq, now()) + pad)
            seq += 1
        if now() >= stop:
            return seq


async def _put_count(src: turbine.Source, pad: bytes, count: int) -> int:
    put, pack, now = src.put, HEADER.pack, time.monotonic_ns
    for seq in range(count):
        await put(CHANNEL, pack(seq, now()) + pad)
    return count


async def _put_paced(src: turbine.Source, pad: bytes, rate: float, count: int) -> int:
    """Put ``count`` frames on a fixed schedule of ``rate`` per second (no catch-up bursts
    beyond what a late wakeup causes); the client sends each as soon as we sleep."""
    put, pack, now = src.put, HEADER.pack, time.monotonic_ns
    start = trio.current_time()
    for seq in range(count):
        await trio.sleep_until(start + seq / rate)
        await put(CHANNEL, pack(seq, now()) + pad)
    return count


def subscriber_main(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    trio.run(_subscribe, conn, address, test)


@attrs.define
class Tally:
    """What one subscriber saw."""

    frames: int = 0
    bytes: int = 0
    out_of_order: int = 0
    skipped: int = 0  # frames jumped over without a Gap (should never happen)
    gaps: int = 0
    missed: int = 0  # frames the broker reported as evicted before delivery
    bad_size: int = 0
    first_sent_ns: int | None = None
    first_recv_ns: int | None = None
    last_recv_ns: int | None = None
    ended: bool = False
    latency_ns: array[int] = attrs.field(factory=lambda: array("q"))


async def _subscribe(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    tally = Tally()
    async with turbine.open_client(address, name="bench-subscriber") as tb:
        async with tb.subscribe(test.path, start="now") as sub:
            conn.send({"event": "ready"})
            cpu0 = _cpu_s()
            async with trio.open_nursery() as nursery:

                async def stop_when_told() -> None:
                    await _next_message(conn)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_when_told)
                await _consume(sub, test.size, tally)
                nursery.cancel_scope.cancel()
            cpu = _cpu_s() - cpu0
    conn.send({"event": "drained"})  # before the sorting below, which is not the broker's time
    lat = sorted(tally.latency_ns)
    active = (tally.last_recv_ns or 0) - (tally.first_recv_ns or 0)
    conn.send(
        {
            "event": "done",
            "cpu_percent": cpu / (active / 1e9) * 100 if active > 0 else float("nan"),
            "cpu_s": cpu,
            "tally": attrs.asdict(tally, filter=lambda a, _: a.name != "latency_ns"),
            "latency_ms": {
                "p50": _percentile(lat, 0.50) / 1e6,
                "p99": _percentile(lat, 0.99) / 1e6,
                "max": (lat[-1] if lat else 0) / 1e6,
            },
        }
    )


async def _consume(sub: turbine.Subscription, size: int, tally: Tally) -> None:
    """Count frames until the end marker; the hot loop keeps its counters in locals."""
    unpack, now, Frame = HEADER.unpack_from, time.monotonic_ns, turbine.Frame
    record = tally.latency_ns.append
    expect = frames = nbytes = ooo = skipped = bad = 0
    last = 0
    try:
        async for item in sub:
            if type(item) is not Frame:  # a Gap: the ring evicted frames before we got them
                tally.gaps += 1
                tally.missed += item.missed
                continue
            data = item.data
            seq, sent = unpack(data)
            if seq == END_SEQ:
                tally.ended = True
                return
            last = now()
            record(last - sent)
            if tally.first_sent_ns is None:
                tally.first_sent_ns, tally.first_recv_ns = sent, last
            if seq != expect:
                if seq < expect:
                    ooo += 1
                else:
                    skipped += seq - expect
            expect = seq + 1
            frames += 1
            nbytes += len(data)
            if len(data) != size:
                bad += 1
    finally:
        tally.frames, tally.bytes, tally.out_of_order = frames, nbytes, ooo
        tally.skipped, tally.bad_size = skipped, bad
        tally.last_recv_ns = last or None


def _percentile(sorted_values: Any, q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def history_main(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    trio.run(_history, conn, address, test)


async def _history(conn: multiprocessing.connection.Connection, address: str, test: Test) -> None:
    """A late reader: connect, then fetch the newest N frames a few times."""
    t0 = time.perf_counter()
    async with turbine.open_client(address, name="bench-history") as tb:
        connect_ms = (time.perf_counter() - t0) * 1e3
        times_ms = []
        first: list[turbine.Frame] = []
        for i in range(HISTORY_REPEATS):
            t = time.perf_counter()
            frames = await tb.fetch(test.path, newest=test.history_newest)
            times_ms.append((time.perf_counter() - t) * 1e3)
            if i == 0:
                first = frames
    assert test.count is not None
    want = list(range(test.count - test.history_newest, test.count))
    got = [HEADER.unpack_from(f.data)[0] for f in first]
    conn.send(
        {
            "event": "done",
            "connect_ms": connect_ms,
            "first_ms": times_ms[0],
            "median_ms": sorted(times_ms)[len(times_ms) // 2],
            "frames": len(first),
            "correct": got == want and all(len(f.data) == test.size for f in first),
        }
    )


# --- the coordinator ------------------------------------------------------------------


class BenchError(Exception):
    """A test could not run to the end (the message says which process and why)."""


class Child:
    """A spawned process and our end of its pipe; killed by its own PID, never by name."""

    def __init__(self, role: str, target: Callable[..., None], address: str, test: Test) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.role = role
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=target, args=(child_conn, address, test), name=role, daemon=True
        )
        self.process.start()
        child_conn.close()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The child's next message.

        Raises:
            BenchError: it died or said nothing within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.conn.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
            if not self.process.is_alive():
                raise BenchError(f"the {self.role} exited (code {self.process.exitcode})")
            if time.monotonic() >= deadline:
                raise BenchError(f"the {self.role} said nothing for {timeout:g} s")
        try:
            return self.conn.recv()
        except EOFError:
            raise BenchError(f"the {self.role} exited (code {self.process.exitcode})") from None

    def send(self, message: str) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    def stop(self) -> None:
        self.process.join(KILL_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(KILL_GRACE_S)
        self.conn.close()


#: ``--data-dir``: each broker gets a fresh directory under it (removed when it stops).
DATA_DIR: str | None = None
#: ``--auth`` / ``--tls``: more ``turbine serve`` arguments (the clients' token and CA
#: are in the environment every process inherits).
SERVE_ARGS: list[str] = []


def secure(auth: bool, tls: bool) -> None:
    """Make an auth file (one user who may do everything) and/or a lab CA and
    broker certificate in a temporary directory, and set the clients' environment."""
    from turbine.auth import new_token, token_hash
    from turbine.tls import make_lab_certs

    where = tempfile.mkdtemp(prefix="throughput-secure-")
    if auth:
        token = new_token()
        path = os.path.join(where, "auth.toml")
        with open(path, "w") as f:
            f.write(
                f'[users.bench]\ntoken_sha256 = "{token_hash(token)}"\nadmin = true\n'
                'read = ["*"]\nwrite = ["*"]\ncommand = ["*"]\n'
            )
        SERVE_ARGS.extend(["--auth", path])
        os.environ["TURBINE_TOKEN"] = token
    if tls:
        certs = make_lab_certs(where)
        SERVE_ARGS.extend(
            ["--tls-cert", str(certs["server"]), "--tls-key", str(certs["server-key"])]
        )
        os.environ["TURBINE_TLS_CA"] = str(certs["ca"])


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` so far: the nanoseconds its threads have run
    (``/proc/<pid>/task/*/schedstat``; a thread that ended is not counted), else
    user plus system time from ``/proc/<pid>/stat`` in clock ticks (10 ms: too
    coarse for the 0.05-0.1 s a short run costs a process)."""
    try:
        ran = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ran += int(f.read().split()[0])
        return ran / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (``/proc/<pid>/stat``, field 10).

    A page the process touches first costs about 2 us on this machine: while a
    ring fills, every page of every large frame kept is one (25 a 100 KB frame);
    once it evicts, the frames' memory is reused and there are a few a frame.
    """
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[7])


class Broker:
    """``turbine serve`` on a free loopback port, in its own process."""

    def __init__(self) -> None:
        exe = shutil.which("turbine", path=os.path.dirname(sys.executable))
        command = [exe] if exe else [sys.executable, "-c", "from turbine.cli import main; main()"]
        self.data_dir = tempfile.mkdtemp(prefix="throughput-", dir=DATA_DIR) if DATA_DIR else None
        disk = ["--data-dir", self.data_dir] if self.data_dir else []
        self.process = subprocess.Popen(
            [
                *command,
                "serve",
                "--host",
                HOST,
                "--port",
                "0",
                "--max-memory",
                BROKER_MEMORY,
                *disk,
                *SERVE_ARGS,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the broker prints its address first
        if not line.startswith("turbine listening on "):
            self.stop()
            raise BenchError(f"the broker did not start (said {line.strip()!r})")
        self.address = line.split()[-1]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the broker used so far, from /proc."""
        return cpu_seconds(self.process.pid)

    def faults(self) -> int:
        """Minor page faults of the broker so far."""
        return page_faults(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running(children: list[Child]) -> Iterator[list[Child]]:
    try:
        yield children
    finally:
        for c in children:
            c.send("stop")
        for c in children:
            c.stop()


@attrs.frozen
class Result:
    test: Test
    published: int = 0
    received: tuple[int, ...] = ()  # per subscriber
    rate: float = 0.0  # frames/s per subscriber (the slowest one)
    mbps: float = 0.0  # MB/s (1 MB = 10**6 bytes) per subscriber (the slowest one)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    loss: int = 0
    out_of_order: int = 0
    gaps: int = 0
    fetch_ms: float = float("nan")
    fetch_first_ms: float = float("nan")
    connect_ms: float = float("nan")
    broker_cpu: float = float("nan")  # % of one core
    #: Broker CPU seconds per GB (10**9 bytes) of frames put, and its page faults per frame put.
    broker_s_per_gb: float = float("nan")
    broker_faults: float = float("nan")
    pub_cpu: float = float("nan")
    sub_cpu: float = float("nan")  # mean over subscribers
    #: CPU seconds per GB (10**9 bytes) of frames: the publisher's of what it put, each
    #: subscriber's of what it received (the mean over subscribers).
    pub_s_per_gb: float = float("nan")
    sub_s_per_gb: float = float("nan")
    error: str = ""

    @property
    def clean(self) -> bool:
        return not self.error and self.loss == 0 and self.out_of_order == 0 and self.gaps == 0


def run_stream_test(test: Test, profile_dir: str | None = None) -> Result:
    broker = Broker()
    profilers: list[Profiler] = []
    try:
        subs = [
            Child(f"subscriber {i + 1}", subscriber_main, broker.address, test)
            for i in range(test.subscribers)
        ]
        pub = Child("publisher", publisher_main, broker.address, test)
        with running([*subs, pub]):
            for c in [*subs, pub]:
                c.receive(SETUP_TIMEOUT_S)  # ready
            cpu0, faults0, t0 = broker.cpu_s(), broker.faults(), time.monotonic()
            pub.send("go")
            assert test.duration is not None
            if profile_dir is not None:
                pids = {"broker": broker.process.pid, "publisher": pub.process.pid}
                pids.update({c.role.replace(" ", ""): c.process.pid for c in subs})
                profilers = [
                    Profiler(profile_dir, f"{test.name}-{role}", pid, test.duration)
                    for role, pid in pids.items()
                ]
            done = pub.receive(test.duration + SETUP_TIMEOUT_S)
            drain_until = time.monotonic() + DRAIN_TIMEOUT_S
            for s in subs:
                try:
                    s.receive(max(0.1, drain_until - time.monotonic()))  # drained
                except BenchError:  # still behind: stop it and take what it got
                    s.send("stop")
                    s.receive(KILL_GRACE_S + 2)
            broker_s = broker.cpu_s() - cpu0
            broker_cpu = broker_s / (time.monotonic() - t0) * 100
            faults = broker.faults() - faults0
            reports = [s.receive(SETUP_TIMEOUT_S) for s in subs]
    finally:
        for p in profilers:
            p.finish()
        broker.stop()
    return summarize(test, done, reports, broker_cpu, broker_s, faults)


def summarize(
    test: Test,
    done: dict[str, Any],
    reports: list[dict[str, Any]],
    broker_cpu: float,
    broker_s: float,
    faults: int,
) -> Result:
    published = done["published"]
    rates, received = [], []
    loss = ooo = gaps = 0
    for r in reports:
        t = r["tally"]
        received.append(t["frames"])
        loss += published - t["frames"]
        ooo += t["out_of_order"] + t["bad_size"]
        gaps += t["gaps"]
        span = (t["last_recv_ns"] - t["first_sent_ns"]) / 1e9 if t["frames"] > 1 else 0
        rates.append((t["frames"] / span, t["bytes"] / span / 1e6) if span > 0 else (0.0, 0.0))
    slowest = min(rates)
    sub_s = [r["cpu_s"] / (r["tally"]["bytes"] / 1e9) for r in reports if r["tally"]["bytes"]]
    return Result(
        test,
        published=published,
        received=tuple(received),
        rate=slowest[0],
        mbps=slowest[1],
        p50_ms=max(r["latency_ms"]["p50"] for r in reports),
        p99_ms=max(r["latency_ms"]["p99"] for r in reports),
        max_ms=max(r["latency_ms"]["max"] for r in reports),
        loss=loss,
        out_of_order=ooo,
        gaps=gaps,
        broker_cpu=broker_cpu,
        broker_s_per_gb=broker_s / (published * test.size / 1e9) if published else float("nan"),
        broker_faults=faults / published if published else float("nan"),
        pub_cpu=done["cpu"] / done["elapsed"] * 100,
        sub_cpu=sum(r["cpu_percent"] for r in reports) / len(reports),
        pub_s_per_gb=done["cpu"] / (published * test.size / 1e9) if published else float("nan"),
        sub_s_per_gb=sum(sub_s) / len(sub_s) if sub_s else float("nan"),
    )


def run_history_test(test: Test) -> Result:
    broker = Broker()
    try:
        pub = Child("publisher", publisher_main, broker.address, test)
        with running([pub]):
            pub.receive(SETUP_TIMEOUT_S)
            pub.send("go")
            done = pub.receive(SETUP_TIMEOUT_S)
        reader = Child("history reader", history_main, broker.address, test)
        with running([reader]):
            h = reader.receive(SETUP_TIMEOUT_S)
    finally:
        broker.stop()
    return Result(
        test,
        published=done["published"],
        received=(h["frames"],),
        fetch_ms=h["median_ms"],
        fetch_first_ms=h["first_ms"],
        connect_ms=h["connect_ms"],
        out_of_order=0 if h["correct"] else 1,
        loss=test.history_newest - h["frames"],
        pub_cpu=done["cpu"] / done["elapsed"] * 100,
        rate=done["published"] / done["elapsed"],
    )


def run_test(test: Test, profile_dir: str | None = None) -> Result:
    try:
        if test.count is not None:
            return run_history_test(test)
        return run_stream_test(test, profile_dir)
    except BenchError as exc:
        return Result(test, error=str(exc))


# --- profiles ---------------------------------------------------------------------------


class Profiler:
    """py-spy sampling one process (by PID) for the publishing phase of a test.

    py-spy counts only samples where the process runs Python code or a
    syscall that is not a wait, so the percentages below are of CPU time, not
    of wall time.  Writes ``NAME.txt`` (collapsed stacks, for flame graphs)
    and ``NAME.summary.txt`` (the hottest functions) into ``directory``.
    """

    RATE_HZ = 1000

    def __init__(self, directory: str, name: str, pid: int, seconds: float) -> None:
        self.stacks = os.path.join(directory, f"{name}.txt")
        self.summary = os.path.join(directory, f"{name}.summary.txt")
        self.name = name
        self.process = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(self.RATE_HZ),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                self.stacks,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self) -> None:
        try:
            self.process.wait(KILL_GRACE_S + 2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if os.path.exists(self.stacks):
            with open(self.stacks) as f:
                text = summarize_stacks(f.read(), title=self.name)
            with open(self.summary, "w") as f:
                f.write(text)
            click.echo(text, err=True)


def _py_spy() -> str:
    exe = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if exe is None:
        raise click.UsageError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return exe


def summarize_stacks(collapsed: str, title: str = "", top: int = 15) -> str:
    """The functions with the most self and inclusive time in py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    if not total:
        return f"{title}: no samples\n"
    lines = [f"{title}: {total} CPU samples at {Profiler.RATE_HZ} Hz"]
    for label, table in (("self", own), ("inclusive", inclusive)):
        lines.append(f"  top {label} time (% of CPU samples):")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {n / total * 100:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{func} ({os.path.basename(path)})"


# --- the table -------------------------------------------------------------------------


def _num(x: float, fmt: str = ",.0f") -> str:
    return "-" if x != x else format(x, fmt)  # NaN -> "-"


def result_text(r: Result) -> str:
    if r.error:
        return "failed"
    name = r.test.name
    if name in ("small", "fanout"):
        total = f" ({_num(r.rate * r.test.subscribers)} total)" if r.test.subscribers > 1 else ""
        return f"{_num(r.rate)} frames/s{total}"
    if name.startswith("large"):
        return f"{_num(r.mbps, ',.1f')} MB/s ({_num(r.rate)} frames/s)"
    if name == "latency":
        return f"p50 {r.p50_ms:.3f} / p99 {r.p99_ms:.3f} ms"
    return f"{r.fetch_ms:.2f} ms (first {r.fetch_first_ms:.2f})"


def verdict(r: Result) -> str:
    if r.error:
        return "MISS (failed)"
    target = TARGETS[r.test.name]
    if not target.met(r):
        return "MISS"
    if r.out_of_order:
        return "MISS (order)"
    return "pass" if r.clean else "pass, lossy"


def format_table(results: list[Result]) -> str:
    head = (
        "test",
        "workload",
        "result",
        "target",
        "best peer",
        "verdict",
        "p50 ms",
        "p99 ms",
        "max ms",
        "published",
        "loss",
        "ooo",
        "gaps",
        "broker CPU%",
        "broker s/GB",
        "broker faults/frame",
        "pub CPU%",
        "sub CPU%",
        "pub s/GB",
        "sub s/GB",
    )
    rows = [head]
    for r in results:
        t = TARGETS[r.test.name]
        rows.append(
            (
                r.test.name,
                r.test.title,
                result_text(r),
                t.text,
                t.best_peer,
                verdict(r),
                _num(r.p50_ms, ".3f"),
                _num(r.p99_ms, ".3f"),
                _num(r.max_ms, ".2f"),
                f"{r.published:,}",
                f"{r.loss:,}",
                str(r.out_of_order),
                str(r.gaps),
                _num(r.broker_cpu),
                _num(r.broker_s_per_gb, ".3f"),
                _num(r.broker_faults, ".1f"),
                _num(r.pub_cpu),
                _num(r.sub_cpu),
                _num(r.pub_s_per_gb, ".3f"),
                _num(r.sub_s_per_gb, ".3f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [
        "",
        "Rates are per subscriber (the slowest one): frames received in order / (last receive"
        " - first send).",
        "Latency is one-way, send (publisher's put) to receive (subscriber's loop); in the"
        " max-rate tests it includes queueing.",
        "broker s/GB: its CPU seconds per 10**9 bytes of frames put (the issue's"
        " large-frame target compares it with the NATS server's); faults/frame: its page"
        " faults per frame put (~25 a 100 KB frame while a ring fills, a few once it evicts).",
        "pub/sub s/GB: the publisher's CPU seconds per 10**9 bytes it put, a subscriber's"
        " per 10**9 bytes it received (the mean over subscribers).",
        "CPU% is of one core over the test; sub CPU% is the mean over subscribers."
        " history: fetch time is the median of"
        f" {HISTORY_REPEATS}, after connecting; 'published' there is the ring fill.",
    ]
    for r in results:
        if r.error:
            notes.append(f"{r.test.name}: {r.error}")
        elif r.loss and r.gaps:
            notes.append(
                f"{r.test.name}: the subscriber fell more than its ring"
                f" ({r.test.cache_bytes / 2**30:g} GiB / {r.test.cache_frames:,} frames) behind"
                f" the publisher; the broker reported the {r.loss:,} evicted frames as"
                f" {r.gaps} gaps (none lost silently)"
            )
        elif r.test.name == "history":
            notes.append(
                f"history: connect {r.connect_ms:.1f} ms, fill at {_num(r.rate)} frames/s,"
                f" frames correct and in order: {'yes' if r.out_of_order == 0 else 'NO'}"
            )
    return "\n".join(lines + notes)


@click.command()
@click.option("--quick", is_flag=True, help="1-s tests (2 s for latency): a smoke check.")
@click.option(
    "--tests",
    "names",
    default="small,fanout,large100k,large1m,latency,history",
    show_default=True,
    help="Comma-separated tests to run.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.5),
    help="Seconds each streaming test publishes (default 3, latency 5; 1 and 2 with --quick).",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False),
    help="Sample broker, publisher and subscribers with py-spy into this directory.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Run each broker with a fresh --data-dir under this directory (the disk archive on).",
)
@click.option("--auth", is_flag=True, help="Run the broker with --auth (clients log in).")
@click.option("--tls", is_flag=True, help="Run the broker with TLS (a lab certificate).")
def main(
    quick: bool,
    names: str,
    duration: float | None,
    profile_dir: str | None,
    data_dir: str | None,
    auth: bool,
    tls: bool,
) -> None:
    """Measure the broker with publisher, broker and subscribers as separate processes."""
    global DATA_DIR
    DATA_DIR = data_dir
    secure(auth, tls)
    tests = make_tests(quick)
    if duration is not None:
        tests = {
            k: attrs.evolve(t, duration=duration) if t.duration is not None else t
            for k, t in tests.items()
        }
    if profile_dir is not None:
        _py_spy()
        os.makedirs(profile_dir, exist_ok=True)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in tests]
    if unknown:
        raise click.UsageError(f"unknown test(s) {', '.join(unknown)}; known: {', '.join(tests)}")
    click.echo(
        f"# turbine {turbine.__version__}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, {platform.platform()}"
    )
    results = []
    for name in chosen:
        click.echo(f"# {name}: {tests[name].title} ...", err=True)
        results.append(run_test(tests[name], profile_dir))
    click.echo(format_table(results))


if __name__ == "__main__":
    main()
