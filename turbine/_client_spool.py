"""Puts a reconnecting client keeps until the broker has acknowledged them."""

from __future__ import annotations

import collections
import logging
from typing import Any

import attrs
import trio

from .messages import Put
from .protocol import encode_message

log = logging.getLogger("turbine.client")


class Spool:
    """``put`` messages, oldest first, kept until a ``flush`` covering them is answered.

    Every put message a reconnecting client writes goes through here: while
    connected it is written and kept; while the broker is away it is only
    kept.  After a reconnect every entry is written again, in order, with its
    original producer number and timestamps (the broker drops the ones it had
    stored).  Entries are numbered from 0 for the client's life: ``base`` is
    the number of the oldest kept, ``written`` of the first not yet written
    on the current connection.

    Bounded by ``limit`` bytes of frame data (in memory): past it the oldest
    entries are dropped (:attr:`dropped_frames`).  Frames dropped before they
    were ever written reach readers as a gap: the next put of their channel
    carries their count (``skipped``), and the broker leaves that many
    numbers unused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: collections.deque[tuple[Put, list[Any], int]] = collections.deque()
        self.base = 0
        self.written = 0
        self._sent = 0  # entries below this were written on some connection
        self._skips: dict[tuple[str, str], int] = {}  # frames dropped unsent, per channel
        self.bytes = 0
        self.frames = 0
        self.dropped_frames = 0
        self._changed = trio.Event()

    @property
    def end(self) -> int:
        """The number the next entry gets."""
        return self.base + len(self._entries)

    def add(self, put: Put, data: list[Any], nbytes: int) -> None:
        """Keep one put message (its frames ``data``, ``nbytes`` of them)."""
        self._entries.append((put, data, nbytes))
        self.bytes += nbytes
        self.frames += len(data)
        while self.bytes > self.limit and len(self._entries) > 1:
            self._drop_oldest()
        self._changed.set()

    def _drop_oldest(self) -> None:
        put, data, nbytes = self._entries.popleft()
        if self.base >= self._sent:  # never written: the broker cannot have it
            key = (put.source, put.channel)
            self._skips[key] = self._skips.get(key, 0) + len(data) + (put.skipped or 0)
        if not self.dropped_frames:
            log.warning("the spool is full (%d bytes): dropping the oldest frames", self.limit)
        self.base += 1
        self.written = max(self.written, self.base)
        self.bytes -= nbytes
        self.frames -= len(data)
        self.dropped_frames += len(data)

    def rewind(self) -> None:
        """A new connection: nothing kept has been written on it yet."""
        self.written = self.base

    def unwritten(self) -> list[Any]:
        """The buffers of every entry not yet written on this connection (now counted as written)."""
        out: list[Any] = []
        entries = self._entries
        skips = self._skips
        for i in range(self.written - self.base, len(entries)):
            put, data, nbytes = entries[i]
            if skips and (skipped := skips.pop((put.source, put.channel), 0)):
                put = attrs.evolve(put, skipped=(put.skipped or 0) + skipped)
                entries[i] = (put, data, nbytes)
            out += encode_message(put, data)
        self.written = self._sent = self.end
        return out

    def acknowledged(self, mark: int) -> None:
        """The broker holds every entry numbered below ``mark``: forget them."""
        entries = self._entries
        while self.base < mark and entries:
            _, data, nbytes = entries.popleft()
            self.base += 1
            self.bytes -= nbytes
            self.frames -= len(data)

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
