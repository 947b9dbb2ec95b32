"""The broker: moves bytes between sockets and the :class:`~turbine.hub.Hub`.

One nursery per connection (:class:`~turbine.connection.ClientConnection`):
its reader reads and applies requests in order; a writer task sends replies
and pulls subscribed frames from the rings.  The reader never waits on a
subscriber: delivery is pulled by each connection's own writer, so a slow
client only lets its own cursors fall behind.
"""

from __future__ import annotations

import collections
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from . import _descriptors
from . import messages as m
from ._constants import (
    CLOSE_DRAIN_S,
    CLOSED_HISTORY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FULL_COLLECT_MIN_CLOSES,
    FULL_COLLECT_SHARE,
    LAST_WORDS_S,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    MAX_RECEIVE_MEMORY_BYTES,
    MESSAGE_TIMEOUT_S,
    PROTOCOL_VERSION,
    SOURCE_TYPES,
    TLS_SNIFF_S,
    TRIM_INTERVAL_S,
    WRITE_TIMEOUT_S,
)
from ._constants import (
    VERSION as __version__,
)
from ._errors import RemoteProtocolError, TurbineError, leaves
from ._io import send_buffers
from ._keepalive import RemoteLiveness
from ._memory import reap, reaping, trim
from .audit import Audit
from .auth import Access, AuthTable, FailureDelays, LoginRefused, is_loopback
from .closed import Closed, CloseReason, WriteTimeout
from .connection import ClientConnection
from .hub import Hub
from .protocol import ReceiveBudget, encode_message
from .ringbuffer import memory_store
from .sender import Sender
from .settings import settings_dict
from .store import StoreFactory
from .tls import TLSError, TLSSocket, accept_tls, sniff_tls

log = logging.getLogger("turbine.server")


