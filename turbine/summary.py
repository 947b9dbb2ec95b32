"""Block summaries of numeric channels, kept at put: what a plot of a long range reads.

A day of a 1 kHz channel is 86.4 million samples (691 MB); reading them all to
draw 1000 pixel columns takes seconds however it is decimated.  So the broker
keeps, for every channel of ``application/x-float64-le`` frames, one summary
per block of at least :data:`~turbine._constants.SUMMARY_BLOCK_SAMPLES`
samples: its time span, sample count, minimum, maximum, first and last value.
They are made as frames are put (a ``min`` and a ``max`` over an array, in C)
and cost 72 bytes per block: 0.9 % of the samples at 1000 per block.

:meth:`Summaries.columns` answers a ``summarize`` request: the blocks of a
time range merged into at most ``columns`` equal columns, by slices of the
columns below (C loops again), so the work grows with columns, not samples.

A channel archived in a data dir hands each block, once complete, to its
store (``sink``), which keeps it beside the archive's segments
(``turbine/archive/``, docs/storage.rst): a broker restarted from its data dir
gets its summaries back with its frames.  A memory-only channel's summaries
cover what was put since the broker started (``since`` says where they begin).
A block whose frames are all evicted is dropped.
"""

from __future__ import annotations

import array
import bisect
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._constants import FLOAT64_CONTENT_TYPE, SUMMARY_BLOCK_SAMPLES

#: Blocks between two checks of a channel's oldest frame at put (blocks of evicted frames go).
TRIM_EVERY = 1024

#: One block: first frame number, one past its last frame's, first and last frame
#: time, samples, minimum, maximum, first and last value (what the archive keeps).
Block = tuple[int, int, float, float, int, float, float, float, float]


