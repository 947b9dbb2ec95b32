"""One channel of the tiered store: the memory ring as hot cache, its archive under it.

Synchronous reads answer from the ring; a query that needs older frames gets
``None`` from :meth:`TieredStore.read_now` and is answered by
:meth:`TieredStore.read_later` (or in parts, :meth:`TieredStore.read_parts`)
in the broker's store task, from the archive and the ring together.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from typing import Any

from .._errors import RequestFailed
from ..ringbuffer import Ring
from ..store import AFTER, NEWEST, OLDEST, READ, TIME, Query, Run, answer
from ._archive import Archive
from ._datadir import ArchiveError
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
    ) -> None:
        self.ring = ring
        self.archive = archive
        #: (source, channel) -> the first number queued for the archive since it opened
        #: (the factory's table, shared by its stores).
        self.first_queued = first_queued
        self.source = source
        self.channel = channel

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
        """The oldest number the archive holds or will once its queue is written
        (the ring's first when the archive holds nothing older)."""
        first = self.ring.first_seq
        queued = self.first_queued.get((self.source, self.channel))
        if queued is not None:
            first = min(first, queued)
        log = self.archive.logs.get(self.source)
        if log is not None and self.channel in log.channels:
            first = min(first, log.first_seq(self.channel))
        return first

    # --- writing

    def append_many(
        self,
        ts: list[float],
        data: list[Any],
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
        try:
            self.archive.check_writable(self.source)
        except ArchiveError as exc:
            raise RequestFailed(str(exc), "disk") from None
        ring = self.ring
        first = ring.next_seq if seq is None else seq
        if first < ring.next_seq:
            raise ValueError(f"frame number {first} is below the next number {ring.next_seq}")
        if sizes is None:
            sizes = list(map(len, data))
        if first > ring.next_seq:
            self.archive.append(
                self.source, Hole(self.channel, ring.next_seq, first - ring.next_seq)
            )
        self.first_queued.setdefault((self.source, self.channel), first)
        freed = ring.append_many(ts, data, writer, arrival, sizes, seq)
        self.archive.append(self.source, Put(self.channel, first, list(ts), sizes, data, writer))
        return freed

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
        """Answer ``query`` from the archive, then the ring for what the archive has not yet written.

        Waits until what was queued for the disk is written (not synced), so no
        frame falls between the two.
        """
        if (
            query.kind == READ
        ):  # a subscriber's: contiguous, from the disk until it reaches the ring
            seq = int(query.value)
            await self.archive.written([self.source])
            runs = await self.archive.read(
                self.source, self.channel, seq, query.max_frames, query.max_bytes
            )
            if runs and runs[0].ts:
                return runs[0]
            return self.ring.read(seq, query.max_frames, query.max_bytes)  # none on disk from seq
        return _join([run async for run in self.read_parts(query, None)], sys.maxsize)

    async def read_parts(self, query: Query, max_bytes: int | None) -> AsyncGenerator[Run, None]:
        """:meth:`read_later`'s answer to a fetch query in runs of about ``max_bytes``
        of payload each (at least one frame), the next read from the archive only
        when asked: a reply of any size holds one run in memory.

        Frames put meanwhile are included as far as the query's count allows;
        numbers evicted meanwhile are left out (the numbers say so).
        """
        archive, ring, name, channel = self.archive, self.ring, self.source, self.channel
        kind = query.kind
        await archive.written([name])
        until = None
        if kind == TIME:
            until, limit = query.value + query.duration, query.max_frames
            runs = await archive.time_range(name, channel, query.value, until, limit, max_bytes)
        else:
            if kind == NEWEST:
                limit = int(query.value)
                start = max(ring.next_seq - limit, self.oldest_seq)
            elif kind == OLDEST:
                start, limit = self.oldest_seq, int(query.value)
            elif kind == AFTER:
                start, limit = int(query.value) + 1, query.max_frames
            else:
                raise ValueError(f"unknown query kind {kind!r}")
            runs = await archive.read(name, channel, start, limit, max_bytes)
        done, after = 0, None
        while any(r.ts for r in runs):
            run = _join(runs, limit - done)
            yield run
            done, after = done + len(run.ts), run.next_seq
            if done >= limit:
                return
            runs = await archive.read(name, channel, after, limit - done, max_bytes, until)
        if kind == TIME:  # what the archive has not written yet, from the ring
            tail = ring.time_range(query.value, query.duration, limit - done + len(ring))
        else:
            tail = ring.from_seq(start if after is None else after, limit - done)
        yield _join([tail], limit - done, after)

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
        log = self.archive.logs.get(self.source)
        info = log.channel_info(self.channel) if log and self.channel in log.channels else None
        if info is None or not info["frames"]:
            return {"frames": 0, "bytes": 0, "first_seq": None, "last_seq": None,
                    "first_time": None, "last_time": None}  # fmt: skip
        return {
            **{k: info[k] for k in ("frames", "bytes", "first_seq", "first_time", "last_time")},
            "last_seq": info["next_seq"] - 1,
        }

    def drop(self) -> int:
        """Forget the frames in memory; the archive keeps them.

        The hub drops a source's stores both for ``turbine rm`` and to make
        room in memory for another source (an offline source goes): a disk
        history must not vanish for the second reason, so deleting the
        archive is :meth:`TieredStores.delete`'s, called for ``rm`` only.
        """
        return self.ring.drop()


def _join(runs: list[Run], limit: int, after: int | None = None) -> Run:
    """One run of at most ``limit`` frames of ``runs``, each frame numbered after
    the one before (and from ``after`` on, if given), whole runs sliced."""
    seqs: list[int] = []
    ts: list[float] = []
    data: list[Any] = []
    sizes: list[int] = []
    writers: list[tuple[int, str]] = []
    for run in runs:
        for piece in run.pieces():
            room = limit - len(ts)
            if room <= 0:
                break
            floor = seqs[-1] + 1 if seqs else after
            skip = max(0, floor - piece.first_seq) if floor is not None else 0
            if skip >= len(piece.ts):
                continue
            end = min(len(piece.ts), skip + room)
            first = piece.first_seq + skip
            seqs += range(first, piece.first_seq + end)
            ts += piece.ts[skip:end]
            data += piece.data[skip:end]
            sizes += piece.sizes[skip:end]
            for w_seq, name in _writers_from(piece.writers, first, piece.first_seq + end):
                if not writers or writers[-1][1] != name:
                    writers.append((w_seq, name))
    if not seqs:
        return Run(runs[-1].next_seq if runs else (after or 0), [], [], [], [])
    contiguous = seqs[-1] - seqs[0] + 1 == len(seqs)
    return Run(seqs[0], ts, data, sizes, writers, seqs=None if contiguous else seqs)


def _writers_from(writers: list[tuple[int, str]], first: int, end: int) -> list[tuple[int, str]]:
    """``writers`` of the numbers ``first .. end - 1``, the first starting at ``first``."""
    before = [w for w in writers if w[0] <= first]
    out = [(first, before[-1][1] if before else (writers[0][1] if writers else ""))]
    return out + [w for w in writers if first < w[0] < end]
