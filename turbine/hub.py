"""The broker's state, pure and synchronous: sources, channels, memory, reads.

The server (``server.py``) moves bytes and calls in here; nothing here awaits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._constants import (
    CACHE_BYTES,
    CACHE_FRAMES,
    FETCH_MAX_FRAMES,
    MAX_CHANNELS_PER_SOURCE,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    RECLAIM_GRACE_S,
    SOURCE_TYPES,
)
from ._errors import RequestFailed
from .fetch import PendingFetch, fetch_query
from .memory import fmt_bytes, make_room, reserved
from .names import check_channel_name, check_source_name, compile_pattern, source_pattern
from .origin import Origin, check_mirror, new_identity
from .peer import Peer
from .ringbuffer import memory_store
from .router import Group, Readable, Router, Waker
from .sources import Channel, Source, guess_content_type
from .store import ChannelSpec, StoreFactory

log = logging.getLogger("turbine.hub")


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
            self.restore_source(old.name, old.settings, old.content_types(), old.producers)
        #: A durable store's ``producer_stored(source, producer, pseq)``, or None.
        self._producer_stored = getattr(store, "producer_stored", None)

    # --- memory

    @property
    def reserved(self) -> int:
        return reserved(self.sources.values())

    @property
    def used(self) -> int:
        return sum(s.bytes for s in self.sources.values())

    def _make_room(self, need: int, replacing: Source | None, owner: str = "") -> None:
        """Delete what :func:`~turbine.memory.make_room` says must go for ``need`` bytes.

        Raises:
            RequestFailed: they cannot fit (code ``memory``); nothing was deleted.
        """
        sources = self.sources.values()
        for src in make_room(sources, self.max_memory, need, replacing, owner):
            self.delete(src.name)

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
        if src is not None:
            src.check_opener(peer)
        check_mirror(
            self.identity, name, mirror, shared, src is not None, src.origin if src else None
        )
        if src is not None and not src.online:
            self._check_reserved(src, peer)
        if src is not None:
            cache_frames, cache_bytes, archive_bytes, archive_age = src.limits_for(
                peer, cache_frames, cache_bytes, archive_bytes, archive_age
            )
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
            src.reconfigure(shared, cache_frames, cache_bytes)
        src.holder, src.holder_name, src.offline_since = peer, peer.name, None
        src.reserved_until = None
        src.owner = src.owner or peer.client
        src.archive_bytes, src.archive_age = archive_bytes, archive_age
        self.store.keep_settings(name, src.settings())
        for ch_name, ctype in (channels or {}).items():
            self.channel(src, ch_name, ctype)
        return src

    def restore_source(
        self,
        name: str,
        settings: dict[str, Any],
        channels: dict[str, str],
        producers: dict[str, int] | None = None,
    ) -> None:
        """Bring back, offline, a source the store held before the broker restarted,
        with its settings (:meth:`Source.settings`); its channels continue their
        numbers (the store knows them), and ``producers`` (each one's newest stored
        put number) keep a put replayed to the restarted broker from being stored twice.

        A source that does not fit the memory left gets what is left (its disk
        history stays whole; its owner reopening it asks for its size again),
        and a warning says so: a broker never fails to start for that.
        """
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
        src = Source.from_settings(name, settings, now, cache_bytes=size)
        src.owner = src.reserved_for = settings.get("owner", "")
        if settings.get("reconnects"):  # held by a reconnecting client: it is on its way back
            src.reserved_until = now + RECLAIM_GRACE_S
        src.producers = dict(producers or {})
        self.sources[name] = src
        for ch_name, ctype in channels.items():
            src.bytes += self.channel(src, ch_name, ctype).store.bytes

    def release(self, peer: Peer, name: str | None = None) -> None:
        """Mark ``peer``'s sources (or just ``name``) offline; they stay readable.

        Without ``name`` (its connection ended), the sources of a peer that
        reconnects stay reserved for a client of its name for
        :data:`RECLAIM_GRACE_S`.
        """
        now = self.clock()
        for src in self.sources.values():
            if src.holder is peer and (name is None or src.name == name):
                src.holder, src.offline_since = None, now
                src.reserved_for = peer.client
                kept = name is None and peer.reconnects
                src.reserved_until = now + RECLAIM_GRACE_S if kept else None

    def _check_reserved(self, src: Source, peer: Peer) -> None:
        """Raises RequestFailed (``held``): the offline ``src`` is kept for the
        client that held it (reconnecting), and ``peer`` is another."""
        if src.reserved_until is None or peer.client in (src.reserved_for, src.owner):
            return
        now = self.clock()
        if now >= src.reserved_until or not src.reserved_for:
            return
        raise RequestFailed(
            f"source {src.name!r} is held by {src.holder_name or src.reserved_for}, which is "
            f"reconnecting (offline for {now - (src.offline_since or now):.1f} s); only one "
            f"client at a time may hold a source (stop that client, or use another name; after "
            f"{RECLAIM_GRACE_S:g} s offline another client may take it over)",
            "held",
        )

    def delete(self, name: str, peer: Peer | None = None) -> None:
        """Delete a source and its frames (``peer`` None: the broker itself).

        Raises:
            RequestFailed: no such source, or it is held by another client.
        """
        src = self.sources.get(name)
        if src is None:
            raise RequestFailed(f"no source named {name!r}", "missing")
        if peer is not None:
            src.check_deleter(peer)
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
                src.append_copy(ch, ts, data, sizes, seqs, writers, writer.name)
            else:
                if skipped and seq is None:
                    seq = ch.store.next_seq + skipped
                src.append(ch, ts, data, writer.name, sizes, seq)
        if producer is not None:
            src.stored(producer, pseq)  # type: ignore[arg-type]  # checked above
            if self._producer_stored is not None:
                self._producer_stored(source, producer, pseq)
        return self.router.wakers(ch) if ts else ()

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
