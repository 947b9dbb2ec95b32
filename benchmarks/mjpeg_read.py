"""Cost of reading an MJPEG stream: the HTTP client and the multipart parser.

A plain socket server in a child process sends a prepared stream over
loopback as fast as the socket takes it; ``read_mjpeg`` reads it to the end.
The table gives the reader's CPU time per frame (the server is not counted,
and a busy machine disturbs CPU time less than wall time) and the wall-clock
MB/s, each the best of ``--repeat`` runs.  Three framings, as cameras send them:

* ``http10-length``: HTTP/1.0, close-delimited, each part with Content-Length
  (Axis cameras);
* ``http10-scan``: the same without part lengths (bodies end at the next
  boundary line, so the parser scans every byte);
* ``http11-chunked``: HTTP/1.1 chunked transfer coding, one chunk per part.

Run by hand: ``.venv/bin/python benchmarks/mjpeg_read.py [--frames N] [--repeat N]``.
The machine's cores are shared: rerun before trusting a difference under 10 %.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import time
from contextlib import aclosing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.video.mjpeg import read_mjpeg  # noqa: E402
from components.video.synthetic import PatternRenderer  # noqa: E402

SIZES = [(640, 480), (1280, 720)]


def make_stream(framing: str, frames: list[bytes]) -> bytes:
    if framing == "http11-chunked":
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    else:
        head = b"HTTP/1.0 200 OK\r\n"
    head += b"Content-Type: multipart/x-mixed-replace; boundary=myboundary\r\n\r\n"
    parts = []
    for jpeg in frames:
        part = b"--myboundary\r\nContent-Type: image/jpeg\r\n"
        if framing != "http10-scan":
            part += b"Content-Length: %d\r\n" % len(jpeg)
        part += b"\r\n" + jpeg + b"\r\n"
        if framing == "http11-chunked":
            part = b"%x\r\n" % len(part) + part + b"\r\n"
        parts.append(part)
    end = b"--myboundary--\r\n"
    if framing == "http11-chunked":
        end = b"%x\r\n" % len(end) + end + b"\r\n0\r\n\r\n"
    return head + b"".join(parts) + end


def serve_once(listener: socket.socket, data: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(data)


async def read_all(url: str) -> int:
    n = 0
    async with aclosing(read_mjpeg(url)) as frames:
        async for _ in frames:
            n += 1
    return n


def measure(data: bytes, expected: int, repeat: int) -> tuple[float, float]:
    """Best reader-thread CPU seconds and best wall seconds of ``repeat`` reads."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            # Forked: the child has the prepared stream and the listener already.
            server = multiprocessing.get_context("fork").Process(
                target=serve_once, args=(listener, data)
            )
            server.start()
            start, start_cpu = time.perf_counter(), time.thread_time()
            got = trio.run(read_all, f"http://127.0.0.1:{port}/axis-cgi/mjpg/video.cgi")
            best_cpu = min(best_cpu, time.thread_time() - start_cpu)
            best_wall = min(best_wall, time.perf_counter() - start)
            server.join()
            assert server.exitcode == 0, f"the server exited with {server.exitcode}"
        assert got == expected, f"read {got} frames of {expected}"
    return best_cpu, best_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000, help="frames per stream")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    args = parser.parse_args()
    print(f"{'framing':<16} {'frame':>9} {'KB/frame':>8} {'CPU us/frame':>12} {'MB/s':>7}")
    for size in SIZES:
        renderer = PatternRenderer(*size)
        frames = [renderer.render(n, 1_700_000_000 + n / 30) for n in range(30)]
        frames = [frames[n % len(frames)] for n in range(args.frames)]
        kb = sum(map(len, frames)) / len(frames) / 1000
        for framing in ("http10-length", "http10-scan", "http11-chunked"):
            data = make_stream(framing, frames)
            cpu, wall = measure(data, len(frames), args.repeat)
            print(
                f"{framing:<16} {size[0]:>4}x{size[1]:<4} {kb:>8.1f} "
                f"{cpu / len(frames) * 1e6:>12.1f} {len(data) / wall / 1e6:>7.0f}"
            )


if __name__ == "__main__":
    main()
