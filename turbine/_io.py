"""Socket helpers shared by the broker and the client."""

from __future__ import annotations

import itertools
import os
from typing import Any

import trio

from ._constants import JOIN_BELOW_BYTES

#: sendmsg takes at most this many buffers at once (IOV_MAX is 1024 on Linux).
_MAX_IOV = 512


def coalesce(buffers: list[Any]) -> list[Any]:
    """Join runs of small buffers; leave the others where they lie (no copy).

    What stays apart is cast to bytes (``memoryview(..).cast("B")``) unless it
    is ``bytes`` already, so every ``len`` counts bytes.
    """
    if not buffers or max(map(len, buffers)) < JOIN_BELOW_BYTES:
        joined = b"".join(buffers)
        return [joined] if joined else []
    out: list[Any] = []
    small: list[Any] = []
    for b in buffers:
        if len(b) >= JOIN_BELOW_BYTES:
            if small:
                out.append(b"".join(small))
                small = []
            out.append(b if type(b) is bytes else memoryview(b).cast("B"))
        elif b:
            small.append(b)
    if small:
        out.append(b"".join(small))
    return out


def write_now(fd: int, buffers: list[Any]) -> tuple[list[Any], int]:
    """Write what the socket takes right now, without waiting; return the rest
    and the bytes written.

    The socket must be non-blocking (trio's are).

    Raises:
        OSError: the connection is broken.
    """
    bufs = coalesce(buffers)
    total = 0
    while bufs:  # until the socket takes no more (a fetch reply is more than one iovec batch)
        batch = bufs[:_MAX_IOV]
        try:
            sent = os.writev(fd, batch)
        except BlockingIOError:
            break
        total += sent
        if sent < sum(map(len, batch)):  # the socket is full: no write that would fail
            return _drop(bufs, sent), total
        del bufs[: len(batch)]
    return bufs, total


def _drop(bufs: list[Any], sent: int) -> list[Any]:
    """``bufs`` without their first ``sent`` bytes (``bufs`` is changed), after a
    write of at most the first ``_MAX_IOV`` of them."""
    batch = min(len(bufs), _MAX_IOV)
    if sent == sum(map(len, itertools.islice(bufs, batch))):  # all of it: the usual case
        del bufs[:batch]  # 11 against 25 us for 512 buffers, counting them one by one
        return bufs
    i = 0
    while sent and sent >= len(bufs[i]):
        sent -= len(bufs[i])
        i += 1
    del bufs[:i]
    if sent:
        bufs[0] = memoryview(bufs[0])[sent:]
    return bufs


async def send_buffers(
    sock: trio.socket.SocketType, buffers: list[Any], *, then_waits: bool = False
) -> int:
    """Write every buffer in order with vectored sends; return the bytes written.

    A plain socket is first given what it takes at once (:func:`write_now`),
    without trio's wrapper around each send; like a trio send this checks for
    a cancel before and lets others run after, unless ``then_waits``: the
    caller's next step is a wait (for the reply to what it wrote), which lets
    them run (a pass here would be a task step for nothing).  Cancellation may
    leave a message partly written: the connection must then be closed, which
    is what every caller does.
    """
    if isinstance(sock, trio.socket.SocketType):
        # (trio's sendmsg is five Python calls around the write, each also
        # resumed after the pass it makes: the latency path of every request)
        await trio.lowlevel.checkpoint_if_cancelled()
        bufs, total = write_now(sock.fileno(), buffers)
        if not bufs:
            if not then_waits:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return total
        await trio.lowlevel.wait_writable(sock)  # it took what it could: a send now would fail
    else:
        bufs, total = coalesce(buffers), 0
    while bufs:
        sent = await sock.sendmsg(bufs[:_MAX_IOV])
        total += sent
        bufs = _drop(bufs, sent)
    return total
