"""The NTCP ASCII protocol of the LabVIEW plugin, sans-I/O.

One persistent TCP connection carries lines of tab-separated ASCII fields,
each ending in ``\\n`` (``\\r\\n`` is accepted). The NTCP side sends requests;
the control system answers each one in order: with one reply line, except a
``get-control-point`` naming several control points, which gets one line per
control point (:func:`reply_count`).

The dialect accepted is the one deployed clients speak (see ``docs/ntcp.rst``):
a space instead of the tab after the verb, fields holding spaces (transaction
ids and session names built from the clock), trailing tabs, and the keyword
``control-point`` before a propose's second and later control points.

Requests (fields after the verb)::

    open-session       <name>
    close-session      <name>
    set-parameter      <transId> <name> <value>
    get-parameter      <transId> <name>
    propose            <transId> <controlPoint> <axis> <type> <value> [<axis> <type> <value> ...]
                                 [[control-point] <controlPoint> <axis> <type> <value> ...]
    execute            <transId>
    cancel             <transId>
    get-control-point  <transId> <controlPoint> [<controlPoint> ...]

Replies::

    OK  0 <fields...>           success; the fields depend on the request (see ``format_*``)
    NOT OK <reason>             failure (``NOTOK`` is accepted from peers)

Success fields written by this project's control-system side:

=================  ===========================================================
open/close-session ``<name>``
get-parameter      ``<transId> <name> <value>``
get-control-point  ``<transId> <controlPoint> (<axis> <type> <value>)...``, one line per point
everything else    ``<transId>``
=================  ===========================================================

Numbers are written with ``%.10E`` (:func:`format_number`).

This module imports no I/O library: it turns bytes into lines
(:class:`LineBuffer`), lines into frozen values (:func:`parse_request`,
:func:`parse_reply`) and values back into lines (:func:`format_request`,
:func:`format_ok`, :func:`format_not_ok`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

from turbine import TurbineError

__all__ = [
    "AXES",
    "CONTROL_POINT_KEYWORD",
    "DEFAULT_MAX_LINE_LENGTH",
    "TYPES",
    "VERBS",
    "AxisValue",
    "ControlPointValues",
    "LineBuffer",
    "LineTooLongError",
    "NtcpError",
    "NtcpProtocolError",
    "Reply",
    "Request",
    "encode_line",
    "format_control_point_reply",
    "format_not_ok",
    "format_number",
    "format_ok",
    "format_request",
    "measured",
    "parse_control_point_reply",
    "parse_reply",
    "parse_request",
    "refuse",
    "reply_count",
    "verb_of",
]

#: Axes of a control point, in the order replies list them.
AXES: tuple[str, ...] = ("x", "y", "z")
#: Quantity types, in the order replies list them. Displacement and force act
#: along an axis; rotation and moment act about it.
TYPES: tuple[str, ...] = ("displacement", "rotation", "force", "moment")

VERBS: tuple[str, ...] = (
    "open-session",
    "close-session",
    "set-parameter",
    "get-parameter",
    "propose",
    "execute",
    "cancel",
    "get-control-point",
)

#: A line longer than this (in bytes, without its terminator) is refused. The
#: longest legitimate line is a propose covering many control points; 64 KiB
#: holds over a thousand axis/type/value triplets.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

#: The keyword that may introduce a propose's second and later control points.
CONTROL_POINT_KEYWORD = "control-point"

_OK = "OK"
_NOT_OK = ("NOT OK", "NOTOK")


class NtcpError(TurbineError):
    """Base class for NTCP errors."""


class NtcpProtocolError(NtcpError):
    """A line broke the protocol: unknown verb, wrong field count, bad number...

    ``reason`` is a one-line explanation fit to send back in a ``NOT OK`` reply.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LineTooLongError(NtcpProtocolError):
    """A line exceeded the line-length cap; the rest of it is discarded."""


# ---------------------------------------------------------------- values


@attrs.frozen
class AxisValue:
    """One ``<axis> <type> <value>`` triplet."""

    axis: str
    type: str
    value: float

    @property
    def channel(self) -> str:
        """``<axis>/<type>``, the suffix of a published channel name."""
        return f"{self.axis}/{self.type}"


