"""A real broker (loopback TCP) whose channels are tiered stores: history from disk, numbers kept."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.test_broker import RawClient, take
from turbine import RequestFailed, open_client
from turbine._component_parts import open_small_endpoints
from turbine._constants import COMMAND_ARCHIVE_BYTES, LOG_ARCHIVE_BYTES
from turbine.archive import ArchiveConfig, open_archive
from turbine.archive._log import SourceLog
from turbine.archive._store import TieredStores
from turbine.testing import start_broker

SRC = "daq_rig_data_source"


async def serve_with_archive(root, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with open_archive(root) as archive, trio.open_nursery() as nursery:
        address = await start_broker(nursery, store=TieredStores(archive))
        task_status.started(address)


async def test_history_beyond_the_ring_comes_from_disk_and_survives_a_restart(tmp_path):
    payloads = [b"frame %d" % i for i in range(1, 41)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def first_broker(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await serve_with_archive(tmp_path, task_status=task_status)

            address = await nursery.start(first_broker)
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                for p in payloads:
                    await src.put("x", p, float(len(p)))
                await src.flush()  # on disk now
                got = await client.fetch(f"{SRC}/x", oldest=40)  # 30 of them only on disk
                assert [f.seq for f in got] == list(range(1, 41))
                assert [f.data for f in got] == payloads
                assert len(await client.fetch(f"{SRC}/x", newest=3)) == 3
            scope.cancel()  # the broker stops; the archive closes with it

        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_with_archive, tmp_path)
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                await src.put("x", b"after the restart")
                await src.flush()
                got = await client.fetch(f"{SRC}/x", oldest=100)
                assert [f.seq for f in got] == list(range(1, 42))  # the numbers continue
                assert got[0].data == b"frame 1" and got[-1].data == b"after the restart"
            nursery.cancel_scope.cancel()


async def test_a_large_fetch_from_disk_comes_in_parts_under_the_limits(tmp_path):
    """The store task's replies are split like memory's: parts of at most 8192 frames."""
    n = 20_000
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_with_archive, tmp_path)
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, cache_frames=10)
                for i in range(n):
                    await src.put("x", b"%d" % i, float(i))
                await src.flush()
                raw = await RawClient.connect(address)
                await raw.send("fetch", {"id": 1, "pattern": f"{SRC}/x", "oldest": n})
                parts = []
                while not parts or parts[-1].more:
                    parts.append(await raw.receive())
                await raw.aclose()
                got = await client.fetch(f"{SRC}/x", oldest=n)
            nursery.cancel_scope.cancel()
    assert [p.type for p in parts] == ["frames"] * 3
    assert [sum(len(g[5]) for g in p.groups) for p in parts] == [8192, 8192, n - 2 * 8192]
    assert [f.seq for f in got] == list(range(1, n + 1))
    assert got[-1].data == b"%d" % (n - 1)


async def test_a_fetch_of_many_parts_from_disk_is_whole_and_in_order(tmp_path):
    """Read and sent in parts of FETCH_PART_BYTES: every selection, across the ring too."""
    n, size = 90, 256 * 1024  # 22.5 MiB: three parts
    payloads = [bytes([i]) * size for i in range(n)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_with_archive, tmp_path)
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, cache_frames=4)
                for i, p in enumerate(payloads[:80]):
                    await src.put("x", p, float(i))
                await src.flush()
                for i in range(80, n):  # in the ring, perhaps not yet on disk
                    await src.put("x", payloads[i], float(i))
                path = f"{SRC}/x"
                for got, first, end in [
                    (await client.fetch(path, oldest=n), 0, n),
                    (await client.fetch(path, after=5), 5, n),
                    (await client.fetch(path, newest=70), n - 70, n),
                    (await client.fetch(path, oldest=33), 0, 33),
                    (await client.fetch(path, start=10.0, duration=75.0), 10, 85),
                ]:
                    assert [f.seq for f in got] == list(range(first + 1, end + 1))
                    assert all(f.data == payloads[f.seq - 1] for f in got)
            nursery.cancel_scope.cancel()


async def test_a_client_sets_its_sources_disk_and_is_told_when_it_does_not_fit(tmp_path):
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive, trio.open_nursery() as nursery:
            factory = TieredStores(archive, max_disk=2**21)
            address = await start_broker(nursery, store=factory)
            async with open_client(address, name="daq") as client:
                await client.open_source(SRC, {"x": "text/plain"}, archive_bytes=2**20)
                with pytest.raises(
                    RequestFailed, match=r"only 1\.0 MiB of the broker's 2\.0 MiB"
                ) as info:
                    await client.open_source("daq_big_data_source", archive_bytes=2**21)
                assert info.value.code == "disk"
                mem = await client.open_source(
                    "daq_mem_data_source", {"x": "text/plain"}, archive_bytes=0
                )
                await mem.put("x", b"memory only")
                await mem.flush()
                (a, m) = await client.list_sources("daq_*")
                assert (a.name, a.archive_bytes, m.name, m.archive_bytes) == (
                    SRC,
                    2**20,
                    "daq_mem_data_source",
                    0,
                )
            assert not (tmp_path / "sources" / "daq_mem_data_source").exists()
            nursery.cancel_scope.cancel()


async def test_a_subscriber_from_oldest_replays_the_disk_then_goes_on_live(tmp_path):
    payloads = [b"frame %d" % i for i in range(1, 301)]
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive, trio.open_nursery() as nursery:
            address = await start_broker(nursery, store=TieredStores(archive))
            async with open_client(address, name="daq") as producer:
                src = await producer.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                for p in payloads:  # 290 of them on disk only
                    await src.put("x", p, 1.0)
                await src.flush()
                async with (
                    open_client(address, name="reader") as reader,
                    reader.subscribe(f"{SRC}/x", start="oldest") as oldest,
                    reader.subscribe(f"{SRC}/x", start=150) as at_150,
                ):
                    await src.put("x", b"live", 2.0)
                    got = await take(oldest, 301)
                    assert [f.seq for f in got] == list(range(1, 302))  # no gap, no repeat
                    assert [f.data for f in got] == [*payloads, b"live"]
                    got = await take(at_150, 152)
                    assert [f.seq for f in got] == list(range(150, 302))
            nursery.cancel_scope.cancel()


async def stalled_burst(tmp_path, cache_bytes: int, n: int, frame: bytes) -> tuple[int, int]:
    """Put ``n`` frames to a source whose rings take ``cache_bytes`` while the disk
    stalls; return the archive's backlog then and what the rings held, once the
    broker stopped reading (or took every put); then check that a flush gets
    every frame, once, on disk."""
    with trio.fail_after(60):
        config = ArchiveConfig(max_backlog=2**20)
        async with open_archive(tmp_path, config) as archive, trio.open_nursery() as nursery:
            stores = TieredStores(archive)
            address = await start_broker(nursery, store=stores)
            async with open_client(address, name="daq") as producer:
                src = await producer.open_source(
                    SRC, {"x": "application/octet-stream"}, cache_bytes=cache_bytes
                )
                await src.put("x", b"first")
                await src.flush()
                async with trio.open_nursery() as puts:

                    async def put_all() -> None:
                        for _ in range(n):
                            await src.put("x", frame)

                    async with archive._io:  # the disk stalls: nothing is written meanwhile
                        puts.start_soon(put_all)
                        await trio.testing.wait_all_tasks_blocked(0.05)
                        backlog, held = archive.backlog, stores.in_memory(SRC, "x")
                        assert archive.statistics()["errors"] == {}
                await src.flush()  # the disk is back: everything is written, nothing refused
                got = await producer.fetch(f"{SRC}/x", oldest=n + 1)
                assert [f.seq for f in got] == list(range(1, n + 2))
                assert all(f.data == frame for f in got[1:])
            nursery.cancel_scope.cancel()
    return backlog, held


async def test_a_producer_faster_than_the_disk_is_slowed_down_not_refused(tmp_path):
    frame = b"x" * 65536
    n = 64  # 4 MiB: four times what the archive lets wait beyond the rings before it refuses
    backlog, held = await stalled_burst(tmp_path, 2**19, n, frame)
    # The broker read until a quarter of max_backlog waited beyond what the rings
    # hold (and one receive more), then stopped reading; the rest waits in the
    # socket buffers and the client's outbox, the producer blocked.
    assert held <= 2**19 and 2**18 < backlog - held <= 2**19 + len(frame)


async def test_a_burst_the_rings_hold_runs_ahead_of_the_disk(tmp_path):
    frame = b"x" * 65536
    n = 64  # 4 MiB, more than the archive lets wait beyond the rings: the rings hold it all
    backlog, held = await stalled_burst(tmp_path, 16 * 2**20, n, frame)
    assert backlog == n * len(frame) <= held  # every put taken, none written yet


async def test_a_components_log_and_command_sources_reserve_little_disk(tmp_path):
    endpoints = {
        "log": "daq_x_debug_log_source",
        "sink": "daq_x_command_sink",
        "replies": "daq_x_command_source",
    }
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive, trio.open_nursery() as nursery:
            budget = LOG_ARCHIVE_BYTES + 2 * COMMAND_ARCHIVE_BYTES  # not 3 x --archive-bytes
            address = await start_broker(nursery, store=TieredStores(archive, max_disk=budget))
            async with open_client(address, name="daq_x") as tb:
                await open_small_endpoints(tb, endpoints)
                got = {s.name: s.archive_bytes for s in await tb.list_sources("daq_x_*")}
            assert got == {
                "daq_x_debug_log_source": LOG_ARCHIVE_BYTES,
                "daq_x_command_sink": COMMAND_ARCHIVE_BYTES,
                "daq_x_command_source": COMMAND_ARCHIVE_BYTES,
            }
            nursery.cancel_scope.cancel()


async def test_a_flush_during_a_burst_the_rings_hold_waits_for_its_frames_synced(
    tmp_path, monkeypatch
):
    """Puts run ahead of a stalled disk (the rings hold them), but a flush among
    them is acknowledged only once they are written and synced (SyncPolicy.ALWAYS)."""
    events: list[str] = []
    write, sync = SourceLog.write, SourceLog.sync
    monkeypatch.setattr(
        SourceLog, "write", lambda s, *a, **k: (events.append("write"), write(s, *a, **k))[1]
    )
    monkeypatch.setattr(SourceLog, "sync", lambda s: (sync(s), events.append("sync"))[0])
    frame = b"x" * 65536
    with trio.fail_after(60):
        async with open_archive(tmp_path, ArchiveConfig(max_backlog=2**20)) as archive:
            async with trio.open_nursery() as nursery:
                address = await start_broker(nursery, store=TieredStores(archive))
                async with open_client(address, name="daq") as producer:
                    src = await producer.open_source(
                        SRC, {"x": "application/octet-stream"}, cache_bytes=16 * 2**20
                    )
                    await src.put("x", b"first")
                    await src.flush()
                    flushed = trio.Event()

                    async def burst_then_flush() -> None:
                        for _ in range(64):  # 4 MiB: four times max_backlog, all in the rings
                            await src.put("x", frame)
                        await src.flush()
                        events.append("acknowledged")
                        flushed.set()

                    async with archive._io:  # the disk stalls
                        nursery.start_soon(burst_then_flush)
                        await trio.testing.wait_all_tasks_blocked(0.05)
                        assert archive.backlog == 64 * len(frame)  # every put taken ...
                        assert not flushed.is_set()  # ... but not acknowledged
                        events.append("disk back")
                    await flushed.wait()
                    after = events[events.index("disk back") : events.index("acknowledged")]
                    assert "write" in after and after[-1] == "sync"  # written, then synced
                    assert archive.backlog == 0
                nursery.cancel_scope.cancel()
