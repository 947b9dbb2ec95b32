"""Sources and their channels, as the hub keeps them: holders, limits, metadata, stores.

Pure and synchronous, like the hub (``hub.py``) that owns them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._constants import (
    CACHE_FRAMES,
    DROP_SPANS_PER_CHANNEL,
    FRAME_OVERHEAD_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_PRODUCERS_PER_SOURCE,
    METADATA_CHANNEL,
    RATE_FRAMES,
    RATE_MIN_SPAN_S,
    RATE_WINDOW_S,
)
from ._errors import RequestFailed
from .holding import Holding
from .origin import Origin, copy_pieces
from .payloads import Payloads, total_bytes
from .peer import Peer
from .store import ChannelStore, evict_to_fit
from .summary import TRIM_EVERY, summaries_for


#: What a channel's bytes are when nothing says otherwise.
def _json_int(text: str) -> int | float:
    """JSON integers beyond 64 bits become floats: msgpack cannot carry them."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def parse_metadata(raw: Any) -> Any:
    """Decode one metadata frame: JSON of at most MAX_METADATA_BYTES, nested at
    most MAX_METADATA_DEPTH deep (deeper would break list replies for everyone).

    Raises:
        ValueError: it is too large, not JSON, or nested too deeply (the message says which).
    """
    if len(raw) > MAX_METADATA_BYTES:
        raise ValueError(
            f"a metadata frame of {len(raw)} bytes is over the limit of {MAX_METADATA_BYTES}"
        )
    try:
        value = json.loads(bytes(raw), parse_int=_json_int)
    except RecursionError:
        value = _TOO_DEEP
    except ValueError as exc:
        raise ValueError(f"a metadata frame must be UTF-8 JSON: {exc}") from None
    if value is _TOO_DEEP or _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(
            f"a metadata frame may nest arrays and objects at most {MAX_METADATA_DEPTH} deep"
        )
    return value


_TOO_DEEP = object()


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_METADATA_DEPTH:  # no need to look deeper than the limit
                stack.extend((child, level + 1) for child in children)
    return deepest


class Channel:
    """One channel of a source: its name, content type and store."""

    __slots__ = (
        "source",
        "source_name",
        "name",
        "path",
        "content_type",
        "store",
        "summaries",
        "drop_spans",
    )

    def __init__(self, source: Source, name: str, content_type: str, store: ChannelStore) -> None:
        self.source = source
        self.source_name = source.name
        self.name = name
        self.path = f"{source.name}/{name}"
        self.store = store
        self.set_type(content_type)
        #: The time span of frames their producer dropped (its spool was full), by the
        #: number of the frame after them: the gap a reader gets there says it.
        self.drop_spans: dict[int, tuple[float, float | None]] = {}

    def set_type(self, content_type: str) -> None:
        """Take ``content_type``, with new block summaries if it is numeric."""
        self.content_type = content_type
        #: Block summaries of a numeric channel's samples, made at put (None for other
        #: types); an archived channel's store keeps each complete one.
        self.summaries = summaries_for(content_type, getattr(self.store, "keep_summary", None))

    def dropped(self, next_seq: int, span: tuple[float, float | None]) -> None:
        """The producer dropped frames just before number ``next_seq``, from ``span``'s
        first to its last timestamp (the newest :data:`DROP_SPANS_PER_CHANNEL` are kept)."""
        spans = self.drop_spans
        spans[next_seq] = span
        if len(spans) > DROP_SPANS_PER_CHANNEL:
            del spans[next(iter(spans))]

    def info(self, now: float) -> dict[str, Any]:
        """What ``list`` says of this channel; its rate is the one up to ``now``."""
        store = self.store
        n = len(store)
        return {
            "name": self.name,
            "content_type": self.content_type,
            "frames": n,
            "first_seq": store.first_seq if n else None,
            "last_seq": store.last_seq if n else None,
            "next_seq": store.next_seq,
            "first_time": store.first_time,
            "last_time": store.last_time,
            "bytes": store.bytes,
            "rate": recent_rate(store.newest_n(RATE_FRAMES).ts, now) if n >= 2 else None,
            "disk": store.disk(),
        }


