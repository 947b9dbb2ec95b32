"""A ring keeps each put's payload whole: reads, eviction and memory, against frames one by one."""

from __future__ import annotations

import gc
import weakref

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import turbine
from turbine._constants import FRAME_OVERHEAD_BYTES, JOIN_BELOW_BYTES, RING_SLACK_BYTES
from turbine._io import coalesce
from turbine.groups import split_frames
from turbine.payloads import Payloads, PutBuffers, buffers_of, cut
from turbine.protocol import encode_frames
from turbine.ringbuffer import Ring
from turbine.router import add_run
from turbine.testing import open_broker


class Buffer(bytearray):  # a put's payload the tests can watch being freed
    pass


def put_of(frames: list[bytes]) -> tuple[Payloads, Buffer]:
    """``frames`` as a put's payload arrives: one buffer, back to back."""
    buf = Buffer(b"".join(frames))
    return Payloads([memoryview(buf)], [len(f) for f in frames]), buf


def as_bytes(data) -> list[bytes]:
    return [bytes(d) for d in data]


def test_a_put_is_one_buffer_and_a_read_of_it_one_slice_written_as_one_iovec():
    frames = [bytes([i % 251]) * 64 for i in range(4096)]
    ring = Ring(10_000)
    data, _ = put_of(frames)
    ring.append_many([0.0] * 4096, data, "w", 0, data.sizes)
    assert len(ring._data.buffers) == 1  # noqa: SLF001 - one object a put, not 4,096
    run = ring.read(1, 10_000)
    assert as_bytes(run.data) == frames
    groups: list = []
    payloads: list = []
    add_run(groups, payloads, _Channel(), run)
    assert len(payloads) == 1 and len(payloads[0]) == 64 * 4096
    wire = coalesce(encode_frames(1, groups, payloads))
    assert len(wire) == 2 and wire[1].obj is data.buffers[0].obj  # header, then the put uncopied
    assert len(payloads[0]) >= JOIN_BELOW_BYTES


class _Channel:
    source_name, name, content_type = "daq_x_data_source", "c", "application/octet-stream"


def test_a_read_from_inside_a_put_slices_it_and_across_puts_takes_each():
    ring = Ring(100)
    for k in range(3):
        data, _ = put_of([b"%d.%d" % (k, i) for i in range(5)])
        ring.append_many([float(k)] * 5, data, "w", 5 * k, data.sizes)
    run = ring.read(4, 6)  # frames 4-9: the end of the first put, all but the last of the second
    assert as_bytes(run.data) == [b"0.3", b"0.4", b"1.0", b"1.1", b"1.2", b"1.3"]
    assert [bytes(b) for b in buffers_of(run.data)] == [b"0.30.4", b"1.01.11.21.3"]
    assert bytes(ring.newest) == b"2.4"
    assert as_bytes(ring.newest_n(1).data) == [b"2.4"]
    assert as_bytes(ring.from_seq(9, 3).data) == [b"1.3", b"1.4", b"2.0"]


def test_a_puts_buffer_is_freed_with_its_last_frame():
    ring = Ring(100)
    data, buf = put_of([b"a" * 10, b"b" * 10, b"c" * 10])
    gone = weakref.ref(buf)
    del buf
    ring.append_many([1.0, 2.0, 3.0], data, "w", 0, data.sizes)
    del data
    ring.append_many([4.0], [b"d"], "w", 3)
    ring.evict(2)
    assert gone() is not None  # frame 3 still lies in it
    assert as_bytes(ring.read(1, 10).data) == [b"c" * 10, b"d"]
    ring.evict(1)
    assert gone() is None  # freed by its reference count, no collection needed
    assert ring.bytes == 1 + FRAME_OVERHEAD_BYTES


def test_a_large_evicted_part_of_a_put_is_not_held_for_its_small_rest():
    big, small = b"x" * (2 * RING_SLACK_BYTES), b"tail"
    ring = Ring(100)
    data, buf = put_of([big, small])
    gone = weakref.ref(buf)
    del buf
    ring.append_many([1.0, 2.0], data, "w", 0, data.sizes)
    del data
    ring.append_many([3.0], [b"next"], "w", 2)
    assert ring.evict_oldest(1) == len(big) + FRAME_OVERHEAD_BYTES
    assert gone() is None  # the small frame was copied out; the large buffer is gone
    assert as_bytes(ring.read(1, 10).data) == [small, b"next"]
    assert ring.bytes == len(small) + 4 + 2 * FRAME_OVERHEAD_BYTES


def test_payloads_are_a_sequence_of_the_frames():
    data = Payloads([b"abc", memoryview(b"defg")], [1, 0, 2, 3, 1, 0])
    assert as_bytes(data) == [b"a", b"", b"bc", b"def", b"g", b""]
    assert len(data) == 6 and bytes(data[3]) == b"def" and bytes(data[-1]) == b""
    assert as_bytes(data[2:5]) == [b"bc", b"def", b"g"]
    assert data[2:5] == [b"bc", b"def", b"g"] and data != [b"a"]
    assert [bytes(b) for b in data[2:5].buffers] == [b"bc", b"defg"]


