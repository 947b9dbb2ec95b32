"""``turbine serve`` and ``turbine web``: the servers the command runs until stopped."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable

import click

from .._constants import (
    ARCHIVE_BYTES,
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOLDER_GONE_SILENT_S,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    REMOTE_KEEPALIVE_IDLE_S,
    REMOTE_KEEPALIVE_INTERVAL_S,
    REMOTE_KEEPALIVE_PROBES,
    SOURCE_TYPES,
)
from .._descriptors import raise_limit as raise_descriptor_limit
from .._errors import unwrap
from .._keepalive import RemoteLiveness
from .._memory import pin_mmap_threshold
from .._options import address_option
from .._signals import open_stop_nursery, say_stopping
from ..archive import Archive, ArchiveConfig, ArchiveError, SyncPolicy
from ..archive._serve import serve_archived
from ..archive._store import TieredStores
from ..auth import AuthError, AuthTable
from ..client import fmt_address
from ..server import BrokerConfig, serve_turbine
from ..tls import TLSError, server_context
from ._common import TLS_CA_OPTION, TOKEN_OPTION, Size, checked_options, run


@click.command()
@click.option(
    "--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on (IPv6 as ::1)."
)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--max-memory",
    default=str(MAX_MEMORY_BYTES),
    type=Size(),
    show_default="1GiB",
    help="Memory all ring buffers may reserve together.",
)
@click.option(
    "--max-frame",
    default=str(MAX_FRAME_BYTES),
    type=Size(),
    show_default="64MiB",
    help="Largest frame accepted.",
)
@click.option(
    "--lenient-names", is_flag=True, help="Accept source names outside <type>_<name>_<detail>."
)
@click.option(
    "--type",
    "extra_types",
    multiple=True,
    metavar="TYPE",
    help="Allow another source type (e.g. mcp); repeatable.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep every source's frames on disk here too (docs/storage.rst); memory only without.",
)
@click.option(
    "--sync",
    type=click.Choice([p.value for p in SyncPolicy]),
    default=SyncPolicy.ALWAYS.value,
    show_default=True,
    help="When a flush is acknowledged: on stable storage, written and synced each second, or left to the OS.",
)
@click.option(
    "--sync-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --sync interval: how often what was written is synced.",
)
@click.option(
    "--archive-bytes",
    default=str(ARCHIVE_BYTES),
    type=Size(),
    show_default="1GiB",
    help="With --data-dir: disk kept per source that does not ask for its own "
    "(open_source archive_bytes; the oldest goes first).",
)
@click.option(
    "--max-disk",
    type=Size(),
    default=None,
    help="With --data-dir: disk all sources' archives may reserve together (their "
    "archive_bytes); a source that does not fit is refused.  No budget without it.",
)
@click.option(
    "--archive-age",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --data-dir: also drop what is older than this (whole segments, by their newest frame).",
)
@click.option(
    "--auth",
    "auth_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Users, token hashes and rights (TOML; docs/protocol.rst, Authentication). "
    "Without it every client may do everything.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    default=None,
    help="Speak TLS with this certificate (PEM; turbine auth cert makes a lab one).",
)
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Its key (PEM).")
@click.option(
    "--insecure",
    is_flag=True,
    help="Without --auth, listen on a non-loopback --host anyway.",
)
@click.option(
    "--keepalive-idle",
    type=int,
    default=REMOTE_KEEPALIVE_IDLE_S,
    show_default=True,
    metavar="SECONDS",
    help="TCP probes a connection from another host silent this long (0: never); "
    "loopback ones never.",
)
@click.option(
    "--keepalive-interval",
    type=int,
    default=REMOTE_KEEPALIVE_INTERVAL_S,
    show_default=True,
    metavar="SECONDS",
    help="Then probes it this often ...",
)
@click.option(
    "--keepalive-probes",
    type=int,
    default=REMOTE_KEEPALIVE_PROBES,
    show_default=True,
    metavar="N",
    help="... and ends it after this many unanswered.",
)
@click.option(
    "--holder-silence",
    type=float,
    default=HOLDER_GONE_SILENT_S,
    show_default=True,
    metavar="SECONDS",
    help="A source held by a connection from another host silent this long goes to a "
    "reconnecting client of the holder's name (its lost connection; 0: never). More than "
    "--keepalive-idle + --keepalive-interval.",
)
def serve(
    host: str,
    port: int,
    max_memory: int,
    max_frame: int,
    lenient_names: bool,
    extra_types: tuple[str, ...],
    data_dir: str | None,
    sync: str,
    sync_interval: float,
    archive_bytes: int,
    archive_age: float | None,
    max_disk: int | None,
    auth_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    keepalive_idle: int,
    keepalive_interval: int,
    keepalive_probes: int,
    holder_silence: float,
) -> None:
    """Run a broker until Ctrl-C or SIGTERM."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    remote = checked_options(
        RemoteLiveness,
        keepalive_idle=keepalive_idle,
        keepalive_interval=keepalive_interval,
        keepalive_probes=keepalive_probes,
        holder_silence=holder_silence,
    )
    try:
        auth = AuthTable.load(auth_file) if auth_file else None
        tls = server_context(tls_cert, tls_key) if tls_cert and tls_key else None
    except (AuthError, TLSError) as exc:
        raise click.ClickException(str(exc)) from None
    config = BrokerConfig(
        host=host.strip("[]"),
        port=port,
        max_memory=max_memory,
        max_frame=max_frame,
        lenient_names=lenient_names,
        types=SOURCE_TYPES + tuple(t for t in extra_types if t not in SOURCE_TYPES),
        auth=auth,
        insecure=insecure,
        tls=tls,
        remote=remote,
    )
    stores = functools.partial(
        TieredStores, archive_bytes=archive_bytes, archive_age=archive_age, max_disk=max_disk
    )
    run(_serve, config, data_dir, ArchiveConfig(sync=sync, sync_interval=sync_interval), stores)


