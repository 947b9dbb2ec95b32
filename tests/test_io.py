"""The shared socket helpers: which buffers are joined, and writes that take many iovecs."""

from __future__ import annotations

import array
import socket
from typing import Any

import pytest
import trio
import trio.testing

from turbine._constants import JOIN_BELOW_BYTES
from turbine._io import coalesce, send_buffers, write_now


def test_frames_of_a_kilobyte_are_sent_as_they_are_and_small_ones_joined() -> None:
    header = b"h" * 40
    frames = [bytes([i % 256]) * 1024 for i in range(1000)]
    out = coalesce([header, *frames])
    assert out[0] == header
    assert all(a is b for a, b in zip(out[1:], frames, strict=True))  # not copied
    small = [b"x" * 64] * 100
    assert coalesce([header, *small]) == [header + b"x" * 6400]
    assert coalesce([b"", b""]) == []


def test_a_buffer_of_wider_items_is_counted_in_bytes() -> None:
    floats = array.array("d", range(JOIN_BELOW_BYTES))
    (out,) = coalesce([floats])
    assert len(out) == 8 * JOIN_BELOW_BYTES
    assert bytes(out) == floats.tobytes()


def test_a_reply_of_more_buffers_than_one_writev_takes_arrives_whole_and_in_order() -> None:
    frames = [i.to_bytes(4, "big") * 256 for i in range(3000)]  # 3 MB, 3,000 iovecs
    # A unix socket pair: what one side writes is there to read at once.
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        got = bytearray()
        rest: list[Any] = list(frames)
        while rest:
            before = sum(map(len, rest))
            rest, sent = write_now(a.fileno(), rest)
            assert sent > 0 and sum(map(len, rest)) == before - sent
            while True:
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    break
                got += chunk
    assert got == b"".join(frames)


async def test_a_send_writes_at_once_and_is_a_checkpoint() -> None:
    """A plain socket's send is written when it returns, and lets others run (as trio's sends)."""
    ours, theirs = socket.socketpair()
    with trio.socket.from_stdlib_socket(ours) as sock, theirs, trio.fail_after(5):
        with trio.testing.assert_checkpoints():
            assert await send_buffers(sock, [b"request", b" and more"]) == 16
        assert theirs.recv(1024, socket.MSG_DONTWAIT) == b"request and more"


async def test_a_cancelled_send_writes_nothing_and_a_large_one_arrives_whole() -> None:
    a, b = trio.socket.socketpair()
    frames = [i.to_bytes(4, "big") * 256 for i in range(3000)]  # more than the socket takes
    got = bytearray()

    async def read_all() -> None:
        while chunk := await b.recv(1 << 20):
            got.extend(chunk)

    with a, b, trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await send_buffers(a, [b"never"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            assert await send_buffers(a, frames) == 3000 * 1024
            a.shutdown(socket.SHUT_WR)
    assert bytes(got) == b"".join(frames)
