"""One source's archive on disk: writes, reopening, reads, retention and damage (plain sync tests)."""

from __future__ import annotations

import os

import pytest

from turbine.archive import Declare, Hole, Put, Settings, SourceLog
from turbine.archive import _format as fmt
from turbine.archive._ops import Producer
from turbine.archive._scan import _records
from turbine.archive._segment import Segment

MiB = 2**20


def frames(runs) -> list[tuple[int, float, bytes]]:
    out = []
    for r in runs:
        out += [
            (r.first_seq + i, t, bytes(d))
            for i, (t, d) in enumerate(zip(r.ts, r.data, strict=True))
        ]
    return out


def put(
    log: SourceLog, channel: str, first: int, n: int, size: int = 8, t0: float = 0.0, writer="w"
):
    data = [(b"%08d" % (first + i)) * (size // 8) for i in range(n)]
    log.write(
        [Put(channel, first, [t0 + i for i in range(n)], [len(d) for d in data], data, writer)],
        now=0,
    )


def payload(seq: int, size: int = 8) -> bytes:
    return (b"%08d" % seq) * (size // 8)


@pytest.fixture
def log(tmp_path) -> SourceLog:
    log = SourceLog.create(
        str(tmp_path / "src"), {"archive_bytes": 8 * MiB, "shared": False}, now=0
    )
    log.write([Declare("x.bin", "application/octet-stream", 1)], now=0)
    yield log
    log.close()


def reopen(log: SourceLog) -> SourceLog:
    log.close()
    return SourceLog.open(log.directory)


def test_frames_settings_and_channels_come_back_after_reopening(log):
    log.write(
        [
            Declare("metadata.txt", "application/json", 1),
            Settings({"archive_bytes": 8 * MiB, "shared": True}),
        ],
        now=0,
    )
    put(log, "x.bin", 1, 5)
    log.write([Put("metadata.txt", 1, [1.0], [2], [b"{}"], "w")], now=0)
    log.sync()
    log = reopen(log)
    assert log.settings == {"archive_bytes": 8 * MiB, "shared": True}
    assert {n: (c.content_type, c.next_seq) for n, c in log.channels.items()} == {
        "x.bin": ("application/octet-stream", 6),
        "metadata.txt": ("application/json", 2),
    }
    assert frames(log.read("x.bin", 1, 100)) == [(s, s - 1.0, payload(s)) for s in range(1, 6)]
    put(log, "x.bin", 6, 1)  # numbers continue
    assert log.read("x.bin", 6, 10)[0].writers == [(6, "w")]
    log.close()


def test_a_declared_next_seq_continues_numbering(log):
    log.write([Declare("y", "text/plain", 500)], now=0)
    assert log.channels["y"].next_seq == 500
    with pytest.raises(ValueError, match="only grow"):
        put(log, "y", 3, 1)


def test_reads_stop_at_limits_and_report_what_is_missing(log):
    put(log, "x.bin", 1, 10, size=16)
    assert [s for s, _, _ in frames(log.read("x.bin", 4, 3))] == [4, 5, 6]
    assert len(frames(log.read("x.bin", 1, 100, max_bytes=40))) == 2
    assert len(frames(log.read("x.bin", 1, 100, max_bytes=1))) == 1  # at least one
    log.write([Hole("x.bin", 11, 5)], now=0)
    put(log, "x.bin", 16, 2)
    runs = log.read("x.bin", 9, 100)
    assert [(r.first_seq, len(r.ts), r.missed) for r in runs] == [(9, 2, 0), (16, 2, 5)]
    assert log.read("x.bin", 18, 10) == []


def test_segments_roll_and_retention_drops_whole_oldest_segments(log):
    log.write([Declare("metadata.txt", "application/json", 1)], now=0)
    log.write([Put("metadata.txt", 1, [0.0], [9], [b'{"a": 1}\n'], "w")], now=0)
    for i in range(40):  # 40 x 256 KiB = 10 MiB in 1 MiB segments
        put(log, "x.bin", 1 + 32 * i, 32, size=8192, t0=32 * i)
    assert len(log.segments) > 8
    before = log.bytes
    freed = log.evict(8 * MiB, None, now=0)
    assert freed > 0 and log.bytes == before - freed <= 8 * MiB
    assert len({s.number for s in log.segments}) == len(log.segments)
    first = log.first_seq("x.bin")
    assert first > 1
    runs = log.read("x.bin", 1, 5)
    assert runs[0].missed == first - 1 and runs[0].first_seq == first
    # the newest metadata frame is carried into every segment: it outlives its own
    log = reopen(log)
    assert frames(log.read("metadata.txt", 1, 10))[-1][2] == b'{"a": 1}\n'
    log.close()


def test_age_retention_keeps_the_open_segment(log):
    for i in range(12):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192, t0=100.0 * i)
    assert log.evict(None, 50.0, now=2000.0) > 0
    assert len(log.segments) == 1


def test_a_time_range_read_seeks_through_the_index(log):
    for i in range(30):
        put(log, "x.bin", 1 + 64 * i, 64, size=8192, t0=64 * i)
    got = frames(log.time_range("x.bin", 100.0, 110.0, 1000))
    assert [t for _, t, _ in got] == [float(t) for t in range(100, 110)]
    assert got[0][0] == 101 and got[0][2] == payload(101, 8192)
    assert frames(log.time_range("x.bin", 5000.0, 6000.0, 10)) == []
    log = reopen(log)  # sealed segments answer from their index files
    assert [s for s, _, _ in frames(log.time_range("x.bin", 1900.0, 1905.0, 3))] == [
        1901,
        1902,
        1903,
    ]
    log.close()


def test_a_torn_tail_is_dropped_at_recovery_and_writing_goes_on(log):
    put(log, "x.bin", 1, 3)
    log.sync()
    good = log.active.size
    put(log, "x.bin", 4, 3)
    with open(log.active.path, "r+b") as f:
        f.truncate(good + 20)  # half a record
    log = reopen(log)
    assert log.torn_bytes == 20 and log.damage == []
    assert [s for s, _, _ in frames(log.read("x.bin", 1, 10))] == [1, 2, 3]
    assert log.channels["x.bin"].next_seq == 4
    put(log, "x.bin", 4, 1)
    log = reopen(log)
    assert [s for s, _, _ in frames(log.read("x.bin", 1, 10))] == [1, 2, 3, 4]
    log.close()


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_a_flipped_byte_in_a_sealed_segment_is_a_gap_never_corrupt_bytes(log):
    for i in range(12):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192)
    log.sync()
    log = reopen(log)
    sealed = log.segments[1]
    entry = sealed.entries(log.channels["x.bin"].id)[0]
    flip(sealed.path, entry.offset + fmt.RECORD_HEADER.size + 500)
    log = reopen(log)
    assert log.damage == []  # recovery reads index files, not payloads
    got = frames(log.read("x.bin", 1, 10_000))
    seqs = [s for s, _, _ in got]
    assert all(d == payload(s, 8192) for s, _, d in got)
    lost = set(range(entry.first_seq, entry.end_seq))
    assert set(seqs) == set(range(1, 1 + 128 * 12)) - lost
    runs = log.read("x.bin", 1, 10_000)
    assert sum(r.missed for r in runs) == len(lost)
    assert [(d.segment, d.reason) for d in log.damage] == [(sealed.number, "checksum")]
    log.close()


def test_a_truncated_middle_segment_and_a_lost_index(log):
    for i in range(12):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192)
    log.sync()
    log = reopen(log)
    middle, other = log.segments[1], log.segments[2]
    os.truncate(middle.path, middle.size // 2)
    os.unlink(other.index_path)
    log = reopen(log)
    assert [d.reason for d in log.damage] == ["truncated"]
    got = frames(log.read("x.bin", 1, 10_000))
    assert all(d == payload(s, 8192) for s, _, d in got)
    have = {s for s, _, _ in got}
    assert 1 in have and 128 * 12 in have and len(have) < 128 * 12
    assert set(range(log.segments[2].spans[1].first_seq, log.segments[2].spans[1].end_seq)) <= have
    assert os.path.exists(log.segments[2].index_path)  # rebuilt by a scan
    log.close()


def test_damage_in_the_open_segment_is_skipped_and_later_records_kept(log):
    put(log, "x.bin", 1, 3)
    mid = log.active.size
    put(log, "x.bin", 4, 3)
    put(log, "x.bin", 7, 3)
    log.sync()
    flip(log.active.path, mid + fmt.RECORD_HEADER.size + 30)
    log = reopen(log)
    assert [s for s, _, _ in frames(log.read("x.bin", 1, 10))] == [1, 2, 3, 7, 8, 9]
    assert len(log.damage) == 1 and log.channels["x.bin"].next_seq == 10
    log.close()


def test_a_newer_format_is_refused(log):
    path = log.active.path
    log.close()
    with open(path, "r+b") as f:
        head = bytearray(f.read(fmt.SEGMENT_HEADER.size))
        head[8] = fmt.FORMAT_VERSION + 1
        head[28:32] = fmt.crc(bytes(head[:28])).to_bytes(4, "little")
        f.seek(0)
        f.write(head)
    with pytest.raises(fmt.FormatError, match="upgrade Turbine"):
        SourceLog.open(log.directory)


def test_a_segment_whose_creation_was_cut_short_is_removed_and_the_previous_reopened(log):
    for i in range(12):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192)
    log.active.seal()  # the roll sealed it, then died creating the next one
    last = log.active.number
    log.close()
    unborn = os.path.join(log.directory, f"{last + 1:016d}.seg")
    with open(unborn, "wb") as f:
        f.write(fmt.encode_segment_header(last + 1, 0.0)[:20])  # killed while creating it
    log = SourceLog.open(log.directory)
    assert not os.path.exists(unborn) and log.active.number == last
    assert not os.path.exists(log.active.index_path)  # open again: its index would go stale
    put(log, "x.bin", 1 + 128 * 12, 1)
    log.sync()
    log = reopen(log)
    assert log.channels["x.bin"].next_seq == 2 + 128 * 12
    assert len(frames(log.read("x.bin", 1, 10_000))) == 1 + 128 * 12
    log.close()


