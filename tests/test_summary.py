"""Block summaries of numeric channels: made at put, merged into columns, dropped with their frames."""

from __future__ import annotations

import random
import struct

import pytest

from turbine import RequestFailed
from turbine._constants import FLOAT64_CONTENT_TYPE
from turbine.hub import Hub
from turbine.origin import Origin
from turbine.peer import Peer
from turbine.summary import Summaries

SRC = "daq_rig_data_source"
ME = Peer(1, name="me")


def f64(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def test_frames_make_blocks_of_at_least_the_block_size() -> None:
    s = Summaries(block_samples=10)
    s.add(1, [0.0, 1.0, 2.0], [f64([1, 5, 2, 0]), f64([7, 3, 3, 3, 3, 3]), f64([-1])])
    s.add(4, [3.0], [b""])  # an empty frame counts for nothing
    s.add(5, [4.0], [f64([9, 8])])
    assert list(s.seq) == [1, 3]  # frames 1-2 made 10 samples; frame 3 began the next block
    assert (list(s.t0), list(s.t1), list(s.n)) == ([0.0, 2.0], [1.0, 4.0], [10.0, 3.0])
    assert (list(s.lo), list(s.hi)) == ([0.0, -1.0], [7.0, 9.0])
    assert (list(s.first), list(s.last)) == ([1.0, -1.0], [3.0, 8.0])


def test_columns_hold_each_columns_extremes_first_and_last() -> None:
    rng = random.Random(7)
    s = Summaries(block_samples=100)
    values = [[rng.uniform(-1, 1) for _ in range(100)] for _ in range(1000)]
    s.add(1, [float(k) for k in range(1000)], [f64(v) for v in values])
    found = s.columns(100.0, 800.0, 16)  # 50 blocks a column
    assert found["since"] == 0.0 and found["blocks"] == 800
    assert len(found["columns"]) == 16
    for i, (t0, t1, n, lo, hi, first, last) in enumerate(found["columns"]):
        mine = values[100 + 50 * i : 150 + 50 * i]
        assert (t0, t1, n) == (100.0 + 50 * i, 149.0 + 50 * i, 5000)
        assert lo == min(min(v) for v in mine) and hi == max(max(v) for v in mine)
        assert (first, last) == (mine[0][0], mine[-1][-1])


def test_there_are_never_more_columns_than_asked_for() -> None:
    s = Summaries(block_samples=1)
    start = 1795300000.123
    times = [start + k * 0.1 for k in range(86400)]  # edges fall between blocks, rounded
    s.add(1, times, [f64([float(k)]) for k in range(86400)])
    for columns in (1, 7, 1000, 1234, 20000):
        found = s.columns(start, 8640.0, columns)["columns"]
        assert len(found) == columns and sum(c[2] for c in found) == 86400
        assert [c[0] for c in found] == sorted(c[0] for c in found)


def test_blocks_of_evicted_frames_go() -> None:
    s = Summaries(block_samples=1)
    s.add(1, [1.0, 2.0, 3.0, 4.0], [f64([k]) for k in range(4)])
    s.drop_before(3)  # frames 1 and 2 are gone
    assert list(s.seq) == [3, 4]
    assert s.columns(0.0, 10.0, 10)["since"] == 3.0


def test_the_hub_summarizes_numeric_channels_at_put_within_a_time_range() -> None:
    hub = Hub(clock=lambda: 1000.0)
    hub.open_source(ME, SRC, channels={"x": FLOAT64_CONTENT_TYPE, "log": "text/plain"})
    for k in range(30):  # 30 frames of 1000 samples, one a second
        hub.put(ME, SRC, "x", [float(k)], [f64([float(k)] * 999 + [-float(k)])])
    hub.put(ME, SRC, "log", [1.0], [b"not numbers"])
    [x] = hub.summarize(f"{SRC}/*", 10.0, 10.0, 5)  # the text channel has none
    assert (x["source"], x["channel"], x["since"], x["blocks"]) == (SRC, "x", 0.0, 10)
    assert [c[:5] for c in x["columns"]] == [
        [10.0 + 2 * i, 11.0 + 2 * i, 2000, -(11.0 + 2 * i), 11.0 + 2 * i] for i in range(5)
    ]
    assert hub.summarize(f"{SRC}/*", 10.0, 10.0, 5, readable=lambda source: False) == []
    with pytest.raises(RequestFailed, match="a duration above 0"):
        hub.summarize(SRC + "/x", 0.0, 0.0, 5)
    with pytest.raises(RequestFailed, match="columns must be between 1 and"):
        hub.summarize(SRC + "/x", 0.0, 1.0, 0)


def test_a_memory_only_channel_forgets_the_blocks_of_frames_it_evicted() -> None:
    hub = Hub(clock=lambda: 1000.0)
    hub.open_source(ME, SRC, channels={"x": FLOAT64_CONTENT_TYPE}, cache_frames=5)
    for k in range(20):
        hub.put(ME, SRC, "x", [float(k)], [f64([1.0] * 1000)])
    [x] = hub.summarize(SRC + "/x", 0.0, 100.0, 100)
    assert x["since"] == 15.0 and x["blocks"] == 5  # what the ring still holds


def test_a_mirrored_source_summarizes_the_copies_it_stores() -> None:
    hub = Hub(clock=lambda: 1000.0, identity="b1b1b1b1")
    hub.open_source(ME, SRC, channels={"x": FLOAT64_CONTENT_TYPE}, mirror=Origin("a0a0a0a0", SRC))
    seqs = [7, 8, 9, 12, 13]  # the origin's numbers, with a hole
    data = [f64([float(s)] * 999 + [-float(s)]) for s in seqs]
    hub.put(ME, SRC, "x", [float(s) for s in seqs], data, seqs=seqs, writers=[[7, "daq#1"]])
    [x] = hub.summarize(SRC + "/x", 0.0, 100.0, 100)
    assert x["since"] == 7.0 and x["blocks"] == 5
    assert [c[3:5] for c in x["columns"]] == [[-float(s), float(s)] for s in seqs]
