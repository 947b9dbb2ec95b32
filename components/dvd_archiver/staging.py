"""The staging area on local disk, and the archiver's durable state.

Synchronous file code; the component runs it in a worker thread.

Frames received from the turbine are collected in memory (:class:`Buffer`)
and committed about once a second as a *segment*: a directory
``segments/<NNNNNNNN>/`` holding one msgpack file per channel and an
``index.json`` saying what is in it.  A segment is written as
``.tmp-<N>/``, every file fsynced, then renamed: after a crash a segment is
either whole or absent, never partial.  The segments in order *are* the
record of what was staged; frames received but not yet in a segment are
read again from the turbine's ring after a restart.

``state.json`` (written to a temporary file, fsynced, then ``os.replace``d)
records what is verified on disc: the last archived segment, each channel's
last archived sequence number, the next session number, the sessions and
discs written, and the session being burned (``pending``) so that a restart
during a burn can find out whether it reached the disc.

Staged segments are deleted only after the state says they are archived.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import msgpack

from turbine import layout
from turbine._files import fsync_dir, write_atomically

STATE_VERSION = 1


@attrs.frozen
class Position:
    """The last frame of a channel taken in: its sequence number and timestamp."""

    seq: int
    time: float


@attrs.define
class ChannelBuffer:
    source: str
    channel: str
    content_type: str
    frames: list[tuple[int, float, bytes]] = attrs.Factory(list)


@attrs.define
class Buffer:
    """Frames (and gaps) received since the last commit."""

    channels: dict[str, ChannelBuffer] = attrs.Factory(dict)
    gaps: list[dict[str, Any]] = attrs.Factory(list)
    bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.channels or self.gaps)


def _channel_record(cb: ChannelBuffer, file: str) -> dict[str, Any]:
    frames = cb.frames
    size = sum(len(f[2]) for f in frames)
    kind = layout.channel_kind(cb.channel, cb.content_type)
    return {
        "path": f"{cb.source}/{cb.channel}",
        "source": cb.source,
        "channel": cb.channel,
        "content_type": cb.content_type,
        "kind": kind,
        "file": file,
        "frames": len(frames),
        "first_seq": frames[0][0],
        "last_seq": frames[-1][0],
        "first_time": frames[0][1],
        "last_time": frames[-1][1],
        "bytes": size,
        "estimate": layout.estimate_disc_bytes(kind, len(frames), size),
    }


@attrs.frozen
class Segment:
    number: int
    path: Path
    index: dict[str, Any]

    @property
    def bytes(self) -> int:
        return int(self.index["bytes"])

    @property
    def estimate(self) -> int:
        return sum(int(c["estimate"]) for c in self.index["channels"])

    def frames(self, record: dict[str, Any]) -> Iterator[Any]:
        """The ``[seq, timestamp, data]`` of every frame of one channel, in order."""
        with open(self.path / record["file"], "rb") as f:
            yield from msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30)


class Staging:
    """The staging directory and the state file; see the module docstring."""

    def __init__(self, staging: Path, state_dir: Path) -> None:
        self.root = Path(staging)
        self.segments_dir = self.root / "segments"
        self.sessions_dir = self.root / "sessions"
        self.state_path = Path(state_dir) / "state.json"
        for d in (self.segments_dir, self.sessions_dir, self.state_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self.segments: list[Segment] = []
        self._recover()

    # --- state

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return {
                "version": STATE_VERSION,
                "archived_through": 0,
                "next_session": 1,
                "channels": {},
                "sessions": [],
                "discs": [],
                "pending": None,
            }
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_path}: unknown state version {state.get('version')!r}")
        return state

    def save_state(self) -> None:
        write_atomically(self.state_path, json.dumps(self.state, indent=1, sort_keys=True).encode())

    # --- recovery

    def _recover(self) -> None:
        """Drop half-written segments and those already archived; read the rest."""
        for stale in self.segments_dir.glob(".tmp-*"):
            shutil.rmtree(stale)
        through = self.state["archived_through"]
        for path in sorted(self.segments_dir.iterdir()):
            if not path.name.isdigit():
                continue
            number = int(path.name)
            if number <= through:
                shutil.rmtree(path)
                continue
            index = json.loads((path / "index.json").read_bytes())
            self.segments.append(Segment(number, path, index))
        pending = self.state.get("pending")
        for path in self.sessions_dir.iterdir():
            if not pending or path.name != f"{pending['session']:04d}":
                shutil.rmtree(path, ignore_errors=True)

    def positions(self) -> dict[str, Position]:
        """The last frame taken in per channel: archived, then staged."""
        out = {path: Position(c["seq"], c["time"]) for path, c in self.state["channels"].items()}
        for seg in self.segments:
            for c in seg.index["channels"]:
                out[c["path"]] = Position(c["last_seq"], c["last_time"])
        return out

    @property
    def next_segment(self) -> int:
        last = self.segments[-1].number if self.segments else 0
        return max(last, self.state["archived_through"]) + 1

    @property
    def staged_bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    # --- commit

    def commit(self, buffer: Buffer) -> Segment | None:
        """Write ``buffer`` as the next segment (atomically); None if it is empty."""
        if not buffer:
            return None
        number = self.next_segment
        tmp = self.segments_dir / f".tmp-{number:08d}"
        tmp.mkdir()
        records = []
        for i, cb in enumerate(buffer.channels.values()):
            name = f"c{i}.msgpack"
            with open(tmp / name, "wb") as f:
                packer = msgpack.Packer(use_bin_type=True)
                for frame in cb.frames:
                    f.write(packer.pack(frame))
                f.flush()
                os.fsync(f.fileno())
            records.append(_channel_record(cb, name))
        index = {
            "segment": number,
            "created": time.time(),
            "channels": records,
            "gaps": buffer.gaps,
            "bytes": buffer.bytes,
        }
        with open(tmp / "index.json", "wb") as f:
            f.write(json.dumps(index).encode())
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        final = self.segments_dir / f"{number:08d}"
        os.rename(tmp, final)
        fsync_dir(self.segments_dir)
        segment = Segment(number, final, index)
        self.segments.append(segment)
        return segment

    # --- sessions

    def build_session(
        self, segments: list[Segment], session: int, component: str, all_sessions: list[int]
    ) -> tuple[Path, bytes, dict[str, Any]]:
        """Write the disc tree of ``segments`` as session ``session``.

        Returns the local directory, the manifest's bytes and the manifest.
        """
        out = self.sessions_dir / f"{session:04d}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        channels: dict[str, dict[str, Any]] = {}
        gaps: list[dict[str, Any]] = []
        writer = layout.TreeWriter(out, session)
        for seg in segments:
            gaps += seg.index["gaps"]
            for rec in seg.index["channels"]:
                ch = channels.setdefault(
                    rec["path"],
                    {
                        "source": rec["source"],
                        "channel": rec["channel"],
                        "content_type": rec["content_type"],
                        "kind": rec["kind"],
                        "frames": 0,
                        "first_seq": rec["first_seq"],
                        "first_time": rec["first_time"],
                    },
                )
                ch["frames"] += rec["frames"]
                ch["last_seq"], ch["last_time"] = rec["last_seq"], rec["last_time"]
                writer.add(rec["source"], rec["channel"], rec["content_type"], seg.frames(rec))
        files = writer.finish()
        manifest = layout.manifest_document(
            component=component,
            session=session,
            created=time.time(),
            through_segment=segments[-1].number,
            files=files,
            channels=channels,
            gaps=gaps,
        )
        target = out / layout.manifest_path(session)
        target.parent.mkdir(parents=True)
        target.write_bytes(manifest)
        (out / layout.README_NAME).write_text(
            layout.readme_text(component, [*all_sessions, session])
        )
        return out, manifest, json.loads(manifest)

    def archived(self, session: int, manifest: dict[str, Any], disc: str | None) -> dict[str, Any]:
        """Record session ``session`` as verified on disc, then delete its staged data;
        return its record (session, disc, files, bytes, frames, gaps, time)."""
        through = manifest["through_segment"]
        state = self.state
        for path, ch in manifest["channels"].items():
            state["channels"][path] = {"seq": ch["last_seq"], "time": ch["last_time"]}
        state["archived_through"] = through
        state["next_session"] = max(state["next_session"], session + 1)
        state["sessions"].append(
            {
                "session": session,
                "disc": disc,
                "files": len(manifest["files"]),
                "bytes": sum(f["size"] for f in manifest["files"].values()),
                "frames": sum(c["frames"] for c in manifest["channels"].values()),
                "gaps": len(manifest["gaps"]),
                "time": time.time(),
            }
        )
        del state["sessions"][:-100]
        state["pending"] = None
        self.save_state()
        done = [s for s in self.segments if s.number <= through]
        self.segments = [s for s in self.segments if s.number > through]
        for seg in done:
            shutil.rmtree(seg.path)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.sessions_dir / f"{session:04d}")
        return cast(dict[str, Any], state["sessions"][-1])

    def set_pending(self, pending: dict[str, Any] | None) -> None:
        """Record the session being burned (``session``, ``disc``, ``through_segment``;
        None: no burn is under way) and save the state."""
        self.state["pending"] = pending
        self.save_state()

    def disc_done(self, record: dict[str, Any]) -> None:
        """Record a finished disc (the newest 100 are kept) and save the state."""
        self.state["discs"].append(record)
        del self.state["discs"][:-100]
        self.save_state()

    def sessions_on(self, disc: str | None) -> list[int]:
        return [s["session"] for s in self.state["sessions"] if s["disc"] == disc]
