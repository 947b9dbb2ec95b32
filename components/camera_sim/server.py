"""An emulator of an Axis network camera (VAPIX) on trio.

Endpoints:

* ``GET /axis-cgi/mjpg/video.cgi?resolution=WxH&fps=N[&nbrofframes=K]``:
  ``multipart/x-mixed-replace; boundary=myboundary`` over HTTP/1.0, each part
  with Content-Type and Content-Length, as Axis cameras send it.  The stream
  ends after K frames if ``nbrofframes`` is given and not 0.
* ``GET /axis-cgi/jpg/image.cgi?resolution=WxH``: one JPEG.

Other paths get 404, bad parameters 400 with the reason, other methods 405.

Every client is served by its own task with its own pacing: a client that
reads slowly gets fewer frames (the newest frame, never a backlog) and is
dropped after ``write_timeout`` seconds without progress; the others are not
affected.  Clients asking for the same resolution and rate share the frames,
so each frame is rendered once.
"""

from __future__ import annotations

import logging
import time
import urllib.parse

import attrs
import trio

from components.video.synthetic import DEFAULT_QUALITY, PatternRenderer

__all__ = ["DEFAULT_QUALITY", "serve_camera_sim", "StreamParams", "parse_stream_params"]

log = logging.getLogger("components.camera_sim")

VIDEO_PATH = "/axis-cgi/mjpg/video.cgi"
IMAGE_PATH = "/axis-cgi/jpg/image.cgi"
BOUNDARY = "myboundary"
DEFAULT_RESOLUTION = (640, 480)
DEFAULT_FPS = 10.0
MAX_FPS = 60.0
MAX_SIDE = 4096
DEFAULT_MAX_CLIENTS = 64
DEFAULT_WRITE_TIMEOUT = 10.0  # seconds a client may take to accept one frame
_REQUEST_TIMEOUT = 10.0  # seconds to receive the request head
_MAX_REQUEST_HEAD = 8192


class BadRequest(ValueError):
    """A request parameter is missing or out of range."""


@attrs.frozen
class StreamParams:
    width: int
    height: int
    fps: float
    frames: int  # 0: unlimited


