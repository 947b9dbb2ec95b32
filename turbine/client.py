"""The client API component authors use.

::

    async with turbine.open_client("127.0.0.1:3333") as tb:
        src = await tb.open_source("daq_rig_data_source", channels={"x": "application/octet-stream"})
        await src.put("x", b"...")
        await src.flush()

:class:`Client` is the public face: the reading and broker calls here, the
writing ones (``open_source``, ``put``, ``open_mirror``, ``put_copy``) in
``_client_writes``.  The work is done by private parts, one job each: the
connection and its life across losses (``_client_link``: the handshake,
attaching a new connection, reconnecting, requests tried again, flush,
close), the write side with its put batching (``_client_outbox``),
request correlation (``_client_requests``), the read loop
(``_client_reader``), and the handles a caller gets (``_client_handles``:
:class:`Source`, :class:`Subscription`), which see only the narrow interfaces
they need.

``open_client(address, reconnect=True)`` rides through a lost connection: it
reconnects with capped backoff, opens the sources it held again, resumes
every subscription where it stopped, and keeps puts in a spool
(``_client_spool``) until the broker acknowledged them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import trio

from . import messages as m
from ._address import fmt_address, parse_address
from ._client_handles import Feed, Source, Subscription
from ._client_records import (
    ChannelInfo,
    Frame,
    FrameGroup,
    Gap,
    SourceInfo,
    frames_from,
    groups_from,
    iter_frames,
)
from ._client_writes import Writes
from ._clock import clock_offset, wall_time
from ._constants import DEFAULT_ADDRESS, SPOOL_BYTES
from ._errors import LocalProtocolError, TurbineError, unwrap
from ._selections import check_start
from ._values import Value
from .names import compile_pattern


class ClockReading(Value):
    """The broker's clock against this machine's (:meth:`Client.time`)."""

    #: The broker's clock in the best exchange, and ours when its answer arrived.
    broker_time: float
    local_time: float
    #: The broker's clock minus ours, seconds; within +- round_trip / 2.
    offset: float
    round_trip: float
    exchanges: int


class Client(Writes):
    """A connection to a broker.  Create with :func:`open_client`."""

    async def fetch(
        self,
        pattern: str,
        *,
        newest: int | None = None,
        oldest: int | None = None,
        start: float | None = None,
        duration: float | None = None,
        after: int | None = None,
    ) -> list[Frame]:
        """Frames the broker holds now for a path or pattern.

        Choose exactly one: the ``newest`` or ``oldest`` N per channel, a time
        range from ``start`` lasting ``duration`` seconds, or every frame
        ``after`` a sequence number.

        Raises:
            RequestFailed: no selection, or more than one.
        """
        if duration is not None and math.isinf(duration):
            duration = None
        compile_pattern(pattern)
        fields = {
            "pattern": pattern,
            "newest": newest,
            "oldest": oldest,
            "start": start,
            "duration": duration,
            "after": after,
        }
        parts = await self._call_parts(m.Fetch, m.Frames, fields)
        frames: list[Frame] = []
        for part in parts:
            frames += frames_from(part.groups, part.payload)
        return frames

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        pattern: str,
        *,
        start: str | int = "now",
        monitor: bool = False,
        max_rate: float | None = None,
        groups: bool = False,
        queue: int | None = None,
    ) -> AsyncIterator[Subscription]:
        """Every frame of every channel matching ``pattern``, in order per channel.

        ``start`` is ``"now"``, ``"newest"``, ``"oldest"`` or a sequence
        number; channels that appear later are read from their first frame.
        ``monitor``: only the newest frame of each channel, skipping what the
        reader was too slow for; ``max_rate`` (with ``monitor``): at most that
        many frames per second per channel, each the newest when sent.
        ``groups``: deliver :class:`FrameGroup` columns (frames of one channel
        and writer numbered one after another) instead of a :class:`Frame` each.
        ``queue``: deliveries held for a reader behind (each at most 1 MiB, or
        one larger frame; None: 64); when full, the client stops reading the socket.

        Raises:
            RequestFailed: ``max_rate`` not above 0, or without ``monitor``.
        """
        compile_pattern(pattern)
        check_start(start)
        sid = next(self._ids)
        feed = self._feeds[sid] = Feed(
            positions={} if self.reconnect else None,
            unpack=groups_from if groups else iter_frames,
            wait=lambda feed: self._reader.receive_for(feed),  # reads the socket itself
            queue=queue,
        )
        sub = Subscription(sid, pattern, start, monitor, feed, max_rate)
        try:
            fields = {
                "sub": sid,
                "pattern": pattern,
                "start": start,
                "monitor": monitor,
                "max_rate": max_rate,
            }
            msg = (await self._call_parts(m.Subscribe, m.Ok, fields))[-1]
            sub.channels = msg.result["channels"]
            if feed.positions is not None:
                # Where each channel started; frames received move it on.
                for path, seq in (msg.result.get("next") or {}).items():
                    feed.positions.setdefault(path, seq)
                self._subs[sid] = sub
            yield sub
        finally:
            del self._feeds[sid]
            self._subs.pop(sid, None)
            feed.close()
            if self._outbox.error is None:
                # Tell the broker, but do not wait for its answer: the reader
                # may be cancelled already, and the reply is ignored anyway.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(1),
                    contextlib.suppress(TurbineError),
                ):
                    bye = m.Unsubscribe(id=self._requests.next_id(), sub=sid)
                    await self._outbox.send(self._proto.send(bye))

    def monitor(
        self, pattern: str, *, max_rate: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """The newest frame of each matching channel, skipping what the reader was too
        slow for; with ``max_rate``, at most that many per second per channel (the
        broker sends the newest when the interval is over, so nothing else crosses
        the network: a thumbnailer's or a viewer's way to watch a camera)."""
        return self.subscribe(pattern, start="newest", monitor=True, max_rate=max_rate)

    async def summarize(
        self, pattern: str, *, start: float, duration: float, columns: int = 1000
    ) -> list[dict[str, Any]]:
        """Block summaries of the numeric channels matching ``pattern`` in
        ``start <= t < start + duration``, merged into at most ``columns`` time columns.

        One dict per channel: ``source``, ``channel``, ``since`` (the oldest time
        summarized: the broker summarizes frames as they are put and archives the
        summaries with them; None when it has none), ``blocks`` (summaries in
        the range) and ``columns``, each ``[t0, t1, samples, min, max, first, last]``
        (``t0``/``t1``: the first and last frame's timestamps), oldest first.  What
        a plot of a long range reads instead of every sample (docs/protocol.rst).

        Raises:
            RequestFailed: ``duration`` not above 0, or ``columns`` out of range.
        """
        fields = {"pattern": pattern, "start": start, "duration": duration, "columns": columns}
        msg = (await self._call_parts(m.Summarize, m.Ok, fields))[-1]
        return cast(list[dict[str, Any]], msg.result)

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        """Sources whose names match ``pattern``, with channels and newest metadata."""
        msg = (await self._call_parts(m.ListSources, m.Ok, {"pattern": pattern}))[-1]
        return [SourceInfo.from_dict(d) for d in msg.result]

    async def status(self) -> dict[str, Any]:
        """The broker's status: version, uptime, memory, clients, recent closes."""
        return (await self._call_parts(m.Status, m.Ok, {}))[-1].result

    async def delete(self, source: str) -> int:
        """Delete a source and its frames (its disk archive too); return the bytes freed.

        Raises:
            RequestFailed: no such source, or another client holds it.
        """
        self._held.pop(source, None)
        self._copies.discard(source)
        result = (await self._call_parts(m.Delete, m.Ok, {"source": source}))[-1].result
        # a broker older than the freed count answers nil
        return int(result["freed"]) if isinstance(result, dict) else 0

    async def acl(
        self,
        action: str = "show",
        user: str | None = None,
        right: str | None = None,
        pattern: str | None = None,
    ) -> dict[str, Any]:
        """Show the protections (``action`` "show": every user's for an admin,
        else the caller's own) or change one ("grant"/"revoke" ``right`` on
        ``pattern`` for ``user``; admin only, at once, live subscriptions
        included).  Returns ``{user: rights}`` as they are now.

        Raises:
            RequestFailed: not an admin, no such user or right, or a broker without auth.
        """
        msg = await self._requests.call(
            m.Acl, m.Ok, action=action, user=user, right=right, pattern=pattern
        )
        return cast(dict[str, Any], msg.result)

    async def mirror_inside(
        self,
        origin: str | None,
        patterns: list[str],
        *,
        target: str | None = None,
        prefix: str = "",
        poll: float | None = None,
        retry: float | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Have the broker copy ``patterns`` from ``origin`` itself while this
        connection lasts (``turbine/_mirror_inside.py``); asked again, it says
        what its mirror did since (the same arguments, else it refuses).  With
        ``target`` (and ``origin`` None) it pushes its own sources there instead.

        Raises:
            ConnectionFailed: a broker without inside mirrors (it closes the
                connection on a request it does not know).
            RequestFailed: other arguments than its running mirror's.
        """
        msg = await self._requests.call(
            m.Mirror,
            m.Ok,
            origin=origin,
            target=target,
            patterns=patterns,
            prefix=prefix or None,
            poll=poll,
            retry=retry,
            token=token,
        )
        return cast(dict[str, Any], msg.result)

    async def time(self, exchanges: int = 8) -> ClockReading:
        """The broker's clock against ours, by NTP's method over ``exchanges``
        round trips: the exchange with the shortest round trip gives the offset
        (it is off by at most half that round trip)."""
        best: ClockReading | None = None
        for _ in range(exchanges):
            sent = wall_time()
            msg = await self._requests.call(m.Time, m.Ok)
            back = wall_time()
            broker = float(msg.result["time"])
            offset, rtt = clock_offset(sent, broker, broker, back)
            if best is None or rtt < best.round_trip:
                best = ClockReading(broker, back, offset, rtt, exchanges)
        assert best is not None
        return best


@contextlib.asynccontextmanager
async def open_client(
    address: str = DEFAULT_ADDRESS,
    *,
    name: str = "client",
    connect_timeout: float = 10.0,
    token: str | None = None,
    reconnect: bool = False,
    spool_bytes: int = SPOOL_BYTES,
    spool_dir: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    liveness: float | None = None,
    comes_back: bool = False,
) -> AsyncIterator[Client]:
    """Connect to the broker at ``HOST:PORT`` and hold the connection open.

    ``token`` logs in to a broker that checks tokens; without one the
    client uses :func:`turbine.auth.find_token` (``TURBINE_TOKEN``, the file
    ``TURBINE_TOKEN_FILE`` names, or ``~/.config/turbine/token``).  A token
    is sent only to a broker whose hello asks for one.

    Without ``reconnect`` a lost connection fails every later call with
    :class:`ConnectionFailed`.  With ``reconnect=True`` the client connects
    again (capped backoff), takes back the sources it held, resumes each
    subscription from the first frame it had not received (a :class:`Gap`
    where the broker no longer holds it; a monitor with the newest frame),
    and keeps every put in a spool of at most ``spool_bytes`` until the
    broker acknowledged it, replaying it after a reconnect (the broker stores
    a put once).  A full spool drops its oldest puts; frames dropped before
    they were ever sent reach readers as one gap per channel, with the
    count and time span of what was dropped.  With ``spool_dir``, past
    ``SPOOL_MEMORY_BYTES`` (8 MiB) of frames the spool goes on in a file
    there (``NAME-PID.spool``, each put synced to disk in a worker thread
    before it counts as spooled), still bounded by ``spool_bytes``; the file
    is removed when the client closes.  Spool files that an earlier client
    of the same ``name`` left there (its process ended without closing it)
    are replayed: each put, with its original producer, number and
    timestamps, once this client opens its source again, before the puts
    this client makes there (the broker stores each once).

    ``tls_ca`` (or ``TURBINE_TLS_CA``) names the CA certificate the broker's
    must be signed by; the client then speaks TLS and verifies the broker's
    certificate and name.

    A connection that waits for something (a subscription, a reply, TCP's
    acknowledgement of what it sent) and from which the kernel heard nothing for half of ``liveness`` seconds is
    pinged; silent for ``liveness`` seconds, it is lost (a link cut with no
    word, a pulled cable), and with ``reconnect`` connected again, a fresh
    connect tried at least every second and a half.  None takes
    ``TURBINE_LIVENESS`` or 4 s; 0 turns the check off (Linux only: elsewhere
    it is off).  Connecting gives up after ``connect_timeout`` seconds.

    ``comes_back=True`` tells the broker, as ``reconnect=True`` does, that
    this program connects again when the connection is lost, though this
    client does not: for a program that opens a new client then (a mirror).
    Its sources then wait for a client of its name for 10 s after a lost
    connection, and one of its name gets them from its lost connection from
    another host still open at the broker (docs/protocol.rst, Transport).
    Closed (its program stopping), it lets go of them and of its mirrored
    sources at once.

    Raises:
        ConnectionFailed: nothing listens there, or it is not a turbine broker
            (also with ``reconnect=True``: the first connection must succeed).
        LoginRefused: the broker refused the token (or its absence).
        AuthError: a token file that is named but cannot be read.
    """
    client = Client(
        address,
        name,
        connect_timeout,
        token=token,
        reconnect=reconnect,
        spool_bytes=spool_bytes,
        spool_dir=spool_dir,
        tls_ca=tls_ca,
        liveness=liveness,
    )
    stream, proto, hello, login, sock = await client._dialer.dial(reconnect=reconnect or comes_back)
    try:  # a cancel before the client runs must not leave its socket open
        if client.spool is not None and client.spool.left.paths():
            from ._blocking import run_blocking

            await run_blocking(client.spool.left.recover)
        reader = client._attach(stream, proto, hello, login, sock)
        await client._outbox.replay()  # nothing to replay yet: puts flow
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    client._up.set()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run, reader)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The background tasks never raise, so a group holds what the caller's
        # own code raised: give it back unwrapped.
        inner = unwrap(group)
        if inner is not group:
            raise inner from None
        raise


__all__ = [
    "ChannelInfo",
    "Client",
    "Frame",
    "FrameGroup",
    "Gap",
    "LocalProtocolError",
    "Source",
    "SourceInfo",
    "Subscription",
    "fmt_address",
    "frames_from",
    "open_client",
    "parse_address",
]
