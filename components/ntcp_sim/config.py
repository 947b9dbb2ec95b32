"""The configuration of a simulated rig: frozen, validated, and the limits it starts with."""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from components.ntcp.protocol import AXES, CONTROL_POINT_KEYWORD, TYPES

__all__ = ["RigConfig"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive finite number, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _control_point_names(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    if not value:
        raise ValueError("a rig needs at least one control point")
    if len(set(value)) != len(value):
        raise ValueError(f"control point names must be unique, got {value!r}")
    for name in value:
        if not name or any(c.isspace() for c in name) or not name.isascii():
            raise ValueError(f"control point name {name!r} must be ASCII without spaces")
        if name in AXES or name in TYPES or name == CONTROL_POINT_KEYWORD:
            raise ValueError(
                f"control point name {name!r} clashes with an axis, a type or the keyword"
                f" {CONTROL_POINT_KEYWORD}"
            )
        try:
            float(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"control point name {name!r} must not be a number")


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen
class RigConfig:
    """Everything that shapes a simulated rig. Units are whatever the lab uses,
    consistently (e.g. mm, rad, kN, kN*mm)."""

    control_points: tuple[str, ...] = attrs.field(
        default=("MDL-00-01",), converter=_names, validator=_control_point_names
    )
    #: Force per unit displacement.
    stiffness: float = attrs.field(default=100.0, validator=_positive)
    #: Moment per unit rotation.
    rotational_stiffness: float = attrs.field(default=50.0, validator=_positive)
    #: Standard deviation of the force noise.
    force_noise: float = attrs.field(default=0.5, validator=_non_negative)
    #: Standard deviation of the moment noise.
    moment_noise: float = attrs.field(default=0.25, validator=_non_negative)
    #: Actuator speed, displacement units per second.
    displacement_speed: float = attrs.field(default=10.0, validator=_positive)
    #: Actuator speed, rotation units per second.
    rotation_speed: float = attrs.field(default=1.0, validator=_positive)
    #: Seconds a proposal may wait for execute before it lapses.
    lapse_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: Default limits, symmetric about zero, per type.
    displacement_limit: float = attrs.field(default=10.0, validator=_positive)
    rotation_limit: float = attrs.field(default=0.5, validator=_positive)
    force_limit: float = attrs.field(default=1000.0, validator=_positive)
    moment_limit: float = attrs.field(default=100.0, validator=_positive)
    #: Seed of the noise generator.
    seed: int = 0
    #: Transactions remembered per session; the oldest finished ones are
    #: forgotten first (then execute of them answers "unknown transaction").
    max_transactions: int = attrs.field(default=10_000, validator=_positive)
    #: Parameters held by set-parameter.
    max_parameters: int = attrs.field(default=1_000, validator=_positive)
