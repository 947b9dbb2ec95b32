"""How frames look to people: text lines and JSON objects for taps and fetches."""

from __future__ import annotations

import array
import base64
import datetime as dt
import json
import struct
from typing import Any

from ._constants import FLOAT64_CONTENT_TYPE
from .client import Frame, Gap

_TEXT_TYPES = ("application/json", "application/x-ndjson", "application/xml")


def is_text(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in _TEXT_TYPES


def is_numeric(content_type: str) -> bool:
    return content_type == FLOAT64_CONTENT_TYPE


def pcm_content_type(rate: int, channels: int) -> str:
    """The content type of 16-bit PCM blocks: RFC 2586 L16, signed, big-endian (network order)."""
    return f"audio/L16;rate={rate};channels={channels}"


def pcm_format(content_type: str) -> tuple[int, int] | None:
    """``(rate, channels)`` of an ``audio/L16;rate=R[;channels=C]`` channel, else None.

    RFC 2586: ``rate`` is required, ``channels`` defaults to 1; a type
    without a usable rate is not PCM a reader can play.
    """
    kind, *params = (part.strip() for part in content_type.split(";"))
    if kind.lower() != "audio/l16":
        return None
    values = dict(p.split("=", 1) for p in params if "=" in p)
    values = {k.strip().lower(): v.strip() for k, v in values.items()}
    try:
        rate, channels = int(values["rate"]), int(values.get("channels", "1"))
    except (KeyError, ValueError):
        return None
    return (rate, channels) if rate > 0 and channels > 0 else None


def pcm_swap(data: bytes | bytearray) -> bytes:
    """16-bit samples from little- to big-endian or back (WAV and ALSA's S16_LE vs L16)."""
    samples = array.array("h", data[: len(data) // 2 * 2])
    samples.byteswap()
    return samples.tobytes()


def iso(ts: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with microseconds."""
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def whole_samples(data: bytes) -> bytes:
    """The whole float64 samples of ``data`` (a trailing partial sample is left out)."""
    return data[: len(data) // 8 * 8]


def numbers(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 8}d", whole_samples(data)))


def utf8_text(data: bytes) -> str | None:
    """``data`` decoded as UTF-8, or None where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def as_text(item: Frame | Gap) -> str:
    """One readable line: time, path, seq, then the payload if it is text."""
    if isinstance(item, Gap):
        return f"-- gap: {item.path} missed {item.missed} frames; next seq {item.next_seq}"
    head = f"{iso(item.timestamp)} {item.path} #{item.seq}"
    ct = item.content_type
    if is_text(ct) and (text := utf8_text(item.data)) is not None:
        body = text.rstrip("\n").replace("\n", "\\n")
    elif is_numeric(ct):
        body = " ".join(f"{v:.6g}" for v in numbers(item.data))
    else:
        body = f"[{len(item.data)} bytes {ct}]"
    return f"{head} {body}"


def as_dict(item: Frame | Gap) -> dict[str, Any]:
    """A JSON-ready dict: text payloads as ``text``, numbers as ``values``, the rest as ``data_b64``."""
    if isinstance(item, Gap):
        return {
            "gap": True,
            "source": item.source,
            "channel": item.channel,
            "missed": item.missed,
            "next_seq": item.next_seq,
        }
    d: dict[str, Any] = {
        "source": item.source,
        "channel": item.channel,
        "seq": item.seq,
        "timestamp": item.timestamp,
        "content_type": item.content_type,
    }
    if is_text(item.content_type) and (text := utf8_text(item.data)) is not None:
        d["text"] = text
    else:
        if is_numeric(item.content_type):
            d["values"] = numbers(item.data)
        d["data_b64"] = base64.b64encode(item.data).decode("ascii")
    return d


def as_json(item: Frame | Gap) -> str:
    return json.dumps(as_dict(item), ensure_ascii=False)
