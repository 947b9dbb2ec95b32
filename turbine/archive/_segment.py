"""One segment file of a source's log, and its index: blocking file I/O, no trio.

Everything here runs in a worker thread (or in tests, directly).  A segment
is appended to until it is sealed; sealing writes its index file, so that
recovery reads the index and never the segment's payloads.
"""

from __future__ import annotations

import bisect
import errno
import os
from typing import Any

from .._files import fsync_dir
from . import _format as fmt
from ._append import DirectAppender, write_all
from ._scan import Scan, read_exact, scan


def segment_name(number: int) -> str:
    return f"{number:016d}.seg"


def index_name(number: int) -> str:
    return f"{number:016d}.idx"


def summary_name(number: int) -> str:
    return f"{number:016d}.sum"


def spans_of(entries: list[fmt.Entry]) -> dict[int, fmt.ChannelSpan]:
    spans: dict[int, fmt.ChannelSpan] = {}
    for e in entries:
        _extend_span(spans, e)
    return spans


class Records:
    """Records to append to a segment at offset ``start``: their buffers in order
    (payloads not copied), and the index entries of the frames and hole records
    among them, each made once where it lands."""

    __slots__ = ("at", "bufs", "entries", "start")

    def __init__(self, start: int) -> None:
        self.start = self.at = start  # (``at``: where the next record goes)
        self.bufs: list[Any] = []
        self.entries: list[fmt.Entry] = []

    @property
    def size(self) -> int:
        return self.at - self.start

    def add(self, body: list[Any], entry: tuple[Any, ...] | None = None) -> None:
        """Add the record of ``body``; ``entry``: its index entry's fields after the
        offset and body length (a frames or hole record)."""
        head, length = fmt.record_head(body)
        if entry is not None:
            self.entries.append(fmt.Entry(self.at, length, *entry))
        self.bufs.append(head)
        self.bufs += body
        self.at += len(head) + length


