"""An async NTCP client: the NTCP side of the LabVIEW-plugin protocol.

Usage::

    async with open_ntcp("127.0.0.1", 6000) as ntcp:
        await ntcp.open_session("demo")
        reply = await ntcp.propose("t1", {"MDL-00-01": {("x", "displacement"): 0.5}})
        if reply.ok:
            await ntcp.execute("t1")
        reply, measured = await ntcp.get_control_point("t2", "MDL-00-01")

Requests on one client go out one at a time; each waits for its reply.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from turbine._io import write_now

from .protocol import (
    DEFAULT_MAX_LINE_LENGTH,
    AxisValue,
    ControlPointValues,
    LineBuffer,
    NtcpError,
    Reply,
    Request,
    encode_line,
    format_request,
    parse_control_point_reply,
    parse_reply,
    reply_count,
)

__all__ = [
    "NtcpClient",
    "NtcpConnectionClosed",
    "Targets",
    "acquire",
    "open_ntcp",
    "receive_when_ready",
    "write_at_once",
]

_RECEIVE_SIZE = 65536

#: Targets of a propose: ``{control_point: {(axis, type): value}}`` or a
#: sequence of :class:`ControlPointValues`.
Targets = Mapping[str, Mapping[tuple[str, str], float]]


class NtcpConnectionClosed(NtcpError):
    """The control system closed the connection (or it is otherwise unusable)."""


def _groups(targets: Targets | tuple[ControlPointValues, ...]) -> tuple[ControlPointValues, ...]:
    if isinstance(targets, Mapping):
        return tuple(
            ControlPointValues(
                cp, tuple(AxisValue(axis, kind, float(v)) for (axis, kind), v in values.items())
            )
            for cp, values in targets.items()
        )
    return tuple(targets)


class NtcpClient:
    """One connection to a control system speaking the LabVIEW-plugin protocol.

    Build it with :func:`open_ntcp`, or around a connected stream (and
    :meth:`aclose` it). Methods never raise for a ``NOT OK`` reply: a refusal
    is an answer, returned as ``Reply(ok=False, reason=...)``.

    Requests go out one at a time, and each reads its own reply lines (the
    protocol pairs replies with requests by order alone): no reader task, so
    a reply reaches its request in the scheduler pass its bytes arrive in.
    Between requests nothing reads the connection; :attr:`closed` looks at
    it without waiting, so a connection the control system closed (or a line
    it sent unasked) is noticed when asked, and before the next request is
    sent.

    No method sets its own deadline (``execute`` lasts as long as the actuator
    moves); wrap calls in ``trio.fail_after`` or ``trio.move_on_after``. A
    request cancelled after it was sent leaves its reply unread, so the client
    closes itself and every later request raises
    :class:`NtcpConnectionClosed`; open a new client.
    """

    def __init__(
        self, stream: trio.abc.Stream, *, max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    ) -> None:
        self._stream = stream
        self._lines = LineBuffer(max_line_length)
        self._closed: str | None = None
        self._lock = trio.Lock()
        self._poll: select.poll | None = None  # asks an idle socket whether it has bytes

    @property
    def closed(self) -> str | None:
        """Why the connection is unusable, or ``None`` while it works.

        While no request waits, asks the socket (without waiting) whether the
        control system closed it or sent a line no request waited for.
        """
        if self._closed is None and not self._lock.locked():
            self._look()
        return self._closed

    def _look(self) -> None:
        """Close the client if the idle connection has something to read: its end, or a
        line no request waited for."""
        if not isinstance(self._stream, trio.SocketStream):
            return
        fd = self._stream.socket.fileno()
        if fd == -1:
            self._close("the client was closed")
            return
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
        if self._poll.poll(0):
            try:
                self._take(os.read(fd, _RECEIVE_SIZE))
                if (line := self._lines.next_line()) is not None:
                    self._close(
                        f"the control system sent a line no request waited for: {line[:40]!r}"
                    )
            except BlockingIOError:
                pass  # (readable, then not: nothing came)
            except OSError as exc:
                self._close(f"the connection to the control system broke: {exc}")
            except (NtcpConnectionClosed, NtcpError) as exc:
                self._close(self._closed or f"the control system sent a bad line: {exc}")

    def _take(self, data: bytes) -> None:
        """Buffer bytes read.

        Raises:
            NtcpConnectionClosed: ``data`` is empty: the control system closed the connection.
        """
        if not data:
            self._close("the control system closed the connection")
            raise NtcpConnectionClosed("the control system closed the connection")
        self._lines.receive_data(data)

    def _close(self, why: str) -> None:
        if self._closed is None:
            self._closed = why
            with contextlib.suppress(OSError):
                if isinstance(self._stream, trio.SocketStream):
                    self._stream.socket.close()  # (what aclose_forcefully does, without waiting)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._closed is None:
            self._closed = "the client was closed"
        await trio.aclose_forcefully(self._stream)

    async def request(self, line: str) -> str:
        """Send one request line (terminator optional) and return the reply.

        The line is sent as given, valid or not, so a caller can see how the
        peer answers a malformed request. The reply comes back without its
        terminator; a get-control-point naming several control points gets
        one line per point (:func:`~components.ntcp.protocol.reply_count`),
        returned joined by ``\\n``.

        Raises:
            NtcpProtocolError: ``line`` holds a line break or non-ASCII text.
            NtcpConnectionClosed: the connection ended before the reply came,
                or an earlier request was cancelled before its reply arrived.
        """
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        data = encode_line(line)
        await acquire(self._lock)
        try:
            if self._closed is None:
                self._look()  # (the lock is held: look here)
            if self._closed is not None:
                raise NtcpConnectionClosed(
                    f"NTCP connection unusable: {self._closed} (sending {line[:40]!r})"
                )
            try:
                if rest := write_at_once(self._stream, data):
                    await self._stream.send_all(rest)
                replies = [await self._reply_line() for _ in range(reply_count(line))]
            except trio.Cancelled:
                self._close("a request was cancelled before its reply arrived; reconnect")
                raise
            if (more := self._lines.next_line()) is not None:
                self._close(f"the control system sent a line no request waited for: {more[:40]!r}")
            return "\n".join(replies)
        except NtcpConnectionClosed as exc:
            raise NtcpConnectionClosed(
                f"NTCP connection unusable: {self._closed} (sending {line[:40]!r})"
            ) from exc.__cause__
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(self._closed or "the connection broke")
            raise NtcpConnectionClosed(
                f"NTCP connection broke while sending {line[:40]!r}: {exc}"
            ) from exc
        except NtcpError as exc:  # a bad line from the control system
            self._close(f"the control system sent a bad line: {exc}")
            raise NtcpConnectionClosed(
                f"NTCP connection unusable: {self._closed} (sending {line[:40]!r})"
            ) from None
        finally:
            self._lock.release()

    async def _reply_line(self) -> str:
        """The next reply line, read as it comes.

        Raises:
            NtcpConnectionClosed: the control system closed the connection first.
            NtcpError: it sent a bad line.
            trio.BrokenResourceError: the connection broke.
        """
        while (line := self._lines.next_line()) is None:
            self._take(await receive_when_ready(self._stream, _RECEIVE_SIZE))
        return line

    async def send(self, request: Request) -> Reply:
        """Send a request value and return the parsed reply.

        Raises:
            NtcpProtocolError: the request is incomplete or the reply malformed.
            NtcpConnectionClosed: as for :meth:`request`.
        """
        return parse_reply(await self.request(format_request(request)))

    async def open_session(self, name: str) -> Reply:
        return await self.send(Request("open-session", name=name))

    async def close_session(self, name: str) -> Reply:
        return await self.send(Request("close-session", name=name))

    async def set_parameter(self, trans_id: str, name: str, value: str | float) -> Reply:
        text = value if isinstance(value, str) else f"{float(value):.10E}"
        return await self.send(Request("set-parameter", trans_id=trans_id, name=name, value=text))

    async def get_parameter(self, trans_id: str, name: str) -> Reply:
        return await self.send(Request("get-parameter", trans_id=trans_id, name=name))

    async def propose(
        self, trans_id: str, targets: Targets | tuple[ControlPointValues, ...]
    ) -> Reply:
        """Propose targets: ``{"MDL-00-01": {("x", "displacement"): 0.5}}``."""
        groups = _groups(targets)
        for group in groups:
            for v in group.values:
                if not math.isfinite(v.value):
                    raise ValueError(
                        f"{group.control_point} {v.axis} {v.type}: {v.value} is not finite"
                    )
        return await self.send(Request("propose", trans_id=trans_id, groups=groups))

    async def execute(self, trans_id: str) -> Reply:
        """Execute a proposed transaction; returns when the control system has moved."""
        return await self.send(Request("execute", trans_id=trans_id))

    async def cancel(self, trans_id: str) -> Reply:
        return await self.send(Request("cancel", trans_id=trans_id))

    async def get_control_point(
        self, trans_id: str, control_point: str
    ) -> tuple[Reply, ControlPointValues | None]:
        """The reply and, if it succeeded, the measured values it carries."""
        reply = await self.send(
            Request("get-control-point", trans_id=trans_id, points=(control_point,))
        )
        if not reply.ok:
            return reply, None
        return reply, parse_control_point_reply(reply)[1]


async def acquire(lock: trio.Lock) -> None:
    """Acquire ``lock``; when it is free, without a pass through the scheduler (the
    request's own wait for its reply is its pass).  Cancellation: raises before
    acquiring, as ``lock.acquire`` does."""
    if lock.locked():
        await lock.acquire()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()
        lock.acquire_nowait()


def write_at_once(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Write what a socket stream takes of ``data`` right now, without waiting;
    return the rest (all of it for a stream that is not a socket) for
    ``send_all``.  A send through ``send_all`` alone makes a pass through the
    scheduler after every write: one more per request at each hop of a relay.

    Raises:
        trio.BrokenResourceError: the connection broke.
        trio.ClosedResourceError: the stream was closed.
    """
    if not isinstance(stream, trio.SocketStream):
        return data
    fd = stream.socket.fileno()
    if fd == -1:
        raise trio.ClosedResourceError("the connection was closed")
    try:
        rest, _ = write_now(fd, [data])
    except OSError as exc:
        raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
    return b"".join(rest)


async def receive_when_ready(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """The next bytes ``stream`` receives (``b""``: the peer closed it), waiting for them
    first: after a request (or a reply) went out, nothing is there yet.  A socket is
    read once it is readable, so the bytes arrive in one pass through the scheduler
    and without the read that fails first (``receive_some`` tries one, and after a
    successful read makes one more pass).

    Raises:
        trio.BrokenResourceError: the connection broke.
        trio.ClosedResourceError: the stream was closed.
    """
    if not isinstance(stream, trio.SocketStream):
        return bytes(await stream.receive_some(max_bytes))
    sock = stream.socket
    while True:
        await trio.lowlevel.wait_readable(sock)
        fd = sock.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the connection was closed")
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue  # (readable, then not)
        except OSError as exc:
            raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc


@asynccontextmanager
async def open_ntcp(
    host: str, port: int, *, max_line_length: int = DEFAULT_MAX_LINE_LENGTH
) -> AsyncIterator[NtcpClient]:
    """Connect to a control system; the connection closes when the block exits.

    Raises:
        OSError: the connection could not be made.
    """
    stream = await trio.open_tcp_stream(host, port)
    client = NtcpClient(stream, max_line_length=max_line_length)
    try:
        yield client
    finally:
        await client.aclose()
