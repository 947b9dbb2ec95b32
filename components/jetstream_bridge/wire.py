"""How a turbine frame is a JetStream message, and the order an importer puts them in.

Pure: no I/O, no event loop.  A frame of channel ``C`` of source ``S`` is
published to the subject ``turbine.S.C`` with its data as the payload and
three headers:

=================  ==========================================================
``Nats-Msg-Id``    ``BROKER:S/C#N``: JetStream drops a second copy within
                   the stream's duplicate window
``Turbine``        ``N PREV TIMESTAMP BROKER SOURCE VIA WRITER``, separated
                   by single spaces: its number ``N`` on the origin; the
                   number of the frame exported before it on this channel
                   (0 for the first: numbers between are a gap on the
                   origin, and an importer that has not put ``PREV`` yet
                   holds the frame back); its timestamp (``repr`` of the
                   float); the broker its frames were first put to and the
                   source there; the brokers they passed through
                   (``VIA,...``, ``-`` for none); the client that put it
                   on the origin (the rest of the line: it may hold spaces)
``Content-Type``   its content type
=================  ==========================================================

Three headers rather than one per field: nats-py parses each header line
of each message it receives in Python (a step per character of the name),
which made the seven headers of the first format the largest cost of an
import.  Messages in that format (``Turbine-Seq``, ``Turbine-Prev``,
``Turbine-Timestamp``, ``Turbine-Content-Type``, ``Turbine-Writer``,
``Turbine-Origin``) are still read, so a stream written before keeps working.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs

from turbine import TurbineError
from turbine.client import Frame
from turbine.origin import Origin

SUBJECT_ROOT = "turbine"

MSG_ID = "Nats-Msg-Id"
FRAME = "Turbine"
CONTENT_TYPE = "Content-Type"
NO_VIA = "-"

#: The first format's headers (read, no longer written).
V1_SEQ = "Turbine-Seq"
V1_PREV = "Turbine-Prev"
V1_TIMESTAMP = "Turbine-Timestamp"
V1_CONTENT_TYPE = "Turbine-Content-Type"
V1_WRITER = "Turbine-Writer"
V1_ORIGIN = "Turbine-Origin"


class BridgeError(TurbineError):
    """A name that cannot be a subject, or a message that is not an exported frame."""


def subject(source: str, channel: str) -> str:
    """``turbine.SOURCE.CHANNEL``; a channel's dots make more subject tokens.

    Raises:
        BridgeError: the source has a dot, or the channel a character a
            subject cannot hold (``>``, an empty token).
    """
    if "." in source or ">" in source:
        raise BridgeError(f"source {source!r} cannot be a subject token: it has '.' or '>'")
    if ">" in channel or "" in channel.split("."):
        raise BridgeError(
            f"channel {channel!r} cannot be subject tokens: it has '>', or an empty part between dots"
        )
    return f"{SUBJECT_ROOT}.{source}.{channel}"


def split_subject(subj: str) -> tuple[str, str]:
    """The source and channel of a subject :func:`subject` made.

    Raises:
        BridgeError: it is not one.
    """
    root, _, rest = subj.partition(".")
    source, _, channel = rest.partition(".")
    if root != SUBJECT_ROOT or not source or not channel:
        raise BridgeError(f"subject {subj!r} is not {SUBJECT_ROOT}.SOURCE.CHANNEL")
    return source, channel


def headers(origin: Origin, frame: Frame, prev: int) -> dict[str, str]:
    """The headers of ``frame`` (of the source ``origin`` describes) exported after ``prev``."""
    via = ",".join(origin.via) or NO_VIA
    return {
        MSG_ID: f"{origin.broker}:{frame.source}/{frame.channel}#{frame.seq}",
        FRAME: f"{frame.seq} {prev} {frame.timestamp!r} {origin.broker} {origin.source} {via} {frame.writer}",
        CONTENT_TYPE: frame.content_type,
    }


def exported_seq(hdrs: Mapping[str, str] | None) -> int:
    """The origin's number of the frame with headers ``hdrs`` (0 if they do not say)."""
    h = hdrs or {}
    line = h.get(FRAME)
    if line is not None:
        number = line.partition(" ")[0]
        return int(number) if number.isdigit() else 0
    number = h.get(V1_SEQ, "0")
    return int(number) if number.isdigit() else 0


