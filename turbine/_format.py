"""Small helpers the broker and the command line share, kept apart from the broker's
modules so that a ``turbine`` command does not load them: sizes in words, and the
content type a channel gets when its creator does not say.
"""

from __future__ import annotations

import mimetypes

from ._constants import METADATA_CHANNEL

OCTET_STREAM = "application/octet-stream"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def guess_content_type(channel: str) -> str:
    """The content type a channel gets when its creator does not say."""
    if channel == METADATA_CHANNEL:
        return "application/json"
    guessed, _ = mimetypes.guess_type(channel, strict=False)
    return guessed or OCTET_STREAM
