"""The broker over real loopback TCP, as clients see it."""

from __future__ import annotations

import contextlib
import gc
import json
import struct
import time
import tracemalloc
from typing import Any

import msgpack
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from tests.reads import CountedReads
from turbine import (
    ConnectionFailed,
    Frame,
    Gap,
    RequestFailed,
    TurbineError,
    open_client,
)
from turbine._constants import (
    CLOSE_DRAIN_S,
    DELIVERY_BATCH_BYTES,
    DELIVERY_BATCH_FRAMES,
    PROTOCOL_VERSION,
)
from turbine.client import frames_from
from turbine.messages import SPECS, Message
from turbine.protocol import NEED_DATA, Connection, Role, encode_bytes
from turbine.ringbuffer import MemoryStores, Ring
from turbine.store import OLDEST, READ, ChannelSpec, ChannelStore, Query, Run
from turbine.testing import start_broker

SRC = "daq_rig_data_source"
CAM = "video_cam1_data_source"
#: Real seconds a small test on the real clock may take: a hang detector.  They
#: need milliseconds (the max_rate refusal test: 1.7 ms median, 1 s worst of 1200
#: runs at load 16), yet it overran 5 s once at load 15-18, the whole process
#: waiting for a CPU; only a hang takes 30 s.
HANG_S = 30


# --- helpers -----------------------------------------------------------------------


async def put_all(src, channel: str, payloads, timestamp=None) -> None:
    for p in payloads:
        await src.put(channel, p, timestamp)
    await src.flush()


async def wait_offline(tb, name: str) -> None:
    """Round trips until the broker has noticed that the holder of ``name`` went away."""
    while True:
        infos = await tb.list_sources(name)
        if infos and not infos[0].online:
            return


async def closed_by_jumps(clock, tb, name: str, seconds: int = 40) -> list[dict]:
    """Move ``clock`` (a ``mock_clock``, no autojump) on 1 s at a time, each time once
    every task waits, until the broker's status lists connection ``name`` as closed;
    return those records (none if that takes more than ``seconds``).

    For tests that stream megabytes up to a write deadline: under autojump a
    loopback segment still in the kernel (ksoftirqd on a loaded machine) leaves
    every task waiting, and the clock would jump to a deadline while bytes flow.
    """
    for _ in range(seconds):
        closed = [c for c in (await tb.status())["closed"] if c["client"].startswith(f"{name}#")]
        if closed:
            return closed
        await wait_all_tasks_blocked()
        clock.jump(1)
    return []


async def take(sub, n: int) -> list[Frame | Gap]:
    return [await sub.receive() for _ in range(n)]


