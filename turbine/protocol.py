"""The wire protocol, sans I/O: framing, the receive buffer, handshake state.

Both the broker and the client use :class:`Connection`; it never touches a
socket.  Feed it bytes with :meth:`Connection.receive_data`, take messages
with :meth:`Connection.next_event`, and turn outgoing messages into bytes with
:meth:`Connection.send`.  Messages are the frozen classes of
:mod:`turbine.messages`, which are also the table a message is checked
against (:mod:`turbine.checks`, both ways).  The bytes received and not yet
made messages of are the :class:`ReceiveBuffer` half of a connection.
``docs/protocol.rst`` is the reference for other languages.

Framing: every message is ::

    u32 header_length | u32 payload_length | header | payload

(big-endian lengths).  The header is a msgpack map with a ``"type"`` key; the
payload is raw bytes that frame-carrying messages slice by the ``sizes``
they list, so large frames are never re-encoded (:mod:`turbine.groups`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import msgpack

from ._constants import (
    FIRST_RECEIVE_BYTES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
    SUPPORTED_VERSIONS,
    VECTORED_MIN_BYTES,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._memory import grow
from .checks import check
from .groups import PayloadCutter, check_put
from .messages import ClientHello, Error, Hello, Message, Role, Spec, build, header_fields

PREFIX = struct.Struct(">II")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when a whole message has not arrived yet.
NEED_DATA: Any = _NeedData()


# --- encoding ----------------------------------------------------------------

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(kind: str, fields: dict[str, Any], payloads: Sequence[Any] = ()) -> list[Any]:
    """Encode one message as a list of buffers to write in order.

    The first buffer holds prefix and header; the payload buffers follow
    unchanged, so a large frame is written from where it already lies.
    """
    header = _packb({"type": kind, **fields})
    return [PREFIX.pack(len(header), sum(map(len, payloads))) + header, *payloads]


def encode_message(msg: Message, payloads: Sequence[Any] = ()) -> list[Any]:
    """Encode one of our messages, unchecked (for the hot paths that build them right)."""
    return encode(msg.type, header_fields(msg), payloads)


def encode_ok(request_id: int) -> list[Any]:
    """An ``ok`` with no result: what :func:`encode_message` makes of
    ``Ok(id=request_id)``, without the message object (every flush's reply)."""
    return encode("ok", {"id": request_id, "result": None})


def encode_frames(sub: int, groups: list[Any], payloads: Sequence[Any]) -> list[Any]:
    """A subscription's ``frames`` message: what :func:`encode_message` makes of
    ``Frames(sub=sub, groups=groups)``, without the message object (every delivery)."""
    return encode("frames", {"sub": sub, "groups": groups}, payloads)


def encode_put(
    source: str,
    channel: str,
    ts: list[Any],
    sizes: list[int],
    producer: str,
    pseq: int,
    payloads: Sequence[Any],
) -> list[Any]:
    """A producer's plain ``put``: what :func:`encode_message` makes of ``Put(source=...,
    channel=..., ts=..., sizes=..., producer=..., pseq=...)``, without the message object
    (every batch a client writes)."""
    fields: dict[str, Any] = {"source": source, "channel": channel, "ts": ts, "sizes": sizes}
    fields["producer"], fields["pseq"] = producer, pseq
    return encode("put", fields, payloads)


def encode_bytes(kind: str, fields: dict[str, Any], payloads: Sequence[Any] = ()) -> bytes:
    """Like :func:`encode`, joined into one bytes object."""
    return b"".join(encode(kind, fields, payloads))


class _ExtensionType(Exception):
    pass


def _no_ext(code: int, data: bytes) -> Any:
    raise _ExtensionType(
        f"message header holds a msgpack extension type ({code}); none are allowed"
    )


# --- the connection state machine -----------------------------------------------


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class ReceiveBudget:
    """Bytes the receive buffers of all connections may hold beyond one normal
    read each: partial large messages cannot, together, take more than ``limit``.

    ``on_give`` is called when bytes come back (the broker wakes readers
    waiting for room).
    """

    def __init__(self, limit: int, on_give: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.held = 0
        self._on_give = on_give

    def take(self, n: int) -> int:
        """Take up to ``n`` bytes; return how many were granted (0 when none are left)."""
        granted = max(min(n, self.limit - self.held), 0)
        self.held += granted
        return granted

    def give(self, n: int) -> None:
        self.held -= n
        self._on_give()


class ReceiveBuffer:
    """The bytes a :class:`Connection` received and has not made messages of yet.

    The buffer grows with what has arrived, never with what the peer
    declares; growth beyond one normal read is taken from the ``budget``
    shared by the connections of a broker; a large message's payload is
    handed over by :meth:`Connection.next_event` uncopied.  A client
    (``sized_by_prefix``: its peer is the broker) instead sizes the buffer
    for a large message once its prefix has arrived (its length is checked
    against ``max_payload`` first), or cuts a fetch reply's frames as they
    arrive (:meth:`Connection.next_event`).
    """

    def __init__(self, budget: ReceiveBudget | None, *, sized_by_prefix: bool = False) -> None:
        self._buffer = bytearray()  # received bytes: unread from _start to _end, room after
        self._start = 0
        self._end = 0
        self._need = PREFIX.size
        self._eof = False
        #: Shared by all connections: how much their buffers may grow beyond one normal read.
        self.budget = budget
        self._charged = 0  # bytes of the budget this connection's buffer holds
        self._read_size = FIRST_RECEIVE_BYTES  # grows to RECEIVE_BYTES as reads fill it
        self._offered = 0
        self._sized_by_prefix = sized_by_prefix
        #: Cuts the fetch reply being received as it arrives (a client's Connection):
        #: the buffer then holds its payload's next bytes, ``_need`` of them to come.
        self._cutter: PayloadCutter | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed."""
        n = len(data)
        if n:
            with self.get_buffer(n) as view:
                view[:n] = data
        self.buffer_updated(n)

    @property
    def receive_size(self) -> int:
        """How many bytes to read next: the rest of a large message (at most as
        much again as has arrived, unless sized by its prefix), never past its
        end, so that it ends its buffer and its payload is handed over uncopied;
        else a normal read."""
        held = self._end - self._start
        missing = self._need - held
        if self._cutter is not None:
            return max(min(missing, self._read_size), 1)
        if missing > 0 and self._need >= VECTORED_MIN_BYTES:
            if self._sized_by_prefix:
                return missing
            return min(missing, max(held, RECEIVE_BYTES))
        return self._read_size

    @property
    def receiving(self) -> bool:
        """Part of a message has arrived, and not the rest of it yet."""
        return self._end > self._start or self._cutter is not None

    def get_buffer(self, size: int = 0) -> memoryview:
        """A writable view at the end of the receive buffer, for ``recv_into``.

        It holds at least ``size`` bytes.  While a large message arrives the
        buffer grows with what has arrived (at most doubling per step), never
        with what the peer declares (a client's: once, to the message's length
        from its prefix), and holds that message alone, so its
        payload is handed over by :meth:`next_event` uncopied.  Growth beyond
        one normal read is taken from the ``budget`` shared by all
        connections; when it has nothing left the view is empty (wait for
        room, then ask again; a ``size`` is always granted).  Release the view
        (``with``) before :meth:`next_event`, and report what was written with
        :meth:`buffer_updated`.
        """
        want = max(size, self.receive_size)
        buf = self._buffer
        start, end = self._start, self._end
        held = end - start
        large = self._need > held and self._need >= VECTORED_MIN_BYTES and self._cutter is None
        if start and (large or len(buf) - end < want):
            # Put the partial message at the front: a large payload then ends
            # up in a buffer of its own, handed over whole by next_event.
            buf[:held] = buf[start:end]
            self._start, self._end = start, end = 0, held
        if len(buf) - end < want:
            target = end + want
            if self.budget is not None:
                extra = max(target - RECEIVE_BYTES, 0) - self._charged
                if extra > 0:
                    self._charged += self.budget.take(extra)
                if not size:
                    target = min(target, RECEIVE_BYTES + self._charged)
            if target > len(buf) and large and self._sized_by_prefix:
                # The whole message's room at once (the partial message is at the
                # front): growing step by step zero-fills a temporary per step, and
                # a fresh process pays for every page it touches (a fetch of 1 MB
                # touched 410 pages where the buffer has 257).
                grown = bytearray()
                grow(grown, target)
                with memoryview(buf) as partial:
                    grown[:end] = partial[:end]
                self._buffer = buf = grown
            else:
                grow(buf, target)  # room the read fills: not zero-filled first
        self._offered = min(want, len(buf) - end)
        return memoryview(buf)[end : end + self._offered]

    def _dropped_buffer(self) -> None:
        """The receive buffer was handed over or replaced: give back what it held of the budget."""
        if self.budget is not None and self._charged:
            keep = max(len(self._buffer) - RECEIVE_BYTES, 0)
            if keep < self._charged:
                self.budget.give(self._charged - keep)
                self._charged = keep

    def close_budget(self) -> None:
        """Give back all of the shared budget this connection holds (it is done receiving)."""
        self._buffer = bytearray()
        self._start = self._end = 0
        self._dropped_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last :meth:`get_buffer` view; 0 means the peer closed."""
        if nbytes:
            self._end += nbytes
            if nbytes == self._offered and self._read_size < RECEIVE_BYTES:
                self._read_size *= 2  # reads fill what is offered: offer more
        else:
            self._eof = True

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the message being received needs (at least 1 when waiting)."""
        return max(self._need - (self._end - self._start), 1)


class Connection(ReceiveBuffer):
    """The protocol state of one side of one connection.

    Args:
        our_role: :attr:`Role.BROKER` or :attr:`Role.CLIENT`.
        max_payload: largest payload section accepted from the peer.
        max_header: largest header accepted from the peer.
        budget: shared by the connections of one broker, bounds what their
            receive buffers hold together (None: no bound).
    """

    def __init__(
        self,
        our_role: Role,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        max_header: int = MAX_HEADER_BYTES,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self.our_role = our_role
        self.their_role = Role.CLIENT if our_role is Role.BROKER else Role.BROKER
        self._hello = Hello if our_role is Role.CLIENT else ClientHello  # the peer's
        self.state = State.HANDSHAKE
        self.max_payload = max_payload
        self.max_header = max_header
        self.protocol: int | None = None
        self.peer_hello: Hello | ClientHello | None = None
        #: A large message's header, decoded and checked before its payload arrived.
        self._early: tuple[str, dict[str, Any], Spec] | None = None
        self._before_payload = 0  # its prefix and header, bytes
        super().__init__(budget, sized_by_prefix=our_role is Role.CLIENT)

    def next_event(self) -> Message | Any:
        """Return the next whole message, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is
                then unusable) or closed in the middle of a message.
        """
        if self.state is State.CLOSED:
            raise RemoteProtocolError("the connection is closed")
        if self._cutter is not None:
            return self._cut(self._cutter)
        buf = self._buffer
        start, end = self._start, self._end
        if end - start < PREFIX.size:
            return self._need_data() if self._eof else NEED_DATA
        header_len, payload_len = PREFIX.unpack_from(buf, start)
        if header_len > self.max_header or header_len == 0:
            self._fail(
                f"message header of {header_len} bytes is not allowed (garbage on the wire?)"
            )
        if payload_len > self.max_payload:
            self._fail(
                f"message payload of {payload_len} bytes exceeds the limit of {self.max_payload}"
            )
        total = PREFIX.size + header_len + payload_len
        h = start + PREFIX.size
        p = h + header_len
        if end - start < total:
            if self._sized_by_prefix and payload_len >= VECTORED_MIN_BYTES and self._early is None:
                if end < p:
                    self._need = p - start  # the header first
                    return self._need_data()
                self._early = early = self._header(buf, h, p, payload_len)
                kind, header, _ = early
                if kind == "frames" and header.get("sub") is None and header.get("id") is not None:
                    self._cutter = cutter = PayloadCutter.for_groups(header["groups"], payload_len)
                    if cutter is not None:
                        self._start, self._before_payload = p, p - start
                        return self._cut(cutter)
            self._need = total
            return self._need_data()
        stop = start + total
        if self._early is not None:
            (kind, header, spec), self._early = self._early, None
        else:
            kind, header, spec = self._header(buf, h, p, payload_len)
        if payload_len >= VECTORED_MIN_BYTES and stop == end:
            # The buffer ends with this message: hand it over instead of copying.
            del buf[stop:]
            payload = memoryview(buf)[p:stop]
            self._buffer = bytearray()
            self._start = self._end = 0
            self._dropped_buffer()
        else:
            if payload_len:
                with memoryview(buf) as view:
                    payload = memoryview(bytes(view[p:stop]))
            else:
                payload = memoryview(b"")
            if stop == end:
                self._start = self._end = 0
                if len(buf) > 4 * RECEIVE_BYTES:
                    self._buffer = bytearray()  # do not keep a large message's room
                    self._dropped_buffer()
            else:
                self._start = stop
        self._need = PREFIX.size
        msg = build(spec, header, payload)
        if self.state is not State.OPEN or kind == self._hello.type:
            self._advance(msg)  # the handshake's (and a second hello, refused)
        return msg

    def _header(self, buf: bytearray, h: int, p: int, n: int) -> tuple[str, dict[str, Any], Spec]:
        """The header in ``buf[h:p]`` (payload: ``n`` bytes), decoded and checked:
        its type, fields and spec."""
        try:
            with memoryview(buf) as view:
                header = msgpack.unpackb(
                    view[h:p], raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext
                )
        except _ExtensionType as exc:
            self._fail(str(exc))
        except Exception as exc:  # msgpack raises several unrelated types
            self._fail(f"message header is not valid msgpack: {exc}")
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            self._fail("message header must be a map with a string 'type'")
        kind = header.pop("type")
        try:
            spec = check(kind, header, self.their_role, RemoteProtocolError)
            if kind == "put":
                check_put(header, n)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise
        return kind, header, spec

    def _cut(self, cutter: PayloadCutter) -> Message | Any:
        """Cut the frames of the fetch reply being received from what has arrived;
        the reply once its last byte has."""
        if self._end > self._start:
            with memoryview(self._buffer) as view:
                self._start += cutter.feed(view[self._start : self._end])
            if self._start == self._end:
                self._start = self._end = 0
        self._need = cutter.left
        if cutter.left:
            return self._need_data()
        self._cutter = None
        self._need = PREFIX.size
        assert self._early is not None
        (_, header, spec), self._early = self._early, None
        msg = build(spec, header, cutter.payload())
        self._advance(msg)
        return msg

    def _need_data(self) -> Any:
        if self._eof:
            self.state = State.CLOSED
            if self._end > self._start or self._cutter is not None:
                arrived = self._end - self._start
                if self._cutter is not None:
                    arrived += self._before_payload + self._cutter.nbytes - self._cutter.left
                raise RemoteProtocolError(
                    f"the peer closed the connection in the middle of a message "
                    f"({arrived} bytes of it arrived)"
                )
        return NEED_DATA

    def _fail(self, why: str) -> NoReturn:
        self.state = State.CLOSED
        raise RemoteProtocolError(why)

    def _advance(self, msg: Message) -> None:
        hello_cls = self._hello
        hello = hello_cls.type
        if self.state is State.HANDSHAKE:
            if self.our_role is Role.CLIENT and isinstance(msg, Error) and msg.id is None:
                self.state = State.CLOSED  # refused before any hello (a TLS broker, say): say why
                return
            if not isinstance(msg, hello_cls):
                self._fail(f"expected {hello!r} first, got {msg.type!r}")
            version = msg.protocol
            # A newer peer proposing a higher version gets ours: each side
            # speaks the lower of the two (docs/protocol.rst, version negotiation).
            if version < SUPPORTED_VERSIONS[0]:
                self._fail(
                    f"protocol version {version} is not supported; this broker speaks "
                    f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
                )
            self.protocol = min(version, PROTOCOL_VERSION)
            self.peer_hello = msg
            if self.our_role is Role.BROKER:
                self.state = State.OPEN
        elif isinstance(msg, hello_cls):
            self._fail(f"{hello!r} may only be sent once")

    # sending

    def send(self, msg: Message, payloads: Sequence[Any] = ()) -> list[Any]:
        """Check one of our messages against its class and encode it, with its payload buffers.

        Returns the buffers to write in order (see :func:`encode`).

        Raises:
            LocalProtocolError: the message is not one we may send now, or a
                field's value is not of its type.
        """
        kind = msg.type
        fields = header_fields(msg)
        check(kind, fields, self.our_role, LocalProtocolError)
        if self.state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")
        if isinstance(msg, (Hello, ClientHello)):
            if self.our_role is Role.CLIENT:
                self.state = State.OPEN
        elif self.our_role is Role.CLIENT and self.state is State.HANDSHAKE:
            raise LocalProtocolError("send 'client_hello' before any request")
        return encode(kind, fields, payloads)
