"""Mirror and JetStream bridge benchmark: throughput against a direct put, and lag.

Run by hand from the checkout (a short run, about a minute; prints markdown tables)::

    .venv/bin/python benchmarks/mirror.py
    .venv/bin/python benchmarks/mirror.py --tests mirror,lag --frames 20000
    .venv/bin/python benchmarks/mirror.py --tests mirror,catch-up --hosts 2

Brokers are ``turbine serve`` processes on free loopback ports, the mirror a
``turbine mirror`` process, the bridges ``python -m components.jetstream_bridge``
processes, the NATS cluster three ``nats-server`` processes (replicas 3).  The
benchmark process puts and reads through the public client API.

* ``mirror``: the direct put rate into A (frames put and flushed per second),
  then the rate with the mirror copying: from the first put into A until B
  holds the last frame (a subscriber of B from that frame on).  With each, the CPU seconds
  every process spent meanwhile: on shared cores the wall rates swing with
  the load, the CPU a frame costs much less.
* ``catch-up``: A holds the frames already (after a cut link or a late
  start), then the mirror starts: from the copy's opening on B until B
  holds them all, with every process's CPU meanwhile, against a direct put
  of the same frames into a fresh B.  Both brokers keep every frame (the
  source's cache_bytes leaves room for each frame's bookkeeping too); the
  mirror's own start, until it opens the copy, is printed apart.
* ``lag`` (shared cores): 1,000 frames/s put into A with their send time; a
  subscriber of B measures each frame's arrival minus its send time (one clock, one machine).
* ``bridge`` (shared cores): nats-py publishing the same frames straight to the stream
  (pipelined, every acknowledgement awaited), against the export (A holds the
  frames; until the stream has them) and the import (until B has them).

Two models of where the processes run (``--hosts``; each row says which):

* ``shared``: every process on every core of this machine, as one machine
  runs them.  A live copy has five busy processes on the cores a direct put
  shares with one: this measures the contention as much as the mirror.
* ``two hosts``: a site per core, as two machines (the link is loopback):
  site A (the producer, broker A and a *push* mirror) on the first CPU, site
  B (broker B and a *pull* mirror) on the second; the direct put with the
  producer and its broker on the first CPU alone.  The benchmark's own
  waiter (a subscriber of B that gets one frame) runs with the producer.

Each row says how busy each CPU was with the run's own processes (their CPU
seconds over the wall time), and in brackets with every program's work
(``/proc/stat``, in clock ticks): a row bound by a CPU shows it near 100 %;
one well below was held up, by other programs on a pinned CPU (which a
pinned process cannot move away from) when the bracket is near 100 %, else
by waiting.

On 2 shared cores the numbers vary by 20-30 % from run to run; the load
average is printed with each table.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import trio

from turbine import Frame, open_client
from turbine._constants import FRAME_OVERHEAD_BYTES

sys.path.insert(0, os.path.dirname(__file__))
from throughput import cpu_seconds  # noqa: E402  (a sibling script, not a package)

HERE = Path(__file__).resolve().parent.parent
TURBINE = str(Path(sys.executable).parent / "turbine")
SRC = "daq_bench_data_source"
STAMP = struct.Struct("<d")
ALL_CPUS = frozenset(os.sched_getaffinity(0))
Cpus = frozenset[int] | None  # None: every CPU this benchmark may use


@dataclass(frozen=True)
class Model:
    """Where the processes of a run go: site A's and site B's CPUs."""

    name: str
    site_a: Cpus = None
    site_b: Cpus = None

    def placements(self) -> list[Place]:
        """The mirror's places in this model: a process beside A or B, or inside B or A."""
        inside = [
            Place(f"inside B (CPU {cpus_text(self.site_b)})", self.site_b, inside="to"),
            Place(f"inside A (CPU {cpus_text(self.site_a)})", self.site_a, inside="from"),
        ]
        if self.site_a == self.site_b:
            return [Place("push = pull", self.site_a), *inside]
        return [
            Place(f"push (CPU {cpus_text(self.site_a)})", self.site_a),
            Place(f"pull (CPU {cpus_text(self.site_b)})", self.site_b),
            *inside,
        ]


@dataclass(frozen=True)
class Place:
    """Where a run's mirror goes: its label, its CPUs, and whether broker B
    (``"to"``) or A (``"from"``) copies itself (``turbine mirror --inside to|from``:
    the program only asks it to)."""

    label: str
    cpus: Cpus
    inside: str = ""


