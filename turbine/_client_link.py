"""The connection under a :class:`~turbine.client.Client`, and its life.

Connecting (:func:`handshake`: greeting, TLS, login), giving each new
connection its read loop and request correlation, noticing its loss; with
``reconnect=True`` connecting again with capped backoff, taking back the
sources held and the subscriptions, and replaying the spool until the broker
acknowledged it.  Requests made through :meth:`Link.call` are tried again
across a reconnect.  :class:`~turbine.client.Client` adds the public API on
top (as :class:`~turbine.requests.Requests` is mixed into the broker's
connection).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from . import messages as m
from ._address import connect_stream, parse_address
from ._client_handles import Feed, Subscription
from ._client_lifeline import Lifeline
from ._client_outbox import Outbox
from ._client_reader import Reader
from ._client_requests import Requests
from ._clock import wall_time
from ._constants import (
    CLOSE_DRAIN_S,
    MAX_FRAME_BYTES,
    PAYLOAD_SLACK_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
    SPOOL_BYTES,
    SPOOL_MEMORY_BYTES,
    TLS_CA_ENVVAR,
)
from ._errors import (
    ConnectionFailed,
    LocalProtocolError,
    ProtocolError,
    TurbineError,
)
from ._io import send_buffers
from ._values import Value
from .protocol import NEED_DATA, Connection, Role

if TYPE_CHECKING:
    from ._client_flushes import Flushes
    from ._client_spool import Spool

# Loaded when first needed, not at `import turbine` (a client's start-up time):
# .auth (a broker that asks for a token), .tls (a client that speaks TLS),
# ._client_spool, ._client_flushes and ._retry (a client that reconnects).

log = logging.getLogger("turbine.client")
R = TypeVar("R", bound=m.Message)


class Link(Lifeline):
    """The connection of a :class:`~turbine.client.Client` and its life across losses."""

    def __init__(
        self,
        address: str,
        name: str,
        connect_timeout: float,
        *,
        token: str | None = None,
        reconnect: bool = False,
        spool_bytes: int = SPOOL_BYTES,
        spool_dir: str | os.PathLike[str] | None = None,
        tls_ca: Any = None,
        liveness: float | None = None,
    ) -> None:
        from ._liveness import liveness_timeout

        self.address = address
        self.reconnect = reconnect
        #: Seconds of silence while waiting after which a connection is lost (None: no check).
        self.liveness = liveness_timeout(liveness)
        self._dialer = Dialer(address, name, connect_timeout, token, tls_ca)
        #: The user this client logged in as, and its rights (None: a broker without auth).
        self.user: str | None = None
        self.rights: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._feeds: dict[int, Feed] = {}
        #: The puts not yet acknowledged (``reconnect=True`` only).
        self.spool: Spool | None = None
        if reconnect:
            from ._client_spool import Spool  # a client that does not reconnect has no spool

            directory = None if spool_dir is None else os.fspath(spool_dir)
            self.spool = Spool(spool_bytes, directory, SPOOL_MEMORY_BYTES, name)
        self._outbox = Outbox(None, address, MAX_FRAME_BYTES, self._outbox_lost, spool=self.spool)
        self._flushes: Flushes | None = None
        if self.spool is not None:
            from ._client_flushes import Flushes

            self._flushes = Flushes(
                self.spool, self._outbox, address, self._connection, self._try_again
            )
        #: open_source fields by source (reconnect=True): to reopen, and to close at the end.
        self._held: dict[str, dict[str, Any]] = {}
        #: Mirrored sources opened (open_mirror): closed at the end too.
        self._copies: set[str] = set()
        self._subs: dict[int, Subscription] = {}
        self._up = trio.Event()  # set while connected
        self._down = trio.Event()  # set when the connection was lost (reconnect=True)
        self._closed = False
        #: How often the connection was lost and made again.
        self.reconnects = 0

    def _attach(
        self, stream: trio.SocketStream, proto: Connection, hello: m.Hello, login: Any, sock: Any
    ) -> Reader:
        """Use a new connection (the first, or after a loss); returns its read loop.

        ``sock`` is the stream's socket, or its :class:`~turbine.tls.TLSSocket`."""
        if isinstance(login, m.Ok) and isinstance(login.result, dict):
            self.user = login.result.get("user")
            self.rights = login.result.get("rights")
        self.broker_software: str = hello.software
        self.max_frame: int = MAX_FRAME_BYTES if hello.max_frame is None else hello.max_frame
        # The broker announced how large a frame may be; no message it sends is
        # larger than that plus the slack of a batch (docs/protocol.rst, Framing).
        proto.max_payload = self.max_frame + PAYLOAD_SLACK_BYTES
        self._stream = stream
        self._proto = proto
        requests = self._requests = Requests(proto, self._outbox, self._ids)
        self._outbox.attach(sock, self.max_frame)
        reader = self._reader = Reader(
            sock, proto, self.address, requests, lambda e: self._lost(requests, e)
        )
        reader.feeds = self._feeds
        self._down = trio.Event()
        return reader

    def _outbox_lost(self, error: TurbineError) -> None:
        self._lost(self._requests, error)

    def _lost(self, requests: Requests, error: TurbineError, quiet: bool = False) -> None:
        """Connection ``requests`` belongs to is gone: fail (or, reconnecting, ride
        through; logged unless ``quiet``: the caller says why itself)."""
        if requests is not self._requests:
            return  # an earlier connection
        if not self.reconnect or self._closed:
            self._fail(error)
            return
        if self._down.is_set():
            return
        if not quiet:
            log.warning("%s; reconnecting", error)
        self._outbox.detach()
        self._up = trio.Event()
        self._down.set()
        requests.fail()  # callers waiting for replies try again once reconnected

    def _fail(self, error: TurbineError) -> None:
        """The connection is unusable: refuse new work and wake everything waiting on it."""
        self._outbox.fail(error)
        error = self._outbox.error or error
        self._requests.fail()
        self._up.set()  # waiters see the error
        for feed in self._feeds.values():
            feed.close(error)

    async def _run(self, reader: Reader) -> None:
        """The client's background work: the read loop and the put flusher (and reconnecting)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            nursery.start_soon(self._outbox.run_flusher)
            if self.liveness is not None:
                nursery.start_soon(self._watch, self.liveness)
            if self.reconnect:
                nursery.start_soon(self._keep_connected, nursery)
                assert self._flushes is not None
                nursery.start_soon(self._flushes.run)

    async def call(self, kind: type[m.Request], reply: type[R], **fields: Any) -> R:
        """Send a request and return its reply; reconnecting, wait for the broker and retry.

        (The :class:`Requester` a reconnecting client's sources use.)
        """
        if kind is m.Flush:
            await self.flush()
            return m.Ok(id=0)  # type: ignore[return-value]
        if kind is m.CloseSource:
            self._held.pop(fields["source"], None)
            self._outbox.empty_puts.discard(fields["source"])  # a gap there is told no more
        return (await self._call_parts(kind, reply, fields))[-1]

    async def _call_parts(
        self, kind: type[m.Request], reply: type[R], fields: dict[str, Any]
    ) -> list[R]:
        while True:
            requests = await self._connection()
            try:
                return await requests.call_parts(kind, reply, **fields)
            except (ConnectionFailed, LocalProtocolError) as exc:
                if not self._try_again(exc, requests):
                    raise

    async def _connection(self) -> Requests:
        """The connection's requests; reconnecting, once the broker is back."""
        if not self._up.is_set():
            await self._up.wait()
        return self._requests

    def _try_again(self, exc: TurbineError, requests: Requests) -> bool:
        """Whether a request that failed with ``exc`` on ``requests``' connection is tried again.

        Only reconnecting, and only for a lost link (the protocol state of a
        connection that just ended refuses to send: a LocalProtocolError).
        """
        if not self.reconnect or self._closed:
            return False
        return (
            isinstance(exc, ConnectionFailed)
            or requests is not self._requests
            or not self._up.is_set()
        )

    # The API is flush(timeout=...): the timeout raises BrokerUnavailable, not TooSlowError.
    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once the broker holds every frame this client put so far.

        Reconnecting, during an outage it waits for the broker to come back
        and acknowledge them, at most ``timeout`` seconds (None: no limit);
        while a flush covering the same puts is in flight it waits for that
        one's answer instead of sending its own.

        Raises:
            BrokerUnavailable: ``timeout`` passed first; the frames stay spooled.
            RequestFailed: the broker refused an earlier put (says which and why).
        """
        if self._flushes is None:
            await self._requests.call(m.Flush, m.Ok)
        else:
            await self._flushes.flush(timeout)

    async def aclose(self) -> None:
        """Write what was put and not yet sent (for up to 5 s), then close the connection.

        A reconnecting client (or one that ``comes_back``) closes its sources
        and mirrored sources first: the broker keeps the sources of one whose
        connection just ends for its reconnect a while, and these are free for
        another client at once.
        """
        with trio.CancelScope(shield=True):
            self._closed = True
            with trio.move_on_after(5):
                self._outbox.tell_gaps()  # no later put will carry them
                if self._outbox.has_puts and self._outbox.error is None:
                    with contextlib.suppress(TurbineError):
                        await self._outbox.send()
                if not self._down.is_set():
                    with contextlib.suppress(TurbineError):
                        for source in [*self._held, *self._copies]:
                            await self._requests.send(m.CloseSource, source=source)
            self._fail(ConnectionFailed("the client was closed"))
            if not self._down.is_set():
                await hang_up(self._stream, self._reader)
            await trio.aclose_forcefully(self._stream)
            if self.spool is not None:
                self.spool.close()


async def hang_up(stream: trio.SocketStream, reader: Reader) -> None:
    """End our direction of ``stream`` and read (and drop) what the broker still
    sends until it closes, at most ``CLOSE_DRAIN_S``: closing with its replies
    unread would reset the connection, which the broker records as lost, not as
    closed.  ``reader``, its read loop, reads on to the end (the feeds are closed)
    unless it was cancelled (a client closed by a cancel): then it is read here."""
    try:
        stream.socket.shutdown(socket.SHUT_WR)
        with trio.move_on_after(CLOSE_DRAIN_S):
            await reader.done.wait()
            while await stream.socket.recv(RECEIVE_BYTES):
                pass
    except OSError:
        pass  # gone already: nothing left to protect


class Dialer(Value):
    """Where and as whom a client connects: what each of its connections'
    :func:`handshake` is given."""

    address: str
    name: str
    connect_timeout: float
    token: str | None
    tls_ca: str | os.PathLike[str] | None

    async def dial(
        self, *, reconnect: bool = False
    ) -> tuple[trio.SocketStream, Connection, m.Hello, Any, Any]:
        """:func:`handshake` with these settings."""
        return await handshake(
            self.address,
            self.name,
            self.connect_timeout,
            self.token,
            self.tls_ca,
            reconnect=reconnect,
        )


async def handshake(
    address: str,
    name: str,
    connect_timeout: float,
    token: str | None,
    tls_ca: str | os.PathLike[str] | None,
    *,
    reconnect: bool = False,
) -> tuple[trio.SocketStream, Connection, m.Hello, Any, Any]:
    """Connect, greet and log in: the stream, its protocol state, the broker's
    hello, its answer to the login (None from a broker without auth) and the
    socket to use (a :class:`~turbine.tls.TLSSocket` under TLS).

    ``tls_ca`` (or ``TURBINE_TLS_CA``) names the CA certificate the broker's
    must be signed by; the client then speaks TLS and verifies the broker's
    certificate and name.

    Raises:
        ConnectionFailed: nothing listens there, or it is not a turbine broker.
        LoginRefused: the broker refused the token (or its absence).
    """
    ca = tls_ca if tls_ca is not None else os.environ.get(TLS_CA_ENVVAR) or None
    ctx = None
    if ca is not None:  # ssl contexts and TLS streams load only for a client that speaks TLS
        from .tls import client_context, connect_tls

        ctx = client_context(ca)
    stream = await connect_stream(address, connect_timeout)
    proto = Connection(Role.CLIENT)
    login: Any = None
    sock: Any = stream.socket
    try:
        with trio.fail_after(connect_timeout):
            if ctx is not None:
                sock = await connect_tls(stream, ctx, parse_address(address)[0], address)
            while (msg := proto.next_event()) is NEED_DATA:
                data = await sock.recv(RECEIVE_BYTES)
                if not data:
                    raise ConnectionFailed(f"{address} closed the connection before its hello")
                proto.receive_data(data)
            if isinstance(msg, m.Error):
                raise ConnectionFailed(f"{address} refused the connection: {msg.message}")
            hello = cast(m.Hello, msg)  # only a hello (or that refusal) can come first
            received = wall_time()
            if hello.auth and token is None:
                from .auth import find_token

                token = find_token()
            await send_buffers(
                sock,
                proto.send(
                    m.ClientHello(
                        protocol=PROTOCOL_VERSION,
                        name=name,
                        token=token if hello.auth else None,
                        reconnect=reconnect or None,
                        hello_received=received if hello.time is not None else None,
                        time=wall_time() if hello.time is not None else None,
                    )
                ),
            )
            if hello.auth:  # the broker answers the client_hello: ok (id 0) or a refusal
                while (login := proto.next_event()) is NEED_DATA:
                    data = await sock.recv(RECEIVE_BYTES)
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
        from .auth import LoginRefused

        await trio.aclose_forcefully(stream)
        raise LoginRefused(f"{address} refused the login: {login.message}")
    return stream, proto, hello, login, sock
