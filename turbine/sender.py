"""The sending half of a broker connection: glue between its
:class:`~turbine.outbound.OutboundQueue` and the socket.

:class:`Sender` is mixed into :class:`turbine.connection.ClientConnection`, as the
request half (:class:`~turbine.requests.Requests`) is: the queue decides who
sends what and when (it does no I/O); this does what its :class:`Wake` says,
writes from the reader when the writer task sleeps (the latency trick the
queue's docstring describes), and runs the writer task.
"""

from __future__ import annotations

import math
import socket
from typing import Any, Protocol

import trio

from . import messages as m
from ._constants import MAX_HEADER_BYTES, RECEIVE_BYTES, SLOW_WRITE_S
from ._errors import RequestFailed
from ._io import send_buffers, write_now
from .closed import WriteTimeout
from .delivery import Delivery
from .outbound import OutboundQueue, State, Wake
from .pacing import WriteRoom
from .protocol import PREFIX, Connection


class WriteLimits(Protocol):
    """The broker's setting a sender needs."""

    @property
    def write_timeout(self) -> float: ...


class BrokerWriting(Protocol):
    """What the sending half needs of the broker."""

    #: Connections whose reader writes before it next waits (see :meth:`Sender.wake_soon`).
    ready: dict[Sender, None]
    #: Slow writes of every connection.
    slow_events: int

    @property
    def config(self) -> WriteLimits: ...

    def write_ready(self) -> None: ...


class Sender:
    """The sending half of one broker connection (mixed into the connection)."""

    broker: BrokerWriting
    stream: trio.SocketStream
    sock: Any
    #: Whether the reader may write to the socket itself (not through TLS).
    direct: bool
    proto: Connection
    out: OutboundQueue
    #: Whether the socket takes bytes now (turbine/pacing.py).
    room: WriteRoom
    delivery: Delivery
    #: Set when the last words are written.
    finished: trio.Event
    bytes_out: int
    slow_events: int
    _wakeup: trio.Event  # set to wake the writer task
    _drained: trio.Event  # set when the writer took the queued replies
    _sleep: trio.CancelScope | None  # the writer's, while it sleeps until a time

    def apply(self, wake: Wake) -> None:
        if wake is Wake.SOON and not self.direct:
            wake = Wake.NOW  # TLS: only the writer task writes (one sender per SSLStream)
        if wake is Wake.SOON:
            self.broker.ready[self] = None  # written by the reader before it next waits
        elif wake is Wake.NOW:
            self._wakeup.set()

    def _wake_writer_at(self, when: float) -> None:
        """A rate-limited monitor's frame may go at ``when``: the writer pulls then at the latest."""
        if self._sleep is None:
            self._wakeup.set()  # it sleeps without a deadline (or is awake): it sleeps again with one
        elif when < self._sleep.deadline:
            self._sleep.deadline = when

    def frames_ready(self) -> None:
        """Frames are pending, and no reader will write them: wake the writer."""
        self.apply(self.out.frames_pending())
        self.broker.write_ready()

    def wake_soon(self) -> None:
        """Frames may be pending for this connection (never waits).

        When the writer sleeps, the reader that calls this writes them before
        it next waits (:meth:`Broker.write_ready`), saving the writer task a
        trip through the scheduler on the latency path.
        """
        if self.out.frames_pending() is Wake.SOON:
            if self.direct:
                self.broker.ready[self] = None
            else:
                self._wakeup.set()

    def frames_go_now(self) -> bool:
        """Whether subscribed frames wait for this connection and its socket takes
        bytes now: the broker, not the subscriber, is behind (turbine/pacing.py)."""
        return self.out.frames_waiting and self.room.takes_bytes()

    def write_now(self) -> None:
        """Write what is ready without waiting, if the writer sleeps; the
        writer task takes over whatever the socket does not take at once."""
        out = self.out
        buffers = out.take(self.delivery.pull, direct=True)
        if buffers is None:
            if out.state is State.WRITING:
                self._wakeup.set()  # a remainder is there: the writer sends it first
            return
        self._drained.set()
        rest: list[Any] = []
        if buffers:
            try:
                rest, sent = write_now(self.sock.fileno(), buffers)
            except OSError:
                rest, sent = buffers, 0  # let the writer meet the error and close this connection
            self.bytes_out += sent
        if out.left(rest) is Wake.NOW:
            self._wakeup.set()

    async def taken(self) -> None:
        """Return once the writer has next taken the queued replies (the reader, and a
        store task streaming a reply, wait for room so; cancellation: safe)."""
        if self._drained.is_set():
            self._drained = trio.Event()
        await self._drained.wait()

    def queue(self, msg: m.Message, payloads: list[Any] | tuple[()] = ()) -> None:
        """Queue one reply.

        Raises:
            RequestFailed: it would need a header over the limit of one message
                (a ``list`` or ``status`` result too large); nothing is queued.
        """
        buffers = self.proto.send(msg, payloads)
        header = len(buffers[0]) - PREFIX.size
        if header > MAX_HEADER_BYTES:
            raise RequestFailed(
                f"the reply would need a header of {header} bytes, over the limit of "
                f"{MAX_HEADER_BYTES} for one message; ask for less (a narrower pattern)",
                "too_large",
            )
        self.queue_encoded(buffers)

    def queue_encoded(self, buffers: list[Any]) -> None:
        """Queue one reply, encoded already (checked by whoever made it)."""
        self.apply(self.out.reply(buffers))

    async def drain(self, seconds: float) -> None:
        """After the last words: end our direction (the client reads them, then
        the end of the stream), and read and drop what the client still sends
        until it closes or ``seconds`` pass.  Closing a socket with unread
        input resets the connection, which can destroy the last words before
        the client reads them (a client still writing a refused payload)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            with trio.move_on_after(seconds):
                while await self.sock.recv(RECEIVE_BYTES):
                    pass
        except OSError:
            pass  # the client is gone: nothing left to protect

    def last_words(self, buffers: list[Any]) -> None:
        """Send ``buffers`` after what is queued, then stop writing (sets :attr:`finished`)."""
        self.apply(self.out.last_words(buffers))

    async def writer(self) -> None:
        """Send until the last words are out.

        Raises:
            WriteTimeout: a write took longer than ``write_timeout``.
        """
        timeout = self.broker.config.write_timeout
        out = self.out
        while True:
            if out.sleep():
                self._wakeup = trio.Event()
                if self.delivery.wake_at == math.inf:
                    await self._wakeup.wait()
                else:  # a rate-limited monitor's frame waits for its time
                    with trio.CancelScope(deadline=self.delivery.wake_at) as self._sleep:
                        await self._wakeup.wait()
                    self._sleep = None
            buffers = out.take(self.delivery.pull)
            self._drained.set()
            if buffers:
                began = trio.current_time()
                with trio.move_on_after(timeout) as scope:
                    self.bytes_out += await send_buffers(self.sock, buffers)
                if scope.cancelled_caught or trio.current_time() - began >= SLOW_WRITE_S:
                    # A slow consumer: counted while it is connected, in the
                    # broker's totals and, once closed, in its closed record.
                    self.slow_events += 1
                    self.broker.slow_events += 1
                if scope.cancelled_caught:
                    raise WriteTimeout(
                        f"write blocked for {timeout:g} s: the client is not reading"
                    )
            if out.state is State.CLOSED:
                self.finished.set()
                return
