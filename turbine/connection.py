"""The broker's side of one client connection.

:class:`ClientConnection` reads and applies a client's requests in order (the
:class:`~turbine.requests.Requests` half handles each one) and sends through
its :class:`~turbine.sender.Sender` half; :class:`turbine.server.Broker` keeps
the connections and what they share (the hub, auth, the receive budget).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Protocol

import trio

from . import messages as m
from ._constants import OUTBOUND_QUEUE_BYTES, PAYLOAD_SLACK_BYTES, PROTOCOL_VERSION, TURN_S, VERSION
from ._errors import RemoteProtocolError
from ._keepalive import RemoteLiveness
from ._liveness import heard_ago
from .auth import Access, FailureDelays, LoginRefused, is_loopback
from .delivery import Delivery
from .outbound import OutboundQueue
from .pacing import WriteRoom, deliver_first
from .peer import Peer
from .protocol import NEED_DATA, Connection, ReceiveBudget, Role, encode_message
from .protocol import State as ProtoState
from .requests import BrokerView, Requests
from .router import Subscription, Waker
from .sender import BrokerWriting, Sender, WriteLimits
from .storetask import StoreReads
from .tls import TLSSocket


class ConnectionLimits(WriteLimits, Protocol):
    """The broker's settings a connection needs."""

    @property
    def max_frame(self) -> int: ...

    @property
    def message_timeout(self) -> float: ...

    @property
    def remote(self) -> RemoteLiveness: ...


class BrokerSide(BrokerView, BrokerWriting, Protocol):
    """What a connection needs of its broker."""

    receive_budget: ReceiveBudget
    failures: FailureDelays

    @property
    def config(self) -> ConnectionLimits: ...

    async def receive_room(self) -> None: ...


