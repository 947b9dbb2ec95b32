"""The client API component authors use.

::

    async with turbine.open_client("127.0.0.1:3333") as tb:
        src = await tb.open_source("daq_rig_data_source", channels={"x": "application/octet-stream"})
        await src.put("x", b"...")
        await src.flush()

:class:`Client` is the public face; the work is done by private parts, one job
each: the write side with its put batching (``_client_outbox``), request
correlation (``_client_requests``), the read loop (``_client_reader``), and the
handles a caller gets (``_client_handles``: :class:`Source`,
:class:`Subscription`), which see only the narrow interfaces they need.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import trio

from . import messages as m
from ._address import connect_stream, fmt_address, parse_address
from ._client_handles import Feed, Source, Subscription
from ._client_outbox import Outbox
from ._client_reader import Reader
from ._client_records import ChannelInfo, Frame, Gap, SourceInfo, frames_from
from ._client_requests import Requests
from ._constants import (
    DEFAULT_ADDRESS,
    MAX_FRAME_BYTES,
    PAYLOAD_SLACK_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
)
from ._errors import ConnectionFailed, LocalProtocolError, ProtocolError, TurbineError, unwrap
from ._io import send_buffers
from .auth import LoginRefused, find_token
from .names import compile_pattern, split_path
from .origin import Origin
from .protocol import NEED_DATA, Connection, Role, encode_message
from .router import check_start


class Client:
    """A connection to a broker.  Create with :func:`open_client`."""

    def __init__(
        self, stream: trio.SocketStream, proto: Connection, address: str, hello: m.Hello
    ) -> None:
        self.address = address
        self.broker_software: str = hello.software
        self.max_frame: int = MAX_FRAME_BYTES if hello.max_frame is None else hello.max_frame
        #: The user this client logged in as, and its rights (None: a broker without auth).
        self.user: str | None = None
        self.rights: dict[str, Any] | None = None
        self._stream = stream
        self._proto = proto
        self._outbox = Outbox(stream.socket, address, self.max_frame, self._fail)
        self._requests = Requests(proto, self._outbox)
        self._reader = Reader(stream.socket, proto, address, self._requests, self._fail)

    def _fail(self, error: TurbineError) -> None:
        """The connection is unusable: refuse new work and wake everything waiting on it."""
        self._outbox.fail(error)
        error = self._outbox.error or error
        self._requests.fail()
        for feed in self._reader.feeds.values():
            feed.close(error)

    async def _run(self) -> None:
        """The client's background work: the read loop and the put flusher."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader.run)
            nursery.start_soon(self._outbox.run_flusher)

    # --- the public API

    async def open_source(
        self,
        name: str,
        channels: Mapping[str, str] | None = None,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
        shared: bool | None = None,
    ) -> Source:
        """Create (or take back) source ``name`` with its channels and ring limits.

        ``channels`` maps channel names to content types.  A ``shared`` source
        accepts puts from every client.  Reopening a source continues its
        sequence numbers; limits left as ``None`` keep the source's current
        ones (a new source gets the broker's defaults).  A mirrored source is
        opened with :meth:`open_mirror` instead.

        Raises:
            RequestFailed: invalid name, held by another client (named in the
                message), or not enough broker memory left (says how much is).
        """
        channels = dict(channels or {})
        await self._requests.call(
            m.OpenSource,
            m.Ok,
            source=name,
            channels=channels,
            cache_frames=cache_frames,
            cache_bytes=cache_bytes,
            shared=shared,
        )
        return Source(name, channels, self._outbox, self._requests)

    async def open_mirror(
        self,
        name: str,
        channels: Mapping[str, str],
        mirror: Origin,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
    ) -> dict[str, int]:
        """Open mirrored source ``name`` (a copy of ``mirror``'s frames, written
        with :meth:`put_copy`); return the next number of each channel it has.

        Raises:
            RequestFailed: as :meth:`open_source`; code ``mirror`` when the
                source exists and is not a mirror of that origin, ``loop``
                when the frames came from this broker.
        """
        reply = await self._requests.call(
            m.OpenSource,
            m.Ok,
            source=name,
            channels=dict(channels),
            cache_frames=cache_frames,
            cache_bytes=cache_bytes,
            mirror=mirror.to_wire(),
        )
        return dict(reply.result["channels"])

    async def put_copy(
        self,
        source: str,
        channel: str,
        ts: list[float | None],
        data: Sequence[Any],
        seqs: list[int],
        writers: list[Any],
        content_type: str | None = None,
    ) -> None:
        """Put frames to a mirrored source under the origin's numbers and writers.

        Written at once, after the puts queued before; a refusal is raised by
        the next request (as for every put).

        Raises:
            TurbineError: the connection failed.
        """
        put = m.Put(
            source=source,
            channel=channel,
            ts=ts,
            sizes=list(map(len, data)),
            content_type=content_type,
            seqs=seqs,
            writers=writers,
        )
        await self._outbox.send(encode_message(put, list(data)))

    async def put(
        self, path: str, data: bytes | bytearray | memoryview, *, timestamp: float | None = None
    ) -> None:
        """Put one frame on ``SOURCE/CHANNEL`` (a shared source, or one this client holds).

        Returns once the broker holds it.

        Raises:
            RequestFailed: no such source, or it is not shared.
        """
        source, channel = split_path(path)
        if self._outbox.queue(source, channel, data, timestamp):
            await self._outbox.send()
        await self.flush()

    async def flush(self) -> None:
        """Return once the broker holds every frame this client put so far."""
        await self._requests.call(m.Flush, m.Ok)

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
        parts = await self._requests.call_parts(
            m.Fetch,
            m.Frames,
            pattern=pattern,
            newest=newest,
            oldest=oldest,
            start=start,
            duration=duration,
            after=after,
        )
        frames: list[Frame] = []
        for part in parts:
            frames += frames_from(part.groups, part.payload)
        return frames

    @contextlib.asynccontextmanager
    async def subscribe(
        self, pattern: str, *, start: str | int = "now", monitor: bool = False
    ) -> AsyncIterator[Subscription]:
        """Every frame of every channel matching ``pattern``, in order per channel.

        ``start`` is ``"now"``, ``"newest"``, ``"oldest"`` or a sequence
        number; channels that appear later are read from their first frame.
        """
        compile_pattern(pattern)
        check_start(start)
        sid = self._requests.next_id()
        feed = self._reader.feeds[sid] = Feed()
        sub = Subscription(sid, pattern, start, monitor, feed)
        try:
            msg = await self._requests.call(
                m.Subscribe, m.Ok, sub=sid, pattern=pattern, start=start, monitor=monitor
            )
            sub.channels = msg.result["channels"]
            yield sub
        finally:
            del self._reader.feeds[sid]
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

    def monitor(self, pattern: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """The newest frame of each matching channel, skipping what the reader was too slow for."""
        return self.subscribe(pattern, start="newest", monitor=True)

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        """Sources whose names match ``pattern``, with channels and newest metadata."""
        msg = await self._requests.call(m.ListSources, m.Ok, pattern=pattern)
        return [SourceInfo.from_dict(d) for d in msg.result]

    async def status(self) -> dict[str, Any]:
        """The broker's status: version, uptime, memory, clients, recent closes."""
        return (await self._requests.call(m.Status, m.Ok)).result

    async def delete(self, source: str) -> None:
        """Delete a source and its frames.

        Raises:
            RequestFailed: no such source, or another client holds it.
        """
        await self._requests.call(m.Delete, m.Ok, source=source)

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

    async def aclose(self) -> None:
        """Write what was put and not yet sent (for up to 5 s), then close the connection."""
        with trio.CancelScope(shield=True):
            if self._outbox.has_puts and self._outbox.error is None:
                with trio.move_on_after(5), contextlib.suppress(TurbineError):
                    await self._outbox.send()
            self._fail(ConnectionFailed("the client was closed"))
            await trio.aclose_forcefully(self._stream)


@contextlib.asynccontextmanager
async def open_client(
    address: str = DEFAULT_ADDRESS,
    *,
    name: str = "client",
    connect_timeout: float = 10.0,
    token: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to the broker at ``HOST:PORT`` and hold the connection open.

    ``token`` logs in to a broker that checks tokens; without one the
    client uses :func:`turbine.auth.find_token` (``TURBINE_TOKEN``, the file
    ``TURBINE_TOKEN_FILE`` names, or ``~/.config/turbine/token``).  A token
    is sent only to a broker whose hello asks for one.

    Raises:
        ConnectionFailed: nothing listens there, or it is not a turbine broker.
        LoginRefused: the broker refused the token (or its absence).
        AuthError: a token file that is named but cannot be read.
    """
    stream = await connect_stream(address)
    proto = Connection(Role.CLIENT)
    login: Any = None
    try:
        with trio.fail_after(connect_timeout):
            while (msg := proto.next_event()) is NEED_DATA:
                proto.receive_data(await stream.receive_some(RECEIVE_BYTES))
            hello = cast(m.Hello, msg)  # only a hello can come first
            if hello.auth and token is None:
                token = find_token()
            await send_buffers(
                stream.socket,
                proto.send(
                    m.ClientHello(
                        protocol=PROTOCOL_VERSION, name=name, token=token if hello.auth else None
                    )
                ),
            )
            if hello.auth:  # the broker answers the client_hello: ok (id 0) or a refusal
                while (login := proto.next_event()) is NEED_DATA:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise ConnectionFailed(f"{address} closed the connection at login")
                    proto.receive_data(data)
    except (trio.TooSlowError, ProtocolError, OSError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        why = "it did not greet us in time" if isinstance(exc, trio.TooSlowError) else str(exc)
        raise ConnectionFailed(f"{address} does not speak the turbine protocol: {why}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if isinstance(login, m.Error):
        await trio.aclose_forcefully(stream)
        raise LoginRefused(f"{address} refused the login: {login.message}")
    client = Client(stream, proto, address, hello)
    if isinstance(login, m.Ok) and isinstance(login.result, dict):
        client.user = login.result.get("user")
        client.rights = login.result.get("rights")
    # The broker announced how large a frame may be; no message it sends is
    # larger than that plus the slack of a batch (docs/protocol.rst, Framing).
    proto.max_payload = client.max_frame + PAYLOAD_SLACK_BYTES
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
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