class RawClient:
    """A hand-driven connection, for sending what the client library never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = Connection(Role.CLIENT)

    @classmethod
    async def connect(cls, address: str, *, hello: bool = True, name: str = "raw") -> RawClient:
        host, port = address.rsplit(":", 1)
        self = cls(await trio.open_tcp_stream(host, int(port)))
        greeting = await self.receive()
        assert greeting is not None and greeting.type == "hello"
        if hello:
            await self.send("client_hello", {"protocol": PROTOCOL_VERSION, "name": name})
        return self

    async def send(self, kind: str, fields: dict, payloads=()) -> None:
        msg = SPECS[kind].cls(**fields)
        await self.stream.send_all(b"".join(self.proto.send(msg, payloads)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> Message | None:
        """The next message, or ``None`` once the broker closed the connection."""
        while (msg := self.proto.next_event()) is NEED_DATA:
            try:
                data = await self.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                data = b""
            self.proto.receive_data(data)
            if not data:
                return None if self.proto.next_event() is NEED_DATA else None
        return msg

    async def until_closed(self) -> list[dict]:
        """Every message until the broker closes, decoded leniently (whatever our state)."""
        data = bytearray(self.proto._buffer[self.proto._start : self.proto._end])  # noqa: SLF001
        while chunk := await self.stream.receive_some(1 << 20):
            data += chunk
        out = []
        while len(data) >= 8:
            header_len, payload_len = struct.unpack_from(">II", data)
            out.append(msgpack.unpackb(data[8 : 8 + header_len]))
            del data[: 8 + header_len + payload_len]
        assert not data, "the broker's messages end whole"
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def raw_message(header: object, payload: bytes = b"") -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">II", len(head), len(payload)) + head + payload


# --- frames: sequence numbers, timestamps, content types ------------------------------------


async def test_seq_per_channel_from_one_and_timestamps_given_or_stamped(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as tb:
            src = await tb.open_source(SRC, channels={"x": "text/plain"})
            before = time.time()
            await src.put("x", b"a", 12.5)
            await src.put("x", b"b")
            await src.put("y", b"c")
            await src.flush()
            after = time.time()
            got = await tb.fetch(f"{SRC}/*", oldest=10)
    by_path = {(f.channel, f.seq): f for f in got}
    assert sorted(by_path) == [("x", 1), ("x", 2), ("y", 1)]
    assert by_path["x", 1].timestamp == 12.5
    assert before <= by_path["x", 2].timestamp <= after
    assert by_path["x", 1].data == b"a" and by_path["x", 1].content_type == "text/plain"
    assert by_path["x", 1].writer.startswith("alice#")


async def test_listing_shows_channels_content_types_and_counts(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as tb:
            src = await tb.open_source(CAM, channels={"x": "text/csv"})
            await put_all(src, "image.jpg", [b"\xff\xd8" * 10] * 3, 100.0)
            await put_all(src, "x", [b"1,2"])
            await put_all(src, "blob", [b"\0"])
            (info,) = await tb.list_sources()
    assert info.name == CAM and info.online and info.holder.startswith("alice#")
    channels = {c.name: c for c in info.channels}
    assert channels["x"].content_type == "text/csv"
    assert channels["image.jpg"].content_type == "image/jpeg"
    assert channels["blob"].content_type == "application/octet-stream"
    assert (channels["image.jpg"].frames, channels["image.jpg"].last_seq) == (3, 3)
    assert channels["image.jpg"].first_time == channels["image.jpg"].last_time == 100.0


async def test_seqs_continue_after_reconnect_and_after_delete(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="first") as tb:
            await put_all(await tb.open_source(SRC), "x", [b"1", b"2"])
        async with open_client(broker, name="first") as tb:  # the producer, restarted
            await wait_offline(tb, SRC)
            await put_all(await tb.open_source(SRC), "x", [b"3"])
            assert [f.seq for f in await tb.fetch(f"{SRC}/x", oldest=10)] == [1, 2, 3]
            await tb.delete(SRC)
            assert await tb.list_sources() == []
            assert await tb.fetch(f"{SRC}/x", oldest=10) == []
            await put_all(await tb.open_source(SRC), "x", [b"4"])
            got = await tb.fetch(f"{SRC}/x", oldest=10)
    assert [(f.seq, f.data) for f in got] == [(4, b"4")]


# --- ring bounds and memory --------------------------------------------------------------


async def test_a_large_fetch_reply_arrives_frame_for_frame(broker):
    # Its frames are cut out as the reply arrives (two replies here: over 1 MB).
    datas = [bytes([i % 251]) * (100 + i % 1500) for i in range(2000)]
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC, cache_frames=3000)
            await put_all(src, "x", datas)
            got = await tb.fetch(f"{SRC}/x", oldest=2000)
            again = await tb.fetch(f"{SRC}/x", newest=10)
    assert [f.seq for f in got] == list(range(1, 2001))
    assert [f.data for f in got] == datas and {type(f.data) for f in got} == {bytes}
    assert [f.data for f in again] == datas[-10:]


async def test_ring_keeps_the_newest_within_frame_and_byte_bounds(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC, cache_frames=5, cache_bytes=100_000)
            await put_all(src, "few", [b"%d" % i for i in range(12)])
            few = await tb.fetch(f"{SRC}/few", oldest=100)
            await put_all(src, "big", [bytes(20_000)] * 10)
            big = await tb.fetch(f"{SRC}/big", oldest=100)
            few_after = await tb.fetch(f"{SRC}/few", oldest=100)
            (info,) = await tb.list_sources()
    assert [f.seq for f in few] == [8, 9, 10, 11, 12]
    assert [f.data for f in few] == [b"7", b"8", b"9", b"10", b"11"]
    assert [f.seq for f in big] == [7, 8, 9, 10]  # the byte bound bit before the frame bound
    assert [f.seq for f in few_after] == [12]  # oldest went first; each channel keeps its newest
    assert info.bytes <= info.cache_bytes == 100_000


async def test_source_that_cannot_fit_is_refused_saying_how_much_is_left(nursery):
    address = await start_broker(nursery, max_memory=1_000_000)
    with trio.fail_after(HANG_S):
        async with open_client(address) as tb:
            await tb.open_source(SRC, cache_bytes=700_000)
            with pytest.raises(RequestFailed) as info:
                await tb.open_source(CAM, cache_bytes=500_000)
            assert [s.name for s in await tb.list_sources()] == [SRC]
    assert info.value.code == "memory"
    assert "only 293.0 KiB of the broker's 976.6 KiB are left" in str(info.value)
    assert "--max-memory" in str(info.value)


async def test_offline_sources_make_room_for_new_ones(nursery):
    address = await start_broker(nursery, max_memory=1_000_000)
    with trio.fail_after(HANG_S):
        async with open_client(address, name="old") as tb:
            src = await tb.open_source(SRC, cache_bytes=900_000)
            await put_all(src, "x", [b"old"])
        async with open_client(address, name="new") as tb:
            await wait_offline(tb, SRC)
            await tb.open_source(CAM, cache_bytes=200_000)  # within its share (a quarter)
            names = [s.name for s in await tb.list_sources()]
    assert names == [CAM]


# --- names -----------------------------------------------------------------------------


async def test_names_outside_the_convention_are_refused_with_the_convention(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            with pytest.raises(RequestFailed) as info:
                await tb.open_source("camera1")
            assert await tb.list_sources() == []
            await tb.open_source(SRC)  # the connection carries on
    assert info.value.code == "name"
    assert "invalid source name 'camera1'" in str(info.value)
    assert "<type>_<name>_<detail>" in str(info.value)


async def test_lenient_broker_and_extra_types(nursery):
    lenient = await start_broker(nursery, lenient_names=True)
    extra = await start_broker(nursery, types=("video", "mcp"))
    with trio.fail_after(HANG_S):
        async with open_client(lenient) as tb:
            await tb.open_source("camera1")
        async with open_client(extra) as tb:
            await tb.open_source("mcp_main_command_sink")
            with pytest.raises(RequestFailed, match="type one of video, mcp"):
                await tb.open_source("daq_rig_data_source")


# --- metadata --------------------------------------------------------------------------


async def test_metadata_is_versioned_and_listing_shows_the_newest(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            await src.set_metadata({"units": "V", "rate": 10})
            await src.set_metadata({"units": "mV", "rate": 10})
            (info,) = await tb.list_sources()
            history = await tb.fetch(f"{SRC}/metadata.txt", oldest=10)
    assert info.metadata == {"units": "mV", "rate": 10}
    assert [f.seq for f in history] == [1, 2]
    assert [json.loads(f.data) for f in history] == [
        {"units": "V", "rate": 10},
        {"units": "mV", "rate": 10},
    ]
    assert history[0].content_type == "application/json"


async def test_metadata_any_json_can_carry_is_listed(broker):
    """JSON numbers msgpack cannot carry must not break listing, nor the broker."""
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            await src.set_metadata({"serial": 2**70, "name": "rig"})
            (info,) = await tb.list_sources()
        async with open_client(broker) as tb:
            assert [s.name for s in await tb.list_sources()] == [SRC]
    assert info.metadata["name"] == "rig"
    assert info.metadata["serial"] == pytest.approx(2**70)


# --- holders and sharing -----------------------------------------------------------------


async def test_source_stays_readable_offline_until_deleted(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="producer") as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [b"1", b"2"])
        async with open_client(broker, name="reader") as tb:
            await wait_offline(tb, SRC)
            (info,) = await tb.list_sources()
            got = await tb.fetch(f"{SRC}/x", newest=10)
            with pytest.raises(RequestFailed, match="belongs to producer; only that client"):
                await tb.delete(SRC)  # a reader may not delete the producer's history
        async with open_client(broker, name="producer") as tb:
            await tb.delete(SRC)
            with pytest.raises(RequestFailed, match=f"no source named '{SRC}'"):
                await tb.delete(SRC)
    assert not info.online
    assert [f.data for f in got] == [b"1", b"2"]


async def test_one_holder_at_a_time_and_the_error_names_it(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as a, open_client(broker, name="bob") as b:
            await a.open_source(SRC)
            with pytest.raises(RequestFailed) as info:
                await b.open_source(SRC)
            with pytest.raises(RequestFailed, match="held by alice#"):
                await b.delete(SRC)
            with pytest.raises(RequestFailed, match="not shared"):
                await b.put(f"{SRC}/x", b"sneaky")
            assert await a.fetch(f"{SRC}/x", newest=1) == []
    assert info.value.code == "held"
    assert "held by alice#" in str(info.value)
    assert "only one client at a time" in str(info.value)


async def test_close_source_lets_another_client_take_it(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as a, open_client(broker, name="bob") as b:
            src = await a.open_source(SRC)
            await put_all(src, "x", [b"1"])
            await src.close()
            taken = await b.open_source(SRC)
            await put_all(taken, "x", [b"2"])
            got = await a.fetch(f"{SRC}/x", oldest=10)
    assert [(f.seq, f.writer.split("#")[0]) for f in got] == [(1, "alice"), (2, "bob")]


async def test_shared_source_accepts_puts_from_anyone_recording_each_writer(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as a, open_client(broker, name="bob") as b:
            src = await a.open_source(SRC, shared=True)
            await put_all(src, "x", [b"from alice"])
            await b.put(f"{SRC}/x", b"from bob")
            await a.put(f"{SRC}/x", b"alice again")
            got = await b.fetch(f"{SRC}/x", oldest=10)
    assert [(f.seq, f.data, f.writer.split("#")[0]) for f in got] == [
        (1, b"from alice", "alice"),
        (2, b"from bob", "bob"),
        (3, b"alice again", "alice"),
    ]


async def test_put_to_a_missing_source_is_refused(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            with pytest.raises(RequestFailed, match="no source named") as info:
                await tb.put(f"{SRC}/x", b"1")
            await tb.flush()  # the error was reported once; the connection carries on
    assert info.value.code == "missing"


async def test_tasks_putting_at_once_each_learn_of_their_own_refused_put(broker):
    """A refused put has no reply of its own: each of several tasks of one
    client that put at once is told of its own refusal, and only of its own."""
    results: dict[str, str] = {}
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            await tb.open_source("daq_open_data_source", shared=True)

            async def put(name: str) -> None:
                try:
                    await tb.put(f"daq_{name}_data_source/x", b"x")
                    results[name] = "stored"
                except RequestFailed as exc:
                    results[name] = f"refused: {exc.code}"

            async with trio.open_nursery() as n:
                for name in ("missing1", "open", "missing2", "missing3"):
                    n.start_soon(put, name)
            await tb.flush()  # nothing left over for a later request to raise
            held = await tb.fetch("daq_open_data_source/x", newest=5)
    assert results == {
        "missing1": "refused: missing",
        "open": "stored",
        "missing2": "refused: missing",
        "missing3": "refused: missing",
    }
    assert [f.data for f in held] == [b"x"]


# --- fetch -------------------------------------------------------------------------------


async def test_fetch_newest_oldest_time_range_after(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            for i in range(10):
                await src.put("x", b"%d" % i, 1000.0 + i)
            await src.put("y", b"y", 1003.0)
            await src.flush()

            async def seqs(pattern, **sel):
                return [(f.channel, f.seq) for f in await tb.fetch(pattern, **sel)]

            assert await seqs(f"{SRC}/x", newest=3) == [("x", 8), ("x", 9), ("x", 10)]
            assert await seqs(f"{SRC}/x", oldest=2) == [("x", 1), ("x", 2)]
            assert await seqs(f"{SRC}/x", after=8) == [("x", 9), ("x", 10)]
            assert await seqs(f"{SRC}/*", start=1003.0, duration=2.0) == [
                ("x", 4),
                ("x", 5),
                ("y", 1),
            ]
            assert await seqs(SRC, start=1008.5) == [("x", 10)]
            assert await seqs("nothing_*/*", newest=5) == []
            with pytest.raises(RequestFailed, match="exactly one of newest, oldest"):
                await tb.fetch(f"{SRC}/x", newest=1, oldest=1)
            with pytest.raises(RequestFailed, match="exactly one of"):
                await tb.fetch(f"{SRC}/x")


async def test_a_fetch_larger_than_one_message_arrives_whole_in_parts(broker):
    """One frames message holds at most DELIVERY_BATCH_FRAMES frames and DELIVERY_BATCH_BYTES
    of payload: a fetch of more comes in parts, each within both, and arrives whole.

    (That every part's header also fits MAX_HEADER_BYTES, 500 000 frames in one
    fetch, is tested on ``split_frames`` itself in test_protocol.py.)"""
    small, large = 2 * DELIVERY_BATCH_FRAMES + 100, 20  # cut by count, then by bytes
    datas = [bytes([i % 256]) for i in range(small)] + [bytes([i]) * 100_000 for i in range(large)]
    n = len(datas)
    with trio.fail_after(30):
        async with open_client(broker) as tb:
            raw = await RawClient.connect(broker)
            put = {
                "source": SRC,
                "channel": "x",
                "ts": list(range(n)),
                "sizes": list(map(len, datas)),
            }
            opening = {"id": 1, "source": SRC, "cache_frames": n, "cache_bytes": 64 * 2**20}
            await raw.send("open_source", opening)
            await raw.send("put", put, [b"".join(datas)])
            await raw.send("fetch", {"id": 2, "pattern": f"{SRC}/x", "newest": n})
            assert (await raw.receive()).type == "ok"
            parts = []
            while not parts or parts[-1].more:
                parts.append(await raw.receive())
            await raw.aclose()
            frames = await tb.fetch(f"{SRC}/x", newest=n)
    assert all(p.type == "frames" and p.id == 2 for p in parts)
    counts = [sum(len(g[5]) for g in p.groups) for p in parts]
    assert counts[:2] == [DELIVERY_BATCH_FRAMES] * 2 and sum(counts) == n
    assert max(len(p.payload) for p in parts) <= DELIVERY_BATCH_BYTES
    assert len(parts) >= 2 + large * 100_000 // DELIVERY_BATCH_BYTES
    assert [f.seq for f in frames] == list(range(1, n + 1))
    assert [f.timestamp for f in frames] == list(map(float, range(n)))
    assert [f.data for f in frames] == datas


async def test_a_list_too_large_for_one_message_is_refused_not_sent(broker):
    """Each source's metadata fits; 80 of them together would need a header over 4 MiB."""
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            for i in range(80):
                src = await tb.open_source(f"daq_m{i}_data_source", cache_bytes=200_000)
                await src.set_metadata({"notes": "n" * 60_000})
            with pytest.raises(RequestFailed, match="over the limit of 4194304") as info:
                await tb.list_sources("*")
            assert info.value.code == "too_large"
            assert len(await tb.list_sources("daq_m1*")) == 11  # a narrower pattern fits
            await tb.flush()  # the connection carries on


