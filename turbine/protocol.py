"""The wire protocol, sans I/O: framing, message table, handshake state.

Both the broker and the client use :class:`Connection`; it never touches a
socket.  Feed it bytes with :meth:`Connection.receive_data`, take messages
with :meth:`Connection.next_event`, and turn outgoing messages into bytes with
:meth:`Connection.send`.  Messages are the frozen classes of
:mod:`turbine.messages`, which are also the table a peer's message is checked
against.  ``docs/protocol.rst`` is the reference for other languages.

Framing: every message is ::

    u32 header_length | u32 payload_length | header | payload

(big-endian lengths).  The header is a msgpack map with a ``"type"`` key; the
payload is raw bytes that frame-carrying messages slice by the ``sizes``
they list, so large frames are never re-encoded.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import msgpack

from ._constants import (
    DELIVERY_BATCH_BYTES,
    DELIVERY_BATCH_FRAMES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
    SUPPORTED_VERSIONS,
    VECTORED_MIN_BYTES,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from .messages import SPECS, ClientHello, Frames, Hello, Message, Spec, build, header_fields

PREFIX = struct.Struct(">II")


class Role(enum.Enum):
    BROKER = "broker"
    CLIENT = "client"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when a whole message has not arrived yet.
NEED_DATA: Any = _NeedData()


# --- checking ------------------------------------------------------------------------
# A peer's message that does not fit its class (turbine.messages) is a
# RemoteProtocolError; one of ours is a LocalProtocolError.

#: One group of frames inside ``put`` / ``frames``: consecutive sequence numbers
#: of one channel from one writer.  Fields, in order:
GROUP_FIELDS = ("source", "channel", "content_type", "first_seq", "ts", "sizes", "writer")


def _check(kind: str, fields: dict[str, Any], sender: Role, error: type[Exception]) -> Spec:
    """Check a message's header fields against its class; return its spec (for building it)."""
    spec = SPECS.get(kind)
    if spec is None:
        raise error(f"unknown message type {kind!r}; known types: {', '.join(sorted(SPECS))}")
    if spec.sender != sender.value:
        raise error(f"a {sender.value} may not send {kind!r} messages")
    for name, types in spec.required.items():
        if name not in fields:
            raise error(f"{kind!r} message lacks its {name!r} field")
        _check_type(kind, name, fields[name], types, error)
    for name, types in spec.optional.items():
        value = fields.get(name)
        if value is not None and types is not object:  # nil is as good as absent
            _check_type(kind, name, value, types, error)
    if not fields.keys() <= spec.names:
        # Unknown keys are ignored, but, like every header value, hold no
        # extension type (the decoder refuses all but the timestamp type).
        for name in fields.keys() - spec.names:
            if _holds_timestamp(fields[name]):
                raise error(f"{kind!r} field {name!r} holds a msgpack extension type")
    return spec


def _holds_timestamp(value: Any) -> bool:
    if isinstance(value, msgpack.Timestamp):
        return True
    if isinstance(value, list):
        return any(map(_holds_timestamp, value))
    if isinstance(value, dict):
        return any(map(_holds_timestamp, value.values()))
    return False


def _check_type(kind: str, name: str, value: Any, types: Any, error: type[Exception]) -> None:
    if isinstance(value, bool) and types is not bool and int in _as_tuple(types):
        want = "a number" if float in _as_tuple(types) else "an integer"
        raise error(f"{kind!r} field {name!r} must be {want}, not a boolean")
    if isinstance(value, msgpack.Timestamp):
        raise error(f"{kind!r} field {name!r} holds a msgpack extension type")
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise error(f"{kind!r} field {name!r} must be {want}, not {type(value).__name__}")


def _as_tuple(types: Any) -> tuple[Any, ...]:
    return types if isinstance(types, tuple) else (types,)


def check_put(fields: dict[str, Any], payload_len: int) -> None:
    """Check that a put's columns agree with its payload (C-speed checks, no per-frame loop).

    Raises:
        RemoteProtocolError: the sizes do not add up or the columns differ in length.
    """
    ts, sizes = fields["ts"], fields["sizes"]
    if len(ts) != len(sizes):
        raise RemoteProtocolError("'put' lists a different number of timestamps and sizes")
    if not set(map(type, ts)) <= _TS_TYPES:
        raise RemoteProtocolError("'put' timestamps must be numbers or nil")
    if sizes and (not set(map(type, sizes)) <= _INT or min(sizes) < 0):
        raise RemoteProtocolError("'put' sizes must be non-negative integers")
    total = sum(sizes)
    if total != payload_len:
        raise RemoteProtocolError(
            f"'put' sizes add up to {total} bytes but the payload holds {payload_len}"
        )


