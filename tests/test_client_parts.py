"""The client's parts: its write side, its handles, and leaving a subscription mid-stream.

The write-side tests talk over a Unix socket pair in virtual time (``autojump_clock``):
a send there is in the peer's queue when it returns, so the clock cannot jump ahead of
the bytes, and their ``fail_after`` catches a hang at once without load tripping it.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from turbine import ConnectionFailed, RequestFailed, TurbineError, open_client
from turbine._client_outbox import Outbox, WriteTurn
from turbine._constants import PROTOCOL_VERSION
from turbine._values import replace
from turbine.messages import ClientHello, Flush, Put
from turbine.protocol import NEED_DATA, Connection, Role

SRC = "daq_rig_data_source"


async def test_leaving_a_subscription_whose_queue_is_full_keeps_the_connection(broker):
    """The read loop may be waiting to deliver to a subscription that nobody reads;
    leaving that subscription ends the wait, and the client goes on working."""
    with trio.fail_after(10):
        async with open_client(broker, name="pub") as pub, open_client(broker, name="sub") as tb:
            src = await pub.open_source(SRC, channels={"x": "text/plain"})
            async with tb.subscribe(f"{SRC}/x", start="oldest") as sub:
                # Many small flushes: the broker sends a batch per flush, more
                # batches than the subscription queues, so the read loop blocks.
                for i in range(200):
                    await src.put("x", b"%d" % i)
                    await src.flush()
                assert (await sub.receive()).data == b"0"
                await trio.testing.wait_all_tasks_blocked()
            status = await tb.status()
            assert status["clients"]


async def received(broker: Connection, sock: trio.socket.SocketType, count: int) -> list[Any]:
    """The next ``count`` messages the broker's side of ``sock`` reads."""
    got: list[Any] = []
    while len(got) < count:
        if (msg := broker.next_event()) is NEED_DATA:
            broker.receive_data(await sock.recv(65536))
        else:
            got.append(msg)
    return got


async def test_outbox_writes_queued_puts_per_channel_before_the_next_message(autojump_clock):
    """A request written after puts follows them, so a flush covers every frame put before it."""
    ours, theirs = trio.socket.socketpair()
    lost: list[TurbineError] = []
    outbox = Outbox(ours, "test", max_frame=100, on_lost=lost.append, producer="p1")
    client, broker = Connection(Role.CLIENT), Connection(Role.BROKER)
    hello = client.send(ClientHello(protocol=PROTOCOL_VERSION, name="t"))
    broker.receive_data(b"".join(hello))
    assert broker.next_event().type == "client_hello"
    with trio.fail_after(5):
        assert not outbox.queue(SRC, "x", b"a", 1.0)
        assert not outbox.queue(SRC, "y", b"bb", None)
        assert not outbox.queue(SRC, "x", b"ccc", 2.0)
        assert outbox.has_puts
        await outbox.send(client.send(Flush(id=7)))
        assert not outbox.has_puts
        got = await received(broker, theirs, 3)
    # Each put carries the producer and its number, counted per source.
    x = Put(source=SRC, channel="x", ts=[1.0, 2.0], sizes=[1, 3], payload=memoryview(b"accc"))
    y = Put(source=SRC, channel="y", ts=[None], sizes=[2], payload=memoryview(b"bb"))
    assert got[:2] == [
        replace(x, producer="p1", pseq=1),
        replace(y, producer="p1", pseq=2),
    ]
    assert got[2] == Flush(id=7)
    with pytest.raises(RequestFailed, match="101 bytes is over the broker's limit of 100") as info:
        outbox.queue(SRC, "x", b"x" * 101, None)
    assert info.value.code == "too_large"
    assert not lost
    outbox.fail(ConnectionFailed("gone"))
    with pytest.raises(ConnectionFailed, match="gone"):
        outbox.queue(SRC, "x", b"a", None)
    with pytest.raises(ConnectionFailed, match="gone"):
        await outbox.send()
    ours.close()
    theirs.close()


