"""The client's read path: a subscription's reader that waits reads the socket itself.

Each test has one client with subscriptions (and requests) on it, and checks
what its readers see: every frame, in order, once, whoever read the socket.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import socket
import struct
import sys
from collections.abc import Callable

import pytest
import trio
import trio.testing

import turbine._client_handles
from tests.reads import CountedReads
from turbine import Client, ConnectionFailed, Frame, open_client
from turbine._client_handles import Feed
from turbine._client_reader import Reader, Turn
from turbine._client_requests import Requests
from turbine.messages import Role
from turbine.protocol import NEED_DATA, Connection, RemoteProtocolError, State, encode_frames
from turbine.testing import start_broker

SRC = "daq_rig_data_source"


class _Steps(trio.abc.Instrument):
    """The tasks that ran, in order, and where the client's socket first held bytes."""

    def __init__(self, sock: socket.socket, reader: object) -> None:
        self.sock = sock
        self.reader = reader  # the client's Reader: its loop's steps are logged as "read loop"
        self.log: list[str] = []

    def after_io_wait(self, timeout: float) -> None:
        if "readable" not in self.log:
            try:
                if self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    self.log.append("readable")
            except BlockingIOError:
                pass

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame = task.coro.cr_frame
        reader = frame is not None and frame.f_locals.get("self") is self.reader
        self.log.append("read loop" if reader else task.name)


def _client_socket(client: Client) -> socket.socket:
    return socket.socket(fileno=client._stream.socket.fileno())


async def _publish(broker: str, channel: str, items: list[bytes], flush_each: bool = True) -> None:
    async with open_client(broker, name="pub") as pub:
        src = await pub.open_source(SRC, channels={"a": "text/plain", "b": "text/plain"})
        for item in items:
            await src.put(channel, item)
            if flush_each:
                await src.flush()
        await src.flush()


async def test_a_waiting_reader_gets_its_frame_in_the_pass_its_bytes_arrive(broker):
    """No hand-over from the read loop's task: the task waiting on the subscription
    reads the socket and has its frame before the read loop's task runs again."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb:
            async with tb.subscribe(f"{SRC}/a", start="oldest") as sub:
                async with trio.open_nursery() as nursery:
                    got: list[bytes] = []
                    done = trio.Event()

                    async def receive_one() -> None:
                        got.append((await sub.receive()).data)
                        done.set()

                    nursery.start_soon(receive_one, name="consumer")
                    await trio.testing.wait_all_tasks_blocked()
                    sock = _client_socket(tb)
                    steps = _Steps(sock, tb._reader)
                    trio.lowlevel.add_instrument(steps)
                    try:
                        await _publish(broker, "a", [b"one"])
                        await done.wait()
                    finally:
                        trio.lowlevel.remove_instrument(steps)
                        sock.detach()
    assert got == [b"one"]
    after = steps.log[steps.log.index("readable") :]
    ours = [name for name in after if name in ("consumer", "read loop")]
    assert ours[0] == "consumer", ours[:3]


async def test_frames_for_another_subscription_keep_their_order_when_its_queue_fills(broker):
    """The waiting reader of one subscription reads a flood meant for another,
    more batches than that one queues: the rest wait for the read loop, which
    delivers them as they are taken; then the first one's frame comes.
    Nothing is lost or reordered."""
    with trio.fail_after(20):
        async with (
            open_client(broker, name="sub") as tb,
            tb.subscribe(f"{SRC}/a", start="oldest") as a,
            tb.subscribe(f"{SRC}/b", start="oldest") as b,
        ):
            got_a: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def wait_a() -> None:
                    got_a.append((await a.receive()).data)

                async def read_b() -> None:
                    seen.extend([(await b.receive()).data for _ in range(200)])

                seen: list[bytes] = []
                nursery.start_soon(wait_a)
                await trio.testing.wait_all_tasks_blocked()
                # Many small flushes: a batch each, more than a subscription queues.
                await _publish(broker, "b", [b"%d" % i for i in range(200)])
                await trio.testing.wait_all_tasks_blocked()
                assert not seen
                nursery.start_soon(read_b)
                await _publish(broker, "a", [b"for a"])
            assert got_a == [b"for a"]
            assert seen == [b"%d" % i for i in range(200)]


async def test_requests_get_their_replies_while_a_reader_waits(broker):
    """A request's reply is read by the subscription's waiting reader; the caller gets it."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/a") as sub:
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def wait() -> None:
                    got.append((await sub.receive()).data)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                for _ in range(3):
                    assert (await tb.status())["clients"]
                await _publish(broker, "a", [b"x", b"y"], flush_each=False)
                assert len(await tb.fetch(f"{SRC}/a", newest=5)) == 2
            assert got == [b"x"]
            assert (await sub.receive()).data == b"y"


