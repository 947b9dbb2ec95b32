"""The wall clock the turbine's own code reads (frame times, deadlines, uptimes).

It is ``time.time`` unless a trio run chose another: ``turbine.testing``
makes it follow trio's clock, so that code under ``autojump_clock`` sees wall
time pass as trio's virtual time does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

_WALL_CLOCK: trio.lowlevel.RunVar[Callable[[], float]] = trio.lowlevel.RunVar("turbine_wall_clock")


def wall_time() -> float:
    """Seconds since the epoch, by the wall clock of the current trio run (``time.time()`` outside one)."""
    try:
        clock = _WALL_CLOCK.get(time.time)
    except RuntimeError:  # not inside trio.run
        return time.time()
    return clock()


def set_wall_clock(clock: Callable[[], float]) -> None:
    """Make ``clock`` the wall clock for the rest of the current trio run."""
    _WALL_CLOCK.set(clock)


def clock_offset(t1: float, t2: float, t3: float, t4: float) -> tuple[float, float]:
    """NTP's on-wire estimate from one exchange: a message sent at ``t1`` on
    clock A, received at ``t2`` on clock B, answered at ``t3`` on B, received
    at ``t4`` on A.  Returns (B's offset from A, round trip less B's time):
    the offset is exact when both legs take equally long, and off by at most
    half the round trip otherwise."""
    return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)
