"""One source's archive: a log of segments, its channel table, reads and retention.

Blocking and synchronous: the async layer (``_archive.py``) calls :meth:`SourceLog.write`
from one worker thread and reads from others; a lock keeps segment files open
while a read uses them.  The table and the records of each op are
:class:`~turbine.archive._table.LogTable`'s, the reads
:class:`~turbine.archive._reads.LogReads`'s (its bases); recovery,
writing, segment rolls and retention are here.  Every channel's sequence numbers only grow; a read
reports numbers it cannot serve (evicted, an explicit hole, damaged bytes) as
``missed`` before the frames that follow, as a memory ring does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from typing import Any

from .._constants import FLOAT64_CONTENT_TYPE, METADATA_CHANNEL
from ..summary import Summaries
from . import _format as fmt
from ._append import DirectAppender
from ._ops import Op, Put, Summary, WriteFailed
from ._reads import LogReads
from ._scan import Damage, Scan, has_record, scan
from ._segment import Segment, index_name, segment_name, summary_name
from ._summaries import LogSummaries
from ._table import ChannelState

#: Segment size unless the retention asks for smaller ones.
SEGMENT_BYTES = 64 * 2**20
#: Smallest segment, whatever the retention.
MIN_SEGMENT_BYTES = 1 * 2**20


def segment_bytes_for(archive_bytes: int) -> int:
    """Segments an eighth of the retention, within 1-64 MiB: eviction frees ~1/8 at a time."""
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, archive_bytes // 8))


def _unborn(directory: str, number: int) -> bool:
    """Whether segment ``number`` was being created when the process died (then it is removed).

    Creating a segment syncs its header and first records before any write
    goes to it, so one without a single intact record holds nothing
    acknowledged; one with any intact record is kept, whatever else is damaged.
    """
    path = os.path.join(directory, segment_name(number))
    with open(path, "rb") as f:
        if has_record(f.fileno(), os.fstat(f.fileno()).st_size):
            return False
    os.unlink(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, summary_name(number)))
    return True


class SourceLog(LogReads):
    """The segments of one source's archive, oldest first; the last is open for appends."""

    def __init__(self, directory: str, segments: list[Segment], settings: dict[str, Any]) -> None:
        self.directory = directory
        self.segments = segments
        self.settings = settings
        self.channels: dict[str, ChannelState] = {}
        self._by_id: dict[int, ChannelState] = {}
        self.damage: list[Damage] = []
        self.torn_bytes = 0  # bytes of torn tail dropped at recovery
        self._lock = threading.RLock()
        self._open: collections.OrderedDict[int, Segment] = collections.OrderedDict()
        self._newest_meta: Put | None = None
        #: Each producer's newest stored put number, least recent first (the hub's
        #: table, kept so that de-duplication survives a restart).
        self.producers: dict[str, int] = {}
        self.sums = LogSummaries()
        #: The float64 channels' block summaries found at recovery (see :meth:`take_summaries`).
        self._recovered: dict[str, Summaries] = {}

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def segment_bytes(self) -> int:
        return segment_bytes_for(int(self.settings.get("archive_bytes") or SEGMENT_BYTES * 8))

    # --- creating and recovering

    @classmethod
    def create(cls, directory: str, settings: dict[str, Any], now: float) -> SourceLog:
        """A new, empty archive in ``directory`` (created).

        Raises:
            OSError: the directory or the first segment could not be written.
        """
        os.makedirs(directory, exist_ok=True)  # left empty by a creation cut short, perhaps
        if any(n.endswith(".seg") for n in os.listdir(directory)):
            raise FileExistsError(f"an archive exists in {directory} already")
        log = cls(directory, [], dict(settings))
        log.segments.append(Segment.create(directory, 1, now, log._preamble()))
        return log

    @classmethod
    def open(cls, directory: str) -> SourceLog:
        """Recover the archive in ``directory``: sealed segments from their index
        files, the open one scanned (checksums verified) and its torn tail cut off.

        Raises:
            FileNotFoundError: no segment in ``directory``.
            FormatError: the newest segment's header is unreadable or of a newer version.
        """
        numbers = sorted(int(n[:-4]) for n in os.listdir(directory) if n.endswith(".seg"))
        if not numbers:
            raise FileNotFoundError(f"no archive segments in {directory}")
        if _unborn(directory, numbers[-1]):
            numbers.pop()  # the previous segment is the open one again: its index goes
            if not numbers:
                raise FileNotFoundError(f"no archive segments in {directory}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, index_name(numbers[-1])))
        segments: list[Segment] = []
        damage: list[Damage] = []
        for number in numbers[:-1]:
            seg, found = Segment.open_sealed(directory, number)
            if found is not None:
                damage += found.damage
            actual = os.fstat(seg.fd).st_size
            if actual < seg.size:
                damage.append(Damage(number, actual, seg.size - actual, "truncated"))
            seg.close()  # opened again when read: a large archive would hold too many files
            segments.append(seg)
        last = numbers[-1]
        fd = os.open(os.path.join(directory, f"{last:016d}.seg"), os.O_RDWR)
        head = os.pread(fd, fmt.SEGMENT_HEADER.size, 0)
        try:
            fmt.decode_segment_header(head)
        except fmt.FormatError:
            os.close(fd)
            raise
        size = os.fstat(fd).st_size
        found = scan(fd, last, size)
        if found.torn:
            os.ftruncate(fd, found.end)
            os.fdatasync(fd)
        active = Segment(directory, last, fd, found.end)
        active.load(found.entries)
        active.direct = DirectAppender.open(active.path, active.size, fd)
        segments.append(active)
        log = cls(directory, segments, found.settings or {})
        log.damage = damage + found.damage
        log.torn_bytes = found.torn
        log.producers = found.producers
        log._recover_channels(found)
        log._recovered = log.sums.recover(log.segments, log.channels.values(), log.read)
        return log

    def take_summaries(self) -> dict[str, Summaries]:
        """The block summaries of each float64 channel recovered (once: the hub keeps them)."""
        found, self._recovered = self._recovered, {}
        return found

    def _recover_channels(self, found: Scan) -> None:
        for rec in found.channels.values():
            st = ChannelState(rec.channel, rec.name, rec.content_type, rec.next_seq)
            self.channels[rec.name] = st
            self._by_id[rec.channel] = st
        for e in found.entries:
            if e.channel in self._by_id:
                owner = self._by_id[e.channel]
                owner.next_seq = max(owner.next_seq, e.end_seq)
        meta = self.channels.get(METADATA_CHANNEL)
        if meta is not None:
            runs = self.read(METADATA_CHANNEL, meta.next_seq - 1, 1)
            if runs and runs[-1].ts:
                r = runs[-1]
                self._newest_meta = Put(
                    METADATA_CHANNEL,
                    r.first_seq,
                    r.ts,
                    r.sizes,
                    [bytes(d) for d in r.data],
                    r.writers[0][1],
                )

    # --- writing

    def write(self, ops: list[Op], now: float) -> None:
        """Append ``ops`` (not yet synced: see :meth:`sync`); roll segments as they fill.

        Ops are written in groups, each all or nothing, a segment roll between
        groups: on failure, the groups before are written and the rest is not.

        Raises:
            WriteFailed: a write failed (disk full, I/O error); ``written`` ops
                were written, the caller retries from there.
            ValueError: a put's sequence numbers go backwards.
        """
        done = 0
        while done < len(ops):
            saved = self._state()
            try:
                if self.active.sealed or self.active.size >= self.segment_bytes:
                    self._roll(now)
                active = self.active
                records, end = self._group(ops, done, active.size, self.segment_bytes - active.size)
                active.append(records)
                self.sums.write(
                    self.active,
                    [
                        (self._channel(op.channel).id, op.block)
                        for op in ops[done:end]
                        if isinstance(op, Summary)
                    ],
                )
            except OSError as exc:
                self._restore(saved)
                raise WriteFailed(done, exc) from exc
            except BaseException:
                self._restore(saved)
                raise
            done = end

    def _roll(self, now: float) -> None:
        with self._lock:
            if not self.active.sealed:
                floats = {
                    c.id for c in self.channels.values() if c.content_type == FLOAT64_CONTENT_TYPE
                }
                self.sums.seal(self.active, floats)
                self.active.seal()
            seg = Segment.create(self.directory, self.active.number + 1, now, self._preamble())
            self.active.unload()  # its file and entries come back when read
            self.segments.append(seg)

    def sync(self) -> None:
        """Make everything written so far durable (``fdatasync`` of the open segment)."""
        self.active.sync()

    # --- retention

    def evict(self, max_bytes: int | None, max_age: float | None, now: float) -> int:
        """Drop whole sealed segments, oldest first, beyond ``max_bytes`` or older than
        ``max_age`` seconds (by their newest frame); return the bytes freed."""
        freed = 0
        with self._lock:
            while len(self.segments) > 1:
                oldest = self.segments[0]
                too_big = max_bytes is not None and self.bytes > max_bytes
                too_old = max_age is not None and oldest.last_time < now - max_age
                if not (too_big or too_old):
                    break
                freed += oldest.size
                oldest.remove()
                del self.segments[0]
                self.damage = [d for d in self.damage if d.segment != oldest.number]
        return freed

    def close(self) -> None:
        with self._lock:
            self.sums.close()
            for seg in self.segments:
                seg.close()
