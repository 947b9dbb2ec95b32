"""The broker's state, pure and synchronous: sources, channels, memory, reads.

The server (``server.py``) moves bytes and calls in here; nothing here awaits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._constants import (
    CACHE_BYTES,
    CACHE_FRAMES,
    EVICTION_SHARE,
    FETCH_MAX_FRAMES,
    MAX_CHANNELS_PER_SOURCE,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    SOURCE_TYPES,
)
from ._errors import RequestFailed
from .names import check_channel_name, check_source_name, compile_pattern, source_pattern
from .origin import Origin, copy_pieces, new_identity
from .peer import Peer
from .ringbuffer import memory_store
from .router import Group, Readable, Router, Waker, add_run, check_selection
from .sources import Channel, Source, guess_content_type
from .store import (
    AFTER,
    NEWEST,
    OLDEST,
    TIME,
    ChannelSpec,
    Query,
    StoreFactory,
)

log = logging.getLogger("turbine.hub")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class Hub:
    """Every source, subscription and memory budget of one broker.

    Args:
        max_memory: bytes all sources' rings may reserve together.
        max_frame: largest single frame accepted.
        lenient_names: accept source names outside the naming convention.
        types: source types the convention allows.
        clock: seconds since the epoch (injected for tests).
        store: makes each channel's store (memory rings by default).
        identity: this broker's identity (``turbine/origin.py``); a fresh one by default.
    """

    def __init__(
        self,
        *,
        max_memory: int = MAX_MEMORY_BYTES,
        max_frame: int = MAX_FRAME_BYTES,
        lenient_names: bool = False,
        types: tuple[str, ...] = SOURCE_TYPES,
        clock: Callable[[], float] = time.time,
        store: StoreFactory = memory_store,
        identity: str | None = None,
    ) -> None:
        self.identity = identity or new_identity()
        self.max_memory = max_memory
        self.max_frame = max_frame
        self.lenient_names = lenient_names
        self.types = types
        self.clock = clock
        self.store = store
        self.sources: dict[str, Source] = {}
        self.router = Router()
        self._next_seq: dict[str, int] = {}  # path -> next seq of deleted channels: never reused
        for old in getattr(store, "recovered", list)():  # a disk archive's sources from before
            self.restore_source(old.name, old.settings, old.content_types())

    # --- memory

    @property
    def reserved(self) -> int:
        return sum(s.cache_bytes for s in self.sources.values())

    @property
    def used(self) -> int:
        return sum(s.bytes for s in self.sources.values())

    def _make_room(self, need: int, replacing: Source | None, owner: str = "") -> None:
        def free() -> int:
            return self.max_memory - self.reserved + (replacing.cache_bytes if replacing else 0)

        # Other clients' offline history goes only for a client within its share
        # of the memory (its sources' reservations, this one included).
        mine = need + sum(
            s.cache_bytes for s in self.sources.values() if s.owner == owner and s is not replacing
        )
        share = int(self.max_memory * EVICTION_SHARE)
        offline = sorted(
            (
                s
                for s in self.sources.values()
                if not s.online and s is not replacing and (s.owner == owner or mine <= share)
            ),
            key=lambda s: s.offline_since or 0,
        )
        available = free() + sum(s.cache_bytes for s in offline)  # offline sources may go
        if available < need:
            # Refuse before evicting anything: a refusal must cost no one's frames.
            kept = (
                f"; other clients' offline sources are kept, as {owner} would then reserve "
                f"{fmt_bytes(mine)}, over its share of {fmt_bytes(share)}"
                if mine > share
                else ""
            )
            raise RequestFailed(
                f"cannot reserve {fmt_bytes(need)} (cache_bytes) for this source: only "
                f"{fmt_bytes(max(available, 0))} of the broker's {fmt_bytes(self.max_memory)} "
                f"are left{kept}; ask for less or start the broker with a larger --max-memory",
                "memory",
            )
        while free() < need:
            self.delete(offline.pop(0).name)

    # --- sources

    def open_source(
        self,
        peer: Peer,
        name: str,
        *,
        channels: dict[str, str] | None = None,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
        shared: bool | None = None,
        mirror: Origin | None = None,
        archive_bytes: int | None = None,
        archive_age: float | None = None,
    ) -> Source:
        """Create ``name`` held by ``peer``, or take over the offline source of that name.

        Limits and ``shared`` left as ``None`` keep an existing source's values
        (or take the defaults for a new one).  ``archive_bytes`` (0: memory
        only) and ``archive_age`` are its disk retention, which the store
        factory checks and keeps (:meth:`~turbine.store.StoreFactory.archive_settings`).  ``mirror`` makes (or takes over)
        a mirrored source: a copy of ``mirror``'s frames under their own
        numbers, never shared; only a mirror may hold it.

        Raises:
            RequestFailed: bad name or limits, held by someone else, no memory
                or disk left (code ``memory`` / ``disk``), or a mirror that does not fit (code ``mirror``: the
                source is a mirror and this is not, or the other way round,
                or of another origin; code ``loop``: its frames came from
                this broker).
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
        if src is not None and src.online and not _reclaims(src, peer):
            src.refuse_holder(peer)
        self._check_mirror(name, src, mirror, shared)
        if src is not None and _not_owner(src, peer):
            # Only its owner may shrink (and so discard) a source's history:
            # another client taking it over gets at least what it has.
            cache_frames = max(cache_frames, src.cache_frames)
            cache_bytes = max(cache_bytes, src.cache_bytes)
            if archive_bytes is not None:
                archive_bytes = max(archive_bytes, src.archive_bytes)
            if archive_age is not None and src.archive_age is not None:
                archive_age = max(archive_age, src.archive_age)
            elif archive_age is not None:
                archive_age = None  # none: no age limit, the most history
        archive_bytes, archive_age = self.store.archive_settings(name, archive_bytes, archive_age)
        self._make_room(cache_bytes, src, peer.client)
        now = self.clock()
        if src is None:
            src = Source(
                name, shared=shared, cache_frames=cache_frames, cache_bytes=cache_bytes, now=now
            )
            src.origin = mirror
            self.sources[name] = src
        else:
            src.shared, src.cache_frames, src.cache_bytes = shared, cache_frames, cache_bytes
            for channel in src.channels.values():
                src.bytes -= channel.store.resize(cache_frames)
            src.trim()
        src.holder, src.holder_name, src.offline_since = peer, peer.name, None
        src.owner = src.owner or peer.client
        src.archive_bytes, src.archive_age = archive_bytes, archive_age
        self.store.keep_settings(name, src.settings())
        for ch_name, ctype in (channels or {}).items():
            self.channel(src, ch_name, ctype)
        return src

    def restore_source(self, name: str, settings: dict[str, Any], channels: dict[str, str]) -> None:
        """Bring back, offline, a source the store held before the broker restarted,
        with its settings (:meth:`Source.settings`); its channels continue their
        numbers (the store knows them).

        A source that does not fit the memory left gets what is left (its disk
        history stays whole; its owner reopening it asks for its size again),
        and a warning says so: a broker never fails to start for that.
        """
        frames = settings.get("cache_frames", CACHE_FRAMES)
        size = settings.get("cache_bytes", CACHE_BYTES)
        left = max(self.max_memory - self.reserved, 1)  # (no restored source evicts another)
        if size > left:
            log.warning(
                "source %s restored with cache_bytes %s instead of %s: only that much of "
                "--max-memory %s is left; its frames on disk are all there",
                name,
                fmt_bytes(left),
                fmt_bytes(size),
                fmt_bytes(self.max_memory),
            )
            size = left
        now = self.clock()
        src = Source(
            name,
            shared=settings.get("shared", False),
            cache_frames=frames,
            cache_bytes=size,
            now=now,
        )
        src.offline_since = now
        src.archive_bytes = settings.get("archive_bytes", 0)
        src.archive_age = settings.get("archive_age")
        if settings.get("mirror"):  # a mirrored source stays one (only a mirror may take it over)
            src.origin = Origin.from_wire(settings["mirror"])
        self.sources[name] = src
        for ch_name, ctype in channels.items():
            src.bytes += self.channel(src, ch_name, ctype).store.bytes

    def _check_mirror(
        self, name: str, src: Source | None, mirror: Origin | None, shared: bool
    ) -> None:
        """Raises RequestFailed unless ``mirror`` may open ``name`` (see :meth:`open_source`)."""
        if mirror is not None and self.identity in mirror.brokers:
            raise RequestFailed(
                f"source {name!r} would mirror {mirror.describe()}, and those frames came "
                f"from this broker ({self.identity}): a mirror never copies a source back",
                "loop",
            )
        if mirror is not None and shared:
            raise RequestFailed(f"mirrored source {name!r} cannot be shared", "mirror")
        have = src.origin if src is not None else None
        if src is None or have == mirror:
            return
        if have is None:
            why = f"source {name!r} is not a mirror; a mirror cannot take it over"
        elif mirror is None:
            why = (
                f"source {name!r} is a mirror of {have.describe()}; only a mirror may hold it "
                "(delete it first to use the name for a source of your own)"
            )
        elif (have.broker, have.source) == (mirror.broker, mirror.source):
            return  # the same frames, on another path: its numbers continue
        else:
            why = f"source {name!r} is a mirror of {have.describe()}, not of {mirror.describe()}"
        raise RequestFailed(why, "mirror")

    def release(self, peer: Peer, name: str | None = None) -> None:
        """Mark ``peer``'s sources (or just ``name``) offline; they stay readable."""
        now = self.clock()
        for src in self.sources.values():
            if src.holder is peer and (name is None or src.name == name):
                src.holder, src.offline_since = None, now

    def delete(self, name: str, peer: Peer | None = None) -> None:
        """Delete a source and its frames (``peer`` None: the broker itself).

        Raises:
            RequestFailed: no such source, or it is held by another client.
        """
        src = self.sources.get(name)
        if src is None:
            raise RequestFailed(f"no source named {name!r}", "missing")
        if src.online and src.holder is not peer and peer is not None:
            raise RequestFailed(
                f"source {name!r} is held by {src.holder_name}; stop that client first", "held"
            )
        if peer is not None and _not_owner(src, peer):
            raise RequestFailed(
                f"source {name!r} belongs to {src.owner}; only that client may delete it "
                f"(turbine rm --as {src.owner})",
                "owner",
            )
        for ch in src.channels.values():
            self._next_seq[ch.path] = ch.store.next_seq
            ch.store.drop()
            self.router.channel_removed(ch)
        del self.sources[name]

    def next_seqs(self, src: Source) -> dict[str, int]:
        """The number the next frame gets on each channel ``src`` has, and on each
        it had before it was deleted (a put re-creates those where they stopped)."""
        seqs = {name: ch.store.next_seq for name, ch in src.channels.items()}
        prefix = f"{src.name}/"
        for path, seq in self._next_seq.items():
            if path.startswith(prefix):
                seqs.setdefault(path[len(prefix) :], seq)
        return seqs

    def channel(self, src: Source, name: str, content_type: str | None) -> Channel:
        """The channel ``name`` of ``src``, created (and announced to subscribers) if new."""
        ch = src.channels.get(name)
        if ch is None:
            check_channel_name(name)
            if len(src.channels) >= MAX_CHANNELS_PER_SOURCE:
                raise RequestFailed(
                    f"source {src.name!r} has {len(src.channels)} channels, the most a source "
                    f"may have; channel {name!r} was not created",
                    "limits",
                )
            path = f"{src.name}/{name}"
            next_seq = self._next_seq.pop(path, 1)
            origin = src.origin.to_wire() if src.origin else None
            spec = ChannelSpec(src.name, name, src.cache_frames, next_seq, content_type, origin)
            ch = Channel(src, name, content_type or guess_content_type(name), self.store(spec))
            src.channels[name] = ch
            self.router.channel_created(ch)
        elif content_type and content_type != ch.content_type and not len(ch.store):
            ch.content_type = content_type
        return ch

    # --- writing

    def put(
        self,
        writer: Peer,
        source: str,
        channel: str,
        ts: list[Any],
        data: list[Any],
        content_type: str | None = None,
        sizes: list[int] | None = None,
        seq: int | None = None,
        producer: str | None = None,
        pseq: int | None = None,
        seqs: list[int] | None = None,
        writers: list[Any] | None = None,
        skipped: int | None = None,
    ) -> Sequence[Waker]:
        """Append frames to ``source/channel``; return whom to wake (its subscribers).

        ``sizes`` are the frames' lengths when the caller has them already
        (a put message lists them).  ``seq`` numbers the first frame; numbers
        it skips become a hole that subscribers are told of as a gap.
        ``producer`` and its put number ``pseq`` de-duplicate: a put whose
        number that producer had stored already for this source is dropped,
        as if stored (a replay after a lost connection).  ``skipped`` frames
        the producer dropped before these leave that many numbers unused.

        ``seqs`` numbers every frame (a mirror's put: the origin's numbers,
        increasing; numbers it skips are holes; frames numbered below the
        channel's next number are held already and skipped, so a mirror that
        resends after a reconnect stores nothing twice).  ``writers`` lists
        ``[first_seq, writer]`` for each run of frames by one writer (the
        origin's writers; the putting client's name without it).  Only a
        mirrored source takes ``seqs``, and it takes no put without them.

        Raises:
            RequestFailed: no such source, not the holder of a non-shared
                source, a bad channel name, a frame over the size limit, a
                ``seq`` below the channel's next number, or ``seqs`` /
                ``writers`` that are bad or do not fit the source.
        """
        src = self.sources.get(source)
        if src is None:
            raise no_source(source)
        if src.holder is not writer and not src.shared:
            src.check_writer(writer)  # raises
        if producer is not None:
            if pseq is None:
                raise RequestFailed("a put with a producer needs its pseq", "request")
            if src.stored_before(producer, pseq):
                return ()
        ch = src.channels.get(channel)
        if ch is None:
            try:
                ch = self.channel(src, channel, content_type)
            except ValueError as exc:
                raise RequestFailed(str(exc), "name") from None
        if sizes is None:
            sizes = list(map(len, data))
        src.check_frames(ch, data, sizes, self.max_frame)
        if ts:
            if None in ts:
                now = self.clock()
                if ts.count(None) == len(ts):  # the usual put: the broker stamps every frame
                    ts = [now] * len(ts)
                else:
                    ts = [now if t is None else t for t in ts]
            if seqs is not None or src.origin is not None:
                self._put_copy(src, ch, ts, data, sizes, seqs, writers, writer.name)
            else:
                if skipped and seq is None:
                    seq = ch.store.next_seq + skipped
                src.append(ch, ts, data, writer.name, sizes, seq)
        if producer is not None:
            src.stored(producer, pseq)  # type: ignore[arg-type]  # checked above
        return self.router.wakers(ch) if ts else ()

    def _put_copy(
        self,
        src: Source,
        ch: Channel,
        ts: list[float],
        data: list[Any],
        sizes: list[int],
        seqs: list[int] | None,
        writers: list[Any] | None,
        default_writer: str,
    ) -> None:
        """A mirror's put: each contiguous run of one writer stored under its own numbers."""
        if src.origin is None:
            raise RequestFailed(
                f"source {src.name!r} is not a mirror; only a mirrored source takes seqs",
                "mirror",
            )
        pieces = copy_pieces(ch.path, len(ts), seqs, writers, default_writer, ch.store.next_seq)
        for a, b, first, name in pieces:
            src.append(ch, ts[a:b], data[a:b], name, sizes[a:b], first)

    # --- reading

    def channels(self, pattern: str, readable: Readable | None = None) -> list[Channel]:
        """Channels matching ``pattern`` (of sources ``readable`` allows, if given)."""
        matcher = compile_pattern(pattern)
        return [
            ch
            for src in self.sources.values()
            if readable is None or readable(src.name)
            for ch in src.channels.values()
            if matcher.match(ch.path)
        ]

    def list_sources(
        self, pattern: str = "*", readable: Readable | None = None
    ) -> list[dict[str, Any]]:
        """Sources matching ``pattern`` (that ``readable`` allows, if given), as ``list`` shows them."""
        matcher = source_pattern(pattern)
        return [
            s.info()
            for s in self.sources.values()
            if matcher.match_source(s.name) and (readable is None or readable(s.name))
        ]

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
        readable: Readable | None = None,
    ) -> tuple[list[Group], list[Any]] | PendingFetch:
        """Frames the stores hold now, as delivery groups and payloads.

        Exactly one of ``newest``, ``oldest``, ``start`` (with ``duration``) or
        ``after`` selects the frames.  When a store cannot answer from memory
        (:meth:`~turbine.store.ChannelStore.read_now` gives ``None``), the
        answer is a :class:`PendingFetch` for the broker's store task to run.
        Sources ``readable`` refuses are left out, as if they did not exist.

        Raises:
            RequestFailed: the selection is missing, doubled or negative.
        """
        query = fetch_query(newest, oldest, start, duration, after, max_frames)
        return PendingFetch(self.channels(pattern, readable), query).now()