class Segment:
    """One segment file: the open one is appended to; sealed ones have an index file.

    ``bytes`` counts the file's bytes (what retention limits); ``spans`` say
    what it holds of each channel, ``entries`` (loaded lazily once sealed)
    where each record lies.
    """

    def __init__(self, directory: str, number: int, fd: int, size: int) -> None:
        self.directory = directory
        self.number = number
        self.fd = fd
        self.size = size
        self.sealed = False
        self.removed = False  # deleted by retention (a read in progress stops)
        self.spans: dict[int, fmt.ChannelSpan] = {}
        self._entries: list[fmt.Entry] | None = []
        self._by_channel: dict[int, list[fmt.Entry]] = {}
        self._index_at = 0
        self._index_count = 0
        self.direct: DirectAppender | None = None  # appends past the page cache (``_append.py``)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, segment_name(self.number))

    @property
    def index_path(self) -> str:
        return os.path.join(self.directory, index_name(self.number))

    @property
    def summary_path(self) -> str:
        """Its float64 channels' block summaries (written by the log, see ``_summaries.py``)."""
        return os.path.join(self.directory, summary_name(self.number))

    @property
    def last_time(self) -> float:
        return max((s.last_time for s in self.spans.values() if s.frames), default=float("-inf"))

    @classmethod
    def create(
        cls,
        directory: str,
        number: int,
        created: float,
        first: Records,
    ) -> Segment:
        """Create a segment file starting with the records ``first`` (the source's
        settings and channel table), synced with its directory entry.

        Raises:
            OSError: the file could not be created or written (nothing is left behind).
        """
        path = os.path.join(directory, segment_name(number))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        seg = cls(directory, number, fd, 0)
        try:
            write_all(fd, [fmt.encode_segment_header(number, created)], 0)
            seg.size = fmt.SEGMENT_HEADER.size
            seg.append(first)
            os.fdatasync(fd)
            fsync_dir(directory)
            seg.direct = DirectAppender.open(path, seg.size, fd)
        except BaseException:
            seg.close()
            os.unlink(path)
            raise
        return seg

    # --- writing

    def append(self, records: Records) -> None:
        """Write ``records`` (made to start at the end) at the end.

        A failed write (disk full, I/O error) leaves the segment as it was:
        any partial bytes are cut off again before the error propagates.

        Raises:
            OSError: the write failed.
        """
        assert records.start == self.size, "records are made for where they go"
        bufs = records.bufs
        try:
            if self.direct is None or not self.direct.write(bufs, self.size):
                self.direct = None  # (the file system refused: through the page cache)
                write_all(self.fd, bufs, self.size)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass  # the next append writes over them; recovery drops them as a torn tail
            raise
        self.size = records.at
        entries, by_channel, spans = self._entries, self._by_channel, self.spans
        assert entries is not None, "sealed segments are not appended to"
        for e in records.entries:
            entries.append(e)
            by_channel.setdefault(e.channel, []).append(e)
            _extend_span(spans, e)

    def _end_direct(self) -> None:  # the padding cut, unless the file is being removed
        if self.direct is not None:
            self.direct.end(None if self.removed else self.size)
            self.direct = None

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def seal(self) -> None:
        """Sync, write the index file (synced, then renamed into place); no more appends."""
        self._end_direct()
        os.fdatasync(self.fd)
        entries = self.entries()
        data = fmt.encode_index(self.number, self.size, list(self.spans.values()), entries)
        tmp = self.index_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.index_path)
        fsync_dir(self.directory)
        self.sealed = True
        self._index_at = fmt.INDEX_HEADER.size + len(self.spans) * fmt.INDEX_CHANNEL.size + 4
        self._index_count = len(entries)

    def unload(self) -> None:
        """Forget a sealed segment's entries and close its file (both come back when read)."""
        self.close()
        if self.sealed:
            self._entries, self._by_channel = None, {}

    def load(self, entries: list[fmt.Entry]) -> None:
        """Take the entries a scan found (an unsealed segment, or one whose index is lost)."""
        self._entries = entries
        self._by_channel = {}
        for e in entries:
            self._by_channel.setdefault(e.channel, []).append(e)
        self.spans = spans_of(entries)

    # --- reading

    def entries(self, channel: int | None = None) -> list[fmt.Entry]:
        """Index entries (of one channel), in file order; read from the index file once."""
        if self._entries is None:
            try:
                with open(self.index_path, "rb") as f:
                    f.seek(self._index_at)
                    raw = f.read()
                entries = fmt.decode_index_entries(raw, self._index_count)
            except (OSError, fmt.FormatError):  # the index went bad since recovery: read it all
                with open(self.path, "rb") as f:
                    entries = scan(f.fileno(), self.number, self.size).entries
            self._entries = entries
            for e in entries:
                self._by_channel.setdefault(e.channel, []).append(e)
        if channel is None:
            return self._entries
        return self._by_channel.get(channel, [])

    def entry_at_seq(self, channel: int, seq: int) -> int:
        """Position in ``entries(channel)`` of the first entry ending after ``seq``."""
        return bisect.bisect_left(self.entries(channel), seq, key=lambda e: e.end_seq - 1)

    def entry_at_time(self, channel: int, t: float) -> int:
        """Position of the first frames entry whose newest frame is at or after ``t``."""
        es = self.entries(channel)
        return bisect.bisect_left(
            es, t, key=lambda e: e.last_time if e.kind == fmt.FRAMES else float("-inf")
        )

    def read_record(self, entry: fmt.Entry) -> fmt.Record | None:
        """The record ``entry`` points at, or ``None`` if its bytes fail their checksums."""
        length = fmt.RECORD_HEADER.size + entry.body_len
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDONLY)
            raw = read_exact(self.fd, length, entry.offset)
        except FileNotFoundError:
            return None  # removed behind the broker's back: the same as damaged
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return None
        head = fmt.parse_record_header(raw)
        if head is None or len(raw) != length or head[0] != entry.body_len:
            return None
        body = memoryview(raw)[fmt.RECORD_HEADER.size :]
        if fmt.crc(body) != head[1]:
            return None
        try:
            return fmt.decode_body(body)
        except fmt.FormatError:
            return None

    def close(self) -> None:
        self._end_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.removed = True
        self.close()
        for p in (self.path, self.index_path, self.summary_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    @classmethod
    def open_sealed(cls, directory: str, number: int) -> tuple[Segment, Scan | None]:
        """Open a sealed segment from its index (no payload read).

        Without a readable index, the segment is scanned, and the index written
        anew; the scan (with any damage it found) is returned then.
        """
        path = os.path.join(directory, segment_name(number))
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        seg = cls(directory, number, fd, size)
        try:
            with open(seg.index_path, "rb") as f:
                head = f.read(fmt.INDEX_HEADER.size)
                n_ch = int.from_bytes(head[28:32], "little") if len(head) >= 32 else 0
                head += f.read(n_ch * fmt.INDEX_CHANNEL.size + 4)
            got_number, covered, spans, count, at = fmt.decode_index_head(head)
            if got_number != number:
                raise fmt.FormatError("index names another segment")
        except (OSError, fmt.FormatError):
            found = scan(fd, number, size)
            seg.load(found.entries)
            seg.size = found.end
            seg.seal()
            return seg, found
        seg.spans = {s.channel: s for s in spans}
        seg._entries = None
        seg._index_at, seg._index_count = at, count
        seg.size = covered
        seg.sealed = True
        return seg, None


def _extend_span(spans: dict[int, fmt.ChannelSpan], e: fmt.Entry) -> None:
    s = spans.get(e.channel)
    if s is None:
        s = spans[e.channel] = fmt.ChannelSpan(e.channel, e.first_seq, e.end_seq)
    s.end_seq = max(s.end_seq, e.end_seq)
    s.first_seq = min(s.first_seq, e.first_seq)
    if e.kind == fmt.FRAMES:
        s.frames += e.count
        s.bytes += e.body_len
        s.first_time = min(s.first_time, e.first_time)
        s.last_time = max(s.last_time, e.last_time)
