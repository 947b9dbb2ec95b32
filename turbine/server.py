"""The broker: moves bytes between sockets and the :class:`~turbine.hub.Hub`.

One nursery per connection: the handler reads and applies requests in order;
a writer task sends replies and pulls subscribed frames from the rings.  The
reader never waits on a subscriber: delivery is pulled by each connection's
own writer, so a slow client only lets its own cursors fall behind.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._constants import (
    CLOSED_HISTORY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DELIVERY_BATCH_BYTES,
    DELIVERY_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    OUTBOUND_QUEUE_BYTES,
    PROTOCOL_VERSION,
    SOURCE_TYPES,
    WRITE_TIMEOUT_S,
)
from ._constants import (
    VERSION as __version__,
)
from ._errors import ProtocolError, RemoteProtocolError, RequestFailed
from ._io import send_buffers, write_now
from .hub import Hub, PendingFetch
from .names import InvalidName
from .peer import Peer
from .protocol import NEED_DATA, Connection, Message, Role, encode, split_payload
from .ringbuffer import memory_store
from .router import Subscription, check_start, collect
from .store import StoreFactory

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
    #: Makes each channel's store (see turbine/store.py); memory rings by default.
    store: StoreFactory = memory_store


@attrs.frozen
class Closed:
    """Why a connection ended, kept in a small ring for ``status``."""

    client: str
    reason: str
    time: float


class ClientConnection:
    """The broker's side of one client connection."""

    def __init__(self, broker: Broker, stream: trio.SocketStream, cid: int) -> None:
        self.broker = broker
        self.stream = stream
        self.sock = stream.socket
        self.id = cid
        try:
            host, port = stream.socket.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            address = "?"
        self.peer = Peer(cid, address)
        self.proto = Connection(Role.BROKER, max_payload=broker.config.max_frame + 2**20)
        self.subs: dict[int, Subscription] = {}
        self.connected = time.time()
        self._out: collections.deque[list[Any]] = collections.deque()
        self._out_bytes = 0
        self._dirty = False
        self._wakeup = trio.Event()
        self._drained = trio.Event()
        self._rotation = 0
        self._idle = False  # the writer waits for work: a reader may write for it
        self._unsent: list[Any] = []  # what a direct write left for the writer
        self._closing = False
        self.finished = trio.Event()
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = self.gaps = 0
        self.slow_events = 0

    # --- outbound

    def wake(self) -> None:
        """Tell the writer there is something to send (never waits)."""
        self._dirty = True
        self._idle = False
        self._wakeup.set()

    def wake_soon(self) -> None:
        """Mark something to send; the reader that calls this writes it before
        it next waits (:meth:`Broker.write_ready`), saving the writer task a
        trip through the scheduler on the latency path."""
        self._dirty = True
        if self._idle:
            self.broker.ready[self] = None
        else:
            self._wakeup.set()

    def write_now(self) -> None:
        """Write what is ready without waiting, if the writer is idle; the
        writer task takes over whatever the socket does not take at once."""
        if not self._dirty:
            return
        if not self._idle or self._unsent:
            self.wake()  # the writer is busy, or has a remainder to send first
            return
        self._dirty = False
        buffers = self._gather()
        if not buffers:
            return
        try:
            rest = write_now(self.sock.fileno(), buffers)
        except OSError:
            rest = buffers  # let the writer meet the error and close this connection
        self.bytes_out += sum(map(len, buffers)) - sum(map(len, rest))
        if rest or self._dirty:
            self._unsent = rest
            self.wake()

    def queue(
        self, kind: str, fields: dict[str, Any], payloads: list[Any] | tuple[()] = ()
    ) -> None:
        bufs = self.proto.send(kind, fields, payloads)
        self._out.append(bufs)
        self._out_bytes += sum(map(len, bufs))
        self.wake_soon()  # queued by a request: its reader writes before it next waits

    def reply(self, msg: Message, result: Any = None) -> None:
        self.queue("ok", {"id": msg["id"], "result": result})

    def error(self, msg_id: int | None, exc: Exception, code: str = "error") -> None:
        self.queue("error", {"id": msg_id, "code": getattr(exc, "code", code), "message": str(exc)})

    def _gather(self) -> list[Any]:
        """Queued replies, then subscribed frames within one batch budget."""
        buffers: list[Any] = []
        while self._out:
            buffers += self._out.popleft()
        self._out_bytes = 0
        self._drained.set()
        if not self._closing:
            self._pull(buffers)
        return buffers

    async def writer(self) -> None:
        timeout = self.broker.config.write_timeout
        while True:
            if not self._dirty and not self._unsent:
                self._wakeup = trio.Event()
                self._idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._idle = False
            self._dirty = False
            buffers: list[Any] = self._unsent
            self._unsent = []
            buffers += self._gather()
            if buffers:
                with trio.move_on_after(timeout) as scope:
                    self.bytes_out += await send_buffers(self.sock, buffers)
                if scope.cancelled_caught:
                    self.slow_events += 1
                    raise ProtocolError(
                        f"write blocked for {timeout:g} s: the client is not reading"
                    )
            if self._closing and not self._out:
                self.finished.set()
                return

    def last_words(self, buffers: list[Any]) -> None:
        """Send ``buffers`` after what is queued, then stop writing (sets :attr:`finished`)."""
        self._closing = True
        self._out.append(buffers)
        self.wake()

    def _pull(self, buffers: list[Any]) -> None:
        """Add pending subscribed frames to ``buffers``, within one batch budget."""
        budget_frames, budget_bytes = DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES
        subs = list(self.subs.values())
        if not subs:
            return
        self._rotation = (self._rotation + 1) % len(subs)
        for sub in subs[self._rotation :] + subs[: self._rotation]:
            if budget_frames <= 0 or budget_bytes <= 0:
                self._dirty = True  # more to send after this batch
                return
            groups, payloads, gaps, n, size = collect(
                sub.cursors.values(), budget_frames, budget_bytes
            )
            for cur, run in gaps:
                sub.missed += run.missed
                self.gaps += 1
                buffers += self.proto.send(
                    "gap",
                    {
                        "sub": sub.id,
                        "source": cur.channel.source_name,
                        "channel": cur.channel.name,
                        "missed": run.missed,
                        "next_seq": run.first_seq,
                    },
                )
            if groups:
                buffers += encode("frames", {"sub": sub.id, "groups": groups}, payloads)
                budget_frames -= n
                budget_bytes -= size
                sub.delivered += n
                self.frames_out += n
                if any(c.pending for c in sub.cursors.values()):
                    self._dirty = True

    # --- inbound

    async def reader(self) -> None:
        proto = self.proto
        sock = self.sock
        hello = encode(
            "hello",
            {
                "protocol": PROTOCOL_VERSION,
                "software": f"turbine {__version__}",
                "max_frame": self.broker.config.max_frame,
                "time": time.time(),
            },
        )
        self._out.append(hello)
        self.wake()
        while True:
            with proto.get_buffer() as view:
                n = await sock.recv_into(view)
            proto.buffer_updated(n)
            self.bytes_in += n
            while True:
                msg = proto.next_event()
                if msg is NEED_DATA:
                    break
                self.handle(msg)
            self.broker.write_ready()
            if not n:
                return
            if self._out_bytes > OUTBOUND_QUEUE_BYTES:
                # Replies pile up because this client does not read them: stop
                # reading its requests until they drain.  Costs only this client.
                self._drained = trio.Event()
                await self._drained.wait()

    def handle(self, msg: Message) -> None:
        kind = msg.type
        if kind == "put":
            self.put(msg)
            return
        try:
            handler = self._handlers[kind]
        except KeyError:
            raise RemoteProtocolError(f"a client may not send {kind!r} here") from None
        try:
            handler(self, msg)
        except (RequestFailed, ValueError) as exc:
            code = (
                "name"
                if isinstance(exc, InvalidName)
                else "request"
                if isinstance(exc, ValueError)
                else "error"
            )
            self.error(msg.get("id"), exc, code)
        except Exception as exc:
            # A bug must cost this request, never the broker or other clients.
            log.exception("internal error handling %r from %s", kind, self.peer.name)
            self.error(
                msg.get("id"),
                RequestFailed(f"internal broker error handling {kind!r}: {exc!r}", "internal"),
            )

    def put(self, msg: Message) -> None:
        f = msg.fields
        sizes = f["sizes"]
        data = split_payload(msg.payload, sizes)
        try:
            wakers = self.broker.hub.put(
                self.peer,
                f["source"],
                f["channel"],
                f["ts"],
                data,
                f.get("content_type"),
                sizes,
            )
        except (RequestFailed, InvalidName) as exc:
            self.error(
                None,
                RequestFailed(
                    f"put to {f['source']}/{f['channel']} refused: {exc}",
                    getattr(exc, "code", "error"),
                ),
            )
            return
        self.frames_in += len(sizes)
        for conn in wakers:
            conn.wake_soon()

    def on_client_hello(self, msg: Message) -> None:
        self.peer.named(msg["name"])

    def on_open_source(self, msg: Message) -> None:
        f = msg.fields
        channels = f.get("channels") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in channels.items()):
            raise RequestFailed("channels must map channel names to content types", "request")
        kwargs = {k: f[k] for k in ("cache_frames", "cache_bytes", "shared") if k in f}
        src = self.broker.hub.open_source(self.peer, f["source"], channels=channels, **kwargs)
        self.reply(
            msg,
            {
                "source": src.name,
                "channels": {n: ch.store.next_seq for n, ch in src.channels.items()},
            },
        )

    def on_close_source(self, msg: Message) -> None:
        self.broker.hub.release(self.peer, msg["source"])
        self.reply(msg)

    def on_flush(self, msg: Message) -> None:
        self.reply(msg)

    def on_subscribe(self, msg: Message) -> None:
        sid = msg["sub"]
        if sid in self.subs:
            raise RequestFailed(
                f"subscription id {sid} is already in use on this connection", "request"
            )
        sub = Subscription(
            sid,
            self,
            msg["pattern"],
            check_start(msg.get("start", "now")),
            bool(msg.get("monitor", False)),
        )
        hub = self.broker.hub
        hub.router.add(sub, hub.channels("*/*"))
        self.subs[sid] = sub
        self.reply(msg, {"channels": sorted(ch.path for ch in sub.cursors)})

    def on_unsubscribe(self, msg: Message) -> None:
        sub = self.subs.pop(msg["sub"], None)
        if sub is not None:
            self.broker.hub.router.remove(sub)
        self.reply(msg)

    def on_fetch(self, msg: Message) -> None:
        f = msg.fields
        sel = {k: f[k] for k in ("newest", "oldest", "start", "duration", "after") if k in f}
        result = self.broker.hub.fetch(f["pattern"], **sel)
        if isinstance(result, PendingFetch):
            raise RequestFailed("this broker's stores answer from memory only", "internal")
        groups, payloads = result
        self.queue("frames", {"id": msg["id"], "groups": groups}, payloads)

    def on_list(self, msg: Message) -> None:
        self.reply(msg, self.broker.hub.list_sources(msg["pattern"]))

    def on_status(self, msg: Message) -> None:
        self.reply(msg, self.broker.status())

    def on_delete(self, msg: Message) -> None:
        self.broker.hub.delete(msg["source"], self.peer)
        self.reply(msg)

    _handlers: dict[str, Callable[[ClientConnection, Message], None]] = {
        "client_hello": on_client_hello,
        "open_source": on_open_source,
        "close_source": on_close_source,
        "flush": on_flush,
        "subscribe": on_subscribe,
        "unsubscribe": on_unsubscribe,
        "fetch": on_fetch,
        "list": on_list,
        "status": on_status,
        "delete": on_delete,
    }

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.peer.name,
            "peer": self.peer.address,
            "connected": self.connected,
            "sources": sorted(
                s.name for s in self.broker.hub.sources.values() if s.holder is self.peer
            ),
            "subscriptions": [
                {
                    "pattern": s.pattern,
                    "monitor": s.monitor,
                    "delivered": s.delivered,
                    "missed": s.missed,
                }
                for s in self.subs.values()
            ],
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "gaps": self.gaps,
            "slow_events": self.slow_events,
        }


