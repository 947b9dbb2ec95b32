"""The protocol's messages, one class each (``docs/protocol.rst`` describes them).

A class's fields are the message's header fields, in the order they are
written on the wire.  Their annotations are also what the sans-I/O layer
(:mod:`turbine.protocol`) checks a peer's message against: a field with no
default is required, a field that defaults to ``None`` is optional and left
out of the header when ``None`` (unless marked :data:`WRITE_NIL`), a ``float``
field takes any number, and a ``list``/``dict`` field takes any list/map.  A
message carries its payload (``put``, ``frames``) as a view of the bytes
received (a large fetch reply a client cut as it arrived: as its frames, a
:class:`CutPayload`); to send one, hand the payload buffers to
``Connection.send`` beside it.

Frames stay columnar: a ``put`` or ``frames`` message is one object however
many frames it carries, and no object is built per frame here.

Messages are :class:`~turbine._values.Value` classes, taking their fields by
keyword: cheap to define (every client imports this module) and never changed.
"""

import types
import typing
from typing import Any, ClassVar

from ._values import Value, field

#: Field metadata: write the field even when it is ``None`` (as nil).
WRITE_NIL = {"write_nil": True}
#: Field metadata: not a header field (the payload a message arrived with).
_NOT_IN_HEADER = {"header": False}


def _no_payload() -> memoryview:
    return memoryview(b"")


class CutPayload:
    """A ``frames`` message's payload, already cut into its frames' bytes
    (:class:`turbine.groups.PayloadCutter`, as a client receives a large fetch
    reply): what :func:`turbine.groups.split_groups` makes of a payload, with its
    length.  ``check_groups`` does not take it (a group's frames are no longer
    back to back)."""

    __slots__ = ("groups", "nbytes")

    def __init__(self, groups: list[tuple[Any, ...]], nbytes: int) -> None:
        #: ``(source, channel, content_type, first_seq, ts, datas, writer)`` per non-empty group.
        self.groups = groups
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.nbytes


# The decorator tells the type checker what kw_only=True does for every subclass.
@typing.dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Message(Value, kw_only=True):
    """What every message has: its wire ``type`` and the side that may send it."""

    #: The message's name on the wire (the header's ``type``).
    type: ClassVar[str]
    #: ``"broker"`` or ``"client"``: who may send this message.
    sender: ClassVar[str]
    #: Header fields in wire order, each with whether it is written when ``None``.
    wire_fields: ClassVar[tuple[tuple[str, bool], ...]]


class Request(Message):
    """A client's request; the broker answers with the same ``id``."""

    id: int


# --- handshake -----------------------------------------------------------------


class Hello(Message):
    protocol: int
    software: str
    max_frame: int | None = None
    time: float | None = None
    #: True: the broker checks tokens; it answers the client_hello with ok (id 0) or error.
    auth: bool | None = None


class ClientHello(Message):
    protocol: int
    name: str
    #: The client's secret, for a broker whose hello said ``auth``.
    token: str | None = field(default=None, repr=False)
    #: The client's clock when the hello arrived, and when it sent this
    #: (with hello's ``time``: the broker's estimate of the client's clock offset).
    hello_received: float | None = None
    time: float | None = None
    #: The client reconnects when its connection is lost: the broker keeps its
    #: sources for it a while (``RECLAIM_GRACE_S``).
    reconnect: bool | None = None


# --- requests (client -> broker) ---------------------------------------------------


class OpenSource(Request):
    source: str
    #: Channel names to content types.  Any value passes the protocol layer:
    #: the broker refuses a bad one as a request error (docs/protocol.rst).
    channels: Any = None
    cache_frames: int | None = None
    cache_bytes: int | None = None
    shared: bool | None = None
    #: A mirrored source's origin: ``{"broker", "source", "via"}`` (``turbine/origin.py``).
    mirror: Any = None
    #: Disk kept for the source by a broker with a data dir (0: memory only), and its age limit.
    archive_bytes: int | None = None
    archive_age: float | None = None
    #: Producer ids whose last stored put number the reply tells (``producers``), so
    #: a reconnecting producer learns which of the puts it dropped unanswered arrived.
    #: Any value passes the protocol layer, as for ``channels``.
    producers: Any = None


class CloseSource(Request):
    source: str


