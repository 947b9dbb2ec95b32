"""The ``turbine`` command: click commands that call the library."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import click
import trio

from ._constants import (
    ARCHIVE_BYTES,
    CLI_CLIENT_NAME,
    CLOCK_FLAG_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    SOURCE_TYPES,
    TLS_CA_ENVVAR,
    TOKEN_ENVVAR,
    VERSION,
)
from ._descriptors import raise_limit as raise_descriptor_limit
from ._errors import RequestFailed, TurbineError, unwrap
from ._memory import pin_mmap_threshold
from ._options import address_option
from ._signals import open_stop_nursery
from .archive import Archive, ArchiveConfig, ArchiveError, SyncPolicy
from .archive._serve import serve_archived
from .archive._store import TieredStores
from .auth import AuthError, AuthTable, new_token, token_hash
from .client import Client, Frame, Gap, SourceInfo, fmt_address, open_client
from .command import NoReply, send_command
from .memory import fmt_bytes
from .names import split_path
from .origin import Origin
from .render import as_json, as_text, iso
from .router import check_selection, check_start
from .server import BrokerConfig, serve_turbine
from .sources import OCTET_STREAM, guess_content_type
from .tls import TLSError, make_lab_certs, server_context

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
        inner = unwrap(group)
        if isinstance(inner, click.ClickException):
            raise inner from None
        if isinstance(inner, TurbineError):
            raise click.ClickException(str(inner)) from None
        raise


def client_command(
    fn: Callable[..., Awaitable[Any]] | None = None, *, interrupt_exit: int = 130
) -> Any:
    """Turn ``async def fn(tb, **options)`` into a command body connected to the broker."""
    if fn is None:
        return functools.partial(client_command, interrupt_exit=interrupt_exit)

    @functools.wraps(fn)
    def body(address: str, token: str | None, tls_ca: str | None, **options: Any) -> Any:
        async def main() -> Any:
            # One client name for the command line: it owns the sources it creates.
            name = options.pop("client_name", None) or CLI_CLIENT_NAME
            async with open_client(address, name=name, token=token, tls_ca=tls_ca) as tb:
                return await fn(tb, **options)

        return run(main, interrupt_exit=interrupt_exit)

    return address_option(TOKEN_OPTION(TLS_CA_OPTION(body)))


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="turbine")
def main() -> None:
    """Turbine: a publish/subscribe data turbine for laboratories."""


# --- serve -----------------------------------------------------------------------


@main.command()
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
) -> None:
    """Run a broker until Ctrl-C or SIGTERM."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
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
            addresses = await nursery.start(serve, config)
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {fmt_address(config.host, config.port)}: {exc.strerror or exc}"
            ) from None
        except ArchiveError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"turbine listening on {fmt_address(*addresses[0])}")
        sys.stdout.flush()


# --- reading ---------------------------------------------------------------------


def _print_item(item: Frame | Gap, fmt: str) -> None:
    if fmt == "json":
        click.echo(as_json(item))
    elif fmt == "raw":
        if isinstance(item, Frame):
            sys.stdout.buffer.write(item.data)
            sys.stdout.buffer.flush()
        return
    else:
        click.echo(as_text(item))
    sys.stdout.flush()


FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "raw"]),
    default="text",
    show_default=True,
    help="text: a line per frame; json: an object per line; raw: payload bytes.",
)


