"""Giving memory back to the operating system (glibc's allocator, where present).

The broker's receive buffers and large headers come and go with hostile or
bursty clients, and frames live in the rings until evicted.  Frame-sized
buffers come from the heap, where the next frame reuses a freed one's pages
(a mapping per frame costs page faults on every frame); freed heap pages stay
resident until :func:`trim` hands them back, which the broker does after
connections close; what a deleted source's ring held is freed and handed back
a slice at a time (:func:`bury`, :func:`reap`), so that no step of the broker's
loop pays for all of it.  :func:`pin_mmap_threshold` keeps
glibc from moving its threshold, so what is above it (a hostile client's huge
message) always gets its own mapping, returned whole on free.  Both do nothing
without glibc.  :func:`grow` makes room for reads without writing it first,
:func:`blank_bytes` makes a bytes object for a read to fill, and
:func:`payload_list` keeps the rings' lists out of the cycle collector's walks
(all three CPython's C API, through ctypes).
"""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ._constants import MMAP_THRESHOLD_BYTES, REAP_SLICE_BYTES, REAP_SLICE_OBJECTS

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None: looked up when first needed (find_library may run
    ldconfig), by the broker only: a client imports this module for :func:`grow`."""
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (present only in glibc)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _untrack() -> Callable[[object], None] | None:
    if sys.implementation.name != "cpython":
        return None
    untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    untrack.argtypes = [ctypes.py_object]
    untrack.restype = None
    return untrack  # type: ignore[no-any-return]


_UNTRACK = _untrack()


def _resize() -> Callable[[bytearray, int], int] | None:
    if sys.implementation.name != "cpython":
        return None
    resize = ctypes.pythonapi.PyByteArray_Resize
    resize.argtypes = [ctypes.py_object, ctypes.c_ssize_t]
    resize.restype = ctypes.c_int
    return resize  # type: ignore[no-any-return]


_RESIZE = _resize()


def grow(buf: bytearray, size: int) -> None:
    """Make ``buf`` at least ``size`` bytes long without writing the bytes added.

    What they hold is unspecified (old heap contents, not zeros): only for room
    that a read fills before anything looks at it (the receive buffers).  Growing
    with ``extend(bytes(n))`` zero-filled a temporary of the size added and
    copied it: at 100 KB frames that line took a third of the broker's samples
    (py-spy), every received byte written three times before the kernel's copy.

    Raises:
        BufferError: ``buf`` has views (a bytearray with exports cannot resize).
    """
    if size <= len(buf):
        return
    if _RESIZE is None:
        buf.extend(bytes(size - len(buf)))
    else:
        _RESIZE(buf, size)  # realloc: in place where the heap has room after it


def grow_with_room(buf: bytearray, size: int, room: int) -> None:
    """Like :func:`grow`, in an allocation of ``room`` bytes when that is more (at
    most twice ``size``: a bytearray keeps an allocation up to that), so that growing
    it to ``room`` later moves nothing: a broker's fresh receive buffer, made for a
    large put like the last one (its first read does not know the put's size yet).

    Raises:
        BufferError: ``buf`` has views.
    """
    if _RESIZE is None or room <= size or size <= len(buf):
        grow(buf, size)
        return
    _RESIZE(buf, min(room, 2 * size))  # (allocates one byte more, for the trailing NUL)
    _RESIZE(buf, size)  # (the allocation stays: a bytearray shrinks it below half only)


def _blank() -> tuple[Callable[[None, int], bytes], Callable[[bytes], int]] | None:
    if sys.implementation.name != "cpython":
        return None
    make = ctypes.pythonapi.PyBytes_FromStringAndSize
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    make.restype = ctypes.py_object
    address = ctypes.pythonapi.PyBytes_AsString
    address.argtypes = [ctypes.py_object]
    address.restype = ctypes.c_void_p
    return make, address


_BLANK = _blank()


def blank_bytes(size: int) -> tuple[bytes | bytearray, memoryview]:
    """A new object of ``size`` bytes and a writable view of them, for a read to fill.

    On CPython the object is ``bytes``: made by ``PyBytes_FromStringAndSize(NULL,
    size)``, whose contents the C API lets its maker write until it is handed on;
    what it holds before the read is unspecified (not zeros).  A large frame is
    then received straight into the ``bytes`` its reader gets (``Frame.data``),
    instead of into a buffer it is copied out of: at 1 MB frames that copy, and
    the copy's fresh pages, were a subscriber's largest cost after the kernel's.
    Elsewhere a ``bytearray`` (the caller copies it where it needs bytes).

    Release the view once the read is done, before the object is handed on: no
    one may write into the bytes after that.

    Raises:
        MemoryError: no memory for ``size`` bytes.
    """
    if _BLANK is None:
        buf = bytearray(size)
        return buf, memoryview(buf)
    make, address = _BLANK
    obj = make(None, size)
    room = (ctypes.c_char * size).from_address(address(obj))
    return obj, memoryview(room).cast("B")


def payload_list() -> list[Any]:
    """An empty list the cycle collector never walks, for a ring's payloads.

    Every collection that reaches a list visits each of its items: a ring of
    5,000,000 small frames made a young collection take 65 ms and a full one
    416 ms, the broker's loop held all that time.  Payloads (``bytes``, views
    of received buffers, ``None``) can never refer back to the list, so it can
    never be part of a reference cycle: freed by its reference count alone.
    """
    items: list[Any] = []
    if _UNTRACK is not None:
        _UNTRACK(items)
    return items


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> None:
    """Allocations of ``threshold`` bytes or more get their own mapping, for good.

    Also moves every object alive now (modules, code: the program) out of the
    cycle collector's sight, so the full collections of :func:`trim` only look
    at what connections made.  Call once, when the broker process starts.
    """
    gc.freeze()
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def trim(*, full: bool = True) -> None:
    """Free what closed connections left (their errors' tracebacks are reference
    cycles, freed only by the cycle collector), then return free heap pages to
    the operating system.  ``full=False`` collects only the young generations:
    what lived through earlier collections waits for a full one, which walks
    every tracked object (the cost grows with the heap, not with the garbage)."""
    gc.collect() if full else gc.collect(1)
    _return_free_pages()


def _return_free_pages() -> None:
    # Costs what the heap has free and resident (60-110 us a MiB here, 23-33 ms
    # for the 300-370 MiB a deleted ring of 5,000,000 small frames leaves), not
    # what was freed since the last call: pages already returned cost ~nothing.
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


#: Columns of deleted rings waiting to be freed by :func:`reap`.
_buried: collections.deque[list[Any] | array.array[Any]] = collections.deque()
#: What wakes each running reaper (a broker's trimmer) when something is buried.
_reapers: list[Callable[[], None]] = []


def bury(*columns: list[Any] | array.array[Any]) -> None:
    """Free ``columns`` (a deleted ring's lists and arrays) later, a slice at a
    time, while a reaper runs (:func:`reaping`); else as their last reference goes.

    Freeing them at once held the broker's loop for all of it: a ring of
    5,000,000 small frames 12 ms to unmap its arrays and then 23-33 ms for the
    trim that returns its payloads' pages, one of 1,000 frames of 1 MB 103 ms.
    """
    if not _reapers:
        return
    _buried.extend(columns)
    for wake in _reapers:
        wake()


@contextlib.contextmanager
def reaping(wake: Callable[[], None]) -> Iterator[None]:
    """While inside, :func:`bury` keeps what it is given for :func:`reap` and
    calls ``wake``; when the last reaper leaves, what is left is freed at once."""
    _reapers.append(wake)
    try:
        yield
    finally:
        _reapers.remove(wake)
        if not _reapers:
            _buried.clear()


def reap(max_bytes: int = REAP_SLICE_BYTES, max_objects: int = REAP_SLICE_OBJECTS) -> bool:
    """Free about ``max_bytes`` (at most ``max_objects`` payloads) of what was
    buried, from the columns' ends, and return the free pages once that much was
    freed since they were last returned (or nothing is left); return whether more
    is buried.  An array shrinks in place (its mapping's tail unmapped)."""
    global _unreturned
    budget, objects = max_bytes, max_objects
    while _buried and budget > 0 and objects > 0:
        column = _buried[-1]
        n, size = _tail(column, budget, objects)
        try:
            del column[len(column) - n :]
        except BufferError:  # an array something still views: it goes with the view
            _buried.pop()
            continue
        budget -= size
        objects -= 1 if isinstance(column, array.array) else n
        if not column:
            _buried.pop()
    _unreturned += max_bytes - budget
    if _unreturned >= max_bytes or not _buried:
        _unreturned = 0
        _return_free_pages()
    return bool(_buried)


#: Bytes reap freed since it last returned the free pages.
_unreturned = 0


def _tail(column: list[Any] | array.array[Any], budget: int, objects: int) -> tuple[int, int]:
    """How many items at ``column``'s end hold about ``budget`` bytes (at most
    ``objects`` payloads; at least one item), and their bytes."""
    if isinstance(column, array.array):
        n = min(len(column), max(1, budget // column.itemsize))
        return n, n * column.itemsize
    n = min(len(column), objects)
    while True:  # summed in C: a Python loop over 1,000,000 payloads took 150 ms, freeing them 4
        size = sum(map(len, filter(None, column[len(column) - n :])))
        if size <= budget or n == 1:
            return n, size
        n = max(1, n * budget // size)