@attrs.frozen
class ControlPointValues:
    """A control point name and its triplets (proposed targets or measurements)."""

    control_point: str
    values: tuple[AxisValue, ...]

    def as_dict(self) -> dict[tuple[str, str], float]:
        """The triplets as ``{(axis, type): value}``."""
        return {(v.axis, v.type): v.value for v in self.values}


@attrs.frozen
class Request:
    """One parsed request line.

    ``name`` is the session name (open/close-session) or the parameter name
    (set/get-parameter); ``value`` is the parameter value of set-parameter;
    ``groups`` holds propose's targets; ``points`` the control points of
    get-control-point, in order (a name may repeat). Fields a verb does not
    use are ``None`` or empty.
    """

    verb: str
    trans_id: str | None = None
    name: str | None = None
    value: str | None = None
    groups: tuple[ControlPointValues, ...] = ()
    points: tuple[str, ...] = ()


@attrs.frozen
class Reply:
    """One parsed reply line.

    ``fields`` are the fields after ``OK <code>`` (empty for ``NOT OK``);
    ``reason`` is the failure reason (empty for ``OK``).
    """

    ok: bool
    code: int = 0
    fields: tuple[str, ...] = ()
    reason: str = ""


# ---------------------------------------------------------------- numbers


def format_number(value: float) -> str:
    """Write a number the way the protocol does: ``%.10E`` (``1.5`` -> ``1.5000000000E+00``)."""
    return f"{value:.10E}"


def _parse_number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NtcpProtocolError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise NtcpProtocolError(f"{where}: {text!r} is not a finite number")
    return value


# ---------------------------------------------------------------- framing


def encode_line(line: str) -> bytes:
    """Encode one line for the wire, appending ``\\n``.

    Raises:
        NtcpProtocolError: the line holds a line break or non-ASCII text.
    """
    if "\n" in line or "\r" in line:
        raise NtcpProtocolError(f"a line must not contain a line break: {line!r}")
    try:
        return line.encode("ascii") + b"\n"
    except UnicodeEncodeError:
        raise NtcpProtocolError(f"a line must be ASCII: {line!r}") from None


