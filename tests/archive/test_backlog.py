"""What waits for the disk beyond the memory rings is bounded by ``max_backlog``, channel by channel."""

from __future__ import annotations

import trio
import trio.testing

from turbine import RequestFailed
from turbine.archive import ArchiveConfig, open_archive
from turbine.archive._store import TieredStores
from turbine.store import ChannelSpec

SRC = "daq_rig_data_source"
FRAME = b"x" * 65536
LIMIT = 2**20  # max_backlog


async def test_a_rings_written_frames_do_not_cover_another_channels_queue(tmp_path):
    """Channel ``a``'s ring holds 4 MiB already written; channel ``b``'s ring keeps
    one frame, so what is queued for ``b`` is in memory only in the write queue.
    While the disk stalls, ``b`` is slowed at a quarter of max_backlog and refused
    past it: ``a``'s written frames are no room for ``b``'s queue."""
    with trio.fail_after(30):
        async with open_archive(tmp_path, ArchiveConfig(max_backlog=LIMIT)) as archive:
            stores = TieredStores(archive)
            stores.keep_settings(SRC, {"archive_bytes": 2**30})
            a = stores(ChannelSpec(SRC, "a", 10**6, 1, "application/octet-stream"))
            b = stores(ChannelSpec(SRC, "b", 1, 1, "application/octet-stream"))
            for i in range(64):
                a.append_many([1.0], [FRAME], "me", i)
            await archive.flush()
            assert a.bytes > 4 * 2**20 and archive.backlog == 0
            taken = 0
            behind_at = None
            async with archive._io:  # the disk stalls
                try:
                    for _ in range(64):  # 4 MiB more than the limit
                        b.append_many([2.0], [FRAME], "me", 100)
                        taken += 1
                        if behind_at is None and stores.behind([SRC]):
                            behind_at = taken
                except RequestFailed as exc:
                    assert exc.code == "disk" and "behind its puts" in str(exc)
                # only b's newest frame is in a ring: the queue holds the rest alone
                assert (taken - 1) * len(FRAME) <= LIMIT + len(FRAME)
                assert behind_at is not None
                assert (behind_at - 1) * len(FRAME) <= LIMIT // 4 + len(FRAME)
            await archive.flush()  # the disk is back: what was taken is written
            assert archive.backlog == 0
            assert archive.logs[SRC].channels["b"].next_seq == 1 + taken


async def test_a_channels_queue_its_own_ring_holds_runs_ahead_of_the_disk(tmp_path):
    """The same burst into a ring that holds it is taken whole (the write-behind)."""
    with trio.fail_after(30):
        async with open_archive(tmp_path, ArchiveConfig(max_backlog=LIMIT)) as archive:
            stores = TieredStores(archive)
            stores.keep_settings(SRC, {"archive_bytes": 2**30})
            b = stores(ChannelSpec(SRC, "b", 10**6, 1, "application/octet-stream"))
            async with archive._io:
                for _ in range(64):
                    b.append_many([2.0], [FRAME], "me", 100)
                assert not stores.behind([SRC])
                assert archive.backlog == 64 * len(FRAME)
            await archive.flush()
            assert archive.logs[SRC].channels["b"].next_seq == 65


async def test_channels_whose_frames_are_written_leave_nothing_in_the_backlog_table(tmp_path):
    """A source whose channels come and go (one per run, say) keeps no per-channel
    backlog entry for a channel once its frames are written: the table, read on
    every put, holds only the channels with bytes waiting for the disk."""
    with trio.fail_after(30):
        async with open_archive(tmp_path, ArchiveConfig(max_backlog=LIMIT)) as archive:
            stores = TieredStores(archive)
            stores.keep_settings(SRC, {"archive_bytes": 2**30})
            queue = archive._queues[SRC]
            for run in range(50):
                ch = stores(ChannelSpec(SRC, f"run{run}", 4, 1, "application/octet-stream"))
                ch.append_many([1.0, 2.0], [b"a" * 100, b"b" * 10], "me", run)
            assert len(queue.channel_pending) == 50 and archive.backlog == 50 * 110
            await archive.flush()
            assert queue.channel_pending == {} and archive.backlog == 0
            async with archive._io:  # the disk stalls: the waiting channel has its entry
                ch.append_many([3.0], [b"c" * 7], "me", 99)
                assert queue.channel_pending == {"run49": 7}
            await archive.flush()
            assert queue.channel_pending == {}
            assert archive.logs[SRC].channels["run49"].next_seq == 4