async def test_a_cancelled_reader_loses_nothing(broker):
    """A reader cancelled while it reads for its subscription gives the socket
    back: what comes next reaches the subscription in order, and the client works on."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/a") as sub:
            for round_ in range(3):
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sub.receive)
                        await trio.testing.wait_all_tasks_blocked()
                        scope.cancel()
                items = [b"%d-%d" % (round_, i) for i in range(3)]
                await _publish(broker, "a", items)
                assert [(await sub.receive()).data for _ in items] == items
            assert (await tb.status())["clients"]


async def test_closing_the_client_wakes_a_waiting_reader(broker):
    """A reader waiting on the socket is told when the client closes, not left waiting."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/a") as sub:
            async with trio.open_nursery() as nursery:
                errors: list[BaseException] = []

                async def wait() -> None:
                    with pytest.raises(ConnectionFailed) as info:
                        await sub.receive()
                    errors.append(info.value)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await tb.aclose()
    assert "closed" in str(errors[0])


async def test_a_subscription_closed_in_another_task_ends_its_waiting_reader(broker):
    """A reader waiting on the socket for a subscription that another task closes
    ends its iteration (woken by the broker's reply to the unsubscribe), and the
    client's other subscriptions and requests go on."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/b") as other:
            ended: list[int] = []
            async with trio.open_nursery() as nursery:
                async with tb.subscribe(f"{SRC}/a") as sub:

                    async def read() -> None:
                        ended.append(len([item async for item in sub]))

                    nursery.start_soon(read)
                    await trio.testing.wait_all_tasks_blocked()
            assert ended == [0]
            await _publish(broker, "b", [b"next"])
            assert (await other.receive()).data == b"next"
            assert (await tb.status())["clients"]


async def test_a_client_closed_while_a_reader_waits_is_a_clean_close_at_the_broker(broker):
    """The reader woken by the close gives the socket back to the read loop, which
    reads to the broker's end: the broker records a client close, not a reset."""
    with trio.fail_after(10):
        async with open_client(broker, name="watcher") as watcher:
            async with open_client(broker, name="leaver") as tb, tb.subscribe(f"{SRC}/a") as sub:
                async with trio.open_nursery() as nursery:

                    async def wait() -> None:
                        with contextlib.suppress(ConnectionFailed):
                            await sub.receive()

                    nursery.start_soon(wait)
                    await trio.testing.wait_all_tasks_blocked()
                    await tb.aclose()
            while not (
                closed := [
                    (c["code"], c["reason"])
                    for c in (await watcher.status())["closed"]
                    if c["client"].startswith("leaver#")
                ]
            ):
                pass
    assert closed == [("client_closed", "client closed the connection")]


