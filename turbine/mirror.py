"""Mirrors: copy sources of one broker to another, faithfully, and keep copying.

:func:`run_mirror` connects to the origin broker (``A``) and the target
(``B``).  Every source of ``A`` whose name matches one of the patterns, now
or later, becomes a mirrored source on ``B`` (``docs/protocol.rst``, "Mirrored
sources"): same channels, content types, limits, timestamps, writers and
sequence numbers; numbers ``A`` evicted before they were copied are the same
gap on ``B``.  Each channel is read from ``B``'s next number on, so after a
restart of ``A`` (with its data dir), of ``B`` or of the mirror the copy
continues where ``B`` stops: nothing lost that ``A`` still holds, nothing
twice.  A source whose frames have been on ``B`` already (its origin or one
of the brokers it passed through) is not copied: no loops.

With ``inside="to"`` the copying runs in ``B``'s own process
(``turbine/_mirror_inside.py``): this program asks ``B`` to pull, and relays
what it reports (``turbine/_mirror_ask.py``); with ``inside="from"`` it asks ``A`` to push, and ``A`` reads
its own rings (``turbine/_mirror_origin.py``).
"""

from __future__ import annotations

import array
import contextlib
import logging
import operator
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs
import trio

from ._client_records import FrameGroup, SourceInfo
from ._constants import MIRROR_POLL_S, MIRROR_QUEUE_BATCHES, MIRROR_RETRY_S
from ._errors import ConnectionFailed, RequestFailed, TurbineError, leaves
from ._mirror_ask import MirrorUnsupported, ask_inside
from .auth import find_token
from .client import Client, open_client
from .names import source_pattern
from .origin import Origin

log = logging.getLogger("turbine.mirror")


@attrs.frozen
class MirrorConfig:
    """What one mirror copies, from where to where.

    ``prefix`` goes into each copy's name after its type (``daq_rig_data_source``
    with prefix ``lab1`` is ``daq_lab1rig_data_source`` on the target), so
    copies keep the naming convention; a name without a type gets it in front.
    """

    origin: str  # HOST:PORT of A
    target: str  # HOST:PORT of B
    patterns: tuple[str, ...] = ("*",)
    prefix: str = ""
    poll: float = MIRROR_POLL_S
    retry: float = MIRROR_RETRY_S
    name: str = "turbine-mirror"
    #: Copy inside a broker, without a process and a socket hop of its own: ``"to"``
    #: the target (it pulls), ``"from"`` the origin (it pushes); this program asks it
    #: to and relays its reports.  ``""``: copy in this process.  (True means ``"to"``.)
    inside: str = attrs.field(
        default="",
        converter=lambda v: "to" if v is True else v or "",
        validator=attrs.validators.in_(("", "to", "from")),
    )
    #: Log in to A / B with these (None: the token a client finds, see
    #: :func:`turbine.auth.find_token`); its user needs read on A, write on B.
    origin_token: str | None = attrs.field(default=None, repr=False)
    target_token: str | None = attrs.field(default=None, repr=False)

    def target_name(self, source: str) -> str:
        return prefixed(source, self.prefix)


@attrs.define
class MirrorStats:
    """What a mirror has done since it started (all sessions)."""

    sessions: int = 0
    sources: int = 0  # copies opened on the target
    frames: int = 0  # frames sent to the target
    skipped: dict[str, str] = attrs.field(factory=dict)  # source -> why it is not copied


class Feed(Protocol):
    """One channel of ``A`` as a session reads it, from a number on."""

    async def receive_puts(self) -> list[GroupPut]:
        """The frames that came since the last call (waits for some), as puts to ``B``."""
        ...


class Reader(Protocol):
    """What a mirror session reads ``A`` through: a client of ``A``
    (:class:`Subscribed`), or ``A``'s own hub when the mirror runs inside it."""

    async def status(self) -> dict[str, Any]: ...

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]: ...

    def follow(self, path: str, start: int) -> AbstractAsyncContextManager[Feed]: ...


