"""The tiered store under a real hub: memory as hot cache, every frame archived, reads across both."""

from __future__ import annotations

import shutil

import pytest
import trio

from turbine import RequestFailed
from turbine._constants import ARCHIVE_BYTES
from turbine.archive import _format as fmt
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.cli.info import _disk_status
from turbine.fetch import PendingFetch
from turbine.hub import Hub
from turbine.peer import Peer
from turbine.store import ChannelSpec, Query

from .conftest import fill
from .test_log import flip

SRC = "daq_rig_data_source"
ME = Peer(1, name="me")


def hub_with(factory: TieredStores) -> Hub:
    hub = Hub(store=factory, clock=lambda: 1000.0)
    hub.open_source(ME, SRC, channels={"x.bin": "application/octet-stream"}, cache_frames=10)
    return hub


def put(hub: Hub, first: int, n: int) -> None:
    data = [b"frame %d" % s for s in range(first, first + n)]
    hub.put(ME, SRC, "x.bin", [float(s) for s in range(first, first + n)], data)


def numbers(run) -> list[int]:
    return list(run.seqs) if run.seqs is not None else list(range(run.first_seq, run.next_seq))


async def fetch(hub: Hub, **selection) -> list[tuple[int, bytes]]:
    result = hub.fetch(SRC, **selection)
    if isinstance(result, PendingFetch):
        groups, payloads = await result.run()
    else:
        groups, payloads = result
    out = []
    for g in groups:
        out += [(g[3] + i, None) for i in range(len(g[4]))]
    return [(s, bytes(p)) for (s, _), p in zip(out, payloads, strict=True)]


