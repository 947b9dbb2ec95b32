"""What one channel of the tiered store holds older than its ring, and the reads
that need the archive: answered in the broker's store task, from the archive and
then the ring for what the archive has not written yet."""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from typing import Any

import attrs

from ..ringbuffer import Ring
from ..store import AFTER, NEWEST, OLDEST, READ, TIME, Query, Run
from ._archive import Archive


@attrs.define(eq=False)
class ChannelHistory:
    """One channel's frames in the archive, with the ring above it (a
    :class:`~turbine.archive._channel.TieredStore`'s, which hands it both)."""

    ring: Ring
    archive: Archive
    #: (source, channel) -> the first number queued for the archive since it opened
    #: (the factory's table, shared by its stores, which write it).
    first_queued: dict[tuple[str, str], int]
    source: str
    channel: str

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
