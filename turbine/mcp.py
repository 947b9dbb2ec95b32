"""The master control program: ``turbine mcp SITE.toml`` runs a site.

The MCP starts the broker (or uses one), launches each configured program as
its own OS process, restarts what exits unexpectedly with exponential
backoff, marks what keeps crashing as failed, and on Ctrl-C or SIGTERM stops
every program (SIGTERM, then SIGKILL after a grace period) and then the
broker.  Children get ``PR_SET_PDEATHSIG = SIGKILL``, so none outlives an MCP
that is itself killed with SIGKILL; each child leads its own process group,
which the MCP signals as a whole, so a child's own helpers stop with it.

The MCP is a component too (type ``mcp``): commands ``status``,
``start NAME``, ``stop NAME``, ``restart NAME``; its data source publishes
every program's state on ``mcp_<name>_data_source/state.json`` (state, pid,
restarts, uptime, last exit code) whenever it changes and every second.

The site file
-------------

::

    [mcp]
    name = "demo"             # the MCP's own endpoints: mcp_demo_*
    grace = 5.0               # seconds between SIGTERM and SIGKILL when stopping
    restart_first = 0.5       # first restart delay; doubles with each crash in a row ...
    restart_max = 30.0        # ... up to this
    max_restarts = 5          # crashes in a row before a program is marked failed
    stable_after = 30.0       # a run at least this long resets the crash count

    [broker]
    embedded = true           # run the broker inside the MCP (false: use `address`)
    host = "127.0.0.1"
    port = 3333               # 0 picks a free port; the MCP prints "turbine listening on HOST:PORT"
    types = ["mcp", "dvd"]    # source types besides video, thumbnail, daq, ntcp, audio (mcp: always)
    # address = "127.0.0.1:3333"   # with embedded = false

    [[component]]             # a turbine component, one per table
    kind = "daq"              # the package components.daq
    name = "demo"             # its endpoints: daq_demo_* (the prefix is the class's type)
    args = []                 # extra command-line arguments, e.g. ["--log-level", "DEBUG"]
    restart = true            # restart when it exits unexpectedly
    enabled = true            # start with the site (false: only on `start NAME`)
    [component.settings]      # checked against the class's `settings` before anything starts
    rate = 100.0

    [[process]]               # a plain program (a simulator, a device server): no endpoints
    name = "camera"           # its name in the MCP's state and commands
    kind = "camera_sim"       # runs `python -m components.camera_sim ARGS` ...
    args = ["--port", "8081"]
    # command = ["ffmpeg", "..."]   # ... or any program (instead of kind)

In ``args`` and ``command``, ``{turbine}`` becomes the broker's address.
Processes start before components.  Config errors (unknown kind, bad name,
unknown or missing key, wrong type) are reported with the file, the key and
what is expected, before anything starts; ``[[component]]`` tables are
counted from 1 in messages: ``site.toml: component[2].settings.rate:
expected float, got 'fast'``.

Writing a component the MCP can launch
--------------------------------------

For ``kind = "<kind>"``:

1. ``components/<kind>/`` is a package whose ``__init__.py`` has no side effects;
2. ``components/<kind>/component.py`` defines the :class:`~turbine.component.Component`
   subclass and names it ``COMPONENT = TheClass`` (without ``COMPONENT``, the
   one Component subclass defined in that module is used);
3. ``components/<kind>/__main__.py`` calls ``TheClass.main()``, so that
   ``python -m components.<kind> --name NAME --turbine HOST:PORT --set KEY=VALUE ...``
   runs it: that is the command line the MCP uses;
4. the class's ``type`` (``daq``, ``video``, ``dvd`` ...) must be one of the
   broker's types (``[broker] types`` adds to the standard ones).

A ``[[process]]`` with a ``kind`` only needs ``components/<kind>/__main__.py``;
it gets ``args`` as its command line and ``TURBINE_ADDRESS`` in its environment.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import pkgutil
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from typing import Any, TextIO

import attrs
import click
import trio

from ._constants import ADDRESS_ENVVAR, MAX_MEMORY_BYTES, SOURCE_TYPES
from ._errors import TurbineError
from .client import parse_address
from .component import Component, ConfigError, command
from .names import InvalidName, check_source_name
from .server import BrokerConfig, serve_turbine

log = logging.getLogger("turbine.mcp")

#: How often the state is published and the table redrawn (seconds).
STATUS_INTERVAL_S = 1.0
#: How long a `start` command waits for the process to be running.
START_WAIT_S = 10.0
#: After a child exits, how long its output may take to drain.
DRAIN_S = 1.0
#: Lines of program output kept under the live table.
TAIL_LINES = 14
#: Longest line of program output passed on (the rest is cut).
MAX_LINE = 2000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_KIND = re.compile(r"[a-z][a-z0-9_]*\Z")


class SiteConfigError(TurbineError):
    """The site file is wrong; the message names the file, the key and what is expected."""


class UnknownProgram(TurbineError):
    """A command named a program the site does not have."""


# --- the site file ---------------------------------------------------------------


@attrs.frozen
class McpSettings:
    name: str = "mcp"
    grace: float = 5.0
    restart_first: float = 0.5
    restart_max: float = 30.0
    max_restarts: int = 5
    stable_after: float = 30.0


@attrs.frozen
class BrokerSettings:
    embedded: bool = True
    host: str = "127.0.0.1"
    port: int = 3333
    types: tuple[str, ...] = SOURCE_TYPES + ("mcp",)
    max_memory: int = MAX_MEMORY_BYTES
    address: str = ""

    def config(self) -> BrokerConfig:
        """The embedded broker's configuration."""
        return BrokerConfig(
            host=self.host, port=self.port, types=self.types, max_memory=self.max_memory
        )


