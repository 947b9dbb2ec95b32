"""A connection's store task, with the connection faked: deferred replies, replies in parts.

In virtual time (``autojump_clock``): the tests' ``fail_after`` catches a hang at once,
and a loaded machine cannot trip it.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from turbine import RequestFailed
from turbine.messages import Frames, Message
from turbine.outbound import OutboundQueue, Wake
from turbine.protocol import State
from turbine.storetask import StoreReads


class FakeProto:
    state = State.OPEN

    def send(self, msg: Message, payloads: list[Any]) -> list[bytes]:
        head = b"error:" + msg.code.encode() if msg.type == "error" else b"more" * bool(msg.more)
        return [head, *payloads]


class FakeConnection:
    """The writer is the test: :meth:`write` takes what is queued, as the writer task does."""

    def __init__(self) -> None:
        self.out = OutboundQueue()
        self.proto = FakeProto()
        self._taken = trio.Event()

    def apply(self, wake: Wake) -> None:
        pass

    def frames_ready(self) -> None:
        pass

    async def taken(self) -> None:
        if self._taken.is_set():
            self._taken = trio.Event()
        await self._taken.wait()

    def write(self) -> list[bytes]:
        buffers = self.out.take(lambda _buffers: False)
        self._taken.set()
        return buffers


async def test_a_reply_in_parts_reads_the_next_part_only_once_the_one_before_is_taken(
    autojump_clock,
):
    conn = FakeConnection()
    reads = StoreReads(conn)
    read: list[int] = []

    async def parts():
        for i in range(4):
            read.append(i)
            yield [(Frames(id=1, groups=[], more=i < 3), [b"part%d" % i])]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            reads.nursery = nursery
            reads.stream(parts, 1)
            conn.out.reply([b"behind"])
            await trio.testing.wait_all_tasks_blocked()
            assert read == [0, 1]  # part 0 waits to be sent, part 1 to be queued: no further
            sent = conn.write()
            await trio.testing.wait_all_tasks_blocked()
            assert read == [0, 1, 2]
            sent += conn.write()
            await trio.testing.wait_all_tasks_blocked()
            sent += conn.write()
            await trio.testing.wait_all_tasks_blocked()
            sent += conn.write()
            assert read == [0, 1, 2, 3]
            nursery.cancel_scope.cancel()
    assert sent == [b"more", b"part0", b"more", b"part1", b"more", b"part2", b"", b"part3"] + [
        b"behind"  # the reply queued after the streamed one goes after its last part
    ]


async def test_a_reply_in_parts_that_fails_midway_ends_with_the_error(autojump_clock):
    conn = FakeConnection()
    reads = StoreReads(conn)

    async def parts():
        yield [(Frames(id=1, groups=[], more=True), [b"part0"])]
        raise RequestFailed("the disk is on fire", "disk")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            reads.nursery = nursery
            reads.stream(parts, 1)
            await trio.testing.wait_all_tasks_blocked()
            sent = conn.write()
            await trio.testing.wait_all_tasks_blocked()
            sent += conn.write()
            nursery.cancel_scope.cancel()
    assert sent == [b"more", b"part0", b"error:disk"]
