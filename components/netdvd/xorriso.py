"""Running xorriso and reading what it prints.

The parsers are pure functions over xorriso's text output so they can be
tested without a drive; :func:`run_xorriso` is the one place that starts the
program.  xorriso runs with ``TZ=UTC`` so the dates it writes do not depend on
the device's time zone.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from functools import partial

import attrs
import trio

from ._constants import PACIFIER_INTERVAL, XORRISO_TAIL_LINES
from .errors import NetDVDError

#: Calls back with (sectors written, percent) parsed from a pacifier line.
ProgressCallback = Callable[[int, float], None]


class XorrisoFailed(NetDVDError):
    """xorriso exited with an error; the message holds its complaint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "xorriso_failed")


@attrs.frozen
class Toc:
    """What ``-toc`` tells about the medium in a drive."""

    present: bool
    blank: bool
    appendable: bool
    sessions: int
    #: Next writable address in sectors, or None when nothing may be appended.
    nwa: int | None
    #: Sectors the drive reports readable (the data of all sessions).
    readable_sectors: int
    #: Sectors the drive reports still writable, or None if not reported.
    writable_sectors: int | None


@attrs.frozen
class DiscEntry:
    """One file, directory or symbolic link on a disc."""

    path: str
    kind: str  # "file", "dir", "link" or "other"
    size: int


_STATUS = re.compile(r"^Media status\s*:\s*(.*)$", re.M)
_SUMMARY = re.compile(r"^Media summary\s*:\s*(\d+) sessions?,", re.M)
_NWA = re.compile(r"^Media nwa\s*:\s*(\d+)s", re.M)
_BLOCKS = re.compile(r"^Media blocks\s*:\s*(\d+) readable\s*,\s*(\d+) writable", re.M)
_CURRENT = re.compile(r"^Media current\s*:\s*(.*)$", re.M)
_IMAGE_SIZE = re.compile(r"^Image size\s*:\s*(\d+)s", re.M)
_PROGRESS = re.compile(r"Writing:\s+(\d+)s\s+([\d.]+)%")
_LSDL = re.compile(r"^(\S{10})\s+\d+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+\S+\s+\S+\s+(.*)$")


def parse_toc(text: str) -> Toc:
    """Parse the output of ``xorriso -toc`` (stdout and stderr together)."""
    current = _CURRENT.search(text)
    status = _STATUS.search(text)
    status_text = status.group(1) if status else ""
    present = bool(status) and "is not present" not in (current.group(1) if current else "")
    present = present and "is not present" not in status_text
    summary = _SUMMARY.search(text)
    nwa = _NWA.search(text)
    blocks = _BLOCKS.search(text)
    return Toc(
        present=present,
        blank=present and "is blank" in status_text,
        appendable=present and ("is appendable" in status_text or "is blank" in status_text),
        sessions=int(summary.group(1)) if summary else 0,
        nwa=int(nwa.group(1)) if nwa else None,
        readable_sectors=int(blocks.group(1)) if blocks else 0,
        writable_sectors=int(blocks.group(2)) if blocks else None,
    )


def parse_image_size(text: str) -> int:
    """Return the sectors announced by ``-print_size``.

    Raises:
        XorrisoFailed: the output holds no size line.
    """
    match = _IMAGE_SIZE.search(text)
    if match is None:
        raise XorrisoFailed("xorriso did not report the size of the new session")
    return int(match.group(1))


def parse_progress(line: str) -> tuple[int, float] | None:
    """Return (sectors written, percent) from a pacifier line, else None."""
    match = _PROGRESS.search(line)
    if match is None:
        return None
    return int(match.group(1)), float(match.group(2))


def parse_lsdl(text: str) -> list[DiscEntry]:
    """Parse ``-find / -exec lsdl`` result lines into entries (root excluded)."""
    entries = []
    for line in text.splitlines():
        match = _LSDL.match(line)
        if match is None:
            continue
        mode, size, rest = match.groups()
        try:
            words = shlex.split(rest)
        except ValueError:
            continue
        if not words:
            continue
        path = words[0]
        if path == "/":
            continue
        kind = {"d": "dir", "-": "file", "l": "link"}.get(mode[0], "other")
        entries.append(DiscEntry(path.lstrip("/"), kind, int(size) if kind == "file" else 0))
    return entries


def failure_message(lines: Sequence[str]) -> str:
    """Pick xorriso's own explanation of a failure from its last lines."""
    serious = [
        line.split(":", 2)[-1].strip()
        for line in lines
        if any(tag in line for tag in (": FAILURE :", ": SORRY :", ": FATAL :", ": ABORT :"))
    ]
    if serious:
        return "; ".join(dict.fromkeys(serious))
    tail = [line for line in lines if line.strip()]
    return tail[-1] if tail else "no output"


def xorriso_path() -> str:
    """The xorriso program to run (``NETDVD_XORRISO`` overrides the name)."""
    return os.environ.get("NETDVD_XORRISO", "xorriso")


async def run_xorriso(
    args: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
    check: bool = True,
    keep_lines: int | None = 4096,
) -> tuple[int, list[str]]:
    """Run xorriso with ``args``; return (exit status, output lines).

    stdout and stderr are read together, line by line, as they come, so
    ``on_progress`` sees each pacifier line while the write runs.  Only the
    last ``keep_lines`` lines are kept (all when None).

    Cancellation kills xorriso (trio's run_process does so).

    Raises:
        XorrisoFailed: xorriso could not be started, or ``check`` is true and
            it exited with an error; the message quotes its complaint.
    """
    command = [
        xorriso_path(),
        "-abort_on",
        "FAILURE",
        "-pacifier",
        f"interval={PACIFIER_INTERVAL}",
        *args,
    ]
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    keep: collections.deque[str] = collections.deque(maxlen=keep_lines)
    start_error: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    check=False,
                )
            )
        except OSError as exc:
            start_error = exc
        else:
            assert process.stdout is not None
            pending = b""
            async for chunk in process.stdout:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace")
                    keep.append(line)
                    if on_progress is not None and (parsed := parse_progress(line)):
                        on_progress(*parsed)
            if pending:
                keep.append(pending.decode("utf-8", "replace"))
    if start_error is not None:
        raise XorrisoFailed(
            f"cannot run {command[0]!r}: {start_error}; is xorriso installed?"
        ) from start_error
    lines = list(keep)
    returncode = process.returncode
    assert returncode is not None
    if check and returncode != 0:
        raise XorrisoFailed(
            f"xorriso failed (exit {returncode}): {failure_message(lines[-XORRISO_TAIL_LINES:])}"
        )
    return returncode, lines
