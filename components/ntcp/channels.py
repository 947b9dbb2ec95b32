"""Where NTCP measurements go on the turbine: one float64 channel per control point, axis and type.

The simulator component publishes its rig's measurements this way and the
transport translator what each ``get-control-point`` reply carries, so a
subscriber reads ``<controlPoint>.<axis>.<type>`` (``MDL-00-01.x.force``)
from either.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from turbine import FLOAT64_CONTENT_TYPE

from .protocol import AXES, TYPES, ControlPointValues

__all__ = ["measurement_channel", "measurement_channels", "measurement_frames"]


def measurement_channel(control_point: str, axis: str, kind: str) -> str:
    """The data channel of one measured value, e.g. ``MDL-00-01.x.displacement``."""
    return f"{control_point}.{axis}.{kind}"


def measurement_channels(control_points: Iterable[str]) -> dict[str, str]:
    """Every measurement channel of ``control_points`` and its content type (float64)."""
    return {
        measurement_channel(cp, axis, kind): FLOAT64_CONTENT_TYPE
        for cp in control_points
        for kind in TYPES
        for axis in AXES
    }


def measurement_frames(values: ControlPointValues) -> list[tuple[str, bytes]]:
    """``(channel, little-endian float64)`` for each measured value of one control point."""
    return [
        (measurement_channel(values.control_point, v.axis, v.type), struct.pack("<d", v.value))
        for v in values.values
    ]
