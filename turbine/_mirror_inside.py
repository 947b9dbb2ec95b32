"""A mirror inside a broker: the ``mirror`` request.

``turbine mirror --inside from`` asks the origin ``A`` to push its own sources
to ``B`` (the reader of ``A``'s rings is ``turbine/_mirror_origin.py``; the
rest is :func:`~turbine.mirror.run_mirror` with a client of ``B``, in the
asking connection's nursery).  ``turbine mirror --inside`` (``--inside to``)
asks the target broker ``B`` to copy from ``A`` itself: ``B`` runs :func:`turbine.mirror.run_mirror` in the asking
connection's nursery, writing through a :class:`LocalTarget`, which opens
the copies and stores their frames in ``B``'s hub as that connection's peer
would by its requests and puts (the copies are held by it, under its user's
rights).  A frame then crosses one socket (``A`` to ``B``) instead of two,
and no process of its own: at 100 KB a pull mirror's process spent about as
much CPU as ``B`` (1.5-1.9 s a GB, mostly the kernel's receiving from ``A``
and sending to ``B``), and ``B`` most of its own receiving from it.

The copying lasts as long as the connection: the program asks again every
poll, and the reply says what the mirror reported and did since it last
asked.  A lost connection ends the mirror inside with it; the program's next
connection starts it again, and it resumes where the copy stops, as any
mirror does.  The copy's guarantees are :mod:`turbine.mirror`'s: the same
session code makes it, only the target's side is in-process.
"""

from __future__ import annotations

import array
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from . import messages as m
from ._client_records import SourceInfo
from ._constants import MAX_PATTERN_CHARS, MIRROR_INSIDE_REPORTS, MIRROR_POLL_S, MIRROR_RETRY_S
from ._errors import RequestFailed
from ._mirror_origin import LocalOrigin, listed
from .checks import short
from .mirror import MirrorConfig, MirrorStats, Reader, Target, run_mirror
from .names import check_source_name, source_pattern
from .origin import Origin
from .pacing import deliver_first
from .payloads import Payloads
from .protocol import State
from .puts import check_open, untracked

if TYPE_CHECKING:
    from .auth import Access
    from .hub import Hub
    from .peer import Peer
    from .protocol import Connection
    from .router import Readable, Waker

log = logging.getLogger("turbine.mirror")

#: The address a mirror inside a broker gives that broker (its side of the copy).
HERE = "(this broker)"


class _Broker(Protocol):
    hub: Hub

    def write_ready(self) -> None: ...


class Asker(Protocol):
    """What a mirror inside the broker needs of the connection that asked for it
    (a :class:`~turbine.connection.ClientConnection`)."""

    broker: _Broker
    peer: Peer
    proto: Connection
    frames_in: int
    inside_mirror: Any

    def put_refused(self, access: Access, source: str, channel: str) -> RequestFailed: ...

    def readable(self) -> Readable | None: ...


class LocalTarget:
    """What a mirror session inside broker ``B`` writes through: ``B``'s hub, as
    the asking connection's peer (the :class:`~turbine.mirror.Target` calls a
    :class:`~turbine.client.Client` of ``B`` makes over a socket)."""

    def __init__(self, conn: Asker) -> None:
        self.conn = conn
        self.hub = conn.broker.hub
        self.opened: set[str] = set()  # the copies it opened, for the session to let go of
        #: Subscribers of B the copy's puts woke: served before the next batch
        #: is read from A, as B's reader serves them before it reads a producer again.
        self.woke: dict[Waker, None] = {}
        self.written: set[str] = set()

    async def status(self) -> dict[str, Any]:
        return {"identity": self.hub.identity}

    async def open_mirror(
        self,
        name: str,
        channels: Mapping[str, str],
        mirror: Origin,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
    ) -> dict[str, int]:
        check_open(self.conn.peer.access, name)
        src = self.hub.open_source(
            self.conn.peer,
            name,
            channels=dict(channels),
            cache_frames=cache_frames,
            cache_bytes=cache_bytes,
            mirror=mirror,
        )
        self.opened.add(src.name)
        return self.hub.next_seqs(src)

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        return listed(self.hub, pattern, self.conn.readable())

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
    ) -> None:
        """Store frames numbered ``seqs`` (a ``range``: a group put's) whose
        payloads ``data`` holds back to back, cut by ``sizes``; then let the
        subscribers they woke have them before returning.

        Raises:
            RequestFailed: refused, as a put over a socket would be.
        """
        conn = self.conn
        access = conn.peer.access
        if access is not None and not access.may_put(source):
            raise conn.put_refused(access, source, channel)
        assert sizes is not None and isinstance(seqs, range)  # group_puts's
        try:
            wakers = self.hub.put(
                conn.peer,
                source,
                channel,
                ts,
                Payloads(list(map(untracked, data)), sizes),
                content_type,
                sizes,
                first_seq=seqs.start,
                writers=writers,
            )
        except RequestFailed as exc:
            raise RequestFailed(f"put to {source}/{channel} refused: {exc}", exc.code) from None
        self.written.add(source)
        conn.frames_in += len(sizes)
        for sink in wakers:
            sink.wake_soon()
            self.woke[sink] = None
        conn.broker.write_ready()  # what wake_soon left for a reader to write, as B's readers do
        if self.woke:
            await deliver_first(self.woke, conn.broker.write_ready)
        store = self.hub.store
        if store.durable and store.behind(self.written):
            await store.caught_up(self.written)  # the disk sets the pace, as for a producer

    async def flush(self) -> None:
        """Return once the store holds every frame put so far (at once in memory)."""
        if not self.hub.store.durable:
            return
        for name in self.written:
            src = self.hub.sources.get(name)
            for ch in src.channels.values() if src is not None else ():
                await ch.store.flushed()


