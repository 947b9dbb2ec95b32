"""An emulator of an Axis network camera (VAPIX) on trio, speaking HTTP through h11.

Endpoints:

* ``GET /axis-cgi/mjpg/video.cgi?resolution=WxH&fps=N[&nbrofframes=K]``:
  ``multipart/x-mixed-replace; boundary=myboundary``, each part with
  Content-Type and Content-Length, as Axis cameras send it.  An HTTP/1.0
  client gets the stream as Axis cameras send it, unframed until the close;
  an HTTP/1.1 client gets it chunked (h11's framing).  The stream ends after
  K frames if ``nbrofframes`` is given and not 0.
* ``GET /axis-cgi/jpg/image.cgi?resolution=WxH``: one JPEG, with
  Content-Length.

HEAD is answered with the head alone.  Other paths get 404, bad parameters
400 with the reason, other methods 405, a malformed request 400 and a request
head over 8 KiB 431.  Every answer closes the connection.

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
from http import HTTPStatus

import attrs
import h11
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
_MAX_REQUEST_HEAD = 8192  # bytes of an incomplete request head (h11 may take one read more)
_REQUEST_READ = 4096  # bytes per read of the request
_LINGER_TIME = 1.0  # seconds to drain a refused request before closing
_LINGER_BYTES = 1 << 20


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
        http = _Responder(stream, self.write_timeout)
        try:
            request = None
            with trio.move_on_after(_REQUEST_TIMEOUT):
                request = await http.receive_request()
            if request is None:
                return
            # The request is read before any answer: closing a socket with
            # unread input would reset the connection and lose the answer.
            if self.clients.available_tokens == 0:
                await http.respond_text(503, "too many clients\n")
                return
            async with self.clients:
                await self._serve(http, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except trio.TooSlowError:
            log.info("dropped a client that stopped reading for %g s", self.write_timeout)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, http: _Responder, request: h11.Request) -> None:
        if request.method not in (b"GET", b"HEAD"):
            await http.respond_text(405, "only GET is supported\n")
            return
        target = request.target.decode("ascii")
        url = urllib.parse.urlsplit(target)
        if url.path not in (VIDEO_PATH, IMAGE_PATH):
            await http.respond_text(404, f"no such endpoint: {url.path}\n")
            return
        try:
            params = parse_stream_params(url.query)
        except BadRequest as exc:
            await http.respond_text(400, f"{exc}\n")
            return
        source = self.source(params)
        if url.path == IMAGE_PATH:
            await http.respond(200, [("Content-Type", "image/jpeg")], source.current())
            return
        log.info("client %s: streaming %s", http.peer(), target)
        headers = [
            ("Cache-Control", "no-cache"),
            ("Pragma", "no-cache"),
            ("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"),
        ]
        await http.respond(200, headers, None)
        if request.method == b"GET":
            await self._stream(http, source, params)
        await http.end()

    async def _stream(self, http: _Responder, source: _FrameSource, params: StreamParams) -> None:
        interval = 1.0 / params.fps
        deadline = trio.current_time()
        sent = 0
        while params.frames == 0 or sent < params.frames:
            await trio.sleep_until(deadline)
            jpeg = source.current()
            part_head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            ).encode("ascii")
            await http.send_body(part_head + jpeg + b"\r\n")
            sent += 1
            # A client slower than the frame rate gets the newest frame next,
            # not a backlog.
            deadline = max(deadline + interval, trio.current_time())
        await http.send_body(f"--{BOUNDARY}--\r\n".encode("ascii"))


class _Responder:
    """One client's connection, on h11: reads its request, sends one answer.

    Every answer closes the connection.  A body sent piece by piece (after
    ``respond(..., body=None)``) is framed by h11: chunked for an HTTP/1.1
    client, until the close for an HTTP/1.0 one, as Axis cameras send it.
    Answers to HEAD carry no body.  Each send must finish within
    ``write_timeout`` seconds.

    Raises (from the send methods):
        trio.TooSlowError: the client did not take the bytes in time.
        trio.BrokenResourceError: the client went away.
    """

    def __init__(self, stream: trio.SocketStream, write_timeout: float) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_HEAD)
        self._write_timeout = write_timeout
        self._head_only = False

    def peer(self) -> str:
        try:
            host, port = self._stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"

    async def receive_request(self) -> h11.Request | None:
        """The request head, or None if the client closed first or sent a
        malformed or too long head (then it was answered 400 or 431)."""
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self.respond_text(exc.error_status_hint, f"bad request: {exc}\n")
                return None
            if isinstance(event, h11.Request):
                self._head_only = event.method == b"HEAD"
                return event
            if event is not h11.NEED_DATA:
                return None  # the client closed the connection
            data = await self._stream.receive_some(_REQUEST_READ)
            if not data:
                return None
            self._conn.receive_data(data)

    async def respond(
        self, status: int, headers: list[tuple[str, str]], body: bytes | None
    ) -> None:
        """Send the response head and, unless ``body`` is None, the whole body."""
        headers = [*headers, ("Connection", "close")]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        reason = HTTPStatus(status).phrase
        data = self._conn.send(h11.Response(status_code=status, reason=reason, headers=headers))
        if body is not None:
            if not self._head_only:
                data += self._conn.send(h11.Data(data=body))
            data += self._conn.send(h11.EndOfMessage())
        await self._send(data)

    async def respond_text(self, status: int, text: str) -> None:
        """Answer with a plain-text body (an error), then drop what the
        client still sends (at most ``_LINGER_BYTES`` for ``_LINGER_TIME``
        seconds): closing a socket with unread input would reset the
        connection and lose the answer."""
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        await self.respond(status, headers, text.encode("utf-8"))
        with trio.move_on_after(_LINGER_TIME):
            await self._stream.send_eof()
            dropped = 0
            while dropped < _LINGER_BYTES and (data := await self._stream.receive_some(65536)):
                dropped += len(data)

    async def send_body(self, data: bytes) -> None:
        """Send a piece of the body begun by ``respond(..., None)``."""
        await self._send(self._conn.send(h11.Data(data=data)))

    async def end(self) -> None:
        """End the body begun by ``respond(..., None)``."""
        await self._send(self._conn.send(h11.EndOfMessage()))

    async def _send(self, data: bytes) -> None:
        with trio.fail_after(self._write_timeout):
            await self._stream.send_all(data)


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
