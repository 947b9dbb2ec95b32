"""Appends past the page cache (``O_DIRECT``): the same bytes on disk as through it (plain sync tests)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from typing import Any

import pytest

from turbine.archive import Declare, Put, SourceLog, _append
from turbine.archive.__main__ import check_source
from turbine.archive._append import BLOCK
from turbine.archive._ops import WriteFailed

MiB = 2**20
SIZES = [1, 7, 100, BLOCK - 1, BLOCK, BLOCK + 3, 3 * BLOCK + 17, 100_000, 5]


def create(path: str) -> SourceLog:
    log = SourceLog.create(path, {"archive_bytes": 64 * MiB}, now=0)
    log.write([Declare("x.bin", "application/octet-stream", 1)], now=0)
    return log


def write_puts(log: SourceLog, received: bool = False) -> None:
    """``received``: each put's payloads as the broker's receive path hands them over
    (a view of the ``bytearray`` the message was read into, after its header)."""
    seq = 1
    for size in SIZES:
        data: list[Any] = [bytes([seq % 251]) * size, b"%d" % seq]
        if received:
            data = [memoryview(bytearray(b"header" + d))[6:] for d in data]
        log.write([Put("x.bin", seq, [float(seq)] * 2, [len(d) for d in data], data, "w")], now=0)
        seq += 2


def contents(log: SourceLog) -> list[tuple[int, bytes]]:
    runs = log.read("x.bin", 1, 1000)
    return [(r.first_seq + i, bytes(d)) for r in runs for i, d in enumerate(r.data)]


@pytest.fixture
def small_staging(monkeypatch):
    """A staging buffer of three blocks: commits cross its end many times."""
    monkeypatch.setattr(_append, "STAGING_BYTES", 3 * BLOCK)
    monkeypatch.setattr(_append, "_free", [])


def direct_or_skip(log: SourceLog) -> None:
    if log.active.direct is None:
        pytest.skip("this file system refuses O_DIRECT: the archive writes through the page cache")


@pytest.mark.parametrize(
    "staging",
    [
        "default",
        "small",
        "small, every payload copied unlocked",
        "small, every payload copied unlocked from received buffers",
    ],
)
def test_append_appends_leave_the_same_file_as_the_page_cache(tmp_path, monkeypatch, staging):
    if staging.startswith("small"):
        monkeypatch.setattr(_append, "STAGING_BYTES", 3 * BLOCK)
        monkeypatch.setattr(_append, "_free", [])
    if "unlocked" in staging:  # (ctypes.memmove, without the GIL: normally from 64 KiB on)
        monkeypatch.setattr(_append, "COPY_FREE_BYTES", 1)
    copied = []
    real = _append._pinned
    monkeypatch.setattr(_append, "_pinned", lambda v: copied.append(real(v)) or copied[-1])
    direct = create(str(tmp_path / "direct"))
    direct_or_skip(direct)
    write_puts(direct, received="received" in staging)
    if "unlocked" in staging:  # every payload was, none held the GIL while copied
        assert copied and None not in copied
    direct.sync()
    with monkeypatch.context() as m:
        m.delattr(os, "O_DIRECT")
        buffered = create(str(tmp_path / "buffered"))
        assert buffered.active.direct is None
        write_puts(buffered)
    assert contents(direct) == contents(buffered)  # read while the last block is padded
    assert os.path.getsize(direct.active.path) % BLOCK == 0
    size = direct.active.size
    direct.close()
    buffered.close()
    assert os.path.getsize(direct.active.path) == size  # the padding is cut at close
    with open(direct.active.path, "rb") as a, open(buffered.active.path, "rb") as b:
        assert a.read() == b.read()


def test_a_killed_writer_leaves_padding_that_recovery_cuts(tmp_path):
    log = create(str(tmp_path / "src"))
    direct_or_skip(log)
    write_puts(log)
    log.sync()
    expected = contents(log)
    size = log.active.size
    padded = os.path.getsize(log.active.path)
    assert padded > size and padded % BLOCK == 0
    killed = str(tmp_path / "killed")
    shutil.copytree(log.directory, killed)  # the files as a kill -9 leaves them
    log.close()
    assert check_source(killed)[1] == []  # the checker tells padding from damage
    again = SourceLog.open(killed)
    assert contents(again) == expected
    assert again.torn_bytes == padded - size and again.damage == []
    assert again.active.size == size
    write_puts_after(again, len(SIZES) * 2 + 1)
    again.close()
    final = SourceLog.open(killed)
    assert [s for s, _ in contents(final)] == list(range(1, len(SIZES) * 2 + 3))
    final.close()


def write_puts_after(log: SourceLog, seq: int) -> None:
    data = [b"after" * 1000, b"x"]
    log.write([Put("x.bin", seq, [1.0, 2.0], [len(d) for d in data], data, "w")], now=0)


def test_a_sealed_segment_holds_no_padding(tmp_path, small_staging):
    log = SourceLog.create(str(tmp_path / "src"), {"archive_bytes": 8 * MiB}, now=0)
    log.write([Declare("x.bin", "application/octet-stream", 1)], now=0)
    direct_or_skip(log)
    data = [bytes(300_001)] * 4
    for i in range(6):  # 1 MiB segments: several rolls
        log.write([Put("x.bin", 1 + 4 * i, [0.0] * 4, [len(d) for d in data], data, "w")], now=0)
    assert len(log.segments) > 2
    for seg in log.segments[:-1]:
        assert os.path.getsize(seg.path) == seg.size
    assert len(contents(log)) == 24
    log.close()


def test_a_file_system_refusing_the_direct_write_gets_it_through_the_page_cache(
    tmp_path, monkeypatch
):
    log = create(str(tmp_path / "src"))
    direct_or_skip(log)

    def refuse(self, views, offset):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_append.DirectAppender, "_write", refuse)
    write_puts(log)
    assert log.active.direct is None
    assert os.path.getsize(log.active.path) == log.active.size
    assert len(contents(log)) == 2 * len(SIZES)
    log.close()


def test_many_sources_written_at_once_leave_few_staging_buffers_kept(monkeypatch):
    monkeypatch.setattr(_append, "_free", [])
    taken = [_append._take() for _ in range(_append.STAGING_KEPT + 3)]  # sources in parallel
    for buf in taken:
        _append._give(buf)
    assert len(_append._free) == _append.STAGING_KEPT  # the rest unmapped, not kept
    assert sum(buf.closed for buf in taken) == 3


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EINVAL])
def test_a_direct_write_failing_part_way_leaves_only_whole_commits(
    tmp_path, small_staging, monkeypatch, error
):
    """A commit larger than the staging buffer is written in several direct writes;
    the disk filling (ENOSPC) after the first leaves nothing of it once the error
    is raised, and the next commit lands after the ones before; a file system
    refusing the second one (EINVAL) gets the whole commit through the page cache."""
    log = create(str(tmp_path / "src"))
    direct_or_skip(log)
    write_puts(log)
    before = contents(log)
    size = log.active.size
    real = _append._write_blocks
    calls = []

    def fail_second(fd, buf, length, offset):
        calls.append(length)
        if len(calls) == 2:
            raise OSError(error, os.strerror(error))
        real(fd, buf, length, offset)

    monkeypatch.setattr(_append, "_write_blocks", fail_second)
    big = [bytes(range(256)) * (5 * BLOCK // 256), b"big"]  # more than the three-block staging
    put = Put("x.bin", 2 * len(SIZES) + 1, [1.0, 2.0], [len(d) for d in big], big, "w")
    if error == errno.ENOSPC:
        with pytest.raises(WriteFailed):
            log.write([put], now=0)
        assert len(calls) == 2
        assert log.active.size == size and log.active.direct is not None
        assert os.path.getsize(log.active.path) == size  # the first blocks cut off again
        assert contents(log) == before
        log.write([put], now=0)  # the disk has room again
    else:
        log.write([put], now=0)
        assert log.active.direct is None  # through the page cache from now on
    monkeypatch.setattr(_append, "_write_blocks", real)
    write_puts_after(log, 2 * len(SIZES) + 3)
    expected = contents(log)
    assert [s for s, _ in expected[-4:]] == [2 * len(SIZES) + i for i in (1, 2, 3, 4)]
    assert expected[-4][1] == big[0] and expected[:-4] == before
    log.close()
    again = SourceLog.open(str(tmp_path / "src"))
    assert contents(again) == expected and again.damage == [] and again.torn_bytes == 0
    again.close()


def test_a_reader_of_the_open_segment_sees_every_record_whole_while_it_is_appended(
    tmp_path, small_staging
):
    """The writer rewrites the last, padded block with each commit (direct); a
    reader thread reading the newest records through the page cache meanwhile
    must never find one damaged or short (ends with a read of them all)."""
    log = create(str(tmp_path / "src"))
    direct_or_skip(log)
    newest = [0]
    done = threading.Event()
    bad: list[str] = []
    reads: list[int] = []

    def payload(seq: int) -> bytes:
        return bytes([seq % 251]) * (seq * 37 % (2 * BLOCK) + 1)

    def read_newest() -> None:
        while not done.is_set():
            seq = newest[0]
            if not seq:
                continue
            runs = log.read("x.bin", seq, 1)
            reads.append(seq)
            got = [bytes(d) for r in runs for d in r.data]
            if got != [payload(seq)] or runs[0].missed:
                bad.append(f"frame {seq}: {len(got)} read, damage {log.damage}")

    reader = threading.Thread(target=read_newest)
    reader.start()
    try:
        for seq in range(1, 400):
            data = [payload(seq)]
            log.write([Put("x.bin", seq, [float(seq)], [len(data[0])], data, "w")], now=0)
            newest[0] = seq
    finally:
        done.set()
        reader.join()
    assert bad == [] and log.damage == []
    assert reads  # (it read while the writer wrote: thousands of reads here)
    assert [d for _, d in contents(log)] == [payload(s) for s in range(1, 400)]
    log.close()
