"""Stopping on SIGINT or SIGTERM: the signal, then cancel."""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import click
import trio

#: The signals that stop a broker, a component or a site.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.asynccontextmanager
async def open_stop_nursery(
    on_stop: Callable[[signal.Signals], Awaitable[None]],
    on_again: Callable[[signal.Signals], None] | None = None,
) -> AsyncIterator[trio.Nursery]:
    """A nursery that stops on SIGINT or SIGTERM.

    On the first signal ``await on_stop(signal)`` runs (say so, publish a last
    state, stop children), then the nursery is cancelled. A further signal
    while ``on_stop`` runs calls ``on_again(signal)`` (e.g. kill at once).
    Signals are caught from entry, so none of them kills the process by default.
    """
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                first = signal.Signals(await signals.__anext__())
                async with trio.open_nursery() as stopping:
                    if on_again is not None:

                        async def again() -> None:
                            async for signum in signals:
                                on_again(signal.Signals(signum))

                        stopping.start_soon(again)
                    await on_stop(first)
                    stopping.cancel_scope.cancel()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            yield nursery


def say_stopping(name: str) -> Callable[[signal.Signals], Awaitable[None]]:
    """An ``on_stop`` for :func:`open_stop_nursery`: ``"<name>: stopping"`` on stderr."""

    async def stop(signum: signal.Signals) -> None:
        click.echo(f"{name}: stopping", err=True)

    return stop


def run_until_stopped(name: str, serve: Callable[..., Awaitable[Any]], started: str) -> None:
    """Run the service ``serve`` from a command line until SIGINT or SIGTERM.

    ``serve(report=..., task_status=...)`` is started in a stop nursery; its
    report lines, ``started`` once it has started and ``"<name>: stopping"`` on
    the first signal go to stderr.  Ctrl-C before the signals are caught exits
    with status 130, without a traceback.
    """

    def report(line: str) -> None:
        click.echo(line, err=True)

    async def main() -> None:
        async with open_stop_nursery(say_stopping(name)) as nursery:
            await nursery.start(functools.partial(serve, report=report))
            report(started)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
