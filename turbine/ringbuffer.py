"""The ring buffer of one channel: pure, synchronous, no I/O.

Frames are kept as parallel columns (timestamps, payloads, arrival order), so
that reading a run of frames is a few list slices rather than a loop.  Sequence
numbers inside one ring are contiguous: the frame at column index ``i`` has
sequence number ``first_seq + (i - start)``.
"""

from __future__ import annotations

import array
import bisect
import itertools
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
    sizes: list[int]
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
        "_sizes",
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
        # Parallel columns; index i holds sequence number first_seq + (i - _start).
        # Numbers live in arrays: a third of the memory of lists of objects,
        # and nothing for the garbage collector to walk (a ring of millions of
        # frames in lists made every full collection pause the broker ~70 ms).
        self._ts = array.array("d")
        self._data: list[Any] = []
        self._sizes = array.array("q")
        self._arrival = array.array("q")
        self._writers: list[tuple[int, str]] = []  # (first seq, writer) per run of one writer
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
        return self._arrival[self._start] if len(self) else None

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

    def append_many(
        self,
        ts: list[float],
        data: list[Any],
        writer: str,
        arrival: int,
        sizes: list[int] | None = None,
    ) -> int:
        """Append frames; return the bytes evicted to stay within ``max_frames``.

        ``arrival`` numbers the first of them in the owner's arrival order;
        ``sizes`` are their lengths, when the caller has them already.
        """
        n = len(ts)
        if not self._writers or self._writers[-1][1] != writer:
            self._writers.append((self.next_seq, writer))
        if sizes is None:
            sizes = list(map(len, data))
        self._ts.extend(ts)
        self._data += data
        self._sizes.extend(sizes)
        self._arrival.extend(range(arrival, arrival + n))
        self.bytes += FRAME_OVERHEAD_BYTES * n + sum(sizes)
        self.next_seq += n
        over = len(self) - self.max_frames
        return self.evict(over) if over > 0 else 0

    def evict(self, count: int = 1) -> int:
        """Drop the ``count`` oldest frames; return the bytes freed."""
        count = min(count, len(self))
        start = self._start
        freed = FRAME_OVERHEAD_BYTES * count + sum(self._sizes[start : start + count])
        self._data[start : start + count] = itertools.repeat(None, count)  # free payloads now
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
        del self._ts[:s], self._data[:s], self._sizes[:s], self._arrival[:s]
        self._start = 0
        keep = bisect.bisect_right(self._writers, self.first_seq, key=lambda w: w[0]) - 1
        if keep > 0:
            del self._writers[:keep]

    def read(self, seq: int, max_frames: int, max_bytes: int | None = None) -> Run:
        """Frames from ``seq`` on, at most ``max_frames`` and ``max_bytes`` (but at least one).

        A ``seq`` older than the oldest frame held starts at the oldest and
        reports how many were missed; one past the newest gives an empty run.
        """
        missed = 0
        if seq < self.first_seq:
            missed = self.first_seq - seq
            seq = self.first_seq
        count = min(max_frames, self.next_seq - seq)
        if count <= 0:
            return Run(max(seq, self.first_seq), [], [], [], [], missed)
        i = self._start + (seq - self.first_seq)
        sizes = self._sizes[i : i + count]
        if max_bytes is not None and sum(sizes) > max_bytes:
            count = max(bisect.bisect_right(list(itertools.accumulate(sizes)), max_bytes), 1)
            del sizes[count:]
        return Run(
            seq,
            self._ts[i : i + count].tolist(),
            self._data[i : i + count],
            sizes.tolist(),
            self._writers_for(seq, count),
            missed,
        )

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
        """Frames with ``start <= timestamp < start + duration`` (timestamps assumed non-decreasing).

        A zero ``duration`` selects the frames stamped exactly ``start``.
        """
        lo = bisect.bisect_left(self._ts, start, lo=self._start)
        if duration == 0:
            hi = bisect.bisect_right(self._ts, start, lo=lo)
        else:
            hi = bisect.bisect_left(self._ts, start + duration, lo=lo)
        seq = self.first_seq + (lo - self._start)
        if hi <= lo:
            return Run(seq, [], [], [], [])
        return self.read(seq, min(hi - lo, max_frames))
