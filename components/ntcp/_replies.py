"""NTCP replies: ``OK`` and ``NOT OK`` lines, written and parsed, and the measurements they carry."""

from __future__ import annotations

from ._requests import reply_count
from ._values import (
    AXES,
    TYPES,
    AxisValue,
    ControlPointValues,
    NtcpProtocolError,
    Reply,
    parse_number,
    strip_terminator,
    triplet_fields,
)

_OK = "OK"
_NOT_OK = ("NOT OK", "NOTOK")


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
    return format_ok(trans_id, values.control_point, *triplet_fields(values.values))


def parse_reply(line: str) -> Reply:
    """Parse one reply line (a trailing ``\\n`` or ``\\r\\n`` is allowed).

    ``OK\\t<code>\\t...`` gives ``Reply(ok=True, code, fields)``; ``NOT OK`` or
    ``NOTOK`` followed by a reason (tab- or space-separated) gives
    ``Reply(ok=False, reason=...)``.

    Raises:
        NtcpProtocolError: the line is neither.
    """
    line = strip_terminator(line)
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
        values.append(AxisValue(axis, kind, parse_number(number, f"{axis} {kind}")))
    return trans_id, ControlPointValues(control_point, tuple(values))


def refuse(line: str, reason: str) -> list[str]:
    """The reply lines that refuse request ``line``: one ``NOT OK`` per line it expects.

    A client that named three control points reads three lines; answering a
    failure with one would leave it waiting for the other two.
    """
    return [format_not_ok(reason)] * reply_count(line)
