"""Puts a reconnecting client keeps until the broker has acknowledged them."""

from __future__ import annotations

import collections
import logging
import os
import struct
import zlib
from typing import Any

import attrs
import trio

from .messages import Put
from .protocol import encode_message

log = logging.getLogger("turbine.client")

#: A spooled entry's frames on file: magic, payload length, CRC-32 of the payload.
_RECORD = struct.Struct("<4sII")
_MAGIC = b"TSpl"
_NOWHERE = (0, 0)  # an entry whose frames are in memory
_DAMAGED = (0, -1)  # an entry whose record on file was found damaged (its frames are lost)


class SpoolFile:
    """The frame payloads of spooled puts that did not fit in memory, in one file.

    Each entry is one record (magic, length, CRC-32, the payloads back to
    back), appended and ``fsync``ed before :meth:`append` returns.  A record
    whose checksum does not hold (the file damaged, or cut short) is never
    read back as whole: :meth:`read` returns ``None`` for it.  The file is
    emptied once no entry refers to it, and removed when the spool closes.

    Reads and writes block (the disk is local; each is one put message);
    ``fsync`` makes an outage's frames survive a power cut of this machine.

    Raises (constructor): OSError: the directory or file cannot be made.
    """

    def __init__(self, directory: str, name: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, name)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0
        self.entries = 0  # entries that refer to the file

    def append(self, data: list[Any]) -> tuple[int, int]:
        """Write the payloads ``data`` as one record; return its offset and length.

        Raises:
            OSError: the write or the sync failed (nothing is counted then).
        """
        body = b"".join(data)
        record = _RECORD.pack(_MAGIC, len(body), zlib.crc32(body)) + body
        offset = self.size
        written = os.pwrite(self._fd, record, offset)
        if written != len(record):
            raise OSError(f"short write to {self.path} ({written} of {len(record)} bytes)")
        os.fsync(self._fd)
        self.size += len(record)
        self.entries += 1
        return offset, len(record)

    def read(self, offset: int, length: int) -> bytes | None:
        """The payloads of the record at ``offset``, or None: it is not whole or damaged."""
        try:
            record = os.pread(self._fd, length, offset)
        except OSError:
            return None
        if len(record) != length or length < _RECORD.size:
            return None
        magic, size, check = _RECORD.unpack_from(record)
        body = record[_RECORD.size :]
        if magic != _MAGIC or size != len(body) or zlib.crc32(body) != check:
            return None
        return body

    def release(self) -> None:
        """One entry no longer refers to the file; empty it when none does."""
        self.entries -= 1
        if self.entries == 0:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def close(self) -> None:
        os.close(self._fd)
        os.unlink(self.path)