class Broker:
    """A broker's state and its connections."""

    def __init__(self, config: BrokerConfig = BrokerConfig()) -> None:
        self.config = config
        self.hub = Hub(
            max_memory=config.max_memory,
            max_frame=config.max_frame,
            lenient_names=config.lenient_names,
            types=config.types,
            store=config.store,
        )
        self.started = time.time()
        self.connections: dict[int, ClientConnection] = {}
        #: Connections with frames to send, written by the reader that filled
        #: them before it next waits (see ClientConnection.wake_soon).
        self.ready: dict[ClientConnection, None] = {}  # an ordered set: first filled, first written
        self.closed: collections.deque[Closed] = collections.deque(maxlen=CLOSED_HISTORY)
        self._ids = itertools.count(1)

    def write_ready(self) -> None:
        ready, self.ready = self.ready, {}
        for conn in ready:
            conn.write_now()

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime": now - self.started,
            "time": now,
            "memory": {
                "used": self.hub.used,
                "reserved": self.hub.reserved,
                "limit": self.hub.max_memory,
            },
            "sources": len(self.hub.sources),
            "clients": [c.info() for c in self.connections.values()],
            "closed": [attrs.asdict(c) for c in self.closed],
        }

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = ClientConnection(self, stream, next(self._ids))
        self.connections[conn.id] = conn
        reason = "client closed the connection"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.writer)
                try:
                    await conn.reader()
                except RemoteProtocolError as exc:
                    reason = f"protocol error: {exc}"
                    # Say why, after whatever is already queued, then hang up.
                    conn.last_words(
                        encode("error", {"id": None, "code": "protocol", "message": str(exc)})
                    )
                    with trio.move_on_after(1):
                        await conn.finished.wait()
                nursery.cancel_scope.cancel()
        except* ProtocolError as group:
            reason = str(group.exceptions[0])
        except* (OSError, trio.BrokenResourceError) as group:
            reason = f"connection lost: {group.exceptions[0]}"
        except* Exception as group:
            # A bug must cost this connection, never the broker or other clients.
            log.error("internal error on %s", conn.peer.name, exc_info=group)
            reason = f"internal broker error: {group.exceptions[0]!r}"
        finally:
            for sub in conn.subs.values():
                self.hub.router.remove(sub)
            conn.subs.clear()
            self.hub.release(conn.peer)
            del self.connections[conn.id]
            self.closed.append(Closed(conn.peer.name, reason, time.time()))
            with trio.CancelScope(shield=True):
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
    """
    broker = Broker(config)
    host = config.host.strip("[]")
    listeners = await trio.open_tcp_listeners(config.port, host=host)
    addresses = [tuple(ln.socket.getsockname()[:2]) for ln in listeners]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, broker.handle, listeners)
        task_status.started(addresses)