@attrs.frozen
class ProgramSpec:
    """One program the MCP runs: a turbine component or a plain process."""

    #: Its name in the MCP's state and commands (``daq_demo`` for a component).
    label: str
    #: Where it came from, for messages (``component[1]``).
    where: str
    #: ``components.<kind>``, or "" for a ``command``.
    kind: str
    component: bool
    name: str = ""
    settings: dict[str, Any] = attrs.field(factory=dict, hash=False)
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    restart: bool = True
    enabled: bool = True

    def argv(self, address: str) -> list[str]:
        """The command line, with ``{turbine}`` replaced by the broker's address."""
        args = [a.replace("{turbine}", address) for a in self.args]
        if self.command:
            return [a.replace("{turbine}", address) for a in self.command] + args
        argv = [sys.executable, "-m", f"components.{self.kind}"]
        if self.component:
            argv += ["--name", self.name, "--turbine", address]
            for key, value in self.settings.items():
                argv += ["--set", f"{key}={_setting_text(value)}"]
        return argv + args


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


@attrs.frozen
class SiteConfig:
    path: str
    mcp: McpSettings
    broker: BrokerSettings
    programs: tuple[ProgramSpec, ...]


_TYPES: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}


def _type_ok(value: Any, like: type) -> bool:
    if like is bool:
        return isinstance(value, bool)
    if like is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if like is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, like)


class _Table:
    """Typed reads from one TOML table, with messages naming file and key."""

    def __init__(self, path: str, where: str, data: Any) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise self.error("", f"expected a table, got {data!r}")
        self.data = data
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> SiteConfigError:
        at = f"{self.where}.{key}" if key else self.where
        return SiteConfigError(f"{self.path}: {at}: {message}")

    _MISSING: Any = object()

    def get(self, key: str, like: type, default: Any = _MISSING, what: str = "") -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is self._MISSING:
                raise self.error(
                    key, f"missing; expected {what or _TYPES.get(like, like.__name__)}"
                )
            return default
        value = self.data[key]
        if not _type_ok(value, like):
            raise self.error(
                key, f"expected {what or _TYPES.get(like, like.__name__)}, got {value!r}"
            )
        return float(value) if like is float else value

    def get_strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def positive(self, key: str, default: float) -> float:
        value = self.get(key, float, default, "a number of seconds")
        if not (math.isfinite(value) and value >= 0):
            raise self.error(key, f"expected a number of seconds (0 or more), got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(
                unknown[0], f"unknown key; expected one of {', '.join(sorted(self.seen))}"
            )


