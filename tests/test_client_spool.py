"""The spool of a reconnecting client: memory first, then a synced file, bounded in bytes."""

from __future__ import annotations

import os

from turbine._client_spool import Spool
from turbine.messages import Put

SRC = "daq_rig_data_source"


def put(spool: Spool, channel: str, payload: bytes, pseq: int) -> None:
    message = Put(
        source=SRC, channel=channel, ts=[float(pseq)], sizes=[len(payload)], producer="p", pseq=pseq
    )
    spool.add(message, [payload], len(payload))


def written(spool: Spool) -> bytes:
    return b"".join(bytes(b) for b in spool.unwritten())


def frame(i: int) -> bytes:
    return b"frame %02d " % i + b"x" * 51  # 60 bytes


def test_past_its_memory_the_spool_goes_on_in_a_synced_file_read_back_in_order(tmp_path):
    spool = Spool(10_000, str(tmp_path), memory=100, name="daq.spool")
    for i in range(1, 6):
        put(spool, "x", frame(i), i)
    stats = spool.statistics()
    assert (stats["spooled_frames"], stats["spooled_bytes"]) == (5, 300)
    assert stats["spooled_file_bytes"] == 240  # the first in memory, four on file
    path = tmp_path / "daq.spool"
    assert os.path.getsize(path) == 4 * (12 + 60)  # a record each: header and frames
    out = written(spool)
    at = [out.index(frame(i)) for i in range(1, 6)]
    assert at == sorted(at)  # every frame, in the order put
    spool.acknowledged(3)
    assert os.path.getsize(path) > 0  # entries 4 and 5 are still on file
    spool.acknowledged(spool.end)
    assert os.path.getsize(path) == 0 and spool.statistics()["spooled_bytes"] == 0
    put(spool, "x", frame(6), 6)  # in memory again
    spool.close()
    assert not path.exists()


def test_a_damaged_or_cut_record_is_never_read_back_and_readers_get_a_gap(tmp_path):
    spool = Spool(10_000, str(tmp_path), memory=60, name="daq.spool")
    for i in range(1, 5):
        put(spool, "x", frame(i), i)  # 1 in memory; 2, 3, 4 on file
    path = tmp_path / "daq.spool"
    raw = bytearray(path.read_bytes())
    raw[72 + 12 + 5] ^= 0xFF  # a bit flipped in frame 3's record
    path.write_bytes(bytes(raw[: 2 * 72 + 30]))  # and frame 4's record cut short
    put(spool, "x", frame(5), 5)  # appended behind the cut
    out = written(spool)
    assert frame(1) in out and frame(2) in out and frame(5) in out
    assert frame(3) not in out and frame(4) not in out
    assert spool.statistics()["dropped_frames"] == 2
    # The next put of the channel tells the broker to leave their two numbers
    # unused: readers get a gap of 2 there.
    assert spool._entries[-1][0].skipped == 2
    spool.close()
