"""The component pattern, written once.

A component ``<type>_<name>`` has four endpoints on the broker:

* ``<type>_<name>_data_source``: its data channels and ``metadata.txt``;
* ``<type>_<name>_debug_log_source/log.txt``: its Python log records;
* ``<type>_<name>_command_sink/command.txt``: a shared source anyone may put commands on;
* ``<type>_<name>_command_source/command.txt``: its replies.

A component is a subclass with settings, data channels, command handlers
and a ``run`` method::

    class Counter(Component):
        type = "daq"
        channels = {"count": "text/plain"}
        Settings = CounterSettings   # @attrs.frozen, see turbine.settings

        async def run(self):
            n = 0
            while True:
                await self.data.put("count", str(n).encode())
                n += 1
                await trio.sleep(self.config.interval)

        @command("reset", help="start counting from zero")
        async def reset(self) -> str: ...

    if __name__ == "__main__":
        Counter.main()

The framework waits for the broker, reconnects when it comes back (calling
``run`` again; state on ``self`` persists), publishes metadata, answers
``status`` and ``help``, refuses unknown or expired commands, and sends the
log to the debug log source.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import click
import trio

from ._clock import wall_time
from ._component_cli import component_cli
from ._component_log import BrokerLogHandler
from ._component_parts import (
    CommandDesk,
    KeptState,
    Patience,
    call_handler,
    command,
    find_commands,
    usage,
)
from ._component_serve import Sessions
from ._constants import (
    DEFAULT_ADDRESS,
    SPOOL_BYTES,
    SPOOL_BYTES_ENVVAR,
    STATE_DIR,
    STATE_DIR_ENVVAR,
)
from ._errors import ConnectionFailed
from ._retry import Backoff
from .client import Client, Source
from .command import Command, Reply, endpoints
from .settings import (
    ConfigError,
    NoSettings,
    make_settings,
    settings_dict,
)

#: Reconnect backoff: first wait, longest wait (seconds).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


class Component(Sessions):
    """Base class of every component; see the module docstring."""

    #: The ``<type>`` of ``<type>_<name>``.
    type: ClassVar[str] = ""
    #: Data channels of the data source and their content types (an instance
    #: may set its own in ``__init__`` when they depend on its settings).
    channels: dict[str, str] = {}
    #: The settings class: frozen attrs, with defaults and validators (see turbine.settings).
    Settings: ClassVar[builtins.type[Any]] = NoSettings
    #: Ring limits of the data source (None: the broker's defaults).
    cache_frames: ClassVar[int | None] = None
    cache_bytes: ClassVar[int | None] = None
    #: Disk kept for it by a broker with a data dir (0: memory only; None: the broker's default).
    archive_bytes: ClassVar[int | None] = None
    #: Whether a site's operator may command it (the MCP's default rights,
    #: turbine/mcp/users.py); False: only who :meth:`rights` of another says.
    operator_commands: ClassVar[bool] = True
    #: The token it logs in with; None: the one :func:`~turbine.auth.find_token` finds.
    token: str | None = None
    #: The level each command it answers is logged at (a component whose
    #: commands are its traffic, each kept on its sink anyway, logs them at DEBUG).
    command_log_level: ClassVar[int] = logging.INFO
    #: Whose clock :meth:`now` reads: ``local`` (this machine's) or ``broker``
    #: (the broker's, measured at each connection: for machines without NTP).
    clock_source: str = "local"

    def __init__(
        self, name: str, address: str = DEFAULT_ADDRESS, config: Mapping[str, Any] | Any = None
    ) -> None:
        self.name = name
        self.address = address
        self.component = f"{self.type}_{name}"
        self.endpoints = endpoints(self.component)
        #: The settings, an instance of ``Settings`` (a mapping given is checked into one).
        self.config: Any = (
            config if isinstance(config, self.Settings) else self.make_settings(config or {})
        )
        self.log = logging.getLogger(self.component)
        self.started = wall_time()
        #: The broker's clock minus ours, seconds, measured at the last
        #: connection when ``clock_source`` is ``broker`` (else 0).
        self.clock_offset = 0.0
        self.state = "starting"
        self._patience = Patience(self.log, Backoff(RECONNECT_FIRST_S, RECONNECT_MAX_S))
        self.commands_handled = 0
        #: Why ``run`` failed (the metadata's ``error``; None while it has not).
        self.error: str | None = None
        self.client: Client | None = None
        self._data: Source | None = None
        self._desk = CommandDesk(
            self.log, self.execute, self.replied, log_level=self.command_log_level
        )
        #: What must survive a restart: ``self.kept.load()``, ``await self.kept.save(state)``,
        #: in ``$TURBINE_STATE_DIR/<type>_<name>`` (default ``var/<type>_<name>``).
        self.kept = KeptState(Path(os.environ.get(STATE_DIR_ENVVAR) or STATE_DIR) / self.component)
        #: What its client spools at most while the broker is away (frame bytes;
        #: ``$TURBINE_SPOOL_BYTES``, default 64 MiB).
        self.spool_bytes = spool_limit(os.environ.get(SPOOL_BYTES_ENVVAR))
        self._log_handler = BrokerLogHandler()
        self._handlers = find_commands(self)

    # --- what subclasses provide

    async def run(self) -> None:
        """The component's work; runs while the broker is connected.

        Called again after each reconnect.  The default waits forever.
        """
        await trio.sleep_forever()

    def metadata(self) -> dict[str, Any]:
        """The data source's metadata; extend it in subclasses."""
        return {
            "component": self.component,
            "type": self.type,
            "name": self.name,
            "channels": sorted(self.channels),
            "content_types": dict(self.channels),
            "status": self.state,
            "commands": sorted(self._handlers),
            **({"error": self.error} if self.error else {}),
        }

    def now(self) -> float:
        """Seconds since the epoch on the clock this component stamps its frames
        with: the local clock, or with ``clock_source = "broker"`` the broker's
        (the local clock plus the offset measured when it last connected)."""
        return wall_time() + self.clock_offset

    def status(self) -> dict[str, Any]:
        """What ``status`` answers; extend it in subclasses."""
        return {
            "component": self.component,
            "state": self.state,
            "uptime": round(wall_time() - self.started, 3),
            "clock": {"source": self.clock_source, "offset": self.clock_offset},
            "waiting_for": self._patience.reason,
            "commands_handled": self.commands_handled,
            "settings": settings_dict(self.config),
            "log_records_dropped": self._log_handler.dropped,
            "spool": self._spool_status(),
        }

    def _spool_status(self) -> dict[str, int] | None:
        """What the client's spool holds (puts not yet acknowledged), and reconnects."""
        client = self.client
        if client is None or client.spool is None:
            return None
        return {**client.spool.statistics(), "reconnects": client.reconnects}

    # --- settings

    @classmethod
    def make_settings(cls, given: Mapping[str, Any], *, strict: bool = False) -> Any:
        """``Settings`` built from ``given`` (text is converted unless ``strict``).

        Raises:
            ConfigError: an unknown key, a wrong type or a value out of range.
        """
        return make_settings(cls.Settings, given, strict=strict, owner=f"{cls.type} components")

    @classmethod
    def rights(cls, name: str, settings: Any) -> dict[str, tuple[str, ...]]:
        """The source patterns component ``name`` with ``settings`` needs, per
        right (``read``, ``write``, ``command``): the MCP's default rights for
        its user when the site has auth on.

        By default it reads and writes its own four endpoints and commands
        nothing; a subclass adds what its settings say it reads or commands.
        """
        own = tuple(endpoints(f"{cls.type}_{name}").values())
        return {"read": own, "write": own, "command": ()}

    def change_settings(self, **changes: Any) -> None:
        """Replace some settings at run time (a command's job), checked as at start.

        Raises:
            ConfigError: a value its validators refuse.
        """
        try:
            self.config = attrs.evolve(self.config, **changes)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from None

    # --- endpoints

    @property
    def data(self) -> Source:
        """The data source (valid while connected)."""
        if self._data is None:
            raise ConnectionFailed("the component is not connected to the broker")
        return self._data

    async def publish_metadata(self) -> None:
        """Publish :meth:`metadata` now (call after changing what it reports)."""
        if self._data is not None:
            await self._data.set_metadata(self.metadata())

    # --- commands

    @command("status", help="the component's state, uptime and settings")
    async def _status(self) -> dict[str, Any]:
        return self.status()

    @command("help", help="the commands this component answers")
    async def _help(self) -> dict[str, str]:
        return {verb: usage(verb, fn) for verb, fn in sorted(self._handlers.items())}

    async def execute(self, cmd: Command) -> tuple[str, Any, str | None]:
        """Run one command; return ``(status, result, error)``."""
        now = wall_time()
        if cmd.deadline is not None and now > cmd.deadline:
            return (
                "expired",
                None,
                f"the command's deadline passed {now - cmd.deadline:.3f} s before it was read",
            )
        fn = self._handlers.get(cmd.verb)
        if fn is None:
            return (
                "error",
                None,
                f"unknown command {cmd.verb!r}; {self.component} knows: {', '.join(sorted(self._handlers))}",
            )
        status, result, error = await call_handler(cmd, fn)
        if status == "ok":
            self.commands_handled += 1
        return status, result, error

    async def replied(self, cmd: Command, reply: Reply) -> None:
        """Called once the reply to ``cmd`` is queued, before it is flushed: frames
        put here go out with it, after it, so whoever waits for the reply gets it
        before the broker takes them.  The default puts nothing."""

    async def notify(self, message: str, **fields: Any) -> None:
        """Tell operators something on the command source (and the log), unasked.

        The notice is a reply with verb ``notice``, no id, and ``result``
        ``{"message": ..., **fields}``; it carries the sink sequence number of
        the last command answered, so a restart does not answer that one twice.
        """
        self.log.warning("%s %s", message, json.dumps(fields, default=str) if fields else "")
        await self._desk.notify({"message": message, **fields})

    # --- running

    @classmethod
    def cli(cls) -> click.Command:
        """The command line every component shares (``--name``, ``--turbine``, ``--set`` ...)."""
        return component_cli(cls)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """Run the component from the command line (``python -m components.<kind>``)."""
        package = cls.__module__.removesuffix(".component").removesuffix(".__main__")
        cls.cli().main(args=argv, prog_name=f"python -m {package}")


__all__ = ["Component", "ConfigError", "command"]


def spool_limit(given: str | None) -> int:
    """A component's spool limit from ``$TURBINE_SPOOL_BYTES`` (None or empty: the default).

    Raises:
        ConfigError: ``given`` is not a whole number of bytes above 0.
    """
    if not given:
        return SPOOL_BYTES
    try:
        limit = int(given)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ConfigError(
            f"{SPOOL_BYTES_ENVVAR}: expected a number of bytes above 0, got {given!r}"
        )
    return limit
