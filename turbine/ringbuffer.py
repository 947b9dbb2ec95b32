"""The ring buffer of one channel: pure, synchronous, no I/O.

Frames are kept as parallel columns (timestamps, payloads, arrival order), so
that reading a run of frames is a few list slices rather than a loop.  Sequence
numbers inside one ring are contiguous: the frame at column index ``i`` has
sequence number ``first_seq + (i - start)``.
"""

from __future__ import annotations

import bisect
from typing import Any

import attrs

from ._constants import FRAME_OVERHEAD_BYTES


@attrs.frozen
class Run:
    """Frames ``first_seq .. first_seq + len(ts) - 1`` of one channel, as columns.

    ``writers`` lists ``(first_seq, writer)`` for each run of frames by one writer.
    ``missed`` counts frames before ``first_seq`` that the reader asked for but
    that were already evicted.
    """

    first_seq: int
    ts: list[float]
    data: list[Any]
    writers: list[tuple[int, str]]
    missed: int = 0


class Ring:
    """Frames of one channel, oldest first, bounded by a frame count.

    Byte bounds are kept by the owner (a source's rings share one byte budget):
    it calls :meth:`evict_oldest` on whichever ring holds the oldest frame.

    Args:
        max_frames: frames kept at most; appending more evicts the oldest.
        next_seq: sequence number of the first frame appended (continues a
            deleted or reopened channel's numbering; never reused).
    """

    __slots__ = (
        "max_frames",
        "_ts",
        "_data",
        "_arrival",
        "_writers",
        "_start",
        "first_seq",
        "next_seq",
        "bytes",
    )

    def __init__(self, max_frames: int, next_seq: int = 1) -> None:
        if max_frames < 1:
            raise ValueError("a ring holds at least one frame")
        self.max_frames = max_frames
        self._ts: list[float] = []
        self._data: list[Any] = []
        self._arrival: list[int] = []
        self._writers: list[tuple[int, str]] = []
        self._start = 0
        self.first_seq = next_seq  # sequence number of the oldest frame held
        self.next_seq = next_seq  # sequence number the next append gets
        self.bytes = 0  # payload + bookkeeping bytes held

    def __len__(self) -> int:
        return self.next_seq - self.first_seq

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest frame (``first_seq - 1`` when empty)."""
        return self.next_seq - 1

    @property
    def oldest_arrival(self) -> int | None:
        return self._arrival[self._start] if self.next_seq > self.first_seq else None

    @property
    def first_time(self) -> float | None:
        return self._ts[self._start] if len(self) else None

    @property
    def last_time(self) -> float | None:
        return self._ts[-1] if len(self) else None

    @property
    def newest(self) -> Any:
        """The newest payload, or ``None`` when empty."""
        return self._data[-1] if len(self) else None

    def append_many(self, ts: list[float], data: list[Any], writer: str, arrival: int) -> int:
        """Append frames; return the bytes evicted to stay within ``max_frames``.

        ``arrival`` numbers the first of them in the owner's arrival order.
        """
        n = len(ts)
        if not self._writers or self._writers[-1][1] != writer:
            self._writers.append((self.next_seq, writer))
        self._ts += ts
        self._data += data
        self._arrival += range(arrival, arrival + n)
        size = FRAME_OVERHEAD_BYTES * n
        for d in data:
            size += len(d)
        self.bytes += size
        self.next_seq += n
        over = len(self) - self.max_frames
        return self.evict(over) if over > 0 else 0

    def evict(self, count: int = 1) -> int:
        """Drop the ``count`` oldest frames; return the bytes freed."""
        count = min(count, len(self))
        start = self._start
        freed = FRAME_OVERHEAD_BYTES * count
        for d in self._data[start : start + count]:
            freed += len(d)
        for i in range(start, start + count):
            self._data[i] = None  # let the payload go now, not at compaction
        self._start = start + count
        self.first_seq += count
        self.bytes -= freed
        if self._start > 1024 and self._start * 2 > len(self._ts):
            self._compact()
        return freed

    def evict_oldest(self) -> int:
        return self.evict(1)

    def _compact(self) -> None:
        s = self._start
        del self._ts[:s], self._data[:s], self._arrival[:s]
        self._start = 0
        keep = bisect.bisect_right(self._writers, self.first_seq, key=lambda w: w[0]) - 1
        if keep > 0:
            del self._writers[:keep]

    def _index(self, seq: int) -> int:
        return self._start + (seq - self.first_seq)

    def read(self, seq: int, max_frames: int, max_bytes: int | None = None) -> Run:
        """Frames from ``seq`` on, at most ``max_frames`` (and about ``max_bytes``).

        A ``seq`` older than the oldest frame held starts at the oldest and
        reports how many were missed; one past the newest gives an empty run.
        """
        missed = 0
        if seq < self.first_seq:
            missed = self.first_seq - seq
            seq = self.first_seq
        count = min(max_frames, self.next_seq - seq)
        if count <= 0:
            return Run(max(seq, self.first_seq), [], [], [], missed)
        i = self._index(seq)
        data = self._data[i : i + count]
        if max_bytes is not None:
            total = 0
            for k, d in enumerate(data):
                total += len(d)
                if total > max_bytes and k > 0:
                    del data[k:]
                    count = k
                    break
        return Run(seq, self._ts[i : i + count], data, self._writers_for(seq, count), missed)

    def _writers_for(self, seq: int, count: int) -> list[tuple[int, str]]:
        w = self._writers
        lo = bisect.bisect_right(w, seq, key=lambda x: x[0]) - 1
        hi = bisect.bisect_left(w, seq + count, key=lambda x: x[0])
        runs = w[max(lo, 0) : hi]
        if runs and runs[0][0] < seq:
            runs[0] = (seq, runs[0][1])
        return runs

    def newest_n(self, n: int) -> Run:
        return self.read(max(self.next_seq - n, self.first_seq), n)

    def oldest_n(self, n: int) -> Run:
        return self.read(self.first_seq, n)

    def time_range(self, start: float, duration: float, max_frames: int) -> Run:
        """Frames with ``start <= timestamp < start + duration`` (timestamps assumed non-decreasing)."""
        lo = bisect.bisect_left(self._ts, start, lo=self._start)
        hi = bisect.bisect_left(self._ts, start + duration, lo=lo)
        if duration == 0:
            hi = bisect.bisect_right(self._ts, start, lo=lo)
        seq = self.first_seq + (lo - self._start)
        return self.read(seq, min(hi - lo, max_frames)) if hi > lo else Run(seq, [], [], [])