class Subscribed:
    """``A`` read over a socket: a subscription per channel, delivered in groups."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.status, self.list_sources = client.status, client.list_sources

    @contextlib.asynccontextmanager
    async def follow(self, path: str, start: int) -> AsyncIterator[Feed]:
        async with self.client.subscribe(
            path, start=start, groups=True, queue=MIRROR_QUEUE_BATCHES
        ) as sub:
            yield _Groups(sub)


class _Groups:
    def __init__(self, sub: Any) -> None:
        self.sub = sub

    async def receive_puts(self) -> list[GroupPut]:
        return group_puts(await self.sub.receive_batch())


class Target(Protocol):
    """What a mirror session writes through: a :class:`Client` of ``B``, or
    ``B``'s own hub when the mirror runs inside it (``turbine/_mirror_inside.py``)."""

    async def status(self) -> dict[str, Any]: ...

    async def open_mirror(
        self,
        name: str,
        channels: Mapping[str, str],
        mirror: Origin,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
    ) -> dict[str, int]: ...

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]: ...

    async def put_copy(
        self,
        source: str,
        channel: str,
        ts: list[float | None] | array.array[float],
        data: Sequence[Any],
        seqs: list[int] | range,
        writers: list[Any],
        content_type: str | None = None,
        *,
        sizes: list[int] | None = None,
    ) -> None: ...

    async def flush(self) -> None: ...


def prefixed(source: str, prefix: str) -> str:
    """``source`` with ``prefix`` after its type (``daq_rig_data_source`` -> ``daq_PREFIXrig_data_source``)."""
    if not prefix:
        return source
    kind, sep, rest = source.partition("_")
    return f"{kind}_{prefix}{rest}" if sep else f"{prefix}{source}"


def copy_puts(
    frames: Sequence[Any],
) -> Iterator[tuple[str, list[float | None], list[Any], list[int], list[Any]]]:
    """The arguments of :meth:`Client.put_copy` for ``frames`` (one channel's, in
    order, each with ``timestamp``, ``data``, ``seq``, ``writer``, ``content_type``):
    ``(content_type, timestamps, data, seqs, writers)``, one put per run of one content type.

    Columns by ``map(attrgetter)``, and runs found by ``list.count`` when there
    is one (the usual case): no Python-level step per frame.
    """
    if not frames:
        return
    ctypes, stamps, datas, seqs, writers = (
        list(map(operator.attrgetter(name), frames))
        for name in ("content_type", "timestamp", "data", "seq", "writer")
    )
    start = 0
    for end in _run_ends(ctypes):
        run_seqs = seqs[start:end]
        runs = [[run_seqs[s - start], writers[s]] for s in _run_starts(writers, start, end)]
        yield ctypes[start], stamps[start:end], datas[start:end], run_seqs, runs
        start = end


@attrs.define
class GroupPut:
    """The arguments of one :meth:`Client.put_copy` gathered from :class:`FrameGroup` records:
    frames numbered from ``first_seq`` on, one after another, of one content type."""

    content_type: str
    first_seq: int
    #: Packed as they arrive (put_copy sends them packed, no float object per frame).
    timestamps: array.array[float] = attrs.field(factory=lambda: array.array("d"))
    pieces: list[Any] = attrs.field(factory=list)
    sizes: list[int] = attrs.field(factory=list)
    writers: list[Any] = attrs.field(factory=list)

    @property
    def seqs(self) -> range:
        """The frames' numbers (put_copy sends the first alone)."""
        return range(self.first_seq, self.first_seq + len(self.sizes))


def group_puts(items: Sequence[Any]) -> list[GroupPut]:
    """One put per run of one content type and numbers one after another over the
    :class:`FrameGroup` records in ``items`` (one channel's, in order; gaps are
    skipped: the next put's first number leaves the hole).  A step per group,
    none per frame: the payloads go on uncut.
    """
    puts: list[GroupPut] = []
    put: GroupPut | None = None
    for g in items:
        if type(g) is not FrameGroup:
            continue
        if (
            put is None
            or put.content_type != g.content_type
            or put.first_seq + len(put.sizes) != g.first_seq
        ):
            put = GroupPut(g.content_type, g.first_seq)
            puts.append(put)
        put.timestamps.fromlist(g.timestamps)
        put.pieces.append(g.payload)
        put.sizes += g.sizes
        if not put.writers or put.writers[-1][1] != g.writer:
            put.writers.append([g.first_seq, g.writer])
    return puts


def _run_ends(values: list[Any]) -> list[int]:
    """Where each run of equal ``values`` ends."""
    n = len(values)
    if values.count(values[0]) == n:
        return [n]
    return [i for i in range(1, n) if values[i] != values[i - 1]] + [n]


def _run_starts(values: list[Any], start: int, end: int) -> list[int]:
    """Where each run of equal ``values[start:end]`` starts (indices into ``values``)."""
    part = values[start:end]
    if part.count(part[0]) == len(part):
        return [start]
    return [start] + [start + i for i in range(1, len(part)) if part[i] != part[i - 1]]


