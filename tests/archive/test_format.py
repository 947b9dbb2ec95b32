"""The archive's on-disk format: records, segment headers and index files round-trip; damage is seen."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turbine.archive import _format as fmt


def whole(buffers: list) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def parse(record: bytes) -> fmt.Record:
    head = fmt.parse_record_header(record)
    assert head is not None
    length, check = head
    body = memoryview(record)[fmt.RECORD_HEADER.size :]
    assert len(body) == length and fmt.crc(body) == check
    return fmt.decode_body(body)


def test_a_frames_record_round_trips():
    rec = whole(
        fmt.encode_record(fmt.frames_body(3, 41, [1.5, 2.5], [2, 3], "daq", [b"ab", b"cde"]))
    )
    got = parse(rec)
    assert isinstance(got, fmt.FramesRecord)
    assert (got.channel, got.first_seq, got.ts, got.sizes, got.writer) == (
        3,
        41,
        [1.5, 2.5],
        [2, 3],
        "daq",
    )
    assert [bytes(d) for d in got.data] == [b"ab", b"cde"]
    assert list(fmt.iter_frames(got))[1][:2] == (42, 2.5)


def test_channel_hole_and_source_records_round_trip():
    assert parse(whole(fmt.encode_record([fmt.channel_body(7, 100, "x.bin", "image/jpeg")]))) == (
        fmt.ChannelRecord(7, 100, "x.bin", "image/jpeg")
    )
    assert parse(whole(fmt.encode_record([fmt.hole_body(7, 5, 2**40)]))) == fmt.HoleRecord(
        7, 5, 2**40
    )
    settings = {"shared": True, "cache_bytes": 10}
    assert parse(whole(fmt.encode_record([fmt.source_body(settings)]))) == fmt.SourceRecord(
        settings
    )


@given(st.binary(min_size=1, max_size=60), st.integers(0, 59), st.integers(1, 255))
def test_a_flipped_byte_anywhere_in_a_record_is_seen(payload, where, flip):
    rec = bytearray(
        whole(fmt.encode_record(fmt.frames_body(1, 1, [0.0], [len(payload)], "w", [payload])))
    )
    where %= len(rec)
    rec[where] ^= flip
    head = fmt.parse_record_header(bytes(rec))
    if head is None:
        return  # the header's own checksum caught it
    length, check = head
    body = rec[fmt.RECORD_HEADER.size :]
    assert len(body) != length or fmt.crc(body) != check


def test_a_torn_header_is_not_a_record():
    rec = whole(fmt.encode_record([fmt.hole_body(1, 1, 1)]))
    assert fmt.parse_record_header(rec[:10]) is None


def test_segment_header_round_trips_and_refuses_newer_versions():
    head = fmt.encode_segment_header(12, 1700000000.25)
    assert fmt.decode_segment_header(head) == (12, 1700000000.25)
    newer = bytearray(head)
    newer[8] = fmt.FORMAT_VERSION + 1
    newer[28:32] = fmt.crc(bytes(newer[:28])).to_bytes(4, "little")
    with pytest.raises(fmt.FormatError, match="newer than this Turbine reads"):
        fmt.decode_segment_header(bytes(newer))
    with pytest.raises(fmt.FormatError, match="bad magic"):
        fmt.decode_segment_header(b"x" * 32)
    damaged = bytearray(head)
    damaged[20] ^= 1
    with pytest.raises(fmt.FormatError, match="checksum"):
        fmt.decode_segment_header(bytes(damaged))


def test_an_index_round_trips_and_its_damage_is_seen():
    spans = [fmt.ChannelSpan(1, 10, 20, 10, 1000, 1.0, 2.0)]
    entries = [fmt.Entry(32, 100, fmt.FRAMES, 1, 10, 10, 1.0, 2.0)]
    data = fmt.encode_index(4, 5000, spans, entries)
    number, covered, got_spans, n, at = fmt.decode_index_head(data)
    assert (number, covered, got_spans, n) == (4, 5000, spans, 1)
    assert fmt.decode_index_entries(data[at:], n) == entries
    with pytest.raises(fmt.FormatError):
        fmt.decode_index_entries(data[at:-1], n)
    damaged = bytearray(data)
    damaged[40] ^= 1
    with pytest.raises(fmt.FormatError):
        fmt.decode_index_head(bytes(damaged))


@given(st.binary(max_size=20_000), st.integers(0, 2**32 - 1), st.integers(0, 64))
def test_the_checksum_is_zlibs_crc32_that_any_reader_has(data, start, skip):
    # docs/storage.rst tells readers without Turbine to check records with zlib.crc32
    view = memoryview(data)[skip:]
    assert fmt.crc(view, start) == zlib.crc32(view, start)
    assert fmt.crc(data) == zlib.crc32(data)
