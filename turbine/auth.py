"""Who may do what: users, their tokens (kept as SHA-256 only) and their rights.

An auth file (TOML, ``turbine serve --auth FILE``) names users::

    [users.operator]
    token_sha256 = "9f86d08..."      # turbine auth token prints a fresh token and this line
    admin = true                     # delete, change protections, every client in status
    read = ["*"]                     # list, fetch, subscribe, monitor, metadata
    write = ["*"]                    # open, put, set metadata
    command = ["*"]                  # put into matching command sinks

Patterns are the ``*`` source patterns of ``list`` (``daq_*``).  A source
that matches none of a user's patterns is no-access for that user: it is not
listed, and reading it gets the answer a source that does not exist gets.
Rights are checked when a request is accepted or a channel attached to a
subscription, never per frame: :class:`Access` caches each source's answer.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

import attrs

from ._constants import (
    AUTH_FAILURE_DELAY_MAX_S,
    AUTH_FAILURE_DELAY_S,
    AUTH_FAILURE_HOSTS,
    TOKEN_ENVVAR,
    TOKEN_FILE_ENVVAR,
)
from ._errors import TurbineError
from ._files import write_atomically
from .names import InvalidName, Pattern, source_pattern

READ, WRITE, COMMAND = "read", "write", "command"
RIGHTS = (READ, WRITE, COMMAND)
#: A source whose name ends so is a command sink: putting into it takes ``command``.
COMMAND_SINK_SUFFIX = "_command_sink"
#: Bytes of randomness in a token made by :func:`new_token`.
TOKEN_BYTES = 32


class AuthError(TurbineError):
    """An auth file that cannot be used, or a token the broker refused."""


class LoginRefused(AuthError):
    """The broker refused the client's token at the handshake."""


def token_hash(token: str) -> str:
    """The SHA-256 of ``token`` as the auth file stores it (hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_command_sink(source: str) -> bool:
    return source.endswith(COMMAND_SINK_SUFFIX)


@attrs.frozen
class Rights:
    """One user's rights: source patterns per right, and whether the user is an admin."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    admin: bool = False
    _compiled: dict[str, tuple[Pattern, ...]] = attrs.field(
        init=False, eq=False, repr=False, factory=dict
    )

    def __attrs_post_init__(self) -> None:
        for right in RIGHTS:
            self._compiled[right] = tuple(source_pattern(p) for p in getattr(self, right))

    def allows(self, right: str, source: str) -> bool:
        """Whether ``right`` covers ``source`` (no cache: see :class:`Access`)."""
        return any(p.match_source(source) for p in self._compiled[right])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {r: list(getattr(self, r)) for r in RIGHTS}
        out["admin"] = self.admin
        return out


@attrs.frozen
class User:
    name: str
    token_sha256: str = attrs.field(repr=False)
    rights: Rights