_TS_TYPES = {float, int, type(None)}
_INT = {int}


def split_payload(payload: memoryview, sizes: list[int]) -> list[Any]:
    """Cut a payload into frames by their sizes (already checked to add up).

    Small frames become ``bytes`` (cheap to keep by the million); large ones
    stay views of the payload, uncopied.
    """
    if len(sizes) == 1:
        return [payload]
    ends = list(itertools.accumulate(sizes, initial=0))
    if sizes and max(sizes) >= VECTORED_MIN_BYTES:
        return [payload[a:b] for a, b in itertools.pairwise(ends)]
    obj = payload.obj
    if type(obj) is not bytes or len(obj) != len(payload):
        obj = bytes(payload)
    return [obj[a:b] for a, b in itertools.pairwise(ends)]


# --- encoding ----------------------------------------------------------------

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(kind: str, fields: dict[str, Any], payloads: Sequence[Any] = ()) -> list[Any]:
    """Encode one message as a list of buffers to write in order.

    The first buffer holds prefix and header; the payload buffers follow
    unchanged, so a large frame is written from where it already lies.
    """
    header = _packb({"type": kind, **fields})
    return [PREFIX.pack(len(header), sum(map(len, payloads))) + header, *payloads]


# Bounds on what one group and one frame add to a frames header, for splitting
# without packing twice: a group's array, seq and column heads, and a frame's
# float64 timestamp and uint64 size.  Strings count 4 bytes per character (UTF-8).
_GROUP_HEADER_BYTES = 64
_FRAME_HEADER_BYTES = 18
_FIELDS_HEADER_BYTES = 1024  # type, id or sub, more: what the groups leave room for


