"""The tiered store under a real hub: memory as hot cache, every frame archived, reads across both."""

from __future__ import annotations

import pytest
import trio

from turbine import RequestFailed
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.hub import Hub, PendingFetch
from turbine.peer import Peer
from turbine.store import ChannelSpec, Query

from .conftest import fill

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
            assert archive.logs[SRC].settings == {"archive_bytes": 2**25, "archive_age": 3600.0}
