"""MJPEG reading: the multipart parser, the HTTP reader, reconnects."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from functools import partial

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from components.camera_sim.server import serve_camera_sim
from components.video.digest import digest_authorization, parse_challenge
from components.video.httpclient import END_OF_BODY, NEED_DATA, GetExchange, ResponseHead
from components.video.mjpeg import (
    CameraDisconnected,
    HttpError,
    HttpStatusError,
    MultipartError,
    mjpeg_frames,
    read_mjpeg,
)
from components.video.multipart import MultipartParser, Part
from components.video.synthetic import PatternRenderer
from tests.ports import free_port

# Bodies with the bytes that trip naive parsers: CRLFs, dashes, the boundary
# inside a line, a line that starts with the boundary and goes on.
BODIES = [
    b"\xff\xd8first\r\n--\r\n\xff\xd9",
    b"\xff\xd8 --myboundary in the middle \r\n\xff\xd9",
    b"\xff\xd8\r\n--myboundaryX is not a boundary\r\n\xff\xd9",
    b"",
    bytes(range(256)) * 4,
]


def stream_with_lengths(boundary_in_body: bytes = b"--myboundary") -> bytes:
    out = b"preamble the camera may send\r\n"
    for body in BODIES:
        out += boundary_in_body + b"\r\nContent-Type: image/jpeg\r\n"
        out += b"Content-Length: %d\r\n\r\n" % len(body) + body + b"\r\n"
    return out


def stream_without_lengths() -> bytes:
    out = b""
    for body in BODIES:
        out += b"--myboundary\r\nContent-Type: image/jpeg\r\n\r\n" + body + b"\r\n"
    return out + b"--myboundary--\r\n"


def feed_all(parser: MultipartParser, data: bytes, cuts: list[int] = ()) -> list[Part]:
    parts: list[Part] = []
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        parts += parser.feed(data[previous:cut])
        previous = cut
    return parts


# --- MultipartParser -------------------------------------------------------


@pytest.mark.parametrize("declared", ["myboundary", "--myboundary", '"myboundary"'])
def test_boundary_declared_with_or_without_dashes(declared: str) -> None:
    parts = feed_all(MultipartParser(declared), stream_with_lengths())
    assert [p.body for p in parts] == BODIES
    assert all(p.content_type == "image/jpeg" for p in parts)
    assert parts[0].headers["content-length"] == str(len(BODIES[0]))


def test_body_lines_use_boundary_without_dashes() -> None:
    parser = MultipartParser("--myboundary")
    parts = feed_all(parser, stream_with_lengths(boundary_in_body=b"myboundary"))
    assert [p.body for p in parts] == BODIES


def test_parts_without_content_length_end_at_next_boundary() -> None:
    parser = MultipartParser("myboundary")
    parts = feed_all(parser, stream_without_lengths())
    assert [p.body for p in parts] == BODIES
    assert parser.done


def test_missing_crlf_after_counted_body() -> None:
    body = b"\xff\xd8abc\xff\xd9"
    data = (b"--b\r\nContent-Length: %d\r\n\r\n" % len(body) + body) * 3
    assert [p.body for p in feed_all(MultipartParser("b"), data)] == [body] * 3


def test_lf_only_line_endings() -> None:
    data = b"--b\nContent-Type: image/jpeg\n\nONE\n--b\nContent-Length: 3\n\nTWO\n--b--\n"
    parser = MultipartParser("b")
    assert [p.body for p in feed_all(parser, data)] == [b"ONE", b"TWO"]
    assert parser.done


def test_nothing_after_closing_boundary() -> None:
    parser = MultipartParser("b")
    parts = parser.feed(b"--b\r\n\r\nA\r\n--b--\r\n--b\r\n\r\nB\r\n--b\r\n")
    assert [p.body for p in parts] == [b"A"]
    assert parser.done
    assert parser.feed(b"--b\r\n\r\nC\r\n--b\r\n") == []


def test_eof_returns_last_complete_jpeg_only() -> None:
    parser = MultipartParser("b")
    assert parser.feed(b"--b\r\n\r\n\xff\xd8whole\xff\xd9\r\n") == []
    assert [p.body for p in parser.feed_eof()] == [b"\xff\xd8whole\xff\xd9"]
    parser = MultipartParser("b")
    parser.feed(b"--b\r\n\r\n\xff\xd8cut off")
    assert parser.feed_eof() == []


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40),
    with_lengths=st.booleans(),
)
def test_any_chunking_gives_the_same_parts(cuts: list[int], with_lengths: bool) -> None:
    data = stream_with_lengths() if with_lengths else stream_without_lengths()
    parts = feed_all(MultipartParser("myboundary"), data, [c % (len(data) + 1) for c in cuts])
    assert [p.body for p in parts] == BODIES


def test_parts_do_not_share_a_buffer_the_caller_reuses() -> None:
    parser = MultipartParser("b")
    buffer = bytearray(b"--b\r\nContent-Length: 6\r\n\r\nab")
    assert parser.feed(buffer) == []
    buffer[:] = b"cdef\r\n--b"  # the caller reads its next piece into the same buffer
    (part,) = parser.feed(buffer)
    buffer[:] = b"XXXXXXXXXX"
    assert part.body == b"abcdef"
    assert type(part.body) is bytes


def test_counted_part_over_max_size_is_refused_at_once() -> None:
    parser = MultipartParser("b", max_part_size=1000)
    with pytest.raises(MultipartError, match="1001 bytes exceeds max_part_size=1000"):
        parser.feed(b"--b\r\nContent-Length: 1001\r\n\r\n")


def test_uncounted_part_over_max_size_is_refused_with_bounded_buffer() -> None:
    parser = MultipartParser("b", max_part_size=10_000)
    parser.feed(b"--b\r\nContent-Type: image/jpeg\r\n\r\n")
    with pytest.raises(MultipartError, match="max_part_size=10000"):
        for _ in range(100):  # 100 KB with no boundary: refused well before the end
            parser.feed(b"x" * 1000)
    # A part exactly at the limit is fine.
    parser = MultipartParser("b", max_part_size=10_000)
    parts = parser.feed(b"--b\r\n\r\n" + b"x" * 10_000 + b"\r\n--b\r\n")
    assert [len(p.body) for p in parts] == [10_000]


def test_wrong_boundary_is_reported() -> None:
    parser = MultipartParser("expected", max_header_size=1024)
    with pytest.raises(MultipartError, match="is the boundary in the Content-Type header right"):
        parser.feed(b"--other\r\nContent-Length: 2\r\n\r\nAB\r\n" * 100)


def test_bad_part_headers() -> None:
    with pytest.raises(MultipartError, match="bad part Content-Length"):
        MultipartParser("b").feed(b"--b\r\nContent-Length: many\r\n\r\n")
    with pytest.raises(MultipartError, match="malformed part header"):
        MultipartParser("b").feed(b"--b\r\nno colon here\r\n\r\n")
    with pytest.raises(ValueError, match="empty"):
        MultipartParser("--")


# --- HTTP pieces (sans-I/O, on h11) ------------------------------------------


def exchange_events(
    response: bytes, cuts: list[int] = (), *, eof: bool = True, **kwargs: object
) -> tuple[list[ResponseHead], bytes, bool]:
    """Feed ``response`` to a GetExchange in pieces; return its heads, the
    body, and whether the body ended."""
    exchange = GetExchange("/cam", [("Host", "cam")], **kwargs)
    assert exchange.request_bytes.startswith(b"GET /cam HTTP/1.1\r\n")
    heads: list[ResponseHead] = []
    body = b""
    pieces = []
    previous = 0
    for cut in sorted({c % (len(response) + 1) for c in cuts}) + [len(response)]:
        if cut > previous:  # b"" would mean end of file
            pieces.append(response[previous:cut])
        previous = cut
    if eof:
        pieces.append(b"")
    for piece in pieces:
        exchange.receive_data(piece)
        while (event := exchange.next_event()) not in (NEED_DATA, END_OF_BODY):
            if isinstance(event, ResponseHead):
                heads.append(event)
            else:
                body += event
        if event is END_OF_BODY:
            break
    return heads, body, event is END_OF_BODY


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_chunked_decoding_under_any_chunking(cuts: list[int]) -> None:
    data = b"4\r\nWiki\r\n6;name=value\r\npedia \r\nD\r\nin\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + data
    heads, body, ended = exchange_events(response, cuts, eof=False)
    assert [h.status for h in heads] == [200]
    assert body == b"Wikipedia in\r\n\r\nchunks."
    assert ended  # at the last chunk, without waiting for the connection to close


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_body_until_close_under_any_chunking(cuts: list[int]) -> None:
    data = b"--b\r\nContent-Length: 3\r\n\r\nabc\r\n" * 5
    response = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n"
    heads, body, ended = exchange_events(response + data, cuts)
    assert [h.status for h in heads] == [200]
    assert (body, ended) == (data, True)  # all of it, ended by the close


def test_chunked_errors() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(HttpError, match="malformed HTTP response from the server: illegal chunk"):
        exchange_events(head + b"zz\r\n")
    with pytest.raises(HttpError, match="malformed chunk footer"):
        exchange_events(head + b"2\r\nabcdef")
    with pytest.raises(CameraDisconnected, match="closed the connection in the middle of the body"):
        exchange_events(head + b"10\r\nabc")


def test_response_head() -> None:
    heads, body, ended = exchange_events(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=x\r\n"
        b"X-A: 1\r\nX-A: 2\r\nX-Folded: one\r\n two\r\n\r\nbody until close",
        name="http://cam/",
    )
    (head,) = heads
    assert (head.http_version, head.status, head.reason) == ("HTTP/1.0", 200, "OK")
    assert head.headers["content-type"] == "multipart/x-mixed-replace; boundary=x"
    assert head.media_type == "multipart/x-mixed-replace"
    assert head.headers["x-a"] == "1, 2"
    assert head.headers["x-folded"] == "one two"  # obsolete line folding
    assert (body, ended) == (b"body until close", True)
    with pytest.raises(HttpError, match="malformed HTTP response from http://cam/"):
        exchange_events(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", name="http://cam/")


def test_response_tolerances() -> None:
    # LF-only line endings, an interim 100 response, a reason-less status line.
    heads, body, ended = exchange_events(
        b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200\nContent-Length: 3\n\nabcIGNORED", eof=False
    )
    assert [(h.status, h.reason) for h in heads] == [(200, "")]
    assert (body, ended) == (b"abc", True)
    # Two challenges in two headers stay apart.
    heads, _, _ = exchange_events(
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="a"\r\n'
        b'WWW-Authenticate: Digest realm="a", nonce="n"\r\nContent-Length: 0\r\n\r\n'
    )
    assert heads[0].challenges == ('Basic realm="a"', 'Digest realm="a", nonce="n"')


def test_response_limits_and_early_close() -> None:
    with pytest.raises(HttpError, match="longer than 1024 bytes"):
        exchange_events(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 0123456789\r\n" * 100, eof=False,
                        max_header_size=1024)  # fmt: skip
    with pytest.raises(
        CameraDisconnected, match="the server closed the connection before a response"
    ):
        exchange_events(b"")
    with pytest.raises(CameraDisconnected, match="before a complete response"):
        exchange_events(b"HTTP/1.1 200 OK\r\nContent-")
    with pytest.raises(CameraDisconnected, match="in the middle of the body"):
        exchange_events(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ValueError, match="cannot ask the server for"):
        GetExchange("/a path with spaces", [("Host", "cam")])


# --- over real loopback TCP ---------------------------------------------------


def jpeg(n: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return PatternRenderer(*size).render(n, 1_700_000_000 + n)


Handler = Callable[[trio.SocketStream, int], Awaitable[None]]


async def serve_script(nursery: trio.Nursery, handler: Handler) -> str:
    """Serve ``handler(stream, connection_number)`` on loopback; return a URL."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    count = 0

    async def on_connection(stream: trio.SocketStream) -> None:
        nonlocal count
        count += 1
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some()
            if not data:
                return
            buf += data
        try:
            await handler(stream, count)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    nursery.start_soon(trio.serve_listeners, on_connection, listeners)
    return f"http://127.0.0.1:{port}/axis-cgi/mjpg/video.cgi"


