"""Sans-I/O framing and messages of the NetDVD protocol (version 0).

Every frame is a 4-byte big-endian unsigned length followed by that many bytes
of msgpack holding one map with a ``"type"`` key.  This module turns bytes into
events and events into bytes; it does no I/O and imports no trio, so both the
device and the client (and tests) drive it the same way::

    decoder = FrameDecoder()
    decoder.receive_data(chunk)
    while (event := decoder.next_event()) is not NEED_DATA:
        ...

docs/netdvd.rst describes the frames and the conversation precisely.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import attrs
import msgpack

from ._constants import MAX_FRAME
from .errors import NetDVDProtocolError

_LENGTH = struct.Struct(">I")


class NeedData:
    """Type of NEED_DATA."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`FrameDecoder.next_event` when a whole frame is not yet buffered.
NEED_DATA: Final = NeedData()


@attrs.frozen
class Hello:
    """Sent by the device on connect: the highest protocol version it speaks."""

    version: int


@attrs.frozen
class Busy:
    """Sent by the device instead of Hello when another client holds it."""

    message: str


@attrs.frozen
class Request:
    """A command from the client: ``op`` names it, ``args`` are its parameters."""

    op: str
    args: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Ok:
    """A successful reply; ``result`` depends on the command."""

    result: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Error:
    """A refused command: ``code`` for programs, ``message`` for people."""

    code: str
    message: str


@attrs.frozen
class Data:
    """A chunk of file content (upload or download)."""

    data: bytes


Event = Hello | Busy | Request | Ok | Error | Data


def encode(event: Event) -> bytes:
    """Return the bytes of one frame carrying ``event``.

    Raises:
        NetDVDProtocolError: the frame would exceed the maximum frame size
            (a local mistake: split data into chunks of at most DATA_CHUNK).
    """
    match event:
        case Hello(version):
            body: dict[str, Any] = {"type": "hello", "version": version}
        case Busy(message):
            body = {"type": "busy", "message": message}
        case Request(op, args):
            body = {"type": "request", "op": op, "args": args}
        case Ok(result):
            body = {"type": "ok", "result": result}
        case Error(code, message):
            body = {"type": "error", "code": code, "message": message}
        case Data(data):
            body = {"type": "data", "data": bytes(data)}
        case _:
            raise TypeError(f"not a NetDVD event: {event!r}")
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise NetDVDProtocolError(
            f"refusing to send a {len(payload)}-byte frame; the limit is {MAX_FRAME} bytes"
        )
    return _LENGTH.pack(len(payload)) + payload


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise NetDVDProtocolError(f"{body.get('type')!r} frame needs a valid {name!r} field")
    return value


def decode_body(body: Any) -> Event:
    """Turn one decoded msgpack value into an event.

    Raises:
        NetDVDProtocolError: the value is not a well-formed NetDVD frame.
    """
    if not isinstance(body, dict):
        raise NetDVDProtocolError("a frame must hold a msgpack map")
    kind = body.get("type")
    if kind == "hello":
        return Hello(_field(body, "version", int))
    if kind == "busy":
        return Busy(_field(body, "message", str))
    if kind == "request":
        args = body.get("args", {})
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise NetDVDProtocolError("'request' frame needs 'args' to be a map with string keys")
        return Request(_field(body, "op", str), args)
    if kind == "ok":
        result = body.get("result", {})
        if not isinstance(result, dict):
            raise NetDVDProtocolError("'ok' frame needs 'result' to be a map")
        return Ok(result)
    if kind == "error":
        return Error(_field(body, "code", str), _field(body, "message", str))
    if kind == "data":
        return Data(_field(body, "data", bytes))
    raise NetDVDProtocolError(f"unknown frame type {kind!r}")


class FrameDecoder:
    """Buffers received bytes and yields one event per complete frame.

    The buffer never holds more than one maximal frame plus one read's worth of
    bytes: a length prefix above the limit is rejected before its body arrives.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buffer)

    def next_event(self) -> Event | NeedData:
        """Return the next complete event, or NEED_DATA.

        Raises:
            NetDVDProtocolError: the peer sent an oversized or malformed frame;
                the connection cannot continue.
        """
        if len(self._buffer) < _LENGTH.size:
            return NEED_DATA
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._max_frame:
            raise NetDVDProtocolError(
                f"peer announced a {length}-byte frame; the limit is {self._max_frame} bytes"
            )
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise NetDVDProtocolError(f"frame is not valid msgpack: {exc}") from exc
        return decode_body(body)
