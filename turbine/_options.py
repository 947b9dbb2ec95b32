"""Command-line options shared by ``turbine`` and every component's command line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ._constants import ADDRESS_ENVVAR, DEFAULT_ADDRESS
from .auth import AuthError, read_token_file
from .names import source_pattern


def address_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--turbine HOST:PORT`` (env ``TURBINE_ADDRESS``), passed as ``address``."""
    return click.option(
        "--turbine",
        "address",
        envvar=ADDRESS_ENVVAR,
        default=DEFAULT_ADDRESS,
        show_default=True,
        metavar="HOST:PORT",
        help=f"Broker address (env {ADDRESS_ENVVAR}).",
    )(fn)


def patterns_callback(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """A click callback: every value is a source pattern (``daq_*``), else a usage error."""
    for value in values:
        try:
            source_pattern(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return values


def token_file_callback(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """A click callback: the token in the file a ``--...-token-file`` option names (None if not given)."""
    if path is None:
        return None
    try:
        token = read_token_file(path)
    except AuthError as exc:
        raise click.BadParameter(str(exc)) from None
    if not token:
        raise click.BadParameter(f"token file {path} is empty")
    return token