async def take(url: str, n: int, **kwargs: object) -> list[bytes]:
    frames = []
    async with aclosing(read_mjpeg(url, **kwargs)) as stream:
        async for frame, _ in stream:
            frames.append(frame)
            if len(frames) == n:
                break
    return frames


async def test_reads_camera_sim_over_http(nursery: trio.Nursery) -> None:
    port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}/axis-cgi/mjpg/video.cgi?resolution=320x240&fps=30"
    times = []
    with trio.fail_after(10):
        async with aclosing(read_mjpeg(url, clock=trio.current_time)) as stream:
            async for frame, captured in stream:
                with Image.open(io.BytesIO(frame)) as im:
                    assert (im.format, im.size) == ("JPEG", (320, 240))
                times.append(captured)
                if len(times) == 5:
                    break
    assert times == sorted(times)


async def test_snapshot_url_gives_one_frame(nursery: trio.Nursery) -> None:
    port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}/axis-cgi/jpg/image.cgi?resolution=160x120"
    with trio.fail_after(10):
        frames = await take(url, 10)
    assert len(frames) == 1
    assert Image.open(io.BytesIO(frames[0])).size == (160, 120)


async def test_http10_close_delimited_without_lengths(nursery: trio.Nursery) -> None:
    frames = [jpeg(n) for n in range(4)]

    async def handler(stream: trio.SocketStream, _: int) -> None:
        await stream.send_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=--cam\r\n\r\n"
        )
        for frame in frames:
            await stream.send_all(b"--cam\r\nContent-Type: image/jpeg\r\n\r\n" + frame + b"\r\n")

    url = await serve_script(nursery, handler)
    with trio.fail_after(10):
        got = await take(url, 100)
    assert got == frames  # the last one ends with the connection