class Put(Message):
    """Frames for one channel, as columns; the payload holds their bytes back to back."""

    source: str
    channel: str
    #: One timestamp per frame (nil: the broker's clock), or packed: float64,
    #: little-endian, 8 bytes a frame (``groups.pack_times``; no nil).
    ts: list[float | None] | bytes
    sizes: list[int]
    content_type: str | None = None
    #: The producer that sent it (any string the producer keeps across reconnects).
    producer: str | None = None
    #: The producer's number for this put, counted per source from 1 (de-duplication).
    pseq: int | None = None
    #: Frames of this channel the producer dropped just before this put (its
    #: spool was full): the broker leaves that many numbers unused, a gap.
    skipped: int | None = None
    #: The time span of those ``skipped`` frames: the first and last timestamp.
    skipped_first_time: float | None = None
    skipped_last_time: float | None = None
    #: A mirror's put: each frame's number on the origin (increasing; skipped numbers are holes).
    seqs: list[int] | None = None
    #: A mirror's put, compact: its frames are numbered from this one on, one
    #: after another (instead of ``seqs``).
    first_seq: int | None = None
    #: A mirror's put: ``[first_seq, writer]`` for each run of frames by one writer.
    writers: list[Any] | None = None
    payload: memoryview = field(factory=_no_payload, metadata=_NOT_IN_HEADER)


class Flush(Request):
    pass


class Subscribe(Request):
    sub: int
    pattern: str
    start: str | int | None = None
    monitor: bool | None = None
    #: A monitor's most frames per second per channel (the newest, at most one per 1/max_rate s).
    max_rate: float | None = None
    #: Channel paths to the sequence number to start at (a resumed subscription).
    resume: dict[str, int] | None = None


class Unsubscribe(Request):
    sub: int


class Fetch(Request):
    pattern: str
    newest: int | None = None
    oldest: int | None = None
    start: float | None = None
    duration: float | None = None
    after: int | None = None


class Summarize(Request):
    pattern: str
    start: float
    duration: float
    columns: int


class ListSources(Request):
    pattern: str


class Status(Request):
    pass


class Delete(Request):
    source: str


class Time(Request):
    """The broker's clock (``turbine time``)."""


class Acl(Request):
    """Show (``action`` "show", ``user`` optional) or change ("grant"/"revoke") protections."""

    action: str
    user: str | None = None
    right: str | None = None
    pattern: str | None = None


class Mirror(Request):
    """Run a mirror inside the broker while this connection lasts (the first such
    request), or say how the one running does (every later one): a pull from
    ``origin``, or with ``target`` instead a push of this broker's sources there."""

    origin: str | None = None
    #: Push: copy this broker's own sources to this broker (``HOST:PORT``).
    target: str | None = None
    patterns: list[str]
    prefix: str | None = None
    poll: float | None = None
    retry: float | None = None
    #: What the broker logs in to the other broker with (None: no token).
    token: str | None = field(default=None, repr=False)


# --- replies and deliveries (broker -> client) -----------------------------------------


class Ok(Message):
    id: int
    result: Any = field(default=None, metadata=WRITE_NIL)


class Error(Message):
    """A refusal: of request ``id``, or (``id`` nil) of a put or of the connection,
    or the end of subscription ``sub`` (a revoked read right)."""

    id: int | None = field(default=None, metadata=WRITE_NIL)
    code: str
    message: str
    sub: int | None = None


class Frames(Message):
    """Frame groups for subscription ``sub`` or in answer to fetch ``id`` (``turbine.groups.GROUP_FIELDS``)."""

    sub: int | None = None
    id: int | None = None
    groups: list[Any]
    #: True on every part of a fetch reply but its last.
    more: bool | None = None
    #: A fetch reply a client cut as it arrived holds its frames cut (a ``CutPayload``).
    payload: memoryview | CutPayload = field(factory=_no_payload, metadata=_NOT_IN_HEADER)


class GapReport(Message):
    """Frames of one channel that subscription ``sub`` missed (evicted before delivery)."""

    sub: int
    source: str
    channel: str
    missed: int
    next_seq: int
    #: The time span of the missed frames, where the broker knows it (frames
    #: their producer dropped and told of with the put after them).
    first_time: float | None = None
    last_time: float | None = None


# --- the table the protocol layer checks against ------------------------------------

_BROKER = "broker"
_CLIENT = "client"

