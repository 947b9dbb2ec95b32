"""Blocking work (file I/O, hashing) kept off the event loop.

:func:`run_blocking` (and :func:`open_file`, whose file calls go through it) runs it in a worker thread, unless the current trio run
chose to run it inline: ``turbine.testing.run_blocking_inline`` does, so that
code under ``autojump_clock`` is not seen as idle (and its virtual clock
jumped ahead) while a thread works.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO, TypeVar

import trio

T = TypeVar("T")

_INLINE: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("turbine_blocking_inline")


async def run_blocking(
    fn: Callable[..., T], *args: object, limiter: trio.CapacityLimiter | None = None
) -> T:
    """``fn(*args)`` in a worker thread (inline, after a checkpoint, if the run chose so);
    ``limiter`` caps how many such threads run at once (trio's default one if None).

    Cancellation: like :func:`trio.to_thread.run_sync`, the call is not
    abandoned; a cancel takes effect once it returns.
    """
    if _INLINE.get(False):
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def set_blocking_inline() -> None:
    """Run blocking work inline for the rest of the current trio run."""
    _INLINE.set(True)


class BlockingFile:
    """A binary file whose calls go through :func:`run_blocking` (``trio.wrap_file``'s
    habit: the same methods, awaited); made by :func:`open_file`."""

    def __init__(self, file: BinaryIO) -> None:
        self.wrapped = file

    async def read(self, size: int = -1) -> bytes:
        return await run_blocking(self.wrapped.read, size)

    async def write(self, data: bytes) -> int:
        return await run_blocking(self.wrapped.write, data)

    async def flush(self) -> None:
        await run_blocking(self.wrapped.flush)

    async def aclose(self) -> None:
        """Close the file (this one call cannot be cancelled: the file is closed either way)."""
        with trio.CancelScope(shield=True):
            await run_blocking(self.wrapped.close)

    async def __aenter__(self) -> BlockingFile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_file(path: str | os.PathLike[str], mode: str = "rb") -> BlockingFile:
    """Open a file in a binary ``mode`` through :func:`run_blocking` (like ``trio.open_file``).

    Raises:
        OSError: it cannot be opened.
        ValueError: ``mode`` is not binary.
    """
    if "b" not in mode:
        raise ValueError(f"open_file opens binary files; mode {mode!r} has no 'b'")
    return BlockingFile(await run_blocking(open, path, mode))