async def test_http11_chunked(nursery: trio.Nursery) -> None:
    frames = [jpeg(n) for n in range(4)]
    body = b"".join(
        b"--myboundary\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f)
        + f
        + b"\r\n"
        for f in frames
    )

    async def handler(stream: trio.SocketStream, _: int) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b'Content-Type: multipart/x-mixed-replace; boundary="myboundary"\r\n\r\n'
        )
        # Chunks of odd sizes that split headers, boundaries and JPEGs.
        for start in range(0, len(body), 777):
            piece = body[start : start + 777]
            await stream.send_all(b"%x\r\n" % len(piece) + piece + b"\r\n")
        await stream.send_all(b"0\r\n\r\n")
        await trio.sleep_forever()  # the end of the body is the last chunk

    url = await serve_script(nursery, handler)
    with trio.fail_after(10):
        got = await take(url, 100)
    assert got == frames


async def test_non_jpeg_parts_are_skipped(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream, _: int) -> None:
        await stream.send_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg(1) + b"\r\n--b--\r\n"
        )

    url = await serve_script(nursery, handler)
    with trio.fail_after(10):
        assert await take(url, 100) == [jpeg(1)]


async def test_errors_are_clear(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        if n == 1:
            await stream.send_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        elif n == 2:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
        else:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=b\r\n\r\n"
            )
            await trio.sleep_forever()

    url = await serve_script(nursery, handler)
    with trio.fail_after(30):
        with pytest.raises(HttpStatusError, match="answered 401 Unauthorized"):
            await take(url, 1)
        with pytest.raises(HttpError, match="expected multipart/x-mixed-replace"):
            await take(url, 1)
        with pytest.raises(CameraDisconnected, match="no data from .* for 2 s"):
            await take(url, 1, idle_timeout=2)
    with pytest.raises(ValueError, match="must look like http://"):
        await take("rtsp://camera/stream", 1)


