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
(:class:`LineBuffer`, in ``_lines.py``), lines into frozen values
(:func:`parse_request` in ``_requests.py``, :func:`parse_reply` in
``_replies.py``) and values back into lines (:func:`format_request`,
:func:`format_ok`, :func:`format_not_ok`). The values, errors and constants
are in ``_values.py``; this module is where the protocol's names are imported from.
"""

from __future__ import annotations

from ._lines import (
    LineBuffer,
    encode_line,
)
from ._replies import (
    format_control_point_reply,
    format_not_ok,
    format_ok,
    measured,
    parse_control_point_reply,
    parse_reply,
    refuse,
)
from ._requests import (
    format_request,
    parse_request,
    reply_count,
    verb_of,
)
from ._values import (
    AXES,
    CONTROL_POINT_KEYWORD,
    DEFAULT_MAX_LINE_LENGTH,
    TYPES,
    VERBS,
    AxisValue,
    ControlPointValues,
    LineTooLongError,
    NtcpError,
    NtcpProtocolError,
    Reply,
    Request,
    format_number,
)

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
