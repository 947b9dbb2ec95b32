"""The supervisor: starts, restarts (with backoff) and stops the site's programs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import time
from typing import Any

import trio

from .._constants import ADDRESS_ENVVAR, DRAIN_S, MAX_LINE
from .._errors import TurbineError
from .._retry import capped_delay
from .config import BROKER, SiteConfig, UnknownProgram
from .console import Console
from .control import Control
from .processes import Program, describe_exit, signal_group, spawn, wait_exit
from .users import program_env

log = logging.getLogger("turbine.mcp")

_LISTENING = "turbine listening on "


class BrokerFailed(TurbineError):
    """The site's broker could not start or keeps crashing: the MCP stops the site."""


class Supervisor(Control):
    """Runs programs, restarts them with backoff, stops them on request or at the end.

    With an embedded broker (``site.broker``) the broker is the first program:
    ``turbine serve`` as a child like the others, started before them and
    stopped after them.  Killed, it is started again on the same port and
    data dir after the site's ``[broker] restart_first`` (default
    :data:`~turbine._constants.BROKER_RESTART_FIRST_S`); the clients reconnect by
    themselves.  A run that exits before it listens, or too many crashes in a
    row, raise :class:`BrokerFailed` from :meth:`run`.

    The commands (start, stop, restart, stop or kill all) are its
    :class:`~turbine.mcp.control.Control` half; this keeps each program's
    run and its restart policy.
    """

    def __init__(self, site: SiteConfig, console: Console | None = None) -> None:
        self.site = site
        self.policy = site.mcp
        self.console = console or Console(False)
        self.broker = Program(site.broker_program()) if site.embedded else None
        self.programs = {BROKER: self.broker} if self.broker is not None else {}
        self.programs.update({spec.label: Program(spec) for spec in site.programs})
        self._changed = trio.Event()
        #: Set when the broker first listens (its address is known).
        self._broker_up = trio.Event()
        #: Whether its current run listens, and its last line (why it cannot start).
        self._broker_listens = False
        self._broker_said = ""
        self.address = ""
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.broker is None:
            self._listening(site.address)

    def _listening(self, address: str) -> None:
        self.address = address
        self._env[ADDRESS_ENVVAR] = address

    # --- observing

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Return at the next state change."""
        await self._changed.wait()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        states = {label: p.info(now) for label, p in self.programs.items()}
        if self.broker is not None:
            data_dir = self.site.data_dir
            states[BROKER].update(
                address=self.address,
                data_dir=data_dir,
                disk_bytes=None if data_dir is None else disk_use(data_dir),
            )
        return states

    def get(self, label: str) -> Program:
        """The program called ``label``.

        Raises:
            UnknownProgram: no such program (the message lists them).
        """
        try:
            return self.programs[label]
        except KeyError:
            known = ", ".join(self.programs) or "none"
            raise UnknownProgram(f"no program {label!r} in this site; programs: {known}") from None

    # --- running

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the broker (embedded), then the enabled programs, and keep them
        running until cancelled; ``await nursery.start(supervisor.run)`` returns
        the broker's address once it listens.

        Cancelling leaves running children alone: call :meth:`stop_all` first.

        Raises:
            BrokerFailed: the broker exited before it listened (the message has
                its reason: port taken, data dir locked ...), or kept crashing.
        """
        async with trio.open_nursery() as nursery:
            if self.broker is not None:
                self.broker.wanted = True
                nursery.start_soon(self._keep, self.broker)
                await self._broker_up.wait()
            for p in self.programs.values():
                if p is not self.broker:
                    p.wanted = p.spec.enabled
                    nursery.start_soon(self._keep, p)
            task_status.started(self.address)

    async def _keep(self, p: Program) -> None:
        policy = self.policy
        while True:
            while not p.wanted:
                await p.wait_poke()
            ran = await self._run_once(p)
            if not p.wanted:
                continue
            if p is self.broker and not self._broker_listens:
                said = f": {self._broker_said}" if self._broker_said else ""
                raise BrokerFailed(f"the broker did not start ({describe_exit(p.last_exit)}){said}")
            if not p.spec.restart:
                p.state, p.wanted = "exited", False
                log.warning(
                    "%s exited (%s); not restarting it", p.spec.label, describe_exit(p.last_exit)
                )
                self.notify()
                continue
            if ran >= policy.stable_after:
                p.crashes = 0
            p.crashes += 1
            if p.crashes > policy.max_restarts and p is self.broker:
                raise BrokerFailed(
                    f"the broker keeps crashing ({p.crashes} exits in a row, each within "
                    f"{policy.stable_after:g} s of starting; last: {describe_exit(p.last_exit)})"
                )
            if p.crashes > policy.max_restarts:
                p.state, p.wanted = "failed", False
                log.error(
                    "%s keeps crashing (%d exits in a row, each within %g s of starting; last: %s); "
                    "marked failed: 'start %s' tries again",
                    p.spec.label,
                    p.crashes,
                    policy.stable_after,
                    describe_exit(p.last_exit),
                    p.spec.label,
                )
                self.notify()
                continue
            if p is self.broker:  # every client waits for it: no backoff to speak of
                delay = capped_delay(*self.site.broker_restart, p.crashes)
            else:
                delay = capped_delay(policy.restart_first, policy.restart_max, p.crashes)
            p.state = "backoff"
            log.warning(
                "%s exited unexpectedly (%s) after %.1f s; restarting it in %.1f s (restart %d)",
                p.spec.label,
                describe_exit(p.last_exit),
                ran,
                delay,
                p.restarts + 1,
            )
            self.notify()
            with trio.move_on_after(delay):
                await p.wait_poke()  # `stop` or `start` ends the wait early
            if p.wanted:
                p.restarts += 1

    async def _run_once(self, p: Program) -> float:
        """Run ``p`` once; return how long it ran (seconds)."""
        # Settings travel through a pipe only the child inherits: not on its
        # command line (every user's `ps` shows that), not in its environment
        # (its own children would inherit it), and never on disk.
        settings_fd, settings_w = os.pipe() if p.spec.settings else (None, None)
        if p is self.broker:
            self._broker_listens, self._broker_said = False, ""
        argv = p.spec.argv(self.address, settings_fd)
        read_fd, write_fd = os.pipe()
        try:
            env = program_env(self.site, p.spec, self._env)
            popen = spawn(argv, write_fd, env, () if settings_fd is None else (settings_fd,))
        except OSError as exc:
            os.close(read_fd)
            if settings_w is not None:
                os.close(settings_w)
            log.error("cannot start %s (%s): %s", p.spec.label, shlex.join(argv), exc)
            p.last_exit = 127
            return 0.0
        finally:
            os.close(write_fd)
            if settings_fd is not None:
                os.close(settings_fd)
        begun = trio.current_time()
        p.popen, p.pid, p.started, p.state = popen, popen.pid, time.time(), "running"
        p.exited = trio.Event()
        log.info("started %s (pid %d): %s", p.spec.label, popen.pid, shlex.join(argv))
        self.notify()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, p, read_fd)
                if settings_w is not None:
                    nursery.start_soon(_send_settings, settings_w, p.spec.settings)
                code = await wait_exit(popen)
                # Its output may still be in the pipe; helpers it left may hold the pipe open.
                nursery.cancel_scope.deadline = trio.current_time() + DRAIN_S
        finally:
            if popen.returncode is None:  # cancelled: do not leave it running
                signal_group(popen.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await wait_exit(popen)
        signal_group(popen.pid, signal.SIGKILL)  # whatever it left in its group
        p.last_exit = code
        p.pid = p.popen = None
        p.state = "stopped" if not p.wanted else "exited"
        if not p.wanted:
            log.info("%s stopped (%s)", p.spec.label, describe_exit(code))
        p.exited.set()
        self.notify()
        return trio.current_time() - begun

    async def _forward(self, p: Program, fd: int) -> None:
        """Pass a child's output on to the console, line by line."""
        buf = b""
        async with trio.lowlevel.FdStream(fd) as stream:
            while data := await stream.receive_some(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._line(p, line[:MAX_LINE].decode(errors="replace"))
                if len(buf) > MAX_LINE:
                    self._line(p, buf[:MAX_LINE].decode(errors="replace"))
                    buf = b""
        if buf:
            self._line(p, buf.decode(errors="replace"))

    def _line(self, p: Program, text: str) -> None:
        self.console.line(f"{p.spec.label}: {text}")
        if p is not self.broker or not text.strip():
            return
        self._broker_said = text.strip()
        if text.startswith(_LISTENING) and not self._broker_listens:
            self._broker_listens = True
            if not self._broker_up.is_set():  # its first start: later ones keep its port
                address = text[len(_LISTENING) :].strip()
                self._listening(address)
                p.spec = self.site.broker_program(int(address.rsplit(":", 1)[1]))
                self._broker_up.set()


async def _send_settings(fd: int, settings: dict[str, Any]) -> None:
    """Write ``settings`` as JSON to the child's settings pipe and close it (EOF ends them)."""
    async with trio.lowlevel.FdStream(fd) as stream:
        with contextlib.suppress(trio.BrokenResourceError):  # it exited before reading
            await stream.send_all(json.dumps(settings).encode())


def disk_use(root: str) -> int:
    """Bytes the files under ``root`` take on disk (0 where it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walk
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