def _start(value: str) -> str | int:
    try:
        return check_start(int(value) if value.lstrip("-").isdigit() else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("pattern")
@click.option(
    "--from",
    "start",
    default=None,
    metavar="now|newest|oldest|SEQ",
    help="Where to start on channels that exist already [default: now; newest with --monitor].",
)
@click.option(
    "--monitor", is_flag=True, help="Only the newest frame, skipping what you were too slow for."
)
@click.option("--count", type=click.IntRange(min=1), help="Exit 0 after this many frames.")
@click.option(
    "--timeout",
    "wait",
    type=click.FloatRange(min=0),
    help="Give up after S seconds (exit 1 if --count not reached).",
)
@FORMAT
@client_command(interrupt_exit=0)  # Ctrl-C is how a tap without --count ends
async def tap(
    tb: Client,
    pattern: str,
    start: str,
    monitor: bool,
    count: int | None,
    wait: float | None,
    fmt: str,
) -> None:
    """Stream frames matching PATTERN (SOURCE/CHANNEL with * wildcards) as they arrive.

    Waits for sources that do not exist yet.
    """
    got = 0
    with trio.move_on_after(wait if wait is not None else math.inf):
        first = _start(start or ("newest" if monitor else "now"))
        async with tb.subscribe(pattern, start=first, monitor=monitor) as sub:
            if not sub.channels:
                click.echo(f"waiting for {pattern} (nothing matches it yet)", err=True)
            async for item in sub:
                _print_item(item, fmt)
                if isinstance(item, Frame):
                    got += 1
                    if count is not None and got >= count:
                        return
    if wait is not None and (count is not None or got == 0):
        want = f"of {count} " if count is not None else ""
        raise click.ClickException(
            f"only {got} {want}frames arrived from {pattern} within {wait:g} s"
        )


def _time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither seconds since the epoch nor an ISO 8601 time"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@main.command()
@click.argument("path")
@click.option("--newest", type=click.IntRange(min=0), help="The newest N frames per channel.")
@click.option("--oldest", type=click.IntRange(min=0), help="The oldest N frames per channel.")
@click.option("--start", help="Start of a time range: seconds since the epoch or ISO 8601 (UTC).")
@click.option(
    "--duration", type=click.FloatRange(min=0), help="Length of the time range in seconds."
)
@click.option("--after", type=click.IntRange(min=0), help="Every frame after this sequence number.")
@FORMAT
@client_command
async def fetch(
    tb: Client,
    path: str,
    newest: int | None,
    oldest: int | None,
    start: str | None,
    duration: float | None,
    after: int | None,
    fmt: str,
) -> None:
    """Print frames the broker holds now for PATH (wildcards allowed)."""
    try:
        check_selection(newest=newest, oldest=oldest, start=start, after=after)
    except ValueError:
        raise click.UsageError(
            "give exactly one of --newest N, --oldest N, --start T [--duration D], --after SEQ"
        ) from None
    if duration is not None and start is None:
        raise click.UsageError("--duration goes with --start")
    frames = await tb.fetch(
        path,
        newest=newest,
        oldest=oldest,
        start=_time(start) if start else None,
        duration=duration,
        after=after,
    )
    for f in frames:
        _print_item(f, fmt)
    if not frames:
        click.echo(f"no frames for {path}", err=True)


def _duration(value: str) -> float:
    """Seconds, or a number with a unit: ``90``, ``90s``, ``10m``, ``2h``, ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a duration (e.g. 90, 90s, 10m, 2h, 1d)"
        ) from None
    if not seconds > 0 or math.isinf(seconds):
        raise click.BadParameter(f"a duration must be positive and finite, not {value!r}")
    return seconds


@main.command()
@click.argument("pattern")
@click.option("--start", required=True, help="Start: seconds since the epoch or ISO 8601 (UTC).")
@click.option("--duration", required=True, help="Length: seconds, or with s, m, h or d.")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False),
    help="A new (or empty) directory for the files and manifest.json.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["csv", "jsonl", "raw"]),
    default="csv",
    show_default=True,
    help="csv: numbers as CSV, text as JSON lines; jsonl: numbers as JSON lines too; "
    "raw: every frame its own file, as it was.",
)
@client_command
async def export(tb: Client, pattern: str, start: str, duration: str, to: str, form: str) -> None:
    """Write a time range of PATTERN's frames to files (the DVD archiver's layout),
    with a manifest of SHA-256s (docs/storage.rst, Exporting)."""
    from .export import ExportError, export

    try:
        manifest = await export(tb, pattern, _time(start), _duration(duration), to, form)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    frames = sum(c["frames"] for c in manifest["channels"].values())
    size = sum(f["size"] for f in manifest["files"].values())
    if not frames:
        raise click.ClickException(f"no frames of {pattern} in that time range (nothing written)")
    gaps = f", {len(manifest['gaps'])} gaps (see the manifest)" if manifest["gaps"] else ""
    click.echo(
        f"exported {frames} frames of {len(manifest['channels'])} channels to {to}: "
        f"{len(manifest['files'])} files, {fmt_bytes(size)}{gaps}"
    )


def _disk_text(disk: dict[str, Any]) -> str:
    """A channel's disk figures, in the columns of its memory line."""
    first, last = disk["first_time"], disk["last_time"]
    span = f"{iso(first)} .. {iso(last)}" if first is not None and last is not None else "-"
    seqs = f"#{disk['first_seq']}-{disk['last_seq']}" if disk["frames"] else "#-"
    return f"{disk['frames']:>7} frames {seqs:<14} {fmt_bytes(disk['bytes']):>10} {'':>9}  {span}"


