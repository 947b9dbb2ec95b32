"""The actuators of a simulated rig: where each degree of freedom is, and where it is going.

Every control point has six degrees of freedom (displacement and rotation
along/about x, y and z); a move drives all of them at a finite speed, so it
ends when the slowest one arrives. Pure: methods take ``now``.
"""

from __future__ import annotations

import math

import attrs

from components.ntcp.protocol import AXES

from .config import RigConfig

__all__ = ["POSITION_TYPES", "Actuator"]

#: The measured quantities an actuator positions.
POSITION_TYPES = ("displacement", "rotation")


@attrs.define
class _Motion:
    start: dict[tuple[str, str], float]
    target: dict[tuple[str, str], float]
    started_at: float
    done_at: float


def _dofs() -> list[tuple[str, str]]:
    return [(axis, kind) for kind in POSITION_TYPES for axis in AXES]


class Actuator:
    """The actuators of every control point of one rig."""

    def __init__(self, config: RigConfig) -> None:
        self._config = config
        self._position: dict[str, dict[tuple[str, str], float]] = {}
        self._motion: dict[str, _Motion | None] = {}
        for cp in config.control_points:
            self._position[cp] = dict.fromkeys(_dofs(), 0.0)
            self._motion[cp] = None

    def _speed(self, kind: str) -> float:
        if kind == "displacement":
            return self._config.displacement_speed
        return self._config.rotation_speed

    def _settle(self, control_point: str, now: float) -> None:
        motion = self._motion[control_point]
        if motion is not None and now >= motion.done_at:
            self._position[control_point] = dict(motion.target)
            self._motion[control_point] = None

    def position(self, control_point: str, now: float) -> dict[tuple[str, str], float]:
        """Actuator position of every degree of freedom at ``now``."""
        self._settle(control_point, now)
        motion = self._motion[control_point]
        if motion is None:
            return dict(self._position[control_point])
        elapsed = max(0.0, now - motion.started_at)
        out = {}
        for dof, target in motion.target.items():
            start = motion.start[dof]
            travel = self._speed(dof[1]) * elapsed
            distance = target - start
            out[dof] = (
                target if travel >= abs(distance) else start + math.copysign(travel, distance)
            )
        return out

    def move(self, control_point: str, wanted: dict[tuple[str, str], float], now: float) -> float:
        """Start moving to ``wanted`` (degrees of freedom it does not name stay where they are).

        Returns the time at which the move completes (``now`` if nothing moves).
        """
        start = self.position(control_point, now)
        target = dict(start)
        target.update(wanted)
        duration = max(abs(target[dof] - start[dof]) / self._speed(dof[1]) for dof in target)
        finish = now + duration
        self._position[control_point] = start
        self._motion[control_point] = _Motion(start, target, now, finish)
        return finish

    def moving(self, control_point: str, now: float) -> bool:
        """Whether the actuator of a control point is still moving at ``now``."""
        self._settle(control_point, now)
        return self._motion[control_point] is not None
