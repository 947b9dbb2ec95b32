"""Draining a reconnecting client's spool: how long after the broker is back are the
frames of an outage on its disk?

Run by hand from the checkout (prints a table; well under a minute for the
defaults; the machine is shared, so note ``uptime`` beside the table)::

    .venv/bin/python benchmarks/drain.py
    .venv/bin/python benchmarks/drain.py --outages 10,60 --cases daq

A real broker (``python -m turbine serve --data-dir``, every flush synced to
disk) runs as a child process.  The client (``open_client(reconnect=True)``
with a spool directory, as a component has) opens its source, the broker is
stopped, and the frames an outage of N seconds would have made are put with
their own timestamps (no real waiting: what matters is what the spool holds).
Then the broker is started again on the same port and data dir, and the time
is taken from its start to the acknowledgement of a ``flush`` covering every
spooled frame, in three parts: the broker's start (Python start and archive
recovery, until it listens), the client's wait for its next reconnect attempt
(backoff from 50 ms doubling to 2 s, grown while the broker was away), and
the replay with its acknowledgement (the rates are of this part).

Cases (the issue's figures):

- ``daq``: 1 kHz x 8 channels of float64 samples in blocks of 0.1 s
  (8 frames of 800 bytes every 0.1 s: 64 KB/s);
- ``camera``: 30 fps 720p JPEG frames of 120 KB (3.6 MB/s).

The spool is 2 GiB here (``spool_bytes``; 64 MiB by default, which a 60 s
camera outage overflows: its oldest frames would be dropped, with a gap); a
300 s camera outage is 1.08 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import trio

import turbine._client_link
from turbine import open_client

SRC = {"daq": "daq_bench_data_source", "camera": "video_bench_data_source"}


def frames_of(case: str, seconds: float) -> list[tuple[str, float, bytes]]:
    """(channel, timestamp, payload) of an outage of ``seconds`` for ``case``."""
    out = []
    t0 = 1_000_000.0
    if case == "daq":
        block = os.urandom(800)
        for i in range(int(seconds * 10)):
            for ch in range(8):
                out.append((f"ch{ch}", t0 + i * 0.1, block))
    else:
        jpeg = os.urandom(120_000)
        for i in range(int(seconds * 30)):
            out.append(("frame.jpg", t0 + i / 30, jpeg))
    return out


def start_broker(port: int, data_dir: str) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start a broker; return it, its port and when it listened (monotonic)."""
    argv = [sys.executable, "-m", "turbine", "serve", "--port", str(port)]
    proc = subprocess.Popen([*argv, "--data-dir", data_dir], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("turbine listening on "), line
    return proc, int(line.rsplit(":", 1)[1]), time.monotonic()


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait()


_connected: list[float] = []
_handshake = turbine._client_link.handshake


async def _timed_handshake(*args, **kwargs):  # type: ignore[no-untyped-def]
    """The client's handshake, noting when one succeeds (the reconnect's moment)."""
    result = await _handshake(*args, **kwargs)
    _connected.append(time.monotonic())
    return result


turbine._client_link.handshake = _timed_handshake


async def one(case: str, seconds: float, root: str) -> dict[str, float]:
    data_dir = os.path.join(root, f"{case}-{seconds:g}", "data")
    spool_dir = os.path.join(root, f"{case}-{seconds:g}", "spool")
    proc, port, _ = start_broker(0, data_dir)
    frames = frames_of(case, seconds)
    try:
        async with open_client(
            f"127.0.0.1:{port}",
            name="bench",
            reconnect=True,
            spool_bytes=2**31,
            spool_dir=spool_dir,
        ) as tb:
            src = await tb.open_source(SRC[case])
            stop_broker(proc)
            with trio.fail_after(30):
                await tb._down.wait()  # the client noticed
            for channel, ts, data in frames:
                await src.put(channel, data, ts)
            await trio.sleep(0.2)  # the flusher moves the last batch into the spool
            assert tb.spool is not None
            spooled, on_file = tb.spool.bytes, tb.spool.file_bytes
            began = time.monotonic()
            proc, _, listening = await trio.to_thread.run_sync(start_broker, port, data_dir)
            await tb.flush(timeout=600)
            done = time.monotonic()
    finally:
        stop_broker(proc)
    total = done - began
    replay = done - _connected[-1]
    return {
        "up": listening - began,
        "backoff": _connected[-1] - listening,
        "frames": len(frames),
        "mb": spooled / 1e6,
        "file_mb": on_file / 1e6,
        "total": total,
        "replay": replay,
        "fps": len(frames) / replay,
        "mbps": spooled / 1e6 / replay,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", default="10,60,300", help="outage lengths, seconds")
    parser.add_argument("--cases", default="daq,camera")
    parser.add_argument("--dir", default=None, help="where the data and spool dirs go")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(
        "| case | outage | frames | spooled MB (on file) | restart -> drained "
        "| broker start | reconnect wait | replay + ack | frames/s | MB/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        for case in args.cases.split(","):
            for seconds in map(float, args.outages.split(",")):
                r = await one(case, seconds, root)
                print(
                    f"| {case} | {seconds:g} s | {r['frames']:,} | {r['mb']:.1f} ({r['file_mb']:.1f}) "
                    f"| {r['total']:.2f} s | {r['up']:.2f} s | {r['backoff']:.2f} s "
                    f"| {r['replay']:.2f} s | {r['fps']:,.0f} | {r['mbps']:.1f} |",
                    flush=True,
                )
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    trio.run(main)
