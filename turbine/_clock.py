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
