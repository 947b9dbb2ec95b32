"""Reading one source's archive: frames by number and by time, verified, gaps reported.

:class:`LogReads` is a base of :class:`~turbine.archive._log.SourceLog`: the
reads run in worker threads while one other thread writes; they take the
log's lock only to look at its segments and per record read, so a long read
never stalls the writes, and they keep at most :data:`OPEN_SEALED` sealed
segments open.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, cast

import attrs

from ..store import Run
from . import _format as fmt
from ._scan import Damage
from ._segment import Segment
from ._table import LogTable

#: Sealed segments of one source kept open, entries loaded, for reads (the least recently
#: read are closed and their entries dropped).
OPEN_SEALED = 8


class LogReads(LogTable):
    """The reads of a :class:`~turbine.archive._log.SourceLog` (its base): of its
    segments, through its channel table."""

    segments: list[Segment]
    damage: list[Damage]
    _lock: threading.RLock
    _open: collections.OrderedDict[int, Segment]

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
            if seg is not self.segments[-1]:  # (sealed)
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


def _add(runs: list[Run], missed: int, seq: int, rec: fmt.FramesRecord, a: int, b: int) -> None:
    if runs and not missed and runs[-1].first_seq + len(runs[-1].ts) == seq:
        run = runs[-1]
        run.ts.extend(rec.ts[a:b])
        cast(list[Any], run.data).extend(rec.data[a:b])  # (a run of records: a list)
        run.sizes.extend(rec.sizes[a:b])
        if run.writers[-1][1] != rec.writer:
            run.writers.append((seq, rec.writer))
        return
    runs.append(Run(seq, rec.ts[a:b], rec.data[a:b], rec.sizes[a:b], [(seq, rec.writer)], missed))