class _EveryStep(trio.abc.Instrument):
    """Calls ``check`` after every step of one task."""

    def __init__(self, task: trio.lowlevel.Task, check: Callable[[], None]) -> None:
        self.task = task
        self.check = check

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.check()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_a_reader_that_meets_the_end_reports_the_loss_at_once(nursery, reconnect):
    """When the waiting reader is the one that reads the end of the connection, the
    client knows the connection is lost before any other task runs: a request made
    right then fails with ConnectionFailed (or, reconnecting, waits for the next
    connection), never with the closed protocol's LocalProtocolError."""
    stop = trio.CancelScope()

    async def run_broker(task_status: trio.TaskStatus[str]) -> None:
        with stop:
            async with trio.open_nursery() as inner:
                task_status.started(await start_broker(inner))

    address = await nursery.start(run_broker)
    broken: list[str] = []
    with trio.fail_after(10):
        async with open_client(address, reconnect=reconnect) as tb:
            async with tb.subscribe(f"{SRC}/a") as sub, trio.open_nursery() as inner:
                started = trio.Event()

                async def wait() -> None:
                    with contextlib.suppress(ConnectionFailed):
                        started.set()
                        with trio.move_on_after(0.5 if reconnect else 10):
                            await sub.receive()

                inner.start_soon(wait)
                await started.wait()
                await trio.testing.wait_all_tasks_blocked()
                (waiter,) = [t for t in inner.child_tasks]

                def lost_known() -> None:
                    if tb._proto.state is State.CLOSED:
                        known = tb._down.is_set() if reconnect else tb._outbox.error is not None
                        if not known:
                            broken.append("the protocol closed, the loss not yet known")

                steps = _EveryStep(waiter, lost_known)
                trio.lowlevel.add_instrument(steps)
                try:
                    stop.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.testing.wait_all_tasks_blocked()
                    trio.lowlevel.remove_instrument(steps)
    assert not broken


async def test_queued_frames_are_made_only_as_they_are_read(broker):
    """Batches waiting in a subscription's queue hold no Frame objects yet: a Frame
    is a tuple the garbage collector tracks for life, and a full queue of them
    (64 batches of up to thousands) made every collection walk them all."""
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/a") as sub:
            items = [b"%d" % i for i in range(1000)]
            await _publish(broker, "a", items[:500], flush_each=False)
            await _publish(broker, "a", items[500:], flush_each=False)
            await trio.testing.wait_all_tasks_blocked()
            first = await sub.receive()
            gc.collect()  # Frames an earlier test left in garbage cycles are not this queue's
            made = [o for o in gc.get_objects() if type(o) is Frame and o.source == SRC]
            assert made == [first]  # the other 999 wait in the queue unmade
            rest = [(await sub.receive()).data for _ in items[1:]]
            assert [first.data, *rest] == items


async def test_a_reader_asking_again_before_the_read_loop_runs_gets_the_batch_it_holds(
    monkeypatch,
):
    """A reader read the socket for its subscription and took the first of three
    batches; the second waits for the read loop (the queue holds one), and the
    third is still unrouted in the buffer.  The loop, handed the socket back, has
    not run yet when the reader asks again: the reader must wait for the loop's
    delivery, not take the socket once more.  It once did, and waited for bytes
    that never came while the loop waited for the socket's return (a subscriber
    hung at the end of a backlog); with bytes still coming, a later batch took the
    waiting one's place (reordered, or lost)."""
    monkeypatch.setattr(turbine._client_handles, "SUBSCRIPTION_QUEUE_BATCHES", 1)
    ours, theirs = trio.socket.socketpair()
    with ours, theirs, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        feed = reader.feeds[1] = Feed(wait=reader.receive_for)
        reader._turn = Turn.FREE  # handed back; the read loop takes it when it next runs
        for seq in (1, 2, 3):  # three frames messages, read at once
            group = [SRC, "a", "text/plain", seq, [1000.0 + seq], [1], "w"]
            await theirs.send(b"".join(encode_frames(1, [group], [b"%d" % seq])))
        got = [f.data for f in await feed.next_batch()]
        assert reader._full is not None  # the second batch waits for the loop
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)  # runs once this task waits
            got += [f.data for f in await feed.next_batch()]
            got += [f.data for f in await feed.next_batch()]
            nursery.cancel_scope.cancel()
    assert got == [b"1", b"2", b"3"]


async def test_a_waiting_reader_tries_no_read_that_fails_between_frames(broker, monkeypatch):
    """Frames that come one at a time leave the socket empty after each: the reader
    waits for bytes instead of first trying a read that fails (a syscall and an
    exception per frame)."""
    import turbine._client_reads

    counted = CountedReads()
    with trio.fail_after(10):
        async with open_client(broker, name="sub") as tb, tb.subscribe(f"{SRC}/a") as sub:
            async with open_client(broker, name="pub") as pub:
                src = await pub.open_source(SRC, channels={"a": "text/plain"})
                monkeypatch.setattr(turbine._client_reads, "os", counted)
                for i in range(20):
                    await src.put("a", b"%d" % i)
                    await src.flush()
                    assert (await sub.receive()).data == b"%d" % i
                monkeypatch.undo()
    assert counted.reads >= 20
    assert counted.failed == 0