def _ls_text(infos: list[SourceInfo]) -> None:
    for s in infos:
        state = "online" if s.online else "offline"
        flags = ", shared" if s.shared else ""
        holder = f" held by {s.holder}" if s.online else ""
        access = f"{s.access}  " if s.access is not None else ""
        archive = (
            f"; disk {fmt_bytes(sum(c.disk['bytes'] for c in s.channels if c.disk))} "
            f"of {fmt_bytes(s.archive_bytes)}"
            if s.archive_bytes
            else ""
        )
        click.echo(
            f"{access}{s.name}  [{state}{flags}]{holder}  {fmt_bytes(s.bytes)} of "
            f"{fmt_bytes(s.cache_bytes)}{archive}"
        )
        if s.mirror is not None:
            click.echo(f"  mirror of {Origin.from_wire(s.mirror).describe()}")
        for c in s.channels:
            span = (
                f"{iso(c.first_time)} .. {iso(c.last_time)}"
                if c.first_time is not None and c.last_time is not None
                else "-"
            )
            rate = f"{c.rate:g}/s" if c.rate else "-"
            seqs = f"#{c.first_seq}-{c.last_seq}" if c.frames else "#-"
            if not c.frames and c.next_seq is not None and c.next_seq > 1:
                seqs = f"next #{c.next_seq}"  # none in memory (say, back from the archive)
            click.echo(
                f"  {c.name:<20} {c.content_type:<26} {c.frames:>7} frames {seqs:<14} "
                f"{fmt_bytes(c.bytes):>10} {rate:>9}  {span}"
            )
            if c.disk is not None:
                click.echo(f"  {'':<20} {'on disk':>26} {_disk_text(c.disk)}")
        if s.metadata is not None:
            meta = json.dumps(s.metadata, sort_keys=True)
            click.echo(f"  metadata: {meta if len(meta) <= 200 else meta[:197] + '...'}")


@main.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json_", is_flag=True, help="One JSON document with every field.")
@client_command
async def ls(tb: Client, pattern: str, as_json_: bool) -> None:
    """List sources matching PATTERN: channels, types, counts, times, rates, metadata."""
    infos = await tb.list_sources(pattern)
    if as_json_:
        click.echo(json.dumps([attrs.asdict(i) for i in infos], indent=2))
    elif not infos:
        click.echo(f"no sources match {pattern}", err=True)
    else:
        _ls_text(infos)


@main.command()
@click.argument("source")
@client_command
async def meta(tb: Client, source: str) -> None:
    """Print the newest metadata of SOURCE."""
    infos = [i for i in await tb.list_sources(source) if i.name == source]
    if not infos:
        raise click.ClickException(f"no source named {source!r}")
    if infos[0].metadata is None:
        raise click.ClickException(f"{source} has published no metadata")
    click.echo(json.dumps(infos[0].metadata, indent=2, sort_keys=True))


def _disk_status(disk: dict[str, Any]) -> None:
    """The status lines of a broker's data dir: use, budget, writes, syncs, trouble."""
    limit = f" of --max-disk {fmt_bytes(disk['limit'])}" if disk.get("limit") else ""
    synced = iso(disk["last_sync"]) if disk.get("last_sync") else "never"
    click.echo(
        f"disk: {fmt_bytes(disk['bytes'])} used, {fmt_bytes(disk['reserved'])} reserved{limit} "
        f"in {disk['path']}; writing {fmt_bytes(disk['write_rate'])}/s, "
        f"{fmt_bytes(disk['backlog'])} waiting, last sync {synced}"
    )
    for why in disk["errors"].values():
        click.echo(f"  write error: {why}")
    for source, found in disk["damage"].items():
        for d in found:
            end = d["offset"] + d["length"]
            click.echo(
                f"  damage in {source}: segment {d['segment']}, bytes {d['offset']}-{end}: "
                f"{d['reason']} (its frames are reported to readers as missing)"
            )
    for source, why in disk["broken"].items():
        click.echo(f"  archive of {source} unreadable: {why}")


