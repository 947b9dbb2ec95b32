"""Reading MJPEG streams from network cameras (Axis VAPIX and the like).

Three layers:

* ``MultipartParser``: sans-I/O ``multipart/x-mixed-replace`` parser.  Feed it
  bytes, get back complete parts.  It tolerates what real cameras send: a
  boundary declared with or without a leading ``--``, parts with or without
  ``Content-Length`` (then the body runs to the next boundary line), and a
  missing CRLF between a body and the next boundary.  Its buffer is capped.
* ``ChunkedDecoder`` and ``parse_response_head``: sans-I/O pieces of an
  HTTP/1.x client: response head, chunked transfer coding; HTTP/1.0 and
  close-delimited bodies need no decoder.
* ``read_mjpeg`` (one connection) and ``mjpeg_frames`` (reconnects with
  capped exponential backoff, logging every drop and recovery): async
  iterators of ``(jpeg_bytes, capture_time)`` over trio sockets.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import attrs
import trio

from turbine import Backoff, TurbineError

DEFAULT_MAX_PART_SIZE = 8 * 1024 * 1024  # bytes; a 4K JPEG at high quality fits
DEFAULT_MAX_HEADER_SIZE = 16 * 1024  # bytes, for HTTP and part headers alike
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_IDLE_TIMEOUT = 10.0  # seconds without a byte before the camera counts as gone
DEFAULT_INITIAL_BACKOFF = 0.5  # seconds before the first reconnect attempt
DEFAULT_MAX_BACKOFF = 30.0  # seconds, cap of the doubling backoff
_RECEIVE_SIZE = 65536
_MAX_DELIMITER_TAIL = 128  # bytes allowed after the boundary on its line


class VideoError(TurbineError):
    """Base class of the errors raised by the video sources."""


class MultipartError(VideoError):
    """The multipart stream is malformed or a part is too large."""


class HttpError(VideoError):
    """The HTTP response is malformed or not what a camera should send."""


class HttpStatusError(HttpError):
    """The server answered with a status other than 200."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url} answered {status} {reason}")
        self.status = status
        self.reason = reason


class CameraDisconnected(VideoError):
    """The connection broke or went silent."""


# ---------------------------------------------------------------------------
# multipart, sans-I/O


@attrs.frozen
class Part:
    """One part of a multipart stream; header names are lower case."""

    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None


_PREAMBLE, _HEADERS, _BODY_LENGTH, _BODY_SCAN, _AFTER_BODY, _DONE = range(6)


