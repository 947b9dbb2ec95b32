"""The receive half of a :class:`~turbine.protocol.Connection`, sans I/O: the
bytes received and not yet made messages of, and the budget that bounds what
the broker's connections hold of partial large messages together.

Reads go into :meth:`ReceiveBuffer.get_buffer` views (``recv_into``/``readv``)
and are reported with :meth:`ReceiveBuffer.buffer_updated`; the connection
makes messages of what arrived.  A large message's payload is kept in the
buffer it arrived in (the broker's) or received straight into an object of its
own (a client's), never copied out of a larger buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._constants import FIRST_RECEIVE_BYTES, RECEIVE_BYTES, VECTORED_MIN_BYTES
from ._memory import blank_bytes, grow, grow_with_room

if TYPE_CHECKING:
    from .groups import PayloadCutter

#: Every message's first bytes: ``u32 header_length | u32 payload_length``, big-endian
#: (the framing of :mod:`turbine.protocol`).
PREFIX = struct.Struct(">II")


class ReceiveBudget:
    """Bytes the receive buffers of all connections may hold beyond one normal
    read each: partial large messages cannot, together, take more than ``limit``.

    ``on_give`` is called when bytes come back (the broker wakes readers
    waiting for room).
    """

    def __init__(self, limit: int, on_give: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.held = 0
        self._on_give = on_give

    def take(self, n: int) -> int:
        """Take up to ``n`` bytes; return how many were granted (0 when none are left)."""
        granted = max(min(n, self.limit - self.held), 0)
        self.held += granted
        return granted

    def give(self, n: int) -> None:
        self.held -= n
        self._on_give()


class ReceiveBuffer:
    """The bytes a :class:`Connection` received and has not made messages of yet.

    The buffer grows with what has arrived, never with what the peer
    declares; growth beyond one normal read is taken from the ``budget``
    shared by the connections of a broker; a large message's payload is
    handed over by :meth:`Connection.next_event` uncopied.  A client
    (``sized_by_prefix``: its peer is the broker) instead receives a large
    message's payload, once its header has arrived and been checked, straight
    into a ``bytes`` object of its own (:meth:`_receive_payload`: a frame that
    is the whole payload is then that object, uncopied), or cuts a fetch
    reply's frames as they arrive (:meth:`Connection.next_event`).
    """

    def __init__(self, budget: ReceiveBudget | None, *, sized_by_prefix: bool = False) -> None:
        self._buffer = bytearray()  # received bytes: unread from _start to _end, room after
        self._start = 0
        self._end = 0
        self._need = PREFIX.size
        self._eof = False
        #: Shared by all connections: how much their buffers may grow beyond one normal read.
        self.budget = budget
        self._charged = 0  # bytes of the budget this connection's buffer holds
        self._read_size = FIRST_RECEIVE_BYTES  # grows to RECEIVE_BYTES as reads fill it
        self._offered = 0
        self._sized_by_prefix = sized_by_prefix
        #: Cuts the fetch reply being received as it arrives (a client's Connection):
        #: the buffer then holds its payload's next bytes, ``_need`` of them to come.
        self._cutter: PayloadCutter | None = None
        #: The large message's payload being received into an object of its own (a
        #: client's): the object, a writable view of it, and how much of it arrived.
        self._payload: bytes | bytearray | None = None
        self._room: memoryview | None = None
        self._filled = 0
        #: The size of the last large message handed over in its buffer: the next
        #: buffer is made with room for one like it (a stream's puts are alike).
        self._last_large = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed."""
        if not data:
            self.buffer_updated(0)
            return
        with memoryview(data) as rest:
            while rest:
                with self.get_buffer(len(rest)) as view:
                    n = min(len(view), len(rest))
                    view[:n] = rest[:n]
                self.buffer_updated(n)
                rest = rest[n:]

    @property
    def receive_size(self) -> int:
        """How many bytes to read next: the rest of a large message (at most as
        much again as has arrived, unless sized by its prefix), never past its
        end, so that it ends its buffer and its payload is handed over uncopied;
        else a normal read."""
        if rest := self.payload_rest:
            return rest
        held = self._end - self._start
        missing = self._need - held
        if self._cutter is not None:
            return max(min(missing, self._read_size), 1)
        if missing > 0 and self._need >= VECTORED_MIN_BYTES:
            if self._sized_by_prefix:
                return missing
            return min(missing, max(held, RECEIVE_BYTES))
        return self._read_size

    @property
    def payload_rest(self) -> int:
        """Bytes the payload being received into an object of its own still needs (0: none)."""
        room = self._room
        return len(room) - self._filled if room is not None else 0

    @property
    def receiving(self) -> bool:
        """Part of a message has arrived, and not the rest of it yet."""
        return self._end > self._start or self._cutter is not None or self._room is not None

    def get_buffer(self, size: int = 0) -> memoryview:
        """A writable view at the end of the receive buffer, for ``recv_into``.

        It holds at least ``size`` bytes.  While a large message arrives the
        buffer grows with what has arrived (at most doubling per step), never
        with what the peer declares (a client's: once, to the message's length
        from its prefix), and holds that message alone, so its
        payload is handed over by :meth:`next_event` uncopied.  Growth beyond
        one normal read is taken from the ``budget`` shared by all
        connections; when it has nothing left the view is empty (wait for
        room, then ask again; a ``size`` is always granted).  While a payload
        is received into an object of its own, the view is its rest (which may
        be less than ``size``).  Release the view
        (``with``) before :meth:`next_event`, and report what was written with
        :meth:`buffer_updated`.
        """
        room = self._room
        if room is not None and self._filled < len(room):
            self._offered = len(room) - self._filled
            return room[self._filled :]
        want = max(size, self.receive_size)
        buf = self._buffer
        start, end = self._start, self._end
        held = end - start
        large = self._need > held and self._need >= VECTORED_MIN_BYTES and self._cutter is None
        if start and (large or len(buf) - end < want):
            # Put the partial message at the front: a large payload then ends
            # up in a buffer of its own, handed over whole by next_event.
            buf[:held] = buf[start:end]
            self._start, self._end = start, end = 0, held
        if len(buf) - end < want:
            target = end + want
            if self.budget is not None:
                extra = max(target - RECEIVE_BYTES, 0) - self._charged
                if extra > 0:
                    self._charged += self.budget.take(extra)
                if not size:
                    target = min(target, RECEIVE_BYTES + self._charged)
            if target > len(buf) and large and self._sized_by_prefix:
                # The whole message's room at once (the partial message is at the
                # front): growing step by step zero-fills a temporary per step, and
                # a fresh process pays for every page it touches (a fetch of 1 MB
                # touched 410 pages where the buffer has 257).
                grown = bytearray()
                grow(grown, target)
                with memoryview(buf) as partial:
                    grown[:end] = partial[:end]
                self._buffer = buf = grown
            elif not buf and self._last_large > target:
                # A fresh buffer after a large put: the first read does not know the
                # next put's size, and growing to it once its prefix has arrived
                # moved the buffer (a 256 KiB memcpy a 300 KB put, 10 % of the
                # broker's CPU at 100 KB frames).  Room for a put like the last one,
                # not counted until offered (not resident until written).
                grow_with_room(buf, target, self._last_large)
            else:
                grow(buf, target)  # room the read fills: not zero-filled first
        self._offered = min(want, len(buf) - end)
        return memoryview(buf)[end : end + self._offered]

    def _dropped_buffer(self, handed_over: int = 0) -> None:
        """The receive buffer was handed over (a large message of ``handed_over``
        bytes) or replaced: give back what it held of the budget."""
        self._last_large = handed_over
        if self.budget is not None and self._charged:
            keep = max(len(self._buffer) - RECEIVE_BYTES, 0)
            if keep < self._charged:
                self.budget.give(self._charged - keep)
                self._charged = keep

    def close_budget(self) -> None:
        """Give back all of the shared budget this connection holds (it is done receiving)."""
        self._buffer = bytearray()
        self._start = self._end = 0
        self._dropped_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last :meth:`get_buffer` view; 0 means the peer closed."""
        if nbytes and self._room is not None and self._filled < len(self._room):
            self._filled += nbytes
        elif nbytes:
            self._end += nbytes
            if nbytes == self._offered and self._read_size < RECEIVE_BYTES:
                self._read_size *= 2  # reads fill what is offered: offer more
        else:
            self._eof = True

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the message being received needs (at least 1 when waiting)."""
        if self._room is not None:
            return max(len(self._room) - self._filled, 1)
        return max(self._need - (self._end - self._start), 1)

    def _receive_payload(self, p: int, nbytes: int) -> None:
        """Receive the payload of ``nbytes`` that starts at ``p`` in the buffer (its
        message's header taken) into an object of its own: what arrived of it moves
        there now, the rest is read into it (:meth:`get_buffer`)."""
        obj, room = blank_bytes(nbytes)
        arrived = self._end - p
        with memoryview(self._buffer) as view:
            room[:arrived] = view[p : self._end]
        self._payload, self._room, self._filled = obj, room, arrived
        self._start = self._end = 0  # (the buffer held nothing after it: reads stop at its end)
        # The next message's first read is a small one again: a large message that
        # follows then moves only that much here and is read straight into its own
        # object (after a normal read of 256 KiB, a mirror copied 87 % of every
        # 300 KB delivery out of the buffer).
        self._read_size = FIRST_RECEIVE_BYTES

    def _received_payload(self) -> memoryview | None:
        """The payload of :meth:`_receive_payload` once all of it arrived (None before),
        its writable view released: a view of the object, which is no longer written."""
        room = self._room
        assert room is not None and self._payload is not None
        if self._filled < len(room):
            return None
        room.release()
        payload = memoryview(self._payload)
        self._payload = self._room = None
        return payload
