"""The sources' lifecycle on the hub: open (or take over), restore, release,
delete, their channels, and the memory they reserve.

:class:`SourceLifecycle` is the half of :class:`turbine.hub.Hub` that decides
which sources exist and what memory they hold; the hub's own methods move
frames in (``put``) and out (the reads).  Pure and synchronous, like the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._constants import CACHE_BYTES, CACHE_FRAMES, MAX_CHANNELS_PER_SOURCE, RECLAIM_GRACE_S
from ._errors import RequestFailed
from ._format import fmt_bytes, guess_content_type
from .memory import make_room, reserved
from .names import check_channel_name, check_source_name
from .origin import Origin, check_mirror
from .peer import Peer
from .router import Router
from .sources import Channel, Source
from .store import ChannelSpec, StoreFactory
from .summary import Summaries

log = logging.getLogger("turbine.hub")


class SourceLifecycle:
    """Which sources a hub has, and how they come and go (mixed into the hub)."""

    identity: str
    max_memory: int
    lenient_names: bool
    types: tuple[str, ...]
    clock: Callable[[], float]
    store: StoreFactory
    sources: dict[str, Source]
    router: Router
    _next_seq: dict[str, int]  # path -> next seq of deleted channels: never reused

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
        silent = src.check_opener(peer) if src is not None else None
        check_mirror(
            self.identity, name, mirror, shared, src is not None, src.origin if src else None
        )
        if src is not None and not src.online:
            src.check_reserved(peer, self.clock)
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
        src.hand_over(peer, silent)
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
        summaries: dict[str, Summaries] | None = None,
    ) -> None:
        """Bring back, offline, a source the store held before the broker restarted,
        with its settings (:meth:`Source.settings`); its channels continue their
        numbers (the store knows them), and ``producers`` (each one's newest stored
        put number) keep a put replayed to the restarted broker from being stored twice;
        its numeric channels get back their block ``summaries``.

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
            ch = self.channel(src, ch_name, ctype)
            src.bytes += ch.store.bytes
            kept = (summaries or {}).get(ch_name)
            if kept is not None and ch.summaries is not None:
                ch.summaries.take(kept)
        src.restore_drop_spans(settings)

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
            ch.set_type(content_type)
        return ch