class MultipartParser:
    """Incremental parser of a ``multipart/x-mixed-replace`` body.

    Args:
        boundary: the boundary from the Content-Type header, with or without
            a leading ``--``.
        max_part_size: largest body accepted, in bytes.
        max_header_size: largest block of part headers (or of junk between
            parts), in bytes.

    ``feed(data)`` returns the parts that ``data`` completed; the parser holds
    at most about ``max_part_size + max_header_size`` bytes.

    Raises:
        ValueError: for an empty boundary.
        MultipartError: from ``feed`` when a part is larger than
            ``max_part_size``, headers are too long or malformed.
    """

    def __init__(
        self,
        boundary: str | bytes,
        *,
        max_part_size: int = DEFAULT_MAX_PART_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        if isinstance(boundary, str):
            boundary = boundary.encode("latin-1")
        core = boundary.strip().strip(b'"').lstrip(b"-")
        if not core:
            raise ValueError(f"multipart boundary {boundary!r} is empty")
        self._core = core
        self._max_part = max_part_size
        self._max_header = max_header_size
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._scan_from = 0
        self._headers: dict[str, str] = {}
        self._length = 0

    @property
    def done(self) -> bool:
        """True once the closing boundary (``--boundary--``) was seen."""
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Part]:
        """Add bytes from the stream; return the parts they completed."""
        if self._state == _DONE:
            return []
        self._buf += data
        parts: list[Part] = []
        while self._step(parts):
            pass
        return parts

    def feed_eof(self) -> list[Part]:
        """The stream ended: return a last part that is complete without a
        closing boundary (a body without Content-Length that ends a JPEG),
        otherwise nothing."""
        parts: list[Part] = []
        if self._state == _BODY_SCAN:
            body = bytes(self._buf).rstrip(b"\r\n")
            if body.endswith(b"\xff\xd9"):
                parts.append(Part(self._headers, body))
        self._buf.clear()
        self._state = _DONE
        return parts

    # -- internals ---------------------------------------------------------

    def _find_delimiter(self, start: int) -> tuple[int, int, bool] | None:
        """Find a boundary line at or after ``start``.

        Returns ``(line_start, line_end, is_close)`` with ``line_end`` just
        past its newline, or None.  When a candidate is cut off by the end of
        the buffer, ``self._scan_from`` is left pointing at it.
        """
        buf = self._buf
        core = self._core
        i = buf.find(core, start)
        while i != -1:
            j = i
            while j > 0 and buf[j - 1] == 0x2D:  # leading dashes, any number
                j -= 1
            if j == 0 or buf[j - 1] == 0x0A:
                tail_start = i + len(core)
                nl = buf.find(b"\n", tail_start, tail_start + _MAX_DELIMITER_TAIL)
                tail = bytes(buf[tail_start : nl if nl != -1 else len(buf)])
                is_close = tail.startswith(b"--")
                rest = tail[2:] if is_close else tail
                if nl != -1:
                    if not rest.strip(b" \t\r"):
                        return j, nl + 1, is_close
                elif (tail == b"-" or not rest.strip(b" \t\r")) and len(tail) < _MAX_DELIMITER_TAIL:
                    # Could still become a boundary line: wait for more data.
                    self._scan_from = j
                    return None
            i = buf.find(core, i + 1)
        self._scan_from = max(0, len(buf) - len(core) + 1)
        return None

    def _step(self, parts: list[Part]) -> bool:
        """Advance by one state; return False when more data is needed."""
        buf = self._buf
        state = self._state
        if state in (_PREAMBLE, _AFTER_BODY):
            found = self._find_delimiter(0)
            if found is None:
                if len(buf) > self._max_header:
                    where = "before the first part" if state == _PREAMBLE else "after a part"
                    raise MultipartError(
                        f"no boundary line {self._core!r} within {self._max_header} bytes "
                        f"{where}; is the boundary in the Content-Type header right?"
                    )
                return False
            _, end, is_close = found
            del buf[:end]
            self._state = _DONE if is_close else _HEADERS
            self._headers = {}
            return not is_close
        if state == _HEADERS:
            nl = buf.find(b"\n")
            if nl == -1:
                if len(buf) > self._max_header:
                    raise MultipartError(f"part header line longer than {self._max_header} bytes")
                return False
            line = bytes(buf[:nl]).rstrip(b"\r")
            del buf[: nl + 1]
            if line:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise MultipartError(f"malformed part header line {line[:80]!r}")
                self._headers[name.strip().lower().decode("latin-1")] = value.strip().decode(
                    "latin-1"
                )
                if len(self._headers) > 100:
                    raise MultipartError("more than 100 headers in one part")
                return True
            length = self._headers.get("content-length")
            if length is None:
                self._state = _BODY_SCAN
                self._scan_from = 0
                return True
            try:
                self._length = int(length)
                if self._length < 0:
                    raise ValueError
            except ValueError:
                raise MultipartError(f"bad part Content-Length {length!r}") from None
            if self._length > self._max_part:
                raise MultipartError(
                    f"part of {self._length} bytes exceeds max_part_size={self._max_part}"
                )
            self._state = _BODY_LENGTH
            return True
        if state == _BODY_LENGTH:
            if len(buf) < self._length:
                return False
            parts.append(Part(self._headers, bytes(buf[: self._length])))
            del buf[: self._length]
            self._state = _AFTER_BODY
            return True
        if state == _BODY_SCAN:
            found = self._find_delimiter(self._scan_from)
            if found is None:
                if self._scan_from > self._max_part + 2:
                    raise MultipartError(
                        f"part without Content-Length grew past max_part_size="
                        f"{self._max_part} bytes and no boundary line {self._core!r} "
                        f"followed; raise max_part_size or check the boundary"
                    )
                return False
            start, end, is_close = found
            body = bytes(buf[:start])
            if body.endswith(b"\r\n"):
                body = body[:-2]
            elif body.endswith(b"\n"):
                body = body[:-1]
            if len(body) > self._max_part:
                raise MultipartError(
                    f"part of {len(body)} bytes exceeds max_part_size={self._max_part}"
                )
            parts.append(Part(self._headers, body))
            del buf[:end]
            self._headers = {}
            self._state = _DONE if is_close else _HEADERS
            return not is_close
        return False


