"""What one broker connection has to send, as a sans-I/O state machine.

The broker's side of a connection has two tasks: the reader applies requests
and queues replies; the writer sends.  Frames are not queued: they are pulled
from the channel stores when there is room, so a slow client only lets its
own cursors fall behind.  :class:`OutboundQueue` decides who sends what and
when; it does no I/O and never waits, so it is tested with plain sync tests.
The broker's glue (``turbine/sender.py``) does what :class:`Wake` tells it.

The latency trick: when a request (or another connection's put) gives an
*idle* writer something to send, the queue answers :attr:`Wake.SOON`: the
reader that caused it writes the bytes itself (:meth:`OutboundQueue.take`
with ``direct=True``) before it next waits for the network, saving the writer
task a trip through the scheduler.  Whatever the socket does not take at once
goes back (:meth:`OutboundQueue.left`) and the writer task takes over.

States (``OutboundQueue.state``):

============  =================================================================
``WAITING``   the writer task sleeps; nothing to send
``READY``     the writer task sleeps; something to send (a reader may write it)
``WRITING``   the writer task owns the connection's sending
``CLOSED``    the last words are written; the writer task ends
============  =================================================================

Replies keep their order.  A reply that needs a store task (a read from
disk) holds its place with a :class:`Slot`; nothing queued after an unfilled
slot is sent, and no subscribed frames either (they may belong to a
subscription whose reply waits behind the slot), until the slot is filled.
A long reply (a fetch from disk) fills its slot in parts: each part is sent
as it comes, and the slot holds the rest of the queue back until its last
part (``fill(..., done=True)``).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Any


class Wake(enum.Enum):
    """What the glue must do after a change of the queue."""

    NONE = "none"  # nothing: the writer will see it, or there is nothing to send
    SOON = "soon"  # the writer sleeps: the reader writes it before it next waits
    NOW = "now"  # wake the writer task


class State(enum.Enum):
    WAITING = "waiting"
    READY = "ready"
    WRITING = "writing"
    CLOSED = "closed"


class Slot:
    """The place of a reply that a store task is still computing.

    ``buffers`` are what was filled in and not yet taken; ``done`` once the
    last part is in.
    """

    __slots__ = ("buffers", "done")

    def __init__(self) -> None:
        self.buffers: list[Any] = []
        self.done = False


#: Pulls subscribed frames into the list it is given; returns True if more are pending.
Pull = Callable[[list[Any]], bool]


class OutboundQueue:
    """Replies, last words and "frames pending" of one connection; who sends them.

    Producers call :meth:`reply`, :meth:`reserve` / :meth:`fill`,
    :meth:`frames_pending` and :meth:`last_words`; each returns a
    :class:`Wake`.  The sender calls :meth:`take` (the writer task, or a reader
    with ``direct=True``), then :meth:`left` after a direct write, and
    :meth:`sleep` before the writer task waits.
    """

    __slots__ = ("state", "bytes", "closing", "_replies", "_more", "_rest")

    def __init__(self) -> None:
        self.state = State.WRITING  # the writer task starts awake
        self.bytes = 0  # bytes of queued replies (the reader stops reading above a limit)
        self.closing = False  # last words queued: no more frames
        self._replies: collections.deque[list[Any] | Slot] = collections.deque()
        self._more = False  # subscribed frames may be pending
        self._rest: list[Any] = []  # what a direct write left, to be written first

    # --- producers

    def reply(self, buffers: list[Any]) -> Wake:
        """Queue one encoded reply after those queued before."""
        self._replies.append(buffers)
        self.bytes += sum(map(len, buffers))
        return self._ready()

    def reserve(self) -> Slot:
        """Hold the place of a reply that is not computed yet (see :meth:`fill`)."""
        slot = Slot()
        self._replies.append(slot)
        return slot

    def fill(self, slot: Slot, buffers: list[Any], *, done: bool = True) -> Wake:
        """Give a reserved reply its bytes, or (``done=False``) the next part of
        them: a part goes as soon as the slot is at the head; what waited behind
        the slot may go after its last part."""
        slot.buffers += buffers
        slot.done = done
        self.bytes += sum(map(len, buffers))
        if self._replies and self._replies[0] is slot:
            return self._wake()
        return Wake.NONE

    def frames_pending(self) -> Wake:
        """Subscribed frames may be waiting in the stores (called after every put)."""
        self._more = True
        state = self.state  # _ready(), inline: this is the put path
        if state is State.WAITING:
            self.state = State.READY
            return Wake.SOON
        return Wake.SOON if state is State.READY else Wake.NONE

    def last_words(self, buffers: list[Any]) -> Wake:
        """Send ``buffers`` after what is queued, then nothing more (state ``CLOSED``)."""
        self.closing = True
        self._replies.append(buffers)
        return self._wake()

    def clear(self) -> None:
        """Drop everything queued (the connection is closed: nothing more is
        sent).  A closed connection waits for the cycle collector; what it
        had queued (a slow consumer's, up to the reader's limit) need not."""
        self._replies.clear()
        self._rest = []
        self.bytes = 0
        self.closing = True
        self.state = State.CLOSED

    def _ready(self) -> Wake:
        if self.state is State.WAITING:
            self.state = State.READY
            return Wake.SOON
        return Wake.SOON if self.state is State.READY else Wake.NONE

    def _wake(self) -> Wake:
        if self.state in (State.WAITING, State.READY):
            self.state = State.WRITING
            return Wake.NOW
        return Wake.NONE

    # --- the sender

    @property
    def pending(self) -> bool:
        """Something is there to send now (or frames may be)."""
        if self._rest:
            return True
        if self._replies:
            return not _unfilled(self._replies[0])  # an unfilled slot holds everything back
        return self._more

    @property
    def frames_waiting(self) -> bool:
        """Subscribed frames (or the rest of a write) wait to be sent, and nothing
        holds them back (no unfilled slot, no last words)."""
        return (self._more or bool(self._rest)) and not self.closing and self.pending

    def sleep(self) -> bool:
        """The writer task is about to wait: True if it should (nothing to send)."""
        if self.state is State.CLOSED:
            return False
        if self.pending:
            self.state = State.WRITING
            return False
        self.state = State.WAITING
        return True

    def take(self, pull: Pull, *, direct: bool = False) -> list[Any] | None:
        """The buffers to send now: a remainder, replies in order, then frames.

        ``direct``: a reader asks, to write them itself without waiting; it
        gets ``None`` unless the writer sleeps with work ready and nothing left
        over (then the reader must wake the writer if :attr:`state` says
        ``WRITING``).  The writer task always gets a list, maybe empty.
        """
        if direct:
            if self.state is not State.READY:
                return None
            if self._rest:
                self.state = State.WRITING
                return None
        else:
            if self.state is not State.CLOSED:
                self.state = State.WRITING
        buffers, self._rest = self._rest, []
        replies = self._replies
        while replies:
            head = replies[0]
            if isinstance(head, Slot):
                buffers += head.buffers
                head.buffers = []
                if not head.done:  # the rest waits for the store task
                    self.bytes = sum(sum(map(len, r)) for r in replies if isinstance(r, list))
                    if direct:
                        self.state = State.WAITING  # fill() wakes the writer
                    return buffers
                replies.popleft()
                continue
            replies.popleft()
            buffers += head
        self.bytes = 0
        if self.closing:
            self.state = State.CLOSED
            return buffers
        self._more = False
        if pull(buffers):
            self._more = True
        if direct and not self._more:
            self.state = State.WAITING
        return buffers

    def left(self, rest: list[Any]) -> Wake:
        """After a direct write: ``rest`` is what the socket did not take."""
        self._rest = rest
        if rest or ((self._more or self._replies) and self.pending):
            if self.state is not State.CLOSED:
                self.state = State.WRITING
            return Wake.NOW
        return Wake.NONE


def _unfilled(item: list[Any] | Slot) -> bool:
    """A slot with nothing to send yet (no part waiting, and not the end)."""
    return isinstance(item, Slot) and not item.buffers and not item.done
