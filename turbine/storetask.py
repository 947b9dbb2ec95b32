"""The store task of one broker connection: the reads that memory cannot answer.

A request handler never waits on a disk.  When a fetch needs slower storage
than memory (:class:`~turbine.fetch.PendingFetch`), or a ``flush`` must wait
for durable stores, the handler reserves the reply's place in the
connection's :class:`~turbine.outbound.OutboundQueue` and hands the work to
this task, which does it one job at a time, oldest first, and fills each
place.  Replies therefore leave in the order the requests came, whichever of
them needed the disk.  A subscriber's cursor whose next frames are not in
memory is prefetched here too (:meth:`StoreReads.prefetch`), then delivered
by the writer in cursor order.

A reply that may be large (a fetch from disk) is a *stream*
(:meth:`StoreReads.stream`): its parts are read one at a time, each sent as
it comes, and the next read only once the writer has taken the one before,
so the connection holds a few parts in memory whatever the reply's size.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._errors import RequestFailed
from .groups import fetch_reply
from .messages import Error, Frames, Message
from .outbound import Slot, Wake
from .protocol import State
from .store import READ, Query

if TYPE_CHECKING:
    from .outbound import OutboundQueue
    from .protocol import Connection
    from .router import Cursor

log = logging.getLogger("turbine.server")

#: Deferred jobs one connection may have waiting; beyond, its requests wait to be read.
MAX_PENDING_READS = 64

#: A deferred job: computes one reply and its payloads, or None (nothing to send).
Job = Callable[[], Awaitable[tuple[Message, list[Any]] | None]]
#: A deferred reply in parts: yields the messages (and payloads) of each part in turn.
Parts = Callable[[], AsyncGenerator[Sequence[tuple[Message, list[Any]]], None]]


class _Streamed:
    """A job that answers in parts (:meth:`StoreReads.stream`)."""

    __slots__ = ("parts",)

    def __init__(self, parts: Parts) -> None:
        self.parts = parts


class Replies(Protocol):
    """The narrow handle a store task needs of its connection."""

    out: OutboundQueue
    proto: Connection

    def apply(self, wake: Wake) -> None: ...

    def frames_ready(self) -> None: ...

    async def taken(self) -> None:
        """Return once the writer has next taken what is queued."""


class StoreReads:
    """Deferred reads of one connection, answered in order by one task.

    ``nursery`` (the connection's) must be set before the first :meth:`defer`;
    the task starts on first need and ends with the connection.
    """

    def __init__(self, conn: Replies) -> None:
        self._conn = conn
        self.nursery: trio.Nursery | None = None
        self._jobs: collections.deque[tuple[Job | _Streamed, int | None, Slot | None]] = (
            collections.deque()
        )
        self._wakeup = trio.Event()
        self._room = trio.Event()
        self._running = False
        #: More jobs wait than one connection may have (see :meth:`wait_room`); an
        #: attribute, not a property: the reader looks at it after every receive.
        self.crowded = False

    def defer(self, job: Job, msg_id: int | None = None) -> None:
        """Hold the reply's place now; run ``job`` in its turn (never waits).

        A job that raises :class:`RequestFailed` (or a bug) is answered with an
        error for ``msg_id``; the connection carries on.
        """
        self._start(job, msg_id, self._conn.out.reserve())

    def stream(self, parts: Parts, msg_id: int) -> None:
        """Like :meth:`defer`, for a reply in parts (never waits).

        ``parts`` is read one part at a time, each sent as it comes; the next
        is read only once the writer has taken the one before (memory holds
        about two parts however large the reply, and a client that does not
        read holds up only itself).  A :class:`RequestFailed` midway ends the
        reply with an error for ``msg_id`` after the parts already sent.
        """
        self._start(_Streamed(parts), msg_id, self._conn.out.reserve())

    def prefetch(self, cursor: Cursor, max_frames: int, max_bytes: int) -> None:
        """Read ``cursor``'s next frames from slower storage, then deliver them (never waits)."""
        cursor.loading = True
        query = Query(READ, cursor.next_seq, max_frames=max_frames, max_bytes=max_bytes)
        store = cursor.channel.store

        async def fetch() -> None:
            # On an error the cursor stays "loading": its channel stalls for this
            # subscriber (told why), rather than retrying in a loop.
            cursor.prefetched = await store.read_later(query)
            cursor.loading = False
            self._conn.frames_ready()

        self._start(fetch, None, None)

    def _start(self, job: Job | _Streamed, msg_id: int | None, slot: Slot | None) -> None:
        self._jobs.append((job, msg_id, slot))
        self.crowded = len(self._jobs) > MAX_PENDING_READS
        if not self._running:
            assert self.nursery is not None, "the connection sets its nursery first"
            self._running = True
            self.nursery.start_soon(self._run)
        self._wakeup.set()

    async def wait_room(self) -> None:
        """Wait while too many reads are waiting (backpressure on this client only)."""
        while len(self._jobs) > MAX_PENDING_READS:
            self._room = trio.Event()
            await self._room.wait()

    async def _run(self) -> None:
        conn = self._conn
        while True:
            while self._jobs:
                job, msg_id, slot = self._jobs[0]
                buffers: list[Any] | None
                if isinstance(job, _Streamed):
                    assert slot is not None and msg_id is not None
                    buffers = await self._stream(job.parts, msg_id, slot)
                else:
                    buffers = await self._answer(job, msg_id)
                self._jobs.popleft()
                self.crowded = len(self._jobs) > MAX_PENDING_READS
                self._room.set()
                if slot is not None:
                    conn.apply(conn.out.fill(slot, buffers or []))
                elif buffers:  # an error, said at once; no reader will write it
                    wake = conn.out.reply(buffers)
                    conn.apply(Wake.NOW if wake is Wake.SOON else wake)
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def _stream(self, parts: Parts, msg_id: int, slot: Slot) -> list[Any]:
        """Send ``parts`` into ``slot`` as they come; return the last buffers (an error, or none)."""
        conn = self._conn
        proto = conn.proto
        try:
            async with contextlib.aclosing(parts()) as each:
                async for messages in each:
                    while slot.buffers:  # the part before is not taken yet: no more in memory
                        await conn.taken()
                    if proto.state is State.CLOSED:
                        return []  # no one left to send it to (the peer went away)
                    buffers = [b for msg, data in messages for b in proto.send(msg, data)]
                    conn.apply(conn.out.fill(slot, buffers, done=False))
        except RequestFailed as exc:
            error = Error(id=msg_id, code=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("internal error in a deferred request")
            message = f"internal broker error reading from a store: {exc!r}"
            error = Error(id=msg_id, code="internal", message=message)
        else:
            return []
        return [] if proto.state is State.CLOSED else proto.send(error, [])

    async def _answer(self, job: Job, msg_id: int | None) -> list[Any] | None:
        proto = self._conn.proto
        try:
            reply = await job()
        except RequestFailed as exc:
            reply = Error(id=msg_id, code=exc.code, message=str(exc)), []
        except Exception as exc:
            # A store's bug must cost this request, never the connection.
            log.exception("internal error in a deferred request")
            message = f"internal broker error reading from a store: {exc!r}"
            reply = Error(id=msg_id, code="internal", message=message), []
        if reply is None or proto.state is State.CLOSED:
            return None  # nothing to say, or no one left to say it to (the peer went away)
        msg, payloads = reply
        if type(msg) is Frames and msg.id is not None:  # a fetch reply, in parts if it is large
            parts = fetch_reply(msg.id, msg.groups, payloads)
            return [buf for part, data in parts for buf in proto.send(part, data)]
        return proto.send(msg, payloads)
