"""A reconnecting client's spool file: the puts that did not fit in memory,
each a record with its put's header, checksummed, so a later run of the same
client can replay what a killed one left (:func:`left_spool_files`); and a
note of each put spooled in memory during an outage, so that a later run can
tell readers what a killed one lost."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack

from .messages import Put

log = logging.getLogger("turbine.client")

#: A spooled put on file: magic, header length, frames length, CRC-32 of header and frames.
_RECORD = struct.Struct("<4sIII")
_MAGIC = b"TSp2"
#: A note: the header of a put spooled in memory (its frames are not on file).
_NOTE_MAGIC = b"TSpN"
#: The end of a spool file's name (``NAME-PID.spool``).
SPOOL_SUFFIX = ".spool"
#: The put fields a record's header keeps, in order.
_HEADER_FIELDS = (
    "source",
    "channel",
    "ts",
    "sizes",
    "producer",
    "pseq",
    "skipped",
    "skipped_first_time",
    "skipped_last_time",
)


class SpoolFile:
    """Spooled puts that did not fit in memory, in one file, each with its header.

    Each put is one record (magic, lengths, CRC-32, the put's header fields
    as msgpack, then its frames back to back), appended and ``fsync``ed
    before :meth:`append` returns, so that another run of the same client
    can replay what a crashed one left (:meth:`records`).  A record whose
    checksum does not hold (the file damaged, or cut short) is never read
    back as whole: :meth:`read_frames` returns ``None`` for it.  The file is
    emptied once no entry refers to it, and removed when the spool closes.
    The file is locked (``flock``) while open: a file nobody holds was left
    by a process that ended without closing its client.

    Every call blocks (the spool calls them through
    :func:`~turbine.run_blocking`, off the event loop).

    Raises (constructor): OSError: the directory or file cannot be made.
    """

    def __init__(self, path: str, fd: int, size: int, recovered: bool) -> None:
        self.path = path
        self._fd = fd
        self.size = size
        self.entries = 0  # entries that refer to the file
        #: Left by an earlier run: removed (not emptied) once no entry refers to it.
        self.recovered = recovered

    @classmethod
    def create(cls, directory: str, name: str) -> SpoolFile:
        """A new, empty spool file ``name`` in ``directory`` (made if missing), locked.

        Raises:
            OSError: it cannot be made or locked.
        """
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (held: another client's, kept)
            os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, 0, recovered=False)

    @classmethod
    def claim(cls, path: str) -> SpoolFile | None:
        """The spool file at ``path`` if no running client holds it (it was left), else None."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None  # its client is running
        return cls(path, fd, os.fstat(fd).st_size, recovered=True)

    def append(self, put: Put, data: list[Any]) -> tuple[int, int]:
        """Write ``put`` with its frames ``data`` as one synced record; return its offset and length.

        Raises:
            OSError: the write or the sync failed (nothing is counted then).
        """
        header = msgpack.packb([getattr(put, f) for f in _HEADER_FIELDS])
        body = b"".join(data)
        check = zlib.crc32(body, zlib.crc32(header))
        record = _RECORD.pack(_MAGIC, len(header), len(body), check) + header + body
        offset = self._write(record)
        os.fsync(self._fd)
        return offset, len(record)

    def note(self, put: Put) -> None:
        """Write ``put``'s header alone (its frames stay in memory), not synced: a
        killed process's writes survive it (the machine's crash may not).

        Raises:
            OSError: the write failed (nothing is counted then).
        """
        header = msgpack.packb([getattr(put, f) for f in _HEADER_FIELDS])
        self._write(_RECORD.pack(_NOTE_MAGIC, len(header), 0, zlib.crc32(header)) + header)

    def _write(self, record: bytes) -> int:
        """Append ``record``; return its offset (one more entry refers to the file)."""
        offset = self.size
        written = os.pwrite(self._fd, record, offset)
        if written != len(record):
            raise OSError(f"short write to {self.path} ({written} of {len(record)} bytes)")
        self.size += len(record)
        self.entries += 1
        return offset

    def read_frames(self, put: Put, offset: int, length: int) -> list[Any] | None:
        """The frames of ``put``, whose record is at ``offset`` (``length`` bytes),
        or None (logged): the record is not whole or damaged."""
        parts = self._read(offset, length)
        body = None if parts is None or parts[2] else parts[1]
        if body is None or len(body) != sum(put.sizes):
            log.error(
                "%s: a spooled record of %d frames for %s/%s is damaged; those frames are lost",
                self.path,
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

    def _read(self, offset: int, length: int | None = None) -> tuple[bytes, bytes, bool] | None:
        """Header and frames of the record at ``offset`` (``length`` bytes, if known),
        and whether it is a note (no frames); or None: it is not whole or damaged."""
        try:
            if length is None:
                head = os.pread(self._fd, _RECORD.size, offset)
                if len(head) < _RECORD.size:
                    return None
                _, hlen, blen, _ = _RECORD.unpack(head)
                length = _RECORD.size + hlen + blen
            record = os.pread(self._fd, length, offset)
        except OSError:
            return None
        if len(record) != length or length < _RECORD.size:
            return None
        magic, hlen, blen, check = _RECORD.unpack_from(record)
        header, body = record[_RECORD.size : _RECORD.size + hlen], record[_RECORD.size + hlen :]
        if magic not in (_MAGIC, _NOTE_MAGIC) or len(body) != blen:
            return None
        if zlib.crc32(body, zlib.crc32(header)) != check:
            return None
        return header, body, magic == _NOTE_MAGIC

    def records(self) -> Iterator[tuple[Put, int, int, bool]]:
        """Each whole record from the start, as ``(put, offset, length, note)`` (``note``:
        only the put's header is there, see :meth:`note`), up to the first that is
        not whole (a crash cut the last one short; it is logged, with what follows).
        Reads one record at a time."""
        at = 0
        while at < self.size:
            parts = self._read(at)
            put = None if parts is None else _put(parts[0])
            if parts is None or put is None:
                log.error(
                    "%s: %d bytes from offset %d are not a whole spooled put; they are lost",
                    self.path,
                    self.size - at,
                    at,
                )
                return
            length = _RECORD.size + len(parts[0]) + len(parts[1])
            yield put, at, length, parts[2]
            at += length

    def release(self) -> None:
        """One entry no longer refers to the file; empty it (a left one: remove it) when none does."""
        self.entries -= 1
        if self.entries == 0:
            if self.recovered:
                self.close()
            else:
                os.ftruncate(self._fd, 0)
                self.size = 0

    def close(self, remove: bool = True) -> None:
        """Close the file; remove it unless ``remove`` is false."""
        if self._fd < 0:
            return
        if remove:
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def _put(header: bytes) -> Put | None:
    """The put a record's header describes (None: not one; the checksum held, so a bug)."""
    try:
        fields = msgpack.unpackb(header)
        if not isinstance(fields, list) or len(fields) != len(_HEADER_FIELDS):
            return None
        return Put(**dict(zip(_HEADER_FIELDS, fields, strict=True)))
    except (ValueError, TypeError):
        return None


def left_spool_files(directory: str, name: str) -> list[str]:
    """Paths of spool files of client ``name`` in ``directory`` (``NAME-PID.spool``), oldest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    prefix = f"{name}-"
    found = [
        os.path.join(directory, n)
        for n in names
        if n.startswith(prefix)
        and n.endswith(SPOOL_SUFFIX)
        and n[len(prefix) : -len(SPOOL_SUFFIX)].isdigit()
    ]
    return sorted(found, key=_modified)


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:  # gone meanwhile (claimed and removed by another run)
        return 0.0
