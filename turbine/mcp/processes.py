"""Child processes: spawned so that none outlives the MCP, waited for, signalled."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .config import ProgramSpec

log = logging.getLogger("turbine.mcp")

# --- processes -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _child_setup(parent: int) -> Callable[[], None]:
    """What a child runs between fork and exec: die with its parent."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    prctl = _libc.prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the MCP died before prctl: go now
            os._exit(1)

    return setup


def spawn(
    argv: list[str], output: int, env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that leads its own process group and dies with us.

    Synchronous on purpose: ``PR_SET_PDEATHSIG`` fires when the *thread*
    that forked the child ends, so children must be forked by the main
    thread (which lives as long as the MCP), not by a worker thread as
    ``trio.lowlevel.open_process`` would.  A fork and exec take milliseconds.

    Raises:
        OSError: the program cannot be started.
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        env=env,
        process_group=0,
        preexec_fn=_child_setup(os.getpid()),
        close_fds=True,
        pass_fds=pass_fds,
    )


async def wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait (without a thread) for ``popen`` to exit; return its exit code (-N: signal N)."""
    pidfd = os.pidfd_open(popen.pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return popen.wait()


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pid`` (and to ``pid`` if the group is gone)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "-"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@attrs.define(eq=False)
class Program:
    """A program's live state (owned by the :class:`Supervisor`)."""

    spec: ProgramSpec
    state: str = "stopped"  # running, stopping, backoff, stopped, exited, failed
    pid: int | None = None
    restarts: int = 0
    started: float | None = None
    last_exit: int | None = None
    crashes: int = 0
    wanted: bool = False
    popen: subprocess.Popen[bytes] | None = None
    exited: trio.Event = attrs.field(factory=trio.Event, init=False)
    _wakeup: trio.Event = attrs.field(factory=trio.Event, init=False)

    def poke(self) -> None:
        """Wake the task keeping this program (its wanted state changed)."""
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def wait_poke(self) -> None:
        await self._wakeup.wait()

    def info(self, now: float) -> dict[str, Any]:
        running = self.pid is not None and self.started is not None
        return {
            "name": self.spec.label,
            "kind": self.spec.kind or (self.spec.command[0] if self.spec.command else ""),
            "component": self.spec.component,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(now - self.started, 3) if running else None,  # type: ignore[operator]
            "last_exit": self.last_exit,
            "last_exit_text": describe_exit(self.last_exit),
        }
