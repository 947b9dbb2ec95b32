"""A simulated test rig, the model behind the NTCP control-system simulator.

Pure and synchronous: every method that depends on time takes ``now`` (seconds
on any monotonic clock; ``trio.current_time()`` in the server), so tests can
drive it by hand or under trio's ``autojump_clock``.

The model:

* Named control points, each with six degrees of freedom: displacement and
  rotation along/about x, y and z.
* Limits per control point, axis and type; a proposal outside them is
  rejected with the reason. A proposed force (moment) is turned into a target
  displacement (rotation) through the stiffness, and both limits apply.
* Transactions per session: propose, then execute or cancel. Executing an
  unknown, rejected, cancelled, lapsed or already executed transaction is
  refused; a proposal not executed within ``lapse_timeout`` lapses. A new
  proposal may reuse the transId of a finished transaction: it is a new
  transaction, and only an execute sent after it moves the actuator again.
* An actuator moving every degree of freedom at a finite speed; execute
  finishes when the slowest one arrives.
* Measurements: displacement and rotation are the actuator position; force
  is ``stiffness * displacement + noise`` and moment is
  ``rotational_stiffness * rotation + noise``. Noise is Gaussian, seeded, and
  clipped to ``NOISE_CLIP`` standard deviations so it is bounded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import attrs
import trio

from components.ntcp.protocol import (
    AXES,
    CONTROL_POINT_KEYWORD,
    TYPES,
    AxisValue,
    ControlPointValues,
    NtcpError,
    format_number,
)

__all__ = [
    "NOISE_CLIP",
    "Limit",
    "Rig",
    "RigConfig",
    "RigError",
    "TransactionState",
]

#: Noise never exceeds this many standard deviations.
NOISE_CLIP = 4.0

#: Commanded quantities and the measured quantity each one drives.
_POSITION_OF = {"force": "displacement", "moment": "rotation"}
_POSITION_TYPES = ("displacement", "rotation")


class RigError(NtcpError):
    """The rig refused a request; ``reason`` says why, fit for a ``NOT OK`` reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransactionState:
    PROPOSED = "proposed"
    EXECUTING = "executing"
    EXECUTED = "executed"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"
    REJECTED = "rejected"
    ALL = (PROPOSED, EXECUTING, EXECUTED, CANCELLED, LAPSED, REJECTED)


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


@attrs.frozen
class Limit:
    lo: float
    hi: float

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi


@attrs.define
class _Transaction:
    state: str
    proposed_at: float
    # {control point: {(axis, position type): target}}
    targets: dict[str, dict[tuple[str, str], float]]
    reason: str = ""
    done_at: float = 0.0


@attrs.define
class _Motion:
    start: dict[tuple[str, str], float]
    target: dict[tuple[str, str], float]
    started_at: float
    done_at: float


def _dofs() -> list[tuple[str, str]]:
    return [(axis, kind) for kind in _POSITION_TYPES for axis in AXES]


