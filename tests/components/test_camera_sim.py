"""The Axis camera emulator, over real loopback HTTP."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from contextlib import aclosing
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from PIL import Image

from components.camera_sim.server import serve_camera_sim
from components.video.files import jpeg_files
from components.video.httpclient import END_OF_BODY, GetExchange, ResponseHead
from components.video.mjpeg import read_mjpeg
from components.video.multipart import MultipartParser
from components.video.synthetic import (
    PatternRenderer,
    SyntheticConfig,
    format_timestamp,
    synthetic_frames,
)
from turbine.testing import printed_line, run_blocking_inline

ROOT = Path(__file__).resolve().parents[2]


async def start_sim(nursery: trio.Nursery, **kwargs: object) -> str:
    port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0, **kwargs))
    return f"http://127.0.0.1:{port}"


async def raw_get(
    base: str, target: str, method: str = "GET", version: str = "1.1"
) -> tuple[int, dict, bytes]:
    """Send one request by hand; return status, headers and the whole body as
    sent (chunked framing included) once the server closes."""
    port = int(base.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {target} HTTP/{version}\r\nHost: cam\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


async def test_stream_honours_resolution_and_fps(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    base = await start_sim(nursery)
    url = f"{base}/axis-cgi/mjpg/video.cgi?resolution=320x240&fps=5"
    times = []
    with trio.fail_after(30):
        async with aclosing(read_mjpeg(url, clock=trio.current_time)) as frames:
            async for frame, captured in frames:
                assert Image.open(io.BytesIO(frame)).size == (320, 240)
                times.append(captured)
                if len(times) == 6:
                    break
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == pytest.approx([0.2] * 5, abs=0.01)


def axis_parts(body: bytes, size: tuple[int, int]) -> None:
    """``body`` is the stream of 3 frames Axis cameras send."""
    assert body.startswith(b"--myboundary\r\n")
    parser = MultipartParser("myboundary")
    parts = parser.feed(body)
    assert parser.done  # the stream ends with the closing boundary after 3 frames
    assert len(parts) == 3
    for part in parts:
        assert part.headers["content-type"] == "image/jpeg"
        assert int(part.headers["content-length"]) == len(part.body)
        assert Image.open(io.BytesIO(part.body)).size == size


async def test_stream_is_axis_shaped(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    base = await start_sim(nursery)
    target = "/axis-cgi/mjpg/video.cgi?resolution=160x120&fps=10&nbrofframes=3"
    with trio.fail_after(30):
        status, headers, body = await raw_get(base, target, version="1.0")
    assert status == 200
    assert headers["content-type"] == "multipart/x-mixed-replace; boundary=myboundary"
    assert "content-length" not in headers and "transfer-encoding" not in headers
    axis_parts(body, (160, 120))  # unframed: the body runs until the close


async def test_stream_to_http11_client_is_chunked(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    base = await start_sim(nursery)
    target = "/axis-cgi/mjpg/video.cgi?resolution=160x120&fps=10&nbrofframes=3"
    with trio.fail_after(30):
        status, headers, raw = await raw_get(base, target)
    assert (status, headers["transfer-encoding"]) == (200, "chunked")
    exchange = GetExchange(target, [("Host", "cam")])
    exchange.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + raw)
    body = b""
    while (event := exchange.next_event()) is not END_OF_BODY:
        assert isinstance(event, bytes | bytearray | ResponseHead)
        body += event if not isinstance(event, ResponseHead) else b""
    axis_parts(body, (160, 120))


async def test_head_requests_get_the_head_alone(nursery: trio.Nursery) -> None:
    base = await start_sim(nursery)
    with trio.fail_after(10):
        status, headers, body = await raw_get(base, "/axis-cgi/jpg/image.cgi", method="HEAD")
        assert (status, headers["content-type"], body) == (200, "image/jpeg", b"")
        assert int(headers["content-length"]) > 1000  # what a GET would get
        status, headers, body = await raw_get(base, "/axis-cgi/mjpg/video.cgi", method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["content-type"].startswith("multipart/x-mixed-replace")


async def test_malformed_and_oversized_requests(nursery: trio.Nursery) -> None:
    base = await start_sim(nursery)
    port = int(base.rsplit(":", 1)[1])
    for request, status in [
        (b"GET /axis-cgi/jpg/image.cgi\r\n\r\n", 400),  # no HTTP version
        (b"GET /axis-cgi/jpg/image.cgi HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: cam\r\nX-Pad: " + b"x" * 20_000 + b"\r\n\r\n", 431),
    ]:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(request)
                data = b""
                while chunk := await stream.receive_some():
                    data += chunk
        assert data.startswith(b"HTTP/1.1 %d " % status)
        assert b"bad request: " in data


async def test_snapshot(nursery: trio.Nursery) -> None:
    base = await start_sim(nursery)
    with trio.fail_after(10):
        status, headers, body = await raw_get(base, "/axis-cgi/jpg/image.cgi?resolution=800x600")
    assert status == 200
    assert headers["content-type"] == "image/jpeg"
    assert int(headers["content-length"]) == len(body)
    assert Image.open(io.BytesIO(body)).size == (800, 600)
    with trio.fail_after(10):  # default resolution
        _, _, body = await raw_get(base, "/axis-cgi/jpg/image.cgi")
    assert Image.open(io.BytesIO(body)).size == (640, 480)


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        ("/index.html", 404, "no such endpoint: /index.html"),
        ("/axis-cgi/mjpg/video.cgi?resolution=big", 400, "expected WIDTHxHEIGHT"),
        ("/axis-cgi/mjpg/video.cgi?resolution=10x10", 400, "must be within 64x48"),
        ("/axis-cgi/mjpg/video.cgi?fps=0", 400, "fps=0: must be more than 0"),
        ("/axis-cgi/mjpg/video.cgi?fps=fast", 400, "expected a number"),
        ("/axis-cgi/jpg/image.cgi?resolution=99999x480", 400, "must be within"),
        ("/axis-cgi/mjpg/video.cgi?nbrofframes=-1", 400, "expected a whole number"),
    ],
)
async def test_bad_requests(nursery: trio.Nursery, target: str, status: int, message: str) -> None:
    base = await start_sim(nursery)
    with trio.fail_after(10):
        got, headers, body = await raw_get(base, target)
    assert got == status
    assert message in body.decode()


async def test_only_get(nursery: trio.Nursery) -> None:
    base = await start_sim(nursery)
    with trio.fail_after(10):
        status, _, _ = await raw_get(base, "/axis-cgi/jpg/image.cgi", method="POST")
    assert status == 405


async def test_several_clients_at_once(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    base = await start_sim(nursery)
    wanted = [((160, 120), 10), ((320, 240), 10), ((160, 120), 25), ((640, 480), 2)]
    results: dict[int, tuple[set, float]] = {}

    async def client(i: int, size: tuple[int, int], fps: int) -> None:
        url = f"{base}/axis-cgi/mjpg/video.cgi?resolution={size[0]}x{size[1]}&fps={fps}"
        sizes = set()
        start = trio.current_time()
        async with aclosing(read_mjpeg(url)) as frames:
            n = 0
            async for frame, _ in frames:
                sizes.add(Image.open(io.BytesIO(frame)).size)
                n += 1
                if n == 2 * fps + 1:  # two seconds' worth
                    break
        results[i] = (sizes, trio.current_time() - start)

    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for i, (size, fps) in enumerate(wanted):
                clients.start_soon(client, i, size, fps)
    for i, (size, _) in enumerate(wanted):
        sizes, elapsed = results[i]
        assert sizes == {size}
        assert elapsed == pytest.approx(2.0, abs=0.05)


async def test_slow_client_does_not_slow_others(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    base = await start_sim(nursery, write_timeout=2.0)
    port = int(base.rsplit(":", 1)[1])
    # A client that asks for a big stream and never reads.
    stalled = trio.socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stalled.connect(("127.0.0.1", port))
    await stalled.send(
        b"GET /axis-cgi/mjpg/video.cgi?resolution=1280x720&fps=30 HTTP/1.1\r\nHost: cam\r\n\r\n"
    )
    url = f"{base}/axis-cgi/mjpg/video.cgi?resolution=160x120&fps=30"
    start = trio.current_time()
    with trio.fail_after(30):
        async with aclosing(read_mjpeg(url)) as frames:
            n = 0
            async for _ in frames:
                n += 1
                if n == 91:
                    break
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.05)
    # The stalled client was dropped after write_timeout: reading now gets what
    # was buffered, then the end of the stream.
    with trio.fail_after(30):
        while await stalled.recv(65536):
            pass
    stalled.close()


async def test_too_many_clients(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    base = await start_sim(nursery, max_clients=1)
    url = f"{base}/axis-cgi/mjpg/video.cgi?resolution=160x120&fps=10"
    with trio.fail_after(30):
        async with aclosing(read_mjpeg(url)) as frames:
            await frames.__anext__()
            status, _, body = await raw_get(base, "/axis-cgi/jpg/image.cgi")
            assert (status, body) == (503, b"too many clients\n")
        await trio.sleep(1)  # the first client's slot is freed once it is gone
        status, _, _ = await raw_get(base, "/axis-cgi/jpg/image.cgi")
        assert status == 200


async def test_command_line_prints_address() -> None:
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "components.camera_sim", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            text = (await printed_line(process, "camera_sim")).decode().strip()
            assert text.startswith("camera_sim listening on 127.0.0.1:")
            port = int(text.rsplit(":", 1)[1])
            status, _, body = await raw_get(
                f"http://127.0.0.1:{port}", "/axis-cgi/jpg/image.cgi?resolution=160x120"
            )
            assert status == 200
            assert Image.open(io.BytesIO(body)).size == (160, 120)
        finally:
            process.kill()
            await process.wait()
            await process.stdout.aclose()


# --- the frames behind the sim: the synthetic pattern ------------------------
# (and the other local video source, JPEG files, which shares its contract:
# an async iterator of (jpeg, capture_time))


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (100, 60), (1366, 768)])
def test_fast_render_is_the_full_render(size: tuple[int, int]) -> None:
    renderer = PatternRenderer(*size, period=8)
    for frame_no in [0, 1, 7, 8, 9, 123_456, 0]:
        timestamp = 1_700_000_000.0 + frame_no / 30
        assert renderer.render(frame_no, timestamp) == renderer.render_full(frame_no, timestamp)


def test_pattern_changes_with_frame_and_time() -> None:
    renderer = PatternRenderer(320, 240, period=10)
    assert renderer.render(1, 5.0) != renderer.render(1, 6.0)
    assert renderer.render(1, 5.0) != renderer.render(2, 5.0)
    # The moving element is back after a period; only the counter differs.
    first, later = renderer.picture(3, 5.0), renderer.picture(13, 5.0)
    text_rows = (0, 0, 320, 32)
    assert first.crop((0, 32, 320, 240)).tobytes() == later.crop((0, 32, 320, 240)).tobytes()
    assert first.crop(text_rows).tobytes() != later.crop(text_rows).tobytes()
    moved = renderer.picture(5, 5.0)
    assert first.crop((0, 32, 320, 240)).tobytes() != moved.crop((0, 32, 320, 240)).tobytes()


def test_timestamp_text() -> None:
    assert format_timestamp(1_700_000_000.25) == "2023-11-14 22:13:20.250Z"


def test_renderer_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="resolution 10x10 out of range"):
        PatternRenderer(10, 10)
    with pytest.raises(ValueError, match="quality 0"):
        PatternRenderer(640, 480, quality=0)


async def test_synthetic_frames_are_paced(autojump_clock: trio.abc.Clock) -> None:
    times = []
    with trio.fail_after(10):
        config = SyntheticConfig(width=160, height=120, fps=20)
        async with aclosing(synthetic_frames(config)) as frames:
            async for frame, captured in frames:
                assert Image.open(io.BytesIO(frame)).size == (160, 120)
                assert captured > 1_600_000_000  # wall-clock time
                times.append(trio.current_time())
                if len(times) == 5:
                    break
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == pytest.approx([0.05] * 4)


def write_jpeg(path: Path, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "JPEG")
    path.write_bytes(out.getvalue())
    return out.getvalue()


async def test_files_loop_in_name_order(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    run_blocking_inline()  # a file read in a worker thread would let the clock jump meanwhile
    b = write_jpeg(tmp_path / "b.jpg", (0, 255, 0))
    a = write_jpeg(tmp_path / "a.JPG", (255, 0, 0))
    c = write_jpeg(tmp_path / "c.jpeg", (0, 0, 255))
    (tmp_path / "notes.txt").write_text("not a frame")
    got, times = [], []
    with trio.fail_after(30):
        async with aclosing(jpeg_files(tmp_path, fps=2)) as frames:
            async for frame, _ in frames:
                got.append(frame)
                times.append(trio.current_time())
                if len(got) == 3:
                    d = write_jpeg(tmp_path / "d.jpg", (9, 9, 9))  # seen on the next pass
                if len(got) == 8:
                    break
    assert got == [a, b, c, a, b, c, d, a]
    assert [y - x for x, y in zip(times, times[1:], strict=False)] == pytest.approx([0.5] * 7)


async def test_files_once_and_errors(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    run_blocking_inline()  # a file read in a worker thread would let the clock jump meanwhile
    a = write_jpeg(tmp_path / "a.jpg", (1, 2, 3))
    with trio.fail_after(30):
        assert [f async for f, _ in jpeg_files(tmp_path, fps=10, loop=False)] == [a]
        with pytest.raises(ValueError, match="no JPEG files"):
            async for _ in jpeg_files(tmp_path / "..", fps=1):
                pass
        with pytest.raises(FileNotFoundError):
            async for _ in jpeg_files(tmp_path / "missing", fps=1):
                pass
        with pytest.raises(ValueError, match="fps must be positive"):
            async for _ in jpeg_files(tmp_path, fps=0):
                pass
