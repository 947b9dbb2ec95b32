"""What the client hands its caller: frames, gaps, and what ``list_sources`` reports.

The annotations are evaluated (no ``from __future__ import annotations``): a
named tuple's string annotations are each compiled when its class is made,
~0.1 ms of ``import turbine`` for the three here.
"""

from collections.abc import Iterator, Mapping
from itertools import chain, repeat
from typing import Any, NamedTuple

from ._values import Value
from .groups import CutPayload, check_groups, split_groups


class Frame(NamedTuple):
    """One frame as a reader sees it.

    A named tuple rather than an attrs class: readers build one per frame on
    the hot path, and a tuple is the cheapest immutable record Python has.
    """

    source: str
    channel: str
    seq: int
    timestamp: float
    data: bytes
    content_type: str
    writer: str

    @property
    def path(self) -> str:
        return f"{self.source}/{self.channel}"


class FrameGroup(NamedTuple):
    """Frames of one channel by one writer, numbered one after another, as columns:
    what a subscription with ``groups=True`` delivers instead of one
    :class:`Frame` each (a mirror's way to carry batches without a Python
    object per frame).
    """

    source: str
    channel: str
    content_type: str
    first_seq: int
    timestamps: list[float]
    sizes: list[int]
    #: The frames' bytes back to back (``sizes`` cuts them).
    payload: memoryview
    writer: str

    @property
    def path(self) -> str:
        return f"{self.source}/{self.channel}"

    @property
    def seqs(self) -> range:
        return range(self.first_seq, self.first_seq + len(self.sizes))


class Gap(NamedTuple):
    """Frames a subscriber did not get: the broker evicted them before it read them,
    or their producer's full spool dropped them while the broker was away."""

    source: str
    channel: str
    missed: int
    next_seq: int
    #: The first and last timestamp of the missed frames, where the broker
    #: knows them (frames their producer's full spool dropped), else None.
    first_time: float | None = None
    last_time: float | None = None

    @property
    def path(self) -> str:
        return f"{self.source}/{self.channel}"


class ChannelInfo(Value):
    name: str
    content_type: str
    frames: int
    first_seq: int | None
    last_seq: int | None
    first_time: float | None
    last_time: float | None
    bytes: int
    rate: float | None
    #: The number the channel's next frame gets (None from a broker that does not say).
    next_seq: int | None = None
    #: What the broker's disk archive holds of it (``frames``, ``bytes``, ``first_seq``,
    #: ``last_seq``, ``first_time``, ``last_time``); None for a channel kept in memory only.
    disk: Any = None


class SourceInfo(Value):
    """A source as ``list_sources`` reports it."""

    name: str
    online: bool
    holder: str
    shared: bool
    cache_frames: int
    cache_bytes: int
    bytes: int
    channels: tuple[ChannelInfo, ...]
    metadata: Any
    #: Disk kept for it by a broker with a data dir (0: memory only; None from a broker
    #: that does not say), and the age beyond which its disk history goes.
    archive_bytes: int | None = None
    archive_age: float | None = None
    #: Where a mirrored source's frames come from (``broker``, ``source``, ``via``); None if not one.
    mirror: Any = None
    #: What the caller may do with it (``r``/``w``/``c``, ``-`` where not),
    #: from a broker that checks tokens; None from one that does not.
    access: str | None = None
    #: Frames and payload bytes stored in it since the broker started, and sent from it
    #: (to subscribers and in fetch answers, every copy counted) (None from a broker
    #: that does not say).
    frames_in: int | None = None
    bytes_in: int | None = None
    frames_out: int | None = None
    bytes_out: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SourceInfo":
        """The record of a list entry (fields a newer broker adds are left out)."""
        known = {k: v for k, v in d.items() if k in _SOURCE_FIELDS}
        return cls(**{**known, "channels": tuple(_channel(c) for c in d["channels"])})


def _channel(d: Mapping[str, Any]) -> ChannelInfo:
    return ChannelInfo(**{k: v for k, v in d.items() if k in _CHANNEL_FIELDS})


_SOURCE_FIELDS = frozenset(f.name for f in SourceInfo.fields)
_CHANNEL_FIELDS = frozenset(f.name for f in ChannelInfo.fields)


def _as_bytes(data: bytes | memoryview) -> bytes:
    if type(data) is bytes:
        return data
    obj = data.obj  # type: ignore[union-attr]
    return obj if type(obj) is bytes and len(obj) == len(data) else bytes(data)


_new_tuple = tuple.__new__


def iter_frames(groups: list[Any], payload: memoryview | CutPayload) -> Iterator[Frame]:
    """A ``frames`` message's :class:`Frame` objects, each made as it is taken.

    The groups are checked and the payload cut at once (a bad message raises
    here); only the Frame tuples wait to be made.  A reader that lets each
    frame go before taking the next leaves none for the garbage collector:
    a Frame, a tuple subclass, stays tracked by it for life (CPython untracks
    only exact tuples), so a subscription queue of made frames had every
    collection walk all of them (4,096-frame batches, 32 queued: 700-775 ns
    a frame made and read, 263-325 ns made as taken).

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    parts = []
    # tuple.__new__ straight from zip's exact 7-tuples: Frame._make is a
    # Python-level call per frame (385 -> 87 ns a frame).
    for source, channel, ctype, seq, ts, datas, writer in split_groups(groups, payload):
        if type(datas[0]) is not bytes:
            datas = list(map(_as_bytes, datas))
        parts.append(
            map(
                _new_tuple,
                repeat(Frame),
                zip(
                    repeat(source),
                    repeat(channel),
                    range(seq, seq + len(ts)),
                    ts,
                    datas,
                    repeat(ctype),
                    repeat(writer),
                ),
            )
        )
    if len(parts) == 1:
        return parts[0]  # type: ignore[no-any-return]
    return chain.from_iterable(parts)


def frames_from(groups: list[Any], payload: memoryview | CutPayload) -> list[Frame]:
    """Turn a ``frames`` message's groups into :class:`Frame` objects (no per-frame Python loop)."""
    return list(iter_frames(groups, payload))


def groups_from(groups: list[Any], payload: memoryview) -> list[FrameGroup]:
    """A ``frames`` message's groups as :class:`FrameGroup` records, checked, the payload uncut."""
    return list(map(_new_tuple, repeat(FrameGroup), check_groups(groups, payload)))
