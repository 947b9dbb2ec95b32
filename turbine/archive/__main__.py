"""Check a data directory, read-only: ``python -m turbine.archive DIR``.

Reads every record of every segment and verifies its checksums (recovery
reads index files only), then prints, per source, its channels (frames,
numbers, time span, bytes) and any damage.  It changes nothing and takes no
lock, so it may run beside the broker using the directory (whose newest
records may then look torn: they are being written).  Exit status 1 if
damage was found.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from . import _format as fmt
from ._datadir import SOURCES_DIR, source_dirs
from ._scan import scan


def check_source(directory: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per channel name: frames, first/next seq, times, bytes; and the damage found."""
    names: dict[int, fmt.ChannelRecord] = {}
    stats: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    segments = sorted(n for n in os.listdir(directory) if n.endswith(".seg"))
    for i, name in enumerate(segments):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            fd = f.fileno()
            try:
                number, _ = fmt.decode_segment_header(os.pread(fd, fmt.SEGMENT_HEADER.size, 0))
            except fmt.FormatError as exc:
                problems.append(f"{name}: {exc}")
                continue
            found = scan(fd, number, os.fstat(fd).st_size)
        names.update(found.channels)
        for d in found.damage:
            problems.append(f"{name}: {d.length} bytes at offset {d.offset}: {d.reason}")
        if found.torn and not found.padding:  # (padding: what a stopped writer leaves)
            last = i == len(segments) - 1
            problems.append(
                f"{name}: {found.torn} bytes after the last whole record fail their checksums"
                + (" (a torn tail: recovery drops it)" if last else "")
            )
        for e in found.entries:
            st = stats.setdefault(
                e.channel,
                {"frames": 0, "first_seq": e.first_seq, "next_seq": e.end_seq, "bytes": 0},
            )
            st["next_seq"] = max(st["next_seq"], e.end_seq)
            if e.kind == fmt.FRAMES:
                st["frames"] += e.count
                st["bytes"] += e.body_len
                st.setdefault("first_time", e.first_time)
                st["last_time"] = e.last_time
    out = {}
    for cid, rec in names.items():
        st = stats.get(cid, {"frames": 0, "first_seq": rec.next_seq, "bytes": 0})
        out[rec.name] = {"content_type": rec.content_type, **st}
    return out, problems


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else "-"


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
def main(data_dir: str) -> None:
    """Verify every checksum under DATA_DIR and list what each source holds."""
    if not os.path.isdir(os.path.join(data_dir, SOURCES_DIR)):
        raise click.ClickException(
            f"{data_dir} is not a Turbine data directory (no {SOURCES_DIR}/)"
        )
    damaged = False
    for source, directory in source_dirs(data_dir):
        channels, problems = check_source(directory)
        click.echo(source)
        for name, st in channels.items():
            click.echo(
                f"  {name} ({st['content_type']}): {st['frames']} frames, "
                f"numbers {st['first_seq']}..{st.get('next_seq', st['first_seq']) - 1}, "
                f"{_when(st.get('first_time'))} .. {_when(st.get('last_time'))} UTC, "
                f"{st['bytes']} bytes"
            )
        for p in problems:
            click.echo(f"  damage: {p}")
        damaged = damaged or any("torn tail" not in p for p in problems)
    sys.exit(1 if damaged else 0)


if __name__ == "__main__":
    main()