def parse_stream_params(query: str) -> StreamParams:
    """Parse the VAPIX query string of video.cgi or image.cgi.

    Raises:
        BadRequest: with a message fit for the client.
    """
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    width, height = DEFAULT_RESOLUTION
    fps = DEFAULT_FPS
    frames = 0
    if "resolution" in params:
        text = params["resolution"][-1]
        w, sep, h = text.lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit()):
            raise BadRequest(f"resolution={text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
        width, height = int(w), int(h)
        if not (64 <= width <= MAX_SIDE and 48 <= height <= MAX_SIDE):
            raise BadRequest(
                f"resolution={text}: width and height must be within 64x48..{MAX_SIDE}x{MAX_SIDE}"
            )
    if "fps" in params:
        text = params["fps"][-1]
        try:
            fps = float(text)
        except ValueError:
            raise BadRequest(f"fps={text!r}: expected a number") from None
        if not 0 < fps <= MAX_FPS:
            raise BadRequest(f"fps={text}: must be more than 0 and at most {MAX_FPS:g}")
    if "nbrofframes" in params:
        text = params["nbrofframes"][-1]
        if not text.isdigit():
            raise BadRequest(f"nbrofframes={text!r}: expected a whole number")
        frames = int(text)
    return StreamParams(width, height, fps, frames)


class _FrameSource:
    """Frames of one resolution and rate, numbered from a shared epoch and
    rendered at most once each, whoever asks first."""

    def __init__(self, renderer: PatternRenderer, fps: float, epoch: float) -> None:
        self._renderer = renderer
        self._fps = fps
        self._epoch = epoch
        self._last: tuple[int, bytes] | None = None

    def current(self) -> bytes:
        frame_no = int((trio.current_time() - self._epoch) * self._fps)
        if self._last is None or self._last[0] != frame_no:
            self._last = (frame_no, self._renderer.render(frame_no, time.time()))
        return self._last[1]


class _Sim:
    def __init__(self, quality: int, write_timeout: float, max_clients: int) -> None:
        self.quality = quality
        self.write_timeout = write_timeout
        self.clients = trio.CapacityLimiter(max_clients)
        self.epoch = trio.current_time()
        self._renderers: dict[tuple[int, int], PatternRenderer] = {}
        self._sources: dict[tuple[int, int, float], _FrameSource] = {}

    def source(self, params: StreamParams) -> _FrameSource:
        key = (params.width, params.height, params.fps)
        src = self._sources.get(key)
        if src is None:
            size = (params.width, params.height)
            renderer = self._renderers.get(size)
            if renderer is None:
                renderer = PatternRenderer(*size, quality=self.quality)
                self._renderers[size] = renderer
            src = self._sources[key] = _FrameSource(renderer, params.fps, self.epoch)
        return src

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            head = None
            with trio.move_on_after(_REQUEST_TIMEOUT):
                head = await _receive_head(stream)
            if head is None:
                return
            # The request is read before any answer: closing a socket with
            # unread input would reset the connection and lose the answer.
            if self.clients.available_tokens == 0:
                await _send_error(stream, 503, "Service Unavailable", "too many clients\n")
                return
            async with self.clients:
                await self._serve(stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except trio.TooSlowError:
            log.info("dropped a client that stopped reading for %g s", self.write_timeout)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, head: bytes) -> None:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _send_error(stream, 400, "Bad Request", "malformed request line\n")
            return
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            await _send_error(stream, 405, "Method Not Allowed", "only GET is supported\n")
            return
        url = urllib.parse.urlsplit(target)
        if url.path not in (VIDEO_PATH, IMAGE_PATH):
            await _send_error(stream, 404, "Not Found", f"no such endpoint: {url.path}\n")
            return
        try:
            params = parse_stream_params(url.query)
        except BadRequest as exc:
            await _send_error(stream, 400, "Bad Request", f"{exc}\n")
            return
        source = self.source(params)
        if url.path == IMAGE_PATH:
            jpeg = source.current()
            head_out = (
                "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            with trio.fail_after(self.write_timeout):
                await stream.send_all(head_out if method == "HEAD" else head_out + jpeg)
            return
        log.info("client %s: streaming %s", _peer(stream), target)
        with trio.fail_after(self.write_timeout):
            await stream.send_all(
                (
                    "HTTP/1.0 200 OK\r\nCache-Control: no-cache\r\nPragma: no-cache\r\n"
                    "Connection: close\r\n"
                    f"Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n\r\n"
                ).encode("ascii")
            )
        if method == "HEAD":
            return
        await self._stream(stream, source, params)

    async def _stream(
        self, stream: trio.SocketStream, source: _FrameSource, params: StreamParams
    ) -> None:
        interval = 1.0 / params.fps
        deadline = trio.current_time()
        sent = 0
        while params.frames == 0 or sent < params.frames:
            await trio.sleep_until(deadline)
            jpeg = source.current()
            part_head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            ).encode("ascii")
            with trio.fail_after(self.write_timeout):
                await stream.send_all(part_head + jpeg + b"\r\n")
            sent += 1
            # A client slower than the frame rate gets the newest frame next,
            # not a backlog.
            deadline = max(deadline + interval, trio.current_time())
        with trio.fail_after(self.write_timeout):
            await stream.send_all(f"--{BOUNDARY}--\r\n".encode("ascii"))


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def _receive_head(stream: trio.SocketStream) -> bytes | None:
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > _MAX_REQUEST_HEAD:
            await _send_error(stream, 431, "Request Header Fields Too Large", "head too long\n")
            return None
        data = await stream.receive_some(4096)
        if not data:
            return None
        buf += data
    return bytes(buf).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def _send_error(stream: trio.SocketStream, status: int, reason: str, text: str) -> None:
    body = text.encode("utf-8")
    with trio.fail_after(DEFAULT_WRITE_TIMEOUT):
        await stream.send_all(
            (
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            + body
        )


async def serve_camera_sim(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    quality: int = DEFAULT_QUALITY,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the emulated camera on ``host:port`` until cancelled.

    Reports the bound port through ``task_status.started(port)`` (use port 0
    to pick a free one).  Never returns.

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sim = _Sim(quality, write_timeout, max_clients)
    bound = listeners[0].socket.getsockname()[1]
    log.info("camera_sim listening on %s:%d", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(sim.handle, listeners)
