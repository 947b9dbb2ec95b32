"""A video source that loops over the JPEG files of a directory."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import trio

from turbine import run_blocking

JPEG_SUFFIXES = (".jpg", ".jpeg")


def list_jpegs(directory: str | os.PathLike[str]) -> list[str]:
    """The JPEG files (``*.jpg``, ``*.jpeg``, any case) in ``directory``,
    sorted by name, as paths.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        NotADirectoryError: it is not a directory.
        ValueError: it holds no JPEG file.
    """
    directory = os.fspath(directory)
    with os.scandir(directory) as entries:
        names = sorted(
            e.name for e in entries if e.name.lower().endswith(JPEG_SUFFIXES) and e.is_file()
        )
    if not names:
        raise ValueError(f"no JPEG files (*.jpg, *.jpeg) in {directory}")
    return [os.path.join(directory, n) for n in names]


async def jpeg_files(
    directory: str | os.PathLike[str],
    *,
    fps: float,
    loop: bool = True,
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """Yield ``(jpeg, capture_time)`` for each JPEG of ``directory`` in name
    order, ``fps`` times a second, starting over at the end if ``loop``.

    The directory is listed again at the start of every pass, so files added
    or removed take effect on the next pass; a file that vanished in between
    is skipped.  ``capture_time`` is ``clock()`` when the file was read.  A
    consumer slower than ``fps`` gets the frames it can take, without a burst
    to catch up.  The file bytes are passed on as they are (not checked).

    Raises:
        ValueError: ``fps`` is not positive, or the directory holds no JPEG.
        FileNotFoundError, NotADirectoryError: the directory is wrong.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    interval = 1.0 / fps
    deadline = trio.current_time()
    while True:
        paths = await run_blocking(list_jpegs, directory)
        for path in paths:
            await trio.sleep_until(deadline)
            try:
                data = await run_blocking(Path(path).read_bytes)
            except FileNotFoundError:
                continue
            yield data, clock()
            deadline = max(deadline + interval, trio.current_time())
        if not loop:
            return