async def _serve(
    config: BrokerConfig,
    data_dir: str | None,
    archive: ArchiveConfig,
    stores: Callable[[Archive], TieredStores],
) -> None:
    pin_mmap_threshold()  # this process is the broker: large buffers go back whole
    raise_descriptor_limit()  # one per connection: as many as the hard limit allows

    async def stop(signum: signal.Signals) -> None:
        click.echo("turbine: shutting down", err=True)

    serve = serve_turbine
    if data_dir is not None:
        serve = functools.partial(serve_archived, data_dir=data_dir, archive=archive, stores=stores)
    async with open_stop_nursery(stop) as nursery:
        try:
            try:
                addresses = await nursery.start(serve, config)
            except BaseExceptionGroup as group:  # a data dir's archive has a nursery of its own
                raise unwrap(group) from None
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {fmt_address(config.host, config.port)}: {exc.strerror or exc}"
            ) from None
        except ArchiveError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"turbine listening on {fmt_address(*addresses[0])}")
        sys.stdout.flush()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve HTTP on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@address_option
@TOKEN_OPTION
@TLS_CA_OPTION
def web(address: str, host: str, port: int, token: str | None, tls_ca: str | None) -> None:
    """Serve the web viewer and HTTP API (docs/http.rst) for the broker at --turbine.

    With a broker that checks tokens, the viewer logs in with --token (or
    TURBINE_TOKEN, or the token file) and its page may do what that user may.
    """
    from ..web.serve import serve_web  # the web stack loads only for this command

    async def main() -> None:
        async with open_stop_nursery(say_stopping("turbine web")) as nursery:
            url = await nursery.start(
                functools.partial(serve_web, address, host, port, token=token, tls_ca=tls_ca)
            )
            click.echo(f"turbine web on {url}/ (broker {address})")

    run(main)
