"""``python -m components.ntcp_sim``: run the control-system simulator.

With ``--name`` it runs as the turbine component ``ntcp_<name>`` (the way the
master control program starts it: ``--name N --turbine ADDR --set k=v``);
without, it runs plain: ``--host``, ``--port``, ``--speed``, ...
"""

from __future__ import annotations

import sys

import click
import trio

from turbine import leaves

from .rig import Rig, RigConfig
from .server import serve_ntcp_sim


async def _run(rig: Rig, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_ntcp_sim, rig, host, port)
        click.echo(f"ntcp_sim listening on {host}:{bound}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=6000, show_default=True, help="TCP port (0 picks a free one).")
@click.option(
    "--control-point",
    "control_points",
    multiple=True,
    help="A control point name (repeat for several). Default: MDL-00-01.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the measurement noise.")
@click.option(
    "--speed",
    type=float,
    default=RigConfig().displacement_speed,
    show_default=True,
    help="Actuator speed, displacement units per second.",
)
@click.option(
    "--lapse-timeout",
    type=float,
    default=RigConfig().lapse_timeout,
    show_default=True,
    help="Seconds a proposal waits for execute before it lapses.",
)
def main(
    host: str,
    port: int,
    control_points: tuple[str, ...],
    seed: int,
    speed: float,
    lapse_timeout: float,
) -> None:
    """Simulate a test rig behind the NTCP LabVIEW-plugin (ASCII) protocol."""
    try:
        config = RigConfig(
            control_points=control_points or ("MDL-00-01",),
            seed=seed,
            displacement_speed=speed,
            lapse_timeout=lapse_timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        trio.run(_run, Rig(config), host, port)
    except (OSError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        # The nursery wraps what the server raised; unwrap the expected ones.
        errors = leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in errors):
            return
        bind = [e for e in errors if isinstance(e, OSError)]
        if len(bind) == len(errors):
            raise click.ClickException(f"cannot listen on {host}:{port}: {bind[0]}") from None
        raise


def _as_component(argv: list[str]) -> bool:
    return any(arg == "--name" or arg.startswith("--name=") for arg in argv)


if __name__ == "__main__":
    if _as_component(sys.argv[1:]):
        from .component import NtcpSim

        NtcpSim.main()
    else:
        main()
