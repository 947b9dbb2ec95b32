"""``python -m components.camera_sim --host 127.0.0.1 --port 8080``."""

from __future__ import annotations

import logging

import click
import trio

from components.camera_sim.server import DEFAULT_QUALITY, serve_camera_sim


class _AnnounceStarted:
    """A task status that prints the listening address once bound."""

    def __init__(self, host: str) -> None:
        self._host = host

    def started(self, value: int | None = None) -> None:
        print(f"camera_sim listening on {self._host}:{value}", flush=True)


async def _run(host: str, port: int, quality: int) -> None:
    await serve_camera_sim(host, port, quality=quality, task_status=_AnnounceStarted(host))


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
    try:
        trio.run(_run, host, port, quality)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