class Source(Holding):
    """A named producer and the rings of its channels.

    Who may open, write to, shrink or delete it is its
    :class:`~turbine.holding.Holding` half.
    """

    def __init__(
        self, name: str, *, shared: bool, cache_frames: int, cache_bytes: int, now: float
    ) -> None:
        self.name = name
        self.shared = shared
        self.cache_frames = cache_frames
        self.cache_bytes = cache_bytes
        self.channels: dict[str, Channel] = {}
        self.holder: Peer | None = None  # who holds the source, None when offline
        self.holder_name = ""  # the last holder's name (kept when it goes offline)
        #: The client name that created it ("" when unknown, e.g. read back from disk:
        #: the next to open it becomes its owner).  Only the owner may shrink or delete it.
        self.owner = ""
        self.created = now
        self.offline_since: float | None = None
        #: Until when (clock) an offline source is kept for the client ``reserved_for``
        #: (the holder that lost its connection, or the owner after a restart).
        self.reserved_until: float | None = None
        self.reserved_for = ""
        self.origin: Origin | None = None  # where a mirrored source's frames come from
        self.archive_bytes = 0  # disk kept (0: memory only; the store factory decides)
        self.archive_age: float | None = None  # and how old it may get, in seconds
        self.bytes = 0
        self.arrival = 0  # numbers frames across channels, to evict the oldest first
        self._metadata: tuple[Any, Any] | None = None  # (newest metadata frame, decoded)
        #: Each producer's newest stored put number (``pseq``), least recent first.
        self.producers: dict[str, int] = {}
        self.replays_dropped = 0  # puts not stored again: their producer number was stored
        # Frames and payload bytes stored since this broker started (metrics: per-source rates),
        # and sent from it (to subscribers and as fetch answers; each copy counts).
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0

    @classmethod
    def from_settings(
        cls, name: str, settings: dict[str, Any], now: float, *, cache_bytes: int
    ) -> Source:
        """The source :meth:`settings` describe, offline since ``now`` (one back from
        a disk archive), given ``cache_bytes`` of memory (what the broker has left)."""
        src = cls(
            name,
            shared=settings.get("shared", False),
            cache_frames=settings.get("cache_frames", CACHE_FRAMES),
            cache_bytes=cache_bytes,
            now=now,
        )
        src.offline_since = now
        src.archive_bytes = settings.get("archive_bytes", 0)
        src.archive_age = settings.get("archive_age")
        if settings.get("mirror"):  # a mirrored source stays one (only a mirror may take it over)
            src.origin = Origin.from_wire(settings["mirror"])
        return src

    def reconfigure(self, shared: bool, cache_frames: int, cache_bytes: int) -> None:
        """Take new limits (a take-over): rings resized, the oldest frames evicted to fit."""
        self.shared, self.cache_frames, self.cache_bytes = shared, cache_frames, cache_bytes
        for channel in self.channels.values():
            self.bytes -= channel.store.resize(cache_frames)
        self.trim()

    def check_frames(
        self, ch: Channel, data: Sequence[Any], sizes: list[int], max_frame: int
    ) -> None:
        """Raises RequestFailed for a frame over the size limit, or bad metadata."""
        limit = min(max_frame, self.cache_bytes - FRAME_OVERHEAD_BYTES)
        # No frame is larger than a put's whole payload: when that fits, no pass over the sizes.
        if type(data) is Payloads and sum(map(len, data.buffers)) <= limit:
            biggest = 0
        else:
            biggest = max(sizes, default=0)
        if biggest > limit:
            raise RequestFailed(
                f"a frame of {biggest} bytes for {ch.path} is over the limit of {limit} bytes "
                "(the broker's --max-frame, or the source's cache_bytes)",
                "too_large",
            )
        if ch.name == METADATA_CHANNEL:
            try:
                for frame in data:
                    parse_metadata(frame)
            except ValueError as exc:
                raise RequestFailed(str(exc), "metadata") from None

    def append(
        self,
        ch: Channel,
        ts: Sequence[float],
        data: Sequence[Any],
        writer: str,
        sizes: list[int],
        seq: int | None = None,
    ) -> None:
        """Store frames in ``ch`` (from number ``seq``), keeping the source within ``cache_bytes``."""
        store = ch.store
        before = store.bytes
        first = store.next_seq if seq is None else seq
        try:
            store.append_many(ts, data, writer, self.arrival, sizes, seq)
        except ValueError as exc:  # a seq below the next number
            raise RequestFailed(f"{ch.path}: {exc}", "request") from None
        if (summaries := ch.summaries) is not None:
            summaries.add(first, ts, data)
            if len(summaries) % TRIM_EVERY == 0:  # now and then: what was evicted
                summaries.drop_before(store.oldest_seq)
        self.arrival += len(ts)
        self.frames_in += len(ts)
        self.bytes_in += total_bytes(data, sizes)
        self.bytes += store.bytes - before
        if self.bytes > self.cache_bytes:
            self.trim()

    def append_copy(
        self,
        ch: Channel,
        ts: Sequence[float],
        data: Sequence[Any],
        sizes: list[int],
        seqs: list[int] | None,
        writers: list[Any] | None,
        default_writer: str,
        first_seq: int | None = None,
    ) -> None:
        """A mirror's put: each contiguous run of one writer stored under its own numbers
        (:func:`~turbine.origin.copy_pieces`; ``first_seq``: numbered from it on).

        Raises:
            RequestFailed: this source is not a mirror, or ``seqs`` / ``first_seq``
                / ``writers`` are bad or do not fit the channel.
        """
        if self.origin is None:
            raise RequestFailed(
                f"source {self.name!r} is not a mirror; only a mirrored source takes seqs",
                "mirror",
            )
        count = len(ts)
        pieces = copy_pieces(
            ch.path, count, seqs, writers, default_writer, ch.store.next_seq, first_seq
        )
        for a, b, first, name in pieces:
            if a == 0 and b == count:  # the usual put: one run, the columns as they came
                self.append(ch, ts, data, name, sizes, first)
            else:
                self.append(ch, ts[a:b], data[a:b], name, sizes[a:b], first)

    def stored_before(self, producer: str, pseq: int) -> bool:
        """Whether ``producer``'s put number ``pseq`` was stored already (a replay)."""
        last = self.producers.get(producer)
        if last is not None and pseq <= last:
            self.replays_dropped += 1
            return True
        return False

    def stored(self, producer: str, pseq: int) -> None:
        """Remember ``producer``'s newest stored put number (forgetting the least recent producer)."""
        producers = self.producers
        producers.pop(producer, None)
        producers[producer] = pseq
        if len(producers) > MAX_PRODUCERS_PER_SOURCE:
            del producers[next(iter(producers))]

    def trim(self) -> None:
        """Evict the oldest frames until the source fits ``cache_bytes`` (:func:`evict_to_fit`)."""
        stores = (ch.store for ch in self.channels.values())
        self.bytes -= evict_to_fit(stores, self.bytes, self.cache_bytes)

    def metadata(self) -> Any:
        """The newest metadata frame, decoded (checked when it was put, so this cannot fail)."""
        ch = self.channels.get(METADATA_CHANNEL)
        raw = ch.store.newest if ch else None
        if raw is None:
            return None
        if self._metadata is None or self._metadata[0] is not raw:
            try:
                self._metadata = raw, parse_metadata(raw)
            except ValueError as exc:  # a store written before the check existed
                self._metadata = raw, {"error": f"newest metadata frame: {exc}"}
        return self._metadata[1]

    def settings(self) -> dict[str, Any]:
        """What the store factory keeps of this source (``StoreFactory.keep_settings``):
        a source back from a disk archive gets them again (``Hub.restore_source``)."""
        settings: dict[str, Any] = {
            "cache_frames": self.cache_frames,
            "cache_bytes": self.cache_bytes,
            "shared": self.shared,
            "archive_bytes": self.archive_bytes,
        }
        if self.owner:
            settings["owner"] = self.owner
        if self.holder is not None and self.holder.reconnects:
            settings["reconnects"] = True  # kept for its holder after a restart
        if self.archive_age is not None:
            settings["archive_age"] = self.archive_age
        if self.origin is not None:
            settings["mirror"] = self.origin.to_wire()
        spans = {n: [[k, *v] for k, v in c.drop_spans.items()] for n, c in self.channels.items()}
        if any(spans.values()):  # what the gaps of dropped frames say (Channel.dropped)
            settings["drop_spans"] = {n: v for n, v in spans.items() if v}
        return settings

    def restore_drop_spans(self, settings: dict[str, Any]) -> None:
        """Give its channels back the gap spans :meth:`settings` kept (a restored source)."""
        for name, spans in (settings.get("drop_spans") or {}).items():
            if (ch := self.channels.get(name)) is not None:
                for next_seq, first, last in spans:
                    ch.dropped(next_seq, (first, last))

    def info(self, now: float) -> dict[str, Any]:
        """What ``list`` says of this source (rates up to ``now``, the broker's clock)."""
        return {
            "name": self.name,
            "online": self.online,
            "holder": self.holder_name,
            "shared": self.shared,
            "cache_frames": self.cache_frames,
            "cache_bytes": self.cache_bytes,
            "archive_bytes": self.archive_bytes,
            "archive_age": self.archive_age,
            "bytes": self.bytes,
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "channels": [ch.info(now) for ch in self.channels.values()],
            "metadata": self.metadata(),
            "mirror": self.origin.to_wire() if self.origin else None,
        }


def recent_rate(ts: list[float], now: float) -> float | None:
    """Frames per second lately, from the timestamps ``ts`` of a channel's newest
    frames (oldest first, RATE_FRAMES at most), up to ``now``.

    Counted over the last RATE_WINDOW_S, which ends at ``now`` (or at the newest
    timestamp, from a clock ahead of ours): a channel that stopped falls to
    none, and a burst reads as what it is over the window, not over its own
    microseconds.  With every frame in hand inside the window (a young
    channel), over their span up to ``now``, RATE_MIN_SPAN_S at least unless
    there are RATE_FRAMES of them.  None for fewer than two frames in the
    window (timestamps more than the window behind the broker's clock, a
    replay's say, have no rate here).
    """
    end = max(now, ts[-1]) if ts else now
    recent = [t for t in ts if t >= end - RATE_WINDOW_S]
    n = len(recent)
    if n < 2:
        return None
    if n < len(ts):  # frames before the window: the channel ran through all of it
        return round(n / RATE_WINDOW_S, 3)
    span = end - min(recent)
    if n < RATE_FRAMES:
        span = max(span, RATE_MIN_SPAN_S)
    return round((n - 1) / span, 3) if span > 0 else None
