"""The interest table and delivery: which subscriptions want which channels, and what they get.

Pure and synchronous.  A subscription holds one :class:`Cursor` per channel it
matches; the cursor is the next sequence number that subscriber wants, so the
channel's store is the only buffer between producer and subscriber, and a slow
subscriber only lets its own cursors fall behind.  The router owns the
cursors: after a put the hub asks it whom to wake (:meth:`Router.wakers`),
and each connection's writer pulls its frames with :func:`collect`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from .names import Pattern, compile_pattern
from .payloads import buffers_of, total_bytes
from .store import ChannelStore, Run

#: Whether a reader may read the source of this name (a user's read right).
Readable = Callable[[str], bool]

#: One delivery group: [source, channel, content_type, first_seq, ts, sizes, writer].
Group = list[Any]


class Waker(Protocol):
    """Whom a put wakes: the connection that delivers a subscription's frames."""

    def wake_soon(self) -> None:
        """Mark frames to send; never waits."""
        ...

    def frames_go_now(self) -> bool:
        """Whether frames wait for it that its socket takes now (turbine/pacing.py)."""
        ...


class Counted(Protocol):
    """What the router counts on a channel's source: frames and payload bytes sent from it."""

    frames_out: int
    bytes_out: int


class Channel(Protocol):
    """What the router reads of a channel (the hub's :class:`~turbine.hub.Channel`)."""

    @property
    def source(self) -> Counted: ...

    @property
    def path(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def source_name(self) -> str: ...

    @property
    def content_type(self) -> str: ...

    @property
    def drop_spans(self) -> dict[int, tuple[float, float | None]]: ...

    @property
    def store(self) -> ChannelStore: ...


class Cursor:
    """One subscription's read position on one channel.

    A read that needs slower storage than memory (the store's ``read`` gave
    ``None``) is made by the broker's store task: meanwhile ``loading`` is
    set and the cursor is skipped; its answer waits in ``prefetched`` for the
    next :func:`collect`.
    """

    __slots__ = ("sub", "channel", "next_seq", "loading", "prefetched", "due")

    def __init__(self, sub: Subscription, channel: Channel, next_seq: int) -> None:
        self.sub = sub
        self.channel = channel
        self.next_seq = next_seq
        self.loading = False
        self.prefetched: Run | None = None
        self.due = 0.0  # a rate-limited monitor sends nothing before this (trio) time

    @property
    def pending(self) -> bool:
        return self.next_seq < self.channel.store.next_seq


@attrs.define(eq=False)
class Subscription:
    """A pattern one client wants frames for.

    ``owner`` is woken when a channel it reads gets frames (the broker's
    connection); ``monitor`` delivers only the newest frame of each channel,
    at most one per ``interval`` seconds per channel when that is not 0;
    ``readable`` (if given) decides, when a channel would be attached,
    whether its source may be read (a user's rights: never asked per frame).
    """

    id: int
    owner: Waker | None
    pattern: str
    start: str | int = "now"
    monitor: bool = False
    readable: Readable | None = None
    #: Channel paths to where this subscription starts on them: resuming, or a
    #: channel it was behind on when that was removed (see :meth:`Router.channel_removed`).
    resume: dict[str, int] | None = None
    #: A monitor's least time between two frames of one channel (seconds; 0: none).
    interval: float = 0.0
    matcher: Pattern = attrs.field(init=False)
    cursors: dict[Channel, Cursor] = attrs.field(init=False, factory=dict)
    delivered: int = 0
    missed: int = 0

    def __attrs_post_init__(self) -> None:
        self.matcher = compile_pattern(self.pattern)

    def wants(self, ch: Channel) -> bool:
        """Whether this subscription attaches to ``ch``: it matches, and may read it."""
        return self.matcher.match(ch.path) and (
            self.readable is None or self.readable(ch.source_name)
        )

    def start_seq(self, channel: Channel, existed: bool) -> int:
        """Where this subscription starts on ``channel``.

        A channel created after the subscription starts at its first frame,
        whatever ``start`` says: nothing a new source sends is lost.
        """
        store = channel.store
        if self.resume is not None and (seq := self.resume.get(channel.path)) is not None:
            if seq > store.next_seq and store.disk() is None:
                # Past a memory-only channel's next number: its numbers began again (a
                # broker without a data dir restarted), so every frame held is new to this
                # subscriber.  (Past an archived channel's, the broker lost a tail it had
                # not synced; the producer puts it again under the same numbers: wait.)
                return store.first_seq
            return seq
        if not existed:
            return store.first_seq
        if self.start == "now":
            return store.next_seq
        if self.start == "newest":
            return max(store.last_seq, store.first_seq)
        if self.start == "oldest":
            return store.oldest_seq  # a durable store's oldest is on disk
        return int(self.start)


class Router:
    """Every live subscription, and the cursors of each channel."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []
        self._cursors: dict[Channel, list[Cursor]] = {}
        self._wakers: dict[Channel, tuple[Waker, ...]] = {}  # whom a put to a channel wakes

    def add(self, sub: Subscription, channels: Iterable[Channel]) -> None:
        """Register ``sub`` and attach it to the matching channels that exist now."""
        self.subscriptions.append(sub)
        for ch in channels:
            if sub.wants(ch):
                self._attach(sub, ch, sub.start_seq(ch, existed=True))

    def attach_more(self, sub: Subscription, channels: Iterable[Channel]) -> None:
        """Attach ``sub`` to the channels it wants now and did not before (a granted
        read right); they start as the subscription's ``start`` says."""
        for ch in channels:
            if ch not in sub.cursors and sub.wants(ch):
                self._attach(sub, ch, sub.start_seq(ch, existed=True))

    def remove(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)
        for ch, cur in sub.cursors.items():
            self._cursors[ch].remove(cur)
            self._update(ch)
        sub.cursors.clear()

    def channel_created(self, ch: Channel) -> None:
        """Attach every matching subscription to a channel that did not exist before."""
        self._cursors[ch] = []
        for sub in self.subscriptions:
            if sub.wants(ch):
                self._attach(sub, ch, sub.start_seq(ch, existed=False))

    def channel_removed(self, ch: Channel) -> None:
        """Detach every cursor from ``ch`` (its source deleted, or dropped from memory).

        A subscription that had not read all of it keeps its place: if the
        channel comes back (numbers continue), it reads on from there, from the
        disk where the broker has one, or is told with a gap what is gone.
        """
        for cur in self._cursors.pop(ch, ()):
            sub = cur.sub
            del sub.cursors[ch]
            if cur.next_seq < ch.store.next_seq and not sub.monitor:  # (a monitor: the newest)
                if sub.resume is None:
                    sub.resume = {}
                sub.resume[ch.path] = cur.next_seq
            elif sub.resume is not None:
                sub.resume.pop(ch.path, None)  # read to the end: a place from before is stale
        self._wakers.pop(ch, None)

    def cursors(self, ch: Channel) -> list[Cursor]:
        """The cursors reading ``ch``."""
        return self._cursors.get(ch, [])

    def wakers(self, ch: Channel) -> tuple[Waker, ...]:
        """Whom frames put to ``ch`` concern: every subscriber reading it, once each."""
        return self._wakers.get(ch, ())

    def _attach(self, sub: Subscription, ch: Channel, seq: int) -> None:
        cur = Cursor(sub, ch, seq)
        sub.cursors[ch] = cur
        self._cursors.setdefault(ch, []).append(cur)
        self._update(ch)

    def _update(self, ch: Channel) -> None:
        owners = {c.sub.owner: None for c in self._cursors[ch] if c.sub.owner is not None}
        self._wakers[ch] = tuple(owners)


def add_run(groups: list[Group], payloads: list[Any], ch: Channel, run: Run) -> None:
    """Append ``run`` of ``ch`` to a delivery as one group per writer (and per hole)."""
    if not run.ts:
        return
    if run.seqs is not None:
        for piece in run.pieces():
            add_run(groups, payloads, ch, piece)
        return
    payloads += buffers_of(run.data)
    source, name, ctype = ch.source_name, ch.name, ch.content_type
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
) -> tuple[list[Group], list[Any], list[tuple[Cursor, Run]], int, int, list[Cursor]]:
    """Pull what ``cursors`` have pending, within a budget, advancing them.

    Returns the groups, their payloads, ``(cursor, run)`` for every cursor
    whose read skipped numbers (``run.missed`` of them, evicted or a hole:
    a gap to report first; ``run.first_seq`` is where it goes on), the
    frame and byte counts, and the cursors whose next frames are not in
    memory (for the store task to prefetch).  Monitor subscriptions skip to
    the newest frame.
    """
    groups: list[Group] = []
    payloads: list[Any] = []
    gaps: list[tuple[Cursor, Run]] = []
    cold: list[Cursor] = []
    frames = 0
    size = 0
    for cur in cursors:
        if frames >= max_frames or size >= max_bytes:
            break
        store = cur.channel.store
        if cur.next_seq >= store.next_seq or cur.loading:
            continue
        if cur.sub.monitor:
            run = store.newest_n(1)
        else:
            got = cur.prefetched
            if got is not None and got.first_seq - got.missed == cur.next_seq:
                cur.prefetched = None
                run = got
            else:
                got = store.read(cur.next_seq, max_frames - frames, max_bytes - size)
                if got is None:
                    cold.append(cur)
                    continue
                run = got
            if run.missed:
                gaps.append((cur, run))
        add_run(groups, payloads, cur.channel, run)
        n, nbytes = len(run.ts), total_bytes(run.data, run.sizes)
        frames += n
        size += nbytes
        cur.channel.source.frames_out += n
        cur.channel.source.bytes_out += nbytes
        cur.next_seq = run.first_seq + n
    return groups, payloads, gaps, frames, size, cold
