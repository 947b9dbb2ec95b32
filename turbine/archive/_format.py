"""The archive's on-disk format, pure: encode and decode, no I/O.

``docs/storage.rst`` describes every byte written here; keep the two in step
and raise :data:`FORMAT_VERSION` on any change a reader of the old format
would misread.

Integers are little-endian.  A segment file is a :data:`SEGMENT_HEADER`
followed by records; a record is a :data:`RECORD_HEADER` (magic, body length,
CRC-32 of the body, CRC-32 of the header's first 12 bytes) and its body.  The
header has its own checksum so that a damaged body does not make its length
untrustworthy, and the magic lets a scan find the next record after damage.
"""

from __future__ import annotations

import array
import json
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from isal.isal_zlib import crc32

from ..payloads import buffers_of

#: Version written in every segment and index header; readers refuse newer ones.
FORMAT_VERSION = 1

SEGMENT_MAGIC = b"TURBSEG\n"
INDEX_MAGIC = b"TURBIDX\n"
SUMMARY_MAGIC = b"TURBSUM\n"
RECORD_MAGIC = b"TRec"

#: magic, version, flags, segment number, created (epoch seconds), CRC-32 of the first 28 bytes.
SEGMENT_HEADER = struct.Struct("<8sHHQdI")
#: magic, body length, CRC-32 of the body, CRC-32 of the first 12 bytes of this header.
RECORD_HEADER = struct.Struct("<4sIII")

FRAMES, CHANNEL, HOLE, SOURCE, PRODUCERS = 1, 2, 3, 4, 5
KIND_NAMES = {
    FRAMES: "frames",
    CHANNEL: "channel",
    HOLE: "hole",
    SOURCE: "source",
    PRODUCERS: "producers",
}

#: kind, channel id, first seq, frame count, writer name length, flags.
_FRAMES = struct.Struct("<B3xIQIHBx")
#: Frames flag: the put's producers record follows in the same write; the frames
#: count only with it (a tail that lost it is cut at recovery: the producer,
#: never acknowledged, sends the put again).  Older readers ignore the byte.
PRODUCED = 1
#: kind, channel id, next seq, name length, content type length.
_CHANNEL = struct.Struct("<B3xIQHH4x")
#: kind, channel id, first seq, count.
_HOLE = struct.Struct("<B3xIQQ")
#: kind, JSON length (a source record and a producers record).
_SOURCE = struct.Struct("<B3xI")

#: magic, version, flags, segment number, segment bytes described, channels, entries.
INDEX_HEADER = struct.Struct("<8sHHQQII")
#: channel id, first seq, end seq (one past the last number covered), frames,
#: payload bytes, first time, last time.
INDEX_CHANNEL = struct.Struct("<IQQQQdd")
#: record offset, body length, kind, channel id, count, first seq, first time, last time.
INDEX_ENTRY = struct.Struct("<QIB3xIQQdd")
_CRC = struct.Struct("<I")

#: Largest record body; a put of more is split into several records.
MAX_RECORD_BODY = 2**31

assert sys.byteorder == "little", "the array columns below are written in host order"


class FormatError(ValueError):
    """Bytes on disk are not what the format says (damage, or another program's file)."""


def crc(data: Any, value: int = 0) -> int:
    """CRC-32 (zlib's, ISO-HDLC) of ``data``, continuing from ``value``.

    ISA-L's implementation: the same checksum as ``zlib.crc32``, computed with
    carry-less multiplication; 24 GB/s against zlib's 2.8 on the benchmark
    machine, where zlib's was the largest CPU cost of writing the archive
    (7 % of the broker's CPU in the 100 KB row, after the page cache's).
    """
    return crc32(data, value)


# --- segment header


def encode_segment_header(number: int, created: float) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, number, created, 0)[:-4]
    return head + _CRC.pack(crc(head))


def decode_segment_header(data: bytes) -> tuple[int, float]:
    """Return ``(segment number, created)``.

    Raises:
        FormatError: not a segment header, damaged, or a newer format version.
    """
    if len(data) < SEGMENT_HEADER.size:
        raise FormatError("segment header is truncated")
    magic, version, _flags, number, created, check = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise FormatError("not a Turbine segment file (bad magic)")
    if check != crc(data[: SEGMENT_HEADER.size - 4]):
        raise FormatError("segment header checksum mismatch")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"segment format version {version} is newer than this Turbine reads "
            f"({FORMAT_VERSION}); upgrade Turbine"
        )
    return number, created


# --- records


