"""What the ``turbine`` commands share: running under trio, connecting, sizes, options."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from .._constants import (
    CLI_CLIENT_NAME,
    TLS_CA_ENVVAR,
    TOKEN_ENVVAR,
)
from .._errors import TurbineError, unwrap
from .._options import address_option
from .._signals import open_stop_nursery
from ..client import open_client
from ..settings import ConfigError, make_settings

S = TypeVar("S")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"512MB"``, ``"1000"`` -> bytes.

    Raises:
        click.BadParameter: not a size.
    """
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise click.BadParameter(
            f"{text!r} is not a size; use e.g. 1GiB, 512MiB, 64MB or a byte count"
        )
    return int(float(m.group(1)) * _UNITS[unit])


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        return value if isinstance(value, int) else parse_size(value)


def checked_options(cls: type[S], **values: Any) -> S:
    """The settings class ``cls`` (turbine/settings.py) built from the command's
    options of its fields' names (``keepalive_idle`` is ``--keepalive-idle``).

    Raises:
        click.UsageError: a value its validators refuse, the message naming the option.
    """
    try:
        return make_settings(cls, values)
    except ConfigError as exc:
        message = str(exc)
        for name in values:
            message = message.replace(repr(name), "--" + name.replace("_", "-"))
        raise click.UsageError(message) from None


def run(async_fn: Callable[..., Awaitable[Any]], *args: Any, interrupt_exit: int = 130) -> Any:
    """Run ``async_fn`` under trio; errors become one-line messages, Ctrl-C a
    clean exit with ``interrupt_exit`` (130, "interrupted", unless Ctrl-C is
    how the command normally ends)."""
    try:
        return trio.run(async_fn, *args)
    except KeyboardInterrupt:
        raise SystemExit(interrupt_exit) from None
    except TurbineError as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            # Ctrl-C met a task beside the main one, and others failed of it.
            raise SystemExit(interrupt_exit) from None
        inner = unwrap(group)
        if isinstance(inner, click.ClickException):
            raise inner from None
        if isinstance(inner, TurbineError):
            raise click.ClickException(str(inner)) from None
        raise


def client_command(
    fn: Callable[..., Awaitable[Any]] | None = None, *, ends_on_signal: bool = False
) -> Any:
    """Turn ``async def fn(tb, **options)`` into a command body connected to the broker.

    With ``ends_on_signal`` (a tap without ``--count``), SIGINT or SIGTERM is how
    the command normally ends: either cancels ``fn``, the client closes, and the
    command exits 0.  Otherwise Ctrl-C exits 130 ("interrupted").
    """
    if fn is None:
        return functools.partial(client_command, ends_on_signal=ends_on_signal)

    @functools.wraps(fn)
    def body(address: str, token: str | None, tls_ca: str | None, **options: Any) -> Any:
        async def main() -> Any:
            # One client name for the command line: it owns the sources it creates.
            name = options.pop("client_name", None) or CLI_CLIENT_NAME
            async with open_client(address, name=name, token=token, tls_ca=tls_ca) as tb:
                if not ends_on_signal:
                    return await fn(tb, **options)
                # The signal as a message, not a KeyboardInterrupt raised in whichever
                # task runs when it arrives: the subscription and client end in order.
                async with open_stop_nursery(_end_quietly) as nursery:
                    await fn(tb, **options)
                    nursery.cancel_scope.cancel()
                return None

        return run(main, interrupt_exit=0 if ends_on_signal else 130)

    return address_option(TOKEN_OPTION(TLS_CA_OPTION(body)))


async def _end_quietly(signum: Any) -> None:
    """A signal that ends a command normally says nothing."""


TLS_CA_OPTION = click.option(
    "--tls-ca",
    envvar=TLS_CA_ENVVAR,
    default=None,
    type=click.Path(dir_okay=False),
    help=f"Speak TLS, trusting the broker's certificate if this CA signed it (env {TLS_CA_ENVVAR}).",
)


TOKEN_OPTION = click.option(
    "--token",
    envvar=TOKEN_ENVVAR,
    default=None,
    metavar="TOKEN",
    show_envvar=False,
    help=f"Log in with this token (env {TOKEN_ENVVAR}; else ~/.config/turbine/token). "
    "Prefer the environment or the file: a command line is visible in ps.",
)
