"""NTCP requests: parsing a request line into a :class:`Request` and writing one back."""

from __future__ import annotations

from collections.abc import Sequence

from ._values import (
    AXES,
    CONTROL_POINT_KEYWORD,
    TYPES,
    VERBS,
    AxisValue,
    ControlPointValues,
    NtcpProtocolError,
    Request,
    parse_number,
    strip_terminator,
    triplet_fields,
)

# Fixed-arity verbs: the names of their fields after the verb.
_FIELDS: dict[str, tuple[str, ...]] = {
    "open-session": ("name",),
    "close-session": ("name",),
    "set-parameter": ("transId", "name", "value"),
    "get-parameter": ("transId", "name"),
    "execute": ("transId",),
    "cancel": ("transId",),
}


def _is_name(text: str) -> bool:
    """Whether ``text`` may be a name field: not all spaces, and no white space but " "."""
    # Every white space character but " " is unprintable: a printable field (the
    # usual one) needs no look at each character.
    return bool(text.strip()) and (
        text.isprintable() or not any(c.isspace() and c != " " for c in text)
    )


def _check_name(text: str, what: str) -> None:
    # Spaces inside a field are allowed: deployed clients build transaction
    # ids and session names with them ("trans200812201054 4.328[  2.]").
    if _is_name(text):
        return
    if not text.strip():
        raise NtcpProtocolError(f"{what} is empty")
    raise NtcpProtocolError(f"{what} {text!r} must not contain tabs or line breaks")


def _check_points(fields: Sequence[str]) -> None:
    """The fields of a get-control-point: ``<transId> <controlPoint> [<controlPoint>...]``.

    Raises:
        NtcpProtocolError: too few, or one is not a name (says which).
    """
    if len(fields) < 2:
        raise NtcpProtocolError(
            "get-control-point takes <transId> <controlPoint> [<controlPoint>...],"
            f" got {len(fields)} field{'' if len(fields) == 1 else 's'}"
        )
    for index, text in enumerate(fields, start=2):
        if not _is_name(text):  # (the message is made only for a field at fault)
            what = "transId" if index == 2 else "controlPoint"
            _check_name(text, f"get-control-point: {what} (field {index})")


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
            value = parse_number(
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
    line = strip_terminator(line)
    head = line.partition("\t")[0]
    if head in VERBS and "\n" not in line and "\r" not in line:
        return head  # (what _split finds, without splitting every field)
    try:
        return _split(line)[0]
    except NtcpProtocolError:
        return None


def parse_request(line: str) -> Request:
    """Parse one request line (a trailing ``\\n`` or ``\\r\\n`` is allowed).

    Raises:
        NtcpProtocolError: the line is not a well-formed request; ``reason``
            names the field at fault and what was expected.
    """
    verb, fields = _split(strip_terminator(line))
    if verb == "propose":
        if not fields:
            raise NtcpProtocolError(
                "propose needs <transId> <controlPoint> <axis> <type> <value>..., got no fields"
            )
        trans_id = fields[0]
        _check_name(trans_id, "propose: transId (field 2)")
        return Request(verb, trans_id=trans_id, groups=_parse_groups(trans_id, fields[1:]))
    if verb == "get-control-point":
        _check_points(fields)
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
    Parses only a get-control-point (a relay asks this of every request).
    """
    if not line.startswith("get-control-point"):
        return 1  # (a line starts with its verb)
    try:
        verb, fields = _split(strip_terminator(line))
        if verb != "get-control-point":
            return 1
        _check_points(fields)
    except NtcpProtocolError:
        return 1
    return len(fields) - 1


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
            fields += triplet_fields(group.values)
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