async def test_reads_span_memory_and_disk_without_a_seam(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            put(hub, 1, 25)  # the ring keeps the newest 10
            store = hub.sources[SRC].channels["x.bin"].store
            assert len(store) == 10 and store.first_seq == 16
            assert store.read_now(Query("newest", 5)) is not None  # memory answers at once
            assert store.read_now(Query("oldest", 5)) is None  # needs the disk
            got = await fetch(hub, oldest=20)
            assert got == [(s, b"frame %d" % s) for s in range(1, 21)]
            got = await fetch(hub, after=3)
            assert [s for s, _ in got] == list(range(4, 26))  # disk, then memory: no gap, no repeat
            got = await fetch(hub, start=2.0, duration=3.0)
            assert [s for s, _ in got] == [2, 3, 4]
            got = await fetch(hub, newest=12)
            assert [s for s, _ in got] == list(range(14, 26))


async def test_a_restarted_broker_continues_the_numbers_and_types(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            put(hub, 1, 7)
            await hub.sources[SRC].channels["x.bin"].store.flushed()
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive)
            (source,) = factory.recovered()
            assert source.name == SRC
            assert source.channels["x.bin"].next_seq == 8
            assert source.channels["x.bin"].content_type == "application/octet-stream"
            hub = hub_with(factory)
            put(hub, 8, 1)
            assert hub.sources[SRC].channels["x.bin"].store.last_seq == 8
            got = await fetch(hub, oldest=100)
            assert [s for s, _ in got] == list(range(1, 9))


async def test_an_explicit_content_type_survives_restarts(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            hub.put(ME, SRC, "frames.dat", [1.0], [b"\x00" * 4], content_type="image/x-gray8")
            await archive.flush()
        for _ in range(2):  # a put that names no type keeps the archived one
            async with open_archive(tmp_path) as archive:
                factory = TieredStores(archive)
                (source,) = factory.recovered()
                assert source.channels["frames.dat"].content_type == "image/x-gray8"
                hub = hub_with(factory)
                hub.put(ME, SRC, "frames.dat", [2.0], [b"\x01" * 4])
                await archive.flush()


async def test_a_hub_on_an_archive_brings_its_sources_back_offline(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            put(hub, 1, 4)
            hub.put(ME, SRC, "metadata.txt", [5.0], [b'{"rate": 10}'])
            await archive.flush()
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive), clock=lambda: 2000.0)
            (info,) = hub.list_sources()
            assert (info["name"], info["online"]) == (SRC, False)
            assert info["metadata"] == {"rate": 10}  # the newest metadata frame, in memory
            assert {c["name"]: c["next_seq"] for c in info["channels"]} == {
                "x.bin": 5,
                "metadata.txt": 2,
            }
            assert (
                info["bytes"] == hub.used == hub.sources[SRC].channels["metadata.txt"].store.bytes
            )
            hub.open_source(ME, SRC, channels={"x.bin": "application/octet-stream"})
            put(hub, 5, 1)
            got = await fetch(hub, oldest=10)  # x.bin, then metadata.txt
            assert [s for s, _ in got] == [1, 2, 3, 4, 5, 1]


async def test_an_explicit_number_is_a_hole_on_disk_too(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive)
            store = factory(ChannelSpec(SRC, "m", 2, 1))
            store.append_many([1.0, 2.0], [b"a", b"b"], "w", 0)
            store.append_many([3.0], [b"c"], "w", 2, seq=10)
            store.append_many([4.0, 5.0], [b"d", b"e"], "w", 3)  # the ring keeps 2
            run = await store.read_later(Query("oldest", 10))
            assert numbers(run) == [1, 2, 10, 11, 12]
            assert [bytes(d) for d in run.data] == [b"a", b"b", b"c", b"d", b"e"]
            with pytest.raises(ValueError, match="below the next number"):
                store.append_many([6.0], [b"f"], "w", 5, seq=3)


async def test_the_hub_dropping_a_source_keeps_its_archive_until_it_is_deleted(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive)
            hub = hub_with(factory)
            put(hub, 1, 5)
            hub.delete(SRC)  # as when memory is made for another source
            hub.open_source(ME, SRC, channels={"x.bin": "application/octet-stream"})
            put(hub, 6, 2)  # the numbers continue
            assert [s for s, _ in await fetch(hub, oldest=10)] == list(range(1, 8))
            await archive.flush()
            freed = await factory.delete(SRC)  # turbine rm
            assert freed > 0 and not (tmp_path / "sources" / SRC).exists()
            hub.delete(SRC)
            hub.open_source(ME, SRC, channels={"x.bin": "application/octet-stream"})
            put(hub, 8, 1)
            await archive.flush()
            assert archive.statistics()["errors"] == {}
            assert [s for s, _ in await fetch(hub, oldest=10)] == [8]


async def test_puts_are_refused_with_the_reason_while_the_disk_is_full(small_disk):
    with trio.fail_after(30):
        async with open_archive(small_disk / "data") as archive:
            hub = hub_with(TieredStores(archive))
            put(hub, 1, 2)
            await archive.flush()
            fill(small_disk / "filler")
            hub.put(ME, SRC, "x.bin", [3.0], [b"x" * 100_000])  # queued: puts never wait
            with pytest.raises(RequestFailed, match="the disk is full"):
                await hub.sources[SRC].channels["x.bin"].store.flushed()
            with pytest.raises(RequestFailed, match="the disk is full") as info:
                put(hub, 4, 1)
            assert info.value.code == "disk"
            assert [s for s, _ in await fetch(hub, newest=5)] == [1, 2, 3]  # reads go on
            (small_disk / "filler").unlink()
            await hub.sources[SRC].channels["x.bin"].store.flushed()
            put(hub, 4, 1)
            await archive.flush()
        async with open_archive(small_disk / "data") as archive:
            hub = hub_with(TieredStores(archive))
            assert [s for s, _ in await fetch(hub, oldest=10)] == [1, 2, 3, 4]


async def test_the_factory_gives_new_sources_its_retention(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive, archive_bytes=2**25, archive_age=3600.0))
            put(hub, 1, 1)
            await archive.flush()
            settings = archive.logs[SRC].settings
            assert (settings["archive_bytes"], settings["archive_age"]) == (2**25, 3600.0)


async def test_a_restart_brings_back_a_sources_settings(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            hub.open_source(ME, "daq_other_data_source", cache_frames=7, cache_bytes=2**20)
            hub.release(ME, "daq_other_data_source")
            hub.release(ME)
            # reopened with other settings: the newest are the ones kept
            hub.open_source(
                ME, SRC, cache_frames=20, cache_bytes=2**21, shared=True, archive_bytes=2**23
            )
            put(hub, 1, 3)
            await archive.flush()
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive))
            got = {
                i["name"]: (i["cache_frames"], i["cache_bytes"], i["shared"], i["archive_bytes"])
                for i in hub.list_sources()
            }
            assert got == {
                SRC: (20, 2**21, True, 2**23),
                "daq_other_data_source": (7, 2**20, False, ARCHIVE_BYTES),
            }
            assert hub.sources[SRC].channels["x.bin"].store.max_frames == 20


async def test_archive_bytes_zero_keeps_a_source_memory_only(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive)
            hub = Hub(store=factory)
            hub.open_source(ME, SRC, channels={"x.bin": "a/b"}, cache_frames=10, archive_bytes=0)
            put(hub, 1, 25)
            await archive.flush()
            assert [s for s, _ in await fetch(hub, oldest=100)] == list(range(16, 26))
            assert hub.list_sources()[0]["archive_bytes"] == 0
            assert not (tmp_path / "sources" / SRC).exists()
            hub.release(ME)
            with pytest.raises(RequestFailed, match="is memory-only; it cannot change") as info:
                hub.open_source(ME, SRC, archive_bytes=2**20)
            assert info.value.code == "limits"
            hub.open_source(ME, SRC)  # reopened as it was: still memory-only
            put(hub, 26, 1)
            await archive.flush()
            assert not (tmp_path / "sources" / SRC).exists()
        async with open_archive(tmp_path) as archive:
            assert Hub(store=TieredStores(archive)).list_sources() == []


