"""The spool of a reconnecting client: memory first, then a synced file, bounded in bytes."""

from __future__ import annotations

import os
import threading
from typing import Any

import msgpack
import trio

from turbine._client_outbox import Outbox
from turbine._client_spool import Spool
from turbine._spool_file import SpoolFile
from turbine.messages import Put
from turbine.protocol import PREFIX

SRC = "daq_rig_data_source"


def message(channel: str, payload: bytes, pseq: int, producer: str = "p") -> Put:
    return Put(
        source=SRC,
        channel=channel,
        ts=[float(pseq)],
        sizes=[len(payload)],
        producer=producer,
        pseq=pseq,
    )


async def put(spool: Spool, channel: str, payload: bytes, pseq: int) -> None:
    await spool.add(message(channel, payload, pseq), [payload], len(payload))


def written(spool: Spool) -> bytes:
    return b"".join(bytes(b) for b in spool.unwritten())


def headers(buffers: list[Any]) -> list[dict[str, Any]]:
    """The headers of the messages in ``buffers``."""
    data = b"".join(bytes(b) for b in buffers)
    out = []
    while data:
        header, payload = PREFIX.unpack_from(data)
        out.append(msgpack.unpackb(data[PREFIX.size : PREFIX.size + header]))
        data = data[PREFIX.size + header + payload :]
    return out


def frame(i: int) -> bytes:
    return b"frame %02d " % i + b"x" * 51  # 60 bytes


RECORD = 16 + 41  # a record's fixed header and this test's put header (msgpack)


async def test_past_its_memory_the_spool_goes_on_in_a_synced_file_read_back_in_order(tmp_path):
    spool = Spool(10_000, str(tmp_path), memory=100, name="daq")
    for i in range(1, 6):
        await put(spool, "x", frame(i), i)
    stats = spool.statistics()
    assert (stats["spooled_frames"], stats["spooled_bytes"]) == (5, 300)
    assert stats["spooled_file_bytes"] == 240  # the first in memory, four on file
    path = tmp_path / f"daq-{os.getpid()}.spool"
    assert path.stat().st_size == 4 * (RECORD + 60)  # a record each: headers and frames
    out = written(spool)
    at = [out.index(frame(i)) for i in range(1, 6)]
    assert at == sorted(at)  # every frame, in the order put
    spool.acknowledged(3)
    assert path.stat().st_size > 0  # entries 4 and 5 are still on file
    spool.acknowledged(spool.end)
    assert path.stat().st_size == 0 and spool.statistics()["spooled_bytes"] == 0
    await put(spool, "x", frame(6), 6)  # in memory again
    spool.close()
    assert not path.exists()


async def test_the_spool_file_is_written_and_synced_off_the_event_loop(tmp_path, monkeypatch):
    loop_thread = threading.get_ident()
    synced_in: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_in.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(10_000, str(tmp_path), memory=0, name="daq")
    with trio.CancelScope() as scope:
        scope.cancel()  # a cancel does not lose a put taken: the write finishes, then it counts
        for i in range(1, 4):
            await put(spool, "x", frame(i), i)
    assert len(synced_in) == 3 and loop_thread not in synced_in
    assert spool.statistics()["spooled_file_bytes"] == 180
    out = written(spool)
    assert all(frame(i) in out for i in range(1, 4))
    spool.close()


async def test_a_damaged_or_cut_record_is_never_read_back_and_readers_get_a_gap(tmp_path):
    spool = Spool(10_000, str(tmp_path), memory=60, name="daq")
    for i in range(1, 5):
        await put(spool, "x", frame(i), i)  # 1 in memory; 2, 3, 4 on file
    path = tmp_path / f"daq-{os.getpid()}.spool"
    size = RECORD + 60
    raw = bytearray(path.read_bytes())
    raw[size + RECORD + 5] ^= 0xFF  # a bit flipped in frame 3's record
    path.write_bytes(bytes(raw[: 2 * size + 30]))  # and frame 4's record cut short
    await put(spool, "x", frame(5), 5)  # appended behind the cut
    out = written(spool)
    assert frame(1) in out and frame(2) in out and frame(5) in out
    assert frame(3) not in out and frame(4) not in out
    assert spool.statistics()["dropped_frames"] == 2
    # The next put of the channel tells the broker to leave their two numbers
    # unused, and when they were: readers get a gap of 2 there, with its span.
    last = spool._entries[-1].put
    assert (last.skipped, last.skipped_first_time, last.skipped_last_time) == (2, 3.0, 4.0)
    spool.close()


