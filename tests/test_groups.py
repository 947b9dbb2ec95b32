"""turbine.groups: cutting a received frames payload into frames."""

import tracemalloc

import pytest

from turbine._constants import VECTORED_MIN_BYTES
from turbine.groups import split_payload


def received(parts: list[bytes]) -> memoryview:
    """A payload as a large message's receive buffer hands it over: a bytearray's view."""
    return memoryview(bytearray(b"".join(parts)))[:]


@pytest.mark.parametrize("size", [64, 1024, 4096])
def test_small_and_middling_frames_come_out_as_bytes_of_their_own(size):
    parts = [bytes([i % 251]) * size for i in range(300)]
    frames = split_payload(received(parts), [size] * 300)
    assert frames == parts
    assert {type(f) for f in frames} == {bytes}
    whole = b"".join(parts)  # an exact bytes payload is sliced, as before
    assert split_payload(memoryview(whole), [size] * 300) == parts


def test_large_frames_stay_views_of_the_payload():
    parts = [b"a" * VECTORED_MIN_BYTES, b"b" * 10]
    frames = split_payload(received(parts), [VECTORED_MIN_BYTES, 10])
    assert [type(f) for f in frames] == [memoryview, memoryview]
    assert [bytes(f) for f in frames] == parts


def test_frames_of_1_kb_are_copied_out_without_a_copy_of_the_whole_payload():
    # A fresh process (the history fetch's) pays for every page it touches
    # first: a whole-payload copy before slicing doubled what it touched.
    parts = [bytes([i % 251]) * 1024 for i in range(1000)]
    payload = received(parts)
    tracemalloc.start()
    try:
        frames = split_payload(payload, [1024] * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == parts
    frames_bytes = sum(len(f) for f in frames)
    assert peak < 1.3 * frames_bytes, f"{peak} bytes allocated at the peak for {frames_bytes}"


@pytest.mark.parametrize("count", [2, 63, 64, 65, 128, 4096])
def test_frames_of_one_size_come_out_whole_at_any_count(count):
    parts = [bytes([i % 251]) * 100 for i in range(count)]
    frames = split_payload(received(parts), [100] * count)
    assert frames == parts
    assert {type(f) for f in frames} == {bytes}


def test_frames_of_different_sizes_are_cut_where_their_sizes_say():
    sizes = [64, 64, 3, 0, 64, 1000, 64]
    parts = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    assert split_payload(received(parts), sizes) == parts
    assert split_payload(memoryview(b"".join(parts)), sizes) == parts
    assert split_payload(received([b"", b""]), [0, 0]) == [b"", b""]
