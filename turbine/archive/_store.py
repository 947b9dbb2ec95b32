"""The tiered channel store: the memory ring as hot cache, the archive under it.

:class:`TieredStores` is a :class:`turbine.store.StoreFactory`; a broker
configured with it keeps every frame in memory (bounded, as before) and on
disk (bounded by the source's archive retention).  Synchronous reads answer
from the ring; a query that needs older frames gets ``None`` from
:meth:`TieredStore.read_now` and is answered by :meth:`TieredStore.read_later`
in the broker's store task, from the archive and the ring together.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import attrs

from .._constants import ARCHIVE_BYTES, METADATA_CHANNEL
from .._errors import RequestFailed
from ..memory import fmt_bytes
from ..ringbuffer import Ring
from ..sources import guess_content_type
from ..store import (
    AFTER,
    NEWEST,
    OLDEST,
    READ,
    TIME,
    ChannelSpec,
    ChannelStore,
    Query,
    Run,
    answer,
)
from ._archive import Archive
from ._datadir import ArchiveError
from ._ops import Declare, Hole, Producer, Put, Settings

log = logging.getLogger("turbine.archive")


@attrs.frozen
class RecoveredChannel:
    content_type: str
    next_seq: int


@attrs.frozen
class RecoveredSource:
    """What the archive knows of a source after a restart, for the hub to bring it back."""

    name: str
    settings: dict[str, Any]
    channels: dict[str, RecoveredChannel]
    #: Each producer's newest stored put number (de-duplication goes on across the restart).
    producers: dict[str, int] = attrs.Factory(dict)

    def content_types(self) -> dict[str, str]:
        return {name: c.content_type for name, c in self.channels.items()}


class TieredStores:
    """Makes a :class:`TieredStore` per channel, all in one :class:`Archive`.

    A source opened with ``archive_bytes=0`` is memory-only: its channels get
    plain rings and nothing of it reaches the disk.

    Args:
        archive: the data directory's archive (from :func:`open_archive`).
        archive_bytes: retention of a source that does not ask for its own (``--archive-bytes``).
        archive_age: and its age limit in seconds (by a segment's newest frame), if any.
        max_disk: bytes the archives of all sources may reserve together
            (``--max-disk``; ``None``: no budget beyond the disk itself).
    """

    durable = True

    def __init__(
        self,
        archive: Archive,
        archive_bytes: int = ARCHIVE_BYTES,
        archive_age: float | None = None,
        max_disk: int | None = None,
    ) -> None:
        self.archive = archive
        self.archive_bytes = archive_bytes
        self.archive_age = archive_age
        self.max_disk = max_disk
        #: source -> its settings as last kept (archived sources, and memory-only ones).
        self.settings: dict[str, dict[str, Any]] = {
            name: {"archive_bytes": archive_bytes, **log.settings}
            for name, log in archive.logs.items()
        }
        self._declared: dict[tuple[str, str], int] = {}  # (source, channel) -> next seq declared
        #: (source, channel) -> the first number queued for the archive since it opened.
        self.first_queued: dict[tuple[str, str], int] = {}
        free = shutil.disk_usage(archive.root).free
        if max_disk is not None and max_disk > free + archive.bytes:
            log.warning(
                "--max-disk %s is more than the file system of %s can hold (%s free, %s "
                "archived already): sources are refused beyond what the disk has room for",
                fmt_bytes(max_disk), archive.root, fmt_bytes(free), fmt_bytes(archive.bytes),
            )  # fmt: skip

    def recovered(self) -> list[RecoveredSource]:
        """Every source the archive holds, with its channels' content types and numbering."""
        return [
            RecoveredSource(
                name,
                dict(log.settings),
                {
                    c.name: RecoveredChannel(c.content_type, c.next_seq)
                    for c in log.channels.values()
                },
                dict(log.producers),
            )
            for name, log in self.archive.logs.items()
        ]

    @property
    def reserved(self) -> int:
        """Disk the sources' archives may take together (their ``archive_bytes``)."""
        return sum(s.get("archive_bytes", 0) for s in self.settings.values())

    def disk_room(self, source: str) -> int:
        """Bytes the file system can give archives beyond what the sources other than
        ``source`` have reserved and not yet written: the space free, plus what the
        archives hold already (``source``'s own, and the others' up to their reservation)."""
        held = self.archive.held()
        room = shutil.disk_usage(self.archive.root).free + held.get(source, 0)
        for name, settings in self.settings.items():
            if name != source:
                room -= max(0, settings.get("archive_bytes", 0) - held.get(name, 0))
        return room

    def archive_settings(
        self, source: str, archive_bytes: int | None, archive_age: float | None
    ) -> tuple[int, float | None]:
        """See :meth:`turbine.store.StoreFactory.archive_settings`.

        Raises:
            RequestFailed: as there (code ``disk``: over ``max_disk``).
        """
        known = self.settings.get(source)
        if archive_bytes is None:
            archive_bytes = known.get("archive_bytes", 0) if known else self.archive_bytes
        if archive_age is None:
            archive_age = known.get("archive_age") if known else self.archive_age
        if archive_bytes < 0 or (archive_age is not None and archive_age <= 0):
            raise RequestFailed(
                "archive_bytes must not be negative (0: memory only) and archive_age "
                f"must be positive, not {archive_bytes} and {archive_age}",
                "limits",
            )
        if known is not None and bool(known.get("archive_bytes")) != bool(archive_bytes):
            now = "has an archive" if known.get("archive_bytes") else "is memory-only"
            raise RequestFailed(
                f"source {source!r} {now}; it cannot change that while it exists "
                "(delete it first: turbine rm)",
                "limits",
            )
        mine = known.get("archive_bytes", 0) if known else 0
        budget = self.max_disk
        left = 0 if budget is None else budget - self.reserved + mine
        if budget is not None and archive_bytes > left:
            raise RequestFailed(
                f"cannot reserve {fmt_bytes(archive_bytes)} (archive_bytes) of disk for "
                f"source {source!r}: only {fmt_bytes(max(left, 0))} of the broker's "
                f"{fmt_bytes(budget)} (--max-disk) are left; ask for less, delete "
                "an archived source (turbine rm) or start the broker with a larger --max-disk",
                "disk",
            )
        if budget is not None and archive_bytes > mine:
            room = self.disk_room(source)  # the budget may be more than the disk has
            if archive_bytes > room:
                raise RequestFailed(
                    f"cannot reserve {fmt_bytes(archive_bytes)} (archive_bytes) of disk for "
                    f"source {source!r}: the file system of {self.archive.root} has room for "
                    f"only {fmt_bytes(max(room, 0))} more (free space, less what the other "
                    "sources have reserved and not yet written), though --max-disk "
                    f"{fmt_bytes(budget)} would allow it; ask for less, delete an archived "
                    "source (turbine rm) or free space on that disk",
                    "disk",
                )
        return archive_bytes, archive_age

    def keep_settings(self, source: str, settings: dict[str, Any]) -> None:
        """Archive ``source``'s settings when they change (a memory-only source's: remember them)."""
        if self.settings.get(source) == settings:
            return
        self.settings[source] = dict(settings)
        if not settings.get("archive_bytes"):
            return
        if source not in self.archive:
            self.archive.create_source(source, settings)
        self.archive.append(source, Settings(dict(settings)))  # on disk now, channels or not

    def __call__(self, spec: ChannelSpec) -> ChannelStore:
        archive = self.archive
        kept = self.settings.get(spec.source)
        if kept is not None and not kept.get("archive_bytes"):
            return Ring(spec.max_frames, spec.next_seq)  # a memory-only source
        if spec.source not in archive:  # a channel of a source no one opened (a hub's tests)
            settings: dict[str, Any] = {"archive_bytes": self.archive_bytes}
            if self.archive_age is not None:
                settings["archive_age"] = self.archive_age
            if spec.origin is not None:
                settings["mirror"] = spec.origin
            archive.create_source(spec.source, settings)
            self.settings.setdefault(spec.source, settings)
        key = (spec.source, spec.channel)
        next_seq = spec.next_seq
        log = archive.logs.get(spec.source)
        known = log.channels.get(spec.channel) if log is not None else None
        if known is not None:
            next_seq = max(next_seq, known.next_seq)  # a restarted broker continues the numbers
        if key in self._declared:
            next_seq = max(next_seq, self._declared[key])
        ctype = spec.content_type or (known.content_type if known else None)
        if known is None or key not in self._declared or known.content_type != ctype:
            ctype = ctype or guess_content_type(spec.channel)
            archive.append(spec.source, Declare(spec.channel, ctype, next_seq))
            self._declared[key] = next_seq
        ring = Ring(spec.max_frames, next_seq)
        meta = log.newest_metadata if log is not None and spec.channel == METADATA_CHANNEL else None
        if meta is not None and meta.first_seq + len(meta.ts) == next_seq:
            # a source back from the archive shows its metadata at once, as before the restart
            ring = Ring(spec.max_frames, meta.first_seq)
            ring.append_many(meta.ts, meta.data, meta.writer, 0, meta.sizes)
        return TieredStore(ring, self, spec.source, spec.channel)

    def behind(self, sources: Iterable[str]) -> bool:
        """See :meth:`turbine.store.StoreFactory.behind` (:meth:`Archive.behind`)."""
        return self.archive.behind(sources)

    async def caught_up(self, sources: Iterable[str]) -> None:
        await self.archive.caught_up(sources)

    def statistics(self) -> dict[str, Any]:
        """The archive's figures (:meth:`Archive.statistics`), the disk budget and the
        file system's free space."""
        return {
            **self.archive.statistics(),
            "reserved": self.reserved,
            "limit": self.max_disk,
            "free": shutil.disk_usage(self.archive.root).free,
        }

    def producer_stored(self, source: str, producer: str, pseq: int) -> None:
        """Archive that ``producer``'s put ``pseq`` of ``source`` is stored: queued
        after that put's frames, so the table on disk never runs ahead of them."""
        if source in self.archive:  # (not a memory-only source)
            self.archive.append(source, Producer(producer, pseq))

    async def delete(self, source: str) -> int:
        """Delete ``source``'s archive for good (``turbine rm``); return the bytes freed.

        A new source of that name starts an archive afresh.
        """
        for table in (self._declared, self.first_queued):
            for key in [k for k in table if k[0] == source]:
                del table[key]
        self.settings.pop(source, None)
        return await self.archive.delete(source)


class TieredStore:
    """One channel: a :class:`~turbine.ringbuffer.Ring` in memory, every frame also archived.

    The memory attributes (``bytes``, ``first_seq``, ``max_frames``) are the
    ring.s; :attr:`oldest_seq` is the oldest number held, on disk or in memory.
    """

    def __init__(self, ring: Ring, factory: TieredStores, source: str, channel: str) -> None:
        self.ring = ring
        self.factory = factory
        self.archive = factory.archive
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
        queued = self.factory.first_queued.get((self.source, self.channel))
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
        self.factory.first_queued.setdefault((self.source, self.channel), first)
        freed = ring.append_many(ts, data, writer, arrival, sizes, seq)
        self.archive.append(self.source, Put(self.channel, first, list(ts), sizes, data, writer))
        return freed

    def evict(self, count: int = 1) -> int:
        return self.ring.evict(count)

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
