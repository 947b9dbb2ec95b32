"""The broker's state, pure and synchronous: sources, channels, memory, reads.

The server (``server.py``) moves bytes and calls in here; nothing here awaits.
"""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._constants import (
    CACHE_BYTES,
    CACHE_FRAMES,
    FETCH_MAX_FRAMES,
    FRAME_OVERHEAD_BYTES,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    METADATA_CHANNEL,
    SOURCE_TYPES,
)
from ._errors import RequestFailed
from .names import check_channel_name, check_source_name, compile_pattern, source_pattern
from .ringbuffer import Ring, Run
from .router import Cursor, Router, check_selection

Group = list[Any]  # [source, channel, content_type, first_seq, ts, sizes, writer]


def guess_content_type(channel: str) -> str:
    """The content type a channel gets when its creator does not say."""
    if channel == METADATA_CHANNEL:
        return "application/json"
    guessed, _ = mimetypes.guess_type(channel, strict=False)
    return guessed or "application/octet-stream"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _json_int(text: str) -> int | float:
    """JSON integers beyond 64 bits become floats: msgpack cannot carry them."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


class Channel:
    __slots__ = ("source", "name", "path", "content_type", "ring", "cursors")

    def __init__(self, source: Source, name: str, content_type: str, next_seq: int) -> None:
        self.source = source
        self.name = name
        self.path = f"{source.name}/{name}"
        self.content_type = content_type
        self.ring = Ring(source.cache_frames, next_seq)
        self.cursors: list[Cursor] = []

    def info(self) -> dict[str, Any]:
        ring = self.ring
        n = len(ring)
        rate = None
        if n >= 2:
            tail = ring.newest_n(min(n, 100)).ts
            span = tail[-1] - tail[0]
            rate = round((len(tail) - 1) / span, 3) if span > 0 else None
        return {
            "name": self.name,
            "content_type": self.content_type,
            "frames": n,
            "first_seq": ring.first_seq if n else None,
            "last_seq": ring.last_seq if n else None,
            "first_time": ring.first_time,
            "last_time": ring.last_time,
            "bytes": ring.bytes,
            "rate": rate,
        }


class Source:
    """A named producer and the rings of its channels."""

    def __init__(
        self, name: str, *, shared: bool, cache_frames: int, cache_bytes: int, now: float
    ) -> None:
        self.name = name
        self.shared = shared
        self.cache_frames = cache_frames
        self.cache_bytes = cache_bytes
        self.channels: dict[str, Channel] = {}
        self.holder: Any = None  # the connection holding the source, None when offline
        self.holder_name = ""
        self.created = now
        self.offline_since: float | None = None
        self.bytes = 0
        self.arrival = 0  # numbers frames across channels, to evict the oldest first

    @property
    def online(self) -> bool:
        return self.holder is not None

    def trim(self) -> None:
        """Evict the oldest frames until the source fits ``cache_bytes``.

        Each channel keeps its newest frame, so the newest metadata survives.
        """
        while self.bytes > self.cache_bytes:
            oldest = None
            for ch in self.channels.values():
                a = ch.ring.oldest_arrival
                if len(ch.ring) > 1 and a is not None and (oldest is None or a < oldest[0]):
                    oldest = (a, ch)
            if oldest is None:
                return
            self.bytes -= oldest[1].ring.evict_oldest()

    def metadata(self) -> Any:
        ch = self.channels.get(METADATA_CHANNEL)
        raw = ch.ring.newest if ch else None
        if raw is None:
            return None
        try:
            return json.loads(bytes(raw), parse_int=_json_int)
        except ValueError:
            return {"error": "newest metadata frame is not valid JSON"}

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "online": self.online,
            "holder": self.holder_name,
            "shared": self.shared,
            "cache_frames": self.cache_frames,
            "cache_bytes": self.cache_bytes,
            "bytes": self.bytes,
            "channels": [ch.info() for ch in self.channels.values()],
            "metadata": self.metadata(),
        }


class Hub:
    """Every source, subscription and memory budget of one broker.

    Args:
        max_memory: bytes all sources' rings may reserve together.
        max_frame: largest single frame accepted.
        lenient_names: accept source names outside the naming convention.
        types: source types the convention allows.
        clock: seconds since the epoch (injected for tests).
    """

    def __init__(
        self,
        *,
        max_memory: int = MAX_MEMORY_BYTES,
        max_frame: int = MAX_FRAME_BYTES,
        lenient_names: bool = False,
        types: tuple[str, ...] = SOURCE_TYPES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_memory = max_memory
        self.max_frame = max_frame
        self.lenient_names = lenient_names
        self.types = types
        self.clock = clock
        self.sources: dict[str, Source] = {}
        self.router = Router()
        self._next_seq: dict[str, int] = {}  # path -> next seq of deleted channels: never reused

    # --- memory

    @property
    def reserved(self) -> int:
        return sum(s.cache_bytes for s in self.sources.values())

    @property
    def used(self) -> int:
        return sum(s.bytes for s in self.sources.values())

    def _make_room(self, need: int, replacing: Source | None) -> None:
        def free() -> int:
            return self.max_memory - self.reserved + (replacing.cache_bytes if replacing else 0)

        offline = sorted(
            (s for s in self.sources.values() if not s.online and s is not replacing),
            key=lambda s: s.offline_since or 0,
        )
        available = free() + sum(s.cache_bytes for s in offline)  # offline sources may go
        if available < need:
            # Refuse before evicting anything: a refusal must cost no one's frames.
            raise RequestFailed(
                f"cannot reserve {fmt_bytes(need)} (cache_bytes) for this source: only "
                f"{fmt_bytes(max(available, 0))} of the broker's {fmt_bytes(self.max_memory)} "
                "are left; ask for less or start the broker with a larger --max-memory",
                "memory",
            )
        while free() < need:
            self.delete(offline.pop(0).name)

    # --- sources

    def open_source(
        self,
        owner: Any,
        owner_name: str,
        name: str,
        *,
        channels: dict[str, str] | None = None,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
        shared: bool | None = None,
    ) -> Source:
        """Create ``name`` held by ``owner``, or take over the offline source of that name.

        Limits and ``shared`` left as ``None`` keep an existing source's values
        (or take the defaults for a new one).

        Raises:
            RequestFailed: bad name or limits, held by someone else, or no memory left.
        """
        try:
            check_source_name(name, types=self.types, lenient=self.lenient_names)
            for ch in channels or {}:
                check_channel_name(ch)
        except ValueError as exc:
            raise RequestFailed(str(exc), "name") from None
        src = self.sources.get(name)
        if cache_frames is None:
            cache_frames = src.cache_frames if src else CACHE_FRAMES
        if cache_bytes is None:
            cache_bytes = src.cache_bytes if src else CACHE_BYTES
        if shared is None:
            shared = src.shared if src else False
        if cache_frames < 1 or cache_bytes < 1:
            raise RequestFailed("cache_frames and cache_bytes must be at least 1", "limits")
        if src is not None and src.online:
            if src.holder is owner:
                raise RequestFailed(f"you already hold source {name!r}", "held")
            raise RequestFailed(
                f"source {name!r} is held by {src.holder_name}; only one client at a time "
                "may hold a source (stop that client, or use another name)",
                "held",
            )
        self._make_room(cache_bytes, src)
        now = self.clock()
        if src is None:
            src = Source(
                name, shared=shared, cache_frames=cache_frames, cache_bytes=cache_bytes, now=now
            )
            self.sources[name] = src
        else:
            src.shared, src.cache_frames, src.cache_bytes = shared, cache_frames, cache_bytes
            for channel in src.channels.values():
                channel.ring.max_frames = cache_frames
                over = len(channel.ring) - cache_frames
                if over > 0:
                    src.bytes -= channel.ring.evict(over)
            src.trim()
        src.holder, src.holder_name, src.offline_since = owner, owner_name, None
        for ch_name, ctype in (channels or {}).items():
            self.channel(src, ch_name, ctype)
        return src

    def release(self, owner: Any, name: str | None = None) -> None:
        """Mark ``owner``'s sources (or just ``name``) offline; they stay readable."""
        now = self.clock()
        for src in self.sources.values():
            if src.holder is owner and (name is None or src.name == name):
                src.holder, src.offline_since = None, now

    def delete(self, name: str, owner: Any = None) -> None:
        """Delete a source and its frames.

        Raises:
            RequestFailed: no such source, or it is held by another client.
        """
        src = self.sources.get(name)
        if src is None:
            raise RequestFailed(f"no source named {name!r}", "missing")
        if src.online and src.holder is not owner and owner is not None:
            raise RequestFailed(
                f"source {name!r} is held by {src.holder_name}; stop that client first", "held"
            )
        for ch in src.channels.values():
            self._next_seq[ch.path] = ch.ring.next_seq
            self.router.channel_removed(ch)
        del self.sources[name]

    def channel(self, src: Source, name: str, content_type: str | None) -> Channel:
        """The channel ``name`` of ``src``, created (and announced to subscribers) if new."""
        ch = src.channels.get(name)
        if ch is None:
            check_channel_name(name)
            path = f"{src.name}/{name}"
            ch = Channel(
                src, name, content_type or guess_content_type(name), self._next_seq.pop(path, 1)
            )
            src.channels[name] = ch
            self.router.channel_created(ch)
        elif content_type and content_type != ch.content_type and not len(ch.ring):
            ch.content_type = content_type
        return ch

    # --- writing

    def put(
        self,
        writer: Any,
        writer_name: str,
        source: str,
        channel: str,
        ts: list[Any],
        data: list[Any],
        content_type: str | None = None,
        sizes: list[int] | None = None,
    ) -> Channel:
        """Append frames to ``source/channel``; return the channel.

        ``sizes`` are the frames' lengths when the caller has them already
        (a put message lists them).

        Raises:
            RequestFailed: no such source, not the holder of a non-shared
                source, a bad channel name, or a frame over the size limit.
        """
        src = self.sources.get(source)
        if src is None:
            raise RequestFailed(
                f"no source named {source!r}; open it first (or start the component that owns it)",
                "missing",
            )
        if src.holder is not writer and not src.shared:
            who = f"held by {src.holder_name}" if src.online else "offline"
            raise RequestFailed(
                f"source {source!r} is {who} and not shared; only its holder may put to it", "held"
            )
        ch = src.channels.get(channel)
        if ch is None:
            try:
                ch = self.channel(src, channel, content_type)
            except ValueError as exc:
                raise RequestFailed(str(exc), "name") from None
        if sizes is None:
            sizes = list(map(len, data))
        biggest = max(sizes, default=0)
        limit = min(self.max_frame, src.cache_bytes - FRAME_OVERHEAD_BYTES)
        if biggest > limit:
            raise RequestFailed(
                f"a frame of {biggest} bytes for {ch.path} is over the limit of {limit} bytes "
                "(the broker's --max-frame, or the source's cache_bytes)",
                "too_large",
            )
        if not ts:
            return ch
        if None in ts:
            now = self.clock()
            ts = [now if t is None else t for t in ts]
        ring = ch.ring
        before = ring.bytes
        ring.append_many(ts, data, writer_name, src.arrival, sizes)
        src.arrival += len(ts)
        src.bytes += ring.bytes - before
        if src.bytes > src.cache_bytes:
            src.trim()
        return ch

    # --- reading

    def channels(self, pattern: str) -> list[Channel]:
        regex = compile_pattern(pattern)
        return [
            ch
            for src in self.sources.values()
            for ch in src.channels.values()
            if regex.match(ch.path)
        ]

    def list_sources(self, pattern: str = "*") -> list[dict[str, Any]]:
        regex = source_pattern(pattern)
        return [s.info() for s in self.sources.values() if regex.match(s.name + "/")]

    def fetch(
        self,
        pattern: str,
        *,
        newest: int | None = None,
        oldest: int | None = None,
        start: float | None = None,
        duration: float | None = None,
        after: int | None = None,
        max_frames: int = FETCH_MAX_FRAMES,
    ) -> tuple[list[Group], list[Any]]:
        """Frames the rings hold now, as delivery groups and payloads.

        Exactly one of ``newest``, ``oldest``, ``start`` (with ``duration``) or
        ``after`` selects the frames.

        Raises:
            RequestFailed: the selection is missing, doubled or negative.
        """
        try:
            check_selection(newest=newest, oldest=oldest, start=start, after=after)
        except ValueError as exc:
            raise RequestFailed(str(exc), "request") from None
        if any(v is not None and v < 0 for v in (newest, oldest, duration, after)):
            raise RequestFailed("fetch counts and durations must not be negative", "request")
        groups: list[Group] = []
        payloads: list[Any] = []
        for ch in self.channels(pattern):
            ring = ch.ring
            if newest is not None:
                run = ring.newest_n(newest)
            elif oldest is not None:
                run = ring.oldest_n(oldest)
            elif start is not None:
                run = ring.time_range(
                    start, duration if duration is not None else float("inf"), max_frames
                )
            else:
                assert after is not None
                run = ring.read(max(after + 1, ring.first_seq), max_frames)
            add_run(groups, payloads, ch, run)
        return groups, payloads


