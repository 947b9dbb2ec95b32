"""The archive of a data directory under trio: group commit, flush, sync policies, lock, disk full."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from turbine.archive import (
    ArchiveConfig,
    ArchiveError,
    ArchiveLocked,
    Declare,
    Put,
    Settings,
    SyncPolicy,
    open_archive,
)

from .conftest import fill

SRC = "daq_rig_data_source"


def put(first: int, n: int, size: int = 100) -> Put:
    data = [bytes([i % 251]) * size for i in range(first, first + n)]
    return Put("x", first, [float(i) for i in range(first, first + n)], [size] * n, data, "me")


def seqs(runs) -> list[int]:
    return [r.first_seq + i for r in runs for i in range(len(r.ts))]


async def test_flushed_frames_are_on_disk_after_reopening(tmp_path):
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            archive.create_source(SRC, {"archive_bytes": 2**24})
            archive.append(SRC, Declare("x", "text/plain", 1))
            for i in range(100):
                archive.append(SRC, put(1 + 10 * i, 10))
            await archive.flush()
            assert archive.commits <= 3  # one sync covered many puts
            assert archive.statistics()["bytes_written"] == 100 * 10 * 100
            assert archive.statistics()["backlog"] == 0
            assert seqs(await archive.read(SRC, "x", 995, 100)) == list(range(995, 1001))
        async with open_archive(tmp_path) as archive:
            log = archive.logs[SRC]
            assert (
                log.channels["x"].next_seq == 1001
                and log.channels["x"].content_type == "text/plain"
            )
            runs = await archive.read(SRC, "x", 1, 2000)
            assert seqs(runs) == list(range(1, 1001))
            assert bytes(runs[0].data[250]) == bytes([251 % 251]) * 100
            got = await archive.time_range(SRC, "x", 500.0, 510.0, 100)
            assert seqs(got) == list(range(500, 510))


async def test_a_source_whose_creation_was_cut_short_is_forgotten(tmp_path):
    (tmp_path / "sources" / SRC).mkdir(parents=True)  # killed right after the mkdir
    other = tmp_path / "sources" / "daq_other_data_source"
    other.mkdir()
    (other / f"{1:016d}.seg").write_bytes(b"TURBSEG\n\x01")  # killed writing segment 1
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            assert archive.logs == {} and archive.broken == {}
            assert not other.exists()
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 2))
            await archive.flush()
            assert seqs(await archive.read(SRC, "x", 1, 10)) == [1, 2]


async def test_a_second_holder_of_the_data_dir_is_refused_and_named(tmp_path):
    with trio.fail_after(10):
        async with open_archive(tmp_path):
            with pytest.raises(ArchiveLocked) as info:
                async with open_archive(tmp_path):
                    pass  # pragma: no cover
            message = str(info.value)
            assert f"process {os.getpid()} on {socket.gethostname()}" in message
            assert "another --data-dir" in message
        async with open_archive(tmp_path):  # released on exit
            pass


async def test_interval_policy_acknowledges_writes_and_syncs_later(tmp_path, mock_clock):
    config = ArchiveConfig(sync=SyncPolicy.INTERVAL, sync_interval=5.0)
    with trio.fail_after(60):
        async with open_archive(tmp_path, config, clock=trio.current_time) as archive:
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 3))
            await archive.flush()
            assert archive.statistics()["last_sync"] is None
            assert seqs(await archive.read(SRC, "x", 1, 10)) == [1, 2, 3]  # written to the OS
            mock_clock.jump(6)
            while archive.statistics()["last_sync"] is None:
                await archive.changed()
            st = archive.statistics()  # how long it took: real seconds, whatever the clock
            assert st["syncs"] == 1 and st["sync_seconds"] == st["last_sync_seconds"] > 0


async def test_every_group_commit_of_the_always_policy_counts_its_sync(tmp_path):
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:  # (SyncPolicy.ALWAYS)
            assert archive.statistics()["last_sync_seconds"] is None
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 3))
            await archive.flush()
            archive.append(SRC, put(4, 2))
            await archive.flush()
            st = archive.statistics()
    assert st["syncs"] == st["commits"] == 2
    assert 0 < st["last_sync_seconds"] <= st["sync_seconds"] < 10


def test_a_bad_policy_is_refused():
    with pytest.raises(ValueError, match="'sometimes' is not a valid SyncPolicy"):
        ArchiveConfig(sync="sometimes")


async def test_settings_and_deletion(tmp_path):
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            archive.create_source(SRC, {"shared": False})
            archive.append(SRC, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 50, size=1000))
            archive.append(SRC, Settings({"shared": True, "archive_bytes": 2**30}))
            await archive.flush()
            assert archive.logs[SRC].settings["shared"] is True
        async with open_archive(tmp_path) as archive:
            assert archive.logs[SRC].settings == {"shared": True, "archive_bytes": 2**30}
            freed = await archive.delete(SRC)
            assert freed > 50_000 and SRC not in archive
        async with open_archive(tmp_path) as archive:
            assert archive.logs == {}


async def test_disk_full_refuses_then_resumes_when_space_returns(small_disk):
    filler = small_disk / "filler"
    with trio.fail_after(120):
        async with open_archive(small_disk / "data", clock=trio.current_time) as archive:
            archive.create_source(SRC, {"archive_bytes": 2**30})
            archive.append(SRC, Declare("x", "application/octet-stream", 1))
            archive.append(SRC, put(1, 10, size=10_000))
            await archive.flush()
            fill(filler)
            archive.append(SRC, put(11, 40, size=10_000))
            with pytest.raises(ArchiveError, match="the disk is full"):
                await archive.flush()
            with pytest.raises(ArchiveError, match="puts are refused"):
                archive.check_writable(SRC)
            assert seqs(await archive.read(SRC, "x", 1, 100)) == list(range(1, 11))  # reads go on
            os.unlink(filler)
            await archive.flush()  # tries again at once: what waited is written
            archive.check_writable(SRC)
            assert archive.statistics()["backlog"] == 0
        async with open_archive(small_disk / "data") as archive:
            runs = await archive.read(SRC, "x", 1, 100)
            assert seqs(runs) == list(range(1, 51))  # every frame, once
            assert all(
                bytes(d) == bytes([s % 251]) * 10_000
                for s, d in zip(seqs(runs), runs[0].data, strict=True)
            )


async def test_a_source_too_far_ahead_of_the_disk_is_refused_alone(tmp_path):
    with trio.fail_after(10):
        async with open_archive(tmp_path, ArchiveConfig(max_backlog=1000)) as archive:
            for name in (SRC, "daq_other_data_source"):
                archive.create_source(name, {})
                archive.append(name, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 20))  # 2,000 bytes, not yet written: no checkpoint yet
            with pytest.raises(
                ArchiveError, match=f"the archive of {SRC} is 0 MiB behind its puts"
            ):
                archive.check_writable(SRC)
            archive.check_writable("daq_other_data_source")  # the others go on
            await archive.flush()
            archive.check_writable(SRC)


async def test_puts_wait_for_others_to_join_their_commit_and_a_flush_starts_it_at_once(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("turbine.archive._commit.COMMIT_DELAY_S", 3600.0)
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            await archive.flush()
            commits = archive.commits
            for i in range(50):
                archive.append(SRC, put(1 + 10 * i, 10))
                await trio.testing.wait_all_tasks_blocked()
            assert archive.commits == commits  # nobody waits: they gather
            assert archive.backlog == 50 * 10 * 100
            await archive.flush()  # at once, not after the delay
            assert archive.commits == commits + 1
            assert seqs(await archive.read(SRC, "x", 1, 1000)) == list(range(1, 501))


async def test_a_flush_with_nothing_new_is_answered_at_once_and_starts_no_commit(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("turbine.archive._commit.COMMIT_DELAY_S", 3600.0)
    other = "daq_other_data_source"
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            for name in (SRC, other):
                archive.create_source(name, {})
                archive.append(name, Declare("x", "text/plain", 1))
            await archive.flush()
            commits = archive.commits
            archive.append(other, put(1, 10))
            await trio.testing.wait_all_tasks_blocked()
            await archive.flush([SRC])  # its frames are all on disk already
            await archive.flush([SRC])
            await trio.testing.wait_all_tasks_blocked()
            assert archive.commits == commits  # the other's puts still gather
            assert archive.backlog == 10 * 100
            archive.append(SRC, put(1, 5))
            await archive.flush([SRC])  # something new: a commit, at once
            assert archive.commits == commits + 1 and archive.backlog == 0
            assert seqs(await archive.read(other, "x", 1, 100)) == list(range(1, 11))
            assert seqs(await archive.read(SRC, "x", 1, 100)) == list(range(1, 6))


async def test_enough_queued_starts_a_commit_without_a_flush(tmp_path, monkeypatch):
    monkeypatch.setattr("turbine.archive._commit.COMMIT_DELAY_S", 3600.0)
    config = ArchiveConfig(max_backlog=8 * 2**20)  # commits at 1 MiB queued
    with trio.fail_after(10):
        async with open_archive(tmp_path, config) as archive:
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            await archive.flush()
            commits = archive.commits
            archive.append(SRC, put(1, 9, 100_000))  # 0.9 MB
            await trio.testing.wait_all_tasks_blocked()
            assert archive.commits == commits
            archive.append(SRC, put(10, 2, 100_000))  # 1.1 MB
            while archive.backlog:
                await archive.changed()
            assert archive.commits == commits + 1
            assert seqs(await archive.read(SRC, "x", 1, 100)) == list(range(1, 12))


async def test_puts_nobody_waits_for_are_written_after_the_delay(tmp_path, monkeypatch):
    monkeypatch.setattr("turbine.archive._commit.COMMIT_DELAY_S", 0.01)
    with trio.fail_after(10):
        async with open_archive(tmp_path) as archive:
            archive.create_source(SRC, {})
            archive.append(SRC, Declare("x", "text/plain", 1))
            archive.append(SRC, put(1, 3))
            while archive.backlog or archive.logs.get(SRC) is None:
                await archive.changed()
            assert archive.logs[SRC].channels["x"].next_seq == 4  # written, no flush asked
