"""A producer goes at the pace the broker delivers, never at a slow sink's (turbine/pacing.py)."""

from __future__ import annotations

import select
import socket
import struct

import trio

import turbine.connection
from tests.test_broker import SRC, RawClient
from turbine import Frame, Gap, open_client
from turbine.client import frames_from
from turbine.outbound import OutboundQueue
from turbine.pacing import WriteRoom, deliver_first
from turbine.testing import start_broker

#: A hang detector for the tests on real sockets (they need milliseconds).
HANG_S = 30


class Sink:
    """A subscriber's connection as the pacing sees it: ``queued`` frames, a
    socket with room for ``room`` more, a writer that sends one a pass."""

    def __init__(self, queued: int, room: int, gone_after: int | None = None) -> None:
        self.queued = queued
        self.room = room
        self.sent = 0
        self.gone = False
        self.gone_after = gone_after  # frames it takes before it disconnects

    def frames_go_now(self) -> bool:
        return self.queued > 0 and self.room > 0 and not self.gone

    def wake_soon(self) -> None:
        pass

    async def writer(self) -> None:
        while True:
            if self.queued and self.room and not self.gone:
                self.queued -= 1
                self.room -= 1
                self.sent += 1
                self.gone = self.sent == self.gone_after
            await trio.lowlevel.checkpoint()


async def paced(*sinks: Sink) -> int:
    """Run :func:`deliver_first` for ``sinks``, their writers beside it; the write_ready calls."""
    calls = 0

    def write_ready() -> None:
        nonlocal calls
        calls += 1

    woke = dict.fromkeys(sinks)
    async with trio.open_nursery() as nursery:
        for sink in sinks:
            nursery.start_soon(sink.writer)
        await deliver_first(woke, write_ready)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    assert woke == {}
    return calls


# --- the rule, against sinks that stand for subscribers' connections ---------------------


async def test_the_producer_is_held_while_a_writable_subscriber_has_frames_and_released_when_it_drained():
    sink = Sink(queued=40, room=1000)
    calls = await paced(sink)
    assert (sink.queued, sink.sent) == (0, 40)  # released once it had sent all
    assert calls >= 40  # and every pass wrote what readers owed the sleeping writers


async def test_a_subscriber_whose_socket_fills_holds_the_producer_no_longer():
    sink = Sink(queued=1000, room=7)
    await paced(sink)
    assert (sink.sent, sink.queued) == (7, 993)  # one socket fill, then the ring keeps the rest


async def test_every_subscriber_is_delivered_to_before_the_producer_reads_on():
    fast, full, drained = Sink(queued=30, room=1000), Sink(queued=30, room=0), Sink(0, 1000)
    await paced(fast, full, drained)
    assert (fast.sent, full.sent, drained.sent) == (30, 0, 0)


async def test_a_subscriber_that_is_gone_releases_the_producer_at_once():
    sink = Sink(queued=1000, room=1000, gone_after=3)
    await paced(sink)
    assert (sink.sent, sink.queued) == (3, 997)


async def test_no_subscriber_with_frames_lets_the_producer_read_on_without_a_pass():
    calls = await paced(Sink(queued=0, room=1000), Sink(queued=5, room=0))
    assert calls == 0


def test_the_frames_a_connection_owes_are_those_it_may_send_now():
    q = OutboundQueue()
    q.sleep()
    assert not q.frames_waiting
    q.frames_pending()  # a put woke it
    assert q.frames_waiting
    q.take(lambda buffers: False, direct=True)  # pulled everything
    assert not q.frames_waiting
    q.frames_pending()
    slot = q.reserve()  # a reply from disk goes first: nothing after it can go yet
    assert not q.frames_waiting
    q.fill(slot, [b"reply"])
    assert q.frames_waiting
    q.take(lambda buffers: True, direct=True)  # more than one batch
    q.left([b"rest"])
    assert q.frames_waiting
    q.clear()  # closed: it sends nothing more
    assert not q.frames_waiting


# --- "takes bytes now": the kernel's answer for a real TCP socket ------------------------


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        s.setblocking(False)
    return a, b


def wait_for(sock: socket.socket, events: int) -> None:
    """Wait (at most HANG_S) until the kernel reports ``events`` on ``sock``."""
    poll = select.poll()
    poll.register(sock, events)
    assert poll.poll(HANG_S * 1000), "the kernel never reported the socket's change"