def available_kinds() -> list[str]:
    """The packages under ``components/``."""
    import components

    return sorted(m.name for m in pkgutil.iter_modules(components.__path__) if m.ispkg)


def component_class(kind: str) -> type[Component]:
    """The component class of ``components.<kind>`` (see the module docstring).

    Raises:
        LookupError: the package has no component class (it may be a plain program).
    """
    module = importlib.import_module(f"components.{kind}.component")
    found = getattr(module, "COMPONENT", None)
    if found is None:
        classes = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Component) and c.__module__ == module.__name__
        ]
        if len(classes) == 1:
            found = classes[0]
    if not (isinstance(found, type) and issubclass(found, Component)):
        raise LookupError(f"components.{kind}.component defines no COMPONENT class")
    return found


def _kind(t: _Table, needs_main: bool = True) -> str:
    kind = t.get("kind", str, what="the name of a package under components/ (e.g. daq)")
    if not _KIND.match(kind) or importlib.util.find_spec(f"components.{kind}") is None:
        raise t.error(
            "kind",
            f"unknown component kind {kind!r}; expected one of {', '.join(available_kinds())}",
        )
    if needs_main and importlib.util.find_spec(f"components.{kind}.__main__") is None:
        raise t.error("kind", f"components.{kind} cannot be run: it has no __main__.py")
    return kind


def _name(t: _Table, key: str = "name", default: Any = _Table._MISSING) -> str:
    name = t.get(key, str, default, what="a name (e.g. rig1)")
    if not _NAME.match(name):
        raise t.error(
            key,
            f"expected a name of letters, digits, '_', '.' and '-' starting with a letter or digit (e.g. rig1), got {name!r}",
        )
    return name


def _settings(t: _Table, cls: type[Component], name: str, address: str) -> dict[str, Any]:
    raw = t.get("settings", dict, {}, "a table of settings")
    where = f"{t.where}.settings"
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in cls.settings:
            known = ", ".join(sorted(cls.settings)) or "none"
            raise SiteConfigError(
                f"{t.path}: {where}.{key}: unknown setting; {cls.type} components take: {known}"
            )
        default = cls.settings[key]
        like = type(default)
        if default is not None and not _type_ok(value, like):
            raise SiteConfigError(
                f"{t.path}: {where}.{key}: expected {_TYPES.get(like, like.__name__)}, got {value!r}"
            )
        settings[key] = float(value) if like is float else value
    try:
        cls(name, address, dict(settings))  # the class's own checks (no side effects)
    except (ConfigError, InvalidName) as exc:
        raise SiteConfigError(f"{t.path}: {where}: {exc}") from None
    return settings


