"""The web viewer's speed: frame age at the tabs, the viewer's CPU, the broker's
throughput with and without tabs, and the time to read a long channel decimated.

Run by hand from the checkout (prints markdown tables; about two minutes)::

    .venv/bin/python benchmarks/web.py
    .venv/bin/python benchmarks/web.py --duration 5 --tabs 2 --rounds 2 --hours 0.25

A broker (``turbine serve``) and the viewer (``turbine web``) run as processes
of their own.  This process runs the load (16 synthetic cameras putting
thumbnail JPEGs at 10 fps and one DAQ with 64 channels at 1 kHz in 0.1 s
blocks); a process of its own runs the tabs: each tab is one Server-Sent
Events stream for every DAQ channel and every camera (the wall's watched
thumbnails), as the page opens it, read from a raw socket.  For the first seconds of a phase (no flood) the
tabs parse every event: a frame's age is the time it reaches the tab minus
its broker timestamp (one clock on one machine).  During the flood they only
count the events (they stand in for browsers, which on a site run on other
machines: their reading should take as little of these 2 cores as it can;
their CPU is printed).  The tabs do not load the images the stream announces
(a browser would, one in flight per tile).  A flood producer in another process
puts 1 KiB frames as fast as the broker takes them; its rate is the broker's
throughput, and the broker's CPU seconds over the frames it took are its cost
per frame (steadier than a rate on a shared machine: another process's load
slows the flood but does not make a frame cost the broker more).  Before each
flood the broker's CPU is measured for a few seconds without it: the
difference with tabs open is what the tabs cost the broker, which a broker
running flat out on one core would lose from its throughput.  Phases
without and with tabs alternate, ``--rounds`` times; the summary is the median
of the rounds.

Last, one channel gets ``--hours`` of 1 kHz samples (1000-sample blocks with
explicit timestamps, a day by default: 86.4 M samples, 691 MB, held in the
broker's memory) and the viewer is asked for the whole span with
``max_points=2000``, as a plot of that span does: it reads the broker's block
summaries, not the samples.  On 2
shared cores, numbers vary a lot from run to run: say the load with them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

import click
import trio
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from throughput import Broker, cpu_seconds  # noqa: E402  (a sibling script, not a package)

import turbine  # noqa: E402
from turbine.web.live import WATCH_MAX_RATE  # noqa: E402

CAMERAS, CAMERA_FPS = 16, 10.0
DAQ_CHANNELS, DAQ_RATE, DAQ_BLOCK_S = 64, 1000.0, 0.1
FLOOD_FRAME = 1024
F64 = "application/x-float64-le"


class Viewer:
    """``turbine web`` on a free loopback port, in its own process."""

    def __init__(self, broker: str) -> None:
        exe = shutil.which("turbine", path=os.path.dirname(sys.executable)) or "turbine"
        self.process = subprocess.Popen(
            [exe, "web", "--turbine", broker, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("turbine web on "):
            self.stop()
            raise SystemExit(f"the viewer did not start (said {line.strip()!r})")
        self.url = line.split()[3].rstrip("/")

    def cpu_s(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (k * 15 % 256, 80, 160)).save(buf, "JPEG")
    return buf.getvalue()


async def _cameras(tb: turbine.Client) -> None:
    sources = []
    for k in range(CAMERAS):
        src = await tb.open_source(
            f"thumbnail_cam{k:02d}_data_source", channels={"thumbnail.jpg": "image/jpeg"}
        )
        sources.append((src, _jpeg(k)))
    period = 1 / CAMERA_FPS
    deadline = trio.current_time()
    while True:
        for src, jpeg in sources:
            await src.put("thumbnail.jpg", jpeg)
        deadline += period
        await trio.sleep_until(deadline)


async def _daq(tb: turbine.Client) -> None:
    names = [f"ch{i}" for i in range(DAQ_CHANNELS)]
    src = await tb.open_source(
        "daq_bench_data_source", channels=dict.fromkeys(names, F64), cache_bytes=64 << 20
    )
    n = int(DAQ_RATE * DAQ_BLOCK_S)
    deadline, k = trio.current_time(), 0
    while True:
        block = struct.pack(f"<{n}d", *(math.sin((k * n + i) / 100) for i in range(n)))
        for name in names:
            await src.put(name, block)
        k += 1
        deadline += DAQ_BLOCK_S
        await trio.sleep_until(deadline)


#: What a tab streams, as the page's default layout asks for it: the DAQ's channels every
#: frame (its plot and newest values), the camera wall watched (each camera's newest
#: thumbnail, at most WATCH_MAX_RATE a second).
TAB_QUERY = "path=daq_bench_data_source/*&watch=thumbnail_*_data_source/*"


@dataclasses.dataclass
class TabCounts:
    ages: list[float] = dataclasses.field(default_factory=list)  # while parsing
    frames: int = 0
    lost: int = 0
    parse: bool = True  # parse every event (ages), else count them


async def _tab(url: str, counts: TabCounts, stop: trio.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(f"GET /api/stream?{TAB_QUERY} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buffer = b""
    async with stream:
        while not stop.is_set():
            data = await stream.receive_some(1 << 16)
            if not data:
                return
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            now = time.time()
            for event in events:
                frame = b"event: frame" in event
                if not (frame or b"event: dropped" in event):
                    continue
                if frame and not counts.parse:
                    counts.frames += 1
                    continue
                line = event[event.index(b"data: ") + 6 :].split(b"\r\n", 1)[0]
                body = json.loads(line.split(b"\n", 1)[0])
                if "dropped" in body:
                    counts.lost += body["dropped"]
                else:
                    counts.frames += 1
                    counts.ages.append(now - body["timestamp"])


def _flood(address: str, seconds: float, out: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        async with turbine.open_client(address, name="flood") as tb:
            src = await tb.open_source(
                "daq_flood_data_source", channels={"x": "application/octet-stream"}
            )
            payload = b"x" * FLOOD_FRAME
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                for _ in range(100):
                    await src.put("x", payload)
                n += 100
            await src.flush()
            out.send(n / seconds)

    trio.run(main)


def _flood_rate(address: str, seconds: float) -> float:
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, not a fork of trio's
    ends = spawn.Pipe(duplex=False)
    p = spawn.Process(target=_flood, args=(address, seconds, ends[1]))
    p.start()
    rate = ends[0].recv()
    p.join()
    return float(rate)


def _tabs(
    url: str, tabs: int, parse: float, count: float, out: multiprocessing.connection.Connection
) -> None:
    """``tabs`` streams (after a second to connect) parsing every event for ``parse``
    seconds, then counting them for ``count`` seconds; sends their ages, frames and losses,
    and this process's CPU (a fraction of a core) while it counted."""

    async def main() -> None:
        counts = TabCounts()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(tabs):
                nursery.start_soon(_tab, url, counts, stop)
            await trio.sleep(1.0)  # connected, the first (newest) frames read
            counts.ages.clear()
            counts.frames = counts.lost = 0
            out.send("measuring")
            await trio.sleep(parse)
            counts.parse = False
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            await trio.sleep(count)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            stop.set()
            nursery.cancel_scope.cancel()
        used = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        out.send((counts.ages, counts.frames, counts.lost, used / count))

    trio.run(main)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 100 else float("nan")