def split_frames(
    groups: list[list[Any]],
    payloads: list[Any],
    max_frames: int,
    max_bytes: int,
    max_header: int = MAX_HEADER_BYTES,
) -> list[tuple[list[list[Any]], list[Any]]]:
    """Cut one delivery's groups and payloads into parts that each fit one message.

    A part holds at most ``max_frames`` frames, ``max_bytes`` of payload
    (or one larger frame alone) and a header under ``max_header`` bytes.
    Groups are split between frames, so sequence numbers run on from part
    to part; empty groups are dropped.  One part when everything fits.
    """
    frames = sum(len(g[5]) for g in groups)
    if frames <= max_frames and sum(map(len, payloads)) <= max_bytes:
        head = sum(_group_cost(g) for g in groups) + frames * _FRAME_HEADER_BYTES
        if head <= max_header - _FIELDS_HEADER_BYTES:
            return [(groups, payloads)]
    parts: list[tuple[list[list[Any]], list[Any]]] = []
    part: list[list[Any]] = []
    part_payloads: list[Any] = []
    n = size = head = 0
    i = 0  # index into payloads of the group's first frame
    room = max_header - _FIELDS_HEADER_BYTES
    for source, channel, ctype, seq, ts, sizes, writer in groups:
        fixed = _group_cost((source, channel, ctype, writer))
        k = 0
        while k < len(sizes):
            take = min(len(sizes) - k, max_frames - n, (room - head - fixed) // _FRAME_HEADER_BYTES)
            if take > 0 and size + sum(sizes[k : k + take]) > max_bytes:
                ends = itertools.accumulate(sizes[k : k + take], initial=size)
                take = sum(1 for end in ends if end <= max_bytes) - 1
            if take <= 0 and not n:
                take = 1  # a part takes at least one frame, however large
            if take <= 0:
                parts.append((part, part_payloads))
                part, part_payloads, n, size, head = [], [], 0, 0, 0
                continue
            part.append(
                [source, channel, ctype, seq + k, ts[k : k + take], sizes[k : k + take], writer]
            )
            part_payloads += payloads[i + k : i + k + take]
            n += take
            size += sum(sizes[k : k + take])
            head += fixed + take * _FRAME_HEADER_BYTES
            k += take
        i += len(sizes)
    if part:
        parts.append((part, part_payloads))
    return parts


def fetch_reply(
    msg_id: int, groups: list[list[Any]], payloads: list[Any]
) -> list[tuple[Frames, list[Any]]]:
    """The ``frames`` messages answering fetch ``msg_id``, each with its payloads.

    One message when the frames fit, else parts of at most
    ``DELIVERY_BATCH_FRAMES`` frames and ``DELIVERY_BATCH_BYTES`` (a larger
    frame alone); every part but the last carries ``more: true``.
    """
    parts = split_frames(groups, payloads, DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES)
    parts = parts or [([], [])]
    last = len(parts) - 1
    return [
        (Frames(id=msg_id, groups=part, more=True if i < last else None), part_payloads)
        for i, (part, part_payloads) in enumerate(parts)
    ]


def _group_cost(group: Sequence[Any]) -> int:
    """What a group adds to a header besides its frames' columns (a bound)."""
    return _GROUP_HEADER_BYTES + 4 * sum(len(x) for x in group if isinstance(x, str))


def encode_message(msg: Message, payloads: Sequence[Any] = ()) -> list[Any]:
    """Encode one of our messages, unchecked (for the hot paths that build them right)."""
    return encode(msg.type, header_fields(msg), payloads)


def encode_bytes(kind: str, fields: dict[str, Any], payloads: Sequence[Any] = ()) -> bytes:
    """Like :func:`encode`, joined into one bytes object."""
    return b"".join(encode(kind, fields, payloads))


def split_groups(groups: Iterable[Any], payload: memoryview) -> list[tuple[Any, ...]]:
    """Check a ``frames`` message's groups and cut its payload to match.

    Returns ``(source, channel, content_type, first_seq, ts, datas, writer)``
    per group, where ``datas`` are the group's payloads.

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    out = []
    offset = 0
    end = len(payload)
    for g in groups:
        if not isinstance(g, list) or len(g) != len(GROUP_FIELDS):
            raise RemoteProtocolError(f"a frame group must be a list of {len(GROUP_FIELDS)} fields")
        source, channel, ctype, seq, ts, sizes, writer = g
        if not all(isinstance(x, str) for x in (source, channel, ctype, writer)):
            raise RemoteProtocolError(
                "a frame group's source, channel, content type and writer must be strings"
            )
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise RemoteProtocolError(
                "a frame group's first sequence number must be a positive integer"
            )
        if not isinstance(ts, list) or not isinstance(sizes, list) or len(ts) != len(sizes):
            raise RemoteProtocolError("a frame group's ts and sizes must be lists of equal length")
        if not sizes:
            continue
        if not set(map(type, sizes)) <= _INT or min(sizes) < 0 or offset + sum(sizes) > end:
            raise RemoteProtocolError("a frame group's sizes overrun the payload")
        if not set(map(type, ts)) <= _TS_TYPES - {type(None)}:
            raise RemoteProtocolError("a frame group's timestamps must be numbers")
        size = sum(sizes)
        out.append(
            (
                source,
                channel,
                ctype,
                seq,
                ts,
                split_payload(payload[offset : offset + size], sizes),
                writer,
            )
        )
        offset += size
    return out


def decode_groups(groups: Iterable[Any], payload: memoryview) -> Iterable[tuple[Any, ...]]:
    """Yield ``(source, channel, content_type, seq, ts, data, writer)`` per frame.

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    for source, channel, ctype, seq, ts, datas, writer in split_groups(groups, payload):
        for i, (t, data) in enumerate(zip(ts, datas, strict=True)):
            yield source, channel, ctype, seq + i, t, data, writer


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


class Connection:
    """The protocol state of one side of one connection.

    Args:
        our_role: :attr:`Role.BROKER` or :attr:`Role.CLIENT`.
        max_payload: largest payload section accepted from the peer.
        max_header: largest header accepted from the peer.
    """

    def __init__(
        self,
        our_role: Role,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        max_header: int = MAX_HEADER_BYTES,
    ) -> None:
        self.our_role = our_role
        self.their_role = Role.CLIENT if our_role is Role.BROKER else Role.BROKER
        self.state = State.HANDSHAKE
        self.max_payload = max_payload
        self.max_header = max_header
        self.protocol: int | None = None
        self.peer_hello: Hello | ClientHello | None = None
        self._buffer = bytearray()  # received bytes: unread from _start to _end, room after
        self._start = 0
        self._end = 0
        self._need = PREFIX.size
        self._eof = False

    # receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed."""
        n = len(data)
        if n:
            with self.get_buffer(n) as view:
                view[:n] = data
        self.buffer_updated(n)

    @property
    def receive_size(self) -> int:
        """How many bytes to read next: the rest of a message with a large
        payload (so it lands uncopied), else a normal read."""
        missing = self._need - (self._end - self._start)
        return missing if missing >= VECTORED_MIN_BYTES else RECEIVE_BYTES

    def get_buffer(self, size: int = 0) -> memoryview:
        """A writable view at the end of the receive buffer, for ``recv_into``.

        It holds at least ``size`` bytes, and while a large message arrives it
        is exactly the rest of that message, so its payload lands where it is
        used, uncopied.  Release the view (``with``) before :meth:`next_event`,
        and report what was written with :meth:`buffer_updated`.
        """
        want = max(size, self.receive_size)
        buf = self._buffer
        start, end = self._start, self._end
        large = self._need - (end - start) >= VECTORED_MIN_BYTES
        if len(buf) - end < want or (start and large):
            # Put the partial message at the front of a buffer with room for
            # `want` more: a large payload then fills a buffer of its own,
            # handed over whole by next_event.
            held = end - start
            if len(buf) >= held + want:
                buf[:held] = buf[start:end]
            else:
                new = bytearray(max(held + want, RECEIVE_BYTES))
                with memoryview(buf) as view:
                    new[:held] = view[start:end]
                self._buffer = buf = new
            self._start, self._end = 0, held
            end = held
        return memoryview(buf)[end : end + want]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last :meth:`get_buffer` view; 0 means the peer closed."""
        if nbytes:
            self._end += nbytes
        else:
            self._eof = True

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the message being received needs (at least 1 when waiting)."""
        return max(self._need - (self._end - self._start), 1)

    def next_event(self) -> Message | Any:
        """Return the next whole message, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is
                then unusable) or closed in the middle of a message.
        """
        if self.state is State.CLOSED:
            raise RemoteProtocolError("the connection is closed")
        buf = self._buffer
        start, end = self._start, self._end
        if end - start < PREFIX.size:
            return self._need_data()
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
        if end - start < total:
            self._need = total
            return self._need_data()
        h = start + PREFIX.size
        p = h + header_len
        stop = start + total
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
        if payload_len >= VECTORED_MIN_BYTES and stop == end:
            # The buffer ends with this message: hand it over instead of copying.
            del buf[stop:]
            payload = memoryview(buf)[p:stop]
            self._buffer = bytearray()
            self._start = self._end = 0
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
            else:
                self._start = stop
        self._need = PREFIX.size
        kind = header.pop("type")
        try:
            spec = _check(kind, header, self.their_role, RemoteProtocolError)
            if kind == "put":
                check_put(header, payload_len)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise
        msg = build(spec, header, payload)
        self._advance(msg)
        return msg

    def _need_data(self) -> Any:
        if self._eof:
            self.state = State.CLOSED
            if self._end > self._start:
                raise RemoteProtocolError(
                    f"the peer closed the connection in the middle of a message "
                    f"({self._end - self._start} bytes of it arrived)"
                )
        return NEED_DATA

    def _fail(self, why: str) -> NoReturn:
        self.state = State.CLOSED
        raise RemoteProtocolError(why)

    def _advance(self, msg: Message) -> None:
        hello_cls = Hello if self.their_role is Role.BROKER else ClientHello
        hello = hello_cls.type
        if self.state is State.HANDSHAKE:
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
        _check(kind, fields, self.our_role, LocalProtocolError)
        if self.state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")
        if isinstance(msg, (Hello, ClientHello)):
            if self.our_role is Role.CLIENT:
                self.state = State.OPEN
        elif self.our_role is Role.CLIENT and self.state is State.HANDSHAKE:
            raise LocalProtocolError("send 'client_hello' before any request")
        return encode(kind, fields, payloads)
