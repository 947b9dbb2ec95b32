"""Small helpers the broker and the command line share, kept apart from the broker's
modules so that a ``turbine`` command does not load them: sizes and durations in
words, the MCP's table of programs, and the content type a channel gets when its
creator does not say.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Mapping
from typing import Any

from ._constants import METADATA_CHANNEL

OCTET_STREAM = "application/octet-stream"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def fmt_count(n: int, noun: str) -> str:
    """``1 frame``, ``2 frames``: a count and its noun, plural but for one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def program_table(programs: Iterable[Mapping[str, Any]]) -> list[str]:
    """A site's programs (the MCP's ``programs``, each as ``Program.info`` gives it)
    as lines of a table: name, kind, state, pid, restarts, uptime, last exit.
    The MCP's console draws it; ``turbine cmd MCP status`` prints it."""
    rows = list(programs)
    width = max([len("NAME")] + [len(r["name"]) for r in rows]) + 2
    kinds = max([len("KIND")] + [len(r["kind"]) for r in rows]) + 2
    lines = [
        f"{'NAME':<{width}}{'KIND':<{kinds}}{'STATE':<10}{'PID':>8}{'RESTARTS':>10}"
        f"{'UPTIME':>10}  LAST EXIT"
    ]
    for r in rows:
        pid = str(r["pid"]) if r["pid"] else "-"
        lines.append(
            f"{r['name']:<{width}}{r['kind']:<{kinds}}{r['state']:<10}{pid:>8}{r['restarts']:>10}"
            f"{fmt_duration(r['uptime']):>10}  {r['last_exit_text']}"
        )
    return lines


def guess_content_type(channel: str) -> str:
    """The content type a channel gets when its creator does not say."""
    if channel == METADATA_CHANNEL:
        return "application/json"
    guessed, _ = mimetypes.guess_type(channel, strict=False)
    return guessed or OCTET_STREAM
