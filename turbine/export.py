"""``turbine export``: a time range of the broker's frames as files a person or MATLAB reads.

The files are laid out as on the DVD archiver's discs, by the same writer
(:mod:`turbine.layout`, :class:`TreeWriter`): numeric
(float64) blocks as CSV with a timestamp on every sample's row, JPEGs as
``.jpg`` files named by time, text as JSON lines, metadata as JSON files,
16-bit PCM as WAV; plus ``manifest.json`` with every file's SHA-256, what
each channel gave and the gaps in its numbers.  A broker with a data dir
answers from its disk archive as well as from memory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import trio

from ._constants import FETCH_MAX_FRAMES
from ._errors import TurbineError
from .client import Client, Frame
from .layout import TreeWriter, iso_time

#: Version tag of an export's manifest.
EXPORT_FORMAT = "turbine-export/1"
MANIFEST_NAME = "manifest.json"


class ExportError(TurbineError):
    """The export cannot be written where it was asked to go."""


async def export(
    tb: Client, pattern: str, start: float, duration: float, to: str | os.PathLike[str], form: str
) -> dict[str, Any]:
    """Write every frame of the channels matching ``pattern`` stamped ``start <= t <
    start + duration`` under ``to`` in format ``form`` (``csv``, ``jsonl`` or ``raw``,
    see ``layout.FORMATS``); return the manifest (also written as ``to/manifest.json``).

    Frames are fetched a page at a time per channel, in order; numbers missing
    between two frames of a channel are listed as gaps.

    Raises:
        ExportError: ``to`` exists and is not an empty directory, or no frame is in
            the range (then nothing is written and a ``to`` made for it is removed).
        ValueError: an unknown ``form``.
        RequestFailed: a bad pattern, or the broker refused the fetch.
    """
    out = Path(to)
    writer = TreeWriter(out, 1, form)
    made = await trio.to_thread.run_sync(_prepare, out)
    end = start + duration
    channels: dict[str, dict[str, Any]] = {}
    gaps: list[dict[str, Any]] = []
    pages: dict[str, list[Frame]] = {}
    for f in await tb.fetch(pattern, start=start, duration=duration):
        pages.setdefault(f.path, []).append(f)
    if not pages:
        if made:
            await trio.to_thread.run_sync(out.rmdir)
        raise ExportError(f"no frames of {pattern} in that time range (nothing written)")
    for path, page in pages.items():
        while page:
            ch = channels.get(path)
            if ch is None:
                first = page[0]
                ch = channels[path] = {
                    "source": first.source,
                    "channel": first.channel,
                    "content_type": first.content_type,
                    "kind": writer.kind(first.channel, first.content_type),
                    "frames": 0,
                    "first_seq": first.seq,
                    "first_time": first.timestamp,
                }
            for a, b in zip([ch.get("last_seq"), *(f.seq for f in page)], page, strict=False):
                if a is not None and b.seq != a + 1:
                    gaps.append({"path": path, "first_seq": a + 1, "last_seq": b.seq - 1})
            rows = [(f.seq, f.timestamp, f.data) for f in page]
            await trio.to_thread.run_sync(
                writer.add, ch["source"], ch["channel"], ch["content_type"], rows
            )
            ch["frames"] += len(page)
            ch["last_seq"], ch["last_time"] = page[-1].seq, page[-1].timestamp
            if len(page) < FETCH_MAX_FRAMES:
                break  # the broker gave all there was
            page = [f for f in await tb.fetch(path, after=page[-1].seq) if f.timestamp < end]
    files = await trio.to_thread.run_sync(writer.finish)
    manifest = {
        "format": EXPORT_FORMAT,
        "pattern": pattern,
        "start": start,
        "start_utc": iso_time(start),
        "duration": duration,
        "file_format": form,
        "created": time.time(),
        "files": files,
        "channels": channels,
        "gaps": gaps,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    await trio.to_thread.run_sync((out / MANIFEST_NAME).write_text, text)
    return manifest


def _prepare(out: Path) -> bool:
    """Make ``out`` if it is new (True) or check it is an empty directory (False).

    Raises:
        ExportError: ``out`` exists and is not an empty directory.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory: export into a new one")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return made
