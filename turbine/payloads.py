"""Frames' payloads held back to back in a few buffers, as a ring keeps each put's.

A put carries its frames' bytes back to back in one payload.  Cutting that into a
``bytes`` object per frame was the largest cost of a broker's put of small frames
(4,096 frames of 64 B: 0.23-0.28 ms while memory is reused, 1.2-1.7 ms while a ring
grows on fresh memory), and a delivery then joined them again to write them.  A ring
keeps the payload whole instead (:class:`PutBuffers`) and a read hands out
:class:`Payloads`: the buffers its frames lie in, a run of frames of one put being one
slice, which a delivery or a fetch reply writes as they are (one iovec).  Whoever
wants the frames one by one (the archive, summaries, the audit log) iterates or
indexes it and gets a view per frame.  Pure, synchronous, no I/O.
"""

from __future__ import annotations

import array
import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, overload

from ._constants import RING_SLACK_BYTES
from ._memory import payload_list

__all__ = ["Payloads", "PutBuffers", "buffers_of", "cut", "total_bytes"]


class Payloads(Sequence[Any]):
    """The payloads of consecutive frames: ``buffers`` hold them back to back, in
    order, each buffer whole frames; ``sizes`` are the frames' lengths.

    A sequence of the frames' payloads (views, uncopied) for whoever reads them one
    by one; :attr:`buffers` for whoever writes them (a delivery, a fetch reply).
    """

    __slots__ = ("buffers", "sizes")

    def __init__(self, buffers: list[Any], sizes: Sequence[int]) -> None:
        self.buffers = buffers
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[Any]:
        sizes = iter(self.sizes)
        for buf in self.buffers:
            view, pos, end = memoryview(buf), 0, len(buf)
            while pos < end:
                size = next(sizes)
                yield view[pos : pos + size]
                pos += size
        for _ in sizes:  # empty frames after the last byte
            yield memoryview(b"")

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Payloads: ...

    def __getitem__(self, index: int | slice) -> Any:
        sizes = self.sizes
        if isinstance(index, slice):
            a, b, step = index.indices(len(sizes))
            if step != 1:
                raise ValueError("payloads are sliced with step 1 only")
            b = max(a, b)
            lo = sum(sizes[:a])
            return Payloads(cut(self.buffers, lo, lo + sum(sizes[a:b])), sizes[a:b])
        i = range(len(sizes))[index]  # IndexError as a list's
        lo = sum(sizes[:i])
        parts = cut(self.buffers, lo, lo + sizes[i])
        return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Payloads | list | tuple):
            return len(self) == len(other) and all(map(_same_bytes, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"Payloads({len(self)} frames in {len(self.buffers)} buffers)"


def _same_bytes(a: Any, b: Any) -> bool:
    return bytes(a) == bytes(b)


def buffers_of(data: Sequence[Any]) -> Sequence[Any]:
    """Buffers holding ``data``'s payloads back to back, to write as they are: a
    :class:`Payloads`' buffers, or the payloads themselves (a list of them)."""
    return data.buffers if type(data) is Payloads else data


def total_bytes(data: Sequence[Any], sizes: Sequence[int]) -> int:
    """The bytes of ``data``'s frames (``sizes`` their lengths): a :class:`Payloads`'
    buffers' lengths (a put's: one), with no pass over the frames' sizes."""
    if type(data) is Payloads:
        return sum(map(len, data.buffers))
    return sum(sizes)


def cut(buffers: Sequence[Any], lo: int, hi: int, ends: list[int] | None = None) -> list[Any]:
    """Bytes ``lo`` to ``hi`` (at most the end) of ``buffers`` taken back to back, as buffers (views
    where a buffer is cut, the others as they are).  ``ends``: the buffers' end
    offsets (``itertools.accumulate`` of their lengths), when the caller has them.
    """
    if ends is None:
        ends = list(itertools.accumulate(map(len, buffers)))
    hi = min(hi, ends[-1] if ends else 0)
    if hi <= lo:
        return []
    i = bisect.bisect_right(ends, lo)  # the buffer holding byte lo
    j = bisect.bisect_left(ends, hi, lo=i)  # ... and byte hi - 1
    out = list(buffers[i : j + 1])
    start = ends[i - 1] if i else 0
    if i == j:
        if lo > start or hi < ends[j]:
            out[0] = memoryview(out[0])[lo - start : hi - start]
        return out
    if lo > start:
        out[0] = memoryview(out[0])[lo - start :]
    if hi < ends[j]:
        last = memoryview(out[-1])
        out[-1] = last[: len(last) - (ends[j] - hi)]
    return out


class PutBuffers:
    """A ring's payload column: each put's payload kept whole, one buffer per put
    (a put given as a list of payloads: one per frame), until its last frame goes.

    Columns are the ring's: frame ``i`` of the ring lies in the buffer whose first
    column is the last at or before ``i``.  The ring passes its ``sizes`` column
    where offsets inside a buffer are needed (they are sums of sizes).

    What a buffer holds beyond its frames still in the ring is not counted in the
    ring's bytes; so that it stays small, a buffer whose evicted part is more than
    :data:`~turbine._constants.RING_SLACK_BYTES` and more than half of it keeps only
    its live part (a copy of at most as much as was freed).
    """

    __slots__ = ("buffers", "firsts", "_live", "_base")

    def __init__(self) -> None:
        #: One buffer per put, ``None`` once its frames are gone; never walked by the
        #: cycle collector (a ring of millions of payloads made every collection pause).
        self.buffers: list[Any] = payload_list()
        self.firsts = array.array("q")  # each buffer's first column, counted from the ring's start
        self._live = 0  # the oldest buffer still holding frames
        self._base = 0  # columns forgotten by compaction

    def append(self, data: Sequence[Any], i: int) -> None:
        """Keep the payloads of frames from column ``i`` on (a :class:`Payloads`, or
        a list of one payload per frame)."""
        n = len(data)
        if not n:
            return
        col = self._base + i
        if type(data) is not Payloads:
            self.buffers += data
            self.firsts.extend(range(col, col + n))
            return
        bufs = data.buffers
        if len(bufs) == 1:
            self.buffers.append(bufs[0])
            self.firsts.append(col)
            return
        # Several buffers (a slice across puts): each one's first frame; a buffer
        # holding none (empty) is left out, the empty frames go with the one before.
        frame_ends = list(itertools.accumulate(data.sizes))
        lens = itertools.accumulate(map(len, bufs), initial=0)
        starts = [bisect.bisect_right(frame_ends, pos) for pos in lens]
        starts[0], starts[-1] = 0, n
        pairs = zip(bufs, itertools.pairwise(starts), strict=True)
        kept = [(buf, col + a) for buf, (a, b) in pairs if a < b]
        for buf, first in kept or [(b"", col)]:
            self.buffers.append(buf)
            self.firsts.append(first)

    def release(self, i: int, sizes: array.array[int]) -> None:
        """Frames before column ``i`` are gone: free the buffers they alone held."""
        firsts, buffers = self.firsts, self.buffers
        col = self._base + i
        if i >= len(sizes):
            k = len(buffers)  # all gone
        else:
            k = bisect.bisect_right(firsts, col, lo=self._live) - 1
        if k > self._live:
            buffers[self._live : k] = itertools.repeat(None, k - self._live)
            self._live = k
        if k < len(buffers) and len(buf := buffers[k]) > RING_SLACK_BYTES and firsts[k] < col:
            dead = sum(sizes[firsts[k] - self._base : i])
            if dead > RING_SLACK_BYTES and 2 * dead > len(buf):
                buffers[k] = bytes(memoryview(buf)[dead:])
                firsts[k] = col

    def get(
        self, i: int, j: int, sizes: array.array[int], frame_sizes: list[int] | None = None
    ) -> Sequence[Any]:
        """The payloads of columns ``i`` to ``j - 1`` (a list when each lies in a
        buffer of its own, else a :class:`Payloads`; ``frame_sizes``: their sizes
        as a list, when the caller has it)."""
        if j <= i:
            return []
        firsts, base = self.firsts, self._base
        k = bisect.bisect_right(firsts, base + i, lo=self._live) - 1
        m = bisect.bisect_left(firsts, base + j, lo=k)
        bufs = self.buffers[k:m]
        start = firsts[k] - base
        end = firsts[m] - base if m < len(firsts) else len(sizes)
        if m - k == j - i and start == i and end == j:
            return bufs  # one payload per buffer
        if start < i:
            bufs[0] = memoryview(bufs[0])[sum(sizes[start:i]) :]
        if end > j:
            last = memoryview(bufs[-1])
            bufs[-1] = last[: len(last) - sum(sizes[j:end])]
        return Payloads(bufs, sizes[i:j].tolist() if frame_sizes is None else frame_sizes)

    def last(self, sizes: array.array[int]) -> Any:
        """The newest frame's payload (the ring is not empty)."""
        buf = self.buffers[-1]
        if self.firsts[-1] - self._base == len(sizes) - 1:
            return buf
        view = memoryview(buf)
        return view[len(view) - sizes[-1] :]

    def compact(self, i: int) -> None:
        """Forget the first ``i`` columns (all gone: :meth:`release` was told)."""
        del self.buffers[: self._live], self.firsts[: self._live]
        self._live = 0
        self._base += i
