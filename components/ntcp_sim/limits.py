"""The limits of a simulated rig, and the check of a proposal against them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from components.ntcp.protocol import AXES, TYPES, ControlPointValues, format_number

from .config import RigConfig
from .errors import RigError

__all__ = ["Limit", "Limits"]

#: Commanded quantities and the measured quantity each one drives.
_POSITION_OF = {"force": "displacement", "moment": "rotation"}


@attrs.frozen
class Limit:
    lo: float
    hi: float

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi


class Limits:
    """The limits of every control point, axis and type of one rig."""

    def __init__(self, config: RigConfig) -> None:
        self._config = config
        self._table: dict[str, dict[tuple[str, str], Limit]] = {}
        default = {
            "displacement": config.displacement_limit,
            "rotation": config.rotation_limit,
            "force": config.force_limit,
            "moment": config.moment_limit,
        }
        for cp in config.control_points:
            self._table[cp] = {
                (axis, kind): Limit(-default[kind], default[kind])
                for kind in TYPES
                for axis in AXES
            }

    def check_control_point(self, control_point: str) -> None:
        """Check that the rig has a control point of that name.

        Raises:
            RigError: it has none.
        """
        if control_point not in self._table:
            raise RigError(
                f"unknown control point {control_point!r}; this rig has"
                f" {', '.join(self._config.control_points)}"
            )

    def targets(
        self, groups: Iterable[ControlPointValues]
    ) -> dict[str, dict[tuple[str, str], float]]:
        """The positions a proposal asks for: ``{control point: {(axis, position type): target}}``.

        A force (moment) becomes the displacement (rotation) the stiffness
        gives for it; both limits apply.

        Raises:
            RigError: a control point is unknown or given twice, a target is
                outside its limits, or one axis is given both a position and a
                force (moment).
        """
        targets: dict[str, dict[tuple[str, str], float]] = {}
        for group in groups:
            cp = group.control_point
            self.check_control_point(cp)
            if cp in targets:
                raise RigError(f"control point {cp} appears twice")
            limits = self._table[cp]
            wanted: dict[tuple[str, str], float] = {}
            given: dict[tuple[str, str], str] = {}
            for v in group.values:
                limit = limits[(v.axis, v.type)]
                if v.value not in limit:
                    raise RigError(
                        f"{cp} {v.axis} {v.type} {format_number(v.value)}"
                        f" is outside the limits [{format_number(limit.lo)},"
                        f" {format_number(limit.hi)}]"
                    )
                kind = _POSITION_OF.get(v.type, v.type)
                if kind != v.type:
                    k = (
                        self._config.stiffness
                        if kind == "displacement"
                        else self._config.rotational_stiffness
                    )
                    position = v.value / k
                    limit = limits[(v.axis, kind)]
                    if position not in limit:
                        raise RigError(
                            f"{cp} {v.axis} {v.type} {format_number(v.value)}"
                            f" needs {kind} {format_number(position)}, outside the limits"
                            f" [{format_number(limit.lo)}, {format_number(limit.hi)}]"
                        )
                else:
                    position = v.value
                dof = (v.axis, kind)
                if dof in wanted:
                    raise RigError(
                        f"{cp} {v.axis} is given both {given[dof]} and"
                        f" {v.type}; propose one of them"
                    )
                wanted[dof] = position
                given[dof] = v.type
            targets[cp] = wanted
        if not targets:
            raise RigError("no control points given")
        return targets

    def set(self, control_point: str, axis: str, type: str, lo: float, hi: float) -> None:
        """Set the limits of one axis and type; later proposals are checked against them.

        Raises:
            RigError: unknown control point, axis or type, or ``lo > hi``, or a
                bound that is not a finite number.
        """
        self.check_control_point(control_point)
        if axis not in AXES:
            raise RigError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}")
        if type not in TYPES:
            raise RigError(f"unknown type {type!r}; expected one of {', '.join(TYPES)}")
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise RigError(f"limits must be finite numbers, got [{lo}, {hi}]")
        if lo > hi:
            raise RigError(f"lower limit {lo} is above upper limit {hi}")
        self._table[control_point][(axis, type)] = Limit(lo, hi)

    def of(self, control_point: str) -> dict[tuple[str, str], Limit]:
        """The limits of a control point, ``{(axis, type): Limit}``.

        Raises:
            RigError: the control point is unknown.
        """
        self.check_control_point(control_point)
        return dict(self._table[control_point])
