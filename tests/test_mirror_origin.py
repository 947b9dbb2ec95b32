"""A push mirror's reader inside the origin: A's rings read by number, woken by puts."""

from __future__ import annotations

import contextlib
import functools
import tracemalloc
from typing import Any

import pytest
import trio
import trio.testing

from tests.test_mirror import MIRROR_TOKENS, Reports, auth_text
from tests.test_mirror_catch_up import StuckTarget
from turbine import RequestFailed, open_client
from turbine._mirror_origin import LocalOrigin
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.auth import AuthTable
from turbine.hub import Hub
from turbine.mirror import MirrorConfig, run_mirror
from turbine.peer import Peer
from turbine.testing import start_broker

SRC, SECRET = "daq_rig_data_source", "video_cam_data_source"
DAQ = Peer(1, name="daq")


def put(hub: Hub, channel: str, *frames: bytes, source: str = SRC, ts: float | None = None) -> None:
    """Put ``frames`` as a producer's connection does: store them, wake whom they concern."""
    for sink in hub.put(DAQ, source, channel, [ts] * len(frames), list(frames)):
        sink.wake_soon()


def frames(puts: list[Any]) -> list[tuple[int, float, bytes, str]]:
    """(number, timestamp, payload, writer) of each frame of the puts to B."""
    out = []
    for p in puts:
        payload, pos = b"".join(map(bytes, p.pieces)), 0
        writers = dict(p.writers)
        writer = ""
        for seq, ts, size in zip(p.seqs, p.timestamps, p.sizes, strict=True):
            writer = writers.get(seq, writer)
            out.append((seq, ts, payload[pos : pos + size], writer))
            pos += size
    return out


def hub_with_source(cache_frames: int = 100) -> Hub:
    hub = Hub(identity="aaaa", clock=lambda: 1000.0)
    hub.open_source(DAQ, SRC, channels={"x": "text/plain"}, cache_frames=cache_frames)
    return hub


async def test_a_feed_reads_from_its_number_on_then_waits_for_the_next_put():
    hub = hub_with_source()
    put(hub, "x", b"one", b"two", b"three", ts=5.0)
    origin = LocalOrigin(hub, None)
    with trio.fail_after(5):
        async with origin.follow(f"{SRC}/x", 2) as feed:
            (first,) = await feed.receive_puts()
            assert first.content_type == "text/plain"
            assert frames([first]) == [(2, 5.0, b"two", "daq"), (3, 5.0, b"three", "daq")]
            got: list[Any] = []
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    got.extend(await feed.receive_puts())

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                assert not got and not feed.frames_go_now()  # nothing for it yet
                put(hub, "x", b"four")
                # a producer's reader lets it have the frame before reading more
                assert feed.frames_go_now()
            assert frames(got) == [(4, 1000.0, b"four", "daq")]
            assert not feed.frames_go_now()  # (it is not waiting)
        assert hub.router.subscriptions == []  # followed no more
    (info,) = hub.list_sources(SRC)
    assert info["channels"][0]["name"] == "x"
    assert hub.sources[SRC].frames_out == 3  # counted as sent, as a delivery is


async def test_frames_evicted_before_they_were_read_are_skipped_and_a_new_channel_is_read():
    hub = hub_with_source(cache_frames=4)
    with trio.fail_after(5):
        async with LocalOrigin(hub, None).follow(f"{SRC}/x", 1) as feed:
            put(hub, "x", *(b"%d" % i for i in range(1, 11)))  # the ring keeps 7..10
            assert [seq for seq, *_ in frames(await feed.receive_puts())] == [7, 8, 9, 10]
        # a channel that does not exist yet is read from its first frame when it comes
        async with LocalOrigin(hub, None).follow(f"{SRC}/y", 5) as feed:
            put(hub, "y", b"first")
            assert frames(await feed.receive_puts()) == [(1, 1000.0, b"first", "daq")]


async def test_a_reader_lists_and_reads_only_what_its_user_may_read(autojump_clock):
    hub = hub_with_source()
    hub.open_source(DAQ, SECRET)
    put(hub, "x", b"mine")
    put(hub, "frame.jpg", b"j", source=SECRET)
    origin = LocalOrigin(hub, lambda source: source != SECRET)
    assert [s.name for s in await origin.list_sources("*")] == [SRC]
    assert (await origin.status())["identity"] == "aaaa"
    with trio.fail_after(5):
        async with origin.follow(f"{SECRET}/frame.jpg", 1) as feed:
            with trio.move_on_after(1) as waited:  # (the mock clock's second: it never gets one)
                await feed.receive_puts()
            assert waited.cancelled_caught


