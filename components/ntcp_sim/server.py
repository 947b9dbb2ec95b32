"""The control-system side of the LabVIEW-plugin protocol, over TCP.

:class:`SimConnection` is the sans-I/O part: one request line in, one reply
line out, plus the time at which the reply is due (execute answers when the
actuator arrives). :func:`serve_ntcp_sim` moves bytes for any number of
connections, sequential or parallel, all sharing one :class:`Rig`.
"""

from __future__ import annotations

from functools import partial

import trio

from components.ntcp.protocol import (
    DEFAULT_MAX_LINE_LENGTH,
    LineBuffer,
    NtcpProtocolError,
    Request,
    format_control_point_reply,
    format_not_ok,
    format_ok,
    parse_request,
    refuse,
)

from .rig import Rig, RigError

__all__ = ["SEND_TIMEOUT", "SimConnection", "serve_ntcp_sim"]

#: Seconds a reply may take to be accepted by the peer before the
#: connection is dropped; a peer that stops reading costs only itself.
SEND_TIMEOUT = 10.0

_RECEIVE_SIZE = 65536


class SimConnection:
    """Per-connection protocol state: at most one open session.

    A session opened on a connection is closed when the connection ends
    (:meth:`close`), so a dropped peer never leaves a session name taken.
    """

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.session: str | None = None

    def handle(self, line: str, now: float) -> tuple[list[str], float]:
        """Answer one request line.

        Returns ``(reply lines, due)``: one line, or one per control point of
        a get-control-point (:func:`~components.ntcp.protocol.reply_count`);
        they must not be sent before ``due`` (later than ``now`` only for an
        execute that moves the actuator). Malformed requests and refusals
        become ``NOT OK`` replies; nothing here raises for a peer's mistake.
        """
        try:
            request = parse_request(line)
        except NtcpProtocolError as exc:
            return [format_not_ok(exc.reason)], now
        try:
            return self._dispatch(request, now)
        except RigError as exc:
            return refuse(line, exc.reason), now

    def close(self) -> None:
        """Close this connection's session, if one is open."""
        if self.session is not None:
            session, self.session = self.session, None
            try:
                self.rig.close_session(session)
            except RigError:
                pass  # already gone; nothing to release

    def _require_session(self, verb: str) -> str:
        if self.session is None:
            raise RigError(
                f"{verb}: no session is open on this connection; send open-session first"
            )
        return self.session

    def _dispatch(self, request: Request, now: float) -> tuple[list[str], float]:
        rig = self.rig
        verb = request.verb
        if verb == "open-session":
            assert request.name is not None
            if self.session is not None:
                raise RigError(
                    f"session {self.session!r} is already open on this connection;"
                    " close-session it first"
                )
            rig.open_session(request.name)
            self.session = request.name
            return [format_ok(request.name)], now
        if verb == "close-session":
            # A connection holds at most one session, and deployed clients
            # close it under another name than they opened it with
            # ("open-session dummySession" ... "close-session dummy"): close
            # whatever this connection has open.
            if self.session is None:
                raise RigError(
                    f"close-session {request.name}: no session is open on this connection"
                )
            self.close()
            return [format_ok(request.name or "")], now

        session = self._require_session(verb)
        trans_id = request.trans_id
        assert trans_id is not None
        if verb == "set-parameter":
            assert request.name is not None and request.value is not None
            rig.set_parameter(request.name, request.value)
            return [format_ok(trans_id)], now
        if verb == "get-parameter":
            assert request.name is not None
            return [format_ok(trans_id, request.name, rig.get_parameter(request.name))], now
        if verb == "propose":
            rig.propose(session, trans_id, request.groups, now)
            return [format_ok(trans_id)], now
        if verb == "execute":
            due = rig.execute(session, trans_id, now)
            return [format_ok(trans_id)], due
        if verb == "cancel":
            rig.cancel(session, trans_id, now)
            return [format_ok(trans_id)], now
        if verb == "get-control-point":
            # One line per control point, in order, each with its own values
            # (or its own refusal: an unknown name spoils only its line).
            lines = []
            for point in request.points:
                try:
                    values = rig.read_control_point(point, now)
                except RigError as exc:
                    lines.append(format_not_ok(exc.reason))
                else:
                    lines.append(format_control_point_reply(trans_id, values))
            return lines, now
        raise AssertionError(f"parse_request returned unknown verb {verb!r}")


async def _send(stream: trio.abc.Stream, replies: list[str]) -> bool:
    """Send replies as one write; False if the peer is gone or too slow."""
    if not replies:
        return True
    data = "".join(r + "\n" for r in replies).encode("ascii", "replace")
    replies.clear()
    with trio.move_on_after(SEND_TIMEOUT):
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            return False
        return True
    return False


async def _serve_connection(rig: Rig, max_line_length: int, stream: trio.abc.Stream) -> None:
    connection = SimConnection(rig)
    lines = LineBuffer(max_line_length)
    try:
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                lines.receive_data(data)
                # Replies to every line of one read go out in one write, except
                # that those before a moving execute are flushed before waiting.
                out: list[str] = []
                while True:
                    now = trio.current_time()
                    try:
                        line = lines.next_line()
                    except NtcpProtocolError as exc:
                        out.append(format_not_ok(exc.reason))
                        continue
                    if line is None:
                        break
                    replies, due = connection.handle(line, now)
                    if due > now:
                        if not await _send(stream, out):
                            return
                        await trio.sleep_until(due)
                    out += replies
                if not await _send(stream, out):
                    return
    finally:
        connection.close()


async def serve_ntcp_sim(
    rig: Rig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the LabVIEW-plugin protocol for ``rig`` until cancelled.

    Use ``port = await nursery.start(serve_ntcp_sim, rig, host, 0)`` to learn
    the port. Each connection is answered line by line, in order; execute
    replies when the actuator has arrived. Never returns.

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            trio.serve_listeners, partial(_serve_connection, rig, max_line_length), listeners
        )
        task_status.started(bound_port)