def test_a_socket_takes_bytes_until_it_is_full_and_again_once_its_reader_read():
    a, b = tcp_pair()
    with a, b:
        room = WriteRoom(a)
        assert room.takes_bytes()
        chunk = bytes(16 << 10)
        while True:
            try:
                a.send(chunk)
            except BlockingIOError:
                break
        assert not room.takes_bytes()  # full: a slow sink holds nobody
        while True:
            wait_for(b, select.POLLIN)
            try:
                while b.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            if room.takes_bytes():
                break
        assert room.takes_bytes()


def test_a_socket_whose_peer_reset_it_takes_no_bytes():
    a, b = tcp_pair()
    room = WriteRoom(a)
    with a:
        assert room.takes_bytes()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()  # a reset
        wait_for(a, select.POLLERR | select.POLLHUP)
        assert not room.takes_bytes()
    assert not room.takes_bytes()  # a closed connection's socket


# --- through a real broker ---------------------------------------------------------------


async def test_a_subscriber_that_stops_reading_does_not_hold_the_producer_and_is_told_of_the_gap(
    nursery,
):
    address = await start_broker(nursery)
    frame = bytes(64 << 10)
    count = 400  # 25 MiB: its socket fills, the 4 MiB ring moves on
    with trio.fail_after(HANG_S):
        stopped = await RawClient.connect(address, name="stopped")
        stopped.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        await stopped.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x"})
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC, cache_bytes=4 << 20)
            for _ in range(count):
                await src.put("x", frame)
            await src.flush()  # completes: "stopped" has read nothing
            got, missed = 0, 0
            while got + missed < count:
                msg = await stopped.receive()
                assert msg is not None
                if msg.type == "gap":
                    missed += msg.missed
                elif msg.type == "frames":
                    got += len(list(frames_from(msg.groups, msg.payload)))
        await stopped.aclose()
    assert missed > 0, "25 MiB through a 4 MiB ring to a sink that read nothing: it must be told"
    assert got + missed == count


async def test_a_subscriber_that_reads_slowly_does_not_pace_the_producer(nursery):
    address = await start_broker(nursery)
    frame = bytes(64 << 10)
    count = 400
    with trio.fail_after(HANG_S):
        async with (
            open_client(address, name="producer") as producer,
            open_client(address, name="slow") as slow,
        ):
            src = await producer.open_source(SRC, cache_bytes=4 << 20)
            items: list[Frame | Gap] = []
            async with slow.subscribe(f"{SRC}/x") as sub:

                async def sip() -> None:
                    async for item in sub:  # a few frames, then the others' turn, many times
                        items.append(item)
                        for _ in range(50):
                            await trio.lowlevel.checkpoint()

                async with trio.open_nursery() as inner:
                    inner.start_soon(sip)
                    for _ in range(count):
                        await src.put("x", frame)
                    await src.flush()
                    taken_by_then = sum(isinstance(i, Frame) for i in items)
                    inner.cancel_scope.cancel()
    assert taken_by_then < count / 2  # the producer did not go at the sink's pace


async def test_a_subscriber_that_disconnects_with_frames_queued_holds_the_producer_no_longer(
    nursery,
):
    address = await start_broker(nursery)
    frame = bytes(256 << 10)
    with trio.fail_after(HANG_S):
        gone = await RawClient.connect(address, name="gone")
        await gone.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x"})
        assert (await gone.receive()).type == "ok"
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC, cache_bytes=64 << 20)
            for _ in range(8):
                await src.put("x", frame)
            await src.flush()
            sock = gone.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await gone.aclose()  # a reset, with frames unread
            for _ in range(200):  # 50 MiB more than it could have taken
                await src.put("x", frame)
            await src.flush()
            status = await producer.status()
    assert [c for c in status["closed"] if c["client"].startswith("gone#")]


async def test_the_broker_asks_the_subscribers_a_put_woke_before_it_reads_on(nursery, monkeypatch):
    asked: list[list[str]] = []

    async def recorded(woke, write_ready):
        asked.append(sorted(sink.peer.name for sink in woke))
        await deliver_first(woke, write_ready)

    monkeypatch.setattr(turbine.connection, "deliver_first", recorded)
    address = await start_broker(nursery)
    with trio.fail_after(HANG_S):
        async with (
            open_client(address, name="producer") as producer,
            open_client(address, name="reader") as reader,
        ):
            src = await producer.open_source(SRC)
            async with reader.subscribe(f"{SRC}/x") as sub:
                await src.put("x", b"frame")
                await src.flush()
                assert (await sub.receive()).data == b"frame"
    assert asked and all(names == [asked[0][0]] for names in asked)
    assert asked[0][0].startswith("reader#")