def record_header(body_len: int, body_crc: int) -> bytes:
    head = struct.pack("<4sII", RECORD_MAGIC, body_len, body_crc)
    return head + _CRC.pack(crc(head))


def parse_record_header(data: Any, offset: int = 0) -> tuple[int, int] | None:
    """``(body length, body CRC)`` of the record header at ``offset``, or ``None`` if not one."""
    if len(data) - offset < RECORD_HEADER.size:
        return None
    magic, length, body_crc, check = RECORD_HEADER.unpack_from(data, offset)
    if magic != RECORD_MAGIC or check != crc(data[offset : offset + 12]):
        return None
    return length, body_crc


def frames_body(
    channel: int,
    first_seq: int,
    ts: list[float],
    sizes: list[int],
    writer: str,
    data: Sequence[Any],
    flags: int = 0,
) -> list[Any]:
    """The body of a frames record, as buffers to write in order (payloads are not copied)."""
    w = writer.encode()[:65535]
    fixed = _FRAMES.pack(FRAMES, channel, first_seq, len(ts), len(w), flags)
    ts_col, sizes_col = array.array("d", ts).tobytes(), array.array("I", sizes).tobytes()
    return [b"".join((fixed, ts_col, sizes_col, w)), *buffers_of(data)]  # (one CRC call for those)


def channel_body(channel: int, next_seq: int, name: str, content_type: str) -> bytes:
    n, c = name.encode(), content_type.encode()
    return _CHANNEL.pack(CHANNEL, channel, next_seq, len(n), len(c)) + n + c


def hole_body(channel: int, first_seq: int, count: int) -> bytes:
    return _HOLE.pack(HOLE, channel, first_seq, count)


def source_body(settings: dict[str, Any]) -> bytes:
    text = json.dumps(settings, sort_keys=True).encode()
    return _SOURCE.pack(SOURCE, len(text)) + text


def producers_body(table: dict[str, int]) -> bytes:
    text = json.dumps(table).encode()
    return _SOURCE.pack(PRODUCERS, len(text)) + text


def record_head(body: list[Any]) -> tuple[bytes, int]:
    """The header of the record of ``body`` (buffers: the CRC runs over them in order)
    and the body's length."""
    check = 0
    length = 0
    for b in body:
        check = crc(b, check)
        length += len(b)
    return record_header(length, check), length


def encode_record(body: list[Any]) -> list[Any]:
    """Header and body buffers of one record."""
    return [record_head(body)[0], *body]


@attrs.frozen
class FramesRecord:
    channel: int
    first_seq: int
    ts: list[float]
    sizes: list[int]
    writer: str
    data: list[memoryview]


@attrs.frozen
class ChannelRecord:
    channel: int
    next_seq: int
    name: str
    content_type: str


@attrs.frozen
class HoleRecord:
    channel: int
    first_seq: int
    count: int


@attrs.frozen
class SourceRecord:
    settings: dict[str, Any]


@attrs.frozen
class ProducersRecord:
    """Producers' newest stored put numbers (``pseq``), each updating the ones before."""

    table: dict[str, int]


Record = FramesRecord | ChannelRecord | HoleRecord | SourceRecord | ProducersRecord


def _column(code: str, raw: memoryview) -> list[Any]:
    col = array.array(code)
    col.frombytes(raw)
    return col.tolist()


def decode_body(body: Any) -> Record:
    """Decode a record body whose checksum has been verified.

    Raises:
        FormatError: the body is not a record this version knows.
    """
    mv = memoryview(body)
    if not len(mv):
        raise FormatError("empty record body")
    kind = mv[0]
    try:
        if kind == FRAMES:
            _, ch, first, n, wlen, _ = _FRAMES.unpack_from(mv)
            at = _FRAMES.size
            ts = _column("d", mv[at : at + 8 * n])
            at += 8 * n
            sizes = _column("I", mv[at : at + 4 * n])
            at += 4 * n
            writer = bytes(mv[at : at + wlen]).decode(errors="replace")
            at += wlen
            data = []
            for s in sizes:
                data.append(mv[at : at + s])
                at += s
            if at != len(mv) or len(ts) != n or len(sizes) != n:
                raise FormatError("frames record length does not match its sizes")
            return FramesRecord(ch, first, ts, sizes, writer, data)
        if kind == CHANNEL:
            _, ch, next_seq, nlen, clen = _CHANNEL.unpack_from(mv)
            at = _CHANNEL.size
            name = bytes(mv[at : at + nlen]).decode()
            ctype = bytes(mv[at + nlen : at + nlen + clen]).decode()
            return ChannelRecord(ch, next_seq, name, ctype)
        if kind == HOLE:
            _, ch, first, count = _HOLE.unpack_from(mv)
            return HoleRecord(ch, first, count)
        if kind == SOURCE:
            _, jlen = _SOURCE.unpack_from(mv)
            return SourceRecord(json.loads(bytes(mv[_SOURCE.size : _SOURCE.size + jlen])))
        if kind == PRODUCERS:
            _, jlen = _SOURCE.unpack_from(mv)
            table = json.loads(bytes(mv[_SOURCE.size : _SOURCE.size + jlen]))
            if not isinstance(table, dict) or not all(type(v) is int for v in table.values()):
                raise ValueError("not an object of put numbers")
            return ProducersRecord(table)
    except (struct.error, ValueError) as exc:
        raise FormatError(f"bad {KIND_NAMES.get(kind, kind)} record: {exc}") from None
    raise FormatError(f"unknown record kind {kind}")


