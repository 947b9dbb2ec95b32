"""Who may do what: ``turbine auth`` (tokens, certificates) and ``turbine acl``."""

from __future__ import annotations

import json
from typing import Any

import click

from ..auth import new_token, token_hash
from ..client import Client
from ..tls import make_lab_certs
from ._common import client_command


@click.group()
def auth() -> None:
    """Users and tokens for turbine serve --auth."""


@auth.command()
@click.argument("user", default="operator")
def token(user: str) -> None:
    """Print a fresh random token for USER, and the auth file lines that admit it.

    The token goes to the user (TURBINE_TOKEN or ~/.config/turbine/token);
    the auth file keeps only its SHA-256.
    """
    secret = new_token()
    click.echo(f"token (give it to {user}; it is not stored anywhere): {secret}")
    click.echo("auth file lines:")
    click.echo(f"[users.{user}]")
    click.echo(f'token_sha256 = "{token_hash(secret)}"')
    click.echo('read = ["*"]')
    click.echo("write = []")
    click.echo("command = []")


@auth.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A name or address clients reach the broker by (repeatable); localhost, 127.0.0.1 and ::1 always.",
)
@click.option("--days", default=825, show_default=True, type=click.IntRange(min=1))
def cert(directory: str, hosts: tuple[str, ...], days: int) -> None:
    """Make a lab CA and a broker certificate in DIRECTORY.

    Start the broker with --tls-cert DIRECTORY/server.pem --tls-key
    DIRECTORY/server-key.pem; give clients DIRECTORY/ca.pem (--tls-ca or
    TURBINE_TLS_CA).  Keep ca-key.pem away from the network.
    """
    names = tuple(dict.fromkeys((*hosts, "localhost", "127.0.0.1", "::1")))
    paths = make_lab_certs(directory, names, days=days)
    for name, path in paths.items():
        click.echo(f"{name + ':':<12} {path}")


# --- acl -------------------------------------------------------------------------


def _print_rights(users: dict[str, Any]) -> None:
    for name, rights in users.items():
        admin = "  (admin)" if rights.get("admin") else ""
        click.echo(f"{name}{admin}")
        for right in ("read", "write", "command"):
            click.echo(f"  {right:<8} {' '.join(rights.get(right) or ['-'])}")


@click.group()
def acl() -> None:
    """Show or change who may do what (a broker started with --auth)."""


@acl.command("show")
@click.argument("user", required=False)
@click.option("--json", "as_json_", is_flag=True, help="As JSON.")
@client_command
async def acl_show(tb: Client, user: str | None, as_json_: bool) -> None:
    """Every user's protections (an admin), or USER's, or your own."""
    users = await tb.acl("show", user)
    if as_json_:
        click.echo(json.dumps(users, indent=2))
    else:
        _print_rights(users)


def _acl_change(action: str) -> Any:
    @acl.command(
        action,
        help=f"{action.capitalize()} USER's RIGHT on source PATTERN (admin only): at once, "
        "live subscriptions included, and in the auth file.",
    )
    @click.argument("user")
    @click.argument("right", type=click.Choice(["read", "write", "command", "admin"]))
    @click.argument("pattern")
    @client_command
    async def change(tb: Client, user: str, right: str, pattern: str) -> None:
        _print_rights(await tb.acl(action, user, right, pattern))

    return change


acl_grant = _acl_change("grant")
acl_revoke = _acl_change("revoke")