def add_run(groups: list[Group], payloads: list[Any], ch: Channel, run: Run) -> None:
    """Append ``run`` of ``ch`` to a delivery as one group per writer."""
    if not run.ts:
        return
    payloads += run.data
    source, name, ctype = ch.source.name, ch.name, ch.content_type
    writers = run.writers
    if len(writers) == 1:
        groups.append([source, name, ctype, run.first_seq, run.ts, run.sizes, writers[0][1]])
        return
    bounds = [w[0] for w in writers[1:]] + [run.first_seq + len(run.ts)]
    for (seq, writer), end in zip(writers, bounds, strict=True):
        a, b = seq - run.first_seq, end - run.first_seq
        groups.append([source, name, ctype, seq, run.ts[a:b], run.sizes[a:b], writer])


def collect(
    cursors: Iterable[Cursor], max_frames: int, max_bytes: int
) -> tuple[list[Group], list[Any], list[tuple[Cursor, int]], int, int]:
    """Pull what ``cursors`` have pending, within a budget, advancing them.

    Returns the groups, their payloads, ``(cursor, missed)`` for every cursor
    that fell behind the ring (a gap to report first), and the frame and byte
    counts.  Monitor subscriptions skip to the newest frame.
    """
    groups: list[Group] = []
    payloads: list[Any] = []
    gaps: list[tuple[Cursor, int]] = []
    frames = 0
    size = 0
    for cur in cursors:
        if frames >= max_frames or size >= max_bytes:
            break
        ring = cur.channel.ring
        if cur.next_seq >= ring.next_seq:
            continue
        if cur.sub.monitor:
            run = ring.newest_n(1)
        else:
            run = ring.read(cur.next_seq, max_frames - frames, max_bytes - size)
            if run.missed:
                gaps.append((cur, run.missed))
        add_run(groups, payloads, cur.channel, run)
        n = len(run.ts)
        frames += n
        size += sum(run.sizes)
        cur.next_seq = run.first_seq + n
    return groups, payloads, gaps, frames, size