#: Each message class by its wire name, with the side that may send it.
_SENDERS: dict[type[Message], tuple[str, str]] = {
    Hello: ("hello", _BROKER),
    ClientHello: ("client_hello", _CLIENT),
    OpenSource: ("open_source", _CLIENT),
    CloseSource: ("close_source", _CLIENT),
    Put: ("put", _CLIENT),
    Flush: ("flush", _CLIENT),
    Subscribe: ("subscribe", _CLIENT),
    Unsubscribe: ("unsubscribe", _CLIENT),
    Fetch: ("fetch", _CLIENT),
    Summarize: ("summarize", _CLIENT),
    ListSources: ("list", _CLIENT),
    Status: ("status", _CLIENT),
    Delete: ("delete", _CLIENT),
    Acl: ("acl", _CLIENT),
    Time: ("time", _CLIENT),
    Mirror: ("mirror", _CLIENT),
    Ok: ("ok", _BROKER),
    Error: ("error", _BROKER),
    Frames: ("frames", _BROKER),
    GapReport: ("gap", _BROKER),
}


class Role:
    """Which side of a connection: who may send a message (named strings, those of
    the table above: an enum class took ~0.1 ms of every ``import turbine``)."""

    BROKER = _BROKER
    CLIENT = _CLIENT


class Spec:
    """What the protocol layer checks of one message type."""

    __slots__ = ("cls", "sender", "required", "optional", "names", "has_payload")

    def __init__(
        self,
        cls: type[Message],
        sender: str,
        required: dict[str, Any],
        optional: dict[str, Any],
        names: frozenset[str],
        has_payload: bool,
    ) -> None:
        self.cls = cls
        self.sender = sender
        #: Fields that must be present, with the types their values may have.
        self.required = required
        #: Fields that may be absent, with the types their values may have (nil counts as absent).
        self.optional = optional
        #: Every header field's name (what :func:`build` takes from a header).
        self.names = names
        #: Whether the message carries a payload.
        self.has_payload = has_payload


_NUM = (int, float)


def _check_types(annotation: Any) -> tuple[Any, bool]:
    """The runtime types an annotation allows, and whether it allows ``None``
    (worked out once per annotation: the table's 88 fields have about 15)."""
    known = _KNOWN_TYPES.get(annotation)
    if known is None:
        known = _KNOWN_TYPES[annotation] = _types_of(annotation)
    return known


_KNOWN_TYPES: dict[Any, tuple[Any, bool]] = {}


def _types_of(annotation: Any) -> tuple[Any, bool]:
    if annotation is Any:
        return object, True
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nil = len(args) < len(typing.get_args(annotation))
        allowed: list[Any] = []
        for arg in args:
            t, _ = _check_types(arg)
            allowed += t if isinstance(t, tuple) else [t]
        return (allowed[0] if len(allowed) == 1 else tuple(allowed)), nil
    if origin is not None:
        return origin, False  # list[...] / dict[...]: the container is what is checked
    return (_NUM if annotation is float else annotation), False


def _spec(cls: type[Message], kind: str, sender: str) -> Spec:
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    wire: list[tuple[str, bool]] = []
    has_payload = False
    for f in cls.fields:
        if not f.metadata.get("header", True):
            has_payload = True
            continue
        allowed, nil = _check_types(f.type)
        if f.required and not nil:
            required[f.name] = allowed
        else:
            optional[f.name] = allowed  # nil is as good as absent
        wire.append((f.name, bool(f.metadata.get("write_nil"))))
    cls.type = kind
    cls.sender = sender
    cls.wire_fields = tuple(wire)
    return Spec(cls, sender, required, optional, frozenset(n for n, _ in wire), has_payload)


#: The message table, by wire name.
SPECS: dict[str, Spec] = {kind: _spec(cls, kind, who) for cls, (kind, who) in _SENDERS.items()}


def header_fields(msg: Message) -> dict[str, Any]:
    """``msg``'s header fields in wire order (``None`` left out unless written as nil)."""
    out: dict[str, Any] = {}
    for name, write_nil in msg.wire_fields:
        value = getattr(msg, name)
        if value is not None or write_nil:
            out[name] = value
    return out


def build(spec: Spec, header: dict[str, Any], payload: memoryview | CutPayload) -> Message:
    """The message a checked header describes (fields it does not know are ignored).

    ``header`` becomes the message's: the payload is stored in it."""
    if spec.has_payload:
        header["payload"] = payload
    try:
        return spec.cls(**header)
    except TypeError:  # a newer peer's extra fields (checked headers lack none): drop them
        names = spec.names | {"payload"} if spec.has_payload else spec.names
        return spec.cls(**{name: value for name, value in header.items() if name in names})