async def _phase(broker: Broker, viewer: Viewer, tabs: int, seconds: float) -> dict[str, float]:
    """The flood's rate, the broker's CPU per flood frame and the viewer's CPU with ``tabs``
    tabs open (the tabs in a process of their own)."""
    address = broker.address
    spawn = multiprocessing.get_context("spawn")
    ends = spawn.Pipe(duplex=False)
    watched = QUIET_S + seconds + 1  # the tabs stay open past the flood's end
    readers = spawn.Process(target=_tabs, args=(viewer.url, tabs, QUIET_S, seconds + 1, ends[1]))
    if tabs:
        readers.start()
        await trio.to_thread.run_sync(ends[0].recv)  # "measuring"
    quiet0, began = broker.cpu_s(), time.monotonic()
    await trio.sleep(QUIET_S)  # the broker's CPU for the load and the tabs alone
    background = (broker.cpu_s() - quiet0) / (time.monotonic() - began)
    cpu0, broker0 = viewer.cpu_s(), broker.cpu_s()
    began = time.monotonic()
    rate = await trio.to_thread.run_sync(_flood_rate, address, seconds)
    took = time.monotonic() - began  # (the flood process's start and connect included)
    cpu = (viewer.cpu_s() - cpu0) / seconds
    flood_cpu = broker.cpu_s() - broker0 - background * took
    ages: list[float] = []
    frames = lost = 0
    tabs_cpu = 0.0
    if tabs:
        ages, frames, lost, tabs_cpu = await trio.to_thread.run_sync(ends[0].recv)
        readers.join()
    return {
        "rate": rate,
        "background": background,
        "broker_us": 1e6 * flood_cpu / (rate * seconds),
        "cpu": cpu,
        "tabs_cpu": tabs_cpu,
        "events": frames / watched,
        "dropped": lost / watched,
        "p50": _pct(ages, 50),
        "p99": _pct(ages, 99),
    }


#: Seconds of each phase spent measuring the broker's CPU without the flood.
QUIET_S = 3.0
#: Distinct sample blocks the long channel cycles through (packing 86 M sines would take longer
#: than everything else here); one block in every 7 has a spike, so the envelope is not flat.
DRAW_BLOCKS = 64


