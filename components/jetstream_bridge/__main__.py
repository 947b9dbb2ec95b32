"""``python -m components.jetstream_bridge export|import --turbine HOST:PORT --nats URL[,URL...] PATTERN...``."""

from __future__ import annotations

import functools
from typing import Any

import click

from turbine._options import address_option, patterns_callback, token_file_callback
from turbine._signals import run_until_stopped


def _options(fn: Any) -> Any:
    for option in reversed(
        [
            address_option,
            click.option(
                "--nats",
                required=True,
                metavar="URL[,URL...]",
                help="NATS servers of the cluster (nats://HOST:PORT, comma-separated).",
            ),
            click.option("--stream", default="TURBINE", show_default=True, help="The stream."),
            click.option(
                "--token-file",
                "token",
                callback=token_file_callback,
                metavar="PATH",
                help="Log in to the broker with the token in this file.",
            ),
            click.option(
                "--poll",
                type=click.FloatRange(min=0, min_open=True),
                default=1.0,
                show_default=True,
                metavar="SECONDS",
                help="How often to look for new channels, and to connect again after a loss.",
            ),
            click.argument("patterns", nargs=-1, required=True, callback=patterns_callback),
        ]
    ):
        fn = option(fn)
    return fn


@click.group()
def main() -> None:
    """Carry turbine channels through a NATS JetStream stream (docs/federation.rst)."""


@main.command("export")
@_options
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=3,
    show_default=True,
    help="Replicas of the stream, if this creates it.",
)
def export(
    address: str,
    nats: str,
    stream: str,
    token: str | None,
    poll: float,
    patterns: Any,
    replicas: int,
) -> None:
    """Publish every channel of the sources matching PATTERNS to the stream, as they grow."""
    _run("export", address, nats, stream, token, patterns, poll=poll, retry=poll, replicas=replicas)


@main.command("import")
@_options
@click.option("--prefix", default="", help="Put this after the type in each copy's name.")
def import_(
    address: str,
    nats: str,
    stream: str,
    token: str | None,
    poll: float,
    patterns: Any,
    prefix: str,
) -> None:
    """Put the stream's frames of sources matching PATTERNS into mirrored sources."""
    _run("import", address, nats, stream, token, patterns, poll=poll, retry=poll, prefix=prefix)


def _run(
    kind: str, turbine: str, nats: str, stream: str, token: str | None, patterns: Any, **more: Any
) -> None:
    try:
        from .bridge import BridgeConfig, run_export, run_import
    except ImportError as exc:
        raise click.ClickException(
            f"the JetStream bridge needs nats-py and trio-asyncio ({exc}): "
            "pip install 'turbine[jetstream]'"
        ) from None
    servers = tuple(url.strip() for url in nats.split(",") if url.strip())
    config = BridgeConfig(turbine, servers, stream, tuple(patterns), token=token, **more)
    run = run_export if kind == "export" else run_import

    run_until_stopped(
        "bridge",
        functools.partial(run, config),
        f"bridge: {kind} of {' '.join(patterns)} between {turbine} and {stream}",
    )


if __name__ == "__main__":
    main(prog_name="python -m components.jetstream_bridge")
