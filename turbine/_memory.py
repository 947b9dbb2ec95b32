"""Giving memory back to the operating system (glibc's allocator, where present).

The broker's receive buffers and large headers come and go with hostile or
bursty clients, and frames live in the rings until evicted.  Frame-sized
buffers come from the heap, where the next frame reuses a freed one's pages
(a mapping per frame costs page faults on every frame); freed heap pages stay
resident until :func:`trim` hands them back, which the broker does after
connections close and sources are deleted.  :func:`pin_mmap_threshold` keeps
glibc from moving its threshold, so what is above it (a hostile client's huge
message) always gets its own mapping, returned whole on free.  Both do nothing
without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

from ._constants import MMAP_THRESHOLD_BYTES

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def _libc() -> ctypes.CDLL | None:
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


_LIBC = _libc()


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> None:
    """Allocations of ``threshold`` bytes or more get their own mapping, for good.

    Also moves every object alive now (modules, code: the program) out of the
    cycle collector's sight, so the full collections of :func:`trim` only look
    at what connections made.  Call once, when the broker process starts.
    """
    gc.freeze()
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold)


def trim(*, full: bool = True) -> None:
    """Free what closed connections left (their errors' tracebacks are reference
    cycles, freed only by the cycle collector), then return free heap pages to
    the operating system.  ``full=False`` collects only the young generations:
    what lived through earlier collections waits for a full one, which walks
    every tracked object (the cost grows with the heap, not with the garbage)."""
    gc.collect() if full else gc.collect(1)
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