def cpus_text(cpus: Cpus) -> str:
    return ",".join(map(str, sorted(ALL_CPUS if cpus is None else cpus)))


def models(hosts: str) -> list[Model]:
    """The models ``--hosts`` names: 1 (shared cores), 2 (two hosts) or both."""
    chosen = []
    for item in hosts.split(","):
        if item == "1":
            chosen.append(Model("shared"))
        elif item == "2":
            if len(ALL_CPUS) < 2:
                raise click.UsageError("--hosts 2 needs two CPUs; this process may use one")
            first, second = sorted(ALL_CPUS)[:2]
            chosen.append(Model("two hosts", frozenset({first}), frozenset({second})))
        else:
            raise click.UsageError(f"--hosts takes 1, 2 or 1,2, not {item!r}")
    return chosen


def pin(pid: int, cpus: Cpus) -> None:
    """Run every thread of process ``pid`` (0: this one) on ``cpus`` only; threads
    it starts later inherit that."""
    for task in os.listdir(f"/proc/{pid or os.getpid()}/task"):
        os.sched_setaffinity(int(task), ALL_CPUS if cpus is None else cpus)


@contextmanager
def pinned(cpus: Cpus) -> Iterator[None]:
    """This process (the producer and the measuring clients) on ``cpus`` meanwhile."""
    pin(0, cpus)
    try:
        yield
    finally:
        pin(0, None)