async def test_inside_a_a_target_that_takes_nothing_leaves_the_mirror_holding_little():
    """The catch-up bound: A holds 100 MB of x; B never returns from an x put."""
    hub = Hub(identity="aaaa", max_memory=2**28)
    hub.open_source(DAQ, SRC, cache_frames=2000, cache_bytes=2**27)
    frame = b"\1" * 100_000
    for _ in range(1000):
        put(hub, "x", frame)
    put(hub, "y", b"y")
    target = StuckTarget()

    @contextlib.asynccontextmanager
    async def stuck():
        yield target

    @contextlib.asynccontextmanager
    async def here():
        yield LocalOrigin(hub, None)

    config = MirrorConfig("(this broker)", "(stuck)", ("daq_*",), poll=600, retry=600)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with trio.fail_after(20):
            async with trio.open_nursery() as mirror:
                mirror.start_soon(functools.partial(run_mirror, config, target=stuck, origin=here))
                await trio.testing.wait_all_tasks_blocked()
                held = tracemalloc.get_traced_memory()[0] - before
                mirror.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    assert target.frames["y"] == 1 and target.frames["x"] >= 1
    # one batch (at most 1 MiB, views of A's ring) in hand: nothing read ahead, no copy
    assert target.frames["x"] <= 11
    assert held < 2**20, f"the mirror holds {held / 2**20:.1f} MiB"


async def test_a_read_right_revoked_ends_the_feed_with_an_access_error():
    hub = hub_with_source()
    put(hub, "x", b"one")
    allowed = {SRC}
    with trio.fail_after(5):
        async with LocalOrigin(hub, allowed.__contains__).follow(f"{SRC}/x", 1) as feed:
            assert len(frames(await feed.receive_puts())) == 1
            allowed.clear()  # (turbine acl revoke: the user's access answers no)
            put(hub, "x", b"two")
            with pytest.raises(RequestFailed, match="may no longer read") as ended:
                await feed.receive_puts()
            assert ended.value.code == "access"


async def test_inside_a_frames_only_on_a_disk_are_copied_from_there(nursery, tmp_path):
    async with open_archive(tmp_path / "a") as on_a, open_archive(tmp_path / "b") as on_b:
        a = await start_broker(nursery, store=TieredStores(on_a), identity="aaaa")
        b = await start_broker(nursery, store=TieredStores(on_b), identity="bbbb")
        with trio.fail_after(20):
            async with open_client(a, name="daq") as pa, open_client(b) as rb:
                src = await pa.open_source(SRC, cache_frames=4)  # memory keeps the newest 4
                for i in range(1, 41):
                    await src.put("x", b"%d" % i)
                await pa.flush()
                config = MirrorConfig(a, b, ("daq_*",), poll=0.02, retry=0.02, inside="from")
                await nursery.start(functools.partial(run_mirror, config, report=lambda _: None))
                async with rb.subscribe(f"{SRC}/x", start=40) as sub:
                    await sub.receive()  # the last frame is on B
                await rb.flush()
                got = await rb.fetch(f"{SRC}/x", oldest=100)  # (B's memory keeps 4 too)
                assert [(f.seq, f.data) for f in got] == [(i, b"%d" % i) for i in range(1, 41)]


def test_a_mirror_copies_inside_the_target_the_origin_or_neither():
    assert [MirrorConfig("a:1", "b:2", inside=v).inside for v in (True, False, "from")] == [
        "to",
        "",
        "from",
    ]
    with pytest.raises(ValueError, match="inside"):
        MirrorConfig("a:1", "b:2", inside="sideways")


async def test_inside_a_a_revoked_read_right_stops_the_copy_of_that_source(nursery, tmp_path):
    path = tmp_path / "auth.toml"
    # (a read right on video_* is left after the revoke: A still takes the program's asks)
    path.write_text(auth_text(from_a='read = ["daq_*", "video_*"]'))
    a = await start_broker(nursery, identity="aaaa", auth=AuthTable.load(path))
    b = await start_broker(nursery, identity="bbbb")
    with trio.fail_after(20):
        async with (
            open_client(a, name="daq", token=MIRROR_TOKENS["admin"]) as pa,
            open_client(b) as rb,
        ):
            src = await pa.open_source(SRC)
            await src.put("x", b"1")
            await pa.flush()
            reports = Reports()

            config = MirrorConfig(
                a, b, ("daq_*",), poll=0.02, retry=0.02, inside="from",
                origin_token=MIRROR_TOKENS["from_a"],
            )  # fmt: skip
            await nursery.start(functools.partial(run_mirror, config, report=reports))
            async with rb.subscribe(f"{SRC}/x", start=1) as sub:
                assert (await sub.receive()).data == b"1"
            await pa.acl("revoke", "from_a", "read", "daq_*")
            await src.put("x", b"2")
            await pa.flush()
            await reports.wait_for(f"copying {SRC} ended: the mirror's user may no longer read it")
            assert [f.data for f in await rb.fetch(f"{SRC}/x", oldest=10)] == [b"1"]