@attrs.frozen
class FramesSummary:
    channel: int
    first_seq: int
    count: int
    first_time: float
    last_time: float
    produced: bool = False  # its producers record is to follow (PRODUCED)


def summarize_body(
    body: Any,
) -> FramesSummary | ChannelRecord | HoleRecord | SourceRecord | ProducersRecord:
    """Like :func:`decode_body`, but a frames record is summarized without slicing payloads.

    Raises:
        FormatError: the body is not a record this version knows.
    """
    mv = memoryview(body)
    if not len(mv) or mv[0] != FRAMES:
        rec = decode_body(mv)
        assert not isinstance(rec, FramesRecord)
        return rec
    try:
        _, ch, first, n, wlen, flags = _FRAMES.unpack_from(mv)
        at = _FRAMES.size
        ts = _column("d", mv[at : at + 8 * n])
        sizes = _column("I", mv[at + 8 * n : at + 12 * n])
    except (struct.error, ValueError) as exc:
        raise FormatError(f"bad frames record: {exc}") from None
    if not n or len(ts) != n or at + 12 * n + wlen + sum(sizes) != len(mv):
        raise FormatError("frames record length does not match its sizes")
    return FramesSummary(ch, first, n, ts[0], ts[-1], bool(flags & PRODUCED))


# --- index files


@attrs.define
class ChannelSpan:
    """What one segment holds of one channel."""

    channel: int
    first_seq: int
    end_seq: int  # one past the last sequence number covered (frames or holes)
    frames: int = 0
    bytes: int = 0
    first_time: float = float("inf")
    last_time: float = float("-inf")


@attrs.frozen
class Entry:
    """One frames or hole record of a segment, as its index lists it."""

    offset: int
    body_len: int
    kind: int
    channel: int
    count: int
    first_seq: int
    first_time: float
    last_time: float

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    def placed(self, offset: int, body_len: int) -> Entry:
        """This entry at ``offset`` with ``body_len`` (``attrs.evolve`` takes 2.5x as long)."""
        e = self
        return Entry(
            offset, body_len, e.kind, e.channel, e.count, e.first_seq, e.first_time, e.last_time
        )


def encode_index(
    number: int, covered: int, spans: list[ChannelSpan], entries: list[Entry]
) -> bytes:
    head = INDEX_HEADER.pack(
        INDEX_MAGIC, FORMAT_VERSION, 0, number, covered, len(spans), len(entries)
    )
    head += b"".join(
        INDEX_CHANNEL.pack(
            s.channel, s.first_seq, s.end_seq, s.frames, s.bytes, s.first_time, s.last_time
        )
        for s in spans
    )
    body = b"".join(
        INDEX_ENTRY.pack(
            e.offset, e.body_len, e.kind, e.channel, e.count, e.first_seq, e.first_time, e.last_time
        )
        for e in entries
    )
    return head + _CRC.pack(crc(head)) + body + _CRC.pack(crc(body))


def decode_index_head(data: bytes) -> tuple[int, int, list[ChannelSpan], int, int]:
    """``(segment number, covered bytes, spans, entry count, entries offset)`` of an index file.

    Only the head is checked: the entries are read when a read needs them.

    Raises:
        FormatError: not an index, damaged, or a newer format version.
    """
    if len(data) < INDEX_HEADER.size + 4:
        raise FormatError("index file is truncated")
    magic, version, _f, number, covered, nch, nent = INDEX_HEADER.unpack_from(data)
    if magic != INDEX_MAGIC:
        raise FormatError("not a Turbine index file (bad magic)")
    if version > FORMAT_VERSION:
        raise FormatError(f"index format version {version} is newer than this Turbine reads")
    end = INDEX_HEADER.size + nch * INDEX_CHANNEL.size
    if len(data) < end + 4 or _CRC.unpack_from(data, end)[0] != crc(data[:end]):
        raise FormatError("index head checksum mismatch")
    spans = [
        ChannelSpan(*INDEX_CHANNEL.unpack_from(data, INDEX_HEADER.size + i * INDEX_CHANNEL.size))
        for i in range(nch)
    ]
    return number, covered, spans, nent, end + 4


