"""Socket helpers shared by the broker and the client."""

from __future__ import annotations

import os
from typing import Any

import trio

from ._constants import VECTORED_MIN_BYTES

#: sendmsg takes at most this many buffers at once (IOV_MAX is 1024 on Linux).
_MAX_IOV = 512


def coalesce(buffers: list[Any]) -> list[Any]:
    """Join runs of small buffers; leave large ones where they lie (no copy)."""
    if not buffers or max(map(len, buffers)) < VECTORED_MIN_BYTES:
        return [b"".join(buffers)] if buffers else []
    out: list[Any] = []
    small: list[Any] = []
    for b in buffers:
        if len(b) >= VECTORED_MIN_BYTES:
            if small:
                out.append(b"".join(small))
                small = []
            out.append(b)
        elif b:
            small.append(b)
    if small:
        out.append(b"".join(small))
    return out


def write_now(fd: int, buffers: list[Any]) -> list[memoryview]:
    """Write what the socket takes right now, without waiting; return the rest.

    The socket must be non-blocking (trio's are).

    Raises:
        OSError: the connection is broken.
    """
    bufs = [memoryview(b).cast("B") for b in coalesce(buffers)]
    try:
        sent = os.writev(fd, bufs[:_MAX_IOV])
    except BlockingIOError:
        return bufs
    return _drop(bufs, sent)


def _drop(bufs: list[memoryview], sent: int) -> list[memoryview]:
    """``bufs`` without their first ``sent`` bytes."""
    while sent:
        head = bufs[0]
        if sent >= len(head):
            sent -= len(head)
            bufs.pop(0)
        else:
            bufs[0] = head[sent:]
            sent = 0
    return bufs


async def send_buffers(sock: trio.socket.SocketType, buffers: list[Any]) -> int:
    """Write every buffer in order with vectored sends; return the bytes written.

    Cancellation may leave a message partly written: the connection must then
    be closed, which is what every caller does.
    """
    bufs = [memoryview(b).cast("B") for b in coalesce(buffers)]
    total = 0
    while bufs:
        sent = await sock.sendmsg(bufs[:_MAX_IOV])
        total += sent
        bufs = _drop(bufs, sent)
    return total