class Spool:
    """``put`` messages, oldest first, kept until a ``flush`` covering them is answered.

    Every put message a reconnecting client writes goes through here: while
    connected it is written and kept; while the broker is away it is only
    kept.  After a reconnect every entry is written again, in order, with its
    original producer number and timestamps (the broker drops the ones it had
    stored).  Entries are numbered from 0 for the client's life: ``base`` is
    the number of the oldest kept, ``written`` of the first not yet written
    on the current connection.

    Bounded by ``limit`` bytes of frame data: past it the oldest entries are
    dropped (:attr:`dropped_frames`).  Frames dropped before they were ever
    written reach readers as a gap: the next put of their channel carries
    their count (``skipped``), and the broker leaves that many numbers
    unused.  With ``directory``, at most ``memory`` bytes of frame data stay
    in memory: the frames of the entries past it go to a :class:`SpoolFile`
    there (named ``name``) and are read back when written again.  A spool
    file that cannot be written costs its frames: they count as dropped.
    """

    def __init__(
        self, limit: int, directory: str | None = None, memory: int = 0, name: str = "spool"
    ) -> None:
        self.limit = limit
        self.directory = directory
        self.memory_limit = memory if directory is not None else limit
        self._name = name
        self._file: SpoolFile | None = None
        self.memory_bytes = 0  # frame bytes held in memory
        self.file_bytes = 0  # frame bytes held in the spool file
        #: put, frames (None: on file), frame bytes, (offset, length) on file.
        self._entries: collections.deque[tuple[Put, list[Any] | None, int, tuple[int, int]]] = (
            collections.deque()
        )
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
        where = _NOWHERE
        kept: list[Any] | None = data
        if self.memory_bytes + nbytes > self.memory_limit and self.directory is not None:
            try:
                if self._file is None:
                    self._file = SpoolFile(self.directory, self._name)
                where, kept = self._file.append(data), None
            except OSError as exc:
                log.error(
                    "cannot spool to %s: %s; keeping these frames in memory", self.directory, exc
                )
        self._entries.append((put, kept, nbytes, where))
        self._count(nbytes, len(put.sizes), kept is None)
        while self.bytes > self.limit and len(self._entries) > 1:
            self._drop_oldest()
        self._changed.set()

    def _count(self, nbytes: int, frames: int, on_file: bool) -> None:
        self.bytes += nbytes
        self.frames += frames
        if on_file:
            self.file_bytes += nbytes
        else:
            self.memory_bytes += nbytes

    def _forget(self) -> tuple[Put, int]:
        """Take the oldest entry out; return its put and frame count."""
        put, data, nbytes, _ = self._entries.popleft()
        self.base += 1
        self._count(-nbytes, -len(put.sizes), data is None)
        if data is None:
            assert self._file is not None
            self._file.release()
        return put, len(put.sizes)

    def _drop_oldest(self) -> None:
        unsent = self.base >= self._sent  # never written: the broker cannot have it
        put, frames = self._forget()
        if unsent:
            self._skip(put, frames)
        if not self.dropped_frames:
            log.warning("the spool is full (%d bytes): dropping the oldest frames", self.limit)
        self.written = max(self.written, self.base)
        self.dropped_frames += frames

    def _skip(self, put: Put, frames: int) -> None:
        key = (put.source, put.channel)
        self._skips[key] = self._skips.get(key, 0) + frames + (put.skipped or 0)

    def rewind(self) -> None:
        """A new connection: nothing kept has been written on it yet."""
        self.written = self.base

    def unwritten(self) -> list[Any]:
        """The buffers of every entry not yet written on this connection (now counted as written)."""
        out: list[Any] = []
        entries = self._entries
        skips = self._skips
        for i in range(self.written - self.base, len(entries)):
            put, data, nbytes, where = entries[i]
            if where is _DAMAGED:
                continue
            if data is None:
                data = self._read_back(put, where)
                if data is None:  # damaged on disk: its frames are lost, and readers told
                    self._skip(put, len(put.sizes))
                    self.dropped_frames += len(put.sizes)
                    entries[i] = (put, None, nbytes, _DAMAGED)
                    continue
            if skips and (skipped := skips.pop((put.source, put.channel), 0)):
                put = attrs.evolve(put, skipped=(put.skipped or 0) + skipped)
                entries[i] = (put, entries[i][1], nbytes, where)
            out += encode_message(put, data)
        self.written = self._sent = self.end
        return out

    def _read_back(self, put: Put, where: tuple[int, int]) -> list[Any] | None:
        """An entry's frames from the spool file, or None (logged): the record is damaged."""
        assert self._file is not None
        body = self._file.read(*where)
        if body is None or len(body) != sum(put.sizes):
            log.error(
                "%s: a spooled record of %d frames for %s/%s is damaged; those frames are lost",
                self._file.path,
                len(put.sizes),
                put.source,
                put.channel,
            )
            return None
        view = memoryview(body)
        frames, at = [], 0
        for size in put.sizes:
            frames.append(view[at : at + size])
            at += size
        return frames

    def acknowledged(self, mark: int) -> None:
        """The broker holds every entry numbered below ``mark``: forget them."""
        while self.base < mark and self._entries:
            self._forget()

    def close(self) -> None:
        """Remove the spool file (what it held is given up)."""
        if self._file is not None:
            self._file.close()
            self._file = None

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
            "spooled_file_bytes": self.file_bytes,
            "spool_limit_bytes": self.limit,
            "dropped_frames": self.dropped_frames,
        }
