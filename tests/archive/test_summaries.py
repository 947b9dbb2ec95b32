"""Block summaries kept beside a source's segments: written as the broker queues them,
back after a reopen, made again from the frames where the files lack them (plain sync tests)."""

from __future__ import annotations

import errno
import os
import struct

from turbine._constants import FLOAT64_CONTENT_TYPE
from turbine.archive import Declare, Put, SourceLog
from turbine.archive import _format as fmt
from turbine.archive._ops import Summary, WriteFailed
from turbine.summary import Summaries

MiB = 2**20


def values(k: int) -> list[float]:
    """Frame ``k``'s 1000 samples: its minimum is -k, its maximum k."""
    return [float(k)] * 999 + [-float(k)]


def feed(log: SourceLog, first: int, count: int, summaries: Summaries | None = None) -> None:
    """Put frames as the broker does: each one's put, then the block it completed
    (going on from the ``summaries`` recovered, as the broker's channel does)."""
    ops: list = []
    summaries = summaries or Summaries()
    summaries.sink = lambda block: ops.append(Summary("v", block))
    for k in range(first, first + count):
        data = [struct.pack("<1000d", *values(k))]
        ops.append(Put("v", k, [float(k)], [8000], data, "w"))
        summaries.add(k, [float(k)], data)
        log.write(ops, now=0)
        ops.clear()


def make(tmp_path) -> SourceLog:
    log = SourceLog.create(str(tmp_path / "src"), {"archive_bytes": 8 * MiB}, now=0)
    log.write([Declare("v", FLOAT64_CONTENT_TYPE, 1), Declare("t", "text/plain", 1)], now=0)
    return log


def reopen(log: SourceLog) -> SourceLog:
    log.close()
    return SourceLog.open(log.directory)


def batches(log: SourceLog) -> dict[int, list]:
    """Each summary file's batches (channel id, columns), by segment."""
    out = {}
    for seg in log.segments:
        if os.path.exists(seg.summary_path):
            with open(seg.summary_path, "rb") as f:
                out[seg.number], _ = fmt.decode_summaries(f.read(), seg.number)
    return out


def filed(log: SourceLog) -> dict[int, list[int]]:
    """Each summary file's block numbers, by segment."""
    return {n: [seq for _, cols in found for seq in cols[0]] for n, found in batches(log).items()}


def assert_blocks(s: Summaries, frames: range) -> None:
    assert list(s.seq) == list(frames) and list(s.end) == [k + 1 for k in frames]
    assert list(s.n) == [1000] * len(frames)
    assert list(s.lo) == [-float(k) for k in frames] and list(s.hi) == [float(k) for k in frames]
    assert list(s.first) == [float(k) for k in frames] and list(s.last) == list(s.lo)


def test_blocks_are_kept_beside_their_segments_and_come_back_with_the_frames(tmp_path):
    log = make(tmp_path)
    feed(log, 1, 300)  # 2.4 MB of samples: segments of 1 MiB roll
    log.write([Put("t", 1, [1.0], [4], [b"text"], "w")], now=0)
    assert len(log.segments) == 3
    files = filed(log)
    assert sorted(files) == [s.number for s in log.segments]
    assert sum(files.values(), []) == list(range(1, 300))  # the newest block is still open
    sealed = [batches(log)[seg.number] for seg in log.segments[:-1]]
    assert [len(found) for found in sealed] == [1, 1]  # written again as one batch at the seal
    log = reopen(log)
    found = log.take_summaries()
    assert list(found) == ["v"]  # the text channel has none
    assert_blocks(found["v"], range(1, 301))  # the open block made again from its frames
    assert log.take_summaries() == {}  # handed over once
    log.evict(2 * MiB, None, now=0)  # retention: the summaries go with their segment
    assert sorted(filed(log)) == [s.number for s in log.segments] and len(log.segments) == 2
    log.close()


def test_what_the_files_lack_at_the_end_is_made_again_from_the_frames(tmp_path):
    log = make(tmp_path)
    feed(log, 1, 200)
    active = log.segments[-1]
    size = os.path.getsize(active.summary_path)
    os.truncate(active.summary_path, size - 100)  # a crash tore the last blocks off
    log = reopen(log)
    found = log.take_summaries()["v"]
    assert_blocks(found, range(1, 201))
    assert filed(log)[active.number][-1] == 199  # the complete ones are on file again
    feed(log, 201, 5, found)  # the put of frame 201 completes the open block 200
    log = reopen(log)
    assert_blocks(log.take_summaries()["v"], range(1, 206))
    log.close()


def test_blocks_of_frames_lost_with_a_torn_tail_go(tmp_path):
    log = make(tmp_path)
    feed(log, 1, 50)  # one segment
    entries = log.active.entries()
    os.truncate(log.active.path, entries[-2].offset + 10)  # frames 49 and 50 torn off
    log = reopen(log)
    assert log.channels["v"].next_seq == 49
    assert_blocks(log.take_summaries()["v"], range(1, 49))  # not block 49 (its file had it)
    log.close()


def test_a_data_dir_from_before_summary_files_opens_and_summarizes_its_open_segment(tmp_path):
    log = make(tmp_path)
    feed(log, 1, 300)
    for seg in log.segments:
        os.unlink(seg.summary_path)
    first_open = log.active.spans[log.channels["v"].id].first_seq
    log = reopen(log)
    assert_blocks(log.take_summaries()["v"], range(first_open, 301))
    assert len(log.read("v", 1, 1000)[0].ts) == 300  # every frame is there, as before
    log = reopen(log)  # the open segment's complete blocks are on file now
    assert_blocks(log.take_summaries()["v"], range(first_open, 301))
    log.close()


def test_a_seal_whose_summary_file_failed_keeps_its_blocks_for_the_retry(tmp_path, monkeypatch):
    log = make(tmp_path)
    replace = os.replace
    failed: list[str] = []

    def full_once(src, dst):
        if str(dst).endswith(".sum") and not failed:
            failed.append(str(dst))
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full_once)  # the first seal's summary file fails
    ops: list = []
    summaries = Summaries(sink=lambda block: ops.append(Summary("v", block)))
    for k in range(1, 141):  # 1.1 MB: the first segment is sealed on the way
        data = [struct.pack("<1000d", *values(k))]
        ops.append(Put("v", k, [float(k)], [8000], data, "w"))
        summaries.add(k, [float(k)], data)
        try:
            log.write(ops, now=0)
        except WriteFailed:
            log.write(ops, now=0)  # the store task's retry
        ops.clear()
    assert failed and len(log.segments) == 2
    end = log.segments[0].spans[log.channels["v"].id].end_seq  # frames 1 .. end - 1 in it
    assert filed(log)[1] == list(range(1, end - 1))  # the retried seal wrote every block
    log.close()