async def test_a_full_spool_tells_the_next_put_how_many_frames_it_dropped_and_when(tmp_path):
    spool = Spool(120, name="daq")
    for i in range(1, 6):
        await put(spool, "x", frame(i), i)  # each pushes the oldest out past two
    assert spool.statistics()["dropped_frames"] == 3
    written(spool)
    first = spool._entries[0].put  # frame 4: told of 1, 2 and 3, put at 1.0 .. 3.0
    assert (first.skipped, first.skipped_first_time, first.skipped_last_time) == (3, 1.0, 3.0)
    assert spool._entries[1].put.skipped is None


async def test_a_full_spool_keeps_puts_a_lost_connection_left_unanswered_and_drops_unsent_ones(
    tmp_path,
):
    """Puts written before the connection was lost may or may not be stored:
    they stay for the replay; the full spool drops the newer, never-sent ones,
    and only those are told of as a gap."""
    spool = Spool(180, name="daq")  # three frames
    await put(spool, "x", frame(1), 1)
    await put(spool, "x", frame(2), 2)
    assert frame(1) in written(spool)  # written, unanswered: the connection is lost
    spool.rewind()
    for i in range(3, 7):
        await put(spool, "x", frame(i), i)
    assert spool.statistics()["dropped_frames"] == 3
    assert (spool.frames, spool.bytes) == (3, 180)
    replay = written(spool)
    assert [replay.find(frame(i)) >= 0 for i in range(1, 7)] == [True] * 2 + [False] * 3 + [True]
    assert replay.find(frame(1)) < replay.find(frame(2)) < replay.find(frame(6))
    kept = [e.put for e in spool._entries if not e.dropped]
    assert [(p.pseq, p.skipped) for p in kept] == [(1, None), (2, None), (6, 3)]
    assert (kept[2].skipped_first_time, kept[2].skipped_last_time) == (3.0, 5.0)
    spool.acknowledged(spool.end)
    assert (spool.frames, spool.bytes, len(spool._entries)) == (0, 0, 0)


async def test_a_spool_full_of_a_replay_not_yet_acknowledged_drops_no_new_put():
    """Reconnected, the replay fills the spool until the broker acknowledges it:
    puts made meanwhile push the replayed ones out (in doubt, then stored when
    the acknowledgement comes), never a put of their own; nothing is counted
    dropped and no put tells of a gap."""
    spool = Spool(180, name="daq")  # three frames
    for i in range(1, 4):
        await put(spool, "x", frame(i), i)
    spool.rewind()  # a reconnect: the replay writes all three again
    replay = written(spool)
    assert all(frame(i) in replay for i in range(1, 4)), replay
    await put(spool, "x", frame(4), 4)
    await put(spool, "x", frame(5), 5)  # not written yet: the flusher has not run
    stats = spool.statistics()
    assert (stats["dropped_frames"], stats["in_doubt_frames"], spool.frames) == (0, 2, 3)
    replay = written(spool)
    assert frame(4) in replay and frame(5) in replay
    assert [(e.put.pseq, e.put.skipped) for e in spool._entries] == [
        (3, None),
        (4, None),
        (5, None),
    ]
    spool.acknowledged(spool.end)
    stats = spool.statistics()
    assert (stats["dropped_frames"], stats["in_doubt_frames"], spool.frames) == (0, 0, 0)


async def test_a_file_a_crashed_run_left_is_replayed_for_each_source_it_opens(tmp_path):
    left = SpoolFile.create(str(tmp_path), "daq-1.spool")  # pid 1: not this process
    for i in range(1, 4):
        left.append(message("x", frame(i), i, producer="old"), [frame(i)])
    left.append(
        Put(source="other", channel="y", ts=[9.0], sizes=[3], producer="old", pseq=1), [b"abc"]
    )
    left.close(remove=False)  # the process died: its lock is gone, the file stays
    cut = tmp_path / "daq-1.spool"
    cut.write_bytes(cut.read_bytes() + b"TSp2 cut short by the crash")
    held = SpoolFile.create(str(tmp_path), "daq-2.spool")  # a running client's: not taken
    held.append(message("x", b"not mine", 1, producer="running"), [b"not mine"])

    spool = Spool(10_000, str(tmp_path), memory=0, name="daq")
    assert await trio.to_thread.run_sync(spool.left.recover) == 4
    await put(spool, "x", frame(9), 1)  # this run's own first put (its source is open)
    spool.adopt(SRC)  # what the crashed run had spooled for it goes behind, in order
    out = written(spool)
    assert [out.index(frame(i)) for i in (9, 1, 2, 3)] == sorted(
        out.index(frame(i)) for i in (9, 1, 2, 3)
    )
    assert b"abc" not in out and b"not mine" not in out  # "other" is not open; the held one stays
    puts = [e.put for e in spool._entries]
    assert [(p.producer, p.pseq, p.ts) for p in puts[1:]] == [
        ("old", i, [float(i)]) for i in (1, 2, 3)
    ]
    assert spool.statistics()["recovered_frames"] == 3
    spool.acknowledged(spool.end)
    spool.close()
    assert (tmp_path / "daq-1.spool").exists()  # it still holds "other"'s put, for a later run
    assert (tmp_path / "daq-2.spool").exists()
    held.close()

    again = Spool(10_000, str(tmp_path), memory=0, name="daq")
    assert await trio.to_thread.run_sync(again.left.recover) == 4  # the same, read again
    again.adopt(SRC)
    again.adopt("other")
    written(again)
    again.acknowledged(again.end)
    assert not (tmp_path / "daq-1.spool").exists()  # all of it acknowledged: removed
    again.close()