@attrs.frozen
class AuthTable:
    """The users of an auth file, found by the hash of their token."""

    users: dict[str, User]
    path: Path | None = None

    @classmethod
    def from_toml(cls, text: str, path: Path | None = None) -> AuthTable:
        """Parse an auth file's text.

        Raises:
            AuthError: not TOML, or a user without a valid token hash or with a bad pattern.
        """
        where = str(path) if path else "auth file"
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AuthError(f"{where} is not valid TOML: {exc}") from None
        table = doc.get("users")
        if not isinstance(table, dict) or not table:
            raise AuthError(f"{where} names no users: add a [users.NAME] table per user")
        users: dict[str, User] = {}
        seen: dict[str, str] = {}
        for name, entry in table.items():
            users[name] = _user(where, name, entry)
            digest = users[name].token_sha256
            if digest in seen:
                raise AuthError(f"{where}: users {seen[digest]!r} and {name!r} have the same token")
            seen[digest] = name
        return cls(users, path)

    @classmethod
    def load(cls, path: str | Path) -> AuthTable:
        """Read an auth file.

        Raises:
            AuthError: it cannot be read or is not a valid auth file.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"cannot read auth file {p}: {exc}") from None
        return cls.from_toml(text, p)

    def changed(self, user: str, right: str, pattern: str, grant: bool) -> AuthTable:
        """This table with ``pattern`` added to (``grant``) or removed from ``user``'s ``right``.

        ``right`` ``admin`` takes the pattern ``*`` only (it covers everything).

        Raises:
            AuthError: no such user or right, a bad pattern, or revoking what is not granted.
        """
        old = self.users.get(user)
        if old is None:
            raise AuthError(f"no user named {user!r}; users: {', '.join(sorted(self.users))}")
        if right == "admin":
            if pattern != "*":
                raise AuthError("admin is granted or revoked with the pattern '*'")
            rights = attrs.evolve(old.rights, admin=grant)
        elif right not in RIGHTS:
            raise AuthError(f"no right named {right!r}; rights: {', '.join(RIGHTS)}, admin")
        else:
            patterns = list(getattr(old.rights, right))
            if grant and pattern not in patterns:
                patterns.append(pattern)
            elif not grant:
                if pattern not in patterns:
                    raise AuthError(
                        f"user {user!r} has no {right} right on {pattern!r} to revoke; "
                        f"it has {patterns or 'none'}"
                    )
                patterns.remove(pattern)
            try:
                changes: dict[str, Any] = {right: tuple(patterns)}
                rights = attrs.evolve(old.rights, **changes)
            except InvalidName as exc:
                raise AuthError(str(exc)) from None
        return attrs.evolve(self, users={**self.users, user: attrs.evolve(old, rights=rights)})

    def to_toml(self) -> str:
        """The auth file's text for this table (what :meth:`from_toml` reads back)."""
        lines = [
            "# Users of turbine serve --auth: tokens as SHA-256 only (turbine auth token).",
            "# Written by turbine acl grant/revoke; comments are not kept.",
        ]
        for user in self.users.values():
            lines += ["", f"[users.{_toml_key(user.name)}]"]
            lines.append(f'token_sha256 = "{user.token_sha256}"')
            if user.rights.admin:
                lines.append("admin = true")
            for right in RIGHTS:
                patterns = ", ".join(_toml_str(p) for p in getattr(user.rights, right))
                lines.append(f"{right} = [{patterns}]")
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        """Write :meth:`to_toml` to :attr:`path` atomically (a synced temporary
        file renamed over it, then the directory synced).

        Raises:
            AuthError: the table has no path, or the file cannot be written.
        """
        if self.path is None:
            raise AuthError("this auth table has no file to write")
        try:
            write_atomically(self.path, self.to_toml().encode(), mode=0o600)
        except OSError as exc:
            raise AuthError(f"cannot write auth file {self.path}: {exc}") from None

    def login(self, token: str | None) -> User | None:
        """The user whose token this is, or None."""
        if not token:
            return None
        digest = token_hash(token)
        found = None
        for user in self.users.values():  # compare every entry: time does not tell which
            if hmac.compare_digest(user.token_sha256, digest):
                found = user
        return found


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(name: str) -> str:
    bare = name and all(c.isalnum() or c in "-_" for c in name) and name.isascii()
    return name if bare else _toml_str(name)