# --- reconnecting -------------------------------------------------------------


async def test_reconnects_with_backoff_and_logs(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        if n == 2:
            await stream.send_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
            return
        await stream.send_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=b\r\n\r\n"
        )
        for i in range(2):
            frame = jpeg(10 * n + i)
            await stream.send_all(b"--b\r\nContent-Length: %d\r\n\r\n" % len(frame) + frame)
        if n == 3:
            await trio.sleep_forever()
        # n == 1: the camera drops the connection

    url = await serve_script(nursery, handler)
    log = logging.getLogger("test.camera")
    got = []
    arrival = []
    with caplog.at_level(logging.INFO, logger="test.camera"), trio.fail_after(60):
        async with aclosing(mjpeg_frames(url, log, initial_backoff=1.0)) as frames:
            async for frame, _ in frames:
                got.append(frame)
                arrival.append(trio.current_time())
                if len(got) == 4:
                    break
    assert got == [jpeg(10), jpeg(11), jpeg(30), jpeg(31)]
    # Waited 1 s after the drop, then 2 s after the 503.
    assert arrival[2] - arrival[1] == pytest.approx(3.0, abs=0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"camera {url}: connected, frames flowing",
        f"camera {url}: dropped (the camera ended the stream); reconnecting in 1.0 s (attempt 1)",
        f"camera {url}: dropped ({url} answered 503 Service Unavailable); "
        "reconnecting in 2.0 s (attempt 2)",
        f"camera {url}: recovered after 2 failed attempt(s), frames flowing",
    ]
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "WARNING", "INFO"]


