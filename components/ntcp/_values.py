"""The NTCP protocol's vocabulary: its constants, errors and frozen values, and how numbers are written."""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from turbine import TurbineError

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


def parse_number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NtcpProtocolError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise NtcpProtocolError(f"{where}: {text!r} is not a finite number")
    return value


def triplet_fields(values: Iterable[AxisValue]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += (v.axis, v.type, format_number(v.value))
    return out


def strip_terminator(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line