# --- subscriptions ---------------------------------------------------------------------------


async def test_subscribe_starts_now_newest_oldest_or_at_a_seq(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [b"1", b"2", b"3"])
            async with (
                tb.subscribe(f"{SRC}/x") as now,
                tb.subscribe(f"{SRC}/x", start="newest") as newest,
                tb.subscribe(f"{SRC}/x", start="oldest") as oldest,
                tb.subscribe(f"{SRC}/x", start=2) as at_two,
            ):
                assert now.channels == [f"{SRC}/x"]
                await put_all(src, "x", [b"4"])
                assert [f.seq for f in await take(now, 1)] == [4]
                assert [f.seq for f in await take(newest, 2)] == [3, 4]
                assert [f.seq for f in await take(oldest, 4)] == [1, 2, 3, 4]
                assert [f.seq for f in await take(at_two, 3)] == [2, 3, 4]


async def test_wildcard_subscription_sees_every_matching_channel(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            async with tb.subscribe("video_*/*.jpg") as sub:
                cam1 = await tb.open_source(CAM)
                cam2 = await tb.open_source("video_cam2_data_source")
                await put_all(cam1, "a.jpg", [b"1"])
                await put_all(cam1, "notes", [b"not me"])
                await put_all(await tb.open_source(SRC), "b.jpg", [b"not me either"])
                await put_all(cam2, "b.jpg", [b"2"])
                got = await take(sub, 2)
    assert sorted(f.path for f in got) == [f"{CAM}/a.jpg", "video_cam2_data_source/b.jpg"]


async def test_subscription_to_a_source_that_does_not_exist_yet_gets_every_frame(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="reader") as reader:
            async with reader.subscribe(f"{SRC}/x") as sub:
                assert sub.channels == []  # nothing matches yet: it waits
                assert await reader.list_sources(SRC) == []
                async with open_client(broker, name="producer") as producer:
                    src = await producer.open_source(SRC)
                    await put_all(src, "x", [b"1", b"2", b"3"])
                got = await take(sub, 3)
    assert [(f.seq, f.data) for f in got] == [(1, b"1"), (2, b"2"), (3, b"3")]


async def test_subscription_survives_the_source_going_away_and_coming_back(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as reader, reader.subscribe(SRC) as sub:
            async with open_client(broker, name="run1") as producer:
                await put_all(await producer.open_source(SRC), "x", [b"1"])
            assert [f.seq for f in await take(sub, 1)] == [1]
            await wait_offline(reader, SRC)
            async with open_client(broker, name="run1") as producer:  # restarted
                await put_all(await producer.open_source(SRC), "x", [b"2"])
                assert [(f.seq, f.writer.split("#")[0]) for f in await take(sub, 1)] == [
                    (2, "run1")
                ]
                await producer.delete(SRC)
                await put_all(await producer.open_source(SRC), "x", [b"3"])
                assert [f.seq for f in await take(sub, 1)] == [3]


async def test_subscriber_from_an_evicted_seq_gets_a_gap_then_carries_on(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC, cache_frames=4)
            await put_all(src, "x", [b"%d" % i for i in range(1, 11)])
            async with tb.subscribe(f"{SRC}/x", start=1) as sub:
                gap, *frames = await take(sub, 5)
    assert gap == Gap(SRC, "x", 6, 7)
    assert [f.seq for f in frames] == [7, 8, 9, 10]


async def test_monitor_gives_only_the_newest(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [b"old"])
            async with tb.monitor(f"{SRC}/x") as mon:
                assert [f.data for f in await take(mon, 1)] == [b"old"]
                await put_all(src, "x", [b"%d" % i for i in range(2, 12)])  # one batch
                (newest,) = await take(mon, 1)
                await put_all(src, "x", [b"last"])
                (last,) = await take(mon, 1)
    assert (newest.seq, newest.data) == (11, b"11")
    assert (last.seq, last.data) == (12, b"last")


async def test_a_rate_limited_monitor_gets_the_newest_frame_once_an_interval(
    nursery, autojump_clock
):
    address = await start_broker(nursery)
    got: dict[str, list[tuple[float, int]]] = {"x": [], "y": []}
    with trio.fail_after(60):
        async with open_client(address, name="pub") as pub, open_client(address) as viewer:
            src = await pub.open_source(SRC)
            async with viewer.monitor(f"{SRC}/*", max_rate=2) as mon:

                async def watch() -> None:
                    async for item in mon:
                        got[item.channel].append((trio.current_time(), item.seq))

                async with trio.open_nursery() as inner:
                    inner.start_soon(watch)
                    start = trio.current_time()
                    for i in range(300):  # 100 frames a second on each channel, for 3 s
                        await trio.sleep_until(start + i / 100)
                        await src.put("x", b"%d" % i)
                        await src.put("y", b"%d" % i)
                    await trio.sleep(1)  # mock time: the last interval ends
                    inner.cancel_scope.cancel()
                status = await viewer.status()
    for seen in got.values():
        times, seqs = [t for t, _ in seen], [s for _, s in seen]
        assert 6 <= len(seen) <= 8, seen  # 2 a second, not 100
        assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:], strict=False)), seen
        for t, seq in seen:  # each the newest when it was sent
            assert abs(seq - (t - start) * 100) <= 2, seen
        assert seqs[-1] == 300  # the last one put, once its interval was over
    (me,) = [c for c in status["clients"] if c["name"].startswith("client#")]
    assert me["subscriptions"][0]["missed"] == 0  # skipped by choice: no gaps