class Rig:
    """The simulated rig. One instance is shared by every connection.

    ``clock`` supplies ``now`` when a method is called without it; it defaults
    to ``trio.current_time`` (so those calls must happen inside ``trio.run``).
    """

    def __init__(
        self, config: RigConfig | None = None, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.config = config or RigConfig()
        self._clock = clock
        self._random = random.Random(self.config.seed)
        self._position: dict[str, dict[tuple[str, str], float]] = {}
        self._motion: dict[str, _Motion | None] = {}
        self._limits: dict[str, dict[tuple[str, str], Limit]] = {}
        default = {
            "displacement": self.config.displacement_limit,
            "rotation": self.config.rotation_limit,
            "force": self.config.force_limit,
            "moment": self.config.moment_limit,
        }
        for cp in self.config.control_points:
            self._position[cp] = dict.fromkeys(_dofs(), 0.0)
            self._motion[cp] = None
            self._limits[cp] = {
                (axis, kind): Limit(-default[kind], default[kind])
                for kind in TYPES
                for axis in AXES
            }
        self._sessions: dict[str, dict[str, _Transaction]] = {}
        self._parameters: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _check_control_point(self, control_point: str) -> None:
        if control_point not in self._position:
            raise RigError(
                f"unknown control point {control_point!r}; this rig has"
                f" {', '.join(self.config.control_points)}"
            )

    def _session(self, session: str) -> dict[str, _Transaction]:
        try:
            return self._sessions[session]
        except KeyError:
            raise RigError(f"session {session!r} is not open; send open-session first") from None

    def _speed(self, kind: str) -> float:
        if kind == "displacement":
            return self.config.displacement_speed
        return self.config.rotation_speed

    def _settle(self, control_point: str, now: float) -> None:
        motion = self._motion[control_point]
        if motion is not None and now >= motion.done_at:
            self._position[control_point] = dict(motion.target)
            self._motion[control_point] = None

    def _current(self, control_point: str, now: float) -> dict[tuple[str, str], float]:
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

    def _noise(self, sigma: float) -> float:
        if sigma == 0:
            return 0.0
        value = self._random.gauss(0.0, sigma)
        bound = NOISE_CLIP * sigma
        return min(bound, max(-bound, value))

    def _refresh(self, transactions: dict[str, _Transaction], now: float) -> None:
        for trans in transactions.values():
            self._refresh_one(trans, now)

    def _refresh_one(self, trans: _Transaction, now: float) -> None:
        if (
            trans.state == TransactionState.PROPOSED
            and now - trans.proposed_at > self.config.lapse_timeout
        ):
            trans.state = TransactionState.LAPSED
        elif trans.state == TransactionState.EXECUTING and now >= trans.done_at:
            trans.state = TransactionState.EXECUTED

    def _remember(
        self, transactions: dict[str, _Transaction], trans_id: str, trans: _Transaction
    ) -> None:
        if len(transactions) >= self.config.max_transactions:
            for old_id, old in transactions.items():
                if old.state not in (TransactionState.PROPOSED, TransactionState.EXECUTING):
                    del transactions[old_id]
                    break
            else:
                raise RigError(
                    f"{len(transactions)} transactions are open in this session;"
                    " execute or cancel some before proposing more"
                )
        transactions[trans_id] = trans

    # ------------------------------------------------------------ sessions

    def open_session(self, name: str) -> None:
        """Open a session; its transactions live until :meth:`close_session`.

        Raises:
            RigError: a session of that name is already open.
        """
        if name in self._sessions:
            raise RigError(f"session {name!r} is already open; close it or pick another name")
        self._sessions[name] = {}

    def close_session(self, name: str) -> None:
        """Close a session and forget its transactions (moves under way finish).

        Raises:
            RigError: no session of that name is open.
        """
        self._session(name)
        del self._sessions[name]

    # ------------------------------------------------------------ parameters

    def set_parameter(self, name: str, value: str) -> None:
        """Store a parameter.

        Raises:
            RigError: ``max_parameters`` are held already and ``name`` is new.
        """
        if name not in self._parameters and len(self._parameters) >= self.config.max_parameters:
            raise RigError(f"too many parameters (limit {self.config.max_parameters})")
        self._parameters[name] = value

    def get_parameter(self, name: str) -> str:
        """The stored value of a parameter.

        Raises:
            RigError: the parameter was never set.
        """
        try:
            return self._parameters[name]
        except KeyError:
            raise RigError(f"unknown parameter {name!r}; set it with set-parameter first") from None

    # ------------------------------------------------------------ transactions

    def propose(
        self,
        session: str,
        trans_id: str,
        groups: Iterable[ControlPointValues],
        now: float | None = None,
    ) -> None:
        """Check a proposal against the limits and hold it for execute or cancel.

        A rejected proposal is remembered as rejected, so a later execute of
        it says why.

        Raises:
            RigError: the session is not open, the transId is taken, a control
                point is unknown, a target is outside its limits, or one axis
                is given both a position and a force (moment).
        """
        now = self._now(now)
        transactions = self._session(session)
        if trans_id in transactions:
            # A transId names a transaction only until it ends: clients build
            # ids from the clock to the second, so a new proposal may reuse the
            # id of one already executed. It is a new transaction; the old one
            # is forgotten (an execute of it was answered once already).
            old = transactions[trans_id]
            self._refresh_one(old, now)
            if old.state in (TransactionState.PROPOSED, TransactionState.EXECUTING):
                raise RigError(
                    f"transaction {trans_id} is still {old.state}; execute or cancel it"
                    " before proposing again under its transId"
                )
            del transactions[trans_id]
        try:
            targets = self._check_proposal(groups)
        except RigError as exc:
            self._remember(
                transactions,
                trans_id,
                _Transaction(TransactionState.REJECTED, now, {}, reason=exc.reason),
            )
            raise RigError(f"propose {trans_id} rejected: {exc.reason}") from None
        self._remember(
            transactions, trans_id, _Transaction(TransactionState.PROPOSED, now, targets)
        )

    def _check_proposal(
        self, groups: Iterable[ControlPointValues]
    ) -> dict[str, dict[tuple[str, str], float]]:
        targets: dict[str, dict[tuple[str, str], float]] = {}
        for group in groups:
            cp = group.control_point
            self._check_control_point(cp)
            if cp in targets:
                raise RigError(f"control point {cp} appears twice")
            limits = self._limits[cp]
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
                        self.config.stiffness
                        if kind == "displacement"
                        else self.config.rotational_stiffness
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

    def _get(self, session: str, trans_id: str, now: float) -> _Transaction:
        transactions = self._session(session)
        try:
            trans = transactions[trans_id]
        except KeyError:
            raise RigError(f"unknown transaction {trans_id}; propose it first") from None
        self._refresh_one(trans, now)
        return trans

    def _refuse(self, verb: str, trans_id: str, trans: _Transaction) -> RigError:
        state = trans.state
        if state == TransactionState.REJECTED:
            why = f"was rejected at propose ({trans.reason})"
        elif state == TransactionState.LAPSED:
            why = (
                f"lapsed: it was not executed within"
                f" {self.config.lapse_timeout:g} s of its proposal"
            )
        elif state == TransactionState.EXECUTING:
            why = "is already executing"
        else:
            why = f"was already {state}"
        return RigError(f"cannot {verb} transaction {trans_id}: it {why}")

    def execute(self, session: str, trans_id: str, now: float | None = None) -> float:
        """Start moving the actuator to a proposal's targets.

        Returns the time at which the move completes (``now`` if nothing moves);
        execute's reply is due then. Degrees of freedom the proposal does not
        name stay where they are.

        Raises:
            RigError: the session is not open, or the transaction is unknown,
                rejected, lapsed, cancelled, executing or executed.
        """
        now = self._now(now)
        trans = self._get(session, trans_id, now)
        if trans.state != TransactionState.PROPOSED:
            raise self._refuse("execute", trans_id, trans)
        done_at = now
        for cp, wanted in trans.targets.items():
            start = self._current(cp, now)
            target = dict(start)
            target.update(wanted)
            duration = max(abs(target[dof] - start[dof]) / self._speed(dof[1]) for dof in target)
            finish = now + duration
            self._position[cp] = start
            self._motion[cp] = _Motion(start, target, now, finish)
            done_at = max(done_at, finish)
        trans.state = TransactionState.EXECUTING
        trans.done_at = done_at
        self._refresh_one(trans, now)
        return done_at

    def cancel(self, session: str, trans_id: str, now: float | None = None) -> None:
        """Drop a proposal that has not been executed.

        Raises:
            RigError: the session is not open, or the transaction is unknown
                or no longer merely proposed.
        """
        now = self._now(now)
        trans = self._get(session, trans_id, now)
        if trans.state != TransactionState.PROPOSED:
            raise self._refuse("cancel", trans_id, trans)
        trans.state = TransactionState.CANCELLED

    # ------------------------------------------------------------ measurements

    def read_control_point(
        self, control_point: str, now: float | None = None
    ) -> ControlPointValues:
        """Measure one control point: 12 triplets, types in ``TYPES`` order, axes in ``AXES`` order.

        Each call draws fresh noise for the forces and moments.

        Raises:
            RigError: the control point is unknown.
        """
        now = self._now(now)
        self._check_control_point(control_point)
        position = self._current(control_point, now)
        c = self.config
        values = [
            AxisValue(axis, kind, position[(axis, kind)]) for kind, axis in _order(_POSITION_TYPES)
        ]
        values += [
            AxisValue(
                axis,
                "force",
                c.stiffness * position[(axis, "displacement")] + self._noise(c.force_noise),
            )
            for axis in AXES
        ]
        values += [
            AxisValue(
                axis,
                "moment",
                c.rotational_stiffness * position[(axis, "rotation")] + self._noise(c.moment_noise),
            )
            for axis in AXES
        ]
        return ControlPointValues(control_point, tuple(values))

    def measurements(self, now: float | None = None) -> dict[str, float]:
        """Every control point's measured values, named ``<cp>/<axis>/<type>``.

        This is what the simulator component publishes; it draws noise like
        :meth:`read_control_point`.
        """
        now = self._now(now)
        out: dict[str, float] = {}
        for cp in self.config.control_points:
            for v in self.read_control_point(cp, now).values:
                out[f"{cp}/{v.axis}/{v.type}"] = v.value
        return out

    # ------------------------------------------------------------ operations

    def set_limit(self, control_point: str, axis: str, type: str, lo: float, hi: float) -> None:
        """Set the limits of one axis and type; later proposals are checked against them.

        Raises:
            RigError: unknown control point, axis or type, or ``lo > hi``, or a
                bound that is not a finite number.
        """
        self._check_control_point(control_point)
        if axis not in AXES:
            raise RigError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}")
        if type not in TYPES:
            raise RigError(f"unknown type {type!r}; expected one of {', '.join(TYPES)}")
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise RigError(f"limits must be finite numbers, got [{lo}, {hi}]")
        if lo > hi:
            raise RigError(f"lower limit {lo} is above upper limit {hi}")
        self._limits[control_point][(axis, type)] = Limit(lo, hi)

    def limits(self, control_point: str) -> dict[tuple[str, str], Limit]:
        """The limits of a control point, ``{(axis, type): Limit}``.

        Raises:
            RigError: the control point is unknown.
        """
        self._check_control_point(control_point)
        return dict(self._limits[control_point])

    def moving(self, control_point: str, now: float | None = None) -> bool:
        """Whether the actuator of a control point is still moving."""
        now = self._now(now)
        self._check_control_point(control_point)
        self._settle(control_point, now)
        return self._motion[control_point] is not None

    def status(self, now: float | None = None) -> dict:
        """A plain-data summary (JSON- and msgpack-ready) of the rig's state."""
        now = self._now(now)
        control_points = {}
        for cp in self.config.control_points:
            position = self._current(cp, now)
            control_points[cp] = {
                "moving": self._motion[cp] is not None,
                "position": {f"{a}/{k}": position[(a, k)] for k, a in _order(_POSITION_TYPES)},
                "limits": {
                    f"{a}/{k}": [self._limits[cp][(a, k)].lo, self._limits[cp][(a, k)].hi]
                    for k, a in _order(TYPES)
                },
            }
        sessions = {}
        for name, transactions in self._sessions.items():
            self._refresh(transactions, now)
            counts = dict.fromkeys(TransactionState.ALL, 0)
            for trans in transactions.values():
                counts[trans.state] += 1
            sessions[name] = counts
        return {
            "time": now,
            "control_points": control_points,
            "sessions": sessions,
            "parameters": len(self._parameters),
        }


def _order(kinds: Iterable[str]) -> list[tuple[str, str]]:
    return [(kind, axis) for kind in kinds for axis in AXES]