async def test_backoff_is_capped(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # a port with nobody listening
    url = f"http://127.0.0.1:{port}/axis-cgi/mjpg/video.cgi"
    log = logging.getLogger("test.camera")
    with caplog.at_level(logging.INFO, logger="test.camera"):
        with trio.move_on_after(40):
            async with aclosing(
                mjpeg_frames(url, log, initial_backoff=1.0, max_backoff=8.0)
            ) as frames:
                async for _ in frames:
                    pytest.fail("no camera there, no frames")
    delays = [r.getMessage().split("reconnecting in ")[1].split(" s")[0] for r in caplog.records]
    assert delays[:7] == ["1.0", "2.0", "4.0", "8.0", "8.0", "8.0", "8.0"]
    assert "cannot connect to" in caplog.records[0].getMessage()
    assert "Connection refused" in caplog.records[0].getMessage()


async def test_wrong_path_is_not_retried(nursery: trio.Nursery) -> None:
    port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
    log = logging.getLogger("test.camera")
    with trio.fail_after(10), pytest.raises(HttpStatusError, match="404 Not Found"):
        async with aclosing(mjpeg_frames(f"http://127.0.0.1:{port}/nope", log)) as frames:
            async for _ in frames:
                pass


# --- streams made by ffmpeg ---------------------------------------------------

ffmpeg = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(ffmpeg is None, reason="ffmpeg is not installed")
FFMPEG_SOURCE = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-frames:v", "5"]


@needs_ffmpeg
async def test_ffmpeg_mpjpeg_file_served_over_http10(nursery: trio.Nursery) -> None:
    result = await trio.run_process(
        [ffmpeg, "-hide_banner", "-loglevel", "error", *FFMPEG_SOURCE, "-f", "mpjpeg", "-"],
        capture_stdout=True,
    )
    body = result.stdout
    assert body.startswith(b"--ffmpeg\r\n")

    async def handler(stream: trio.SocketStream, _: int) -> None:
        await stream.send_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=ffmpeg\r\n\r\n"
        )
        for start in range(0, len(body), 1000):
            await stream.send_all(body[start : start + 1000])

    url = await serve_script(nursery, handler)
    with trio.fail_after(10):
        frames = await take(url, 100)
    assert len(frames) == 5
    assert len(set(frames)) == 5
    for frame in frames:
        assert Image.open(io.BytesIO(frame)).size == (160, 120)