@pytest.mark.parametrize(
    ("monitor", "max_rate"), [(False, 2.0), (True, 0.0), (True, -1.0), (True, float("inf"))]
)
async def test_max_rate_takes_a_rate_above_0_and_a_monitor(broker, monitor, max_rate):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            with pytest.raises(RequestFailed, match="max_rate must be") as err:
                async with tb.subscribe(f"{SRC}/x", monitor=monitor, max_rate=max_rate):
                    pass
            assert err.value.code == "request"
            async with tb.monitor(f"{SRC}/x", max_rate=1):  # the connection carries on
                pass


async def test_unsubscribed_pattern_gets_nothing_more(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC)
            async with tb.subscribe(f"{SRC}/x") as sub:
                await put_all(src, "x", [b"1"])
                assert [f.seq for f in await take(sub, 1)] == [1]
            await put_all(src, "x", [b"2"])
            status = await tb.status()
    (me,) = [c for c in status["clients"] if c["name"].startswith("client#")]
    assert me["subscriptions"] == []


# --- slow subscribers -------------------------------------------------------------------


async def test_a_subscriber_that_never_reads_slows_neither_producer_nor_others(broker):
    frame = bytes(range(256)) * 256  # 64 KiB
    count = 400  # 25 MiB: far more than the stuck subscriber's socket buffers hold
    with trio.fail_after(15):
        stuck = await RawClient.connect(broker, name="stuck")
        await stuck.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x", "start": "now"})
        async with (
            open_client(broker, name="producer") as producer,
            open_client(broker, name="reader") as reader,
        ):
            src = await producer.open_source(SRC, cache_frames=count, cache_bytes=64 << 20)
            got = []
            async with reader.subscribe(f"{SRC}/x") as sub:

                async def read_all():
                    while len(got) < count:
                        got.append(await sub.receive())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all)
                    for i in range(count):
                        await src.put("x", frame, float(i))
                    await src.flush()  # completes although "stuck" reads nothing
            status = await producer.status()
        await stuck.aclose()
    assert [f.seq for f in got] == list(range(1, count + 1))
    assert all(f.data == frame for f in got)
    (stuck_info,) = [c for c in status["clients"] if c["name"].startswith("stuck#")]
    assert stuck_info["frames_out"] < count  # it really was behind