def test_the_first_minute_of_a_day_costs_the_same_reads_as_the_last(log, monkeypatch):
    for i in range(24):  # a day at one frame a second, an hour per put
        put(log, "x.bin", 1 + 3600 * i, 3600, size=64, t0=3600.0 * i)
    log = reopen(log)
    assert len(log.segments) > 4
    reads: list[int] = []
    real = Segment.read_record
    monkeypatch.setattr(Segment, "read_record", lambda seg, e: reads.append(1) or real(seg, e))
    first = frames(log.time_range("x.bin", 0.0, 60.0, 10_000))
    n_first, reads[:] = len(reads), []
    last = frames(log.time_range("x.bin", 86340.0, 86400.0, 10_000))
    assert len(first) == len(last) == 60
    assert n_first == len(reads) <= 3
    log.close()


def test_the_checker_lists_what_is_there_and_finds_damage(log):
    from click.testing import CliRunner

    from turbine.archive.__main__ import main

    for i in range(12):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192, t0=1.7e9)
    log.sync()
    root = os.path.dirname(os.path.dirname(log.directory))
    os.makedirs(os.path.join(root, "sources"), exist_ok=True)
    os.rename(log.directory, os.path.join(root, "sources", "daq_x_data_source"))
    log.directory = os.path.join(root, "sources", "daq_x_data_source")
    result = CliRunner().invoke(main, [root])
    assert result.exit_code == 0, result.output
    assert "x.bin (application/octet-stream): 1536 frames, numbers 1..1536" in result.output
    sealed = log.segments[1]
    flip(os.path.join(log.directory, os.path.basename(sealed.path)), 200)
    result = CliRunner().invoke(main, [root])
    assert result.exit_code == 1 and "fail their checksums" in result.output
    assert "1408 frames" in result.output  # the damaged record's 128 are not counted