class ClientConnection(Sender, Requests):
    """The broker's side of one client connection.

    The reader task applies requests in order and queues replies; the writer
    task sends them and pulls subscribed frames; a store task (started on
    first need) answers the reads memory cannot.  Who sends what and when is
    the :class:`~turbine.outbound.OutboundQueue`'s decision; the glue that
    does it is the :class:`~turbine.sender.Sender` half, the request handlers
    the :class:`~turbine.requests.Requests` half.
    """

    broker: BrokerSide

    def __init__(
        self, broker: BrokerSide, stream: trio.SocketStream, cid: int, tls: TLSSocket | None = None
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.sock: Any = stream.socket if tls is None else tls
        #: Whether the reader may write to the socket itself (not through TLS).
        self.direct = tls is None
        self.id = cid
        try:
            host, port = stream.socket.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            host, address = "localhost", "?"
        self.peer = Peer(cid, address)
        remote = broker.config.remote
        if not is_loopback(host):  # a client gone silently (a cut link) is found out
            remote.keep_alive(stream.socket)
            if remote.holder_silence:
                self.peer.silent = functools.partial(heard_ago, stream.socket)
                self.peer.gone_after = remote.holder_silence
        self.proto = Connection(
            Role.BROKER,
            max_payload=broker.config.max_frame + PAYLOAD_SLACK_BYTES,
            budget=broker.receive_budget,
        )
        self.subs: dict[int, Subscription] = {}
        self.connected = broker.clock()
        self.out = OutboundQueue()
        self.room = WriteRoom(stream.socket)
        self._wakeup = trio.Event()  # set to wake the writer task
        self._drained = trio.Event()  # set when the writer took the queued replies
        self.finished = trio.Event()
        self.reads = StoreReads(self)
        self._sleep: trio.CancelScope | None = None  # the writer's, while it sleeps until a time
        self.delivery = Delivery(
            self.proto, self.subs, self.reads.prefetch, trio.current_time, self._wake_writer_at
        )
        self.bytes_in = self.bytes_out = self.frames_in = 0
        self._emptied = True  # the last read took less than it was offered (none yet)
        self.written: set[str] = set()
        self.woke: dict[Waker, None] = {}
        self.slow_events = 0

    # --- inbound

    async def reader(self) -> None:
        proto = self.proto
        self.hello_time = self.broker.clock()
        hello = encode_message(
            m.Hello(
                protocol=PROTOCOL_VERSION,
                software=f"turbine {VERSION}",
                max_frame=self.broker.config.max_frame,
                time=self.hello_time,
                auth=True if self.broker.auth is not None else None,
            )
        )
        self.apply(self.out.reply(hello))
        timeout = self.broker.config.message_timeout
        broker = self.broker
        store = broker.hub.store
        deadline = trio.current_time() + timeout  # for the client_hello
        n = await self._first_receive(deadline)
        if self.broker.auth is not None:
            n = await self._login(deadline, n)
        while True:
            handled = 0
            turn = time.perf_counter()
            while True:
                msg = proto.next_event()
                if msg is NEED_DATA:
                    break
                self.handle(msg)
                handled += 1
                if type(msg) is m.Put and broker.ready:
                    # The subscribers' frames go before the rest of the read is
                    # decoded (a flush after the put, its reply): the latency path.
                    broker.write_ready()
                if time.perf_counter() - turn > TURN_S:
                    # A burst of requests in one read must not hold the loop
                    # from every other client: let them have a turn.
                    self.broker.write_ready()
                    await trio.lowlevel.checkpoint()
                    turn = time.perf_counter()
            self.broker.write_ready()
            if not n:
                return
            if self.out.bytes > OUTBOUND_QUEUE_BYTES:
                # Replies pile up because this client does not read them: stop
                # reading its requests until they drain.  Costs only this client.
                await self.taken()
                handled = 1  # the time waited here is not the sender's
            if self.reads.crowded:
                await self.reads.wait_room()
            if self.written and store.behind(self.written):
                # The disk is far behind this client's puts: stop reading them until
                # it catches up (the producer slows to the disk's pace, not refused).
                await store.caught_up(self.written)
                handled = 1
            if self.woke:  # the broker delivers what its sinks can take before it reads more
                await deliver_first(self.woke, broker.write_ready)
                handled = 1
            # A message must arrive whole within `timeout` of its first bytes
            # (a half-sent message holds memory; it costs its sender the connection).
            if not proto.receiving:
                deadline = math.inf
                n = await self._receive()  # no message begun: no deadline (and no cancel
                continue  # scope to set up: this is every receive of a busy connection)
            if handled or deadline == math.inf:
                deadline = trio.current_time() + timeout
            with trio.move_on_at(deadline):
                n = await self._receive()
                continue
            raise RemoteProtocolError(f"a message stayed incomplete for {timeout:g} s")

    async def _first_receive(self, deadline: float) -> int:
        with trio.move_on_at(deadline):
            return await self._receive()
        timeout = self.broker.config.message_timeout
        raise RemoteProtocolError(
            f"no client_hello within {timeout:g} s"
            if self.proto.state is ProtoState.HANDSHAKE and not self.proto.receiving
            else f"a message stayed incomplete for {timeout:g} s"
        )

    async def _login(self, deadline: float, n: int) -> int:
        """Take the client_hello and check its token; answer ok (id 0) with the
        user and rights, or raise.  A host's attempts after failures wait
        their turn (:class:`~turbine.auth.FailureDelays`).

        Raises:
            LoginRefused: no token, or not one of the auth file's.
        """
        while (msg := self.proto.next_event()) is NEED_DATA:
            if not n:
                return 0
            n = await self._first_receive(deadline)
        assert isinstance(msg, m.ClientHello)  # the protocol layer lets nothing else come first
        self.on_client_hello(msg)
        broker = self.broker
        assert broker.auth is not None
        host = self.peer.address.rpartition(":")[0]
        # Until no attempt decided meanwhile pushed the host's turn further:
        # parallel guesses are decided one per turn, not all at one wake-up.
        while (turn := broker.failures.wait_until(host)) > trio.current_time():  # noqa: ASYNC110 (a deadline others move, not a poll: one pass per attempt decided meanwhile)
            await trio.sleep_until(turn)
        user = broker.auth.login(msg.token)
        if user is None:
            broker.failures.failed(host, trio.current_time())
            if broker.audit is not None:
                why = "no token" if not msg.token else "a token the broker does not know"
                broker.audit.record(
                    "login_failed", self.peer, f"login refused from {self.peer.address}: {why}"
                )
            if not msg.token:
                raise LoginRefused(
                    "this broker requires a token: give --token, set TURBINE_TOKEN, "
                    "or put it in ~/.config/turbine/token"
                )
            raise LoginRefused("the token was refused: it is not one of the broker's users'")
        broker.failures.succeeded(host)
        self.peer.access = Access(user.name, user.rights)
        self.queue(m.Ok(id=0, result={"user": user.name, "rights": user.rights.to_dict()}))
        return n

    async def _receive(self) -> int:
        """One read from the socket into the protocol's buffer (0: the client closed).

        Waits while the broker's receive budget has no room for this
        connection's large message.
        """
        proto = self.proto
        while True:
            with proto.get_buffer() as view:
                if offered := len(view):
                    n = await (self._read(view) if self.direct else self.sock.recv_into(view))
                    break
            await self.broker.receive_room()
        proto.buffer_updated(n)
        self.bytes_in += n
        self._emptied = n < offered
        return n

    async def _read(self, view: memoryview) -> int:
        """``recv_into`` of a plain socket, without trio's wrapper around it: a read
        that took less than it was offered most likely emptied the socket, so the
        next one waits for bytes first instead of failing a read; one that filled
        its offer reads again at once (and lets others run after it, as trio's does)."""
        sock = self.stream.socket
        if self._emptied:
            await trio.lowlevel.wait_readable(sock)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        fd = sock.fileno()
        waited = self._emptied
        while True:
            try:
                n = os.readv(fd, [view])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return n

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.peer.name,
            "user": None if self.peer.access is None else self.peer.access.user,
            "peer": self.peer.address,
            "connected": self.connected,
            "clock_offset": self.clock_offset,
            "clock_rtt": self.clock_rtt,
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
            "frames_out": self.delivery.frames,
            "gaps": self.delivery.gaps,
            "slow_events": self.slow_events,
        }