@contextmanager
def process(*argv: str, cpus: Cpus = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pin(proc.pid, cpus)  # it is starting Python: no thread of its own yet
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def broker() -> Iterator[str]:
    with broker_process() as (address, _):
        yield address


@contextmanager
def broker_process(cpus: Cpus = None) -> Iterator[tuple[str, int]]:
    """A broker on ``cpus``: its address and process id."""
    argv = (TURBINE, "serve", "--port", "0", "--max-memory", "3GiB")
    with process(*argv, cpus=cpus) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield line.split()[-1], proc.pid


def own_cpu() -> float:
    """CPU seconds of this process (the producer and the measuring client) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Spell = tuple[float, dict[int, float]]  # wall seconds, and each CPU's busy seconds


def machine() -> Spell:
    """The wall clock, and the seconds each CPU has been busy so far with any
    program's work (``/proc/stat``: all but idle and waiting for I/O)."""
    ticks = os.sysconf("SC_CLK_TCK")
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = list(map(int, fields[:8]))
                busy[int(name[3:])] = (sum(values) - values[3] - values[4]) / ticks
    return time.perf_counter(), busy


def since(mark: Spell) -> Spell:
    """The wall seconds and each CPU's busy seconds since ``mark`` (:func:`machine`)."""
    (then, was), (now, busy) = mark, machine()
    return now - then, {cpu: busy[cpu] - was.get(cpu, 0.0) for cpu in busy}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


async def put_frames(address: str, count: int, size: int, cache_bytes: int | None = None) -> float:
    """Put ``count`` frames of ``size`` bytes; the rate (frames/s) until flushed.

    The source holds ``cache_bytes`` (by default the frames' bytes and 1 MiB,
    which a ring of small frames fills before it holds them all).
    """
    payload = b"\0" * size
    if cache_bytes is None:
        cache_bytes = count * size + 2**20
    async with open_client(address, name="daq") as tb:
        src = await tb.open_source(SRC, cache_frames=count + 10, cache_bytes=cache_bytes)
        start = time.perf_counter()
        for _ in range(count):
            await src.put("x", payload)
        await tb.flush()
        return count / (time.perf_counter() - start)


async def wait_for_seq(address: str, seq: int) -> None:
    """Return once the source on ``address`` holds frame ``seq`` of channel x.

    A subscription from number ``seq`` on: the broker skips the frames before
    it and sends that frame alone, as it arrives (a channel made after the
    subscription comes from its first frame: only a wait for frame 1 meets
    one).  Asking ``list`` every 5 ms instead cost an idle broker 340-410 us
    a list (4 % of a core, load 11-13) and this process 0.04-0.05 s a 100 KB
    catch-up, work that a direct put's run does not have.
    """
    async with open_client(address) as tb, tb.subscribe(f"{SRC}/x", start=seq) as sub:
        async for item in sub:
            if isinstance(item, Frame) and item.seq >= seq:
                return


def mirror_process(a: str, b: str, place: Place = Place("", None)):
    """A mirror at ``place``, as one runs by default: it lists A (and flushes B)
    once a second.  (At ``--poll 0.05`` those took 10 % of the mirror's samples
    in a slow, loaded 100 KB run, work a deployed mirror does not do.)"""
    inside = ("--inside", place.inside) if place.inside else ()
    return process(TURBINE, "mirror", "--from", a, "--to", b, "daq_*", *inside, cpus=place.cpus)


async def mirrored_rate(
    a: str, b: str, count: int, size: int, on_start: Callable[[], None] = lambda: None
) -> float:
    """With the mirror copying: frames/s from the first put into A until B holds the last.

    ``on_start`` is called as the clock starts (the mirror copies by then).
    """
    payload = b"\0" * size
    async with open_client(a, name="daq") as tb:
        src = await tb.open_source(SRC, cache_frames=count + 10, cache_bytes=count * size + 2**20)
        await src.put("x", payload)
        await tb.flush()
        await wait_for_seq(b, 1)  # the copy is open and followed
        async with trio.open_nursery() as nursery:
            on_start()
            start = time.perf_counter()
            nursery.start_soon(wait_for_seq, b, count + 1)
            for _ in range(count):
                await src.put("x", payload)
            await tb.flush()
        return count / (time.perf_counter() - start)


def direct_run(
    model: Model, count: int, size: int, cache_bytes: int | None = None
) -> tuple[float, list[float], Spell]:
    """A direct put (the producer and its broker on site A's CPUs): its rate, the
    CPU seconds of the broker and of the producer meanwhile, and that while's spell."""
    with pinned(model.site_a), broker_process(model.site_a) as (a, a_pid):
        before, mark = [cpu_seconds(a_pid), own_cpu()], machine()
        rate = trio.run(put_frames, a, count, size, cache_bytes)
        after = [cpu_seconds(a_pid), own_cpu()]
        return rate, [end - begin for end, begin in zip(after, before, strict=True)], since(mark)


def mirrored_run(
    model: Model, place: Place, count: int, size: int
) -> tuple[float, list[float], Spell]:
    """A mirrored put (the mirror at ``place``): its rate, the CPU seconds of
    A, B, the mirror and the producer (with the waiter) from the first timed put
    on, and the spell since then."""
    with (
        pinned(model.site_a),
        broker_process(model.site_a) as (a, a_pid),
        broker_process(model.site_b) as (b, b_pid),
        mirror_process(a, b, place) as mirror,
    ):
        pids = (a_pid, b_pid, mirror.pid)

        def now() -> list[float]:
            return [*map(cpu_seconds, pids), own_cpu()]

        start: list[float] = []
        marks: list[Spell] = []

        def on_start() -> None:
            start.extend(now())
            marks.append(machine())

        rate = trio.run(mirrored_rate, a, b, count, size, on_start)
        spent = [end - begin for end, begin in zip(now(), start, strict=True)]
        return rate, spent, since(marks[0])


def holding_all(count: int, size: int) -> int:
    """cache_bytes for a source that keeps all ``count`` frames of ``size`` bytes."""
    return count * (size + FRAME_OVERHEAD_BYTES) + 2**20


async def copy_opened(address: str) -> None:
    """Return once the mirror has opened its copy of the source on ``address``."""
    async with open_client(address) as tb:
        while True:
            if await tb.list_sources(SRC):
                return
            await trio.sleep(0.005)


def catch_up_run(
    model: Model, place: Place, count: int, size: int
) -> tuple[float, float, list[float], Spell]:
    """A holds ``count`` frames, then the mirror starts (at ``place``): its
    start-up (seconds until the copy is open on B), the rate from then until B
    holds them all, the CPU seconds meanwhile of A, B, the mirror and the waiter,
    and that while's spell."""
    with (
        pinned(model.site_a),
        broker_process(model.site_a) as (a, a_pid),
        broker_process(model.site_b) as (b, b_pid),
    ):
        trio.run(put_frames, a, count, size, holding_all(count, size))
        launched = time.perf_counter()
        with mirror_process(a, b, place) as mirror:
            pids = (a_pid, b_pid, mirror.pid)

            def now() -> list[float]:
                return [*map(cpu_seconds, pids), own_cpu()]

            trio.run(copy_opened, b)
            start, before, mark = time.perf_counter(), now(), machine()
            trio.run(wait_for_seq, b, count)
            end = time.perf_counter()
            spent = [after - begin for after, begin in zip(now(), before, strict=True)]
            spell = since(mark)
    return start - launched, count / (end - start), spent, spell


def models_text(chosen: list[Model]) -> str:
    """What each model's name in the tables means."""
    text = []
    for model in chosen:
        if model.site_a == model.site_b:
            text.append(f"*{model.name}*: every process on CPUs {cpus_text(model.site_a)}")
        else:
            a, b = cpus_text(model.site_a), cpus_text(model.site_b)
            text.append(
                f"*{model.name}*: site A (producer, broker A, a push mirror) on CPU {a}, "
                f"site B (broker B, a pull mirror) on CPU {b}; the direct put on CPU {a} alone"
            )
    return "Models: " + "; ".join(text) + "."


def sizes(frames: int) -> tuple[tuple[int, int], ...]:
    """(frame size, frames) of each row: ``frames`` of 64 B, a hundredth of 100 KB."""
    return ((64, frames), (100_000, max(200, frames // 100)))


def rate_text(rate: float, size: int) -> str:
    return f"{rate:,.0f} /s ({rate * size / 1e6:,.1f} MB/s)"


def busy(places: list[Cpus], cpu: list[float], spell: Spell) -> str:
    """How busy each place's CPUs were with the processes there (``cpu``, one per
    place) over the ``spell``, and in brackets with every program's work.  A row
    whose busiest CPU is near 100 % was bound by it; one well below was held up:
    by other programs (the bracket near 100 %) or by waiting (both below)."""
    seconds, machine_busy = spell
    spent: dict[frozenset[int], float] = {}
    for place, used in zip(places, cpu, strict=True):
        cpus = ALL_CPUS if place is None else place
        spent[cpus] = spent.get(cpus, 0.0) + used
    cells = []
    for cpus, used in sorted(spent.items(), key=lambda item: sorted(item[0])):
        everyone = sum(machine_busy.get(n, 0.0) for n in cpus) / seconds / len(cpus)
        cells.append(f"CPU {cpus_text(cpus)} {used / seconds / len(cpus):.0%} ({everyone:.0%})")
    return ", ".join(cells)


CpuRow = tuple[int, int, str, str, list[float], list[float]]


def print_cpu(note: str, columns: list[str], rows: list[CpuRow]) -> None:
    """The CPU seconds of each process (and per GB of payload), per frame size,
    model and mirror place: the direct run's, then the copy's, and the copy's
    total against the direct one's."""
    print(f"\nCPU seconds per process {note}; in brackets per GB of payload\n")
    print(f"| frame | model | mirror | {' | '.join(columns)} | all, copy / direct |")
    print("|---" * (len(columns) + 4) + "|")
    for size, count, model, where, direct_cpu, copy_cpu in rows:
        total = sum(direct_cpu)
        ratio = f"{sum(copy_cpu) / total:.1f}x" if total else "-"
        gb = count * size / 1e9
        cells = " | ".join(f"{c:.3f} ({c / gb:.2f})" for c in [*direct_cpu, *copy_cpu])
        print(f"| {size:,} B | {model} | {where} | {cells} | {ratio} |")


#: A copy's run: (model, the mirror's CPUs, frames, frame size) -> its rate, the CPU
#: seconds of A, B, the mirror and this process, its spell, and cells of its own.
CopyRun = Callable[[Model, Place, int, int], tuple[float, list[float], Spell, list[str]]]


def bench_copies(
    title: str,
    columns: list[str],
    frames: int,
    chosen: list[Model],
    direct: Callable[[Model, int, int], tuple[float, list[float], Spell]],
    copy: CopyRun,
    cpu_note: str,
    cpu_columns: list[str],
) -> None:
    """A table of copies against direct puts, a row per frame size, model and
    mirror place; then the CPU each process spent (:func:`print_cpu`)."""
    print(f"\n### {title} ({load()})\n")
    print(models_text(chosen) + "\n")
    head = ["frame", "model", "mirror", "frames", *columns, "busy: direct", "busy: copy", "load"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    cpu_rows: list[CpuRow] = []
    for size, count in sizes(frames):
        for model in chosen:
            direct_rate, direct_cpu, direct_spell = direct(model, count, size)
            site_a, site_b = model.site_a, model.site_b
            for place in model.placements():
                where, cpus = place.label, place.cpus
                rate, spent, spell, extra = copy(model, place, count, size)
                cells = [
                    f"{size:,} B",
                    model.name,
                    where,
                    f"{count:,}",
                    rate_text(direct_rate, size),
                    rate_text(rate, size),
                    f"{rate / direct_rate:.0%}",
                    *extra,
                    busy([site_a, site_a], direct_cpu, direct_spell),
                    busy([site_a, site_b, cpus, site_a], spent, spell),
                    f"{os.getloadavg()[0]:.1f}",
                ]
                print("| " + " | ".join(cells) + " |")
                cpu_rows.append((size, count, model.name, where, direct_cpu, spent))
    print_cpu(cpu_note, cpu_columns, cpu_rows)


def bench_catch_up(frames: int, chosen: list[Model]) -> None:
    def direct(model: Model, count: int, size: int) -> tuple[float, list[float], Spell]:
        return direct_run(model, count, size, holding_all(count, size))

    def copy(
        model: Model, place: Place, count: int, size: int
    ) -> tuple[float, list[float], Spell, list[str]]:
        started, rate, spent, spell = catch_up_run(model, place, count, size)
        return rate, spent, spell, [f"{started:.2f} s"]

    bench_copies(
        "Mirror catch-up: A holds the frames, then the mirror starts",
        [
            "direct put into B",
            "A -> B, from the copy's opening",
            "catch-up / direct",
            "mirror start",
        ],
        frames,
        chosen,
        direct,
        copy,
        "(the time each ran)",
        ["direct: B", "direct: producer", "catch-up: A", "B", "mirror", "waiter"],
    )


def bench_mirror(frames: int, chosen: list[Model]) -> None:
    def copy(
        model: Model, place: Place, count: int, size: int
    ) -> tuple[float, list[float], Spell, list[str]]:
        return (*mirrored_run(model, place, count, size), [])

    bench_copies(
        "Mirror throughput",
        ["direct put into A", "put into A, mirrored to B", "mirrored / direct"],
        frames,
        chosen,
        direct_run,
        copy,
        "(the time each ran; the producer's includes the waiter)",
        ["direct: A", "direct: producer", "mirrored: A", "B", "mirror", "producer"],
    )


async def lag_run(a: str, b: str, rate: int, seconds: float) -> list[float]:
    count = int(rate * seconds)
    lags: list[float] = []
    async with open_client(a, name="daq") as pa, open_client(b) as rb:
        src = await pa.open_source(SRC, cache_frames=count + 10)
        await src.put("x", STAMP.pack(time.time()))
        await pa.flush()
        await wait_for_seq(b, 1)  # the mirror copies; from here on each frame is timed

        async def read() -> None:
            async with rb.subscribe(f"{SRC}/x", start=2) as sub:
                while len(lags) < count:
                    for item in await sub.receive_batch():
                        if getattr(item, "seq", 0) >= 2:
                            lags.append(time.time() - STAMP.unpack(bytes(item.data)[:8])[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            start = trio.current_time()
            for i in range(count):
                await trio.sleep_until(start + i / rate)
                await src.put("x", STAMP.pack(time.time()))
    return lags


def bench_lag(rate: int, seconds: float) -> None:
    with broker() as a, broker() as b, mirror_process(a, b):
        lags = trio.run(lag_run, a, b, rate, seconds)
    q = statistics.quantiles(lags, n=100)
    print(f"\n### Mirror lag at {rate:,} frames/s, {len(lags):,} frames, shared cores ({load()})\n")
    print("| p50 | p99 | max |")
    print("|---|---|---|")
    print(f"| {q[49] * 1e3:.1f} ms | {q[98] * 1e3:.1f} ms | {max(lags) * 1e3:.1f} ms |")


async def nats_direct(urls: list[str], count: int, size: int) -> float:
    import asyncio

    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="DIRECT", subjects=["direct.>"], num_replicas=3))
    payload = b"\0" * size
    start = time.perf_counter()
    futures = []
    for i in range(count):
        futures.append(
            await js.publish_async(
                "direct.x", payload, headers={"Nats-Msg-Id": str(i), "Turbine-Seq": str(i)}
            )
        )
        if len(futures) >= 1000:
            await asyncio.gather(*futures)
            futures = []
    await asyncio.gather(*futures)
    rate = count / (time.perf_counter() - start)
    await js.delete_stream("DIRECT")
    await nc.close()
    return rate


async def stream_messages(urls: list[str]) -> int:
    import nats

    nc = await nats.connect(servers=urls)
    try:
        return (await nc.jetstream().stream_info("TURBINE")).state.messages
    except Exception:
        return 0
    finally:
        await nc.close()


async def bridged_rates(
    a: str, b: str, urls: list[str], count: int, size: int
) -> tuple[float, float]:
    """With both bridges carrying: frames/s from the first put into A until the
    stream holds the last, and until B holds it."""
    payload = b"\0" * size
    async with open_client(a, name="daq") as tb:
        src = await tb.open_source(SRC, cache_frames=count + 10, cache_bytes=count * size + 2**20)
        await src.put("x", payload)
        await tb.flush()
        await wait_for_seq(b, 1)  # both bridges are up and follow the channel
        done: dict[str, float] = {}

        async def into_b() -> None:
            await wait_for_seq(b, count + 1)
            done["b"] = time.perf_counter()

        async def into_stream() -> None:
            while True:  # the cluster announces nothing: ask it
                if await trio.to_thread.run_sync(_stream_messages, urls) > count:
                    done["stream"] = time.perf_counter()
                    return
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            nursery.start_soon(into_b)
            nursery.start_soon(into_stream)
            for _ in range(count):
                await src.put("x", payload)
            await tb.flush()
    return count / (done["stream"] - start), count / (done["b"] - start)


def _stream_messages(urls: list[str]) -> int:
    import asyncio

    return asyncio.run(stream_messages(urls))


def bench_bridge(frames: int) -> None:
    import asyncio

    from components.jetstream_bridge.testing import NatsCluster

    print(f"\n### JetStream bridge, 3 nodes, replicas 3, shared cores ({load()})\n")
    print(
        "| frame | frames | nats-py publish | A -> export -> stream | A -> stream -> import -> B |"
    )
    print("|---|---|---|---|---|")
    bridge = [sys.executable, "-m", "components.jetstream_bridge"]
    for size, count in ((64, frames), (100_000, max(200, frames // 100))):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = NatsCluster(Path(tmp))
            cluster.start()
            try:
                time.sleep(3)  # the cluster elects its meta leader
                urls = ",".join(cluster.urls)
                direct = asyncio.run(nats_direct(cluster.urls, count, size))
                common = ["--nats", urls, "--poll", "0.1", "daq_*"]
                with (
                    broker() as a,
                    broker() as b,
                    process(*bridge, "export", "--turbine", a, *common),
                    process(*bridge, "import", "--turbine", b, *common),
                ):
                    export, imported = trio.run(bridged_rates, a, b, cluster.urls, count, size)
            finally:
                cluster.stop()
        print(
            f"| {size:,} B | {count:,} | {direct:,.0f} /s | {export:,.0f} /s ({export / direct:.0%}) "
            f"| {imported:,.0f} /s ({imported / direct:.0%}) |"
        )


@click.command()
@click.option("--tests", default="mirror,catch-up,lag,bridge", show_default=True)
@click.option(
    "--frames", default=50_000, show_default=True, help="64 B frames per run (100 KB: /100)."
)
@click.option("--rate", default=1000, show_default=True, help="Frames/s for the lag test.")
@click.option("--seconds", default=5.0, show_default=True, help="Length of the lag test.")
@click.option(
    "--hosts",
    default="1,2",
    show_default=True,
    help="mirror and catch-up: 1 = all on shared cores, 2 = a site per CPU, as two hosts.",
)
def main(tests: str, frames: int, rate: int, seconds: float, hosts: str) -> None:
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    chosen = tests.split(",")
    placed = models(hosts)
    if "mirror" in chosen:
        bench_mirror(frames, placed)
    if "catch-up" in chosen:
        bench_catch_up(frames, placed)
    if "lag" in chosen:
        bench_lag(rate, seconds)
    if "bridge" in chosen:
        bench_bridge(frames // 5)


if __name__ == "__main__":
    main()
