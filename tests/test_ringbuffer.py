"""The ring buffer of one channel: bounded, oldest first, gaps reported."""

from __future__ import annotations

import array
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine._constants import FRAME_OVERHEAD_BYTES
from turbine.ringbuffer import Ring, _fewest, _within


def filled(n: int, max_frames: int = 100, writer: str = "w", next_seq: int = 1) -> Ring:
    ring = Ring(max_frames, next_seq)
    ring.append_many([float(i) for i in range(n)], [b"%d" % i for i in range(n)], writer, 0)
    return ring


def seqs(run) -> list[int]:
    return list(range(run.first_seq, run.first_seq + len(run.ts)))


def test_a_ring_holds_at_least_one_frame():
    with pytest.raises(ValueError, match="at least one frame"):
        Ring(0)


def test_sequence_numbers_start_at_one_and_increase():
    ring = filled(3)
    assert (ring.first_seq, ring.last_seq, len(ring)) == (1, 3, 3)
    run = ring.read(1, 10)
    assert seqs(run) == [1, 2, 3]
    assert run.data == [b"0", b"1", b"2"]
    assert run.missed == 0


def test_an_empty_ring():
    ring = Ring(5)
    assert len(ring) == 0
    assert ring.last_seq == 0
    assert ring.newest is None and ring.first_time is None and ring.last_time is None
    assert ring.read(1, 10).ts == []


def test_a_ring_can_continue_an_earlier_numbering():
    ring = filled(2, next_seq=41)
    assert seqs(ring.read(1, 10)) == [41, 42]
    assert ring.read(1, 10).missed == 40


def test_over_the_frame_bound_the_oldest_go_first():
    ring = Ring(3)
    freed = 0
    for i in range(5):
        freed += ring.append_many([float(i)], [b"abcd"], "w", i)
    assert len(ring) == 3
    assert (ring.first_seq, ring.last_seq) == (3, 5)
    assert ring.read(1, 10).ts == [2.0, 3.0, 4.0]
    assert freed == 2 * (4 + FRAME_OVERHEAD_BYTES)
    assert ring.bytes == 3 * (4 + FRAME_OVERHEAD_BYTES)


def test_one_big_append_over_the_bound_keeps_the_newest():
    ring = filled(10, max_frames=4)
    assert seqs(ring.read(1, 10)) == [7, 8, 9, 10]
    assert ring.newest == b"9"


def test_reading_evicted_frames_reports_how_many_were_missed():
    ring = filled(10, max_frames=4)
    run = ring.read(2, 10)
    assert run.missed == 5
    assert run.first_seq == 7
    assert seqs(run) == [7, 8, 9, 10]


def test_reading_past_the_newest_gives_nothing():
    ring = filled(3)
    run = ring.read(4, 10)
    assert run.ts == [] and run.missed == 0 and run.first_seq == 4


def test_read_limits_frames_and_bytes_but_always_returns_one():
    ring = Ring(10)
    ring.append_many([1.0, 2.0, 3.0], [b"x" * 100, b"y" * 100, b"z" * 100], "w", 0)
    assert seqs(ring.read(1, 2)) == [1, 2]
    assert seqs(ring.read(1, 10, max_bytes=250)) == [1, 2]
    assert seqs(ring.read(1, 10, max_bytes=10)) == [1]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 7, 100, 1000, 5000]), min_size=1, max_size=300),
    max_bytes=st.integers(0, 20_000),
    start=st.integers(0, 10),
    max_frames=st.integers(1, 400),
)
def test_a_read_takes_the_most_frames_within_its_bytes_whatever_their_sizes(
    sizes, max_bytes, start, max_frames
):
    """Only a window of the sizes is summed: the answer is still every frame from the
    first whose running total stays within ``max_bytes`` (at least one, at most
    ``max_frames``), with frames of any sizes after the first (empty ones too)."""
    ring = Ring(len(sizes))
    ring.append_many([0.0] * len(sizes), [b"x" * n for n in sizes], "w", 0)
    start = min(start, len(sizes) - 1)
    totals = list(itertools.accumulate(sizes[start : start + max_frames]))
    want = max(sum(1 for t in totals if t <= max_bytes), 1)
    run = ring.read(1 + start, max_frames, max_bytes)
    assert seqs(run) == list(range(1 + start, 1 + start + want))
    assert run.sizes == sizes[start : start + want]
    assert _within(array.array("q", sizes), start, len(totals), max_bytes) == want


def test_newest_and_oldest():
    ring = filled(10, max_frames=6)
    assert seqs(ring.newest_n(2)) == [9, 10]
    assert seqs(ring.oldest_n(2)) == [5, 6]
    assert seqs(ring.newest_n(100)) == [5, 6, 7, 8, 9, 10]
    assert ring.newest_n(0).ts == []


def test_time_range_is_half_open():
    ring = filled(10)  # timestamps 0.0 .. 9.0
    assert ring.time_range(2.0, 3.0, 100).ts == [2.0, 3.0, 4.0]
    assert ring.time_range(2.5, 1.0, 100).ts == [3.0]
    assert ring.time_range(4.0, 0, 100).ts == [4.0]
    assert ring.time_range(20.0, 5.0, 100).ts == []
    assert ring.time_range(0.0, float("inf"), 3).ts == [0.0, 1.0, 2.0]


def test_time_range_ignores_evicted_frames():
    ring = filled(10, max_frames=3)
    run = ring.time_range(0.0, 100.0, 100)
    assert run.ts == [7.0, 8.0, 9.0]
    assert run.first_seq == 8


