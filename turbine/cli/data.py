"""Frames in and out: ``turbine tap``, ``fetch``, ``export``, ``put`` and ``rm``."""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from typing import Any

import click
import trio

from .._errors import RequestFailed
from .._format import OCTET_STREAM, fmt_bytes, fmt_count, guess_content_type
from .._selections import check_selection, check_start
from ..client import Client, Frame, Gap
from ..names import compile_pattern, split_path
from ..render import as_json, as_text
from ._common import Size, client_command

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


@click.command()
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
@client_command(ends_on_signal=True)  # Ctrl-C is how a tap without --count ends
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
    """Seconds since the epoch, ISO 8601 (UTC unless it says), or ``-DURATION``: that long ago."""
    if value.startswith("-"):
        try:
            return time.time() - _duration(value[1:])
        except click.BadParameter:
            raise click.BadParameter(
                f"{value!r} is not a time ago (e.g. -90s, -10m, -2h, -1d)"
            ) from None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither seconds since the epoch nor an ISO 8601 time "
            "(nor -DURATION ago, e.g. -10m)"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@click.command()
@click.argument("path")
@click.option("--newest", type=click.IntRange(min=0), help="The newest N frames per channel.")
@click.option("--oldest", type=click.IntRange(min=0), help="The oldest N frames per channel.")
@click.option(
    "--start",
    help="Start of a time range: seconds since the epoch, ISO 8601 (UTC), or -10m (ago).",
)
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
        missing = await _missing(tb, path)
        if missing:
            raise click.ClickException(missing)
        click.echo(f"no frames for {path}", err=True)


async def _missing(tb: Client, path: str) -> str | None:
    """What the pattern ``path`` names that is not there, or None: it matches channels."""
    source, _, channel = path.partition("/")
    infos = await tb.list_sources(path)
    if not infos:
        return f"no source matches {source} ('turbine ls' lists the sources there are)"
    pattern = compile_pattern(path)
    if any(pattern.match(f"{i.name}/{c.name}") for i in infos for c in i.channels):
        return None
    if len(infos) == 1:
        names = ", ".join(c.name for c in infos[0].channels) or "none"
        return f"{infos[0].name} has no channel {channel}; its channels: {names}"
    return f"no channel {channel} in the {len(infos)} sources matching {source}"


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


@click.command()
@click.argument("pattern")
@click.option(
    "--start",
    required=True,
    help="Start: seconds since the epoch, ISO 8601 (UTC), or -10m, -2h (that long ago).",
)
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
    from ..export import ExportError, export

    try:
        manifest = await export(tb, pattern, _time(start), _duration(duration), to, form)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    frames = sum(c["frames"] for c in manifest["channels"].values())
    size = sum(f["size"] for f in manifest["files"].values())
    gaps = (
        f", {fmt_count(len(manifest['gaps']), 'gap')} (see the manifest)"
        if manifest["gaps"]
        else ""
    )
    click.echo(
        f"exported {fmt_count(frames, 'frame')} of {fmt_count(len(manifest['channels']), 'channel')} "
        f"to {to}: {fmt_count(len(manifest['files']), 'file')}, {fmt_bytes(size)}{gaps}"
    )


@click.command()
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


@click.command()
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
    click.echo(f"put {fmt_count(n, 'frame')} on {path}", err=True)
