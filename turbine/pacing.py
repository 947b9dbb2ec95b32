"""A producer goes at the pace the broker delivers, never at a slow sink's.

A channel's ring is the only buffer between its producers and subscribers; a
subscriber that falls a ring behind loses the oldest frames and is told so
with a gap.  That is right for a *slow sink*: a subscriber whose socket stays
full (its own reading, or its network, is the limit) must never hold up the
producer.  It is wrong when the broker is the cause: a broker short of CPU
that reads puts faster than it writes deliveries runs the ring ahead of a
subscriber that waits for bytes, and evicts frames that subscriber could
have taken.

So the broker delivers first: after a read's puts are handled, before the
reader reads more from that connection, it waits while a subscriber those
puts woke has frames queued and a socket that takes bytes now
(:meth:`~turbine.router.Waker.frames_go_now`).  Meanwhile that producer's
socket fills and TCP slows it to the rate the broker delivers.  A subscriber
whose socket is full holds nobody (its frames wait in the ring, which evicts
for it); one that is gone or stopped reading holds the producer at most
until its socket has filled once.

One broker pass at a time: the writers that have frames to send run in the
same passes, so this waits exactly as long as they have work they can do.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

import trio

from .router import Waker

_CANNOT_WRITE = select.POLLERR | select.POLLHUP | select.POLLNVAL


class WriteRoom:
    """Whether one socket takes bytes now, asked of the kernel through one poll
    object, made at the first question (a poll object made and registered per
    question was two allocations and two calls more on every broker pass that
    asks)."""

    __slots__ = ("_sock", "_poll")

    def __init__(self, sock: socket.socket | trio.socket.SocketType) -> None:
        self._sock = sock
        self._poll: select.poll | None = None

    def takes_bytes(self) -> bool:
        """Writable, as the kernel's poll says (for TCP: its send buffer is at most
        about two thirds full), and not broken or closed."""
        fd = self._sock.fileno()
        if fd < 0:
            return False  # closed (its number may be another socket's by now)
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(fd, select.POLLOUT)
        events = poll.poll(0)
        return bool(events) and not events[0][1] & _CANNOT_WRITE


async def deliver_first(woke: dict[Waker, None], write_ready: Callable[[], None]) -> None:
    """Return once no subscriber in ``woke`` (whom a connection's last puts
    woke) has frames queued that its socket takes now; empties ``woke``.

    ``write_ready`` writes what readers owe the sleeping writers (the broker's
    :meth:`~turbine.server.Broker.write_ready`).  Cancellation: safe (nothing
    is read or written here but through the writers).
    """
    while woke:
        for sink in list(woke):
            if not sink.frames_go_now():
                del woke[sink]
        if woke:
            write_ready()
            await trio.lowlevel.checkpoint()
