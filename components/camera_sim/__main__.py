"""``python -m components.camera_sim --host 127.0.0.1 --port 8080``."""

from __future__ import annotations

import functools
import logging

import click
import trio

from components.camera_sim.server import DEFAULT_QUALITY, serve_camera_sim
from turbine._signals import open_stop_nursery, say_stopping


async def _run(host: str, port: int, quality: int, failures: list[OSError]) -> None:
    """Serve until SIGTERM or SIGINT (a clean exit); a port it cannot bind goes to ``failures``."""
    async with open_stop_nursery(say_stopping("camera_sim")) as nursery:
        try:
            bound = await nursery.start(
                functools.partial(serve_camera_sim, host, port, quality=quality)
            )
        except OSError as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()  # no signal to wait for
            return
        print(f"camera_sim listening on {host}:{bound}", flush=True)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="TCP port; 0 picks a free one.")
@click.option(
    "--quality",
    default=DEFAULT_QUALITY,
    show_default=True,
    type=click.IntRange(1, 95),
    help="JPEG quality of the frames.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every client.")
def main(host: str, port: int, quality: int, verbose: bool) -> None:
    """Emulate an Axis network camera.

    Serves /axis-cgi/mjpg/video.cgi?resolution=WxH&fps=N (an MJPEG stream) and
    /axis-cgi/jpg/image.cgi?resolution=WxH (one JPEG) until interrupted.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    failures: list[OSError] = []
    try:
        trio.run(_run, host, port, quality, failures)
    except KeyboardInterrupt:
        pass
    if failures:
        raise click.ClickException(f"cannot listen on {host}:{port}: {failures[0]}")


if __name__ == "__main__":
    main()
