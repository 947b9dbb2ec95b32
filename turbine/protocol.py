"""The wire protocol, sans I/O: framing, the receive buffer, handshake state.

Both the broker and the client use :class:`Connection`; it never touches a
socket.  Feed it bytes with :meth:`Connection.receive_data`, take messages
with :meth:`Connection.next_event`, and turn outgoing messages into bytes with
:meth:`Connection.send`.  Messages are the frozen classes of
:mod:`turbine.messages`, which are also the table a message is checked
against (:mod:`turbine.checks`, both ways).  The bytes received and not yet
made messages of are its :class:`~turbine.receiving.ReceiveBuffer` half.
``docs/protocol.rst`` is the reference for other languages.

Framing: every message is ::

    u32 header_length | u32 payload_length | header | payload

(big-endian lengths).  The header is a msgpack map with a ``"type"`` key; the
payload is raw bytes that frame-carrying messages slice by the ``sizes``
they list, so large frames are never re-encoded (:mod:`turbine.groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import msgpack

from ._constants import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
    SUPPORTED_VERSIONS,
    VECTORED_MIN_BYTES,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from .checks import check
from .groups import PayloadCutter, check_put
from .messages import (
    ClientHello,
    CutPayload,
    Error,
    Hello,
    Message,
    Role,
    Spec,
    build,
    header_fields,
)
from .receiving import PREFIX, ReceiveBudget, ReceiveBuffer


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


class State:  # named strings: an enum class took ~0.1 ms of every `import turbine`
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


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
        our_role: str,
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
        if self._room is not None:
            return self._whole(self._received_payload())
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
                self._before_payload = p - start
                self._receive_payload(p, payload_len)
                return self._whole(self._received_payload())
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
            self._dropped_buffer(total)
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
        return self._whole(cutter.payload())

    def _whole(self, payload: memoryview | CutPayload | None) -> Message | Any:
        """The message whose header came early, once its ``payload`` is whole (None: not yet)."""
        if payload is None:
            return self._need_data()
        self._need = PREFIX.size
        assert self._early is not None
        (_, header, spec), self._early = self._early, None
        msg = build(spec, header, payload)
        self._advance(msg)
        return msg

    def _need_data(self) -> Any:
        if self._eof:
            self.state = State.CLOSED
            if self.receiving:
                arrived = self._end - self._start
                if self._cutter is not None:
                    arrived += self._before_payload + self._cutter.nbytes - self._cutter.left
                elif self._room is not None:
                    arrived = self._before_payload + self._filled
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