async def test_a_reader_reads_again_at_once_while_a_message_is_part_way_in():
    """A read that took less than it was offered lets the next one wait for bytes
    first, but not while a message is part way in: the rest of a large one is
    arriving, and a wait per piece slowed a 1 MB subscription below its
    publisher (its ring evicted frames it had not read)."""
    ours, theirs = trio.socket.socketpair()
    with ours, theirs, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        small = [SRC, "a", "text/plain", 1, [1000.0], [1], "w"]
        await theirs.send(b"".join(encode_frames(1, [small], [b"x"])))
        await trio.lowlevel.wait_readable(ours)
        assert reader._reads.read() is not None and proto.next_event() is not NEED_DATA
        assert reader._reads.may_wait()  # between messages, after a short read: wait first
        large = [SRC, "a", "application/octet-stream", 2, [1000.0], [200_000], "w"]
        msg = b"".join(encode_frames(1, [large], [bytes(200_000)]))
        await theirs.send(msg[:1000])
        await trio.lowlevel.wait_readable(ours)
        assert reader._reads.read() == 1000  # less than offered: the socket is empty now
        assert proto.next_event() is NEED_DATA
        assert not reader._reads.may_wait()  # ... but the message's rest is coming: read at once


async def test_a_feed_added_while_the_read_loop_waits_with_none_gets_its_frames_from_it():
    """The read loop of a connection with no subscription waits for bytes without a
    cancel scope (nothing could take the socket over); a subscription's reader that
    comes meanwhile waits for the loop to deliver, and gets every frame in order."""
    ours, theirs = trio.socket.socketpair()
    with ours, theirs, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await trio.testing.wait_all_tasks_blocked()
            assert reader._turn is Turn.WAITING and reader._waiting is None
            feed = reader.feeds[1] = Feed(wait=reader.receive_for)
            got: list[bytes] = []

            async def read() -> None:
                for _ in range(2):
                    got.extend(frame.data for frame in await feed.next_batch())

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            for seq in (1, 2):
                group = [SRC, "a", "text/plain", seq, [1000.0], [1], "w"]
                await theirs.send(b"".join(encode_frames(1, [group], [b"%d" % seq])))
                await trio.testing.wait_all_tasks_blocked()
            assert got == [b"1", b"2"]
            nursery.cancel_scope.cancel()


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two connected TCP sockets on loopback (a socket pair is a Unix one)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    theirs = trio.socket.socket()
    with listener:
        await theirs.connect(listener.getsockname())
        ours, _ = await listener.accept()
    return ours, theirs


async def queued(sock: trio.socket.SocketType, nbytes: int) -> None:
    """Wait until ``sock`` holds ``nbytes`` unread (loopback delivers at once, or nearly;
    under the mock clock a pass here costs no real time)."""
    import array
    import fcntl
    import termios

    n = array.array("i", [0])
    while fcntl.ioctl(sock.fileno(), termios.FIONREAD, n) == 0 and n[0] < nbytes:  # noqa: ASYNC110 (the kernel's queue: nothing to wait on)
        await trio.sleep(0.001)