def _fields(h: Mapping[str, str]) -> tuple[int, int, float, str, str, Origin]:
    """``(seq, prev, timestamp, content_type, writer, origin)`` from either format's headers.

    Raises:
        KeyError, ValueError: a header is missing or malformed.
    """
    line = h.get(FRAME)
    if line is not None:
        seq, prev, stamp, broker, source, via, *writer = line.split(" ", 6)
        origin = _origin(broker, source, via)
        return int(seq), int(prev), float(stamp), h[CONTENT_TYPE], "".join(writer), origin
    broker, source, *hops = h[V1_ORIGIN].split(" ")
    origin = Origin(broker, source, tuple(hops[0].split(",")) if hops else ())
    return (
        int(h[V1_SEQ]),
        int(h[V1_PREV]),
        float(h[V1_TIMESTAMP]),
        h[V1_CONTENT_TYPE],
        h[V1_WRITER],
        origin,
    )


@functools.lru_cache(maxsize=256)
def _origin(broker: str, source: str, via: str) -> Origin:
    """The :class:`Origin` of a ``Turbine`` header's fields, made once per channel rather
    than per message (an attrs instance costs more than parsing the line)."""
    return Origin(broker, source, () if via == NO_VIA else tuple(via.split(",")))


@attrs.frozen
class Exported:
    """A frame as an importer reads it from the stream."""

    source: str
    channel: str
    seq: int
    prev: int
    timestamp: float
    content_type: str
    writer: str
    origin: Origin
    data: bytes
    stream_seq: int = 0

    @property
    def subject(self) -> str:
        return subject(self.source, self.channel)

    @classmethod
    def from_message(
        cls, subj: str, hdrs: Mapping[str, str] | None, data: bytes, stream_seq: int = 0
    ) -> Exported:
        """Raises:
        BridgeError: a header is missing or malformed."""
        source, channel = split_subject(subj)
        try:
            seq, prev, timestamp, content_type, writer, origin = _fields(hdrs or {})
        except (KeyError, ValueError) as exc:
            raise BridgeError(f"message on {subj} is not an exported frame ({exc!r})") from None
        if seq <= prev or prev < 0:
            raise BridgeError(f"message on {subj} has number {seq} after {prev}")
        return cls(
            source, channel, seq, prev, timestamp, content_type, writer, origin, data, stream_seq
        )


class Chain:
    """Puts one channel's exported frames back in their origin's order.

    JetStream may store a frame after the one that followed it (a publish
    lost with a failing node and sent again after the next one got through).
    Each frame names the one before it (``prev``): a frame whose ``prev`` has
    not been put is held until it has; a frame at or below what is put
    already is a duplicate and dropped.  Holding more than ``limit`` frames,
    or :meth:`release` (the stream has been read to its end and stayed
    quiet), gives up on what is missing: the held frames go out in order, the
    missing numbers a gap.
    """

    def __init__(self, last: int, limit: int) -> None:
        self.last = last  # the newest number put (the target's next number - 1)
        self.limit = limit
        self.held: dict[int, Exported] = {}  # prev -> frame waiting for it
        self.given_up = 0  # times frames were released with their predecessor missing

    def add(self, frame: Exported) -> list[Exported]:
        """The frames that may be put now, in order (maybe none)."""
        if frame.seq <= self.last:
            return []
        if frame.prev > self.last:
            self.held[frame.prev] = frame
            return self.release() if len(self.held) > self.limit else []
        self.last = frame.seq
        return [frame, *self._following()]

    def release(self) -> list[Exported]:
        """Give up waiting: every held frame, in order."""
        if not self.held:
            return []
        self.given_up += 1
        out = []
        for frame in sorted(self.held.values(), key=lambda f: f.seq):
            if frame.seq > self.last:
                out.append(frame)
                self.last = frame.seq
        self.held.clear()
        return out

    def _following(self) -> list[Exported]:
        out = []
        while self.held:
            ready = [p for p in self.held if p <= self.last]
            if not ready:
                break
            for p in sorted(ready, key=lambda p: self.held[p].seq):
                frame = self.held.pop(p)
                if frame.seq > self.last:
                    out.append(frame)
                    self.last = frame.seq
        return out