async def test_a_subscriber_that_falls_behind_is_told_what_it_missed(broker):
    frame = bytes(64 << 10)
    count = 400
    with trio.fail_after(15):
        slow = await RawClient.connect(broker, name="slow")
        await slow.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/*", "start": "now"})
        assert (await slow.receive()).type == "ok"
        async with open_client(broker, name="producer") as producer:
            src = await producer.open_source(SRC, cache_bytes=4 << 20)
            for _ in range(count):
                await src.put("x", frame)
            await src.put("y", b"last")
            await src.flush()
            # Now read: frames in order, a gap where the ring moved on, then the rest.
            items: list[Frame | Gap] = []
            seen = {"x": 0, "y": 0}
            while seen["x"] < count or seen["y"] < 1:
                msg = await slow.receive()
                if msg.type == "gap":
                    item = Gap(msg.source, msg.channel, msg.missed, msg.next_seq)
                    items.append(item)
                    assert item.next_seq == seen[item.channel] + item.missed + 1
                    seen[item.channel] = item.next_seq - 1
                else:
                    assert msg.type == "frames"
                    for f in frames_from(msg.groups, msg.payload):
                        assert f.seq == seen[f.channel] + 1, "frames arrive in order, no holes"
                        seen[f.channel] = f.seq
                        items.append(f)
            status = await producer.status()
        await slow.aclose()
    gaps = [i for i in items if isinstance(i, Gap)]
    assert gaps, "the subscriber fell behind a 4 MiB ring by 25 MiB: it must be told"
    assert all(g.channel == "x" for g in gaps)
    frames_got = [i for i in items if isinstance(i, Frame) and i.channel == "x"]
    assert len(frames_got) + sum(g.missed for g in gaps) == count
    (slow_info,) = [c for c in status["clients"] if c["name"].startswith("slow#")]
    assert slow_info["subscriptions"][0]["missed"] == sum(g.missed for g in gaps)


async def test_write_timeout_closes_a_client_that_stops_reading(nursery, mock_clock):
    # Time moves only when told: under autojump a loopback segment still in the
    # kernel (ksoftirqd on a loaded machine) lets the clock jump 30 s while the
    # producer's put is half sent, and the broker closes the producer instead
    # ("a message stayed incomplete for 30 s").
    address = await start_broker(nursery, write_timeout=30.0)
    with trio.fail_after(120):
        stuck = await RawClient.connect(address, name="stuck")
        await stuck.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x"})
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC, cache_bytes=64 << 20)
            for _ in range(300):
                await src.put("x", bytes(64 << 10))
            await src.flush()  # acknowledged: nothing of the producer's is in flight
            # "stuck" reads nothing: its write deadline passes.
            closed = await closed_by_jumps(mock_clock, producer, "stuck")
            mock_clock.autojump_threshold = 0  # from here on, a hang ends in fail_after
            while await stuck.stream.receive_some(1 << 20):
                pass  # what was sent before the broker gave up, then the end
        await stuck.aclose()
    assert trio.current_time() >= 30  # not closed before its write deadline
    assert closed, "the client that stops reading was not closed within 40 s (mock time)"
    (closed,) = closed
    assert "write blocked for 30 s: the client is not reading" in closed["reason"]
    assert closed["code"] == "write_timeout"  # a slow consumer, not a protocol error


async def test_a_closed_slow_consumer_frees_its_queued_replies_at_once(nursery, monkeypatch):
    # A closed connection is a reference cycle (its tasks' frames, its error's
    # traceback) that only a full collection frees, and the broker runs one only
    # now and then (FULL_COLLECT_SHARE).  What it had queued must not wait for it:
    # a client that asks and never reads has up to OUTBOUND_QUEUE_BYTES queued.
    import turbine.server

    monkeypatch.setattr(turbine.server, "trim", lambda *, full=True: None)
    address = await start_broker(nursery)
    frame = 1 << 20
    gc.collect()
    gc.disable()  # nothing but reference counting frees memory in this test
    tracemalloc.start()
    try:
        with trio.fail_after(HANG_S):
            async with open_client(address, name="producer") as producer:
                src = await producer.open_source(SRC, cache_bytes=64 << 20)
                before = tracemalloc.get_traced_memory()[0]
                await put_all(src, "x", [bytes([i]) * frame for i in range(8)])
                slow = await RawClient.connect(address, name="slow")
                for i in range(1, 41):  # 320 MiB of replies asked for; none read
                    await slow.send("fetch", {"id": i, "pattern": f"{SRC}/x", "oldest": 8})
                await wait_all_tasks_blocked()
                await producer.delete(SRC)  # the ring lets go: only the replies hold frames
                queued = tracemalloc.get_traced_memory()[0] - before
                await slow.aclose()
                while not [
                    c
                    for c in (await producer.status())["closed"]
                    if c["client"].startswith("slow#")
                ]:
                    pass
                left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert queued >= 8 * frame, "the slow client's replies held the frames"
    assert left < frame, f"{left >> 20} MiB still held after the close"


# --- bad input ------------------------------------------------------------------------------


BAD_INPUT = {
    "garbage": (b"GET / HTTP/1.1\r\nHost: turbine\r\n\r\n", "garbage on the wire"),
    "unknown type": (raw_message({"type": "teleport", "id": 9}), "unknown message type"),
    "wrong field type": (raw_message({"type": "flush", "id": "nine"}), "'id' must be int"),
    "not a map": (raw_message(["type", "flush"]), "must be a map"),
    "bad msgpack": (struct.pack(">II", 2, 0) + b"\xc1\xc1", "not valid msgpack"),
    "broker-only type": (raw_message({"type": "ok", "id": 1}), "a client may not send 'ok'"),
    "second hello": (
        raw_message({"type": "client_hello", "protocol": PROTOCOL_VERSION, "name": "again"}),
        "may only be sent once",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_bytes_get_an_error_and_close_only_that_connection(broker, case):
    data, complaint = BAD_INPUT[case]
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="good") as good:
            src = await good.open_source(SRC, shared=True)
            await put_all(src, "x", [b"good 1"])
            async with good.subscribe(f"{SRC}/x") as sub:
                bad = await RawClient.connect(broker, name="bad")
                # Accepted before the garbage: must not be lost.
                await bad.send(
                    "put", {"source": SRC, "channel": "x", "ts": [None], "sizes": [5]}, [b"bad 1"]
                )
                await bad.send("flush", {"id": 1})
                assert (await bad.receive()).id == 1
                await bad.send_raw(data)
                last_words = await bad.until_closed()
                await bad.aclose()
                await put_all(src, "x", [b"good 2"])
                got = await take(sub, 2)
            held = await good.fetch(f"{SRC}/x", oldest=10)
            status = await good.status()
    assert [m["type"] for m in last_words] == ["error"]
    assert last_words[0]["code"] == "protocol"
    assert complaint in last_words[0]["message"]
    assert [f.data for f in got] == [b"bad 1", b"good 2"]
    assert [f.data for f in held] == [b"good 1", b"bad 1", b"good 2"]
    (closed,) = [c for c in status["closed"] if c["client"].startswith("bad#")]
    assert complaint in closed["reason"]
    assert closed["code"] == "protocol_error"


async def test_requests_before_the_hello_are_refused(broker):
    with trio.fail_after(HANG_S):
        async with await RawClient.connect(broker, hello=False) as raw:
            await raw.send_raw(encode_bytes("list", {"id": 1, "pattern": "*"}))
            last_words = await raw.until_closed()
    assert [(m["type"], m["code"]) for m in last_words] == [("error", "protocol")]
    assert "expected 'client_hello' first, got 'list'" in last_words[0]["message"]


async def test_unsupported_protocol_version_is_refused(broker):
    with trio.fail_after(HANG_S):
        async with await RawClient.connect(broker, hello=False) as raw:
            await raw.send_raw(encode_bytes("client_hello", {"protocol": 0, "name": "ancient"}))
            last_words = await raw.until_closed()
    assert "protocol version 0 is not supported" in last_words[0]["message"]


@pytest.mark.parametrize("how", ["half-close", "vanish"])
async def test_client_stopping_mid_message(broker, how):
    message = encode_bytes(
        "put", {"source": SRC, "channel": "x", "ts": [None], "sizes": [1000]}, [bytes(1000)]
    )
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="watcher") as watcher:
            raw = await RawClient.connect(broker, name="quitter")
            await raw.send("open_source", {"id": 1, "source": SRC})
            assert (await raw.receive()).id == 1
            await raw.send_raw(message[: len(message) // 2])
            if how == "half-close":
                await raw.stream.send_eof()
                assert [m["type"] for m in await raw.until_closed()] == ["error"]
            await raw.aclose()
            await wait_offline(watcher, SRC)
            status = await watcher.status()
            assert await watcher.fetch(f"{SRC}/x", newest=5) == []
            await watcher.open_source(SRC)  # it was released
    (closed,) = [c for c in status["closed"] if c["client"].startswith("quitter#")]
    assert "in the middle of a message" in closed["reason"]
    assert closed["code"] == "protocol_error"


async def test_frame_over_the_size_limit(nursery):
    address = await start_broker(nursery, max_frame=1000)
    with trio.fail_after(HANG_S):
        async with open_client(address) as tb:
            src = await tb.open_source(SRC)
            with pytest.raises(
                RequestFailed, match="1001 bytes is over the broker's limit of 1000"
            ):
                await src.put("x", bytes(1001))
            await put_all(src, "x", [bytes(1000)])
            # A client that skips its own check is refused by the broker itself.
            raw = await RawClient.connect(address, name="raw")
            await raw.send("open_source", {"id": 1, "source": CAM})
            await raw.send(
                "put", {"source": CAM, "channel": "x", "ts": [None], "sizes": [1001]}, [bytes(1001)]
            )
            await raw.send("flush", {"id": 2})
            replies = [await raw.receive() for _ in range(3)]
            await raw.aclose()
            assert await tb.fetch(f"{CAM}/x", newest=5) == []
            assert [f.seq for f in await tb.fetch(f"{SRC}/x", newest=5)] == [1]
    assert [m.type for m in replies] == ["ok", "error", "ok"]
    assert replies[1].code == "too_large"
    assert "a frame of 1001 bytes" in replies[1].message


async def test_bad_requests_are_refused_and_the_connection_carries_on(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            with pytest.raises(TurbineError, match="invalid pattern"):
                await tb.fetch("a b", newest=1)
            raw = await RawClient.connect(broker)
            await raw.send("subscribe", {"id": 1, "sub": 1, "pattern": "*", "start": "later"})
            await raw.send("subscribe", {"id": 2, "sub": 2, "pattern": "a/b/c"})
            await raw.send("open_source", {"id": 3, "source": SRC, "channels": {"x": 5}})
            await raw.send("list", {"id": 4, "pattern": "*"})
            replies = [await raw.receive() for _ in range(4)]
            await raw.aclose()
    assert [m.type for m in replies] == ["error", "error", "error", "ok"]
    assert "start must be one of" in replies[0].message
    assert "invalid pattern" in replies[1].message
    assert "channels must map channel names to content types" in replies[2].message


async def test_no_broker_is_a_clear_connection_failure():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with (
        trio.fail_after(HANG_S),
        pytest.raises(ConnectionFailed, match=f"no broker at 127.0.0.1:{port}"),
    ):
        async with open_client(f"127.0.0.1:{port}"):
            pass


async def test_status_reports_clients_sources_and_traffic(broker):
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="alice") as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [b"12345"] * 3)
            async with tb.subscribe(f"{SRC}/x", start="oldest") as sub:
                await take(sub, 3)
                status = await tb.status()
    assert status["sources"] == 1
    assert status["memory"]["reserved"] >= status["memory"]["used"] > 0
    (me,) = status["clients"]
    assert me["name"].startswith("alice#")
    assert me["sources"] == [SRC]
    assert me["frames_in"] == 3
    assert me["frames_out"] == 3
    assert me["subscriptions"] == [
        {"pattern": f"{SRC}/x", "monitor": False, "delivered": 3, "missed": 0}
    ]


# --- stores slower than memory, and the broker's clock ----------------------------------------


class SlowStores(MemoryStores):
    """A store factory whose "oldest" reads need the slow part (as from a disk).

    Each such read takes ``delay`` seconds (mock time) in the store task;
    every other read is answered from memory at once.
    """

    durable = False

    def __init__(self, delay: float, cold_below: int = 0) -> None:
        self.delay = delay
        self.cold_below = cold_below  # channel x: a subscriber's reads of older numbers are slow
        self.reads = 0
        self.broken = False

    def __call__(self, spec: ChannelSpec) -> ChannelStore:
        factory = self
        cold_below = self.cold_below if spec.channel == "x" else 0

        class SlowRing(Ring):
            __slots__ = ()

            def read_now(self, query: Query) -> Run | None:
                return None if query.kind == OLDEST else super().read_now(query)

            def read(self, seq: int, max_frames: int, max_bytes: int | None = None) -> Run | None:
                if seq < cold_below:
                    return None
                return super().read(seq, max_frames, max_bytes)

            async def read_later(self, query: Query) -> Run:
                await trio.sleep(factory.delay)
                factory.reads += 1
                if query.value == 666 or factory.broken:
                    raise OSError("the disk is on fire")
                if query.kind == READ:  # "from disk": only what memory does not hold
                    start = int(query.value)
                    count = min(query.max_frames, cold_below - start)
                    return super().read(start, count, query.max_bytes)
                return super().read_now(query)

        return SlowRing(spec.max_frames, spec.next_seq)


async def test_a_slow_read_keeps_the_order_of_replies_and_stalls_no_one_else(
    nursery, autojump_clock
):
    stores = SlowStores(delay=10.0)
    address = await start_broker(nursery, store=stores)
    with trio.fail_after(60):
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC, shared=True)
            await put_all(src, "x", [b"1", b"2", b"3"])
            raw = await RawClient.connect(address, name="reader")
            start = trio.current_time()
            await raw.send("fetch", {"id": 1, "pattern": f"{SRC}/x", "oldest": 2})  # slow
            await raw.send("fetch", {"id": 2, "pattern": f"{SRC}/x", "newest": 1})  # memory
            await raw.send("list", {"id": 3, "pattern": "*"})
            await raw.send("subscribe", {"id": 4, "sub": 7, "pattern": f"{SRC}/x", "start": 3})
            await raw.send("fetch", {"id": 5, "pattern": f"{SRC}/x", "oldest": 666})  # fails
            await raw.send("flush", {"id": 6})
            # Another client is not held up by this connection's slow read.
            await producer.list_sources()
            assert trio.current_time() - start < stores.delay
            await put_all(src, "x", [b"4"])
            got = [await raw.receive() for _ in range(7)]
            elapsed = trio.current_time() - start
            await raw.aclose()
    assert [(m.type, m.id, getattr(m, "sub", None)) for m in got] == [
        ("frames", 1, None),
        ("frames", 2, None),
        ("ok", 3, None),
        ("ok", 4, None),
        ("error", 5, None),
        ("ok", 6, None),
        ("frames", None, 7),  # a subscription's frames only after its reply
    ]
    assert [g[3] for g in got[0].groups] == [1]
    assert [len(g[4]) for g in got[0].groups] == [2]
    assert got[1].groups[0][3] == 3
    assert got[4].code == "internal" and "the disk is on fire" in got[4].message
    assert [g[3] for g in got[6].groups] == [3]  # 3, then 4, from where it asked
    assert sum(len(g[4]) for g in got[6].groups) == 2
    assert stores.reads == 2
    assert 2 * stores.delay <= elapsed < 3 * stores.delay  # one after the other, in order


async def test_a_subscriber_replays_from_slow_storage_then_goes_on_live(nursery, autojump_clock):
    stores = SlowStores(delay=5.0, cold_below=4)
    address = await start_broker(nursery, store=stores)
    with trio.fail_after(60):
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC)
            await put_all(src, "x", [b"%d" % i for i in range(1, 7)])  # 1-3 "on disk"
            await put_all(src, "y", [b"y1"])
            async with open_client(address, name="replayer") as tb:
                async with tb.subscribe(f"{SRC}/*", start="oldest") as sub:
                    first = await sub.receive()  # y is all in memory: not held up
                    assert trio.current_time() < stores.delay
                    await put_all(src, "x", [b"7"])
                    got = await take(sub, 7)
    assert (first.channel, first.data) == ("y", b"y1")
    assert [(f.channel, f.seq, f.data) for f in got] == [
        ("x", n, b"%d" % n) for n in range(1, 8)
    ]  # from the slow part, then memory, then live: in order, no gap, no duplicate
    assert stores.reads == 1


async def test_a_failed_slow_read_is_reported_and_stalls_only_that_channel(nursery, autojump_clock):
    stores = SlowStores(delay=5.0, cold_below=4)
    stores.broken = True
    address = await start_broker(nursery, store=stores)
    with trio.fail_after(60):
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC)
            await put_all(src, "x", [b"1", b"2", b"3", b"4"])
            raw = await RawClient.connect(address, name="replayer")
            await raw.send("subscribe", {"id": 1, "sub": 7, "pattern": f"{SRC}/*", "start": 1})
            assert (await raw.receive()).type == "ok"
            error = await raw.receive()
            await put_all(src, "y", [b"y1"])
            frames = await raw.receive()
            await raw.send("list", {"id": 2, "pattern": "*"})
            listed = await raw.receive()
            await raw.aclose()
    assert (error.type, error.id, error.code) == ("error", None, "internal")
    assert "the disk is on fire" in error.message
    assert [(g[1], g[3]) for g in frames.groups] == [("y", 1)]
    assert (listed.type, listed.id) == ("ok", 2)


async def test_the_broker_clock_is_injected(nursery, autojump_clock):
    def clock() -> float:
        return 1_000_000.0 + trio.current_time()

    address = await start_broker(nursery, clock=clock)
    with trio.fail_after(600):
        async with open_client(address, name="tester") as tb:
            src = await tb.open_source(SRC)
            await trio.sleep(100)
            await put_all(src, "x", [b"stamped by the broker"])
            (frame,) = await tb.fetch(f"{SRC}/x", newest=1)
            raw = await RawClient.connect(address, name="leaver")
            await raw.aclose()
            await trio.sleep(50)
            status = await tb.status()
    now = clock()
    assert frame.timestamp == pytest.approx(now - 50, abs=1)
    assert status["time"] == pytest.approx(now, abs=1)
    assert status["uptime"] == pytest.approx(150, abs=1)
    (closed,) = [c for c in status["closed"] if c["client"].startswith("leaver#")]
    assert closed["time"] == pytest.approx(now - 50, abs=1)
    assert closed["code"] == "client_closed"


@pytest.mark.parametrize("cancelled", [False, True], ids=["closed", "cancelled"])
async def test_a_client_leaving_with_replies_unread_is_a_clean_close_at_the_broker(
    nursery, cancelled
):
    """A client that leaves right after a request (as ``turbine cmd`` does),
    with what the broker sent still unread in its socket, ends its direction
    and reads to the end: the broker records a client close, not a reset.
    Also when a cancel ends it (a program stopped by a signal), which stops
    its read loop before it closes: it reads to the end itself, at once."""
    address = await start_broker(nursery)
    with trio.fail_after(30):
        async with open_client(address, name="tester") as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [bytes([i % 256]) * 2**16 for i in range(300)])  # 19 MB
            with trio.CancelScope() as scope:
                async with (
                    open_client(address, name="leaver") as leaver,
                    leaver.subscribe(f"{SRC}/x", start="oldest"),
                ):
                    await wait_all_tasks_blocked()  # its queue full, megabytes unread in its socket
                    left = trio.current_time()
                    if cancelled:
                        scope.cancel()
                        await trio.sleep_forever()
            took = trio.current_time() - left
            while not (
                closed := [
                    c for c in (await tb.status())["closed"] if c["client"].startswith("leaver#")
                ]
            ):
                pass
    assert [(c["code"], c["reason"]) for c in closed] == [
        ("client_closed", "client closed the connection")
    ], closed
    assert took < CLOSE_DRAIN_S  # it read the broker's end, not waited out the bound


class GatedDisk(MemoryStores):
    """A durable store factory whose ``flushed`` waits until its source's gate opens."""

    durable = True

    def __init__(self) -> None:
        self.gates: dict[str, trio.Event] = {}
        self.waited: list[str] = []

    def __call__(self, spec: ChannelSpec) -> ChannelStore:
        disk = self

        class GatedRing(Ring):
            __slots__ = ()

            async def flushed(self) -> None:
                disk.waited.append(spec.source)
                gate = disk.gates.get(spec.source)
                if gate is not None:
                    await gate.wait()

        return GatedRing(spec.max_frames, spec.next_seq)


async def test_flush_waits_only_for_what_its_writer_put(nursery, autojump_clock):
    disk = GatedDisk()
    slow, fast = "daq_slow_data_source", "daq_fast_data_source"
    disk.gates[slow] = trio.Event()
    address = await start_broker(nursery, store=disk)
    with trio.fail_after(60):
        async with (
            open_client(address, name="stuck") as stuck,
            open_client(address, name="writer") as writer,
        ):
            await (await stuck.open_source(slow)).put("x", b"1")
            stuck_flushed = trio.Event()

            async def flush_stuck() -> None:
                await stuck.flush()
                stuck_flushed.set()

            nursery.start_soon(flush_stuck)
            await wait_all_tasks_blocked()  # its flush waits for the slow disk now
            src = await writer.open_source(fast)
            await put_all(src, "x", [b"2"])  # put_all flushes: it returns while slow's disk waits
            await writer.flush()
            assert not stuck_flushed.is_set()
            waited_for_writer = [name for name in disk.waited if name == fast]
            disk.gates[slow].set()
            await stuck_flushed.wait()
    assert waited_for_writer == [fast, fast]  # put_all's flush, then the writer's own
    assert disk.waited.count(slow) == 1  # only the stuck client's flush went to its store


async def test_a_close_among_many_connections_collects_only_the_young_garbage(
    nursery, autojump_clock, monkeypatch
):
    # A full collection walks every connection held: only once the closes
    # since the last one reach FULL_COLLECT_SHARE (1/4) of the connections
    # left (and FULL_COLLECT_MIN_CLOSES, 2 here), or after a delete; the other
    # trims collect the young generations.
    import turbine.server

    monkeypatch.setattr(turbine.server, "FULL_COLLECT_MIN_CLOSES", 2)
    trims: list[bool] = []
    trimmed_one = trio.Event()

    def trim(*, full: bool = True) -> None:
        trims.append(full)
        trimmed_one.set()

    monkeypatch.setattr(turbine.server, "trim", trim)
    address = await start_broker(nursery)

    async def trimmed(close: Any) -> None:
        nonlocal trimmed_one
        trimmed_one = trio.Event()
        await close()
        with trio.fail_after(10):
            await trimmed_one.wait()
        await trio.sleep(2)  # past TRIM_INTERVAL_S: the next trim is not held back

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(open_client(address)) for _ in range(8)]
        await clients[-1].open_source("daq_gone_data_source", channels={"x": "text/plain"})
        await trimmed(clients.pop().aclose)  # 1 closed, 7 left: young
        await trimmed(clients.pop().aclose)  # 2 closed, 6 left: full
        await trimmed(clients.pop().aclose)  # 1 closed since, 5 left: young
        await trimmed(lambda: clients[1].delete("daq_gone_data_source"))  # a delete: full
    assert trims[:4] == [False, True, False, True]


async def test_a_few_closes_among_few_connections_make_no_full_collection(
    nursery, autojump_clock, monkeypatch
):
    # A full collection walks every ring's frames too (tens of ms with millions
    # held): a handful of closes, even of most of the connections, only collect
    # the young generations.
    import turbine.server

    trims: list[bool] = []
    trimmed = trio.Event()

    def trim(*, full: bool = True) -> None:
        trims.append(full)
        trimmed.set()

    monkeypatch.setattr(turbine.server, "trim", trim)
    address = await start_broker(nursery)
    async with open_client(address) as stays:
        for _ in range(3):
            trimmed = trio.Event()
            async with open_client(address) as passing:
                await passing.status()
            with trio.fail_after(10):
                await trimmed.wait()
            await trio.sleep(2)  # past TRIM_INTERVAL_S
        assert trims == [False, False, False]
        await stays.status()


async def test_a_put_reaches_its_subscriber_before_the_flush_after_it_is_handled(
    broker, monkeypatch
):
    # The latency path: a put and the flush behind it arrive in one read; the
    # subscriber's frame is written before the flush is handled (and answered).
    from turbine import messages as m
    from turbine.requests import Requests

    on_flush = Requests._handlers[m.Flush]
    sent_before_flush: list[int] = []

    def flush(conn: Any, msg: m.Flush) -> None:
        sent_before_flush.append(
            sum(c.delivery.frames for c in conn.broker.connections.values() if c is not conn)
        )
        on_flush(conn, msg)

    monkeypatch.setitem(Requests._handlers, m.Flush, flush)
    with trio.fail_after(HANG_S):
        async with open_client(broker, name="pub") as pub, open_client(broker, name="sub") as sub:
            src = await pub.open_source(SRC, channels={"x": "text/plain"})
            async with sub.subscribe(f"{SRC}/x", start="now") as frames:
                await pub.status()  # the subscription is in place
                sent_before_flush.clear()
                await src.put("x", b"one")
                await src.flush()  # written with the put, in one write
                got = await frames.__anext__()
    assert isinstance(got, Frame) and got.data == b"one"
    assert sent_before_flush == [1]


async def test_a_read_that_emptied_the_socket_waits_for_bytes_before_the_next(broker, monkeypatch):
    # Between a client's messages the socket is empty: the reader waits for
    # bytes instead of trying a read that fails (a syscall per message).
    import turbine.connection

    counted = CountedReads()
    monkeypatch.setattr(turbine.connection, "os", counted, raising=False)
    with trio.fail_after(HANG_S):
        async with open_client(broker) as tb:
            src = await tb.open_source(SRC, channels={"x": "text/plain"})
            for i in range(20):
                await src.put("x", b"%d" % i)
                await src.flush()
    assert counted.reads > 20
    assert counted.failed == 0
