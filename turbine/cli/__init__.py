"""The ``turbine`` command: click commands that call the library.

One module per group of commands: ``serve`` (the broker, the web viewer),
``data`` (frames in and out), ``info`` (what the broker holds and how it is),
``components`` (commands to components, installed kinds, new ones) and
``admin`` (tokens, certificates, access control); what they share (running
under trio, connecting, the token and TLS options, sizes) is ``_common``.
``turbine mcp`` and ``turbine mirror`` are defined beside what they run.
"""

from __future__ import annotations

import click

from .._constants import VERSION
from .._mirror_cli import mirror
from ..mcp import mcp
from .admin import acl, auth
from .components import cmd, components, new
from .data import export, fetch, put, rm, tap
from .info import ls, meta, status, time_
from .serve import serve, web


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="turbine")
def main() -> None:
    """Turbine: a publish/subscribe data turbine for laboratories."""


for command in (serve, web, tap, fetch, export, put, rm, ls, meta, status, time_, cmd):
    main.add_command(command)
for command in (components, new, auth, acl, mcp, mirror):
    main.add_command(command)

__all__ = ["main"]
