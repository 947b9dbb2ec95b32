"""Audio levels for the page's meter: peak and RMS of 16-bit PCM blocks, in dBFS."""

from __future__ import annotations

import array
import math
import sys
from typing import Any

from ..render import pcm_format

#: The level reported for digital silence (log 0 is minus infinity, which JSON cannot carry).
SILENCE_DBFS = -120.0
_FULL_SCALE = 32768.0


def _dbfs(ratio: float) -> float:
    return round(max(20 * math.log10(ratio), SILENCE_DBFS), 2) if ratio > 0 else SILENCE_DBFS


def pcm_level(data: bytes, content_type: str) -> dict[str, Any] | None:
    """``{"peak_dbfs": [...], "rms_dbfs": [...]}``, one per audio channel, or None if not L16.

    ``audio/L16`` is signed 16-bit big-endian, channels interleaved (RFC 2586);
    0 dBFS is full scale.  A trailing odd byte is ignored.
    """
    fmt = pcm_format(content_type)
    if fmt is None:
        return None
    channels = fmt[1]
    samples = array.array("h")
    samples.frombytes(data[: len(data) // 2 * 2])
    if sys.byteorder == "little":
        samples.byteswap()
    peak: list[float] = []
    rms: list[float] = []
    for c in range(channels):
        one = samples[c::channels]
        if not one:
            peak.append(SILENCE_DBFS)
            rms.append(SILENCE_DBFS)
            continue
        peak.append(_dbfs(max(-min(one), max(one)) / _FULL_SCALE))
        rms.append(_dbfs(math.sqrt(sum(x * x for x in one) / len(one)) / _FULL_SCALE))
    return {"peak_dbfs": peak, "rms_dbfs": rms}