@pytest.mark.skipif(sys.platform != "linux", reason="SO_RCVLOWAT marks TCP sockets on Linux only")
async def test_a_large_frame_wakes_its_reader_once_its_rest_is_in():
    """While a large payload's rest arrives, the socket is not readable: the
    reader waits once for all of it, not once for each piece the broker writes
    (4-8 reads and 2-5 waits per 1 MB frame, each a pass through the scheduler)."""
    ours, theirs = await tcp_pair()
    with ours, theirs, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        size = 1_000_000
        large = [SRC, "a", "application/octet-stream", 2, [1000.0], [size], "w"]
        msg = b"".join(encode_frames(1, [large], [bytes(range(256)) * (size // 256) + bytes(64)]))
        await theirs.send(msg[:5000])
        await trio.lowlevel.wait_readable(ours)
        assert reader._reads.read() == 5000 and proto.next_event() is NEED_DATA
        rest = len(msg) - 5000
        assert reader._reads.may_wait()  # nothing can be read before all of it is in
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == rest
        await _send_all(theirs, msg[5000:-1])  # (one send may take only part of it)
        await queued(ours, rest - 1)
        # Real time, not a mock clock: a mock clock jumps to the next deadline while the
        # kernel, not a task, still holds the bytes (loopback on a loaded machine).
        with trio.move_on_after(0.05) as waited:  # it would be readable at once
            await trio.lowlevel.wait_readable(ours)
        assert waited.cancelled_caught  # all but one byte in: still not readable
        await theirs.send(msg[-1:])
        await trio.lowlevel.wait_readable(ours)
        assert reader._reads.read() == rest
        frames = proto.next_event()
        assert bytes(frames.payload) == msg[-size:]
        assert not reader._reads.may_wait()  # a full read: read again at once
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    with memoryview(data) as view:
        while view:
            view = view[await sock.send(view[: 2**20]) :]


def _large_message(size: int) -> bytes:
    large = [SRC, "a", "application/octet-stream", 2, [1000.0], [size], "w"]
    return b"".join(encode_frames(1, [large], [bytes(range(256)) * (size // 256)]))


@pytest.mark.skipif(sys.platform != "linux", reason="SO_RCVLOWAT marks TCP sockets on Linux only")
async def test_a_broker_closing_while_a_large_frames_rest_is_awaited_wakes_the_reader():
    """The low-water mark is the rest of the payload, which will never come: the
    closed connection still wakes the wait, and is reported as cut mid-message."""
    ours, theirs = await tcp_pair()
    with ours, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        msg = _large_message(1_000_000)
        await theirs.send(msg[:5000])
        await trio.lowlevel.wait_readable(ours)
        assert reader._reads.read() == 5000 and proto.next_event() is NEED_DATA
        assert reader._reads.may_wait()
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) > 1
        await theirs.send(msg[5000:200_000])
        theirs.close()
        await trio.lowlevel.wait_readable(ours)  # woken by the close, not by the mark
        while (n := reader._reads.read()) is None or n:
            pass
        with pytest.raises(RemoteProtocolError, match="middle of a message"):
            proto.next_event()


@pytest.mark.skipif(sys.platform != "linux", reason="SO_RCVLOWAT marks TCP sockets on Linux only")
async def test_a_frame_larger_than_the_socket_buffer_arrives_whole_under_the_mark():
    """A receive buffer fixed smaller than the payload (SO_RCVBUF) caps the mark
    the kernel keeps: each wait still ends, and the frame arrives whole."""
    ours, theirs = await tcp_pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
    with ours, theirs, trio.fail_after(10):
        proto = Connection(Role.CLIENT)
        proto.state = State.OPEN
        reader = Reader(ours, proto, "a test broker", Requests(proto, None), print)  # type: ignore[arg-type]
        msg = _large_message(4 * 2**20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_all, theirs, msg)
            waits = 0
            while (event := proto.next_event()) is NEED_DATA:
                if reader._reads.may_wait():
                    waits += 1
                    await trio.lowlevel.wait_readable(ours)
                assert reader._reads.read() != 0
        assert bytes(event.payload) == msg[-4 * 2**20 :]
        assert waits < 4 * 2**20 // 65536  # waits for more than a piece at a time


async def _cutting_proxy(
    broker: str,
    cut_after: int,
    reset: bool,
    nursery: trio.Nursery,
    *,
    pause: tuple[trio.Event, trio.Event] | None = None,
    task_status: trio.TaskStatus[str],
) -> None:
    """A TCP relay to ``broker`` whose first connection is closed (both ways; with
    ``reset``, by a TCP reset) once ``cut_after`` bytes of the broker's have gone to
    the client; later ones relay all.  With ``pause`` (paused, resume) it is not
    closed: the relay sets ``paused`` there, and goes on once ``resume`` is set."""
    host, port = broker.rsplit(":", 1)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    cuts = [cut_after]

    async def relay(client: trio.SocketStream) -> None:
        budget = cuts.pop() if cuts else None
        async with client, await trio.open_tcp_stream(host, int(port)) as upstream:
            async with trio.open_nursery() as both:

                async def up() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        async for data in client:
                            await upstream.send_all(data)
                    both.cancel_scope.cancel()  # the client closed: so does the relay

                async def down() -> None:
                    nonlocal budget
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        async for data in upstream:
                            if budget is not None and len(data) >= budget:
                                await client.send_all(data[:budget])
                                if pause is not None:
                                    pause[0].set()
                                    await pause[1].wait()
                                    await client.send_all(data[budget:])
                                    budget = None
                                    continue
                                if reset:  # (no linger: the close sends a reset)
                                    linger = struct.pack("ii", 1, 0)
                                    client.socket.setsockopt(
                                        socket.SOL_SOCKET, socket.SO_LINGER, linger
                                    )
                                break
                            if budget is not None:
                                budget -= len(data)
                            await client.send_all(data)
                    both.cancel_scope.cancel()

                both.start_soon(up)
                both.start_soon(down)

    port_of = listeners[0].socket.getsockname()[1]
    task_status.started(f"127.0.0.1:{port_of}")
    await trio.serve_listeners(relay, listeners, handler_nursery=nursery)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_connection_lost_mid_payload_hands_no_part_of_the_frame(nursery, broker, reset):
    """A large frame's payload is received into the bytes its Frame gets; a
    connection cut part way through must fail the subscription, never hand that
    half-filled object over as a frame (and the broker's copy stays whole)."""
    size = 1_000_000
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    via = await nursery.start(_cutting_proxy, broker, 300_000, reset, nursery)
    with trio.fail_after(10):
        async with open_client(broker, name="pub") as pub:
            src = await pub.open_source(SRC, channels={"a": "application/octet-stream"})
            await src.put("a", b"small")
            await src.flush()
            got: list[bytes] = []
            with pytest.raises(ConnectionFailed) as lost:
                async with open_client(via, name="cut") as sub_client:
                    async with sub_client.subscribe(f"{SRC}/a", start="newest") as sub:
                        got.append(bytes((await sub.receive()).data))
                        await src.put("a", payload)
                        await src.flush()
                        while True:
                            got.append(bytes((await sub.receive()).data))
            assert got == [b"small"]  # nothing of the large frame
            said = "Connection reset by peer" if reset else "in the middle of a message"
            assert said in str(lost.value)  # (closed: cut in the payload)
            async with open_client(broker, name="whole") as reader:
                (frame,) = await reader.fetch(f"{SRC}/a", newest=1)
                assert frame.data == payload


async def test_a_subscription_cancelled_while_a_large_frames_rest_is_awaited_gets_it_whole_next(
    nursery, broker
):
    """A receive cancelled while the socket's low-water mark waits for a large
    payload's rest loses nothing: the next receive gets that frame whole."""
    size = 1_000_000
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    paused, resume = trio.Event(), trio.Event()
    via = await nursery.start(
        functools.partial(_cutting_proxy, broker, 300_000, False, nursery, pause=(paused, resume))
    )
    with trio.fail_after(10):
        async with open_client(broker, name="pub") as pub, open_client(via, name="sub") as client:
            src = await pub.open_source(SRC, channels={"a": "application/octet-stream"})
            await src.put("a", b"small")
            await src.flush()
            async with client.subscribe(f"{SRC}/a", start="newest") as sub:
                assert (await sub.receive()).data == b"small"
                await src.put("a", payload)
                await src.flush()
                with trio.CancelScope() as waiting:

                    async def cancel_once_paused() -> None:
                        await paused.wait()
                        sock = client._stream.socket
                        while sys.platform == "linux" and (  # until the reader waits under the mark
                            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) < 600_000
                        ):
                            await trio.testing.wait_all_tasks_blocked(0.01)
                        await trio.testing.wait_all_tasks_blocked()
                        waiting.cancel()

                    nursery.start_soon(cancel_once_paused)
                    await sub.receive()
                assert waiting.cancelled_caught  # cancelled part way into the payload
                resume.set()
                frame = await sub.receive()
                assert frame.seq == 2 and frame.data == payload
