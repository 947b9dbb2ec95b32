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

import random
from collections.abc import Callable, Iterable

import trio

from components.ntcp.protocol import (
    AXES,
    TYPES,
    AxisValue,
    ControlPointValues,
)

from .actuator import POSITION_TYPES, Actuator
from .config import RigConfig
from .errors import RigError
from .limits import Limit, Limits
from .sessions import Sessions, Transaction, TransactionState

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
        self._actuator = Actuator(self.config)
        self._limits = Limits(self.config)
        self._sessions = Sessions(self.config)
        self._parameters: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _noise(self, sigma: float) -> float:
        if sigma == 0:
            return 0.0
        value = self._random.gauss(0.0, sigma)
        bound = NOISE_CLIP * sigma
        return min(bound, max(-bound, value))

    # ------------------------------------------------------------ sessions

    def open_session(self, name: str) -> None:
        """Open a session; its transactions live until :meth:`close_session`.

        Raises:
            RigError: a session of that name is already open.
        """
        self._sessions.open(name)

    def close_session(self, name: str) -> None:
        """Close a session and forget its transactions (moves under way finish).

        Raises:
            RigError: no session of that name is open.
        """
        self._sessions.close(name)

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
        transactions = self._sessions.transactions(session)
        if trans_id in transactions:
            # A transId names a transaction only until it ends: clients build
            # ids from the clock to the second, so a new proposal may reuse the
            # id of one already executed. It is a new transaction; the old one
            # is forgotten (an execute of it was answered once already).
            old = transactions[trans_id]
            self._sessions.refresh(old, now)
            if old.state in (TransactionState.PROPOSED, TransactionState.EXECUTING):
                raise RigError(
                    f"transaction {trans_id} is still {old.state}; execute or cancel it"
                    " before proposing again under its transId"
                )
            del transactions[trans_id]
        try:
            targets = self._limits.targets(groups)
        except RigError as exc:
            self._sessions.remember(
                transactions,
                trans_id,
                Transaction(TransactionState.REJECTED, now, {}, reason=exc.reason),
            )
            raise RigError(f"propose {trans_id} rejected: {exc.reason}") from None
        self._sessions.remember(
            transactions, trans_id, Transaction(TransactionState.PROPOSED, now, targets)
        )

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
        trans = self._sessions.get(session, trans_id, now)
        if trans.state != TransactionState.PROPOSED:
            raise self._sessions.refuse("execute", trans_id, trans)
        done_at = now
        for cp, wanted in trans.targets.items():
            done_at = max(done_at, self._actuator.move(cp, wanted, now))
        trans.state = TransactionState.EXECUTING
        trans.done_at = done_at
        self._sessions.refresh(trans, now)
        return done_at

    def cancel(self, session: str, trans_id: str, now: float | None = None) -> None:
        """Drop a proposal that has not been executed.

        Raises:
            RigError: the session is not open, or the transaction is unknown
                or no longer merely proposed.
        """
        now = self._now(now)
        trans = self._sessions.get(session, trans_id, now)
        if trans.state != TransactionState.PROPOSED:
            raise self._sessions.refuse("cancel", trans_id, trans)
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
        self._limits.check_control_point(control_point)
        position = self._actuator.position(control_point, now)
        c = self.config
        values = [
            AxisValue(axis, kind, position[(axis, kind)]) for kind, axis in _order(POSITION_TYPES)
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
        self._limits.set(control_point, axis, type, lo, hi)

    def limits(self, control_point: str) -> dict[tuple[str, str], Limit]:
        """The limits of a control point, ``{(axis, type): Limit}``.

        Raises:
            RigError: the control point is unknown.
        """
        return self._limits.of(control_point)

    def moving(self, control_point: str, now: float | None = None) -> bool:
        """Whether the actuator of a control point is still moving."""
        now = self._now(now)
        self._limits.check_control_point(control_point)
        return self._actuator.moving(control_point, now)

    def status(self, now: float | None = None) -> dict:
        """A plain-data summary (JSON- and msgpack-ready) of the rig's state."""
        now = self._now(now)
        control_points = {}
        for cp in self.config.control_points:
            position = self._actuator.position(cp, now)
            limits = self._limits.of(cp)
            control_points[cp] = {
                "moving": self._actuator.moving(cp, now),
                "position": {f"{a}/{k}": position[(a, k)] for k, a in _order(POSITION_TYPES)},
                "limits": {
                    f"{a}/{k}": [limits[(a, k)].lo, limits[(a, k)].hi] for k, a in _order(TYPES)
                },
            }
        return {
            "time": now,
            "control_points": control_points,
            "sessions": self._sessions.counts(now),
            "parameters": len(self._parameters),
        }


def _order(kinds: Iterable[str]) -> list[tuple[str, str]]:
    return [(kind, axis) for kind in kinds for axis in AXES]
