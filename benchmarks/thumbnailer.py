"""Benchmark the thumbnailer with many synthetic cameras.

Run by hand::

    python benchmarks/thumbnailer.py [--cameras 16] [--width 1280 --height 720]
                                     [--fps 30] [--rate 1] [--duration 20]

Starts, as separate processes: a broker (``turbine serve --port 0``), the
thumbnailer (``python -m components.thumbnailer``) and a publisher that puts
``--cameras`` video sources of ``--width`` x ``--height`` JPEGs at ``--fps``
each (a few test-pattern frames rendered up front and cycled, so the
publisher stays cheap; each frame is stamped with the time it is put, its
"capture" time).  After a warm-up it measures, over ``--duration`` seconds:

* thumbnails delivered per camera per second (target: ``--rate``, 1/s);
* the thumbnailer's CPU use, from ``/proc/<pid>/stat`` (target: under 2 %
  of one core), and the bytes the broker sent it (from ``status``; target
  under 1 MiB/s: it monitors the cameras with ``max_rate``);
* the age of each thumbnail's source frame: when the thumbnailer published
  it (from its ``status``: publish time minus capture time, p50/p99, target
  p99 under 100 ms) and when this script received it (adds the delivery);
* the frames the publisher and the broker actually carried, to show the
  cameras really ran at ``--fps``.

Prints a table and exits 0; the targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throughput import cpu_seconds  # noqa: E402  (a sibling script, not a package)

from components.thumbnailer.component import percentile  # noqa: E402
from components.video.synthetic import PatternRenderer  # noqa: E402
from turbine import Frame, open_client, send_command  # noqa: E402

THUMBS = "thumbnail_*_data_source/thumbnail.jpg"


# --- the publisher (its own process) ------------------------------------------------


async def publish(address: str, cameras: int, width: int, height: int, fps: float) -> None:
    renderer = PatternRenderer(width, height)
    frames = [renderer.render(i * 7, time.time()) for i in range(8)]
    async with open_client(address, name="bench-publisher") as tb:
        sources = [
            await tb.open_source(
                f"video_bench{i:02d}_data_source", channels={"video.jpg": "image/jpeg"}
            )
            for i in range(cameras)
        ]
        for source in sources:
            await source.set_metadata({"resolution": f"{width}x{height}", "frame_rate": fps})
        interval = 1.0 / fps
        start = trio.current_time()
        tick = 0
        while True:
            await trio.sleep_until(start + tick * interval)
            jpeg = frames[tick % len(frames)]
            for source in sources:
                await source.put("video.jpg", jpeg, timestamp=time.time())
            # Late ticks are skipped, like a camera that drops frames.
            tick = max(tick + 1, int((trio.current_time() - start) / interval))


# --- the measurement ----------------------------------------------------------------


async def wait_line(proc: trio.Process, prefix: bytes) -> str:
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        data = await proc.stdout.receive_some(1)
        if not data:
            raise RuntimeError(f"process exited before printing {prefix!r}")
        line += data
    if not line.startswith(prefix):
        raise RuntimeError(f"unexpected output {line!r}")
    return line.decode().strip()


def bytes_to_thumbnailer(status: dict[str, Any]) -> int:
    """What the broker has sent the client that watches the cameras (the thumbnailer)."""
    return sum(
        c["bytes_out"]
        for c in status["clients"]
        if any(s["pattern"].startswith("video_*") for s in c["subscriptions"])
    )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    python = sys.executable
    turbine = str(Path(python).parent / "turbine")
    procs: list[trio.Process] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        broker = await trio.lowlevel.open_process(
            [turbine, "serve", "--port", "0", "--max-memory", "1GiB"], stdout=subprocess.PIPE
        )
        procs.append(broker)
        address = (await wait_line(broker, b"turbine listening on")).split()[-1]
        thumbnailer = await trio.lowlevel.open_process(
            [
                python,
                "-m",
                "components.thumbnailer",
                "--name",
                "thumbnailer",
                "--turbine",
                address,
                "--set",
                f"rate={args.rate}",
                "--log-level",
                "WARNING",
            ],
            env=env,
        )
        procs.append(thumbnailer)
        publisher = await trio.lowlevel.open_process(
            [
                python,
                __file__,
                "--publish",
                address,
                "--cameras",
                str(args.cameras),
                "--width",
                str(args.width),
                "--height",
                str(args.height),
                "--fps",
                str(args.fps),
            ],
            env=env,
        )
        procs.append(publisher)

        received: dict[str, int] = {}
        ages: list[float] = []
        counting = False

        async def tap(tb: Any) -> None:
            async with tb.subscribe(THUMBS, start="now") as sub:
                async for item in sub:
                    if isinstance(item, Frame) and counting:
                        received[item.source] = received.get(item.source, 0) + 1
                        ages.append(time.time() - item.timestamp)

        async with open_client(address, name="bench-measure") as tb, trio.open_nursery() as n:
            n.start_soon(tap, tb)
            await trio.sleep(args.warmup)
            before_video = {
                s.name: s.channels for s in await tb.list_sources("video_bench*_data_source")
            }
            seqs_before = {
                name: next((c.last_seq or 0 for c in chans if c.name == "video.jpg"), 0)
                for name, chans in before_video.items()
            }
            out0 = bytes_to_thumbnailer(await tb.status())
            cpu0, t0 = cpu_seconds(thumbnailer.pid), time.monotonic()
            counting = True
            await trio.sleep(args.duration)
            counting = False
            cpu1, t1 = cpu_seconds(thumbnailer.pid), time.monotonic()
            out1 = bytes_to_thumbnailer(await tb.status())
            after_video = {
                s.name: s.channels for s in await tb.list_sources("video_bench*_data_source")
            }
            seqs_after = {
                name: next((c.last_seq or 0 for c in chans if c.name == "video.jpg"), 0)
                for name, chans in after_video.items()
            }
            status = await send_command(tb, "thumbnail_thumbnailer", "status")
            sample = await tb.fetch("video_bench00_data_source/video.jpg", newest=1)
            frame_bytes = len(sample[0].data) if sample else 0
            n.cancel_scope.cancel()
    finally:
        for proc in reversed(procs):
            proc.kill()
        with trio.move_on_after(10):
            for proc in procs:
                await proc.wait()
    elapsed = t1 - t0
    video_rates = [
        (seqs_after.get(name, 0) - seqs_before.get(name, 0)) / elapsed for name in seqs_before
    ]
    cams = status.result["cameras"] if status.ok else {}
    return {
        "elapsed": elapsed,
        "cpu": (cpu1 - cpu0) / elapsed,
        "thumbs_per_source": [
            received.get(f"thumbnail_bench{i:02d}_data_source", 0) / elapsed
            for i in range(args.cameras)
        ],
        "receive_ages": ages,
        "publish_p50": [c["age_p50_s"] for c in cams.values() if c["age_p50_s"] is not None],
        "publish_p99": [c["age_p99_s"] for c in cams.values() if c["age_p99_s"] is not None],
        "video_rates": video_rates,
        "frame_bytes": frame_bytes,
        "into_thumbnailer": (out1 - out0) / elapsed,
        "corrupt": sum(c["skipped_corrupt"] for c in cams.values()),
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    thumbs = r["thumbs_per_source"]
    rates = r["video_rates"] or [0.0]
    ages = r["receive_ages"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms"

    rows = [
        (
            "video frames carried per camera per second",
            f"min {min(rates):.1f}, mean {sum(rates) / len(rates):.1f}",
            f"{args.fps:g}",
        ),
        (
            "video data the cameras put (all cameras)",
            f"{r['frame_bytes'] * sum(rates) / 2**20:.1f} MiB/s ({r['frame_bytes'] // 1024} KiB/frame)",
            "",
        ),
        (
            "bytes the broker sent the thumbnailer",
            f"{r['into_thumbnailer'] / 2**20:.2f} MiB/s",
            "< 1 MiB/s",
        ),
        (
            "thumbnails per camera per second",
            f"min {min(thumbs):.2f}, max {max(thumbs):.2f}",
            f"{args.rate:g} for every camera",
        ),
        (
            "cameras that got no thumbnail",
            str(sum(1 for t in thumbs if t == 0)),
            "0",
        ),
        ("thumbnailer CPU (share of one core)", f"{r['cpu'] * 100:.1f} %", "< 2 %"),
        (
            "source frame age when published, p50",
            ms(percentile(r["publish_p50"], 0.5)),
            "",
        ),
        (
            "source frame age when published, p99 (worst camera)",
            ms(max(r["publish_p99"]) if r["publish_p99"] else None),
            "< 100 ms",
        ),
        ("source frame age when received, p50", ms(percentile(ages, 0.5)), ""),
        ("source frame age when received, p99", ms(percentile(ages, 0.99)), ""),
        ("corrupt frames skipped", str(r["corrupt"]), "0"),
    ]
    print(
        f"thumbnailer: {args.cameras} cameras, {args.width}x{args.height} at {args.fps:g} "
        f"frames/s, thumbnails at {args.rate:g}/s, measured over {r['elapsed']:.1f} s "
        f"on {os.cpu_count()} cores"
    )
    w0 = max(len(row[0]) for row in rows)
    w1 = max(len(row[1]) for row in rows)
    print(f"{'measure':<{w0}}  {'result':<{w1}}  target")
    print(f"{'-' * w0}  {'-' * w1}  ------")
    for name, value, target in rows:
        print(f"{name:<{w0}}  {value:<{w1}}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1.0, help="thumbnails per camera per s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--publish", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        try:
            trio.run(publish, args.publish, args.cameras, args.width, args.height, args.fps)
        except KeyboardInterrupt:
            pass
        return
    if not math.isfinite(args.duration) or args.duration <= 0:
        parser.error("--duration must be a positive number of seconds")
    report(args, trio.run(measure, args))


if __name__ == "__main__":
    main()
