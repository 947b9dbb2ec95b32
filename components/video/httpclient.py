"""One HTTP GET to a camera: h11 frames it, trio moves the bytes.

Two layers:

* ``GetExchange``: sans-I/O, one GET and its response.  Send
  ``exchange.request_bytes``, then feed it what the socket gives
  (``receive_data``, ``b""`` at end of file) and take events from
  ``next_event()``: a ``ResponseHead``, then body pieces (``bytes``), then
  ``END_OF_BODY``; or ``NEED_DATA``.  h11 does the framing, as cameras send
  it: Content-Length, chunked, and bodies that run until the server closes
  (HTTP/1.0 and HTTP/1.1 alike); it caps what it holds while a head or a
  chunk line is incomplete at ``max_header_size`` bytes.
* ``open_get(url)``: connects, sends the request, reads the head, answers a
  Digest challenge once (the Axis default), and returns an ``HttpResponse``
  to read the body from.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Mapping, Sequence

import attrs
import h11
import trio

from components.video.digest import basic_authorization, digest_authorization, parse_challenge
from components.video.errors import CameraDisconnected, HttpError
from turbine import leaves

DEFAULT_MAX_HEADER_SIZE = 16 * 1024  # bytes of an incomplete head or chunk line
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_IDLE_TIMEOUT = 10.0  # seconds without a byte before the camera counts as gone
USER_AGENT = "turbine-video/0.1"
_RECEIVE_SIZE = 65536


class Signal(enum.Enum):
    """What ``GetExchange.next_event`` returns when it has no head or data."""

    NEED_DATA = "need data"
    END_OF_BODY = "end of body"


NEED_DATA = Signal.NEED_DATA
END_OF_BODY = Signal.END_OF_BODY


@attrs.frozen
class ResponseHead:
    """Status line and headers of an HTTP response.

    ``headers`` has lower-case names, repeated fields joined with ``", "``;
    ``challenges`` holds each ``WWW-Authenticate`` value apart (a camera may
    offer Basic and Digest in two of them).
    """

    http_version: str
    status: int
    reason: str
    headers: Mapping[str, str]
    challenges: tuple[str, ...] = ()

    @classmethod
    def from_h11(cls, event: h11.Response) -> ResponseHead:
        headers: dict[str, str] = {}
        challenges = []
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if name == "www-authenticate":
                challenges.append(value)
        version = "HTTP/" + event.http_version.decode("ascii")
        return cls(
            version, event.status_code, event.reason.decode("latin-1"), headers, tuple(challenges)
        )

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, lower case; "" if none."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class _Phase(enum.Enum):
    HEAD = "waiting for the response head"
    BODY = "body framed by h11 (Content-Length or chunked)"
    DRAIN = "body runs until the close; h11 may still hold some of it"
    PASS = "body runs until the close; bytes pass straight through"
    ENDED = "body complete"


def _runs_until_close(head: ResponseHead) -> bool:
    """Whether the body of this answer to a GET ends only with the connection
    (RFC 9112, section 6.3, rule 8): h11 has checked the framing headers."""
    headers = head.headers
    return (
        head.status >= 200
        and head.status not in (204, 304)
        and "transfer-encoding" not in headers
        and "content-length" not in headers
    )


class GetExchange:
    """One GET request and its response, sans-I/O.

    A body that runs until the close (what Axis cameras send) carries no
    framing for h11 to undo, so once h11 has returned what it buffered with
    the head, the bytes pass straight through: h11's state machine costs
    about 10 us per received piece, about as much as parsing the multipart
    stream itself (``benchmarks/mjpeg_read.py``).

    Args:
        target: the request target, ``/path?query``.
        headers: request headers; h11 adds none, so give ``Host``.
        max_header_size: most bytes held while a head, chunk line or trailer
            is incomplete.
        name: how error messages name the server (its URL).

    Raises:
        ValueError: the target or a header is not valid HTTP.
    """

    def __init__(
        self,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        name: str = "the server",
    ) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self._max_header = max_header_size
        self._name = name
        try:
            request = h11.Request(method="GET", target=target, headers=list(headers))
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot ask {name} for {target!r}: {exc}") from None
        self.request_bytes: bytes = self._conn.send(request) + self._conn.send(h11.EndOfMessage())
        self._phase = _Phase.HEAD
        self._passed: list[bytes] = []  # received in the PASS phase, not yet returned
        self._eof = False
        self._received_any = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` when it closed the connection."""
        if not data:
            if self._eof:
                return
            self._eof = True
        self._received_any = self._received_any or bool(data)
        if self._phase is _Phase.PASS:
            self._passed.append(data)
        else:
            self._conn.receive_data(data)

    def next_event(self) -> ResponseHead | bytes | Signal:
        """The response head, then pieces of the body, then ``END_OF_BODY``
        (returned again on every later call); ``NEED_DATA`` when more bytes
        must be received first.  Interim (1xx) responses are skipped.

        Raises:
            HttpError: the response is malformed, or a head or chunk line is
                longer than ``max_header_size``.
            CameraDisconnected: the server closed the connection before the
                response was complete.
        """
        phase = self._phase
        if phase is _Phase.PASS:
            if not self._passed:
                return NEED_DATA
            data = self._passed.pop(0)
            if data:
                return data
            self._phase = _Phase.ENDED
            return END_OF_BODY
        if phase is _Phase.ENDED:
            return END_OF_BODY
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._error(exc) from None
            if isinstance(event, h11.Data):
                return event.data
            if event is h11.NEED_DATA:
                if phase is _Phase.DRAIN:  # h11 holds nothing more: pass bytes through
                    self._phase = _Phase.PASS
                return NEED_DATA
            if isinstance(event, h11.Response):
                head = ResponseHead.from_h11(event)
                self._phase = _Phase.DRAIN if _runs_until_close(head) else _Phase.BODY
                return head
            if isinstance(event, h11.EndOfMessage):
                self._phase = _Phase.ENDED
                return END_OF_BODY
            if not isinstance(event, h11.InformationalResponse):  # 100 Continue: skip it
                raise HttpError(f"unexpected {type(event).__name__} from {self._name}")

    def _error(self, exc: h11.RemoteProtocolError) -> HttpError | CameraDisconnected:
        if exc.error_status_hint == 431:
            return HttpError(
                f"response head or chunk line from {self._name} longer than "
                f"{self._max_header} bytes"
            )
        if self._eof:
            if self._phase is not _Phase.HEAD:
                where = "in the middle of the body"
            elif self._received_any:
                where = "before a complete response"
            else:
                where = "before a response"
            return CameraDisconnected(f"{self._name} closed the connection {where}")
        return HttpError(f"malformed HTTP response from {self._name}: {exc}")