# ---------------------------------------------------------------------------
# HTTP/1.x, sans-I/O


@attrs.frozen
class ResponseHead:
    """Status line and headers of an HTTP response; header names lower case."""

    http_version: str
    status: int
    reason: str
    headers: Mapping[str, str]


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse the status line and headers (without the blank line).

    Raises:
        HttpError: if it is not an HTTP/1.x response head.
    """
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    status_line = lines[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (len(code) == 3 and code.isdigit()):
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        if not raw:
            continue
        if raw[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            last = next(reversed(headers))
            headers[last] += " " + raw.strip().decode("latin-1")
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            raise HttpError(f"malformed header line {raw[:80]!r}")
        key = name.strip().lower().decode("latin-1")
        val = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return ResponseHead(version, int(code), reason.strip(), headers)


def content_type_boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a Content-Type value, unquoted."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


_SIZE, _DATA, _DATA_END, _TRAILER, _END = range(5)


class ChunkedDecoder:
    """Incremental decoder of the chunked transfer coding.

    ``feed(data)`` returns the decoded bytes available so far; ``done`` is
    True after the last chunk and trailers.

    Raises:
        HttpError: from ``feed`` on a malformed chunk size or separator.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _SIZE
        self._left = 0

    @property
    def done(self) -> bool:
        return self._state == _END

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        buf = self._buf
        out = bytearray()
        while True:
            if self._state == _SIZE:
                nl = buf.find(b"\n")
                if nl == -1:
                    if len(buf) > 1024:
                        raise HttpError("chunk size line longer than 1024 bytes")
                    break
                line = bytes(buf[:nl]).split(b";", 1)[0].strip()
                del buf[: nl + 1]
                try:
                    self._left = int(line, 16)
                except ValueError:
                    raise HttpError(f"bad chunk size {line[:40]!r}") from None
                self._state = _DATA if self._left else _TRAILER
            elif self._state == _DATA:
                if not buf:
                    break
                take = min(self._left, len(buf))
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif self._state == _DATA_END:
                nl = buf.find(b"\n")
                if nl == -1:
                    if len(buf) > 2:
                        raise HttpError("missing CRLF after chunk data")
                    break
                if buf[:nl].strip(b"\r"):
                    raise HttpError("missing CRLF after chunk data")
                del buf[: nl + 1]
                self._state = _SIZE
            elif self._state == _TRAILER:
                nl = buf.find(b"\n")
                if nl == -1:
                    if len(buf) > DEFAULT_MAX_HEADER_SIZE:
                        raise HttpError("chunked trailer too long")
                    break
                line = bytes(buf[:nl]).strip(b"\r")
                del buf[: nl + 1]
                if not line:
                    self._state = _END
            else:
                buf.clear()
                break
        return bytes(out)


# ---------------------------------------------------------------------------
# I/O on trio sockets