@given(
    lens=st.lists(st.integers(0, 6), max_size=8),
    lo=st.integers(0, 50),
    n=st.integers(0, 50),
)
def test_cut_takes_the_bytes_asked_for(lens, lo, n):
    whole = bytes(range(sum(lens)))
    buffers, pos = [], 0
    for size in lens:
        buffers.append(whole[pos : pos + size])
        pos += size
    assert b"".join(map(bytes, cut(buffers, lo, lo + n))) == whole[lo : lo + n]


@settings(max_examples=300, deadline=None)
@given(
    puts=st.lists(
        st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.sampled_from("pls")),
        max_size=12,
    ),
    max_frames=st.integers(1, 40),
    evictions=st.lists(st.integers(1, 400), max_size=6),
    reads=st.lists(st.tuples(st.integers(1, 150), st.integers(1, 30)), max_size=5),
)
def test_a_ring_of_whole_puts_reads_and_evicts_as_one_of_frames_one_by_one(
    puts, max_frames, evictions, reads
):
    """Puts kept whole (p), as a list per frame (l) or as a slice across buffers (s)
    read back, evict and count bytes exactly as the same frames one by one."""
    whole, single = Ring(max_frames), Ring(max_frames)
    n = 0
    for sizes, form in puts:
        frames = [bytes([(n + i) % 251]) * s for i, s in enumerate(sizes)]
        ts = [float(n + i) for i in range(len(sizes))]
        if form == "p":
            data = put_of(frames)[0]
        elif form == "l":
            data = list(frames)
        else:
            data = Payloads(cut([b"".join(frames[:1]), b"".join(frames[1:])], 0, sum(sizes)), sizes)
        whole.append_many(ts, data, "w", n, list(sizes))
        for i, frame in enumerate(frames):
            single.append_many([ts[i]], [frame], "w", n + i)
        n += len(sizes)
        for needed in evictions[:1]:
            assert whole.evict_oldest(needed) == single.evict_oldest(needed)
        assert whole.bytes == single.bytes and len(whole) == len(single)
        for seq, count in reads:
            a, b = whole.read(seq, count), single.read(seq, count)
            assert (a.first_seq, a.missed, a.sizes) == (b.first_seq, b.missed, b.sizes)
            assert as_bytes(a.data) == as_bytes(b.data)
            assert b"".join(map(bytes, buffers_of(a.data))) == b"".join(as_bytes(b.data))
            assert as_bytes(whole.newest_n(count).data) == as_bytes(single.newest_n(count).data)
        if len(whole):
            assert bytes(whole.newest) == bytes(single.newest)
    for count in evictions:
        assert whole.evict(count) == single.evict(count)
        assert as_bytes(whole.oldest_n(1000).data) == as_bytes(single.oldest_n(1000).data)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=40),
    split=st.lists(st.integers(0, 400), max_size=4),
    max_frames=st.integers(1, 10),
    max_bytes=st.integers(1, 100),
)
def test_parts_of_a_delivery_carry_the_frames_whatever_buffers_they_lie_in(
    sizes, split, max_frames, max_bytes
):
    frames = [bytes([i % 251]) * s for i, s in enumerate(sizes)]
    whole = b"".join(frames)
    cuts = sorted({0, len(whole), *(c for c in split if c < len(whole))})
    buffers = [whole[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    groups = [["s", "c", "t", 1, [0.0] * len(sizes), list(sizes), "w"]]
    got = []
    for part, part_payloads in split_frames(groups, buffers, max_frames, max_bytes):
        body = b"".join(map(bytes, part_payloads))
        assert len(body) == sum(sum(g[5]) for g in part)
        pos = 0
        for g in part:
            for k, size in enumerate(g[5]):
                got.append((g[3] + k, body[pos : pos + size]))
                pos += size
    assert got == [(i + 1, f) for i, f in enumerate(frames)]


async def test_a_ring_keeps_single_frame_puts_as_objects_the_cycle_collector_never_walks():
    """A put of one frame arrives as a view of a bytes object of its own: the ring
    keeps that bytes object, which the cycle collector does not track (a view per
    put kept by the million made every full collection walk them all: 313 ms for
    1,000,000), and its frames read back the same."""
    with trio.fail_after(10):
        async with open_broker() as address, turbine.open_client(address) as tb:
            src = await tb.open_source(
                "daq_gc_data_source", channels={"x": "application/octet-stream"}
            )
            frames = [bytes([i]) * 1000 for i in range(20)]
            for frame in frames:
                await src.put("x", frame)
                await src.flush()
            (kept,) = [
                o for o in gc.get_objects() if isinstance(o, PutBuffers) and len(o.buffers) == 20
            ]
            assert [type(b) for b in kept.buffers] == [bytes] * 20
            assert not any(gc.is_tracked(b) for b in kept.buffers)
            got = await tb.fetch("daq_gc_data_source/x", newest=20)
            assert [f.data for f in got] == frames
