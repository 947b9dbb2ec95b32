"""The channel-store seam: explicit numbers, holes, gaps, eviction across channels."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine import RequestFailed
from turbine._constants import FRAME_OVERHEAD_BYTES
from turbine._selections import check_start
from turbine.hub import Hub
from turbine.peer import Peer
from turbine.ringbuffer import Ring, memory_store
from turbine.router import Subscription, add_run, collect
from turbine.store import AFTER, NEWEST, OLDEST, TIME, ChannelSpec, Query, evict_to_fit

SRC = "daq_rig_data_source"
ALICE = Peer(1, name="alice")


def numbers(run) -> list[int]:
    return list(run.seqs) if run.seqs is not None else list(range(run.first_seq, run.next_seq))


def mirror() -> Ring:
    """Frames 1-3, a hole of 4-9, frames 10-11, a hole of 12, frame 13."""
    ring = Ring(100)
    ring.append_many([1.0, 2.0, 3.0], [b"a", b"b", b"c"], "origin", 0, seq=1)
    ring.append_many([10.0, 11.0], [b"j", b"k"], "origin", 3, seq=10)
    ring.append_many([13.0], [b"m"], "origin", 5, seq=13)
    return ring


def test_the_factory_makes_a_ring_continuing_the_numbering():
    store = memory_store(ChannelSpec(SRC, "a", max_frames=5, next_seq=41))
    store.append_many([1.0], [b"x"], "w", 0)
    assert (store.first_seq, store.last_seq, len(store), store.max_frames) == (41, 41, 1, 5)
    assert memory_store.durable is False


def test_explicit_numbers_leave_holes_that_frames_do_not_count():
    ring = mirror()
    assert (len(ring), ring.first_seq, ring.last_seq, ring.next_seq) == (6, 1, 13, 14)
    assert ring.bytes == 6 * (1 + FRAME_OVERHEAD_BYTES)


def test_numbers_never_go_back():
    ring = mirror()
    with pytest.raises(ValueError, match="sequence number 12 is below the next one, 14"):
        ring.append_many([1.0], [b"x"], "w", 9, seq=12)
    ring.append_many([14.0], [b"n"], "w", 6, seq=14)  # the next number is no hole
    assert numbers(ring.oldest_n(100))[-2:] == [13, 14]


def test_a_cursor_read_stops_before_a_hole_and_the_next_read_reports_it():
    ring = mirror()
    first = ring.read(1, 100)
    assert (numbers(first), first.missed, first.data) == ([1, 2, 3], 0, [b"a", b"b", b"c"])
    second = ring.read(first.next_seq, 100)
    assert (numbers(second), second.missed) == ([10, 11], 6)
    third = ring.read(second.next_seq, 100)
    assert (numbers(third), third.missed, third.data) == ([13], 1, [b"m"])
    assert ring.read(14, 100).ts == []
    assert ring.read(5, 1).first_seq == 10  # from inside a hole: the next frame held


def test_fetch_reads_span_holes_and_list_their_numbers():
    ring = mirror()
    assert numbers(ring.oldest_n(100)) == [1, 2, 3, 10, 11, 13]
    assert numbers(ring.newest_n(3)) == [10, 11, 13]
    assert numbers(ring.newest_n(2)) == [11, 13]
    assert numbers(ring.from_seq(3, 3)) == [3, 10, 11]
    assert numbers(ring.time_range(2.0, 10.0, 100)) == [2, 3, 10, 11]
    assert ring.newest_n(2).data == [b"k", b"m"]
    contiguous = ring.newest_n(1)
    assert contiguous.seqs is None and contiguous.first_seq == 13


def test_a_run_across_holes_becomes_one_group_per_contiguous_piece():
    class Ch:
        path, name, source_name, content_type = f"{SRC}/a", "a", SRC, "text/plain"

    ring = mirror()
    groups: list = []
    payloads: list = []
    add_run(groups, payloads, Ch(), ring.oldest_n(100))  # type: ignore[arg-type]
    assert [(g[3], len(g[4]), g[6]) for g in groups] == [
        (1, 3, "origin"),
        (10, 2, "origin"),
        (13, 1, "origin"),
    ]
    assert payloads == [b"a", b"b", b"c", b"j", b"k", b"m"]


def test_eviction_and_compaction_keep_the_numbers_right():
    ring = Ring(3)
    n = 0
    for i in range(3000):
        seq = 1 + 2 * i  # every other number is a hole
        ring.append_many([float(i)], [b"%d" % seq], "w", n, seq=seq)
        n += 1
    assert len(ring) == 3 and ring.first_seq == 5995
    assert numbers(ring.oldest_n(10)) == [5995, 5997, 5999]
    assert ring.oldest_n(10).data == [b"5995", b"5997", b"5999"]
    run = ring.read(1, 10)
    assert (numbers(run), run.missed) == ([5995], 5994)
    ring.evict(3)
    assert (len(ring), ring.first_seq, ring.next_seq) == (0, 6000, 6000)


def test_a_mirror_puts_with_the_origins_numbers_and_a_reader_sees_the_hole():
    hub = Hub()
    hub.open_source(ALICE, SRC)
    hub.put(ALICE, SRC, "a", [1.0, 2.0], [b"1", b"2"], seq=5)
    hub.put(ALICE, SRC, "a", [3.0], [b"3"], seq=9)
    groups, payloads = hub.fetch(f"{SRC}/a", oldest=10)
    assert [(g[3], len(g[4])) for g in groups] == [(5, 2), (9, 1)]
    assert payloads == [b"1", b"2", b"3"]
    with pytest.raises(
        RequestFailed,
        match="sequence number 9 is below the next one, 10",
    ):
        hub.put(ALICE, SRC, "a", [4.0], [b"4"], seq=9)
    hub.put(ALICE, SRC, "a", [4.0], [b"4"])  # without seq: the next number
    assert hub.fetch(f"{SRC}/a", newest=1)[0][0][3] == 10


def test_subscriber_is_told_of_a_mirror_hole_as_a_gap():
    hub = Hub()
    hub.open_source(ALICE, SRC)
    ch = hub.channel(hub.sources[SRC], "a", None)
    sub = Subscription(1, None, SRC, check_start("oldest"))
    hub.router.add(sub, hub.channels("*/*"))
    ch.store.append_many([1.0, 2.0], [b"1", b"2"], "origin", 0, seq=1)
    ch.store.append_many([9.0], [b"9"], "origin", 2, seq=9)
    cursors = list(sub.cursors.values())
    groups, _, gaps, n, _, _ = collect(cursors, 100, 10**6)
    assert (n, gaps) == (2, [])
    groups, _, gaps, n, _, _ = collect(cursors, 100, 10**6)
    ((cur, run),) = gaps
    assert (n, run.missed, run.first_seq, groups[0][3]) == (1, 6, 9, 9)


def test_evict_to_fit_takes_the_oldest_arrival_and_keeps_each_newest():
    a, b = Ring(100), Ring(100)
    a.append_many([1.0, 2.0], [b"x" * 10, b"x" * 10], "w", 0)
    b.append_many([3.0], [b"y" * 10], "w", 2)
    a.append_many([4.0], [b"x" * 10], "w", 3)
    frame = 10 + FRAME_OVERHEAD_BYTES
    freed = evict_to_fit([a, b], 4 * frame, 2 * frame)
    assert freed == 2 * frame
    assert numbers(a.oldest_n(10)) == [3] and numbers(b.oldest_n(10)) == [1]
    assert evict_to_fit([a, b], 2 * frame, 0) == 0  # each keeps its newest frame


def evict_frame_by_frame(rings: list[Ring], held: int, budget: int) -> int:
    """The eviction rule one frame at a time: what :func:`evict_to_fit` must match."""
    freed = 0
    while held - freed > budget:
        eligible = [r for r in rings if len(r) > 1]
        if not eligible:
            break
        freed += min(eligible, key=lambda r: r.oldest_arrival).evict(1)
    return freed


@settings(max_examples=200, deadline=None)
@given(
    puts=st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.integers(0, 300), min_size=1, max_size=20)),
        min_size=1,
        max_size=12,
    ),
    keep=st.floats(0, 1),
)
def test_evict_to_fit_frees_what_evicting_frame_by_frame_frees(puts, keep):
    def filled(one_by_one: bool) -> list[Ring]:
        # one_by_one: each frame appended alone, under a number of its own (a
        # put's frames share the put's number otherwise)
        rings, arrival = [Ring(10**6) for _ in range(3)], 0
        for i, sizes in puts:
            data = [b"x" * n for n in sizes]
            if one_by_one:
                for k, d in enumerate(data):
                    rings[i].append_many([0.0], [d], "w", arrival + k)
            else:
                rings[i].append_many([0.0] * len(data), data, "w", arrival)
            arrival += len(data)
        return rings

    fast, slow = filled(False), filled(True)
    held = sum(r.bytes for r in fast)
    budget = int(held * keep)
    assert evict_to_fit(fast, held, budget) == evict_frame_by_frame(slow, held, budget)
    assert [r.first_seq for r in fast] == [r.first_seq for r in slow]
    assert [r.bytes for r in fast] == [r.bytes for r in slow]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Query(NEWEST, 2), [11, 13]),
        (Query(OLDEST, 2), [1, 2]),
        (Query(AFTER, 2, max_frames=2), [3, 10]),
        (Query(TIME, 3.0, 8.0), [3, 10]),
        (Query(TIME, 11.0, 0), [11]),
    ],
)
def test_queries_answer_from_memory_now_and_later_alike(query, expected):
    ring = mirror()
    now = ring.read_now(query)
    assert now is not None and numbers(now) == expected
    assert numbers(trio.run(ring.read_later, query)) == expected
