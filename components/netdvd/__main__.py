"""Command line: ``python -m components.netdvd --tray DIR [options]``."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click
import trio

from turbine._signals import open_stop_nursery, say_stopping

from ._constants import DEFAULT_PORT, DVD_R_CAPACITY
from .drive import Drive
from .emulated import EmulatedDrive
from .errors import NetDVDError
from .server import serve_netdvd
from .xorriso_drive import XorrisoDrive


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="NETDVD_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="NETDVD_PORT",
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--tray",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Tray directory of the emulated drive (drive/, blank/, written/).",
)
@click.option(
    "--capacity",
    default=DVD_R_CAPACITY,
    show_default=True,
    type=click.IntRange(1),
    help="Bytes per emulated disc (default: single-layer DVD-R).",
)
@click.option("--device", default=None, help="Real burner, e.g. /dev/sr0 (replaces the emulation).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Spool for working directories and copies [default: TRAY/spool].",
)
def main(
    host: str, port: int, tray: Path, capacity: int, device: str | None, workdir: Path | None
) -> None:
    """Run a NetDVD device: a network-attached DVD burner, one client at a time."""
    try:
        drive: Drive = (
            XorrisoDrive(device) if device else EmulatedDrive.open(tray, capacity=capacity)
        )
    except (NetDVDError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    spool = workdir if workdir is not None else tray / "spool"

    failures: list[BaseException] = []

    async def run() -> None:
        async with open_stop_nursery(say_stopping("netdvd")) as nursery:
            try:
                bound = await nursery.start(
                    partial(serve_netdvd, drive, spool, host=host, port=port)
                )
            except (OSError, NetDVDError) as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()  # no signal to wait for
                return
            click.echo(f"netdvd listening on {host}:{bound}")
            sys.stdout.flush()

    try:
        trio.run(run)
    except* KeyboardInterrupt:
        pass
    if failures:
        raise click.ClickException(f"cannot serve on {host}:{port}: {failures[0]}")


if __name__ == "__main__":
    main()
