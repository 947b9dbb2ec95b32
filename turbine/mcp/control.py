"""What an operator asks of a site's programs: start, stop, restart, stop or kill all.

:class:`Control` is the command half of :class:`turbine.mcp.supervisor.Supervisor`
(mixed into it): each command sets what a program should be doing and pokes
it; the supervisor's keeper task for that program (its start and restart
policy) does the rest.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Awaitable, Callable

import trio

from .._constants import START_WAIT_S
from .._errors import TurbineError
from .config import BROKER, McpSettings
from .processes import Program, describe_exit, signal_group

log = logging.getLogger("turbine.mcp")


class Control:
    """Start, stop and restart a supervisor's programs (mixed into the supervisor)."""

    policy: McpSettings
    programs: dict[str, Program]
    broker: Program | None

    def notify(self) -> None:
        raise NotImplementedError

    async def changed(self) -> None:
        raise NotImplementedError

    def get(self, label: str) -> Program:
        raise NotImplementedError

    async def start(self, label: str) -> str:
        """Start a stopped, exited or failed program; return when it runs.

        Raises:
            UnknownProgram: no such program.
            TurbineError: it did not start within 10 s.
        """
        p = self.get(label)
        if p.state in ("running", "stopping"):
            return f"{label} is already {p.state} (pid {p.pid})"
        p.crashes = 0
        p.wanted = True
        p.poke()
        with trio.move_on_after(START_WAIT_S):
            while p.pid is None and p.wanted:
                await self.changed()
        if p.pid is None:
            raise TurbineError(f"{label} did not start ({p.state}, {describe_exit(p.last_exit)})")
        return f"started {label} (pid {p.pid})"

    async def stop(self, label: str, *, kill: bool = False) -> str:
        """Stop a program: SIGTERM to its group, SIGKILL after its grace period
        (its own ``grace``, else the site's).

        Raises:
            UnknownProgram: no such program.
        """
        p = self.get(label)
        p.wanted = False
        p.poke()
        popen = p.popen
        if popen is None:
            if p.state == "backoff":
                p.state = "stopped"
                self.notify()
            return f"{label} is {p.state}"
        pid = popen.pid
        p.state = "stopping"
        self.notify()
        signal_group(pid, signal.SIGKILL if kill else signal.SIGTERM)
        grace = self.policy.grace if p.spec.grace is None else p.spec.grace
        with trio.move_on_after(grace):
            await p.exited.wait()
        if not p.exited.is_set():
            log.warning(
                "%s (pid %d) did not stop within %g s of SIGTERM; killing it",
                label,
                pid,
                grace,
            )
            signal_group(pid, signal.SIGKILL)
            await p.exited.wait()
        return f"stopped {label} ({describe_exit(p.last_exit)})"

    async def restart(self, label: str) -> str:
        await self.stop(label)
        self.get(label).restarts += 1
        return await self.start(label)

    async def stop_all(
        self, *, kill: bool = False, before_broker: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Stop every program at once (components first, then processes, then the broker;
        ``before_broker`` is awaited just before the broker is stopped)."""
        for group in (True, False):
            async with trio.open_nursery() as nursery:
                for p in self.programs.values():
                    if p.spec.component is group and p is not self.broker:
                        nursery.start_soon(functools.partial(self.stop, p.spec.label, kill=kill))
        if before_broker is not None:
            await before_broker()
        if self.broker is not None:
            if self.broker.popen is not None and not kill:
                log.info(
                    "stopping the broker (it may take up to %g s to write what it holds; "
                    "a second Ctrl-C kills it)",
                    self.broker.spec.grace,
                )
            await self.stop(BROKER, kill=kill)

    def kill_all(self) -> None:
        """SIGKILL every running program's group now."""
        for p in self.programs.values():
            if p.popen is not None:
                signal_group(p.popen.pid, signal.SIGKILL)