class LineBuffer:
    """Splits a byte stream into lines, holding at most ``max_line_length`` bytes.

    Feed bytes with :meth:`receive_data`; take lines with :meth:`next_line`,
    which returns ``None`` when no complete line is buffered. Lines come back
    as ``str`` without their ``\\n`` or ``\\r\\n``.

    A line longer than the cap is not buffered: :meth:`next_line` raises
    :class:`LineTooLongError` once for it and the rest of that line is thrown
    away, so the stream stays usable. A line that is not ASCII raises
    :class:`NtcpProtocolError`; it is consumed all the same.
    """

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 1:
            raise ValueError(f"max_line_length must be at least 1, got {max_line_length}")
        self.max_line_length = max_line_length
        self._buffer = bytearray()
        self._scan_from = 0  # no b"\n" before this offset
        self._discarding = False  # inside an over-long line, waiting for its end
        self._too_long_pending = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes held, not yet returned as lines."""
        return len(self._buffer)

    def next_line(self) -> str | None:
        """The next complete line, or ``None`` if more data is needed.

        Raises:
            LineTooLongError: a line exceeded the cap (reported once per line).
            NtcpProtocolError: the line is not ASCII.
        """
        while True:
            if self._too_long_pending:
                self._too_long_pending = False
                raise LineTooLongError(
                    f"line longer than {self.max_line_length} bytes; the line was discarded"
                )
            end = self._buffer.find(b"\n", self._scan_from)
            if end < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scan_from = 0
                elif len(self._buffer) > self.max_line_length + 1:  # +1: a trailing b"\r"
                    self._buffer.clear()
                    self._scan_from = 0
                    self._discarding = True
                    self._too_long_pending = True
                    continue
                else:
                    self._scan_from = len(self._buffer)
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line_length:
                raise LineTooLongError(
                    f"line longer than {self.max_line_length} bytes; the line was discarded"
                )
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError:
                raise NtcpProtocolError(
                    f"line is not ASCII text: {raw[:60]!r}{'...' if len(raw) > 60 else ''}"
                ) from None


# ---------------------------------------------------------------- requests

# Fixed-arity verbs: the names of their fields after the verb.
_FIELDS: dict[str, tuple[str, ...]] = {
    "open-session": ("name",),
    "close-session": ("name",),
    "set-parameter": ("transId", "name", "value"),
    "get-parameter": ("transId", "name"),
    "execute": ("transId",),
    "cancel": ("transId",),
}


def _strip_terminator(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _check_name(text: str, what: str) -> None:
    # Spaces inside a field are allowed: deployed clients build transaction
    # ids and session names with them ("trans200812201054 4.328[  2.]").
    if not text.strip():
        raise NtcpProtocolError(f"{what} is empty")
    if any(c.isspace() and c != " " for c in text):
        raise NtcpProtocolError(f"{what} {text!r} must not contain tabs or line breaks")


def _looks_like_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_groups(trans_id: str, fields: Sequence[str]) -> tuple[ControlPointValues, ...]:
    # fields: everything after the transaction id. A field that is not an axis
    # name starts a new control-point group; an axis starts a triplet.
    if not fields:
        raise NtcpProtocolError(
            f"propose {trans_id}: expected <controlPoint> <axis> <type> <value>..., got nothing"
        )
    groups: list[ControlPointValues] = []
    control_point: str | None = None
    values: list[AxisValue] = []
    i = 0
    while i < len(fields):
        field = fields[i]
        position = i + 3  # 1-based field number in the line: verb, transId, then these
        if field in AXES:
            if control_point is None:
                raise NtcpProtocolError(
                    f"propose {trans_id}: field {position} is axis {field!r}"
                    " but no control point precedes it"
                )
            if i + 2 >= len(fields):
                raise NtcpProtocolError(
                    f"propose {trans_id}: {control_point} axis {field!r} at field {position}"
                    " needs a type and a value after it"
                )
            kind, number = fields[i + 1], fields[i + 2]
            if kind not in TYPES:
                raise NtcpProtocolError(
                    f"propose {trans_id}: field {position + 1} is type {kind!r};"
                    f" expected one of {', '.join(TYPES)}"
                )
            value = _parse_number(
                number, f"propose {trans_id}: {control_point} {field} {kind} (field {position + 2})"
            )
            if any(v.axis == field and v.type == kind for v in values):
                raise NtcpProtocolError(
                    f"propose {trans_id}: {control_point} {field} {kind} is given twice"
                )
            values.append(AxisValue(field, kind, value))
            i += 3
        else:
            if field == CONTROL_POINT_KEYWORD:
                # "control-point <name>": how some clients introduce the
                # second and later control points of one proposal.
                if i + 1 >= len(fields):
                    raise NtcpProtocolError(
                        f"propose {trans_id}: {CONTROL_POINT_KEYWORD} at field {position}"
                        " needs a control point name after it"
                    )
                i += 1
                field, position = fields[i], position + 1
                if field in AXES or field == CONTROL_POINT_KEYWORD:
                    raise NtcpProtocolError(
                        f"propose {trans_id}: field {position} is {field!r} where the name"
                        f" after {CONTROL_POINT_KEYWORD} was expected"
                    )
            _check_name(field, f"propose {trans_id}: control point at field {position}")
            if _looks_like_number(field):
                raise NtcpProtocolError(
                    f"propose {trans_id}: unexpected number {field!r} at field {position};"
                    f" expected an axis ({', '.join(AXES)}) or a control point name"
                )
            if field in TYPES:
                raise NtcpProtocolError(
                    f"propose {trans_id}: field {position} is type {field!r} where an axis"
                    f" ({', '.join(AXES)}) or a control point name was expected"
                )
            if control_point is not None:
                if not values:
                    raise NtcpProtocolError(
                        f"propose {trans_id}: control point {control_point} has no"
                        " <axis> <type> <value> triplets"
                    )
                groups.append(ControlPointValues(control_point, tuple(values)))
            if any(g.control_point == field for g in groups):
                raise NtcpProtocolError(
                    f"propose {trans_id}: control point {field} appears twice; put all of"
                    " its triplets in one group"
                )
            control_point, values = field, []
            i += 1
    assert control_point is not None
    if not values:
        raise NtcpProtocolError(
            f"propose {trans_id}: control point {control_point} has no"
            " <axis> <type> <value> triplets"
        )
    groups.append(ControlPointValues(control_point, tuple(values)))
    return tuple(groups)


def _split(line: str) -> tuple[str, list[str]]:
    """The verb and the fields of a request line (terminator already gone).

    Fields are separated by tabs; the verb may be followed by spaces instead
    (``open-session dummySession``). Trailing empty fields (a trailing tab)
    are dropped.

    Raises:
        NtcpProtocolError: the line is empty or its verb is unknown.
    """
    if not line.strip():
        raise NtcpProtocolError(f"empty request; expected one of {', '.join(VERBS)}")
    if "\n" in line or "\r" in line:
        raise NtcpProtocolError("request holds a line break inside it")
    head, *fields = line.split("\t")
    if head not in VERBS:
        verb, _, first = head.partition(" ")
        if verb not in VERBS:
            raise NtcpProtocolError(
                f"unknown request {head[:40]!r}; expected one of {', '.join(VERBS)}"
            )
        head, first = verb, first.lstrip(" ")
        fields.insert(0, first)
    while fields and not fields[-1]:
        fields.pop()
    return head, fields


def verb_of(line: str) -> str | None:
    """The verb of a request line, or ``None`` if it has none this protocol knows.

    Cheaper than :func:`parse_request` and never raises: what a relay needs to
    tell an ``execute`` (in any of its accepted spellings) from the rest.
    """
    try:
        return _split(_strip_terminator(line))[0]
    except NtcpProtocolError:
        return None


def parse_request(line: str) -> Request:
    """Parse one request line (a trailing ``\\n`` or ``\\r\\n`` is allowed).

    Raises:
        NtcpProtocolError: the line is not a well-formed request; ``reason``
            names the field at fault and what was expected.
    """
    verb, fields = _split(_strip_terminator(line))
    if verb == "propose":
        if not fields:
            raise NtcpProtocolError(
                "propose needs <transId> <controlPoint> <axis> <type> <value>..., got no fields"
            )
        trans_id = fields[0]
        _check_name(trans_id, "propose: transId (field 2)")
        return Request(verb, trans_id=trans_id, groups=_parse_groups(trans_id, fields[1:]))
    if verb == "get-control-point":
        if len(fields) < 2:
            raise NtcpProtocolError(
                "get-control-point takes <transId> <controlPoint> [<controlPoint>...],"
                f" got {len(fields)} field{'' if len(fields) == 1 else 's'}"
            )
        for index, text in enumerate(fields, start=2):
            what = "transId" if index == 2 else "controlPoint"
            _check_name(text, f"{verb}: {what} (field {index})")
        return Request(verb, trans_id=fields[0], points=tuple(fields[1:]))
    names = _FIELDS[verb]
    if len(fields) != len(names):
        raise NtcpProtocolError(
            f"{verb} takes {len(names)} field{'s' if len(names) > 1 else ''}"
            f" ({' '.join('<' + n + '>' for n in names)}), got {len(fields)}"
        )
    values = dict(zip(names, fields, strict=True))
    for index, (what, text) in enumerate(values.items(), start=2):
        if what != "value":
            _check_name(text, f"{verb}: {what} (field {index})")
    if verb in ("open-session", "close-session"):
        return Request(verb, name=values["name"])
    return Request(
        verb, trans_id=values["transId"], name=values.get("name"), value=values.get("value")
    )


def reply_count(line: str) -> int:
    """How many reply lines the control system sends for request ``line``.

    One per control point for a well-formed ``get-control-point``; one for
    anything else, malformed requests included (they get one ``NOT OK``).
    """
    try:
        request = parse_request(line)
    except NtcpProtocolError:
        return 1
    return max(1, len(request.points))


def refuse(line: str, reason: str) -> list[str]:
    """The reply lines that refuse request ``line``: one ``NOT OK`` per line it expects.

    A client that named three control points reads three lines; answering a
    failure with one would leave it waiting for the other two.
    """
    return [format_not_ok(reason)] * reply_count(line)


def _triplet_fields(values: Iterable[AxisValue]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += (v.axis, v.type, format_number(v.value))
    return out


def format_request(request: Request) -> str:
    """Write a request as one line, without its terminator.

    Raises:
        NtcpProtocolError: the request lacks a field its verb needs.
    """
    verb = request.verb
    if verb not in VERBS:
        raise NtcpProtocolError(f"unknown request {verb!r}; expected one of {', '.join(VERBS)}")
    if verb in ("open-session", "close-session"):
        fields = [request.name]
    elif verb == "propose":
        if not request.groups:
            raise NtcpProtocolError("propose needs at least one control point group")
        fields = [request.trans_id]
        for group in request.groups:
            fields.append(group.control_point)
            fields += _triplet_fields(group.values)
    elif verb == "set-parameter":
        fields = [request.trans_id, request.name, request.value]
    elif verb == "get-parameter":
        fields = [request.trans_id, request.name]
    elif verb == "get-control-point":
        if not request.points:
            raise NtcpProtocolError("get-control-point needs at least one control point")
        fields = [request.trans_id, *request.points]
    else:
        fields = [request.trans_id]
    if any(f is None for f in fields):
        raise NtcpProtocolError(f"{verb} request is missing a field: {request!r}")
    line = "\t".join([verb, *(str(f) for f in fields)])
    # Round-trip check keeps us from sending what we would refuse to receive.
    parse_request(line)
    return line


# ---------------------------------------------------------------- replies


def _clean_reason(reason: str) -> str:
    text = " ".join(reason.split())
    return text or "unspecified failure"


def format_ok(*fields: str) -> str:
    """A success reply: ``OK\\t0`` then the fields."""
    return "\t".join((_OK, "0", *fields))


def format_not_ok(reason: str) -> str:
    """A failure reply: ``NOT OK\\t<reason>``; tabs and line breaks in the reason become spaces."""
    return f"NOT OK\t{_clean_reason(reason)}"


def format_control_point_reply(trans_id: str, values: ControlPointValues) -> str:
    """The success reply to get-control-point."""
    return format_ok(trans_id, values.control_point, *_triplet_fields(values.values))


def parse_reply(line: str) -> Reply:
    """Parse one reply line (a trailing ``\\n`` or ``\\r\\n`` is allowed).

    ``OK\\t<code>\\t...`` gives ``Reply(ok=True, code, fields)``; ``NOT OK`` or
    ``NOTOK`` followed by a reason (tab- or space-separated) gives
    ``Reply(ok=False, reason=...)``.

    Raises:
        NtcpProtocolError: the line is neither.
    """
    line = _strip_terminator(line)
    for prefix in _NOT_OK:
        if line == prefix or line.startswith((prefix + "\t", prefix + " ")):
            reason = line[len(prefix) :].replace("\t", " ").strip()
            return Reply(ok=False, reason=reason)
    head, *fields = line.split("\t")
    if head != _OK:
        raise NtcpProtocolError(f"reply must start with OK or NOT OK, got {line[:60]!r}")
    if not fields:
        raise NtcpProtocolError("OK reply lacks its status code (expected OK\\t0...)")
    code_text, *rest = fields
    try:
        code = int(code_text)
    except ValueError:
        raise NtcpProtocolError(f"OK reply status code {code_text!r} is not an integer") from None
    return Reply(ok=True, code=code, fields=tuple(rest))


def measured(line: str) -> ControlPointValues | None:
    """The measured values a get-control-point reply line carries.

    ``None`` for a refusal, or a line that is not a well-formed success reply
    (a relay passes such lines on as they came; it is not theirs to judge).
    """
    try:
        return parse_control_point_reply(parse_reply(line))[1]
    except NtcpProtocolError:
        return None


def parse_control_point_reply(reply: Reply) -> tuple[str, ControlPointValues]:
    """The transaction id and measured values of a get-control-point success reply.

    Raises:
        NtcpProtocolError: the reply is a failure or its fields are not
            ``<transId> <controlPoint> (<axis> <type> <value>)...``.
    """
    if not reply.ok:
        raise NtcpProtocolError(f"get-control-point failed: {reply.reason}")
    if len(reply.fields) < 2 or (len(reply.fields) - 2) % 3:
        raise NtcpProtocolError(
            "get-control-point reply must be <transId> <controlPoint> followed by"
            f" axis/type/value triplets, got {len(reply.fields)} fields"
        )
    trans_id, control_point, *rest = reply.fields
    values = []
    for i in range(0, len(rest), 3):
        axis, kind, number = rest[i : i + 3]
        if axis not in AXES or kind not in TYPES:
            raise NtcpProtocolError(
                f"get-control-point reply: {axis!r} {kind!r} is not an axis and type"
            )
        values.append(AxisValue(axis, kind, _parse_number(number, f"{axis} {kind}")))
    return trans_id, ControlPointValues(control_point, tuple(values))