async def test_an_archived_source_cannot_turn_memory_only(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            hub.release(ME)
            with pytest.raises(RequestFailed, match="has an archive; it cannot change"):
                hub.open_source(ME, SRC, archive_bytes=0)
            with pytest.raises(RequestFailed, match="must not be negative") as info:
                hub.open_source(ME, SRC, archive_bytes=-1)
            assert info.value.code == "limits"


async def test_max_disk_refuses_an_archive_that_does_not_fit_and_says_what_is_left(tmp_path):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive, archive_bytes=2**21, max_disk=3 * 2**20)
            hub = Hub(store=factory)
            hub.open_source(ME, SRC)  # the broker's default: 2 MiB of the 3
            with pytest.raises(RequestFailed) as info:
                hub.open_source(ME, "daq_b_data_source")
            assert info.value.code == "disk"
            assert str(info.value).startswith(
                "cannot reserve 2.0 MiB (archive_bytes) of disk for source "
                "'daq_b_data_source': only 1.0 MiB of the broker's 3.0 MiB (--max-disk) are left"
            )
            assert "daq_b_data_source" not in hub.sources  # refused: nothing was made
            hub.open_source(ME, "daq_b_data_source", archive_bytes=2**20)  # what is left fits
            hub.open_source(ME, "daq_c_data_source", archive_bytes=0)  # memory-only takes none
            hub.release(ME)
            hub.open_source(ME, SRC)  # reopening takes no more than it has
            hub.release(ME)
            with pytest.raises(RequestFailed, match="only 2.0 MiB of the broker's"):
                hub.open_source(ME, SRC, archive_bytes=2**22)
            hub.delete(SRC)
            await factory.delete(SRC)  # turbine rm gives its reservation back
            hub.open_source(ME, "daq_d_data_source", archive_bytes=2**21)


async def test_max_disk_beyond_the_free_space_is_said_and_the_disk_itself_refuses(tmp_path, caplog):
    huge = 2**60  # more than any file system here has free
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            with caplog.at_level("WARNING", logger="turbine.archive"):
                factory = TieredStores(archive, archive_bytes=2**20, max_disk=huge)
            assert f"--max-disk 1073741824.0 GiB is more than the file system of {tmp_path}" in (
                caplog.text
            )
            hub = Hub(store=factory)
            hub.open_source(ME, SRC)  # 1 MiB: the disk has that
            with pytest.raises(RequestFailed) as info:
                hub.open_source(ME, "daq_b_data_source", archive_bytes=huge // 2)
            assert info.value.code == "disk"
            assert str(info.value).startswith(
                "cannot reserve 536870912.0 GiB (archive_bytes) of disk for source "
                f"'daq_b_data_source': the file system of {tmp_path} has room for only "
            )
            assert "though --max-disk 1073741824.0 GiB would allow it" in str(info.value)
            assert "daq_b_data_source" not in hub.sources
            assert factory.statistics()["free"] > 0


async def test_the_room_on_disk_counts_what_other_sources_reserved_and_have_not_written(
    tmp_path, monkeypatch
):
    free = 10 * 2**20
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage._replace(free=free))
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive, max_disk=100 * 2**20))
            hub.open_source(ME, SRC, archive_bytes=4 * 2**20)
            put(hub, 1, 10)
            await archive.flush()
            held = archive.held()[SRC]
            assert 0 < held < 2**20
            with pytest.raises(RequestFailed, match=r"has room for only 6\.0 MiB more") as info:
                hub.open_source(ME, "daq_b_data_source", archive_bytes=8 * 2**20)
            assert info.value.code == "disk"  # 10 MiB free, 4 MiB of it promised to SRC
            hub.open_source(ME, "daq_b_data_source", archive_bytes=5 * 2**20)


async def test_the_oldest_archive_data_goes_first_by_bytes(tmp_path):
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive))
            hub.open_source(ME, SRC, cache_frames=4, archive_bytes=2 * 2**20)
            frame = 64 * 1024
            for i in range(80):  # 5 MiB, a put at a time
                hub.put(ME, SRC, "x.bin", [float(i)], [bytes([i]) * frame])
                await archive.written()
            await archive.flush()
            on_disk = archive.logs[SRC].bytes
            assert on_disk <= 2 * 2**20 + 2**20  # the retention and at most one open segment
            got = await fetch(hub, oldest=100)
            seqs = [s for s, _ in got]
            assert seqs == list(range(seqs[0], 81)) and seqs[0] > 1  # the newest, without a gap
            assert all(p == bytes([s - 1]) * frame for s, p in got)
            assert len(seqs) * frame >= 2**20  # and at least a segment's worth of them