@needs_ffmpeg
async def test_ffmpeg_own_http_server_chunked(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/cam"
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "quiet", *FFMPEG_SOURCE, "-f", "mpjpeg",
        "-content_type", "multipart/x-mixed-replace;boundary=ffmpeg", "-listen", "1", url,
    ]  # fmt: skip
    frames = []
    log = logging.getLogger("test.camera")
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(trio.run_process, command, check=False))
        try:
            with trio.fail_after(15):
                # ffmpeg needs a moment to listen: the reconnect loop waits for it.
                async with aclosing(mjpeg_frames(url, log, initial_backoff=0.05)) as stream:
                    async for frame, _ in stream:
                        frames.append(frame)
                        if len(frames) == 5:
                            break
        finally:
            process.kill()
    assert len(frames) == 5
    for frame in frames:
        assert Image.open(io.BytesIO(frame)).size == (160, 120)


# --- Digest authentication (what Axis cameras ask for by default) ------------


def test_digest_answers_match_the_rfc_examples() -> None:
    # RFC 2617, section 3.5.
    scheme, challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert scheme == "digest"
    answer = digest_authorization(
        challenge, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", cnonce="0a4f113b"
    )
    assert 'response="6629fae49393a05397450978507c4ef1"' in answer
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in answer
    # RFC 7616, section 3.9.1: the same request answered with SHA-256 and MD5.
    for algorithm, response in [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ]:
        _, challenge = parse_challenge(
            f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
            'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
            'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
        )
        answer = digest_authorization(
            challenge,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        assert f'response="{response}"' in answer


async def serve_digest_camera(
    nursery: trio.Nursery, password: str, frames: list[bytes]
) -> tuple[int, list[str]]:
    """A camera that answers 401 + Basic and Digest challenges until a request
    proves ``password`` with Digest."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    schemes: list[str] = []
    realm, nonce = "AXIS_ACCC8E000000", "Zmfa3wAAAADTNDk5NmQ4YjU5"

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    async def on_connection(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some()
                if not data:
                    return
                buf += data
            lines = buf.split(b"\r\n\r\n")[0].decode().split("\r\n")
            method, uri, _ = lines[0].split(" ")
            auth = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in lines
                    if ln.lower().startswith("authorization:")
                ),
                "",
            )
            schemes.append(auth.split(" ")[0])
            f = dict(re.findall(r'(\w+)="?([^",]*)"?', auth))
            expected = md5(
                f"{md5(f'root:{realm}:{password}')}:{nonce}:{f.get('nc')}:{f.get('cnonce')}:auth:"
                f"{md5(f'{method}:{uri}')}"
            )
            if f.get("response") != expected or f.get("uri") != uri:
                await stream.send_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
                    # Axis in "basic and digest" mode offers both, each in its own header.
                    + f'WWW-Authenticate: Basic realm="{realm}"\r\n'.encode()
                    + f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth"\r\n\r\n'.encode()
                )
                return
            await stream.send_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=myboundary\r\n\r\n"
            )
            for frame in frames:
                await stream.send_all(
                    b"--myboundary\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                    % len(frame)
                    + frame
                    + b"\r\n"
                )

    nursery.start_soon(trio.serve_listeners, on_connection, listeners)
    return listeners[0].socket.getsockname()[1], schemes


async def test_a_camera_that_demands_digest_gets_it(nursery: trio.Nursery) -> None:
    frames = [jpeg(n) for n in range(3)]
    port, schemes = await serve_digest_camera(nursery, "se cret", frames)
    url = f"http://root:se%20cret@127.0.0.1:{port}/axis-cgi/mjpg/video.cgi?resolution=64x48&fps=10"
    with trio.fail_after(10):
        got = await take(url, 3)
    assert got == frames
    assert schemes == ["Basic", "Digest"]  # Basic first, then the challenge answered


async def test_a_wrong_password_is_a_401_not_a_loop(nursery: trio.Nursery) -> None:
    port, schemes = await serve_digest_camera(nursery, "right", [jpeg(0)])
    url = f"http://root:wrong@127.0.0.1:{port}/axis-cgi/mjpg/video.cgi"
    with trio.fail_after(10), pytest.raises(HttpStatusError) as caught:
        await take(url, 1)
    assert caught.value.status == 401
    assert schemes == ["Basic", "Digest"]
