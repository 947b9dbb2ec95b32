"""What the broker holds and how it is: ``turbine ls``, ``meta``, ``status`` and ``time``."""

from __future__ import annotations

import json
from typing import Any

import click

from .._constants import (
    CLOCK_FLAG_S,
)
from .._format import fmt_bytes
from .._values import value_dict
from ..client import Client, SourceInfo
from ..origin import Origin
from ..render import iso
from ._common import client_command


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
            rate = f"{c.rate:.1f}/s" if c.rate else "-"  # as the viewer shows it
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


@click.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json_", is_flag=True, help="One JSON document with every field.")
@client_command
async def ls(tb: Client, pattern: str, as_json_: bool) -> None:
    """List sources matching PATTERN: channels, types, counts, times, rates, metadata."""
    infos = await tb.list_sources(pattern)
    if as_json_:
        click.echo(json.dumps([value_dict(i) for i in infos], indent=2))
    elif not infos:
        click.echo(f"no sources match {pattern}", err=True)
    else:
        _ls_text(infos)


@click.command()
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
    if disk.get("last_sync_seconds") is not None:
        synced += f" (took {disk['last_sync_seconds'] * 1000:.1f} ms)"
    free = f" ({fmt_bytes(disk['free'])} free)" if disk.get("free") is not None else ""
    click.echo(
        f"disk: {fmt_bytes(disk['bytes'])} used, {fmt_bytes(disk['reserved'])} reserved{limit} "
        f"in {disk['path']}{free}; writing {fmt_bytes(disk['write_rate'])}/s, "
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


def _remote_status(remote: dict[str, Any]) -> None:
    """The status line of how the broker finds out a client on another host is gone."""
    probes = (
        f"probed after {remote['keepalive_idle']} s of silence, every "
        f"{remote['keepalive_interval']} s, ended after {remote['keepalive_probes']} unanswered"
        if remote["keepalive_idle"]
        else "not probed"
    )
    silence = remote["holder_silence"]
    hand = f"after {silence:g} s of silence" if silence else "never"
    click.echo(f"clients on other hosts: {probes}; their sources go to their reconnect {hand}")


@click.command()
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
    if st.get("remote"):
        _remote_status(st["remote"])
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


@click.command("time")
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
