"""Appending to an archive file: through the page cache, or past it (``O_DIRECT``) from kept buffers.

Measured on the 2-core virtual machine this project is benchmarked on (a guest
with free page reporting: the pages it frees go back to the host, and touching
one again costs a host fault): writing 512 MiB into a new file through the page
cache took 0.1-0.3 s in some runs and 1.7-2.6 s (1.1-1.5 s of system CPU, 81 %
of it copying into fresh page-cache pages) in others, and the archive's writer
thread spent 3-3.6 s of CPU per GB there.  The same bytes written with
``O_DIRECT`` from a buffer that stays allocated: 0.26 s, 0.05 s of system CPU.
So the archive copies each commit's records into a staging buffer that is
allocated once and kept (its pages stay backed), and writes whole blocks from it.

The file holds exactly the records, as with buffered writes, except that the
last block is padded with zeros past the end of the last record until the next
write covers them; the padding is cut when the segment is sealed or closed, and
after a crash recovery cuts it as the torn tail it looks like (no record there).
A file system that refuses ``O_DIRECT`` (or its alignment) is written through
the page cache as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from typing import Any

from .._io import coalesce

#: Offsets, lengths and buffer addresses of direct writes are multiples of this
#: (the page size: at least the logical block size of any disk in use).
BLOCK = mmap.PAGESIZE
#: A staging buffer; a commit larger than this is written in several writes.
STAGING_BYTES = 8 * 2**20
#: Staging buffers kept between writes.  One per source being written at the same
#: moment is taken (up to trio's 40 worker threads); beyond this many, a buffer
#: given back is unmapped, so the broker keeps at most 32 MiB of them.
STAGING_KEPT = 4
#: A payload at least this large is copied into the staging buffer without holding
#: the GIL (``ctypes.memmove``), so that the event loop runs while it is copied.
COPY_FREE_BYTES = 64 * 2**10

_free: list[mmap.mmap] = []  # staging buffers not in use (kept: their pages stay backed)
_free_lock = threading.Lock()


def _take() -> mmap.mmap:
    with _free_lock:
        if _free:
            return _free.pop()
    return mmap.mmap(-1, STAGING_BYTES)  # anonymous, page-aligned


def _give(buf: mmap.mmap) -> None:
    with _free_lock:
        if len(_free) < STAGING_KEPT:
            _free.append(buf)
            return
    buf.close()


class DirectAppender:
    """Appends to one segment file with ``O_DIRECT``; the file's bytes past the
    records are zeros up to the next block boundary.  Use :meth:`open`."""

    def __init__(self, fd: int, read_fd: int, tail: bytes) -> None:
        self.fd = fd
        self.read_fd = read_fd  # the segment's own descriptor (not ours to close)
        #: The bytes of the last, partial block (rewritten, with more, by the next write).
        self.tail = tail

    @classmethod
    def open(cls, path: str, size: int, read_fd: int) -> DirectAppender | None:
        """An appender for ``path`` whose records end at ``size`` (its last partial
        block read through ``read_fd``), or ``None`` if the file system refuses
        ``O_DIRECT``.

        Raises:
            OSError: the file cannot be opened or read.
        """
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | flag)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise
        keep = size % BLOCK
        tail = os.pread(read_fd, keep, size - keep) if keep else b""
        if len(tail) != keep:
            os.close(fd)
            raise OSError(errno.EIO, f"{path} is shorter than its records ({size} bytes)")
        return cls(fd, read_fd, tail)

    def write(self, bufs: list[Any], offset: int) -> bool:
        """Write ``bufs`` at ``offset``, the end of the records written so far; on
        success the tail is theirs.  Return ``False``, having written nothing that
        stays and ended (:meth:`end`), if the file system refuses such a write:
        the caller writes them through the page cache.

        Raises:
            OSError: a write failed (some blocks may be written; the caller cuts
                the file back to ``offset``, and the tail stays as it was).
        """
        try:
            self._write([memoryview(b).cast("B") for b in coalesce(bufs)], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.end(offset)
            return False
        return True

    def _write(self, views: list[Any], offset: int) -> None:
        keep = len(self.tail)
        at = offset - keep  # block-aligned
        buf = _take()
        staging = ctypes.c_char.from_buffer(
            buf
        )  # (an export of buf, let go before it is given back)
        try:
            into = ctypes.addressof(staging)
            buf[:keep] = self.tail
            fill = keep
            for v in views:
                pos, size = 0, len(v)
                pinned = _pinned(v) if size >= COPY_FREE_BYTES else None
                while pos < size:
                    n = min(size - pos, STAGING_BYTES - fill)
                    if pinned is None:
                        buf[fill : fill + n] = v[pos : pos + n]
                    else:
                        ctypes.memmove(into + fill, pinned[0] + pos, n)
                    fill += n
                    pos += n
                    if fill == STAGING_BYTES:
                        _write_blocks(self.fd, buf, STAGING_BYTES, at)
                        at += STAGING_BYTES
                        fill = 0
                pinned = None  # (lets go of the buffer's export)
            whole = fill - fill % BLOCK
            end = whole + BLOCK if fill > whole else whole
            if end:
                buf[fill:end] = bytes(end - fill)  # the padding
                _write_blocks(self.fd, buf, end, at)
            self.tail = buf[whole:fill]
        finally:
            del staging
            _give(buf)

    def end(self, size: int | None) -> None:
        """No more direct writes; the file cut back to its records' ``size`` (never
        lengthened: a file cut shorter meanwhile stays so; ``None``: left as it is)."""
        self.close()
        if size is not None and os.fstat(self.read_fd).st_size > size:
            os.ftruncate(self.read_fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pinned(view: memoryview) -> tuple[int, Any] | None:
    """Where the bytes of ``view`` are, and what holds them there while they are
    copied without the GIL, or ``None`` (they are copied holding it).

    A whole ``bytes`` object never changes.  A writable buffer is what the
    broker's receive path hands over with a large message (a view of the
    ``bytearray`` it was read into; nothing writes there again, as the rings
    keep those bytes as they are): its export keeps it from being resized.
    Measured in the broker: a put of three 100 KB frames arrives as a view of
    a ``bytearray``, and before this it was copied holding the GIL (299.9 of
    300 MB in a 300 MB run).
    """
    whole = view.obj
    if type(whole) is bytes and len(whole) == view.nbytes:
        return ctypes.cast(ctypes.c_char_p(whole), ctypes.c_void_p).value or 0, whole
    if not view.readonly and view.c_contiguous:
        export = (ctypes.c_char * view.nbytes).from_buffer(view)
        return ctypes.addressof(export), export
    return None


def _write_blocks(fd: int, buf: mmap.mmap, length: int, offset: int) -> None:
    view = memoryview(buf)[:length]
    try:
        done = 0
        while done < length:
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0 or n % BLOCK:
                raise OSError(errno.ENOSPC, "the archive's direct write stopped short")
            done += n
    finally:
        view.release()


def write_all(fd: int, bufs: list[Any], offset: int) -> None:
    """Write ``bufs`` at ``offset`` with vectored writes (small buffers joined, large ones not copied).

    Raises:
        OSError: a write failed; some of the bytes may be written.
    """
    views = [memoryview(b).cast("B") for b in coalesce(bufs)]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i : i + 512], offset)
        if n == 0:
            raise OSError(errno.ENOSPC, "no progress writing the archive")
        offset += n
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