async def test_restored_sources_that_do_not_fit_memory_come_back_smaller(tmp_path, caplog):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive))
            for name in (SRC, "daq_b_data_source"):
                hub.open_source(ME, name, cache_bytes=600_000)
                hub.put(ME, name, "x.bin", [1.0, 2.0], [b"a" * 1000, b"b" * 1000])
            await archive.flush()
        async with open_archive(tmp_path) as archive:
            with caplog.at_level("WARNING", logger="turbine.hub"):
                hub = Hub(store=TieredStores(archive), max_memory=2**20)  # not both
            sizes = sorted(s.cache_bytes for s in hub.sources.values())
            assert sizes == [2**20 - 600_000, 600_000] and hub.reserved <= hub.max_memory
            assert "restored with cache_bytes 438.1 KiB instead of 585.9 KiB" in caplog.text
            for name in hub.sources:  # every frame still there, from disk
                result = hub.fetch(name, oldest=10)
                assert isinstance(result, PendingFetch)
                _, payloads = await result.run()
                assert [bytes(p) for p in payloads] == [b"a" * 1000, b"b" * 1000]


async def test_channel_info_says_what_memory_and_disk_hold(tmp_path):
    clock = [1000.0]
    with trio.fail_after(20):
        async with open_archive(tmp_path, clock=lambda: clock[0]) as archive:
            factory = TieredStores(archive, max_disk=2**31)
            hub = hub_with(factory)
            put(hub, 1, 25)  # the ring keeps 10
            assert hub.list_sources()[0]["channels"][0]["disk"]["frames"] == 0  # not written yet
            clock[0] = 1002.0
            await archive.flush()
            (info,) = hub.list_sources()
            (x,) = info["channels"]
            assert (x["frames"], x["first_seq"], x["last_seq"]) == (10, 16, 25)
            assert x["disk"] == {
                "frames": 25,
                "bytes": x["disk"]["bytes"],
                "first_seq": 1,
                "last_seq": 25,
                "first_time": 1.0,
                "last_time": 25.0,
            }
            payload = sum(len(b"frame %d" % s) for s in range(1, 26))
            assert x["disk"]["bytes"] >= payload
            st = factory.statistics()
            assert (st["reserved"], st["limit"], st["path"]) == (
                ARCHIVE_BYTES,
                2**31,
                str(tmp_path),
            )
            assert st["write_rate"] == payload / 2.0  # payload bytes over the 2 s since opening
            assert st["last_sync"] == 1002.0 and st["damage"] == st["errors"] == {}
            clock[0] = 1100.0  # nothing written for longer than the window
            assert factory.statistics()["write_rate"] == 0.0


async def test_a_memory_broker_has_no_disk_figures():
    hub = Hub()
    hub.open_source(ME, SRC, channels={"x.bin": "a/b"})
    assert hub.list_sources()[0]["channels"][0]["disk"] is None
    assert hub.store.statistics() is None


async def test_status_names_damage_found_in_the_archive(tmp_path, capsys):
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = hub_with(TieredStores(archive))
            put(hub, 1, 3)
            await archive.flush()
            mid = archive.logs[SRC].active.size
            for first in (4, 7):
                put(hub, first, 3)
                await archive.flush()
            path = archive.logs[SRC].active.path
        flip(path, mid + fmt.RECORD_HEADER.size + 30)
        async with open_archive(tmp_path) as archive:
            factory = TieredStores(archive)
            hub = Hub(store=factory)
            assert [s for s, _ in await fetch(hub, oldest=10)] == [1, 2, 3, 7, 8, 9]
            _disk_status(factory.statistics())
    out = capsys.readouterr().out
    assert out.startswith("disk: ") and f" in {tmp_path} (" in out and " free); writing " in out
    assert f"damage in {SRC}: segment 1, bytes {mid}-" in out
    assert "(its frames are reported to readers as missing)" in out


async def test_only_the_owner_may_shrink_a_sources_archive(tmp_path):
    other = Peer(2, name="other#2", client="other")
    with trio.fail_after(20):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive))
            hub.open_source(ME, SRC, archive_bytes=2**22, archive_age=3600.0)
            hub.release(ME)
            src = hub.open_source(other, SRC, archive_bytes=2**20, archive_age=60.0)
            assert (src.archive_bytes, src.archive_age) == (2**22, 3600.0)  # kept
            hub.release(other)
            src = hub.open_source(ME, SRC, archive_bytes=2**20, archive_age=60.0)
            assert (src.archive_bytes, src.archive_age) == (2**20, 60.0)  # its owner may