@main.command()
@click.option("--json", "as_json_", is_flag=True, help="Everything, as JSON.")
@client_command
async def status(tb: Client, as_json_: bool) -> None:
    """Broker version, uptime, memory, disk (with a data dir), clients and their traffic."""
    st = await tb.status()
    if as_json_:
        click.echo(json.dumps(st, indent=2))
        return
    mem = st["memory"]
    click.echo(
        f"turbine {st['version']} (protocol {st['protocol']}), up {st['uptime']:.0f} s, broker time {iso(st['time'])}, identity {st.get('identity', '-')}"
    )
    click.echo(
        f"memory: {fmt_bytes(mem['used'])} used, {fmt_bytes(mem['reserved'])} reserved of {fmt_bytes(mem['limit'])}; "
        f"{st['sources']} sources"
    )
    if st.get("disk"):
        _disk_status(st["disk"])
    click.echo(f"clients: {len(st['clients'])}")
    for c in st["clients"]:
        user = f" (user {c['user']})" if c.get("user") else ""
        offset = c.get("clock_offset")
        if offset is not None:
            flag = (
                f"  OVER {CLOCK_FLAG_S * 1000:g} ms: check that machine's time sync"
                if abs(offset) > CLOCK_FLAG_S
                else ""
            )
            user += f" clock {offset * 1000:+.1f} ms{flag}"
        subs = ", ".join(
            f"{s['pattern']} ({s['delivered']} sent, {s['missed']} missed)"
            for s in c["subscriptions"]
        )
        click.echo(
            f"  {c['name']}{user}: in {fmt_bytes(c['bytes_in'])} / {c['frames_in']} frames, out {fmt_bytes(c['bytes_out'])} / "
            f"{c['frames_out']} frames, gaps {c['gaps']}, slow {c['slow_events']}"
        )
        if c["sources"]:
            click.echo(f"    holds: {', '.join(c['sources'])}")
        if subs:
            click.echo(f"    subscribed: {subs}")
    for c in st["closed"][-5:]:
        click.echo(f"  closed {iso(c['time'])} {c['client']}: {c['reason']}")


@main.command()
@click.argument("source")
@click.option(
    "--as",
    "client_name",
    metavar="NAME",
    default=None,
    help="Delete as the client NAME: a source's owner (the client that created it) may delete it.",
)
@client_command
async def rm(tb: Client, source: str) -> None:
    """Delete SOURCE and its frames."""
    freed = await tb.delete(source)
    click.echo(f"deleted {source} (freed {fmt_bytes(freed)})")


# --- writing ---------------------------------------------------------------------


@main.command()
@click.argument("path")
@click.argument("values", nargs=-1)
@click.option(
    "--type",
    "content_type",
    metavar="MIME",
    help="Content type of a new channel (default: from its name; text/plain for VALUEs or lines).",
)
@click.option("--file", "file_", type=click.File("rb"), help="Put the whole file as one frame.")
@click.option(
    "--cache-frames", type=click.IntRange(min=1), help="Ring size in frames of a new source."
)
@click.option("--cache-bytes", type=Size(), help="Ring size in bytes of a new source (e.g. 1MiB).")
@client_command
async def put(
    tb: Client,
    path: str,
    values: tuple[str, ...],
    content_type: str | None,
    file_: Any,
    cache_frames: int | None,
    cache_bytes: int | None,
) -> None:
    """Put frames on SOURCE/CHANNEL: one per VALUE, or one per line of standard input."""
    source, channel = split_path(path)
    if file_ is not None and values:
        raise click.UsageError("give VALUEs or --file, not both")
    if content_type is None and file_ is None and guess_content_type(channel) == OCTET_STREAM:
        content_type = "text/plain"  # words typed or piped in are text, not bytes to base64
    try:
        src = await tb.open_source(
            source,
            channels={channel: content_type} if content_type else {},
            cache_frames=cache_frames,
            cache_bytes=cache_bytes,
        )
        own = True
    except RequestFailed as exc:
        if exc.code != "held":
            raise
        src, own = None, False  # held by a component: fine if it is shared

    async def put_one(data: bytes) -> None:
        if src is not None:
            await src.put(channel, data)
        else:
            await tb.put(path, data)

    n = 0
    if file_ is not None:
        await put_one(file_.read())
        n = 1
    elif values:
        for v in values:
            await put_one(v.encode())
            n += 1
    else:
        for line in sys.stdin.buffer:
            await put_one(line.rstrip(b"\r\n"))
            n += 1
    await tb.flush()
    if own and src is not None:
        await src.close()
    click.echo(f"put {n} frame{'s' if n != 1 else ''} on {path}", err=True)


