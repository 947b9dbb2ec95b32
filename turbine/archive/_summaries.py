"""The block summaries of a source log's float64 channels, kept beside its segments.

Each segment ``N.seg`` holding float64 frames has a summary file ``N.sum``:
a header, then batches of complete blocks, one per channel and write, as
columns (docs/storage.rst): recovery reads them with a checksum and an array
copy per column, not Python work per block.
The broker makes the blocks as frames are put (``turbine/summary.py``) and
queues each complete one after its frames (a :class:`~turbine.archive._ops.Summary`
op); the log's writer thread appends it to the open segment's summary file.
Sealing a segment syncs its summary file before the index is written, so a
sealed segment of float64 frames that has an index has its summary file.

At recovery the summary files are read (no payload is), and what they lack
at the end is made again from the frames: the newest block, still open when
the broker stopped; blocks a crash kept out of the file; in a data dir from
before summary files, the frames of the open segment (older segments then
have none: a plot of them reads their samples).  Blocking: the log's threads.
"""

from __future__ import annotations

import array
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from .._constants import FLOAT64_CONTENT_TYPE
from ..store import Run
from ..summary import Block, Summaries
from . import _format as fmt
from ._append import write_all
from ._segment import Segment
from ._table import ChannelState

log = logging.getLogger("turbine.archive")

#: Frames read at a time when blocks are made again from a segment at recovery.
REBUILD_FRAMES = 4096


class LogSummaries:
    """The summary file of a log's open segment, appended to by its writer thread.

    The open segment's file takes a batch per channel and write (a few blocks
    each); sealing rewrites it as one batch per channel, so that a recovery
    reads each sealed segment's summaries in a few array copies.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._number = 0  # the segment whose file is open
        #: The open segment's blocks so far, by channel id (what sealing writes again).
        self._blocks: dict[int, list[Block]] = {}
        self._blocks_of = 0  # that segment's number

    def write(self, segment: Segment, blocks: list[tuple[int, Block]]) -> None:
        """Append ``(channel id, block)`` records to ``segment``'s summary file.

        A failed write is logged and the blocks are left out: they are derived
        from the frames, and the next recovery makes missing newest ones again.
        """
        if not blocks:
            return
        if self._blocks_of != segment.number:
            self._blocks, self._blocks_of = {}, segment.number
        by_channel: dict[int, list[Block]] = {}
        for ch, block in blocks:
            by_channel.setdefault(ch, []).append(block)
            self._blocks.setdefault(ch, []).append(block)
        try:
            fd = self._open(segment)
            at = os.fstat(fd).st_size
            write_all(fd, [fmt.encode_summary_batch(ch, b) for ch, b in by_channel.items()], at)
        except OSError as exc:
            log.warning(
                "could not write %s: %s; its blocks are left out", segment.summary_path, exc
            )
            self.close()

    def seal(self, segment: Segment, channels: set[int]) -> None:
        """Write ``segment``'s summary file again as one batch per channel, synced
        (if it holds frames of ``channels``, the float64 ones): call before its index
        is written (which syncs the directory).

        Raises:
            OSError: the file could not be written or synced (the seal fails with it).
        """
        self.close()
        blocks = self._blocks if self._blocks_of == segment.number else {}
        if blocks or any(ch in channels and span.frames for ch, span in segment.spans.items()):
            data = [fmt.encode_summary_header(segment.number)]
            data += [fmt.encode_summary_batch(ch, b) for ch, b in blocks.items()]
            tmp = segment.summary_path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, segment.summary_path)
        self._blocks, self._blocks_of = {}, 0  # (kept for the seal's retry if it failed)

    def _open(self, segment: Segment) -> int:
        if self._fd >= 0 and self._number == segment.number:
            return self._fd
        self.close()
        fd = os.open(segment.summary_path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size < fmt.SUMMARY_HEADER.size:
            os.ftruncate(fd, 0)
            write_all(fd, [fmt.encode_summary_header(segment.number)], 0)
        self._fd, self._number = fd, segment.number
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._number = -1, 0

    def recover(
        self,
        segments: list[Segment],
        channels: Iterable[ChannelState],
        read: Callable[[str, int, int], list[Run]],
    ) -> dict[str, Summaries]:
        """Every float64 channel's blocks, oldest first: read from the summary files
        of ``segments`` (those of frames lost with a torn tail dropped), then made
        from the frames they lack at the end, got by ``read(channel, seq, max_frames)``
        (the complete ones appended to the open segment's file)."""
        floats = {st.id: st for st in channels if st.content_type == FLOAT64_CONTENT_TYPE}
        if not floats:
            return {}
        out = {st.id: Summaries() for st in floats.values()}
        # Per channel: the first segment from which on every sealed one with its frames
        # has a summary file (a data dir from before them has none).
        floor = dict.fromkeys(floats, 0)
        active = segments[-1]
        for i, seg in enumerate(segments):
            found = _read(seg, seg is active)
            if found is None and seg is not active:
                for ch, span in seg.spans.items():
                    if ch in floor and span.frames:
                        floor[ch] = i + 1
            for ch, columns in found or ():
                if ch in out:
                    out[ch].extend_columns(columns)
                    if seg is active:  # (written again at its seal)
                        self._blocks.setdefault(ch, []).extend(zip(*columns, strict=True))
        self._blocks_of = active.number
        made: list[tuple[int, Block]] = []
        for ch, st in floats.items():
            s = out[ch]
            s.drop_from(st.next_seq)  # blocks of frames lost with a torn tail
            spans = [seg.spans[ch] for seg in segments[floor[ch] :] if ch in seg.spans]
            start = spans[0].first_seq if spans else st.next_seq
            if len(s):
                start = max(start, s.end[-1])
            kept = len(s)
            while start < st.next_seq:
                runs = read(st.name, start, REBUILD_FRAMES)
                for run in runs:
                    if run.ts:
                        s.add(run.first_seq, run.ts, run.data)
                if not runs or runs[-1].next_seq <= start:
                    break
                start = runs[-1].next_seq
            made += [(ch, s.block(i)) for i in range(kept, len(s) - 1)]  # the newest stays open
        self.write(active, made)
        return {floats[ch].name: s for ch, s in out.items() if len(s)}


def _read(segment: Segment, is_open: bool) -> list[tuple[int, list[array.array[Any]]]] | None:
    """The intact batches of ``segment``'s summary file, None without a readable one;
    the open segment's file is cut after them."""
    try:
        with open(segment.summary_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        blocks, good = fmt.decode_summaries(data, segment.number)
    except fmt.FormatError as exc:
        log.warning("%s is unreadable (%s): left out", segment.summary_path, exc)
        if not is_open:
            return None
        blocks, good = [], 0
    if is_open and good < len(data):
        if good:
            os.truncate(segment.summary_path, good)
        else:
            os.unlink(segment.summary_path)
    return blocks
