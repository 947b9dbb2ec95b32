"""Puts a reconnecting client keeps until the broker has acknowledged them."""

from __future__ import annotations

import collections
from typing import Any

import trio


class Spool:
    """Encoded ``put`` messages, oldest first, kept until a ``flush`` covering them is answered.

    Every put message a reconnecting client writes goes through here: while
    connected it is written and kept; while the broker is away it is only
    kept.  After a reconnect every entry is written again, in order, with its
    original producer number and timestamps (the broker drops the ones it had
    stored).  Entries are numbered from 0 for the client's life: ``base`` is
    the number of the oldest kept, ``written`` of the first not yet written
    on the current connection.

    Bounded by ``limit`` bytes of frame data (in memory): past it the oldest
    entries are dropped and counted in :attr:`dropped_frames`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: collections.deque[tuple[list[Any], int, int]] = collections.deque()
        self.base = 0
        self.written = 0
        self.bytes = 0
        self.frames = 0
        self.dropped_frames = 0
        self.dropped_puts = 0
        self._changed = trio.Event()

    @property
    def end(self) -> int:
        """The number the next entry gets."""
        return self.base + len(self._entries)

    def add(self, buffers: list[Any], nbytes: int, nframes: int) -> None:
        """Keep one encoded put message (``nframes`` frames of ``nbytes`` bytes)."""
        self._entries.append((buffers, nbytes, nframes))
        self.bytes += nbytes
        self.frames += nframes
        while self.bytes > self.limit and len(self._entries) > 1:
            _, dropped_bytes, dropped_frames = self._entries.popleft()
            self.base += 1
            self.written = max(self.written, self.base)
            self.bytes -= dropped_bytes
            self.frames -= dropped_frames
            self.dropped_frames += dropped_frames
            self.dropped_puts += 1
        self._changed.set()

    def rewind(self) -> None:
        """A new connection: nothing kept has been written on it yet."""
        self.written = self.base

    def unwritten(self) -> list[Any]:
        """The buffers of every entry not yet written on this connection (now counted as written)."""
        out: list[Any] = []
        entries = self._entries
        for i in range(self.written - self.base, len(entries)):
            out += entries[i][0]
        self.written = self.end
        return out

    def acknowledged(self, mark: int) -> None:
        """The broker holds every entry numbered below ``mark``: forget them."""
        entries = self._entries
        while self.base < mark and entries:
            _, nbytes, nframes = entries.popleft()
            self.base += 1
            self.bytes -= nbytes
            self.frames -= nframes

    async def wait_for_unacknowledged(self) -> None:
        """Return once the spool holds an entry (at once if it does)."""
        while not self._entries:
            await self._changed.wait()
            self._changed = trio.Event()

    def statistics(self) -> dict[str, int]:
        """What the spool holds and has dropped, for status reports."""
        return {
            "spooled_frames": self.frames,
            "spooled_bytes": self.bytes,
            "spool_limit_bytes": self.limit,
            "dropped_frames": self.dropped_frames,
        }