def load_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and check a site file; nothing is started.

    Raises:
        SiteConfigError: unreadable, not TOML, or a key is wrong (the message
            names the file, the key and what is expected).
    """
    p = str(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SiteConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(f"{p}: not valid TOML: {exc}") from None
    top = _Table(p, "site", data)
    m = _Table(p, "mcp", top.get("mcp", dict, {}, "an [mcp] table"))
    mcp = McpSettings(
        name=_name(m, default="mcp"),
        grace=m.positive("grace", 5.0),
        restart_first=m.positive("restart_first", 0.5),
        restart_max=m.positive("restart_max", 30.0),
        max_restarts=m.get("max_restarts", int, 5, "a count"),
        stable_after=m.positive("stable_after", 30.0),
    )
    m.done()
    b = _Table(p, "broker", top.get("broker", dict, {}, "a [broker] table"))
    embedded = b.get("embedded", bool, True)
    extra = b.get_strings("types")
    for ty in extra:
        if not _KIND.match(ty):
            raise b.error("types", f"expected source types like 'dvd', got {ty!r}")
    # The MCP's own endpoints are of type "mcp": an embedded broker always allows it.
    types = SOURCE_TYPES + tuple(dict.fromkeys(t for t in ("mcp", *extra) if t not in SOURCE_TYPES))
    host = b.get("host", str, "127.0.0.1", "a host name or address")
    port = b.get("port", int, 3333, "a port number (0 picks a free one)")
    if not 0 <= port <= 65535:
        raise b.error("port", f"expected a port number 0-65535, got {port}")
    address = b.get("address", str, "", "HOST:PORT of the broker to use")
    if embedded and address:
        raise b.error(
            "address", "only with embedded = false; an embedded broker uses host and port"
        )
    if not embedded:
        if not address:
            raise b.error("address", "missing; expected HOST:PORT of the broker (embedded = false)")
        try:
            parse_address(address)
        except TurbineError as exc:
            raise b.error("address", str(exc)) from None
    broker = BrokerSettings(
        embedded=embedded,
        host=host,
        port=port,
        types=types,
        max_memory=b.get("max_memory", int, MAX_MEMORY_BYTES, "a number of bytes"),
        address=address,
    )
    b.done()
    check_address = address or f"{host}:{port}"

    programs: list[ProgramSpec] = []
    for i, entry in enumerate(top.get("process", list, [], "[[process]] tables"), start=1):
        t = _Table(p, f"process[{i}]", entry)
        name = _name(t)
        cmd = t.get_strings("command")
        if cmd and "kind" in t.data:
            raise t.error("command", "give kind or command, not both")
        kind = "" if cmd else _kind(t)
        programs.append(
            ProgramSpec(
                label=name,
                where=t.where,
                kind=kind,
                component=False,
                name=name,
                args=t.get_strings("args"),
                command=cmd,
                restart=t.get("restart", bool, True),
                enabled=t.get("enabled", bool, True),
            )
        )
        t.done()
    for i, entry in enumerate(top.get("component", list, [], "[[component]] tables"), start=1):
        t = _Table(p, f"component[{i}]", entry)
        kind = _kind(t)
        try:
            cls = component_class(kind)
        except (ImportError, LookupError) as exc:
            raise t.error(
                "kind",
                f"components.{kind} is not a turbine component ({exc}); run it as a [[process]]",
            ) from None
        name = _name(t)
        if cls.type not in types:
            raise t.error(
                "kind",
                f"components.{kind} makes {cls.type!r} sources; add {cls.type!r} to [broker] types",
            )
        try:
            check_source_name(f"{cls.type}_{name}_data_source", types=types)
        except InvalidName as exc:
            raise t.error("name", str(exc)) from None
        programs.append(
            ProgramSpec(
                label=f"{cls.type}_{name}",
                where=t.where,
                kind=kind,
                component=True,
                name=name,
                settings=_settings(t, cls, name, check_address),
                args=t.get_strings("args"),
                restart=t.get("restart", bool, True),
                enabled=t.get("enabled", bool, True),
            )
        )
        t.done()
    top.done()
    seen: dict[str, str] = {f"mcp_{mcp.name}": "mcp.name"}
    for prog in programs:
        if prog.label in seen:
            raise SiteConfigError(
                f"{p}: {prog.where}.name: {prog.label!r} is already taken by {seen[prog.label]}"
            )
        seen[prog.label] = prog.where
    return SiteConfig(p, mcp, broker, tuple(programs))


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


def spawn(argv: list[str], output: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
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


class Console:
    """Where the MCP's lines go: stderr, or a live table with a log tail on a terminal."""

    def __init__(self, tty: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.tty = tty
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def line(self, text: str) -> None:
        if self.tty:
            self.tail.append(text)
        else:
            self.err.write(text + "\n")
            self.err.flush()

    def draw(self, header: str, rows: list[dict[str, Any]]) -> None:
        """Redraw the table (terminal only)."""
        if not self.tty:
            return
        width = max([len("NAME")] + [len(r["name"]) for r in rows]) + 2
        lines = [
            header,
            "",
            f"{'NAME':<{width}}{'KIND':<14}{'STATE':<10}{'PID':>8}{'RESTARTS':>10}{'UPTIME':>10}  LAST EXIT",
        ]
        for r in rows:
            pid = str(r["pid"]) if r["pid"] else "-"
            lines.append(
                f"{r['name']:<{width}}{r['kind'][:13]:<14}{r['state']:<10}{pid:>8}{r['restarts']:>10}"
                f"{fmt_duration(r['uptime']):>10}  {r['last_exit_text']}"
            )
        lines += ["", "-" * 30 + " log " + "-" * 30, *self.tail]
        columns = shutil.get_terminal_size().columns
        self.out.write("\x1b[H\x1b[2J" + "\n".join(line[:columns] for line in lines) + "\n")
        self.out.flush()


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


class ConsoleHandler(logging.Handler):
    """Log records to the :class:`Console`."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(self.format(record))
        except Exception:  # a logging handler must never raise
            self.handleError(record)


class Supervisor:
    """Runs programs, restarts them with backoff, stops them on request or at the end."""

    def __init__(self, site: SiteConfig, address: str, console: Console | None = None) -> None:
        self.site = site
        self.policy = site.mcp
        self.address = address
        self.console = console or Console(False)
        self.programs = {spec.label: Program(spec) for spec in site.programs}
        self._changed = trio.Event()
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", ADDRESS_ENVVAR: address}

    # --- observing

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Return at the next state change."""
        await self._changed.wait()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {label: p.info(now) for label, p in self.programs.items()}

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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the enabled programs and keep them running until cancelled.

        Cancelling leaves running children alone: call :meth:`stop_all` first.
        """
        async with trio.open_nursery() as nursery:
            for p in self.programs.values():
                p.wanted = p.spec.enabled
                nursery.start_soon(self._keep, p)
            task_status.started()

    async def _keep(self, p: Program) -> None:
        policy = self.policy
        while True:
            while not p.wanted:
                await p.wait_poke()
            ran = await self._run_once(p)
            if not p.wanted:
                continue
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
            delay = min(policy.restart_first * 2 ** (p.crashes - 1), policy.restart_max)
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
        argv = p.spec.argv(self.address)
        read_fd, write_fd = os.pipe()
        try:
            popen = spawn(argv, write_fd, self._env)
        except OSError as exc:
            os.close(read_fd)
            log.error("cannot start %s (%s): %s", p.spec.label, shlex.join(argv), exc)
            p.last_exit = 127
            return 0.0
        finally:
            os.close(write_fd)
        begun = trio.current_time()
        p.popen, p.pid, p.started, p.state = popen, popen.pid, time.time(), "running"
        p.exited = trio.Event()
        log.info("started %s (pid %d): %s", p.spec.label, popen.pid, shlex.join(argv))
        self.notify()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, p.spec.label, read_fd)
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

    async def _forward(self, label: str, fd: int) -> None:
        """Pass a child's output on to the console, line by line."""
        buf = b""
        async with trio.lowlevel.FdStream(fd) as stream:
            while data := await stream.receive_some(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self.console.line(f"{label}: {line[:MAX_LINE].decode(errors='replace')}")
                if len(buf) > MAX_LINE:
                    self.console.line(f"{label}: {buf[:MAX_LINE].decode(errors='replace')}")
                    buf = b""
        if buf:
            self.console.line(f"{label}: {buf.decode(errors='replace')}")

    # --- commands

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
        """Stop a program: SIGTERM to its group, SIGKILL after the grace period.

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
        with trio.move_on_after(self.policy.grace):
            await p.exited.wait()
        if not p.exited.is_set():
            log.warning(
                "%s (pid %d) did not stop within %g s of SIGTERM; killing it",
                label,
                pid,
                self.policy.grace,
            )
            signal_group(pid, signal.SIGKILL)
            await p.exited.wait()
        return f"stopped {label} ({describe_exit(p.last_exit)})"

    async def restart(self, label: str) -> str:
        await self.stop(label)
        self.get(label).restarts += 1
        return await self.start(label)

    async def stop_all(self, *, kill: bool = False) -> None:
        """Stop every program at once (components first, then processes)."""
        for group in (True, False):
            async with trio.open_nursery() as nursery:
                for p in self.programs.values():
                    if p.spec.component is group:
                        nursery.start_soon(functools.partial(self.stop, p.spec.label, kill=kill))

    def kill_all(self) -> None:
        """SIGKILL every running program's group now."""
        for p in self.programs.values():
            if p.popen is not None:
                signal_group(p.popen.pid, signal.SIGKILL)


# --- the MCP as a component ------------------------------------------------------


class Mcp(Component):
    """The master control program: starts, watches and stops a site's programs."""

    type = "mcp"
    channels = {"state.json": "application/json"}
    settings: dict[str, Any] = {}

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


def _fmt_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        TurbineError: the embedded broker cannot listen on its address.
    """
    console = console or Console(False)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            if site.broker.embedded:
                try:
                    addresses = await outer.start(serve_turbine, site.broker.config())
                except OSError as exc:
                    raise TurbineError(
                        f"cannot listen on {_fmt_address(site.broker.host, site.broker.port)}: "
                        f"{exc.strerror or exc} (is another broker running? set [broker] port "
                        f"in {site.path}, or embedded = false to use it)"
                    ) from None
                address = _fmt_address(*addresses[0])
                console.out.write(f"turbine listening on {address}\n")
                console.out.flush()
            else:
                address = site.broker.address
            supervisor = Supervisor(site, address, console)
            me = Mcp(site.mcp.name, address, supervisor)
            log.info(
                "%s running %s: %d programs, broker %s%s",
                me.component,
                site.path,
                len(supervisor.programs),
                address,
                " (embedded)" if site.broker.embedded else "",
            )
            async with trio.open_nursery() as inner:
                await inner.start(supervisor.run)
                inner.start_soon(me.serve)
                if console.tty:
                    inner.start_soon(_redraw, console, me, site)
                task_status.started(address)
                async for signum in signals:
                    log.info("%s: stopping the site", signal.Signals(signum).name)
                    break
                async with trio.open_nursery() as stopping:

                    async def second_signal() -> None:
                        async for signum in signals:
                            log.warning(
                                "%s again: killing every program now", signal.Signals(signum).name
                            )
                            supervisor.kill_all()

                    stopping.start_soon(second_signal)
                    await supervisor.stop_all()
                    stopping.cancel_scope.cancel()
                inner.cancel_scope.cancel()
                if me.client is not None:
                    # Fail the MCP's own requests now (e.g. unsubscribing as its tasks
                    # unwind) rather than have them wait for a reader that is cancelled.
                    await me.client.aclose()
            if console.tty:
                _draw(console, me, site)
            log.info("every program stopped; stopping the broker")
            outer.cancel_scope.cancel()


def _draw(console: Console, me: Mcp, site: SiteConfig) -> None:
    where = "embedded" if site.broker.embedded else "external"
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
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], TurbineError):
            raise click.ClickException(str(group.exceptions[0])) from None
        raise
    finally:
        root.removeHandler(handler)


__all__ = [
    "BrokerSettings",
    "Console",
    "Mcp",
    "McpSettings",
    "ProgramSpec",
    "SiteConfig",
    "SiteConfigError",
    "Supervisor",
    "UnknownProgram",
    "available_kinds",
    "component_class",
    "load_config",
    "mcp",
    "run_site",
]