def origin_of(info: SourceInfo, broker: str) -> Origin:
    """Where the frames of ``info`` (a source on ``broker``) come from, as its copies record it."""
    if info.mirror is not None:
        return Origin.from_wire(info.mirror).passed(broker)
    return Origin(broker, info.name)


class ChannelWatch:
    """Which channels of the sources matching ``patterns`` are not followed yet.

    Pure: the caller lists the broker, asks :meth:`new`, and calls
    :meth:`follow` for what it started copying; a source it could not start
    stays new.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.matchers = [source_pattern(p) for p in patterns]
        self.following: dict[str, set[str]] = {}  # source -> channels followed

    def new(self, infos: list[SourceInfo]) -> list[tuple[SourceInfo, list[str]]]:
        """Each matching source with its channels not followed yet (all of a new source's)."""
        found = []
        for info in infos:
            if not any(m.match_source(info.name) for m in self.matchers):
                continue
            have = self.following.get(info.name)
            channels = [ch.name for ch in info.channels if have is None or ch.name not in have]
            if have is None or channels:
                found.append((info, channels))
        return found

    def is_followed(self, source: str) -> bool:
        return source in self.following

    def follow(self, source: str, channels: list[str]) -> None:
        self.following.setdefault(source, set()).update(channels)


async def run_mirror(
    config: MirrorConfig,
    *,
    stats: MirrorStats | None = None,
    report: Callable[[str], None] = log.info,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    target: Callable[[], AbstractAsyncContextManager[Target]] | None = None,
    origin: Callable[[], AbstractAsyncContextManager[Reader]] | None = None,
) -> None:
    """Mirror until cancelled; a lost broker is connected again every ``config.retry`` s.

    ``task_status.started()`` is called once the first session copies.
    ``target`` opens what the copies are written through (by default a
    client of ``config.target``), ``origin`` what they are read from (by
    default a client of ``config.origin``).

    Never returns.  A source the target refuses to hold (held by another
    client, not a mirror of that origin, no memory, ...) is reported through
    ``report`` and tried again at the next poll; any other failure ends the
    session, which starts again after ``config.retry`` seconds.

    Raises:
        MirrorUnsupported: with ``config.inside``, the broker asked to copy
            does not know how (said once: asking again is no use).
    """
    stats = stats if stats is not None else MirrorStats()
    status: list[trio.TaskStatus[None]] = [task_status]  # emptied once started

    def copying() -> None:
        if status:
            status.pop().started()

    def to_b() -> AbstractAsyncContextManager[Target]:
        # comes back after a lost connection: its copies wait for it and B
        # gives them to it from its lost connection (docs/protocol.rst, Transport)
        return open_client(
            config.target, name=config.name, token=config.target_token, comes_back=True
        )

    @contextlib.asynccontextmanager
    async def from_a() -> AsyncIterator[Reader]:
        async with open_client(config.origin, name=config.name, token=config.origin_token) as a:
            yield Subscribed(a)

    while True:
        stop: list[BaseException] = []
        try:
            if config.inside:
                await _ask_inside(config, stats, report, copying)
            async with (origin or from_a)() as a, (target or to_b)() as b:
                stats.sessions += 1
                await _Session(config, a, b, stats, report).run(copying)
        except* MirrorUnsupported as group:
            stop = leaves(group)  # asking again is no use
        # several copying tasks see the same lost connection: report it once
        except* (ConnectionFailed, OSError) as group:
            report(f"mirror: {leaves(group)[0]}; connecting again in {config.retry:g} s")
        except* TurbineError as group:  # a refusal the session could not place
            report(f"mirror: {leaves(group)[0]}; starting again in {config.retry:g} s")
        if stop:
            raise stop[0]
        await trio.sleep(config.retry)


async def _ask_inside(
    config: MirrorConfig,
    stats: MirrorStats,
    report: Callable[[str], None],
    copying: Callable[[], None],
) -> None:
    """Have ``B`` copy (``A`` with ``inside="from"``), and relay what it did every
    ``config.poll`` s (never returns; raises as :func:`ask_inside`)."""
    push = config.inside == "from"
    # (this program logs in where the broker copies; the broker, with the token sent, at the other)
    here, here_token, there, there_token = (
        (config.origin, config.origin_token, config.target, config.target_token)
        if push
        else (config.target, config.target_token, config.origin, config.origin_token)
    )

    def relay(done: dict[str, Any]) -> None:
        for line in done["reports"]:
            report(line)
        stats.sessions += done["sessions"]
        stats.sources += done["sources"]
        stats.frames += done["frames"]
        stats.skipped.update(done["skipped"])
        if done["copying"]:
            copying()

    ask = {
        "origin": None if push else there,
        "patterns": list(config.patterns),
        "target": there if push else None,
        "prefix": config.prefix,
        "poll": config.poll,
        "retry": config.retry,
        "token": there_token if there_token is not None else find_token(),
    }
    await ask_inside(here, here_token, config.name, config.inside, ask, config.poll, relay)


class _Session:
    """One pair of connections: copies every matching source until one breaks."""

    def __init__(
        self,
        config: MirrorConfig,
        a: Reader,
        b: Target,
        stats: MirrorStats,
        report: Callable[[str], None],
    ) -> None:
        self.config = config
        self.a, self.b = a, b
        self.stats = stats
        self.report = report
        self.watch = ChannelWatch(config.patterns)
        self.a_id = self.b_id = ""

    async def run(self, copying: Callable[[], None]) -> None:
        self.a_id = (await self.a.status())["identity"]
        self.b_id = (await self.b.status())["identity"]
        async with trio.open_nursery() as nursery:
            await self.discover(nursery)
            copying()
            while True:
                await trio.sleep(self.config.poll)
                await self.discover(nursery)
                await self.b.flush()  # a refused put is raised here

    async def discover(self, nursery: trio.Nursery) -> None:
        """Start copying every matching source and channel of A not copied yet."""
        for info, channels in self.watch.new(await self.a.list_sources("*")):
            nexts: dict[str, int] = {}
            if not self.watch.is_followed(info.name):
                opened = await self.open_copy(info)
                if opened is None:
                    continue
                nexts = opened
            self.watch.follow(info.name, channels)
            for ch in channels:
                nursery.start_soon(self.copy_channel, info.name, ch, nexts.get(ch, 1))

    async def open_copy(self, info: SourceInfo) -> dict[str, int] | None:
        """Open the copy of ``info`` on B; its channels' next numbers, or None if not copied."""
        origin = origin_of(info, self.a_id)
        target = self.config.target_name(info.name)
        if self.b_id in origin.brokers:
            self.skip(info.name, f"its frames came from the target broker ({self.b_id})")
            return None
        try:
            nexts = await self.b.open_mirror(
                target,
                {ch.name: ch.content_type for ch in info.channels},
                origin,
                cache_frames=info.cache_frames,
                cache_bytes=info.cache_bytes,
            )
        except RequestFailed as exc:
            if exc.code in ("held", "mirror", "loop", "name", "memory", "limits", "access"):
                self.skip(info.name, str(exc) + await self.hint(target, origin))
                return None
            raise
        self.stats.sources += 1
        self.report(f"mirror: copying {info.name} to {target} ({origin.describe()})")
        return nexts

    async def hint(self, target: str, origin: Origin) -> str:
        """What to do when B holds ``target`` as a copy of the same source from another broker."""
        held = [s.mirror for s in await self.b.list_sources(target) if s.name == target]
        if not held or held[0] is None:
            return ""
        have = Origin.from_wire(held[0])
        if have.source != origin.source or have.broker == origin.broker:
            return ""
        return (
            f" (broker {origin.broker} is not the broker {have.broker} the copy came from: a"
            " restarted origin without a data dir is a new broker with new numbers; the copy"
            " keeps the old frames, and the new ones need another --prefix)"
        )

    def skip(self, source: str, why: str) -> None:
        if self.stats.skipped.get(source) != why:
            self.report(f"mirror: not copying {source}: {why}")
        self.stats.skipped[source] = why

    async def copy_channel(self, source: str, channel: str, start: int) -> None:
        """Copy ``source/channel`` from number ``start`` on, as the frames arrive."""
        target = self.config.target_name(source)
        put: Callable[..., Awaitable[None]] = self.b.put_copy
        async with self.a.follow(f"{source}/{channel}", start) as feed:
            while True:
                for p in await feed.receive_puts():
                    await put(
                        target,
                        channel,
                        p.timestamps,
                        p.pieces,
                        p.seqs,
                        p.writers,
                        p.content_type,
                        sizes=p.sizes,
                    )
                    self.stats.frames += len(p.sizes)
