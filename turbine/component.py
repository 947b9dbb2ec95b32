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
import contextlib
import inspect
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
import click
import trio

from ._clock import wall_time
from ._component_cli import component_cli
from ._component_log import LOG_CHANNEL, BrokerLogHandler
from ._constants import (
    COMMAND_CACHE_BYTES,
    COMMAND_CACHE_FRAMES,
    DEFAULT_ADDRESS,
    LOG_CACHE_BYTES,
    LOG_CACHE_FRAMES,
)
from ._errors import ConnectionFailed, RequestFailed, TurbineError, leaves
from ._retry import Backoff
from ._signals import open_stop_nursery
from .client import Client, Frame, Source, open_client
from .command import COMMAND_CHANNEL, Command, Reply, endpoints
from .settings import (
    ConfigError,
    NoSettings,
    convert,
    make_settings,
    settings_dict,
)

#: Reconnect backoff: first wait, longest wait (seconds).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
#: Refusals a component waits out: its previous process still holds its
#: sources (they go offline soon), or the broker has no memory left for now.
WAIT_FOR = ("held", "memory")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def command(verb: str, *, help: str | None = None) -> Callable[[F], F]:  # noqa: A002
    """Mark a method as the handler of ``verb``.

    Positional command arguments are converted to the parameters' annotated
    types (``int``, ``float``, ``bool``, ``str``).  The return value is the
    reply's result; an exception becomes an error reply with its message.
    """

    def mark(fn: F) -> F:
        fn.__turbine_command__ = verb  # type: ignore[attr-defined]
        fn.__turbine_help__ = help or (inspect.getdoc(fn) or "").split("\n")[0]  # type: ignore[attr-defined]
        return fn

    return mark


