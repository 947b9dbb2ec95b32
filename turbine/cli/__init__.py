"""The ``turbine`` command: click commands that call the library.

One module per group of commands: ``serve`` (the broker, the web viewer),
``data`` (frames in and out), ``info`` (what the broker holds and how it is),
``components`` (commands to components, installed kinds, new ones) and
``admin`` (tokens, certificates, access control); what they share (running
under trio, connecting, the token and TLS options, sizes) is ``_common``.
``turbine mcp`` and ``turbine mirror`` are defined beside what they run.

A command's module loads only when that command runs (or ``--help`` lists
them all): ``turbine fetch`` does not import the broker, the MCP or the
archive, which every ``turbine`` process would otherwise pay for at start.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from .._constants import VERSION

#: Each command's name, and the module and name it is defined by.
COMMANDS = {
    "serve": ("turbine.cli.serve", "serve"),
    "web": ("turbine.cli.serve", "web"),
    "tap": ("turbine.cli.data", "tap"),
    "fetch": ("turbine.cli.data", "fetch"),
    "export": ("turbine.cli.data", "export"),
    "put": ("turbine.cli.data", "put"),
    "rm": ("turbine.cli.data", "rm"),
    "ls": ("turbine.cli.info", "ls"),
    "meta": ("turbine.cli.info", "meta"),
    "status": ("turbine.cli.info", "status"),
    "time": ("turbine.cli.info", "time_"),
    "cmd": ("turbine.cli.components", "cmd"),
    "components": ("turbine.cli.components", "components"),
    "new": ("turbine.cli.components", "new"),
    "auth": ("turbine.cli.admin", "auth"),
    "acl": ("turbine.cli.admin", "acl"),
    "mcp": ("turbine.mcp", "mcp"),
    "mirror": ("turbine._mirror_cli", "mirror"),
}


class _Commands(click.Group):
    """A group whose commands are imported by name when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        command: Any = getattr(importlib.import_module(where[0]), where[1])
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="turbine")
def main() -> None:
    """Turbine: a publish/subscribe data turbine for laboratories."""


__all__ = ["main"]
