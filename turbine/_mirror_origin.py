"""A push mirror inside the origin broker: ``A`` reads its own rings.

``turbine mirror --inside from`` asks the origin broker ``A`` to copy its
matching sources to ``B`` itself (``turbine/_mirror_inside.py`` takes the
request).  The session is :func:`turbine.mirror.run_mirror`'s, writing
through a client of ``B``; what it reads ``A`` through is a
:class:`LocalOrigin`: each channel followed is a
:class:`~turbine.router.Subscription` in ``A``'s router whose owner is a
:class:`LocalFeed`, which a put wakes as it wakes a connection, and which
reads the frames by number from the channel's store: no socket, no
delivery encoded and decoded.  A frame of ``A`` then crosses one socket
(``A`` to ``B``) and no process of its own, and ``A`` spends on it about
what it spends delivering it to one subscriber, without the subscriber.

What the reader sees is what a subscriber of the asking connection would:
sources it may read (its user's read right), from the numbers the session
asks for; frames evicted before they were read are skipped (the next put to
``B`` starts past them: the same gap there).
"""

from __future__ import annotations

import array
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from ._client_records import SourceInfo
from ._constants import DELIVERY_BATCH_BYTES, DELIVERY_BATCH_FRAMES
from ._errors import RequestFailed
from .mirror import Feed, GroupPut
from .payloads import buffers_of, total_bytes
from .router import Cursor, Subscription
from .store import READ, Query

if TYPE_CHECKING:
    from .hub import Hub
    from .router import Readable


class LocalOrigin:
    """What a mirror session inside broker ``A`` reads ``A`` through: its hub,
    as a subscriber whose rights are ``readable``'s (the
    :class:`~turbine.mirror.Reader` calls a client of ``A`` makes over a socket)."""

    def __init__(self, hub: Hub, readable: Readable | None) -> None:
        self.hub = hub
        self.readable = readable

    async def status(self) -> dict[str, Any]:
        return {"identity": self.hub.identity}

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        return listed(self.hub, pattern, self.readable)

    @contextlib.asynccontextmanager
    async def follow(self, path: str, start: int) -> AsyncIterator[Feed]:
        """Read ``path`` (``SOURCE/CHANNEL``) from number ``start`` on while inside."""
        feed = LocalFeed(Subscription(0, None, path, start, readable=self.readable))
        feed.sub.owner = feed
        router = self.hub.router
        router.add(feed.sub, self.hub.channels("*/*"))
        try:
            yield feed
        finally:
            router.remove(feed.sub)


class LocalFeed:
    """One followed channel: the router's :class:`~turbine.router.Waker` of its
    subscription, and its reader.

    Backpressure: a producer's put that woke it waits (as for a socket
    subscriber that keeps up, ``turbine/pacing.py``) only while this feed
    waits for frames; while the session puts to ``B``, the ring is the only
    buffer, and what it evicts meanwhile is a gap on ``B``.  Memory: at most
    one batch (:data:`~turbine._constants.DELIVERY_BATCH_BYTES`) read ahead.
    """

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self._woken = trio.Event()
        self._waiting = False

    def wake_soon(self) -> None:
        self._woken.set()

    def frames_go_now(self) -> bool:
        return self._waiting and any(c.pending for c in self.sub.cursors.values())

    async def receive_puts(self) -> list[GroupPut]:
        """The frames put since the last call (waits for one), as puts to ``B``.

        Cancellation: safe; frames not returned are read again by the next call.

        Raises:
            RequestFailed: the user may no longer read the source (``access``), as
                a subscription of that user's connection ends.
        """
        readable = self.sub.readable
        while True:
            self._woken = trio.Event()  # (a put from here on wakes the wait below)
            puts: list[GroupPut] = []
            for cur in list(self.sub.cursors.values()):
                source = cur.channel.source_name
                if readable is not None and not readable(source):  # (a right revoked)
                    raise RequestFailed(
                        f"copying {source} ended: the mirror's user may no longer read it",
                        "access",
                    )
                puts += await _read(cur)
            if puts:
                return puts
            self._waiting = True
            try:
                await self._woken.wait()
            finally:
                self._waiting = False


def listed(hub: Hub, pattern: str, readable: Readable | None) -> list[SourceInfo]:
    """The sources of ``hub`` matching ``pattern`` that ``readable`` allows, as a client lists them."""
    return [SourceInfo.from_dict(d) for d in hub.list_sources(pattern, readable)]


async def _read(cur: Cursor) -> list[GroupPut]:
    """What ``cur`` has pending, one batch at most, as puts (none past a hole); advances it."""
    store = cur.channel.store
    seq = cur.next_seq
    if seq >= store.next_seq:
        return []
    run = store.read(seq, DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES)
    if run is None:  # not in memory: from the disk, in this task (a session's own)
        query = Query(READ, seq, max_frames=DELIVERY_BATCH_FRAMES, max_bytes=DELIVERY_BATCH_BYTES)
        run = await store.read_later(query)
        if cur.next_seq != seq:  # (read meanwhile: cannot happen with one reader; be safe)
            return []
    cur.next_seq = run.next_seq
    n = len(run.ts)
    if not n:
        return []
    counted = cur.channel.source
    counted.frames_out += n
    counted.bytes_out += total_bytes(run.data, run.sizes)
    ctype = cur.channel.content_type
    return [
        GroupPut(
            ctype,
            piece.first_seq,
            array.array("d", piece.ts),
            list(buffers_of(piece.data)),
            list(piece.sizes),
            [[seq_, writer] for seq_, writer in piece.writers],
        )
        for piece in run.pieces()
    ]
