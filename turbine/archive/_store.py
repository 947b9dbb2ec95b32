"""The tiered channel stores: the memory ring as hot cache, the archive under it.

:class:`TieredStores` is a :class:`turbine.store.StoreFactory`; a broker
configured with it keeps every frame in memory (bounded, as before) and on
disk (bounded by the source's archive retention), one
:class:`~turbine.archive._channel.TieredStore` per channel; it also keeps
the broker's disk budget (``--max-disk``) and the sources' settings.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from typing import Any

import attrs

from .._constants import ARCHIVE_BYTES, FRAME_OVERHEAD_BYTES, METADATA_CHANNEL
from .._errors import RequestFailed
from .._format import fmt_bytes, guess_content_type
from ..ringbuffer import Ring
from ..store import ChannelSpec, ChannelStore
from ..summary import Summaries
from ._archive import Archive
from ._channel import TieredStore
from ._ops import Declare, Producer, Settings

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
    #: The block summaries of its float64 channels, by channel.
    summaries: dict[str, Summaries] = attrs.Factory(dict)

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
        #: source -> channel -> its store (for what the rings hold: :meth:`in_memory`).
        self._stores: dict[str, dict[str, TieredStore]] = {}
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
                log.take_summaries(),
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
        store = TieredStore(
            ring, self.archive, self.first_queued, spec.source, spec.channel, self.in_memory
        )
        self._stores.setdefault(spec.source, {})[spec.channel] = store
        return store

    def in_memory(self, source: str, channel: str) -> int:
        """Payload bytes of ``source/channel``'s newest frames its memory ring holds:
        the archive may fall that far behind its puts there before a producer is
        slowed (:meth:`Archive.behind`)."""
        store = self._stores.get(source, {}).get(channel)
        return store.bytes - FRAME_OVERHEAD_BYTES * len(store) if store is not None else 0

    def behind(self, sources: Iterable[str]) -> bool:
        """See :meth:`turbine.store.StoreFactory.behind` (:meth:`Archive.behind`)."""
        return self.archive.behind(sources, self.in_memory)

    async def caught_up(self, sources: Iterable[str]) -> None:
        await self.archive.caught_up(sources, self.in_memory)

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
        self._stores.pop(source, None)
        return await self.archive.delete(source)