async def _draw(address: str, viewer: Viewer, hours: float) -> tuple[int, float, float, int]:
    blocks, n = int(hours * 3600), 1000
    made = [
        struct.pack(
            f"<{n}d", *(math.sin((k * n + i) / 5000) + (k % 7 == 0) * (i == 500) for i in range(n))
        )
        for k in range(DRAW_BLOCKS)
    ]
    async with turbine.open_client(address, name="day") as tb:
        src = await tb.open_source(
            "daq_day_data_source",
            channels={"ch0": F64},
            cache_frames=blocks,
            cache_bytes=blocks * (n * 8 + 64) + (1 << 20),
        )
        t0 = time.time() - blocks
        began = time.perf_counter()
        for k in range(blocks):
            await src.put("ch0", made[k % DRAW_BLOCKS], timestamp=t0 + k)
        await src.flush()
        print(f"(put {blocks * n:,} samples in {time.perf_counter() - began:.1f} s)")
        url = f"{viewer.url}/api/channel/daq_day_data_source/ch0?start={t0}&duration={blocks}&max_points=2000"
        took = []
        for _ in range(3):
            start = time.perf_counter()
            body = await trio.to_thread.run_sync(
                lambda: urllib.request.urlopen(url, timeout=300).read()
            )
            took.append(time.perf_counter() - start)
        answer = json.loads(body)
        assert answer.get("summarized") or blocks * n < 1_000_000, "not from the summaries"
    return answer["samples"], min(took), statistics.median(took), len(answer["v"])


@click.command()
@click.option("--duration", default=5.0, show_default=True, help="Seconds per phase.")
@click.option("--tabs", default=4, show_default=True)
@click.option(
    "--rounds", default=3, show_default=True, help="Phases without and with tabs, interleaved."
)
@click.option(
    "--hours", default=24.0, show_default=True, help="Hours of 1 kHz data to draw (0: none)."
)
def main(duration: float, tabs: int, rounds: int, hours: float) -> None:
    """Measure the viewer under load and print markdown tables."""
    broker = Broker()
    viewer = Viewer(broker.address)
    load = os.getloadavg()

    async def run() -> tuple[
        list[tuple[dict[str, float], dict[str, float]]], tuple[int, float, float, int] | None
    ]:
        found = []
        async with turbine.open_client(broker.address, name="load") as tb, trio.open_nursery() as n:
            n.start_soon(_cameras, tb)
            n.start_soon(_daq, tb)
            await trio.sleep(1.0)
            for _ in range(rounds):  # interleaved: the machine's load drifts between phases
                without = await _phase(broker, viewer, 0, duration)
                found.append((without, await _phase(broker, viewer, tabs, duration)))
            n.cancel_scope.cancel()
        return found, (await _draw(broker.address, viewer, hours) if hours > 0 else None)

    try:
        found, draw = trio.run(run)
    finally:
        viewer.stop()
        broker.stop()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {os.getloadavg()[0]:.2f}"
    )
    if found:  # (--rounds 0: the draw alone)
        print(
            f"\n{CAMERAS} cameras at {CAMERA_FPS:g} fps, {DAQ_CHANNELS} DAQ channels at {DAQ_RATE:g} Hz,"
            f" {duration:g} s per phase, {rounds} rounds of 0 then {tabs} tabs\n"
        )
        offered = tabs * (DAQ_CHANNELS / DAQ_BLOCK_S + CAMERAS * min(CAMERA_FPS, WATCH_MAX_RATE))
        print(
            "| round | tabs | broker CPU without the flood | flood frames/s (1 KiB) | broker CPU µs per"
            " flood frame | viewer CPU (flood) | tab readers' CPU (flood) | events/s at the tabs"
            f" (offered {offered:.0f}) | dropped/s | frame age p50 (no flood) | p99 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for i, pair in enumerate(found, 1):
            for label, r in zip(("0", str(tabs)), pair, strict=True):
                if label == "0":
                    rest = "- | - | - | - | -"
                else:
                    rest = (
                        f"{r['tabs_cpu'] * 100:.0f} % | {r['events']:.0f} | {r['dropped']:.0f}"
                        f" | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms"
                    )
                print(
                    f"| {i} | {label} | {r['background'] * 100:.1f} % | {r['rate']:.0f}"
                    f" | {r['broker_us']:.2f} | {r['cpu'] * 100:.0f} % | {rest} |"
                )
        drops = [100 * (1 - b["rate"] / a["rate"]) for a, b in found]
        rate = statistics.median(drops)
        cost = statistics.median(100 * (b["broker_us"] / a["broker_us"] - 1) for a, b in found)
        tabs_cpu = statistics.median(100 * (b["background"] - a["background"]) for a, b in found)
        rounds_text = ", ".join(f"{d:+.1f} %" for d in drops)
        print(
            f"\nwith {tabs} tabs, median of {rounds} rounds: the tabs cost the broker {tabs_cpu:.1f} %"
            f" of a core (what a broker running flat out on one core would lose, target under 5 %);"
            f" a flood frame cost it {cost:+.1f} % more; the flood's rate was {rate:+.1f} % lower"
            f" (rounds: {rounds_text}; the tabs' and the viewer's processes share the 2 cores"
            " with it)"
        )
    if draw is None:  # (--hours 0: no draw)
        return
    samples, best, median, points = draw
    print("\n| samples | points | read + decimate, best of 3 | median |\n|---|---|---|---|")
    print(f"| {samples:,} ({hours:g} h at 1 kHz) | {points} | {best:.2f} s | {median:.2f} s |")


if __name__ == "__main__":
    main()