def test_a_large_archive_keeps_few_files_open(log):
    from turbine.archive._reads import OPEN_SEALED

    for i in range(40):
        put(log, "x.bin", 1 + 128 * i, 128, size=8192)
    log = reopen(log)

    def open_segments() -> int:
        """Segment files open (the open one may have two descriptors: reads, direct writes)."""
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except FileNotFoundError:
                continue  # the directory listing's own
            if path.endswith(".seg"):
                found.add(path)
        return len(found)

    assert len(log.segments) > OPEN_SEALED + 4 and open_segments() == 1  # the open one
    assert len(frames(log.read("x.bin", 1, 10_000))) == 128 * 40
    assert open_segments() <= OPEN_SEALED + 1
    assert sum(s._entries is not None for s in log.segments) <= OPEN_SEALED + 1
    assert len(frames(log.read("x.bin", 1, 10_000))) == 128 * 40  # and back when read again
    os.unlink(log.segments[0].index_path)  # an index lost while the broker runs
    log.segments[0].unload()
    assert len(frames(log.read("x.bin", 1, 10_000))) == 128 * 40
    log.close()
    assert open_segments() == 0


def _producer_tables(path: str) -> list[dict[str, int]]:
    """The producers records of a segment file, in order."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        bodies = [b for _, _, b in _records(f.fileno(), fmt.SEGMENT_HEADER.size, size) if b]
        return [r.table for r in map(fmt.decode_body, bodies) if isinstance(r, fmt.ProducersRecord)]


def test_the_producer_numbers_of_consecutive_puts_are_one_record_after_them(tmp_path):
    """One write: two produced puts, a declaration, a third put.  The first two
    puts' numbers are one producers record after them and before the declaration;
    the third's follows it.  A crash that cut the last record loses the third put
    only (never acknowledged: its producer sends it again), never the declaration."""
    path = str(tmp_path / "src")
    log = SourceLog.create(path, {"archive_bytes": 64 * MiB}, now=0)
    data = [b"a", b"b", b"c"]
    log.write(
        [
            Declare("x", "application/octet-stream", 1),
            Put("x", 1, [1.0], [1], [data[0]], "w"),
            Producer("p", 1),
            Put("x", 2, [2.0], [1], [data[1]], "w"),
            Producer("q", 5),
            Declare("y", "application/octet-stream", 1),
            Put("y", 1, [3.0], [1], [data[2]], "w"),
            Producer("p", 2),
        ],
        now=0,
    )
    segment = log.active.path
    log.close()
    assert _producer_tables(segment) == [{"p": 1, "q": 5}, {"p": 2}]
    again = SourceLog.open(path)
    assert list(again.producers.items()) == [("q", 5), ("p", 2)]  # least recent first
    assert frames(again.read("y", 1, 10)) == [(1, 3.0, b"c")]
    again.close()
    last = fmt.RECORD_HEADER.size + len(fmt.producers_body({"p": 2}))
    with open(segment, "r+b") as f:
        f.truncate(f.seek(0, 2) - last)
    torn = SourceLog.open(path)
    assert list(torn.producers.items()) == [("p", 1), ("q", 5)]
    assert frames(torn.read("x", 1, 10)) == [(1, 1.0, b"a"), (2, 2.0, b"b")]
    assert "y" in torn.channels and torn.read("y", 1, 10) == []
    torn.close()