def float64s(data: Any) -> array.array[float]:
    """The little-endian float64 samples of ``data`` (a trailing partial sample is left out)."""
    values = array.array("d")
    values.frombytes(memoryview(data)[: len(data) // 8 * 8])
    if sys.byteorder == "big":
        values.byteswap()
    return values


def summaries_for(
    content_type: str, sink: Callable[[Block], None] | None = None
) -> Summaries | None:
    """New summaries for a channel of ``content_type`` (only float64 samples have
    them), handing each complete block to ``sink``."""
    return Summaries(sink=sink) if content_type == FLOAT64_CONTENT_TYPE else None


class Summaries:
    """One numeric channel's block summaries, oldest first, as columns.

    Block ``i`` starts at frame number ``seq[i]`` stamped ``t0[i]``; its last
    frame, numbered ``end[i] - 1``, is stamped ``t1[i]``; it holds ``n[i]``
    samples whose minimum, maximum, first and last are ``lo[i]``, ``hi[i]``,
    ``first[i]``, ``last[i]``.  The newest block takes frames until it has
    ``block_samples``; the frame after that begins the next, and the block is
    then complete: ``sink`` gets it (on the caller's thread, at put).
    """

    __slots__ = (
        "block_samples",
        "sink",
        "seq",
        "end",
        "t0",
        "t1",
        "n",
        "lo",
        "hi",
        "first",
        "last",
    )

    def __init__(
        self,
        block_samples: int = SUMMARY_BLOCK_SAMPLES,
        sink: Callable[[Block], None] | None = None,
    ) -> None:
        self.block_samples = block_samples
        self.sink = sink
        self.seq, self.end = array.array("q"), array.array("q")
        self.t0, self.t1, self.n = array.array("d"), array.array("d"), array.array("d")
        self.lo, self.hi = array.array("d"), array.array("d")
        self.first, self.last = array.array("d"), array.array("d")

    def __len__(self) -> int:
        return len(self.seq)

    def add(self, seq: int, ts: Sequence[float], data: Sequence[Any]) -> None:
        """Summarize frames numbered from ``seq``, stamped ``ts`` (empty frames count for nothing)."""
        for k, (t, payload) in enumerate(zip(ts, data, strict=True)):
            values = float64s(payload)
            if not values:
                continue
            lo, hi = min(values), max(values)
            if self.seq and self.n[-1] < self.block_samples:
                self.end[-1] = seq + k + 1
                self.t1[-1] = t
                self.n[-1] += len(values)
                self.lo[-1] = min(self.lo[-1], lo)
                self.hi[-1] = max(self.hi[-1], hi)
                self.last[-1] = values[-1]
                continue
            if self.seq and self.sink is not None:
                self.sink(self.block(-1))
            self.seq.append(seq + k)
            self.end.append(seq + k + 1)
            for column, value in (
                (self.t0, t),
                (self.t1, t),
                (self.n, len(values)),
                (self.lo, lo),
                (self.hi, hi),
                (self.first, values[0]),
                (self.last, values[-1]),
            ):
                column.append(value)

    def block(self, i: int) -> Block:
        """Block ``i`` (negative: from the newest)."""
        return (
            self.seq[i],
            self.end[i],
            self.t0[i],
            self.t1[i],
            int(self.n[i]),
            self.lo[i],
            self.hi[i],
            self.first[i],
            self.last[i],
        )

    def extend(self, blocks: Iterable[Block]) -> None:
        """Append ``blocks`` (newer than those held, oldest first; ``sink`` is not told)."""
        columns = self._columns()
        for block in blocks:
            for column, value in zip(columns, block, strict=True):
                column.append(value)

    def take(self, other: Summaries) -> None:
        """Append every block of ``other`` (newer than those held; ``sink`` is not told)."""
        self.extend_columns(other._columns())

    def extend_columns(self, columns: Sequence[array.array[Any]]) -> None:
        """Append blocks given as columns in the order of a :data:`Block` (array copies;
        blocks not newer than the newest held are left out; ``sink`` is not told)."""
        skip = bisect.bisect_left(columns[0], self.end[-1]) if self.seq else 0
        for mine, theirs in zip(self._columns(), columns, strict=True):
            mine.extend(theirs[skip:] if skip else theirs)

    def drop_before(self, seq: int) -> None:
        """Forget the blocks whose frames are all numbered below ``seq`` (evicted everywhere)."""
        i = bisect.bisect_right(self.seq, seq) - 1  # the block holding frame ``seq``
        if i > 0:
            for column in self._columns():
                del column[:i]

    def drop_from(self, seq: int) -> None:
        """Forget the newest blocks that reach frame ``seq`` or later (frames lost)."""
        i = len(self.end)
        while i and self.end[i - 1] > seq:
            i -= 1
        for column in self._columns():
            del column[i:]

    def _columns(self) -> tuple[array.array[Any], ...]:
        # In the order of a Block.
        return (
            self.seq, self.end, self.t0, self.t1, self.n, self.lo, self.hi, self.first, self.last
        )  # fmt: skip

    def columns(self, start: float, duration: float, columns: int) -> dict[str, Any]:
        """The blocks starting in ``start <= t < start + duration``, merged into at most
        ``columns`` equal time columns (empty ones left out).

        Returns ``since`` (the first block's time: nothing older is summarized; None
        with no blocks), ``blocks`` (how many fell in the range) and ``columns``: a
        ``[t0, t1, n, min, max, first, last]`` list per column, oldest first.
        """
        since = self.t0[0] if self.seq else None
        a = bisect.bisect_left(self.t0, start)
        end = bisect.bisect_left(self.t0, start + duration)
        out: list[list[float]] = []
        width = duration / max(columns, 1)
        col = -1
        while a < end:
            # (Rounding may put a block just past an edge in the column before: never
            # go back a column, so there are never more than ``columns``.)
            col = max(int((self.t0[a] - start) / width), col + 1)
            if col >= columns - 1:
                b = end
            else:
                edge = start + (col + 1) * width
                b = min(max(bisect.bisect_left(self.t0, edge, a, end), a + 1), end)
            out.append(
                [
                    self.t0[a],
                    self.t1[b - 1],
                    sum(self.n[a:b]),
                    min(self.lo[a:b]),
                    max(self.hi[a:b]),
                    self.first[a],
                    self.last[b - 1],
                ]
            )
            a = b
        blocks = end - bisect.bisect_left(self.t0, start)
        return {"since": since, "blocks": blocks, "columns": out}