def no_source(name: str) -> RequestFailed:
    """The refusal of a put to a source that does not exist (or that the writer may not see)."""
    return RequestFailed(
        f"no source named {name!r}; open it first (or start the component that owns it)",
        "missing",
    )


def _not_owner(src: Source, peer: Peer) -> bool:
    """``peer`` is neither the source's owner (the client name that created it)
    nor an administrator (with access control on, rights decide the rest)."""
    admin = peer.access is not None and peer.access.admin
    return bool(src.owner) and peer.client != src.owner and not admin


def _reclaims(src: Source, peer: Peer) -> bool:
    """The owner opens its source while a client of another name holds it: it takes it back."""
    holder = src.holder
    return (
        bool(src.owner)
        and peer.client == src.owner
        and (holder is None or holder.client != src.owner)
    )


def fetch_query(
    newest: int | None,
    oldest: int | None,
    start: float | None,
    duration: float | None,
    after: int | None,
    max_frames: int,
) -> Query:
    """The store query of a fetch selection.

    Raises:
        RequestFailed: the selection is missing, doubled or negative.
    """
    try:
        kind = check_selection(newest=newest, oldest=oldest, start=start, after=after)
    except ValueError as exc:
        raise RequestFailed(str(exc), "request") from None
    if any(v is not None and v < 0 for v in (newest, oldest, duration, after)):
        raise RequestFailed("fetch counts and durations must not be negative", "request")
    value = {NEWEST: newest, OLDEST: oldest, TIME: start, AFTER: after}[kind]
    assert value is not None
    span = duration if duration is not None else float("inf")
    return Query(kind, value, span, max_frames)


@attrs.frozen
class PendingFetch:
    """A fetch of ``query`` from ``channels``; :meth:`run` it in a store task
    when :meth:`now` (memory) cannot answer.

    :meth:`run` reads every channel again (frames put meanwhile are included).
    Cancellation abandons it.
    """

    channels: list[Channel]
    query: Query

    def now(self) -> tuple[list[Group], list[Any]] | PendingFetch:
        """The answer from memory, or this fetch itself when a store needs its task."""
        groups: list[Group] = []
        payloads: list[Any] = []
        for ch in self.channels:
            run = ch.store.read_now(self.query)
            if run is None:
                return self
            add_run(groups, payloads, ch, run)
        return groups, payloads

    async def run(self) -> tuple[list[Group], list[Any]]:
        groups: list[Group] = []
        payloads: list[Any] = []
        for ch in self.channels:
            add_run(groups, payloads, ch, await ch.store.read_later(self.query))
        return groups, payloads