def _user(where: str, name: str, entry: Any) -> User:
    if not isinstance(entry, dict):
        raise AuthError(f"{where}: users.{name} must be a table")
    unknown = set(entry) - {"token_sha256", "admin", *RIGHTS}
    if unknown:
        raise AuthError(
            f"{where}: users.{name} has unknown keys {sorted(unknown)}; "
            f"use token_sha256, admin, {', '.join(RIGHTS)}"
        )
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        raise AuthError(
            f"{where}: users.{name}.token_sha256 must be 64 lowercase hex digits "
            "(turbine auth token prints one)"
        )
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise AuthError(f"{where}: users.{name}.admin must be true or false")
    lists: dict[str, tuple[str, ...]] = {}
    for right in RIGHTS:
        patterns = entry.get(right, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise AuthError(f"{where}: users.{name}.{right} must be a list of source patterns")
        lists[right] = tuple(patterns)
    try:
        rights = Rights(admin=admin, **lists)
    except InvalidName as exc:
        raise AuthError(f"{where}: users.{name}: {exc}") from None
    return User(name, digest, rights)


class Access:
    """One connection's user and rights, with each source's answer cached.

    The cache is keyed by source name and cleared whole when it holds
    :data:`CACHE_ENTRIES` (sources come and go; it stays bounded).
    """

    CACHE_ENTRIES = 4096

    __slots__ = ("user", "rights", "_cache")

    def __init__(self, user: str, rights: Rights) -> None:
        self.user = user
        self.rights = rights
        self._cache: dict[tuple[str, str], bool] = {}

    def update(self, rights: Rights) -> None:
        """Take changed rights (``turbine acl``); answers cached before are forgotten."""
        self.rights = rights
        self._cache.clear()

    @property
    def admin(self) -> bool:
        return self.rights.admin

    def may(self, right: str, source: str) -> bool:
        key = (right, source)
        got = self._cache.get(key)
        if got is None:
            if len(self._cache) >= self.CACHE_ENTRIES:
                self._cache.clear()
            got = self._cache[key] = self.rights.allows(right, source)
        return got

    def may_read(self, source: str) -> bool:
        return self.may(READ, source)

    def may_put(self, source: str) -> bool:
        """Putting into a command sink takes ``command``; any other source, ``write``."""
        return self.may(COMMAND if is_command_sink(source) else WRITE, source)

    def codes(self, source: str) -> str:
        """What this user may do with ``source``, as ``ls`` shows it: ``r``, ``w``, ``c`` or ``-``."""
        return "".join(
            code if self.may(right, source) else "-"
            for code, right in (("r", READ), ("w", WRITE), ("c", COMMAND))
        )


class FailureDelays:
    """Slows repeated failed logins from one host, in bounded memory.

    Each failure doubles the wait the host's next attempt starts with (from
    :data:`AUTH_FAILURE_DELAY_S` up to :data:`AUTH_FAILURE_DELAY_MAX_S`);
    attempts from one host wait their turn, so parallel guesses gain
    nothing; a success forgets the host.  At most :data:`AUTH_FAILURE_HOSTS`
    hosts are remembered (the least recently failed go first).
    """

    def __init__(self, max_hosts: int = AUTH_FAILURE_HOSTS) -> None:
        self.max_hosts = max_hosts
        #: host -> (failures, time before which its next attempt waits)
        self._hosts: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def wait_until(self, host: str) -> float:
        """When an attempt from ``host`` may be decided (0: at once)."""
        return self._hosts.get(host, (0, 0.0))[1]

    def failed(self, host: str, now: float) -> float:
        """Record a failure; return when the host's next attempt may be decided."""
        failures, until = self._hosts.pop(host, (0, 0.0))
        delay = min(AUTH_FAILURE_DELAY_S * 2**failures, AUTH_FAILURE_DELAY_MAX_S)
        until = max(until, now) + delay
        self._hosts[host] = (failures + 1, until)
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return until

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)


def default_token_file() -> Path:
    """The per-user token file the client reads when given no token:
    ``$XDG_CONFIG_HOME/turbine/token`` (``~/.config/turbine/token``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "turbine" / "token"


def find_token() -> str | None:
    """The token a client uses when given none: ``TURBINE_TOKEN``, else the file
    ``TURBINE_TOKEN_FILE`` names, else :func:`default_token_file` if it exists.

    Raises:
        AuthError: a token file that is named but cannot be read.
    """
    token = os.environ.get(TOKEN_ENVVAR)
    if token:
        return token.strip()
    named = os.environ.get(TOKEN_FILE_ENVVAR)
    if named:
        return read_token_file(named, f"{TOKEN_FILE_ENVVAR} names") or None
    path = default_token_file()
    return read_token_file(path) if path.exists() else None


def read_token_file(path: str | os.PathLike[str], named_by: str = "token file") -> str:
    """The token in the file at ``path``, without surrounding white space ("" if empty).

    Raises:
        AuthError: the file does not exist or cannot be read; the message
            starts with ``named_by`` (who named the file).
    """
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthError(f"{named_by} {path}, which does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read token file {path}: {exc}") from None


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path``, readable by its owner only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, token.encode() + b"\n", mode=0o600)


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
