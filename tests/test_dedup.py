"""The broker stores a replayed put once: producer ids and put numbers (``pseq``)."""

from __future__ import annotations

import pytest
import trio

from turbine import RequestFailed, open_client
from turbine._constants import MAX_PRODUCERS_PER_SOURCE, PROTOCOL_VERSION
from turbine.archive import _format as fmt
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.hub import Hub
from turbine.messages import ClientHello, CloseSource, Flush, Ok, OpenSource, Put
from turbine.peer import Peer
from turbine.protocol import NEED_DATA, Connection, Role

SRC = "daq_rig_data_source"
ALICE, BOB = Peer(1, name="alice"), Peer(2, name="bob")


def values(hub: Hub, path: str) -> list[bytes]:
    groups, payloads = hub.fetch(path, oldest=1000)  # type: ignore[misc]
    return [bytes(p) for p in payloads]


def put(hub: Hub, peer: Peer, data: bytes, producer: str | None, pseq: int | None) -> None:
    hub.put(peer, SRC, "x", [1.0], [data], producer=producer, pseq=pseq)


def test_a_put_whose_number_was_stored_is_dropped_and_later_ones_are_stored():
    hub = Hub()
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"})
    put(hub, ALICE, b"a", "p", 1)
    put(hub, ALICE, b"b", "p", 2)
    put(hub, ALICE, b"b", "p", 2)  # the replay of a put stored before the link dropped
    put(hub, ALICE, b"a", "p", 1)
    put(hub, ALICE, b"c", "p", 3)
    assert values(hub, f"{SRC}/x") == [b"a", b"b", b"c"]
    assert hub.sources[SRC].replays_dropped == 2


def test_numbers_are_per_producer_and_per_source():
    hub = Hub()
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"}, shared=True)
    hub.open_source(ALICE, "daq_other_data_source", channels={"x": "text/plain"})
    put(hub, ALICE, b"a", "p", 1)
    put(hub, BOB, b"b", "q", 1)  # another producer's 1
    hub.put(ALICE, "daq_other_data_source", "x", [1.0], [b"o"], producer="p", pseq=1)
    put(hub, ALICE, b"c", None, None)  # no producer: always stored
    put(hub, ALICE, b"c", None, None)
    assert values(hub, f"{SRC}/x") == [b"a", b"b", b"c", b"c"]
    assert values(hub, "daq_other_data_source/x") == [b"o"]


def test_the_holder_reconnecting_keeps_the_numbers_of_its_source():
    """The numbers belong to the source, not the connection: a new connection of the
    same producer that takes the source back has its replays dropped."""
    hub = Hub()
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"})
    put(hub, ALICE, b"a", "p", 1)
    hub.release(ALICE)
    again = Peer(3, name="alice")
    hub.open_source(again, SRC)
    put(hub, again, b"a", "p", 1)
    put(hub, again, b"b", "p", 2)
    assert values(hub, f"{SRC}/x") == [b"a", b"b"]


def test_a_refused_put_is_not_counted_as_stored():
    hub = Hub()
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"})
    with pytest.raises(RequestFailed, match="held"):
        put(hub, BOB, b"a", "p", 1)
    with pytest.raises(RequestFailed, match="needs its pseq"):
        put(hub, ALICE, b"a", "p", None)
    put(hub, ALICE, b"a", "p", 1)
    assert values(hub, f"{SRC}/x") == [b"a"]


def test_a_source_forgets_the_least_recent_producer_first():
    hub = Hub()
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"})
    for i in range(MAX_PRODUCERS_PER_SOURCE):
        put(hub, ALICE, b"", f"p{i}", 1)
    put(hub, ALICE, b"", "p0", 2)  # p0 is now the most recent
    put(hub, ALICE, b"", "new", 1)  # p1 is forgotten
    producers = hub.sources[SRC].producers
    assert len(producers) == MAX_PRODUCERS_PER_SOURCE
    assert "p1" not in producers and producers["p0"] == 2 and producers["new"] == 1


async def test_a_replay_through_a_new_connection_is_stored_once(broker):
    """On the wire: the client's put batches carry its producer id and numbers; a second
    connection replaying the same put messages (same producer) adds nothing."""
    with trio.fail_after(10):
        async with open_client(broker, name="alice") as tb:
            src = await tb.open_source(SRC, channels={"x": "text/plain"})
            await src.put("x", b"1")
            await src.flush()
            producer = tb._outbox.producer
        host, port = broker.split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        proto = Connection(Role.CLIENT)

        async def next_message():
            while (msg := proto.next_event()) is NEED_DATA:
                proto.receive_data(await stream.receive_some(65536))
            return msg

        await next_message()  # hello
        out = proto.send(ClientHello(protocol=PROTOCOL_VERSION, name="alice"))
        out += proto.send(OpenSource(id=1, source=SRC))
        for pseq, data in ((1, b"1"), (2, b"2")):
            put_msg = Put(
                source=SRC, channel="x", ts=[None], sizes=[1], producer=producer, pseq=pseq
            )
            out += proto.send(put_msg, [data])
        out += proto.send(Flush(id=2))
        await stream.send_all(b"".join(out))
        assert isinstance(await next_message(), Ok)
        assert isinstance(await next_message(), Ok)
        await stream.aclose()
        async with open_client(broker) as tb:
            assert [f.data for f in await tb.fetch(f"{SRC}/x", oldest=10)] == [b"1", b"2"]


