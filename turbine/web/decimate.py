"""Numeric channels as time series: sample blocks to points, and min/max decimation.

A numeric frame (``application/x-float64-le``) is a block of samples whose
timestamp is the block's first sample; the samples of a block are spread
evenly up to the next block's timestamp.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..client import Frame
from ..render import numbers


def samples(frames: Sequence[Frame]) -> tuple[list[float], list[float]]:
    """The times and values of every sample in ``frames`` (one channel, in order).

    Sample ``i`` of a block of ``n`` is at ``t + i * dt`` with ``dt`` the gap to
    the next block's timestamp divided by ``n`` (the last block reuses the
    previous spacing; a lone block puts its samples 1 ms apart).
    """
    times: list[float] = []
    values: list[float] = []
    dt = 0.001
    blocks = [numbers(f.data) for f in frames]
    for k, (frame, block) in enumerate(zip(frames, blocks, strict=True)):
        if not block:
            continue
        if k + 1 < len(frames):
            dt = (frames[k + 1].timestamp - frame.timestamp) / len(block)
        t0 = frame.timestamp
        times += [t0 + i * dt for i in range(len(block))]
        values += block
    return times, values


def minmax(
    times: Sequence[float], values: Sequence[float], max_points: int
) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points keeping each pixel column's extremes.

    The time span is cut into ``max_points // 2`` equal columns; each column
    with samples keeps its minimum and its maximum, in time order, so a plot
    of the result has the envelope of the full data.  Fewer samples than
    ``max_points`` are returned unchanged.

    Raises:
        ValueError: ``max_points`` is below 2.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if len(values) <= max_points:
        return list(times), list(values)
    columns = max_points // 2
    t_first, t_last = times[0], times[-1]
    width = (t_last - t_first) / columns or 1.0
    out_t: list[float] = []
    out_v: list[float] = []
    i, n = 0, len(values)
    for col in range(columns):
        end = t_first + (col + 1) * width
        start = i
        while i < n and (times[i] < end or col == columns - 1):
            i += 1
        if i == start:
            continue
        lo = min(range(start, i), key=values.__getitem__)
        hi = max(range(start, i), key=values.__getitem__)
        for j in sorted({lo, hi}):
            out_t.append(times[j])
            out_v.append(values[j])
    return out_t, out_v