async def test_puts_kept_in_memory_while_the_broker_is_away_are_noted_on_file(tmp_path):
    spool = Spool(10_000, str(tmp_path), memory=1000, name="daq")
    path = tmp_path / f"daq-{os.getpid()}.spool"
    await put(spool, "x", frame(1), 1)  # connected: memory only, nothing on file
    assert not path.exists()
    for i in (2, 3):
        await spool.add(message("x", frame(i), i), [frame(i)], 60, away=True)
    assert spool.statistics()["spooled_file_bytes"] == 0  # the frames stay in memory
    assert path.stat().st_size == 2 * RECORD  # a header each, no frames
    left = SpoolFile.claim(str(path))
    assert left is None  # held while this client runs
    out = written(spool)
    assert all(frame(i) in out for i in (1, 2, 3))  # replayed from memory
    spool.acknowledged(spool.end)
    assert path.stat().st_size == 0  # notes of acknowledged puts go too
    spool.close()


async def test_a_crashed_runs_noted_puts_the_broker_lacks_become_a_gap_on_the_next_put(tmp_path):
    crashed = SpoolFile.create(str(tmp_path), "daq-1.spool")
    for i in (1, 2, 3):  # held in memory by the crashed run: notes only
        crashed.note(message("x", frame(i), i, producer="old"))
    crashed.append(message("x", frame(4), 4, producer="old"), [frame(4)])
    crashed.close(remove=False)
    spool = Spool(10_000, str(tmp_path), memory=1000, name="daq")
    assert spool.left.recover() == 4
    assert spool.left.producers(SRC) == ["old"]
    spool.adopt(SRC, {"old": 1})  # the broker had stored put 1: 2 and 3 were lost
    assert spool.statistics()["dropped_frames"] == 1 * 2
    out = written(spool)
    assert frame(4) in out and frame(2) not in out
    (replayed,) = [e.put for e in spool._entries]
    assert (replayed.pseq, replayed.skipped) == (4, 2)
    assert (replayed.skipped_first_time, replayed.skipped_last_time) == (2.0, 3.0)
    spool.acknowledged(spool.end)
    assert not (tmp_path / "daq-1.spool").exists()  # all it held is settled
    spool.close()


async def test_a_gap_no_later_put_carries_is_told_by_a_put_with_no_frames_where_that_is_recorded():
    spool = Spool(100)
    outbox = Outbox(object(), "127.0.0.1:1", 1000, lambda e: None, spool=spool)  # type: ignore[arg-type]
    await put(spool, "x", frame(1), 1)
    await put(spool, "y", frame(2), 2)  # the spool is full: x's frame is dropped
    assert spool.dropped_frames == 1 and list(spool.skips.pending) == [(SRC, "x")]
    outbox.opened(SRC, {"source": SRC, "channels": {"x": 1}})  # an older broker
    outbox.tell_gaps()
    assert not outbox.has_puts  # it would store nothing: the gap waits for a later put
    outbox.opened(SRC, {"source": SRC, "channels": {"x": 1}, "empty_puts": True})
    outbox.tell_gaps()
    assert outbox.has_puts
    await outbox.stage()  # into the spool, behind y's put
    told = headers(spool.unwritten())
    assert [(h["channel"], h["sizes"], h.get("skipped")) for h in told] == [
        ("y", [60], None),
        ("x", [], 1),
    ]
    assert not spool.skips.pending