@attrs.frozen
class BrokerConfig:
    """How a broker runs; every field has the documented default."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_memory: int = MAX_MEMORY_BYTES
    max_frame: int = MAX_FRAME_BYTES
    lenient_names: bool = False
    types: tuple[str, ...] = SOURCE_TYPES
    write_timeout: float = WRITE_TIMEOUT_S
    #: A message partly received this long (or no client_hello) closes the connection.
    message_timeout: float = MESSAGE_TIMEOUT_S
    #: What all connections' partial large messages may hold together.
    receive_memory: int = MAX_RECEIVE_MEMORY_BYTES
    #: Makes each channel's store (see turbine/store.py); memory rings by default.
    store: StoreFactory = memory_store
    #: Seconds since the epoch: frame stamps, status, closes (injected for tests).
    clock: Callable[[], float] = time.time
    #: This broker's identity (``turbine/origin.py``): a fresh one per process when None.
    identity: str | None = None
    #: Users and rights (turbine/auth.py); None: no tokens, everyone may do everything.
    auth: AuthTable | None = None
    #: Listen on a non-loopback address without ``auth`` anyway.
    insecure: bool = False
    #: Speak TLS with this context (turbine/tls.py server_context); None: plain TCP.
    tls: ssl.SSLContext | None = None
    #: How a client on another host gone silently is found out (TCP keepalive) and
    #: when the sources it held go to its reconnect (turbine/_liveness.py).
    remote: RemoteLiveness = RemoteLiveness()


#: What a client refused for want of file descriptors is told (code ``capacity``).
FULL_MESSAGE = (
    "the broker is out of file descriptors (its limit is in turbine status, files); "
    "try again when some connections have closed"
)


class InsecureListen(TurbineError):
    """A broker without auth was asked to listen where other machines reach it."""


class Broker:
    """A broker's state and its connections."""

    def __init__(self, config: BrokerConfig = BrokerConfig()) -> None:
        self.config = config
        self.clock = config.clock
        self.hub = Hub(
            clock=config.clock,
            max_memory=config.max_memory,
            max_frame=config.max_frame,
            lenient_names=config.lenient_names,
            # the audit trail's source is of type turbine (turbine/audit.py)
            types=config.types + ("turbine",) if config.auth is not None else config.types,
            store=config.store,
            identity=config.identity,
        )
        #: With auth: who did what, on the broker's own log source.
        self.audit: Audit | None = None
        if config.auth is not None:
            self.audit = Audit(self.hub, config.clock)
            self.audit.open()
        self.started = self.clock()
        self.connections: dict[int, ClientConnection] = {}
        #: Connections with frames to send, written by the reader that filled
        #: them before it next waits (see ClientConnection.wake_soon).
        self.ready: dict[Sender, None] = {}  # an ordered set: first filled, first written
        self.closed: collections.deque[Closed] = collections.deque(maxlen=CLOSED_HISTORY)
        self._ids = itertools.count(1)
        self.slow_events = 0  # of every connection, closed ones too
        self._closed_some = trio.Event()
        #: Closes and deletes since the trimmer's last full collection.
        self._closed_since_full = 0
        self._deleted_since_full = False
        self._room = trio.Event()  # set when receive budget comes back
        self.receive_budget = ReceiveBudget(config.receive_memory, lambda: self._room.set())
        self.auth = config.auth
        self.failures = FailureDelays()
        self.acceptor = _descriptors.Acceptor(
            b"".join(encode_message(m.Error(id=None, code="capacity", message=FULL_MESSAGE))),
            lambda address: self.closed.append(
                Closed(
                    f"client ({address})", CloseReason.CAPACITY_REFUSED, FULL_MESSAGE, self.clock()
                )
            ),
        )

    async def receive_room(self) -> None:
        """Wait until some connection gives back receive budget (called right
        after the budget had none: nothing can have come back in between)."""
        self._room = trio.Event()
        await self._room.wait()

    def trim_soon(self, *, closed: bool = False) -> None:
        """A connection ``closed`` or a source was deleted: the memory they held
        goes back to the system (:meth:`trimmer`)."""
        if closed:
            self._closed_since_full += 1
        else:
            self._deleted_since_full = True
        self._closed_some.set()

    async def trimmer(self) -> None:
        """Give freed memory back to the system after connections close or
        sources are deleted, at most once per TRIM_INTERVAL_S (a burst of hostile connections must not
        leave the broker at its peak RSS); a full collection only as often as
        FULL_COLLECT_SHARE and FULL_COLLECT_MIN_CLOSES say, so a close costs the
        same however many connections are held and however many frames.  What a
        deleted source's rings held is freed a slice a step (``reap``)."""
        with reaping(lambda: self._closed_some.set()):
            while True:
                await self._closed_some.wait()
                self._closed_some = trio.Event()
                share = max(FULL_COLLECT_SHARE * len(self.connections), FULL_COLLECT_MIN_CLOSES)
                full = self._deleted_since_full or self._closed_since_full >= share
                if full:
                    self._closed_since_full, self._deleted_since_full = 0, False
                trim(full=full)
                while reap():
                    await trio.lowlevel.checkpoint()
                await trio.sleep(TRIM_INTERVAL_S)

    def set_auth(self, table: AuthTable) -> None:
        """Take changed protections at once: every connection of a changed user
        gets its new rights; a subscription that reads a source its user may no
        longer read ends with an ``access`` error saying so, one that may now
        read more is attached to it."""
        self.auth = table
        everything = self.hub.channels("*/*")
        for conn in list(self.connections.values()):
            access = conn.peer.access
            user = None if access is None else table.users.get(access.user)
            if access is None or user is None or user.rights == access.rights:
                continue
            access.update(user.rights)
            for sid, sub in list(conn.subs.items()):
                lost = sorted(
                    {ch.source_name for ch in sub.cursors if not access.may_read(ch.source_name)}
                )
                if not lost:
                    self.hub.router.attach_more(sub, everything)
                    continue
                self.hub.router.remove(sub)
                del conn.subs[sid]
                conn.queue(
                    m.Error(
                        sub=sid,
                        code="access",
                        message=f"subscription {sid} ({sub.pattern}) ended: user {access.user!r} "
                        f"may no longer read {', '.join(lost)} (turbine acl revoke)",
                    )
                )
            conn.wake_soon()
        self.write_ready()

    def write_ready(self) -> None:
        ready, self.ready = self.ready, {}
        for conn in ready:
            conn.write_now()

    def status(self, viewer: Access | None = None) -> dict[str, Any]:
        """The broker's state; a ``viewer`` who is no admin sees only its own connections."""
        now = self.clock()
        clients = [
            c
            for c in self.connections.values()
            if viewer is None or viewer.admin or c.peer.access is viewer
        ]
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "identity": self.hub.identity,
            "uptime": now - self.started,
            "time": now,
            "memory": {
                "used": self.hub.used,
                "reserved": self.hub.reserved,
                "limit": self.hub.max_memory,
            },
            "disk": self.hub.store.statistics(),  # None without a data dir
            "sources": len(self.hub.sources),
            "files": {"limit": _descriptors.limit(), "refused": self.acceptor.refused},
            "remote": settings_dict(self.config.remote),
            "clients": [c.info() for c in clients],
            "slow_events": self.slow_events,
            "closed": [c.info() for c in self.closed] if viewer is None or viewer.admin else [],
        }

    async def _tls(self, stream: trio.SocketStream) -> TLSSocket:
        """The TLS side of a new connection; a plain client is told to use TLS.

        Raises:
            TLSError: plain bytes (or none) at first, or the handshake failed.
        """
        assert self.config.tls is not None
        if not await sniff_tls(stream, TLS_SNIFF_S):
            why = (
                "this broker speaks TLS only: connect with TLS, trusting the broker's "
                "CA certificate (--tls-ca FILE or TURBINE_TLS_CA)"
            )
            with trio.move_on_after(LAST_WORDS_S):
                await send_buffers(
                    stream.socket, encode_message(m.Error(id=None, code="tls", message=why))
                )
            raise TLSError("a plain connection at the TLS port (told to use TLS)")
        return await accept_tls(stream, self.config.tls, self.config.message_timeout)

    async def handle(self, stream: trio.SocketStream) -> None:
        tls = None
        if self.config.tls is not None:
            try:
                tls = await self._tls(stream)
            except (TLSError, OSError, trio.BrokenResourceError) as exc:
                try:
                    host, port = stream.socket.getpeername()[:2]
                    who = f"client ({host}:{port})"
                except OSError:
                    who = "client (?)"
                self.closed.append(Closed(who, CloseReason.TLS_REFUSED, str(exc), self.clock()))
                await trio.aclose_forcefully(stream)
                return
        conn = ClientConnection(self, stream, next(self._ids), tls)
        self.connections[conn.id] = conn
        code, reason = CloseReason.CLIENT_CLOSED, "client closed the connection"
        drain = False  # the last words went out: let them arrive before closing
        ended = False  # the client ended its stream between messages
        try:
            async with trio.open_nursery() as nursery:
                conn.reads.nursery = nursery
                nursery.start_soon(conn.writer)
                try:
                    await conn.reader()
                    # The client ended its stream: answer what it sent before (a
                    # client may half-close and read on), then hang up.
                    ended = True
                    conn.last_words([])
                    with trio.move_on_after(LAST_WORDS_S):
                        await conn.finished.wait()
                except (RemoteProtocolError, LoginRefused) as exc:
                    if isinstance(exc, LoginRefused):
                        code, reason, wire = (
                            CloseReason.AUTH_REFUSED,
                            f"login refused: {exc}",
                            "auth",
                        )
                    else:
                        code, reason, wire = (
                            CloseReason.PROTOCOL_ERROR,
                            f"protocol error: {exc}",
                            "protocol",
                        )
                    # Say why, after whatever is already queued, then hang up.
                    conn.last_words(encode_message(m.Error(id=None, code=wire, message=str(exc))))
                    with trio.move_on_after(LAST_WORDS_S):
                        await conn.finished.wait()
                    drain = conn.finished.is_set()
                nursery.cancel_scope.cancel()
        except* WriteTimeout as group:
            code, reason = CloseReason.WRITE_TIMEOUT, str(leaves(group)[0])
        except* (OSError, trio.BrokenResourceError) as group:
            if not ended:  # else the client closed with replies still on their way: its choice
                code, reason = CloseReason.CONNECTION_LOST, f"connection lost: {leaves(group)[0]}"
        except* trio.Cancelled:
            code, reason = CloseReason.BROKER_STOPPED, "the broker stopped"
            raise
        except* Exception as group:
            # A bug must cost this connection, never the broker or other clients.
            log.error("internal error on %s", conn.peer.name, exc_info=group)
            code, reason = (
                CloseReason.INTERNAL_ERROR,
                f"internal broker error: {leaves(group)[0]!r}",
            )
        finally:
            for sub in conn.subs.values():
                self.hub.router.remove(sub)
            conn.subs.clear()
            self.hub.release(conn.peer)
            conn.proto.close_budget()
            conn.out.clear()
            del self.connections[conn.id]
            self.trim_soon(closed=True)
            self.closed.append(Closed(conn.peer.name, code, reason, self.clock(), conn.slow_events))
            with trio.CancelScope(shield=True):
                if drain:  # after the record and the release: the client may look at both
                    await conn.drain(CLOSE_DRAIN_S)
                await trio.aclose_forcefully(stream)


async def serve_turbine(
    config: BrokerConfig = BrokerConfig(),
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until cancelled.

    ``await nursery.start(serve_turbine, config)`` returns the list of
    ``(host, port)`` it listens on (port 0 picks a free one).

    Raises:
        OSError: the address cannot be bound (in use, not local).
        InsecureListen: a non-loopback address without ``auth`` or ``insecure``.
    """
    if config.auth is None and not config.insecure and not is_loopback(config.host):
        raise InsecureListen(
            f"refusing to listen on {config.host} without --auth: any program that reaches "
            "it could read every source and command every instrument; give --auth FILE "
            "(turbine auth token makes a user), or --insecure on a network you trust"
        )
    broker = Broker(config)
    host = config.host.strip("[]")
    listeners = await trio.open_tcp_listeners(config.port, host=host)
    addresses = [tuple(ln.socket.getsockname()[:2]) for ln in listeners]
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(broker.acceptor.serve, listener, broker.handle, nursery)
        nursery.start_soon(broker.trimmer)
        task_status.started(addresses)
