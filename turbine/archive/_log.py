"""One source's archive: a log of segments, its channel table, reads and retention.

Blocking and synchronous: the async layer (``_writer.py``) calls :meth:`SourceLog.write`
from one worker thread and reads from others; a lock keeps segment files open
while a read uses them.  Every channel's sequence numbers only grow; a read
reports numbers it cannot serve (evicted, an explicit hole, damaged bytes) as
``missed`` before the frames that follow, as a memory ring does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from typing import Any

import attrs

from .._constants import MAX_PRODUCERS_PER_SOURCE, METADATA_CHANNEL
from ..store import Run
from . import _format as fmt
from ._ops import Declare, Hole, Op, Producer, Put, Settings, WriteFailed
from ._segment import Damage, Scan, Segment, has_record, index_name, scan, segment_name

#: A frames record holds at most this many payload bytes (one larger frame gets its own):
#: damage to one record costs at most this much, and time-range reads start this close.
RECORD_BYTES = 1 * 2**20
#: Segment size unless the retention asks for smaller ones.
SEGMENT_BYTES = 64 * 2**20
#: Sealed segments of one source kept open, entries loaded, for reads (the least recently
#: read are closed and their entries dropped).
OPEN_SEALED = 8
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
    return True


@attrs.define
class ChannelState:
    id: int
    name: str
    content_type: str
    next_seq: int


class SourceLog:
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
        segments.append(active)
        log = cls(directory, segments, found.settings or {})
        log.damage = damage + found.damage
        log.torn_bytes = found.torn
        log.producers = found.producers
        log._recover_channels(found)
        return log

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

    def _preamble(self) -> list[tuple[list[Any], fmt.Entry | None]]:
        """Records that begin every segment: settings, channel table, newest metadata frame."""
        out: list[tuple[list[Any], fmt.Entry | None]] = [
            (fmt.encode_record([fmt.source_body(self.settings)]), None)
        ]
        for st in self.channels.values():
            body = fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)
            out.append((fmt.encode_record([body]), None))
        if self._newest_meta is not None:
            out += self._frames_records(self._newest_meta)
        if self.producers:
            out.append((fmt.encode_record([fmt.producers_body(self.producers)]), None))
        return out

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
                records: list[tuple[list[Any], fmt.Entry | None]] = []
                pending = 0
                end = done
                while end < len(ops) and self.active.size + pending < self.segment_bytes:
                    new = self._records(ops[end])
                    records += new
                    pending += sum(len(b) for bufs, _ in new for b in bufs)
                    end += 1
                self.active.append(records)
            except OSError as exc:
                self._restore(saved)
                raise WriteFailed(done, exc) from exc
            except BaseException:
                self._restore(saved)
                raise
            done = end

    def _records(self, op: Op) -> list[tuple[list[Any], fmt.Entry | None]]:
        """The records of one op; updates the channel table (see :meth:`_state`)."""
        if isinstance(op, Put):
            st = self._channel(op.channel)
            if op.first_seq < st.next_seq:
                raise ValueError(
                    f"{op.channel}: frame {op.first_seq} is older than the next number "
                    f"{st.next_seq}; sequence numbers only grow"
                )
            st.next_seq = op.first_seq + len(op.ts)
            if op.channel == METADATA_CHANNEL:
                self._newest_meta = op
            return self._frames_records(op)
        if isinstance(op, Declare):
            st = self.channels.get(op.channel) or self._declare(op)
            st.content_type = op.content_type
            st.next_seq = max(st.next_seq, op.next_seq)
            body = fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)
            return [(fmt.encode_record([body]), None)]
        if isinstance(op, Producer):
            producers = self.producers
            producers.pop(op.producer, None)
            producers[op.producer] = op.pseq
            if len(producers) > MAX_PRODUCERS_PER_SOURCE:
                del producers[next(iter(producers))]
            body = fmt.producers_body({op.producer: op.pseq})
            return [(fmt.encode_record([body]), None)]
        if isinstance(op, Hole):
            st = self._channel(op.channel)
            entry = fmt.Entry(0, 0, fmt.HOLE, st.id, op.count, op.first_seq, 0.0, 0.0)
            st.next_seq = max(st.next_seq, op.first_seq + op.count)
            return [(fmt.encode_record([fmt.hole_body(st.id, op.first_seq, op.count)]), entry)]
        assert isinstance(op, Settings)
        self.settings = dict(op.settings)
        return [(fmt.encode_record([fmt.source_body(self.settings)]), None)]

    def _state(self) -> tuple[Any, ...]:
        """What :meth:`_records` changes, to put back when a write fails."""
        kept = {n: (c.content_type, c.next_seq) for n, c in self.channels.items()}
        return kept, dict(self._by_id), self.settings, self._newest_meta, dict(self.producers)

    def _restore(self, saved: tuple[Any, ...]) -> None:
        kept, by_id, self.settings, self._newest_meta, self.producers = saved
        self._by_id = by_id
        self.channels = {c.name: c for c in by_id.values()}
        for name, (ctype, next_seq) in kept.items():
            self.channels[name].content_type, self.channels[name].next_seq = ctype, next_seq

    def _roll(self, now: float) -> None:
        with self._lock:
            if not self.active.sealed:
                self.active.seal()
            seg = Segment.create(self.directory, self.active.number + 1, now, self._preamble())
            self.active.unload()  # its file and entries come back when read
            self.segments.append(seg)

    def sync(self) -> None:
        """Make everything written so far durable (``fdatasync`` of the open segment)."""
        self.active.sync()

    def _declare(self, op: Declare) -> ChannelState:
        st = ChannelState(len(self._by_id) + 1, op.channel, op.content_type, op.next_seq)
        self.channels[op.channel] = st
        self._by_id[st.id] = st
        return st

    def _channel(self, name: str) -> ChannelState:
        st = self.channels.get(name)
        if st is None:
            raise KeyError(f"channel {name!r} was not declared to the archive")
        return st

    def _frames_records(self, op: Put) -> list[tuple[list[Any], fmt.Entry | None]]:
        st = self._channel(op.channel)
        out: list[tuple[list[Any], fmt.Entry | None]] = []
        i, n = 0, len(op.ts)
        while i < n:
            j, size = i + 1, op.sizes[i]
            while j < n and size + op.sizes[j] <= RECORD_BYTES:
                size += op.sizes[j]
                j += 1
            seq = op.first_seq + i
            ts = op.ts[i:j]
            body = fmt.frames_body(st.id, seq, ts, op.sizes[i:j], op.writer, op.data[i:j])
            out.append(
                (
                    fmt.encode_record(body),
                    fmt.Entry(0, 0, fmt.FRAMES, st.id, j - i, seq, ts[0], ts[-1]),
                )
            )
            i = j
        return out

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

    # --- reading

    @property
    def newest_metadata(self) -> Put | None:
        return self._newest_meta

    def first_seq(self, channel: str) -> int:
        """The oldest number held of ``channel``; takes no lock (the event loop calls it)."""
        st = self._channel(channel)
        for seg in list(self.segments):  # a snapshot: a roll or an eviction may run meanwhile
            span = seg.spans.get(st.id)
            if span is not None:
                return span.first_seq
        return st.next_seq

    def channel_info(self, channel: str) -> dict[str, Any]:
        st = self._channel(channel)
        spans = [s.spans[st.id] for s in list(self.segments) if st.id in s.spans]
        frames = [s for s in spans if s.frames]
        return {
            "name": st.name,
            "content_type": st.content_type,
            "next_seq": st.next_seq,
            "first_seq": spans[0].first_seq if spans else st.next_seq,
            "frames": sum(s.frames for s in spans),
            "bytes": sum(s.bytes for s in spans),
            "first_time": frames[0].first_time if frames else None,
            "last_time": frames[-1].last_time if frames else None,
        }

    def read(
        self,
        channel: str,
        seq: int,
        max_frames: int,
        max_bytes: int | None = None,
        until_time: float | None = None,
    ) -> list[Run]:
        """Frames of ``channel`` from ``seq`` on, as runs of consecutive numbers.

        Each run's ``missed`` counts the numbers before it (from ``seq``, or the
        previous run) that the archive cannot serve: evicted, a hole, or
        damaged bytes (those are also added to :attr:`damage`).  At most
        ``max_frames`` frames and ``max_bytes`` bytes (but at least one frame);
        with ``until_time``, only frames stamped before it.  Verified bytes only.
        """
        st = self._channel(channel)
        runs: list[Run] = []
        frames = size = 0
        missed = 0
        with self._lock:
            segments = [s for s in self.segments if st.id in s.spans]
        for seg in segments:
            span = seg.spans[st.id]
            if span.end_seq <= seq:
                continue
            with self._lock:  # taken per record (_read_record): a long read never stalls writes
                if seg.removed:
                    continue  # evicted meanwhile: its numbers count as missed below
                todo = seg.entries(st.id)[seg.entry_at_seq(st.id, seq) :]
            for entry in todo:
                if frames >= max_frames or (max_bytes is not None and size >= max_bytes and frames):
                    return runs
                if (
                    until_time is not None
                    and entry.kind == fmt.FRAMES
                    and entry.first_time >= until_time
                ):
                    return runs
                if entry.end_seq <= seq:
                    continue
                if entry.first_seq > seq:
                    missed += entry.first_seq - seq
                    seq = entry.first_seq
                rec = self._read_record(seg, entry) if entry.kind == fmt.FRAMES else None
                if not isinstance(rec, fmt.FramesRecord):
                    if entry.kind == fmt.FRAMES and not seg.removed:
                        self._note_damage(seg, entry)
                    missed += entry.end_seq - seq
                    seq = entry.end_seq
                    continue
                a = seq - rec.first_seq
                b = min(len(rec.ts), a + max_frames - frames)
                if until_time is not None:
                    while b > a and rec.ts[b - 1] >= until_time:
                        b -= 1
                if max_bytes is not None:
                    k, room = a, max_bytes - size
                    while k < b and (rec.sizes[k] <= room or (k == a and not frames)):
                        room -= rec.sizes[k]
                        k += 1
                    b = k
                if b <= a:
                    return runs
                _add(runs, missed, seq, rec, a, b)
                missed = 0
                frames += b - a
                size += sum(rec.sizes[a:b])
                seq = rec.first_seq + b
        if missed:
            runs.append(Run(seq, [], [], [], [], missed))
        return runs

    def time_range(
        self, channel: str, start: float, end: float, max_frames: int, max_bytes: int | None = None
    ) -> list[Run]:
        """Frames with ``start <= time < end``, found through the index (no scan from
        the oldest); at most ``max_frames`` frames and ``max_bytes`` bytes (as :meth:`read`)."""
        st = self._channel(channel)
        with self._lock:
            segments = [s for s in self.segments if st.id in s.spans and s.spans[st.id].frames]
        for seg in segments:
            if seg.spans[st.id].last_time < start:
                continue
            with self._lock:
                if seg.removed:
                    continue
                todo = seg.entries(st.id)[seg.entry_at_time(st.id, start) :]
            for entry in todo:
                if entry.kind != fmt.FRAMES or entry.last_time < start:
                    continue
                rec = self._read_record(seg, entry)
                if not isinstance(rec, fmt.FramesRecord):
                    if not seg.removed:
                        self._note_damage(seg, entry)
                    continue
                first = next(i for i, t in enumerate(rec.ts) if t >= start)
                runs = self.read(channel, rec.first_seq + first, max_frames, max_bytes, end)
                if runs:
                    runs[0] = attrs.evolve(runs[0], missed=0)
                return runs
        return []

    def _read_record(self, seg: Segment, entry: fmt.Entry) -> fmt.Record | None:
        """Read one record, keeping at most :data:`OPEN_SEALED` sealed segments open."""
        with self._lock:
            if seg.removed:
                return None
            if seg is not self.active:
                self._open.pop(seg.number, None)
                self._open[seg.number] = seg
                while len(self._open) > OPEN_SEALED:
                    _, old = self._open.popitem(last=False)
                    old.unload()  # its file and its entries: memory and files stay bounded
            return seg.read_record(entry)

    def _note_damage(self, seg: Segment, entry: fmt.Entry) -> None:
        d = Damage(seg.number, entry.offset, entry.body_len + fmt.RECORD_HEADER.size, "checksum")
        if d not in self.damage:
            self.damage.append(d)

    def close(self) -> None:
        with self._lock:
            for seg in self.segments:
                seg.close()


def _add(runs: list[Run], missed: int, seq: int, rec: fmt.FramesRecord, a: int, b: int) -> None:
    if runs and not missed and runs[-1].first_seq + len(runs[-1].ts) == seq:
        run = runs[-1]
        run.ts.extend(rec.ts[a:b])
        run.data.extend(rec.data[a:b])
        run.sizes.extend(rec.sizes[a:b])
        if run.writers[-1][1] != rec.writer:
            run.writers.append((seq, rec.writer))
        return
    runs.append(Run(seq, rec.ts[a:b], rec.data[a:b], rec.sizes[a:b], [(seq, rec.writer)], missed))