# --- components ------------------------------------------------------------------


def reply_text(verb: str, result: Any) -> str:
    """An ok reply's result as ``turbine cmd`` prints it.

    Text as it is; ``help``'s table of usage lines one per line (each names
    its verb); anything else as indented JSON.
    """
    if isinstance(result, str):
        return result
    if (
        verb == "help"
        and isinstance(result, dict)
        and all(isinstance(v, str) for v in result.values())
    ):
        return "\n".join(result[k] for k in sorted(result))
    return json.dumps(result, indent=2, default=str)


@main.command()
@click.argument("target")
@click.argument("verb")
@click.argument("args", nargs=-1)
@click.option(
    "--timeout",
    "wait",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds to wait for the reply (also the command's deadline).",
)
@click.option("--json", "as_json_", is_flag=True, help="Print the whole reply as JSON.")
@client_command
async def cmd(
    tb: Client, target: str, verb: str, args: tuple[str, ...], wait: float, as_json_: bool
) -> None:
    """Send VERB [ARGS...] to component TARGET (<type>_<name>) and print its reply.

    Exit 0 when the reply is ok, 1 on an error reply, 2 when no reply came in time.
    """
    try:
        reply = await send_command(tb, target, verb, *args, wait=wait)
    except NoReply as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(2) from None
    if as_json_:
        click.echo(json.dumps(attrs.asdict(reply), indent=2, default=str))
    elif reply.ok:
        click.echo(reply_text(verb, reply.result))
    else:
        click.echo(f"{target} {verb}: {reply.status}: {reply.error}", err=True)
    if not reply.ok:
        raise SystemExit(1)


# --- components ------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json_", is_flag=True, help="One JSON document with every field.")
def components(as_json_: bool) -> None:
    """List the component kinds installed and where each comes from.

    A kind is registered in the ``turbine.components`` entry-point group by the
    distribution that provides it; TYPE is its sources' type, or ``process``
    for a program with no component class (a ``[[process]]`` kind).
    """
    from . import kinds

    rows = []
    for kind in kinds.available():
        try:
            ty = kind.component_class().type
        except LookupError:
            ty = "process"
        except Exception as exc:  # a broken third-party package: say so, list the rest
            ty = f"? ({type(exc).__name__}: {exc})"
        row = {"kind": kind.name, "type": ty, "module": kind.module, "from": kind.origin}
        rows.append({**row, "path": kind.location()} if as_json_ else row)
    for lost, used in kinds.hidden():
        click.echo(
            f"warning: kind {lost.name!r} of {lost.origin} ({lost.module}) is hidden by"
            f" {used.origin} ({used.module}): rename one of them or uninstall one",
            err=True,
        )
    if as_json_:
        click.echo(json.dumps(rows, indent=2))
        return
    heads = ("kind", "type", "module", "from")
    widths = {h: max([len(h)] + [len(r[h]) for r in rows]) + 2 for h in heads[:-1]}
    click.echo("".join(f"{h.upper():<{widths[h]}}" for h in heads[:-1]) + "FROM")
    for r in rows:
        click.echo("".join(f"{r[h]:<{widths[h]}}" for h in heads[:-1]) + r["from"])


@main.group()
def new() -> None:
    """Write the skeleton of something new (a component package)."""


@new.command("component")
@click.argument("kind")
@click.option(
    "--dir",
    "where",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The directory the package directory KIND/ goes in.",
)
@click.option("--type", "type_", default="daq", show_default=True, help="The type of its sources.")
def new_component(kind: str, where: str, type_: str) -> None:
    """Write KIND/: a package with a component, its settings class, a __main__, a test
    using turbine.testing and its turbine.components entry point.

    The test passes as written; once installed, the kind runs under turbine mcp.
    """
    from pathlib import Path

    from .scaffold import new_component as write

    try:
        files = write(kind, Path(where), type_)
    except (ValueError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from None
    for path in files:
        click.echo(f"wrote {path}")
    root = Path(where) / kind
    click.echo(f"next: pip install -e '{root}[test]' && (cd {root} && python -m pytest)")


# --- the web viewer ---------------------------------------------------------------


@main.command()
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
    from .web.serve import serve_web  # the web stack loads only for this command

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_web, address, host, port, token=token, tls_ca=tls_ca)
            )
            click.echo(f"turbine web on {url}/ (broker {address})")

    run(main)