def decode_index_entries(data: bytes, count: int) -> list[Entry]:
    """Decode ``count`` entries and their trailing checksum.

    Raises:
        FormatError: truncated or damaged.
    """
    size = count * INDEX_ENTRY.size
    if len(data) < size + 4 or _CRC.unpack_from(data, size)[0] != crc(data[:size]):
        raise FormatError("index entries checksum mismatch")
    return [Entry(*t) for t in INDEX_ENTRY.iter_unpack(data[:size])]


# --- summary files: the block summaries of a segment's float64 channels


#: magic, version, flags, segment number, CRC-32 of the first 20 bytes.
SUMMARY_HEADER = struct.Struct("<8sHHQI")
#: A batch of one channel's blocks: channel id, block count ``n``, CRC-32 of the
#: columns, CRC-32 of the first 12 bytes of this header; then the columns.
SUMMARY_BATCH = struct.Struct("<IIII")
#: The columns of a batch, ``n`` values each, in this order and of these array
#: typecodes (``q``: signed 64-bit, ``d``: f64): first seq, end seq (one past the
#: block's last frame), first time, last time, samples, min, max, first, last value.
SUMMARY_COLUMNS = "qqddddddd"


def encode_summary_header(number: int) -> bytes:
    head = SUMMARY_HEADER.pack(SUMMARY_MAGIC, FORMAT_VERSION, 0, number, 0)[:-4]
    return head + _CRC.pack(crc(head))


def encode_summary_batch(channel: int, blocks: list[tuple[Any, ...]]) -> bytes:
    """One batch record of ``blocks`` (each a :data:`turbine.summary.Block`) of ``channel``."""
    body = b"".join(
        array.array(code, column).tobytes()
        for code, column in zip(SUMMARY_COLUMNS, zip(*blocks, strict=True), strict=True)
    )
    head = struct.pack("<III", channel, len(blocks), crc(body))
    return head + _CRC.pack(crc(head)) + body


def decode_summaries(
    data: bytes, number: int
) -> tuple[list[tuple[int, list[array.array[Any]]]], int]:
    """The batches of segment ``number``'s summary file, in file order, each as its
    channel id and its columns (arrays, :data:`SUMMARY_COLUMNS`), and the length of
    its intact part: reading stops at the first batch that fails its checksums (a
    torn tail: the blocks after it are made again from the frames).

    Raises:
        FormatError: not the summary file of segment ``number``, or of a newer version.
    """
    if len(data) < SUMMARY_HEADER.size:
        raise FormatError("summary file is truncated")
    magic, version, _flags, got, check = SUMMARY_HEADER.unpack_from(data)
    if magic != SUMMARY_MAGIC or check != crc(data[: SUMMARY_HEADER.size - 4]):
        raise FormatError("not a Turbine summary file (bad magic or checksum)")
    if version > FORMAT_VERSION:
        raise FormatError(f"summary format version {version} is newer than this Turbine reads")
    if got != number:
        raise FormatError(f"the summary file names segment {got}, not {number}")
    mv = memoryview(data)
    out: list[tuple[int, list[array.array[Any]]]] = []
    at = SUMMARY_HEADER.size
    width = 8 * len(SUMMARY_COLUMNS)
    while at + SUMMARY_BATCH.size <= len(data):
        channel, n, body_crc, head_crc = SUMMARY_BATCH.unpack_from(data, at)
        body_at = at + SUMMARY_BATCH.size
        end = body_at + n * width
        if head_crc != crc(mv[at : at + 12]) or end > len(data) or body_crc != crc(mv[body_at:end]):
            break
        columns = []
        for i, code in enumerate(SUMMARY_COLUMNS):
            column = array.array(code)
            column.frombytes(mv[body_at + i * 8 * n : body_at + (i + 1) * 8 * n])
            columns.append(column)
        out.append((channel, columns))
        at = end
    return out, at


def iter_frames(rec: FramesRecord) -> Iterator[tuple[int, float, memoryview]]:
    for i, (t, d) in enumerate(zip(rec.ts, rec.data, strict=True)):
        yield rec.first_seq + i, t, d