_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Digest realm="x", nonce="y"`` -> ``("digest", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _AUTH_PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def digest_authorization(
    challenge: dict[str, str],
    user: str,
    password: str,
    method: str,
    uri: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """The ``Authorization`` value answering an HTTP Digest challenge (RFC 7616).

    Supports MD5 and SHA-256, their ``-sess`` variants, and ``qop=auth`` or
    none (RFC 2069).

    Raises:
        HttpError: the challenge lacks a nonce or asks for an unknown algorithm.
    """
    algorithm = challenge.get("algorithm", "MD5")
    hashes = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
    base = algorithm.upper().removesuffix("-SESS")
    if base not in hashes or "nonce" not in challenge:
        raise HttpError(f"cannot answer a Digest challenge with algorithm {algorithm!r}")

    def h(text: str) -> str:
        return hashes[base](text.encode()).hexdigest()

    realm, nonce = challenge.get("realm", ""), challenge["nonce"]
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    fields = [
        f'username="{user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f"algorithm={algorithm}",
    ]
    if "auth" in qops:
        response = h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    else:
        response = h(f"{ha1}:{nonce}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)


@attrs.frozen
class _Target:
    host: str
    port: int
    request_target: str
    host_header: str
    authorization: str | None
    credentials: tuple[str, str] | None = None

    @classmethod
    def from_url(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"camera URL {url!r} must look like http://HOST[:PORT]/PATH")
        port = parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
        auth = credentials = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            credentials = (user, password)
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(parts.hostname, port, target, host_header, auth, credentials)

    def answer(self, head: Any) -> _Target | None:
        """This target with credentials answering a 401's Digest challenge, or None."""
        scheme, params = parse_challenge(head.headers.get("www-authenticate", ""))
        if self.credentials is None or scheme != "digest":
            return None
        user, password = self.credentials
        auth = digest_authorization(params, user, password, "GET", self.request_target)
        return attrs.evolve(self, authorization=auth)

    def request(self) -> bytes:
        lines = [
            f"GET {self.request_target} HTTP/1.1",
            f"Host: {self.host_header}",
            "User-Agent: turbine-video/0.1",
            "Accept: multipart/x-mixed-replace, image/jpeg",
            "Connection: close",
        ]
        if self.authorization:
            lines.append(f"Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _BodyReader:
    """Receives the response body from a stream, undoing its framing."""

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        url: str,
        idle_timeout: float,
        *,
        first: bytes,
        chunked: bool,
        length: int | None,
    ) -> None:
        self._stream = stream
        self._url = url
        self._idle = idle_timeout
        self._pending = first
        self._chunked = ChunkedDecoder() if chunked else None
        self._left = length

    async def receive_some(self) -> bytes:
        """Next piece of the body; b"" at its end.

        Raises:
            CameraDisconnected: nothing arrived for ``idle_timeout`` seconds,
                or the connection broke.
        """
        while True:
            if self._pending:
                data, self._pending = self._pending, b""
            elif (self._chunked is not None and self._chunked.done) or self._left == 0:
                return b""
            else:
                data = await _receive(self._stream, self._url, self._idle)
                if not data:
                    if self._chunked is not None and not self._chunked.done:
                        raise CameraDisconnected(f"{self._url} closed in the middle of a chunk")
                    return b""
            if self._chunked is not None:
                data = self._chunked.feed(data)
            if self._left is not None:
                data = data[: self._left]
                self._left -= len(data)
            if data:
                return data


async def _receive(stream: trio.abc.ReceiveStream, url: str, idle_timeout: float) -> bytes:
    try:
        with trio.fail_after(idle_timeout):
            data = await stream.receive_some(_RECEIVE_SIZE)
        return data if isinstance(data, bytes) else bytes(data)
    except trio.TooSlowError:
        raise CameraDisconnected(f"no data from {url} for {idle_timeout:g} s") from None
    except (trio.BrokenResourceError, OSError) as exc:
        raise CameraDisconnected(f"connection to {url} broke: {exc}") from exc


async def _read_head(
    stream: trio.abc.ReceiveStream, url: str, idle_timeout: float, max_size: int
) -> tuple[ResponseHead, bytes]:
    buf = bytearray()
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            end = buf.find(sep)
            if end != -1:
                return parse_response_head(bytes(buf[:end])), bytes(buf[end + len(sep) :])
        if len(buf) > max_size:
            raise HttpError(f"response head from {url} longer than {max_size} bytes")
        data = await _receive(stream, url, idle_timeout)
        if not data:
            raise CameraDisconnected(f"{url} closed the connection before a response")
        buf += data


def _connect_reason(exc: OSError) -> str:
    """The OS's reason ("Connection refused") behind trio's summary error."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = {
            getattr(e, "strerror", None) or str(e) for e in cause.exceptions if e is not None
        }
        return "; ".join(sorted(reasons))
    return exc.strerror or str(exc)


async def read_mjpeg(
    url: str,
    *,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """Connect once to ``url`` and yield ``(jpeg, capture_time)`` per frame.

    ``capture_time`` is ``clock()`` when the frame's last byte arrived.  The
    iterator ends when the server ends the stream.  A response of type
    ``image/jpeg`` (a snapshot URL) gives one frame.  Parts whose
    Content-Type is given and is not ``image/jpeg`` are skipped.  Close the
    iterator with ``contextlib.aclosing`` to release the connection promptly.
    Credentials in the URL (``http://user:password@host/...``) go as Basic;
    a 401 with a Digest challenge (the Axis default) is answered once.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
        CameraDisconnected: the connection could not be made (refused,
            unreachable, name unknown) or took more than ``connect_timeout``,
            nothing arrived for ``idle_timeout`` seconds, or the connection
            broke.
        HttpStatusError: the status is not 200.
        HttpError: malformed response, or not an MJPEG or JPEG response.
        MultipartError: malformed stream or a part over ``max_part_size``.
    """
    target: _Target | None = _Target.from_url(url)
    while True:
        assert target is not None
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(target.host, target.port)
        except trio.TooSlowError:
            raise CameraDisconnected(
                f"connecting to {url} took more than {connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise CameraDisconnected(f"cannot connect to {url}: {_connect_reason(exc)}") from exc
        try:
            await stream.send_all(target.request())
            head, rest = await _read_head(stream, url, idle_timeout, DEFAULT_MAX_HEADER_SIZE)
        except trio.BrokenResourceError as exc:
            await stream.aclose()
            raise CameraDisconnected(f"connection to {url} broke: {exc}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if head.status == 401 and not (target.authorization or "").startswith("Digest"):
            # Cameras often insist on Digest: answer its challenge once, afresh.
            answered = target.answer(head)
            if answered is not None:
                await stream.aclose()
                target = answered
                continue
        break
    async with stream:
        if head.status != 200:
            raise HttpStatusError(url, head.status, head.reason)
        chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        length = None
        if not chunked and "content-length" in head.headers:
            try:
                length = int(head.headers["content-length"])
            except ValueError:
                raise HttpError(
                    f"bad Content-Length {head.headers['content-length']!r} from {url}"
                ) from None
        body = _BodyReader(stream, url, idle_timeout, first=rest, chunked=chunked, length=length)
        content_type = head.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type == "image/jpeg":
            chunks = []
            size = 0
            while data := await body.receive_some():
                chunks.append(data)
                size += len(data)
                if size > max_part_size:
                    raise MultipartError(f"JPEG from {url} exceeds max_part_size={max_part_size}")
            yield b"".join(chunks), clock()
            return
        boundary = content_type_boundary(content_type)
        if not media_type.startswith("multipart/") or boundary is None:
            raise HttpError(
                f"{url} sent Content-Type {content_type!r}; expected "
                f"multipart/x-mixed-replace with a boundary, or image/jpeg"
            )
        parser = MultipartParser(boundary, max_part_size=max_part_size)
        while not parser.done:
            data = await body.receive_some()
            parts = parser.feed(data) if data else parser.feed_eof()
            if parts:
                now = clock()
                for part in parts:
                    if part.content_type in (None, "image/jpeg", "image/jpg"):
                        yield part.body, now


async def mjpeg_frames(
    url: str,
    log: logging.Logger,
    *,
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    clock: Callable[[], float] = time.time,
    on_state: Callable[[str], None] = lambda state: None,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """Yield ``(jpeg, capture_time)`` from ``url`` forever, reconnecting.

    ``on_state`` hears ``"streaming"`` when frames flow and
    ``"reconnecting: <reason>"`` when the camera drops.

    When the camera drops, refuses or stalls, logs a warning naming the reason
    and the delay, waits, and tries again; the delay doubles from
    ``initial_backoff`` up to ``max_backoff`` and resets once frames flow
    again, which is logged at INFO.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
        HttpStatusError: a 4xx answer other than 408 or 429 (a wrong path or
            credentials: retrying would not help).
    """
    backoff = Backoff(initial_backoff, max_backoff)
    failures = 0
    while True:
        receiving = False
        try:
            async with aclosing(
                read_mjpeg(
                    url,
                    max_part_size=max_part_size,
                    connect_timeout=connect_timeout,
                    idle_timeout=idle_timeout,
                    clock=clock,
                )
            ) as frames:
                async for frame in frames:
                    if not receiving:
                        receiving = True
                        if failures:
                            log.info(
                                "camera %s: recovered after %d failed attempt(s), frames flowing",
                                url,
                                failures,
                            )
                        else:
                            log.info("camera %s: connected, frames flowing", url)
                        failures = 0
                        backoff.reset()
                        on_state("streaming")
                    yield frame
            reason = "the camera ended the stream"
        except HttpStatusError as exc:
            if 400 <= exc.status < 500 and exc.status not in (408, 429):
                raise
            reason = str(exc)
        except (OSError, VideoError) as exc:
            reason = str(exc) or type(exc).__name__
        failures += 1
        delay = backoff.next_delay()
        on_state(f"reconnecting: {reason}")
        log.warning(
            "camera %s: dropped (%s); reconnecting in %.1f s (attempt %d)",
            url,
            reason,
            delay,
            failures,
        )
        await trio.sleep(delay)