async def test_a_broker_restarted_on_its_data_dir_still_drops_replays(tmp_path):
    """The producer table is archived behind the frames: a put on disk whose
    acknowledgement the crash lost is not stored again when it is replayed to the
    restarted broker, even after the segments it was written in are gone."""
    big = b"x" * 300_000
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive, archive_bytes=2 * 2**20))
            hub.open_source(ALICE, SRC, channels={"x": "application/octet-stream"})
            put(hub, ALICE, b"a", "p", 1)
            put(hub, ALICE, b"b", "q", 7)
            for i in range(1, 21):  # another producer's puts: segments roll and the first go
                put(hub, ALICE, big, "r", i)
            await hub.sources[SRC].channels["x"].store.flushed()
        async with open_archive(tmp_path) as archive:
            assert archive.logs[SRC].segments[0].number > 1  # "a" and "b" are gone from disk
            hub = Hub(store=TieredStores(archive, archive_bytes=2 * 2**20))
            again = Peer(3, name="alice")
            hub.open_source(again, SRC)
            put(hub, again, b"a", "p", 1)  # replays of puts stored before the restart
            put(hub, again, b"b", "q", 7)
            put(hub, again, big, "r", 20)
            put(hub, again, b"c", "p", 2)  # and a new one
            assert hub.sources[SRC].replays_dropped == 3
            store = hub.sources[SRC].channels["x"].store
            assert store.last_seq == 23 and bytes(store.newest) == b"c"


async def test_a_crash_that_lost_a_puts_producer_record_drops_its_frames_too(tmp_path):
    """A write cut between a put's frames and its producer record (a torn write, a
    crash): recovery keeps neither, so the replay of that never acknowledged put is
    stored once, not twice."""
    with trio.fail_after(30):
        async with open_archive(tmp_path) as archive:
            hub = Hub(store=TieredStores(archive))
            hub.open_source(ALICE, SRC, channels={"x": "application/octet-stream"})
            put(hub, ALICE, b"a", "p", 1)
            await hub.sources[SRC].channels["x"].store.flushed()  # put 2 in a write of its own
            put(hub, ALICE, b"b", "p", 2)
            await hub.sources[SRC].channels["x"].store.flushed()
            path = archive.logs[SRC].active.path
        producers_record = fmt.RECORD_HEADER.size + len(fmt.producers_body({"p": 2}))
        with open(path, "r+b") as f:  # noqa: ASYNC230 (the broker is closed: nothing else runs)
            f.truncate(f.seek(0, 2) - producers_record)
        async with open_archive(tmp_path) as archive:
            assert archive.logs[SRC].torn_bytes > producers_record  # put 2's frames went too
            hub = Hub(store=TieredStores(archive))
            again = Peer(3, name="alice")
            hub.open_source(again, SRC)
            assert hub.sources[SRC].producers == {"p": 1}
            put(hub, again, b"a", "p", 1)  # the replay: put 1 was stored, put 2 was not
            put(hub, again, b"b", "p", 2)
            assert hub.sources[SRC].replays_dropped == 1
            store = hub.sources[SRC].channels["x"].store
            assert store.last_seq == 2 and bytes(store.newest) == b"b"  # number 2, once


async def test_open_source_tells_the_last_put_number_stored_of_the_producers_asked(broker):
    with trio.fail_after(10):
        async with open_client(broker, name="daq") as tb:
            tb._outbox.producer = "p"
            src = await tb.open_source(SRC)
            for _ in range(3):  # put numbers 1, 2, 3
                await src.put("x", b"a")
                await src.flush()
            await tb._requests.call(CloseSource, Ok, source=SRC)
            ok = await tb._requests.call(OpenSource, Ok, source=SRC, producers=["p", "q"])
            assert ok.result["producers"] == {"p": 3}  # q never put to it
            with pytest.raises(RequestFailed, match="producers must be a list") as info:
                await tb._requests.call(OpenSource, Ok, source=SRC, producers="p")
            assert info.value.code == "request"
            many = ["p"] * (MAX_PRODUCERS_PER_SOURCE + 1)
            with pytest.raises(RequestFailed, match="at most 256 producer ids"):
                await tb._requests.call(OpenSource, Ok, source=SRC, producers=many)
