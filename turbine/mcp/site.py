"""Running a site: the broker, the supervisor, and the MCP as a component."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import sys
import time
from typing import Any

import click
import trio

from .._constants import STATUS_INTERVAL_S, TOKEN_ENVVAR
from .._errors import TurbineError, unwrap
from .._format import fmt_duration
from .._signals import open_stop_nursery
from ..component import Component, command
from .config import SiteConfig, SiteConfigError, load_config
from .console import Console, ConsoleHandler
from .supervisor import BrokerFailed, Supervisor
from .users import prepare_users

log = logging.getLogger("turbine.mcp")

# --- the MCP as a component ------------------------------------------------------


class Mcp(Component):
    """The master control program: starts, watches and stops a site's programs."""

    type = "mcp"
    channels = {"state.json": "application/json"}

    def __init__(self, name: str, address: str, supervisor: Supervisor) -> None:
        super().__init__(name, address)
        self.supervisor = supervisor

    async def run(self) -> None:
        while True:
            state = {"time": time.time(), "programs": self.supervisor.snapshot()}
            await self.data.put("state.json", json.dumps(state).encode())
            await self.data.flush()
            with trio.move_on_after(STATUS_INTERVAL_S):
                await self.supervisor.changed()

    def metadata(self) -> dict[str, Any]:
        md = super().metadata()
        md.update(
            {
                "config": self.supervisor.site.path,
                "broker": self.address,
                "programs": list(self.supervisor.programs),
            }
        )
        return md

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(
            {
                "config": self.supervisor.site.path,
                "broker": self.address,
                "programs": self.supervisor.snapshot(),
            }
        )
        return st

    @command("start", help="start a stopped or failed program")
    async def start(self, name: str) -> str:
        return await self.supervisor.start(name)

    @command("stop", help="stop a program (it stays stopped)")
    async def stop(self, name: str) -> str:
        return await self.supervisor.stop(name)

    @command("restart", help="stop a program and start it again")
    async def restart(self, name: str) -> str:
        return await self.supervisor.restart(name)


# --- running a site --------------------------------------------------------------


async def run_site(
    site: SiteConfig,
    console: Console | None = None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``site`` until SIGINT or SIGTERM, then stop its programs and the broker.

    ``await nursery.start(run_site, site)`` returns the broker's address.  A
    second signal during the shutdown kills the programs at once.

    Raises:
        TurbineError: the embedded broker (a child process the supervisor keeps
            running) cannot start: its address or data dir is taken, or it
            keeps crashing.
    """
    console = console or Console(False)
    supervisor: Supervisor | None = None
    me: Mcp | None = None
    me_scope, me_gone = trio.CancelScope(), trio.Event()

    async def serve_me(me: Mcp) -> None:
        try:
            with me_scope:
                await me.serve()
        finally:
            me_gone.set()

    async def leave(me: Mcp) -> None:
        """Say "down" and close the MCP's own connection before its broker stops."""
        me.state = "down"
        with trio.move_on_after(1), contextlib.suppress(TurbineError):
            await me.publish_metadata()
        me_scope.cancel()
        await me_gone.wait()

    async def stop(signum: signal.Signals) -> None:
        log.info("%s: stopping the site", signum.name)
        if supervisor is None or me is None:
            return
        await supervisor.stop_all(before_broker=functools.partial(leave, me))
        if console.tty:
            _draw(console, me, site)
        log.info("every program and the broker stopped")

    def again(signum: signal.Signals) -> None:
        log.warning("%s again: killing every program now", signum.name)
        if supervisor is not None:
            supervisor.kill_all()

    users = prepare_users(site) if site.auth is not None else None
    async with open_stop_nursery(stop, again) as nursery:
        supervisor = Supervisor(site, console)
        try:
            address = await nursery.start(supervisor.run)
        except BrokerFailed as exc:
            raise TurbineError(
                f"{exc} (the [broker] of {site.path}: is another broker running on its port "
                f"or data_dir? set port or data_dir, or embedded = false to use it)"
            ) from None
        if site.embedded:
            console.out.write(f"turbine listening on {address}\n")
            console.out.flush()
        me = Mcp(site.mcp.name, address, supervisor)
        if users is not None:
            me.token = users.mcp_token
            log.info(
                "auth on: %d users in %s; the operator's token is %s",
                len(users.table.users),
                users.table.path,
                f"in {users.operator_file}, where the turbine commands find it"
                if users.operator_file
                else f"the one in {TOKEN_ENVVAR}",
            )
        log.info(
            "%s running %s: %d programs, broker %s%s",
            me.component,
            site.path,
            len(supervisor.programs),
            address,
            " (embedded)" if site.embedded else "",
        )
        nursery.start_soon(serve_me, me)
        if console.tty:
            nursery.start_soon(_redraw, console, me, site)
        task_status.started(address)


def _draw(console: Console, me: Mcp, site: SiteConfig) -> None:
    where = "embedded" if site.embedded else "external"
    header = (
        f"{me.component}  {site.path}  broker {me.address} ({where})  "
        f"up {fmt_duration(time.time() - me.started)}  -- Ctrl-C stops the site"
    )
    console.draw(header, list(me.supervisor.snapshot().values()))


async def _redraw(console: Console, me: Mcp, site: SiteConfig) -> None:
    while True:
        _draw(console, me, site)
        with trio.move_on_after(STATUS_INTERVAL_S):
            await me.supervisor.changed()


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--plain",
    is_flag=True,
    help="Log lines on stderr instead of the live table, even on a terminal.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
)
def mcp(config: str, plain: bool, log_level: str) -> None:
    """Run the site described by CONFIG (TOML): the broker, components and processes.

    Restarts what crashes; Ctrl-C or SIGTERM stops everything.  On a terminal
    a live status table is shown; otherwise each event is a log line on stderr.
    The broker's address is printed first ("turbine listening on HOST:PORT").
    """
    try:
        site = load_config(config)
    except SiteConfigError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console(sys.stdout.isatty() and not plain)
    root = logging.getLogger()
    root.setLevel(log_level)
    handler = ConsoleHandler(console)
    root.addHandler(handler)
    try:
        trio.run(run_site, site, console)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TurbineError as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if isinstance(inner, TurbineError):
            raise click.ClickException(str(inner)) from None
        raise
    finally:
        root.removeHandler(handler)
