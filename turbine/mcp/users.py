"""A site's users and tokens: with ``[auth]`` the MCP makes them and the broker checks them.

Every component logs in as its own user (``user`` in its table, by default
its ``<type>_<name>``) with the rights its class asks for
(:meth:`~turbine.component.Component.rights`: its own four endpoints, plus
what its settings say it reads or commands) and the source patterns of its
table's ``rights = {read = [...], write = [...], command = [...]}``.  A
``[[process]]`` with a ``user`` gets only its ``rights``.  The MCP logs in as ``mcp_<name>``.  The
operator (``[auth] operator``) is an admin who may read and write
everything and command every component whose class allows it (not, for
instance, an NTCP translator: only its serdes plugin moves the rig).

Tokens are made once and kept in ``DIR/tokens/USER`` (mode 0600, the
directory 0700); a program gets the path of its own in ``TURBINE_TOKEN_FILE``,
never the token on its command line or in its environment.  The operator's
token is left where the ``turbine`` commands find it by themselves
(:func:`~turbine.auth.find_token`: ``TURBINE_TOKEN``, the file
``TURBINE_TOKEN_FILE`` names, or ``~/.config/turbine/token``); one already
there is used, not replaced.  ``DIR/auth.toml`` holds the hashes; the MCP
writes the site's users there at each start (``turbine acl`` changes to them
last until then) and keeps users added to it by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .._constants import TOKEN_ENVVAR, TOKEN_FILE_ENVVAR
from ..auth import (
    AuthError,
    AuthTable,
    Rights,
    User,
    default_token_file,
    new_token,
    token_hash,
    write_token_file,
)
from ..command import endpoints

if TYPE_CHECKING:
    from .config import ProgramSpec, SiteConfig


@attrs.frozen
class SiteUsers:
    """What :func:`prepare_users` made: the broker's table and where the tokens are."""

    table: AuthTable
    #: The MCP's own token (it runs in the MCP's process).
    mcp_token: str = attrs.field(repr=False)
    #: Where the operator's token is; None: in ``TURBINE_TOKEN``.
    operator_file: Path | None


def site_rights(site: SiteConfig) -> dict[str, Rights]:
    """Every user of ``site`` and its rights (programs sharing a user share the union)."""
    assert site.auth is not None
    mcp_own = tuple(endpoints(f"mcp_{site.mcp.name}").values())
    commands = [endpoints(f"mcp_{site.mcp.name}")["sink"]]
    patterns: dict[str, dict[str, list[str]]] = {
        f"mcp_{site.mcp.name}": {"read": list(mcp_own), "write": list(mcp_own), "command": []}
    }
    for prog in site.programs:
        if prog.operator_commands:
            commands.append(endpoints(prog.label)["sink"])
        if not prog.user:
            continue
        mine = patterns.setdefault(prog.user, {"read": [], "write": [], "command": []})
        for right, given in prog.rights.items():
            mine[right] += [p for p in given if p not in mine[right]]
    rights = {
        user: Rights(
            read=tuple(got["read"]), write=tuple(got["write"]), command=tuple(got["command"])
        )
        for user, got in patterns.items()
    }
    rights[site.auth.operator] = Rights(
        read=("*",), write=("*",), command=tuple(dict.fromkeys(commands)), admin=True
    )
    return rights


def prepare_users(site: SiteConfig) -> SiteUsers:
    """Make (or read) every user's token, write the auth file, leave the operator's token.

    Raises:
        AuthError: a directory or token file cannot be written or read, or a
            user of the auth file has the same token as one of the site's.
    """
    assert site.auth is not None
    auth = site.auth
    try:
        (Path(auth.dir) / "tokens").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(auth.dir, 0o700)
        os.chmod(Path(auth.dir) / "tokens", 0o700)
    except OSError as exc:
        raise AuthError(f"cannot make {auth.dir} for the site's tokens: {exc}") from None
    kept = AuthTable.load(auth.auth_file).users if auth.auth_file.exists() else {}
    operator_token, operator_file = _operator_token()
    users = {name: user for name, user in kept.items()}
    mcp_token = ""
    for name, rights in site_rights(site).items():
        token = operator_token if name == auth.operator else _kept_token(auth.token_file(name))
        if name == f"mcp_{site.mcp.name}":
            mcp_token = token
        users[name] = User(name, token_hash(token), rights)
    table = AuthTable.from_toml(AuthTable(users).to_toml(), auth.auth_file)  # checks duplicates
    table.save()
    return SiteUsers(table, mcp_token, operator_file)


def program_env(site: SiteConfig, spec: ProgramSpec, env: dict[str, str]) -> dict[str, str]:
    """``env`` for ``spec``'s process: with auth on, the path of its own token
    and nobody else's token (a process without a user gets none)."""
    if site.auth is None:
        return env
    env = {k: v for k, v in env.items() if k != TOKEN_ENVVAR}
    env[TOKEN_FILE_ENVVAR] = str(site.auth.token_file(spec.user)) if spec.user else os.devnull
    return env


def _kept_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read token file {path}: {exc}") from None
    if not token:
        token = new_token()
        _write(path, token)
    return token


def _operator_token() -> tuple[str, Path | None]:
    """The token the ``turbine`` commands will find, made and left there if there is none."""
    token = os.environ.get(TOKEN_ENVVAR, "").strip()
    if token:
        return token, None
    named = os.environ.get(TOKEN_FILE_ENVVAR)
    path = Path(named) if named else default_token_file()
    return _kept_token(path), path


def _write(path: Path, token: str) -> None:
    try:
        write_token_file(path, token)
    except OSError as exc:
        raise AuthError(f"cannot write token file {path}: {exc}") from None