class InsideMirror:
    """A connection's mirror inside the broker, and what it did since last asked."""

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.stats = MirrorStats()
        self.reports: collections.deque[str] = collections.deque(maxlen=MIRROR_INSIDE_REPORTS)
        self.copying = False
        self._told = MirrorStats()  # the counters the last reply gave

    def report(self, line: str) -> None:
        log.info("%s", line)
        self.reports.append(line)

    def started(self, value: None = None) -> None:
        """(``task_status.started``: the first session copies.)"""
        self.copying = True

    async def run(self, conn: Asker, nursery: trio.Nursery) -> None:
        """Copy until ``nursery`` (the connection's) is cancelled."""

        @contextlib.asynccontextmanager
        async def local() -> AsyncIterator[Target]:
            target = LocalTarget(conn)
            try:
                yield target
            finally:
                # A session that ends lets go of its copies at once, as a client of B
                # that closes them; a lost connection keeps them for its reconnect
                # (docs/protocol.rst, Transport), one its client closed does not.
                lost = nursery.cancel_scope.cancel_called and conn.proto.state is not State.CLOSED
                if not lost:
                    for name in target.opened:
                        conn.broker.hub.release(conn.peer, name)

        @contextlib.asynccontextmanager
        async def here() -> AsyncIterator[Reader]:
            yield LocalOrigin(conn.broker.hub, conn.readable())

        push = self.config.origin == HERE
        await run_mirror(
            self.config,
            stats=self.stats,
            report=self.report,
            task_status=self,  # type: ignore[arg-type]  # (its started() is all run_mirror calls)
            target=None if push else local,
            origin=here if push else None,
        )

    def since(self) -> dict[str, Any]:
        """The reply to a ``mirror`` request: what was reported and done since the last."""
        stats, told = self.stats, self._told
        done = {
            "copying": self.copying,
            "reports": list(self.reports),
            "sessions": stats.sessions - told.sessions,
            "sources": stats.sources - told.sources,
            "frames": stats.frames - told.frames,
            "skipped": dict(stats.skipped),
        }
        self.reports.clear()
        self._told = MirrorStats(stats.sessions, stats.sources, stats.frames)
        return done


def mirror_config(msg: m.Mirror, client: str) -> MirrorConfig:
    """The mirror a ``mirror`` request asks for (``client``: the asking client's name):
    a pull from ``msg.origin``, or a push to ``msg.target``.

    Raises:
        ValueError: a pattern or a prefix that cannot be one (InvalidName).
        RequestFailed: neither or both of origin and target (``request``).
    """
    if (msg.origin is None) == (msg.target is None):
        raise RequestFailed(
            "a mirror request names the origin (this broker pulls) or the target "
            "(this broker pushes), one of them",
            "request",
        )
    for pattern in msg.patterns:
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
            raise ValueError(
                f"patterns must be strings of at most {MAX_PATTERN_CHARS} characters, "
                f"not {short(pattern)}"
            )
        source_pattern(pattern)
    if msg.prefix:
        check_source_name(msg.prefix, lenient=True)
    push = msg.target is not None
    return MirrorConfig(
        HERE if push else msg.origin,  # type: ignore[arg-type]  # (one is given)
        msg.target if push else HERE,  # type: ignore[arg-type]
        tuple(msg.patterns) or ("*",),
        msg.prefix or "",
        poll=msg.poll if msg.poll is not None and msg.poll > 0 else MIRROR_POLL_S,
        retry=msg.retry if msg.retry is not None and msg.retry > 0 else MIRROR_RETRY_S,
        name=client,
        origin_token=None if push else msg.token,
        target_token=msg.token if push else None,
    )


def on_mirror(conn: Asker, nursery: trio.Nursery, msg: m.Mirror) -> dict[str, Any]:
    """Start ``conn``'s mirror inside the broker (the first request), or say what
    the running one did since the last; the reply's result.

    Raises:
        RequestFailed: another mirror than the one this connection runs
            (``request``), or a user with no write right at all (``access``).
        ValueError: a bad pattern or prefix.
    """
    config = mirror_config(msg, conn.peer.client)
    access = conn.peer.access
    push = config.origin == HERE
    if access is not None and not (
        (access.rights.read if push else access.rights.write) or access.admin
    ):
        # (the broker connects where the request says: not for a user who could not copy)
        right = "read right on the sources copied" if push else "write right on the copies' names"
        raise RequestFailed(
            f"user {access.user!r} may not have this broker mirror: that takes the {right} "
            f"(turbine acl grant USER {'read' if push else 'write'} PATTERN)",
            "access",
        )
    running: InsideMirror | None = conn.inside_mirror
    if running is None:
        conn.inside_mirror = running = InsideMirror(config)
        nursery.start_soon(running.run, conn, nursery)
    elif running.config != config:
        raise RequestFailed(
            "this connection runs another mirror already; open a connection for each",
            "request",
        )
    return running.since()
