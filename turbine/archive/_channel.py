"""One channel of the tiered store: the memory ring as hot cache, its archive under it.

Synchronous reads answer from the ring; a query that needs older frames gets
``None`` from :meth:`TieredStore.read_now` and is answered by
:meth:`TieredStore.read_later` (or in parts, :meth:`TieredStore.read_parts`)
in the broker's store task, from the archive and the ring together (its
:class:`~turbine.archive._history.ChannelHistory`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from .._errors import RequestFailed
from ..ringbuffer import Ring
from ..store import AFTER, NEWEST, TIME, Query, Run, answer
from ._archive import Archive
from ._backlog import InMemory
from ._datadir import ArchiveError
from ._history import ChannelHistory
from ._ops import Hole, Put, Summary


class TieredStore:
    """One channel: a :class:`~turbine.ringbuffer.Ring` in memory, every frame also archived.

    The memory attributes (``bytes``, ``first_seq``, ``max_frames``) are the
    ring's; :attr:`oldest_seq` is the oldest number held, on disk or in memory.
    """

    def __init__(
        self,
        ring: Ring,
        archive: Archive,
        first_queued: dict[tuple[str, str], int],
        source: str,
        channel: str,
        in_memory: InMemory = lambda _source, _channel: 0,
    ) -> None:
        self.ring = ring
        self.archive = archive
        #: (source, channel) -> the first number queued for the archive since it opened
        #: (the factory's table, shared by its stores).
        self.first_queued = first_queued
        self.source = source
        self.channel = channel
        #: Bytes of a channel's frames in its ring (the factory's :meth:`TieredStores.in_memory`).
        self.in_memory = in_memory
        #: What is older than the ring, and the reads that need the archive.
        self.history = ChannelHistory(ring, archive, first_queued, source, channel)

    # --- memory, as the ring has it

    @property
    def max_frames(self) -> int:
        return self.ring.max_frames

    @max_frames.setter
    def max_frames(self, value: int) -> None:
        self.ring.max_frames = value

    @property
    def first_seq(self) -> int:
        return self.ring.first_seq

    @first_seq.setter
    def first_seq(self, value: int) -> None:
        self.ring.first_seq = value

    @property
    def next_seq(self) -> int:
        return self.ring.next_seq

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        self.ring.next_seq = value

    @property
    def bytes(self) -> int:
        return self.ring.bytes

    @bytes.setter
    def bytes(self, value: int) -> None:
        self.ring.bytes = value

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def last_seq(self) -> int:
        return self.ring.last_seq

    @property
    def oldest_arrival(self) -> int | None:
        return self.ring.oldest_arrival

    @property
    def first_time(self) -> float | None:
        return self.ring.first_time

    @property
    def last_time(self) -> float | None:
        return self.ring.last_time

    @property
    def newest(self) -> Any:
        return self.ring.newest

    @property
    def oldest_seq(self) -> int:
        """The oldest number held, on disk or in memory (:attr:`ChannelHistory.oldest_seq`)."""
        return self.history.oldest_seq

    # --- writing

    def append_many(
        self,
        ts: Sequence[float],
        data: Sequence[Any],
        writer: str,
        arrival: int,
        sizes: list[int] | None = None,
        seq: int | None = None,
    ) -> int:
        """Append to the ring and queue the frames for the archive (never waits for the disk).

        Raises:
            RequestFailed: the archive of this source cannot take writes (code
                ``disk``); nothing is stored then.
            ValueError: ``seq`` is below ``next_seq``.
        """
        first = self._hole_to(seq)
        if sizes is None:
            sizes = list(map(len, data))
        self.first_queued.setdefault((self.source, self.channel), first)
        freed = self.ring.append_many(ts, data, writer, arrival, sizes, seq)
        self.archive.append(self.source, Put(self.channel, first, list(ts), sizes, data, writer))
        return freed

    def skip_to(self, seq: int) -> None:
        """The ring's :meth:`~turbine.ringbuffer.Ring.skip_to`, the hole queued
        for the archive.

        Raises:
            RequestFailed: the archive of this source cannot take writes (code ``disk``).
            ValueError: ``seq`` is below ``next_seq``.
        """
        if self._hole_to(seq) > self.ring.next_seq:
            self.ring.skip_to(seq)

    def _hole_to(self, seq: int | None) -> int:
        """The number the next frame gets (``seq``, or the next); numbers it skips
        queued for the archive as a hole.  Raises as :meth:`append_many`."""
        try:
            self.archive.check_writable(self.source, self.in_memory)
        except ArchiveError as exc:
            raise RequestFailed(str(exc), "disk") from None
        ring = self.ring
        first = ring.next_seq if seq is None else seq
        if first < ring.next_seq:
            raise ValueError(f"frame number {first} is below the next number {ring.next_seq}")
        if first > ring.next_seq:
            self.archive.append(
                self.source, Hole(self.channel, ring.next_seq, first - ring.next_seq)
            )
        return first

    def keep_summary(self, block: tuple[Any, ...]) -> None:
        """Queue a complete block summary of this channel for the archive (after its frames)."""
        self.archive.append(self.source, Summary(self.channel, block))

    def evict(self, count: int = 1) -> int:
        return self.ring.evict(count)

    def evict_oldest(self, needed: int, before: int | None = None) -> int:
        return self.ring.evict_oldest(needed, before)

    def resize(self, max_frames: int) -> int:
        return self.ring.resize(max_frames)

    # --- synchronous reads: memory

    def read(self, seq: int, max_frames: int, max_bytes: int | None = None) -> Run | None:
        """The ring's read, or ``None`` when ``seq`` is older than the ring and the
        archive holds older frames (the store task then calls :meth:`read_later`)."""
        ring = self.ring
        if seq < ring.first_seq and self.oldest_seq < ring.first_seq:
            return None
        return ring.read(seq, max_frames, max_bytes)

    def from_seq(self, seq: int, max_frames: int) -> Run:
        return self.ring.from_seq(seq, max_frames)

    def newest_n(self, n: int) -> Run:
        return self.ring.newest_n(n)

    def oldest_n(self, n: int) -> Run:
        return self.ring.oldest_n(n)

    def time_range(self, start: float, duration: float, max_frames: int) -> Run:
        return self.ring.time_range(start, duration, max_frames)

    def read_now(self, query: Query) -> Run | None:
        """The ring's answer when the query needs nothing older than the ring holds, else ``None``."""
        ring = self.ring
        if self.oldest_seq >= ring.first_seq:
            return answer(ring, query)  # the disk holds nothing the ring does not
        kind = query.kind
        if kind == NEWEST and query.value <= len(ring):
            return answer(ring, query)
        if kind == AFTER and query.value + 1 >= ring.first_seq:
            return answer(ring, query)
        if kind == TIME and ring.first_time is not None and query.value >= ring.first_time:
            return answer(ring, query)
        return None

    async def read_later(self, query: Query) -> Run:
        """:meth:`ChannelHistory.read_later`: from the archive, then the ring."""
        return await self.history.read_later(query)

    def read_parts(self, query: Query, max_bytes: int | None) -> AsyncGenerator[Run, None]:
        """:meth:`ChannelHistory.read_parts`: :meth:`read_later`'s answer in parts."""
        return self.history.read_parts(query, max_bytes)

    async def flushed(self) -> None:
        """Return once every frame appended before is in the archive under its sync policy.

        Raises:
            RequestFailed: the archive cannot write (code ``disk``).
        """
        try:
            await self.archive.flush([self.source])
        except ArchiveError as exc:
            raise RequestFailed(str(exc), "disk") from None

    def disk(self) -> dict[str, Any] | None:
        """What the archive holds of this channel, written so far (``turbine ls``)."""
        return self.history.disk()

    def drop(self) -> int:
        """Forget the frames in memory; the archive keeps them.

        The hub drops a source's stores both for ``turbine rm`` and to make
        room in memory for another source (an offline source goes): a disk
        history must not vanish for the second reason, so deleting the
        archive is :meth:`TieredStores.delete`'s, called for ``rm`` only.
        """
        return self.ring.drop()
