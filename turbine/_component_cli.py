"""The command line every component shares: ``python -m components.<kind> --name NAME ...``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import trio

from ._errors import TurbineError, unwrap
from ._options import address_option
from .names import check_component_name, check_source_name
from .settings import describe, read_settings_fd


def component_cli(cls: type[Any]) -> click.Command:
    """The click command that checks the settings of ``cls`` (a Component) and runs one
    until SIGTERM or Ctrl-C."""

    @click.command(name=cls.__module__, help=cls.__doc__)
    @click.option("--name", required=True, help=f"The <name> of {cls.type}_<name>.")
    @address_option
    @click.option(
        "--set",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a setting; repeatable. Settings: " + describe(cls.Settings),
    )
    @click.option(
        "--settings-fd",
        type=int,
        metavar="FD",
        help="Read the settings as a JSON object from this inherited file descriptor "
        "(how the MCP passes them: never on the command line); --set overrides them.",
    )
    @click.option(
        "--clock",
        type=click.Choice(["local", "broker"]),
        default="local",
        show_default=True,
        help="Stamp frames on this machine's clock or on the broker's (measured at each "
        "connection; for machines without NTP).",
    )
    @click.option(
        "--log-level",
        default="INFO",
        show_default=True,
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    )
    def main(
        name: str,
        address: str,
        settings: tuple[str, ...],
        settings_fd: int | None,
        clock: str,
        log_level: str,
    ) -> None:
        try:
            given = read_settings_fd(settings_fd) if settings_fd is not None else {}
            for item in settings:
                key, sep, value = item.partition("=")
                if not sep:
                    raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--set")
                given[key.strip()] = value
            check_component_name(name)
            check_source_name(f"{cls.type}_{name}_data_source", types=(cls.type,))
            component = cls(name, address, given)
            component.clock_source = clock
        except TurbineError as exc:
            raise click.UsageError(str(exc)) from None
        logging.basicConfig(
            level=log_level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            trio.run(component.serve_until_stopped)
        except (OSError, TurbineError, BaseExceptionGroup) as exc:
            # What stops a component from running (its listener's port is
            # taken, the broker refuses its name) is a message, not a traceback.
            inner = unwrap(exc)
            if isinstance(inner, OSError | TurbineError):
                raise click.ClickException(f"{component.component}: {inner}") from None
            raise

    return main
