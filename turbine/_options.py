"""Command-line options shared by ``turbine`` and every component's command line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ._constants import ADDRESS_ENVVAR, DEFAULT_ADDRESS


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
