"""The site file: parsed and checked into frozen classes before anything starts."""

from __future__ import annotations

import logging
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .. import kinds
from .._constants import (
    ARCHIVE_BYTES,
    BROKER_RESTART_FIRST_S,
    BROKER_RESTART_MAX_S,
    BROKER_STOP_GRACE_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_MEMORY_BYTES,
    SOURCE_TYPES,
)
from .._errors import TurbineError
from .._keepalive import RemoteLiveness
from ..auth import RIGHTS
from ..client import parse_address
from ..component import Component
from ..names import InvalidName, check_component_name, check_source_name, source_pattern
from ..server import BrokerConfig
from ..settings import ConfigError, make_settings, resolve_paths, settings_dict
from ._table import SiteConfigError, Table

log = logging.getLogger("turbine.mcp")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_KIND = re.compile(r"[a-z][a-z0-9_]*\Z")


#: The embedded broker's name among the site's programs.
BROKER = "broker"


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
class ProgramSpec:
    """One program the MCP runs: a turbine component or a plain process."""

    #: Its name in the MCP's state and commands (``daq_demo`` for a component).
    label: str
    #: Where it came from, for messages (``component[1]``).
    where: str
    #: The kind (``daq``), or "" for a ``command``.
    kind: str
    component: bool
    #: The package ``python -m`` runs (``components.daq``); "" for a ``command``.
    module: str = ""
    name: str = ""
    settings: dict[str, Any] = attrs.field(factory=dict, hash=False)
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    restart: bool = True
    enabled: bool = True
    #: Its user on a site with ``[auth]`` ("": a process that gets no token).
    user: str = ""
    #: Its user's source patterns per right (``read``, ``write``, ``command``).
    rights: dict[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    #: Whether the site's operator may command it (its class's ``operator_commands``).
    operator_commands: bool = False
    #: ``broker``: the component stamps frames on the broker's clock (``--clock broker``).
    clock: str = "local"
    #: Seconds from SIGTERM to SIGKILL when it is stopped (None: the site's ``[mcp] grace``).
    grace: float | None = None

    def argv(self, address: str, settings_fd: int | None = None) -> list[str]:
        """The command line, with ``{turbine}`` replaced by the broker's address.

        A component reads its settings from ``settings_fd`` (the MCP writes
        :attr:`settings` there as JSON); they are never on the command line.
        """
        args = [a.replace("{turbine}", address) for a in self.args]
        if self.command:
            return [a.replace("{turbine}", address) for a in self.command] + args
        argv = [sys.executable, "-m", self.module or f"components.{self.kind}"]
        if self.component:
            argv += ["--name", self.name, "--turbine", address]
            if self.clock != "local":
                argv += ["--clock", self.clock]
            if settings_fd is not None:
                argv += ["--settings-fd", str(settings_fd)]
        return argv + args


@attrs.frozen
class SiteAuth:
    """The ``[auth]`` table: where users and tokens are kept, and the operator's name."""

    #: Absolute directory of ``auth.toml`` and ``tokens/``.
    dir: str
    operator: str = "operator"

    @property
    def auth_file(self) -> Path:
        return Path(self.dir) / "auth.toml"

    def token_file(self, user: str) -> Path:
        return Path(self.dir) / "tokens" / user


@attrs.frozen
class SiteConfig:
    path: str
    mcp: McpSettings
    #: The embedded broker's configuration, or None: the site uses the broker at ``address``.
    broker: BrokerConfig | None
    address: str
    programs: tuple[ProgramSpec, ...]
    #: Where the embedded broker archives every frame (absolute), or None: memory only.
    data_dir: str | None = None
    #: Users and tokens (``[auth]``), or None: the broker checks no tokens.
    auth: SiteAuth | None = None
    #: With ``data_dir``: the disk kept per source that does not ask, and the disk budget
    #: of all sources' archives (None: none), as ``turbine serve`` ``--archive-bytes``/``--max-disk``.
    archive_bytes: int = ARCHIVE_BYTES
    max_disk: int | None = None
    #: The embedded broker's restart delays after it exited: the first, doubling per crash
    #: in a row up to the most (``[broker] restart_first`` / ``restart_max``).
    broker_restart: tuple[float, float] = (BROKER_RESTART_FIRST_S, BROKER_RESTART_MAX_S)
    #: The embedded broker's stop grace (``[broker] grace``): long enough for its shutdown sync.
    broker_grace: float = BROKER_STOP_GRACE_S

    @property
    def embedded(self) -> bool:
        """Whether the MCP runs the site's broker itself."""
        return self.broker is not None

    def broker_program(self, port: int | None = None) -> ProgramSpec:
        """The embedded broker as a program the MCP supervises: ``turbine serve`` with
        this site's host, types, memory and data dir, on ``port`` (default: the site's).

        Raises:
            ValueError: the site has no embedded broker.
        """
        b = self.broker
        if b is None:
            raise ValueError(f"{self.path} uses the broker at {self.address}")
        command = [sys.executable, "-m", "turbine", "serve", "--host", b.host]
        command += ["--port", str(b.port if port is None else port)]
        command += ["--max-memory", str(b.max_memory)]
        for ty in b.types:
            if ty not in SOURCE_TYPES:
                command += ["--type", ty]
        if self.data_dir is not None:
            command += ["--data-dir", self.data_dir, "--archive-bytes", str(self.archive_bytes)]
            if self.max_disk is not None:
                command += ["--max-disk", str(self.max_disk)]
        if self.auth is not None:  # (the MCP writes the site's users there before it starts)
            command += ["--auth", str(self.auth.auth_file)]
        defaults = settings_dict(RemoteLiveness())
        for key, value in settings_dict(b.remote).items():
            if value != defaults[key]:
                command += [f"--{key.replace('_', '-')}", str(value)]
        return ProgramSpec(
            label=BROKER,
            where="broker",
            kind="broker",
            component=False,
            command=tuple(command),
            grace=self.broker_grace,
        )


def available_kinds(components_only: bool = False) -> list[str]:
    """The kinds that can run (with ``components_only``: those with a component class)."""
    return [k.name for k in kinds.available(components_only)]


def component_class(kind: str) -> type[Component]:
    """The component class of the kind ``kind`` (see :mod:`turbine.kinds`).

    Raises:
        LookupError: no such kind, or it has no component class (it may be a plain program).
    """
    found = kinds.find(kind)
    if found is None:
        raise LookupError(f"unknown component kind {kind!r}")
    return found.component_class()


def _kind(t: Table, component: bool) -> kinds.Kind:
    name = t.get("kind", str, what="a component kind (e.g. daq; `turbine components` lists them)")
    kind = kinds.find(name)
    if kind is None:
        known = ", ".join(available_kinds(components_only=component))
        raise t.error("kind", f"unknown component kind {name!r}; expected one of {known}")
    if not kind.runnable():
        raise t.error("kind", f"{kind.module} cannot be run: it has no __main__.py")
    for lost, used in kinds.hidden():
        if lost.name == name:
            log.warning(
                "%s: %s.kind %r runs %s (%s); %s (%s) registers the same name and is not used",
                t.path,
                t.where,
                name,
                used.module,
                used.origin,
                lost.module,
                lost.origin,
            )
    return kind


def _remote_liveness(b: Table, embedded: bool) -> RemoteLiveness:
    """``[broker]``'s keepalive and holder silence keys (``turbine serve``'s options)."""
    keys = [f.name for f in attrs.fields(RemoteLiveness)]
    b.seen.update(keys)
    given = {key: b.data[key] for key in keys if key in b.data}
    if given and not embedded:
        raise b.error(
            next(iter(given)), "only with embedded = true; the broker at address has its own"
        )
    try:
        return make_settings(RemoteLiveness, given, strict=True)
    except ConfigError as exc:
        raise b.error(exc.key or "", exc.problem) from None


def _name(t: Table, key: str = "name", default: Any = Table._MISSING) -> str:
    name = t.get(key, str, default, what="a name (e.g. rig1)")
    if not _NAME.match(name):
        raise t.error(
            key,
            f"expected a name of letters, digits, '_', '.' and '-' starting with a letter or digit (e.g. rig1), got {name!r}",
        )
    return name


def _settings(t: Table, cls: type[Component]) -> dict[str, Any]:
    """The ``settings`` table, checked by the component's settings class (nothing is constructed)."""
    raw = t.get("settings", dict, {}, "a table of settings")
    where = f"{t.where}.settings"
    # A relative file or directory in a site file is relative to the site file.
    raw = resolve_paths(cls.Settings, raw, os.path.dirname(os.path.abspath(t.path)))
    try:
        settings = cls.make_settings(raw, strict=True)
    except ConfigError as exc:
        at = f"{where}.{exc.key}: {exc.problem}" if exc.key else f"{where}: {exc}"
        raise SiteConfigError(f"{t.path}: {at}") from None
    given = settings_dict(settings)
    return {key: given[key] for key in raw}


def _rights(
    t: Table, given: dict[str, tuple[str, ...]] | None = None
) -> dict[str, tuple[str, ...]]:
    """``given`` (a component's defaults) plus the ``read``, ``write`` and
    ``command`` lists of the table's ``rights`` table (source patterns)."""
    r = Table(t.path, f"{t.where}.rights", t.get("rights", dict, {}, "a table of rights"))
    rights = {right: (given or {}).get(right, ()) for right in RIGHTS}
    for right in RIGHTS:
        extra = r.get_strings(right)
        try:
            for pattern in extra:
                source_pattern(pattern)
        except InvalidName as exc:
            raise r.error(right, str(exc)) from None
        rights[right] = tuple(dict.fromkeys((*rights[right], *extra)))
    r.done()
    return rights


def _clock(t: Table) -> str:
    clock = t.get("clock", str, "local", '"local" or "broker"')
    if clock not in ("local", "broker"):
        raise t.error("clock", f'expected "local" or "broker", got {clock!r}')
    return str(clock)


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
    top = Table(p, "site", data)
    m = Table(p, "mcp", top.get("mcp", dict, {}, "an [mcp] table"))
    d = McpSettings()
    mcp = McpSettings(
        name=_name(m, default=d.name),
        grace=m.positive("grace", d.grace),
        restart_first=m.positive("restart_first", d.restart_first),
        restart_max=m.positive("restart_max", d.restart_max),
        max_restarts=m.get("max_restarts", int, d.max_restarts, "a count"),
        stable_after=m.positive("stable_after", d.stable_after),
    )
    m.done()
    b = Table(p, "broker", top.get("broker", dict, {}, "a [broker] table"))
    embedded = b.get("embedded", bool, True)
    extra = b.get_strings("types")
    for ty in extra:
        if not _KIND.match(ty):
            raise b.error("types", f"expected source types like 'dvd', got {ty!r}")
    # The MCP's own endpoints are of type "mcp": an embedded broker always allows it.
    types = SOURCE_TYPES + tuple(dict.fromkeys(t for t in ("mcp", *extra) if t not in SOURCE_TYPES))
    host = b.get("host", str, DEFAULT_HOST, "a host name or address")
    port = b.get("port", int, DEFAULT_PORT, "a port number (0 picks a free one)")
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
    max_memory = b.get("max_memory", int, MAX_MEMORY_BYTES, "a number of bytes")
    data_dir = b.get("data_dir", str, "", "a directory (relative: to the working directory)")
    if data_dir and not embedded:
        raise b.error("data_dir", "only with embedded = true; the broker at address has its own")
    archive_bytes = b.get("archive_bytes", int, ARCHIVE_BYTES, "a number of bytes")
    max_disk = b.get("max_disk", int, 0, "a number of bytes")
    for key, value in (("archive_bytes", archive_bytes), ("max_disk", max_disk)):
        if key in b.data and not data_dir:
            raise b.error(key, "only with data_dir: without one the broker keeps nothing on disk")
        if value < 0:
            raise b.error(key, f"expected a number of bytes (0 or more), got {value}")
    restart_first = b.positive("restart_first", BROKER_RESTART_FIRST_S)
    restart_max = b.positive("restart_max", max(BROKER_RESTART_MAX_S, restart_first))
    broker_grace = b.positive("grace", BROKER_STOP_GRACE_S)
    for key in ("restart_first", "restart_max", "grace"):
        if key in b.data and not embedded:
            raise b.error(key, "only with embedded = true; the MCP restarts only its own broker")
    if restart_max < restart_first:
        raise b.error("restart_max", f"expected at least restart_first ({restart_first:g} s)")
    remote = _remote_liveness(b, embedded)
    broker = (
        BrokerConfig(host=host, port=port, types=types, max_memory=max_memory, remote=remote)
        if embedded
        else None
    )
    b.done()

    programs: list[ProgramSpec] = []
    for i, entry in enumerate(top.get("process", list, [], "[[process]] tables"), start=1):
        t = Table(p, f"process[{i}]", entry)
        name = _name(t)
        cmd = t.get_strings("command")
        if cmd and "kind" in t.data:
            raise t.error("command", "give kind or command, not both")
        kind = None if cmd else _kind(t, component=False)
        programs.append(
            ProgramSpec(
                label=name,
                where=t.where,
                kind=kind.name if kind else "",
                module=kind.module if kind else "",
                component=False,
                name=name,
                args=t.get_strings("args"),
                command=cmd,
                restart=t.get("restart", bool, True),
                enabled=t.get("enabled", bool, True),
                user=_name(t, "user") if "user" in t.data else "",
                rights=_rights(t),
                grace=t.grace(),
            )
        )
        if any(programs[-1].rights.values()) and not programs[-1].user:
            raise t.error("user", "missing; rights are given to a user")
        t.done()
    for i, entry in enumerate(top.get("component", list, [], "[[component]] tables"), start=1):
        t = Table(p, f"component[{i}]", entry)
        kind = _kind(t, component=True)
        try:
            cls = kind.component_class()
        except (ImportError, LookupError) as exc:
            raise t.error(
                "kind",
                f"{kind.module} is not a turbine component ({exc}); run it as a [[process]]",
            ) from None
        name = _name(t)
        if cls.type not in types:
            raise t.error(
                "kind",
                f"{kind.module} makes {cls.type!r} sources; add {cls.type!r} to [broker] types",
            )
        try:
            check_component_name(name)
            check_source_name(f"{cls.type}_{name}_data_source", types=types)
        except InvalidName as exc:
            raise t.error("name", str(exc)) from None
        settings = _settings(t, cls)
        programs.append(
            ProgramSpec(
                label=f"{cls.type}_{name}",
                where=t.where,
                kind=kind.name,
                module=kind.module,
                component=True,
                name=name,
                settings=settings,
                args=t.get_strings("args"),
                restart=t.get("restart", bool, True),
                enabled=t.get("enabled", bool, True),
                user=_name(t, "user", f"{cls.type}_{name}"),
                rights=_rights(t, cls.rights(name, cls.make_settings(settings, strict=True))),
                operator_commands=cls.operator_commands,
                clock=_clock(t),
                grace=t.grace(),
            )
        )
        t.done()
    auth = None
    if "auth" in top.data:
        a = Table(p, "auth", top.get("auth", dict, {}, "an [auth] table"))
        if not embedded:
            raise a.error(
                "", "only with [broker] embedded = true: the MCP gives the broker its users"
            )
        auth_dir = a.get("dir", str, "var/auth", "a directory (relative: to the working directory)")
        auth = SiteAuth(os.path.abspath(auth_dir), _name(a, "operator", "operator"))
        a.done()
    top.done()
    seen: dict[str, str] = {f"mcp_{mcp.name}": "mcp.name"}
    if embedded:
        seen[BROKER] = "the embedded broker"
    for prog in programs:
        if prog.label in seen:
            raise SiteConfigError(
                f"{p}: {prog.where}.name: {prog.label!r} is already taken by {seen[prog.label]}"
            )
        seen[prog.label] = prog.where
    if auth is not None:
        for prog in programs:
            if prog.user in (auth.operator, f"mcp_{mcp.name}"):
                raise SiteConfigError(
                    f"{p}: {prog.where}.user: {prog.user!r} is the site's "
                    f"{'operator' if prog.user == auth.operator else 'MCP'}; give it a user of its own"
                )
    data_dir = os.path.abspath(data_dir) if data_dir else None
    restart, run = (restart_first, restart_max), tuple(programs)
    return SiteConfig(
        p,
        mcp,
        broker,
        address,
        run,
        data_dir,
        auth,
        archive_bytes,
        max_disk or None,
        restart,
        broker_grace,
    )