class _FirstPass(trio.abc.Instrument):
    """What the peer socket held when the run loop first went round (its first I/O wait)."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self.held: bytes | None = None

    def before_io_wait(self, timeout: float) -> None:
        if self.held is None:
            try:
                self.held = self.peer.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.held = b""


async def test_an_uncontended_send_writes_before_other_tasks_run(autojump_clock):
    """A request (a flush) goes on the wire before the run loop goes round once: no
    scheduler pass between a caller and its write (the latency path)."""
    ours, theirs = socket.socketpair()
    lost: list[TurbineError] = []
    with ours, theirs, trio.fail_after(5):
        outbox = Outbox(
            trio.socket.from_stdlib_socket(ours), "t", max_frame=100, on_lost=lost.append
        )
        first = _FirstPass(theirs)
        trio.lowlevel.add_instrument(first)
        try:
            await outbox.send([b"request"])
        finally:
            trio.lowlevel.remove_instrument(first)
    assert first.held == b"request"
    assert not lost


async def test_the_write_turn_goes_to_its_waiters_in_order_and_skips_a_cancelled_one(
    autojump_clock,
):
    """The outbox's writers take turns first come first served; one cancelled while
    it waits never gets it, and the last one gives it back free."""
    turn = WriteTurn()
    order: list[str] = []

    async def write(name: str) -> None:
        await turn.take()
        try:
            order.append(name)
            await trio.sleep(1)
        finally:
            turn.give_back()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(write, name)
                await trio.testing.wait_all_tasks_blocked()
            cancelled = trio.CancelScope()

            async def write_cancelled() -> None:
                with cancelled:
                    await write("never")

            nursery.start_soon(write_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()
            nursery.start_soon(write, "d")
        assert order == ["a", "b", "c", "d"]
        assert not turn.taken
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await turn.take()  # a cancelled caller stops before it takes the turn
        assert not turn.taken


async def test_the_write_turn_given_back_as_a_waiter_is_cancelled_is_free(autojump_clock):
    """A writer cancelled while it waits for the turn, and the turn given back before
    that writer runs again (in the same step), leaves the turn free for the next."""
    turn = WriteTurn()
    await turn.take()
    cancelled = trio.CancelScope()

    async def wait_cancelled() -> None:
        with cancelled:
            await turn.take()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()
            turn.give_back()  # before the cancelled waiter ran again
        await turn.take()
    assert turn.taken


async def test_a_failed_write_fails_the_connection_once(autojump_clock):
    """A write to a closed peer raises ConnectionFailed and reports it (on_lost) for the client."""
    ours, theirs = trio.socket.socketpair()
    lost: list[TurbineError] = []
    outbox = Outbox(ours, "127.0.0.1:1", max_frame=100, on_lost=lost.append)
    theirs.close()
    outbox.queue(SRC, "x", b"a", None)
    with (
        trio.fail_after(5),
        pytest.raises(ConnectionFailed, match="lost the connection to 127.0.0.1:1"),
    ):
        await outbox.send()
    assert len(lost) == 1
    ours.close()


async def test_the_flusher_writes_what_was_put_since_its_last_write(autojump_clock):
    """Puts that fill no batch go out once the putting task lets others run, each
    time: the first put after a write wakes the flusher again."""
    ours, theirs = trio.socket.socketpair()
    lost: list[TurbineError] = []
    outbox = Outbox(ours, "test", max_frame=100, on_lost=lost.append, producer="p1")
    broker = Connection(Role.BROKER)
    hello = Connection(Role.CLIENT).send(ClientHello(protocol=PROTOCOL_VERSION, name="t"))
    broker.receive_data(b"".join(hello))
    assert broker.next_event().type == "client_hello"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run_flusher)
            for i in range(3):
                assert not outbox.queue(SRC, "x", b"%d" % i, None)
                assert not outbox.queue(SRC, "x", b"more", None)
                await trio.testing.wait_all_tasks_blocked()
                assert not outbox.has_puts
            nursery.cancel_scope.cancel()
        got = await received(broker, theirs, 3)
    assert [(bytes(p.payload), p.pseq) for p in got] == [(b"%dmore" % i, i + 1) for i in range(3)]
    assert not lost
    ours.close()
    theirs.close()


class _TaskSteps(trio.abc.Instrument):
    """Counts the scheduler passes of the tasks whose name ends with ``suffix``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_a_request_runs_its_caller_again_only_for_the_reply(broker):
    """Between writing a request (a flush, a status) and taking its reply the caller
    is not run again: its wait for the reply is where it lets others run, with no
    pass of its own after the write (a task step for nothing on every request)."""
    with trio.fail_after(10):
        async with open_client(broker, name="pub") as tb:
            src = await tb.open_source(SRC, channels={"x": "text/plain"})
            steps = _TaskSteps(trio.lowlevel.current_task().name)
            trio.lowlevel.add_instrument(steps)
            try:
                await src.put("x", b"a")
                await src.flush()
                await tb.status()
            finally:
                trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 2  # one for each reply


async def test_a_reconnecting_clients_flush_wakes_no_background_flush(broker):
    """A reconnecting client's flush covers what it takes into the spool, so the task
    that flushes a spool nobody flushes is not woken for it (a pass per flush on
    every component's path); puts left with no flush are still acknowledged by it."""
    with trio.fail_after(10):
        async with open_client(broker, name="pub", reconnect=True) as tb:
            src = await tb.open_source(SRC, channels={"x": "text/plain"})
            background = _TaskSteps("Flushes.run")
            trio.lowlevel.add_instrument(background)
            try:
                for i in range(10):
                    await src.put("x", b"%d" % i)
                    await src.flush()
            finally:
                trio.lowlevel.remove_instrument(background)
            assert tb.spool is not None and tb.spool.frames == 0
            await src.put("x", b"no flush")
            await trio.testing.wait_all_tasks_blocked()  # written, flushed and answered
            assert tb.spool.frames == 0
    assert background.steps == 0


async def test_a_put_by_path_wakes_no_flusher_and_a_cancelled_one_still_goes_out(broker):
    """``Client.put`` flushes at once, so the flusher task is not woken for its frame
    (a pass per put on every command's path); a put cancelled before its flush took
    the frame still has it written."""
    with trio.fail_after(10):
        async with open_client(broker, name="pub") as tb, open_client(broker, name="sub") as rd:
            await tb.open_source(SRC, channels={"x": "text/plain"})
            async with rd.subscribe(f"{SRC}/x", start="oldest") as sub:
                flusher = _TaskSteps("Outbox.run_flusher")
                trio.lowlevel.add_instrument(flusher)
                try:
                    for i in range(10):
                        await tb.put(f"{SRC}/x", b"%d" % i)
                finally:
                    trio.lowlevel.remove_instrument(flusher)
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await tb.put(f"{SRC}/x", b"cancelled")
                got = [(await sub.receive()).data for _ in range(11)]
    assert flusher.steps == 0
    assert got == [b"%d" % i for i in range(10)] + [b"cancelled"]
