"""Reads of the client's socket without waiting: what the read loop and a
subscription's reader both do (:class:`~turbine._client_reader.Reader`)."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from ._constants import VECTORED_MIN_BYTES
from .protocol import Connection

#: Linux wakes a TCP socket's reader (poll, epoll) once this many bytes are in.
_LOW_WATER = socket.SO_RCVLOWAT if sys.platform == "linux" else None


class SocketReads:
    """Reads of a plain (not TLS) socket into a connection's receive buffer.

    While a large payload's rest arrives (received into its frame's own bytes,
    :meth:`~turbine.receiving.ReceiveBuffer.get_buffer`), the socket's
    low-water mark (``SO_RCVLOWAT``, Linux TCP) is that rest: the reader's
    next wait for bytes ends once all of it is in (or the kernel's buffer is
    full, or the broker closed), not at every piece the broker writes.  A
    1 MB frame took 4-8 reads and 2-5 waits, each a pass through the
    scheduler; a subscriber on the shared cores then fell behind its
    publisher and its ring evicted frames it had not read.
    """

    def __init__(self, sock: Any, proto: Connection) -> None:
        self._sock = sock
        self._proto = proto
        #: The last read took less than it was offered (it most likely emptied the socket).
        self.emptied = False
        self._mark = 1  # the socket's low-water mark
        tcp = getattr(sock, "family", None) in (
            socket.AF_INET,
            socket.AF_INET6,
        )  # (poll ignores it elsewhere)
        self._marks = _LOW_WATER is not None and tcp

    def read(self) -> int | None:
        """Read what the socket holds, without waiting (None: nothing yet).

        Raises:
            OSError: the connection is broken, or the socket was closed.
        """
        proto = self._proto
        with proto.get_buffer() as view:
            try:
                n = os.readv(self._sock.fileno(), [view])
            except BlockingIOError:
                self.emptied = True
                return None
            self.emptied = n < len(view)
        proto.buffer_updated(n)
        return n

    def may_wait(self) -> bool:
        """Whether the next read may wait for bytes first (call it before each wait,
        once what was read is made messages of; it moves the socket's mark): a large
        payload's rest has not arrived (the mark is that rest), or the last read took
        less than offered, so likely emptied the socket (a read that fails: a
        syscall and an exception per message at low rates), and no message is part
        way in (its rest may be there already).  A socket closed meanwhile is read
        at once, to fail as a lost connection.

        Raises:
            OSError: the socket was closed.
        """
        if self._sock.fileno() < 0:
            return False
        if self._marks:
            rest = self._proto.payload_rest
            mark = rest if rest >= VECTORED_MIN_BYTES else 1
            if mark != self._mark:
                self._sock.setsockopt(socket.SOL_SOCKET, _LOW_WATER, mark)
                self._mark = mark
        return self._mark > 1 or (self.emptied and not self._proto.receiving)