def test_each_frame_records_its_writer():
    ring = Ring(100)
    ring.append_many([1.0, 2.0], [b"a", b"b"], "alice", 0)
    ring.append_many([3.0], [b"c"], "bob", 2)
    ring.append_many([4.0], [b"d"], "bob", 3)
    ring.append_many([5.0], [b"e"], "alice", 4)
    assert ring.read(1, 10).writers == [(1, "alice"), (3, "bob"), (5, "alice")]
    assert ring.read(2, 2).writers == [(2, "alice"), (3, "bob")]
    assert ring.read(4, 1).writers == [(4, "bob")]


def test_oldest_arrival_follows_eviction():
    ring = Ring(2)
    ring.append_many([1.0, 2.0], [b"a", b"b"], "w", 10)
    assert ring.oldest_arrival == 10
    ring.append_many([3.0], [b"c"], "w", 12)
    assert ring.oldest_arrival == 10  # frame 2 came with frame 1, in the put numbered 10
    ring.append_many([4.0], [b"d"], "w", 13)
    assert ring.oldest_arrival == 12
    ring.evict(5)
    assert len(ring) == 0 and ring.oldest_arrival is None and ring.bytes == 0


def test_evicted_payloads_are_released_at_once():
    ring = filled(3, max_frames=10)
    ring.evict(2)
    assert ring._data.buffers[:2] == [None, None]  # noqa: SLF001 - the memory is what is tested


def test_long_runs_compact_and_stay_correct():
    ring = Ring(50)
    writers = ["a", "b", "c"]
    for i in range(5000):
        ring.append_many([float(i)], [b"%d" % i], writers[(i // 7) % 3], i)
    assert len(ring._ts) < 5000  # noqa: SLF001 - compaction happened
    run = ring.read(1, 100)
    assert run.missed == 4950
    assert seqs(run) == list(range(4951, 5001))
    assert run.data == [b"%d" % i for i in range(4950, 5000)]
    # Writers still line up with the frames they wrote.
    for seq, writer in run.writers:
        assert writer == writers[((seq - 1) // 7) % 3]
    assert ring.time_range(4990.0, 5.0, 100).ts == [4990.0, 4991.0, 4992.0, 4993.0, 4994.0]


@settings(max_examples=200, deadline=None)
@given(
    max_frames=st.integers(1, 20),
    batches=st.lists(st.integers(1, 15), max_size=20),
    start=st.integers(1, 300),
)
def test_reads_never_lose_count(max_frames, batches, start):
    """Whatever was appended, a read from any seq accounts for every frame up to the newest."""
    ring = Ring(max_frames)
    n = 0
    for size in batches:
        ring.append_many(
            [float(n + i) for i in range(size)], [b"x" * (n + i) for i in range(size)], "w", n
        )
        n += size
    assert len(ring) == min(n, max_frames)
    assert ring.bytes == sum(len(b"x" * i) + FRAME_OVERHEAD_BYTES for i in range(n - len(ring), n))
    run = ring.read(start, 1000)
    if start > n:
        assert run.ts == []
    else:
        assert start + run.missed == run.first_seq
        assert run.first_seq + len(run.ts) == n + 1
        assert run.data == [b"x" * (s - 1) for s in seqs(run)]


def test_a_rings_payloads_are_out_of_the_cycle_collectors_walks_and_still_freed():
    # Each collection that reaches a list visits every item: a ring of millions
    # of frames held the broker's loop for tens to hundreds of ms per collection.
    import gc
    import weakref

    class Payload(bytearray):  # a payload the test can watch being freed
        pass

    ring = Ring(max_frames=2)
    first, second = Payload(b"one"), Payload(b"two")
    gone = weakref.ref(first)
    ring.append_many([1.0, 2.0], [first, second], "w", 0)
    del first
    assert not gc.is_tracked(ring._data.buffers)
    assert [r for r in gc.get_referrers(second) if r is ring._data.buffers] == []  # never walked
    ring.append_many([3.0], [b"three"], "w", 1)  # evicts the first frame
    assert gone() is None  # freed by its reference count, no collection needed
    assert [bytes(p) for p in ring._data.buffers[ring._start :]] == [b"two", b"three"]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=60),
    needed=st.integers(1, 30_000),
    guess=st.floats(1e-6, 1.0),
    start=st.integers(0, 10),
)
def test_evicting_finds_the_fewest_frames_that_free_enough_whatever_it_guesses(
    sizes, needed, guess, start
):
    """The mean frame's guess only says where to look first: the answer is the fewest
    frames from the oldest whose sizes and overhead reach ``needed`` (or all)."""
    start = min(start, len(sizes) - 1)
    column = array.array("q", sizes)
    costs = list(itertools.accumulate(s + FRAME_OVERHEAD_BYTES for s in sizes[start:]))
    want = next((k + 1 for k, c in enumerate(costs) if c >= needed), len(costs))
    count, freed = _fewest(column, start, len(sizes), needed, guess)
    assert (count, freed) == (want, costs[want - 1])


def test_a_dropped_ring_frees_every_payload_and_numbers_on():
    # drop() starts the columns afresh (evicting frame by frame held the loop
    # ~110 ms for 5,000,000 frames): nothing is held, numbering goes on, also
    # after a hole.
    ring = filled(5, max_frames=10)
    ring.append_many([9.0], [b"x"], "w", 9, seq=20)  # a hole: numbers are kept
    freed_before = ring.bytes
    assert ring.drop() == freed_before
    assert len(ring) == 0 and ring.bytes == 0 and ring.newest is None
    assert ring._data.buffers == [] and len(ring._sizes) == 0  # noqa: SLF001 - the memory is what is tested
    assert ring.first_seq == ring.next_seq == 21
    ring.append_many([10.0], [b"y"], "w", 10)
    run = ring.read(21, 10)
    assert (run.first_seq, list(map(bytes, run.data)), ring.oldest_arrival) == (21, [b"y"], 10)