# ---------------------------------------------------------------------------
# I/O on trio sockets


@attrs.frozen
class _Target:
    """Where a URL points and how to ask it."""

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
            auth = basic_authorization(user, password)
        return cls(parts.hostname, port, target, host_header, auth, credentials)

    def answer(self, head: ResponseHead) -> _Target | None:
        """This target with credentials answering a 401's Digest challenge,
        or None if there is none to answer (or no credentials)."""
        if self.credentials is None or (self.authorization or "").startswith("Digest"):
            return None
        for challenge in head.challenges:
            scheme, params = parse_challenge(challenge)
            if scheme == "digest":
                user, password = self.credentials
                auth = digest_authorization(params, user, password, "GET", self.request_target)
                return attrs.evolve(self, authorization=auth)
        return None

    def headers(self, accept: str) -> list[tuple[str, str]]:
        headers = [
            ("Host", self.host_header),
            ("User-Agent", USER_AGENT),
            ("Accept", accept),
            ("Connection", "close"),
        ]
        if self.authorization:
            headers.append(("Authorization", self.authorization))
        return headers


def _connect_reason(exc: OSError) -> str:
    """The OS's reason ("Connection refused") behind trio's summary error."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(sorted({getattr(e, "strerror", None) or str(e) for e in leaves(cause)}))
    return exc.strerror or str(exc)


async def _next_event(
    stream: trio.SocketStream, exchange: GetExchange, url: str, idle_timeout: float
) -> ResponseHead | bytes | Signal:
    """``exchange``'s next event, receiving from ``stream`` as it needs."""
    while (event := exchange.next_event()) is NEED_DATA:
        try:
            with trio.fail_after(idle_timeout):
                data = await stream.receive_some(_RECEIVE_SIZE)
        except trio.TooSlowError:
            raise CameraDisconnected(f"no data from {url} for {idle_timeout:g} s") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise CameraDisconnected(f"connection to {url} broke: {exc}") from exc
        exchange.receive_data(data)
    return event


class HttpResponse:
    """A response being received: its ``head``, and its body piece by piece.

    An async context manager; leaving it closes the connection.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        exchange: GetExchange,
        head: ResponseHead,
        url: str,
        idle_timeout: float,
    ) -> None:
        self._stream = stream
        self._exchange = exchange
        self.head = head
        self._url = url
        self._idle = idle_timeout

    async def receive_some(self) -> bytes:
        """The next piece of the body; ``b""`` at its end.

        Raises:
            CameraDisconnected: nothing arrived for ``idle_timeout`` seconds,
                or the connection broke or closed before the end of the body.
            HttpError: the body's framing is malformed.
        """
        event = await _next_event(self._stream, self._exchange, self._url, self._idle)
        if event is END_OF_BODY:
            return b""
        assert isinstance(event, bytes | bytearray), event
        return event

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> HttpResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def open_get(
    url: str,
    *,
    accept: str = "*/*",
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
) -> HttpResponse:
    """GET ``url`` and return the response once its head has arrived.

    Any status is returned; the caller decides what it accepts.  Credentials
    in the URL (``http://user:password@host/...``) go as Basic; a 401 with a
    Digest challenge is answered once, on a new connection.  Use the result
    as an async context manager to close the connection.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
        CameraDisconnected: the connection could not be made (refused,
            unreachable, name unknown) or took more than ``connect_timeout``,
            nothing arrived for ``idle_timeout`` seconds, or the connection
            broke or closed before a response.
        HttpError: the response head is malformed or too long.
    """
    target = _Target.from_url(url)
    while True:
        exchange = GetExchange(
            target.request_target,
            target.headers(accept),
            max_header_size=max_header_size,
            name=url,
        )
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
            await stream.send_all(exchange.request_bytes)
            head = await _next_event(stream, exchange, url, idle_timeout)
        except trio.BrokenResourceError as exc:
            await stream.aclose()
            raise CameraDisconnected(f"connection to {url} broke: {exc}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        assert isinstance(head, ResponseHead), head  # h11 gives the head first
        answered = target.answer(head) if head.status == 401 else None
        if answered is None:
            return HttpResponse(stream, exchange, head, url, idle_timeout)
        # Cameras often insist on Digest: answer its challenge once, afresh.
        await stream.aclose()
        target = answered