class Component:
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
        self.state = "starting"
        #: Why the component is not running yet (None once it is).
        self.waiting_for: str | None = None
        self._waiting_kind: str | None = None
        self.commands_handled = 0
        self.client: Client | None = None
        self._data: Source | None = None
        self._replies: Source | None = None
        self._answered_seq: int | None = None
        self._log_handler = BrokerLogHandler()
        self._handlers = self._find_commands()

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
        }

    def status(self) -> dict[str, Any]:
        """What ``status`` answers; extend it in subclasses."""
        return {
            "component": self.component,
            "state": self.state,
            "uptime": round(wall_time() - self.started, 3),
            "waiting_for": self.waiting_for,
            "commands_handled": self.commands_handled,
            "settings": settings_dict(self.config),
            "log_records_dropped": self._log_handler.dropped,
        }

    # --- settings

    @classmethod
    def make_settings(cls, given: Mapping[str, Any], *, strict: bool = False) -> Any:
        """``Settings`` built from ``given`` (text is converted unless ``strict``).

        Raises:
            ConfigError: an unknown key, a wrong type or a value out of range.
        """
        return make_settings(cls.Settings, given, strict=strict, owner=f"{cls.type} components")

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

    def _find_commands(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        found: dict[str, Callable[..., Awaitable[Any]]] = {}
        for klass in reversed(type(self).__mro__):
            for attr in vars(klass).values():
                verb = getattr(attr, "__turbine_command__", None)
                if verb:
                    found[verb] = getattr(self, attr.__name__)
        return found

    @command("status", help="the component's state, uptime and settings")
    async def _status(self) -> dict[str, Any]:
        return self.status()

    @command("help", help="the commands this component answers")
    async def _help(self) -> dict[str, str]:
        out = {}
        for verb, fn in sorted(self._handlers.items()):
            params = [p for p in inspect.signature(fn).parameters.values()]
            sig = " ".join(
                p.name.upper() if p.default is p.empty else f"[{p.name.upper()}]" for p in params
            )
            out[verb] = f"{verb} {sig}".strip() + f": {fn.__turbine_help__}"  # type: ignore[attr-defined]
        return out

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
        try:
            sig = inspect.signature(fn)
            bound = sig.bind(*cmd.args, **cmd.kwargs)
        except TypeError as exc:
            return (
                "error",
                None,
                f"bad arguments for {cmd.verb!r} ({exc}); usage: {(await self._help())[cmd.verb]}",
            )
        try:
            for pname, value in bound.arguments.items():
                ann = sig.parameters[pname].annotation
                like = {"int": int, "float": float, "bool": bool, "str": str}.get(
                    ann if isinstance(ann, str) else getattr(ann, "__name__", ""), None
                )
                if like is not None:
                    bound.arguments[pname] = convert(value, like, f"argument {pname!r}")
            result = await fn(*bound.args, **bound.kwargs)
        except (TurbineError, ValueError, KeyError, TypeError) as exc:
            return "error", None, str(exc) or type(exc).__name__
        self.commands_handled += 1
        return "ok", result, None

    async def _command_loop(self, tb: Client) -> None:
        ep = self.endpoints
        # Resume after the last command answered (found in our newest reply),
        # so commands sent while we were away are answered, none twice.
        start: str | int = "oldest"
        for frame in await tb.fetch(f"{ep['replies']}/{COMMAND_CHANNEL}", newest=1):
            try:
                seq = Reply.from_json(frame.data).sink_seq
            except ValueError:
                seq = None
            if seq:
                start = seq + 1
        async with tb.subscribe(f"{ep['sink']}/{COMMAND_CHANNEL}", start=start) as sub:
            async for item in sub:
                if not isinstance(item, Frame):
                    self.log.warning(
                        "missed %d commands (evicted before they were read)", item.missed
                    )
                    continue
                await self._answer(item)

    async def _answer(self, frame: Frame) -> None:
        try:
            cmd = Command.from_json(frame.data)
        except ValueError as exc:
            reply = Reply("", "", "error", None, f"not a command: {exc}", frame.seq)
        else:
            self.log.info(
                "command %s %s from %s", cmd.verb, " ".join(map(str, cmd.args)), frame.writer
            )
            status, result, error = await self.execute(cmd)
            if status != "ok":
                self.log.warning("command %s: %s: %s", cmd.verb, status, error)
            reply = Reply(cmd.id, cmd.verb, status, result, error, frame.seq)
        assert self._replies is not None
        await self._replies.put(COMMAND_CHANNEL, reply.to_json())
        await self._replies.flush()
        self._answered_seq = frame.seq

    async def notify(self, message: str, **fields: Any) -> None:
        """Tell operators something on the command source (and the log), unasked.

        The notice is a reply with verb ``notice``, no id, and ``result``
        ``{"message": ..., **fields}``; it carries the sink sequence number of
        the last command answered, so a restart does not answer that one twice.
        """
        self.log.warning("%s %s", message, json.dumps(fields, default=str) if fields else "")
        if self._replies is not None:
            note = Reply(
                "", "notice", "ok", {"message": message, **fields}, None, self._answered_seq
            )
            await self._replies.put(COMMAND_CHANNEL, note.to_json())
            await self._replies.flush()

    # --- running

    async def _pump_log(self, log_source: Source) -> None:
        async for entry in self._log_handler.receive:
            await log_source.put(LOG_CHANNEL, entry)
            if not self._log_handler.receive.statistics().current_buffer_used:
                await log_source.flush()

    async def _open_small(self, tb: Client) -> Source:
        """Open the log and command endpoints; return the log source.

        They carry little: small rings, so that a site's many components do
        not reserve the broker's memory for nothing.
        """
        ep = self.endpoints
        log_source = await tb.open_source(
            ep["log"],
            channels={LOG_CHANNEL: "application/json"},
            cache_frames=LOG_CACHE_FRAMES,
            cache_bytes=LOG_CACHE_BYTES,
        )
        await tb.open_source(
            ep["sink"],
            channels={COMMAND_CHANNEL: "application/json"},
            shared=True,
            cache_frames=COMMAND_CACHE_FRAMES,
            cache_bytes=COMMAND_CACHE_BYTES,
        )
        self._replies = await tb.open_source(
            ep["replies"],
            channels={COMMAND_CHANNEL: "application/json"},
            cache_frames=COMMAND_CACHE_FRAMES,
            cache_bytes=COMMAND_CACHE_BYTES,
        )
        return log_source

    async def _open_data(self, tb: Client, backoff: Backoff) -> Source:
        """Open the data source, waiting (connected, answering commands) while the broker refuses it."""
        while True:
            try:
                return await tb.open_source(
                    self.endpoints["data"],
                    channels=self.channels,
                    cache_frames=self.cache_frames,
                    cache_bytes=self.cache_bytes,
                )
            except RequestFailed as exc:
                if exc.code not in WAIT_FOR:
                    raise
                await self._wait_to_retry(exc.code, str(exc), backoff)

    async def _session(self, tb: Client, backoff: Backoff, ready: Callable[[], None]) -> None:
        self.client = tb
        log_source = await self._open_small(tb)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_log, log_source)
            nursery.start_soon(self._command_loop, tb)
            self._data = await self._open_data(tb, backoff)
            # Only a session that opened everything ends the backoff: a broker
            # that accepts the connection but refuses the source is still away.
            backoff.reset()
            self.waiting_for = None
            self._waiting_kind = None
            self.state = "running"
            await self.publish_metadata()
            self.log.info("connected to %s", self.address)
            ready()
            await self.run()
            # run() returning means the work is done; keep answering commands.
            await trio.sleep_forever()

    async def _wait_to_retry(self, kind: str, reason: str, backoff: Backoff) -> None:
        """Wait before trying again; log ``reason`` once per change of ``kind``, keep it in status."""
        wait = backoff.next_delay()
        self.state = "waiting"
        self.waiting_for = reason
        if kind != self._waiting_kind:
            self.log.warning(
                "%s; trying again in %.1f s (backing off up to %g s)", reason, wait, backoff.most
            )
            self._waiting_kind = kind
        else:
            self.log.debug("%s; trying again in %.1f s", reason, wait)
        await trio.sleep(wait)

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        """Start work that outlives broker connections (a listener, a device link) in ``nursery``.

        Called once by :meth:`serve`, before it first connects; ``nursery``
        lives as long as :meth:`serve`.  Return once that work is ready (e.g.
        with ``await nursery.start(...)``).  The default starts nothing.
        """

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, run and reconnect forever (until cancelled).

        ``await nursery.start(component.serve)`` returns once the component is
        ready: its endpoints open, its metadata published, its commands
        answered.  While the broker is unreachable, or refuses the component's
        sources (held by another client, or no memory left), it waits with
        capped backoff; the reason is logged once per change and shown in
        ``status`` as ``waiting_for``.

        Raises:
            RequestFailed: the broker refused a source for a reason waiting
                cannot cure (a bad name or limits).
        """
        root = logging.getLogger()
        root.addHandler(self._log_handler)
        backoff = Backoff(RECONNECT_FIRST_S, RECONNECT_MAX_S)
        self.started = wall_time()

        def ready() -> None:
            nonlocal task_status
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED

        try:
            async with trio.open_nursery() as lasting:
                await self.start_lasting_work(lasting)
                while True:
                    try:
                        async with open_client(self.address, name=self.component) as tb:
                            await self._session(tb, backoff, ready)
                    except* ConnectionFailed as group:
                        kind, reason = "unreachable", f"broker unreachable ({leaves(group)[0]})"
                    except* RequestFailed as group:
                        refused = leaves(group)
                        if any(e.code not in WAIT_FOR for e in refused):  # type: ignore[attr-defined]
                            raise
                        kind, reason = refused[0].code, str(refused[0])  # type: ignore[attr-defined]
                    self._data = self._replies = None
                    await self._wait_to_retry(kind, reason, backoff)
        finally:
            root.removeHandler(self._log_handler)

    async def serve_until_stopped(self) -> None:
        """:meth:`serve` until SIGTERM or SIGINT; then say "down" in the metadata and stop."""

        async def stop(signum: signal.Signals) -> None:
            self.log.info("stopping (%s)", signum.name)
            self.state = "down"
            with trio.move_on_after(1), contextlib.suppress(TurbineError):
                await self.publish_metadata()

        async with open_stop_nursery(stop) as nursery:
            nursery.start_soon(self.serve)

    @classmethod
    def cli(cls) -> click.Command:
        """The command line every component shares (``--name``, ``--turbine``, ``--set`` ...)."""
        return component_cli(cls)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """Run the component from the command line (``python -m components.<kind>``)."""
        package = cls.__module__.removesuffix(".component").removesuffix(".__main__")
        cls.cli().main(args=argv, prog_name=f"python -m {package}")
