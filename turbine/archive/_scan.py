"""Reading a segment file record by record, checksums verified: recovery's scan.

A scan finds each record's bounds and checks both its checksums; after
damage it looks for the next intact record; the bytes after the last one are
the torn tail (a write a crash cut short, or the zeros padding a direct
write's last block).  Blocking: runs in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs

from . import _format as fmt
from ._append import BLOCK

#: Bytes read at a time when a segment is scanned (records longer are read whole).
SCAN_CHUNK = 8 * 2**20


@attrs.frozen
class Damage:
    """Bytes of a segment that failed their checksum (or were missing), for status and gaps."""

    segment: int
    offset: int
    length: int
    reason: str


@attrs.define
class Scan:
    """What a scan of a segment found, in file order."""

    entries: list[fmt.Entry] = attrs.Factory(list)
    channels: dict[int, fmt.ChannelRecord] = attrs.Factory(dict)
    settings: dict[str, Any] | None = None
    #: Producers' newest stored put numbers (the preamble's table, then each update).
    producers: dict[str, int] = attrs.Factory(dict)
    end: int = fmt.SEGMENT_HEADER.size  # offset after the last good record
    damage: list[Damage] = attrs.Factory(list)
    torn: int = 0  # bytes after the last good record that hold no good record
    #: Whether those are only the zeros padding a direct write's last block (``_append.py``).
    padding: bool = False


def read_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _records(fd: int, start: int, size: int) -> Iterator[tuple[int, int, memoryview | None]]:
    """``(offset, body length, body or None if damaged)`` for each record from ``start``.

    A record that fails its checksum yields ``None``; the scan then looks for
    the next record header whose own and body checksums hold.  The bytes from
    the last good record to the end that hold none end the iteration.
    """
    buf = b""
    base = start  # file offset of buf[0]
    at = start
    while at + fmt.RECORD_HEADER.size <= size:
        if at + fmt.RECORD_HEADER.size > base + len(buf):
            base, buf = at, read_exact(fd, min(SCAN_CHUNK, size - at), at)
        head = fmt.parse_record_header(buf, at - base)
        body = None
        length = 0
        if head is not None:
            length, check = head
            end = at + fmt.RECORD_HEADER.size + length
            if end <= size:
                if end > base + len(buf):
                    if length >= SCAN_CHUNK:
                        body = memoryview(read_exact(fd, length, at + fmt.RECORD_HEADER.size))
                    else:
                        base, buf = (
                            at,
                            read_exact(fd, min(max(SCAN_CHUNK, end - at), size - at), at),
                        )
                if body is None:
                    lo = at - base + fmt.RECORD_HEADER.size
                    body = memoryview(buf)[lo : lo + length]
                if len(body) != length or fmt.crc(body) != check:
                    body = None
        if body is not None:
            yield at, length, body
            at += fmt.RECORD_HEADER.size + length
            continue
        found = _resync(fd, at + 1, size)
        if found is None:
            return
        yield at, found - at - fmt.RECORD_HEADER.size, None
        at = found
        buf, base = b"", at


def _resync(fd: int, start: int, size: int) -> int | None:
    """Offset of the next intact record at or after ``start``, or ``None``."""
    at = start
    while at < size:
        chunk = read_exact(fd, min(SCAN_CHUNK + fmt.RECORD_HEADER.size, size - at), at)
        i = chunk.find(fmt.RECORD_MAGIC)
        while i >= 0:
            head = fmt.parse_record_header(chunk, i)
            if head is not None:
                length, check = head
                body_at = at + i + fmt.RECORD_HEADER.size
                if body_at + length <= size:
                    body = read_exact(fd, length, body_at)
                    if fmt.crc(body) == check:
                        return at + i
            i = chunk.find(fmt.RECORD_MAGIC, i + 1)
        at += SCAN_CHUNK
    return None


def has_record(fd: int, size: int) -> bool:
    """Whether the segment holds at least one intact record (reads up to the first)."""
    return any(body is not None for _, _, body in _records(fd, fmt.SEGMENT_HEADER.size, size))


def scan(fd: int, number: int, size: int) -> Scan:
    """Read every record of a segment, verifying checksums; note damage and a torn tail."""
    out = Scan()
    unconfirmed: tuple[int, int] | None = None  # (offset, entries) of PRODUCED frames so far
    for offset, length, body in _records(fd, fmt.SEGMENT_HEADER.size, size):
        if body is None:
            out.damage.append(Damage(number, offset, length + fmt.RECORD_HEADER.size, "checksum"))
            continue
        try:
            rec = fmt.summarize_body(body)
        except fmt.FormatError as exc:
            out.damage.append(Damage(number, offset, length + fmt.RECORD_HEADER.size, str(exc)))
            continue
        out.end = offset + fmt.RECORD_HEADER.size + length
        if isinstance(rec, fmt.FramesSummary):
            if rec.produced and unconfirmed is None:
                unconfirmed = (offset, len(out.entries))
            out.entries.append(
                fmt.Entry(
                    offset,
                    length,
                    fmt.FRAMES,
                    rec.channel,
                    rec.count,
                    rec.first_seq,
                    rec.first_time,
                    rec.last_time,
                )
            )
        elif isinstance(rec, fmt.HoleRecord):
            out.entries.append(
                fmt.Entry(offset, length, fmt.HOLE, rec.channel, rec.count, rec.first_seq, 0.0, 0.0)
            )
        elif isinstance(rec, fmt.ChannelRecord):
            out.channels[rec.channel] = rec
        elif isinstance(rec, fmt.ProducersRecord):
            unconfirmed = None
            for producer, pseq in rec.table.items():
                out.producers.pop(producer, None)  # most recent last, as the hub keeps them
                out.producers[producer] = pseq
        else:
            out.settings = rec.settings
    if unconfirmed is not None:
        # The write that ends here lost the producer record of its last put: without
        # it a replay of that put would be stored twice, so its frames go too (never
        # acknowledged: the producer still has them).
        out.end, count = unconfirmed
        del out.entries[count:]
    out.torn = size - out.end
    if 0 < out.torn < BLOCK and (out.end + out.torn) % BLOCK == 0:
        out.padding = not any(read_exact(fd, out.torn, out.end))
    if out.damage and out.damage[-1].offset >= out.end:
        out.damage.pop()  # damage after the last good record is the torn tail itself
    return out