from ._mirror_cli import mirror as _mirror  # noqa: E402
from .mcp import mcp as _mcp  # noqa: E402

main.add_command(_mcp)
main.add_command(_mirror)


# --- auth ------------------------------------------------------------------------


@main.group()
def auth() -> None:
    """Users and tokens for turbine serve --auth."""


@auth.command()
@click.argument("user", default="operator")
def token(user: str) -> None:
    """Print a fresh random token for USER, and the auth file lines that admit it.

    The token goes to the user (TURBINE_TOKEN or ~/.config/turbine/token);
    the auth file keeps only its SHA-256.
    """
    secret = new_token()
    click.echo(f"token (give it to {user}; it is not stored anywhere): {secret}")
    click.echo("auth file lines:")
    click.echo(f"[users.{user}]")
    click.echo(f'token_sha256 = "{token_hash(secret)}"')
    click.echo('read = ["*"]')
    click.echo("write = []")
    click.echo("command = []")


@auth.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A name or address clients reach the broker by (repeatable); localhost, 127.0.0.1 and ::1 always.",
)
@click.option("--days", default=825, show_default=True, type=click.IntRange(min=1))
def cert(directory: str, hosts: tuple[str, ...], days: int) -> None:
    """Make a lab CA and a broker certificate in DIRECTORY.

    Start the broker with --tls-cert DIRECTORY/server.pem --tls-key
    DIRECTORY/server-key.pem; give clients DIRECTORY/ca.pem (--tls-ca or
    TURBINE_TLS_CA).  Keep ca-key.pem away from the network.
    """
    names = tuple(dict.fromkeys((*hosts, "localhost", "127.0.0.1", "::1")))
    paths = make_lab_certs(directory, names, days=days)
    for name, path in paths.items():
        click.echo(f"{name + ':':<12} {path}")


# --- acl -------------------------------------------------------------------------


def _print_rights(users: dict[str, Any]) -> None:
    for name, rights in users.items():
        admin = "  (admin)" if rights.get("admin") else ""
        click.echo(f"{name}{admin}")
        for right in ("read", "write", "command"):
            click.echo(f"  {right:<8} {' '.join(rights.get(right) or ['-'])}")


@main.group()
def acl() -> None:
    """Show or change who may do what (a broker started with --auth)."""


@acl.command("show")
@click.argument("user", required=False)
@click.option("--json", "as_json_", is_flag=True, help="As JSON.")
@client_command
async def acl_show(tb: Client, user: str | None, as_json_: bool) -> None:
    """Every user's protections (an admin), or USER's, or your own."""
    users = await tb.acl("show", user)
    if as_json_:
        click.echo(json.dumps(users, indent=2))
    else:
        _print_rights(users)


def _acl_change(action: str) -> Any:
    @acl.command(
        action,
        help=f"{action.capitalize()} USER's RIGHT on source PATTERN (admin only): at once, "
        "live subscriptions included, and in the auth file.",
    )
    @click.argument("user")
    @click.argument("right", type=click.Choice(["read", "write", "command", "admin"]))
    @click.argument("pattern")
    @client_command
    async def change(tb: Client, user: str, right: str, pattern: str) -> None:
        _print_rights(await tb.acl(action, user, right, pattern))

    return change


acl_grant = _acl_change("grant")
acl_revoke = _acl_change("revoke")


# --- time ------------------------------------------------------------------------


@main.command("time")
@click.option("--exchanges", default=8, show_default=True, type=click.IntRange(1, 1000))
@client_command
async def time_(tb: Client, exchanges: int) -> None:
    """The broker's clock, ours, the offset and the round trip (NTP's method)."""
    r = await tb.time(exchanges)
    click.echo(f"broker time: {iso(r.broker_time)}")
    click.echo(f"local time:  {iso(r.local_time)}")
    click.echo(
        f"offset:      {r.offset * 1000:+.3f} ms (broker minus local; +- {r.round_trip * 500:.3f} ms)"
    )
    click.echo(f"round trip:  {r.round_trip * 1000:.3f} ms (best of {r.exchanges})")
    if abs(r.offset) > CLOCK_FLAG_S:
        click.echo(
            f"the clocks differ by more than {CLOCK_FLAG_S * 1000:g} ms: check time sync (NTP)",
            err=True,
        )
