"""What the DVD archiver takes in: each channel's frames once, in order, buffered
until they are committed to staging, with what was missed before a frame
recorded as a gap (for the disc's manifest)."""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs

from turbine import wall_time
from turbine.client import Frame

from .staging import Buffer, ChannelBuffer, Position


@attrs.define(eq=False)
class Intake:
    """The frames taken in and not yet committed (:attr:`buffer`), where each
    channel stands (:attr:`positions`: its last frame taken in, restored from
    staging at start), and how many gaps and repeated frames were seen."""

    log: logging.Logger
    positions: dict[str, Position] = attrs.Factory(dict)
    buffer: Buffer = attrs.Factory(Buffer)
    gaps_recorded: int = 0
    duplicates_dropped: int = 0

    def offer(self, frame: Frame) -> None:
        """Buffer ``frame`` unless it was taken in before; record a gap before it."""
        path = f"{frame.source}/{frame.channel}"
        pos = self.positions.get(path)
        seq, ts = frame.seq, frame.timestamp
        gap: dict[str, Any] | None = None
        if pos is not None and seq <= pos.seq:
            if ts <= pos.time:
                self.duplicates_dropped += 1
                return
            # the source's numbering started again (e.g. the broker restarted)
            gap = {"kind": "renumbered", "after_seq": pos.seq, "after_time": pos.time}
        elif pos is not None and seq > pos.seq + 1:
            gap = {"kind": "evicted", "first_missed": pos.seq + 1, "last_missed": seq - 1}
            gap["missed"] = seq - 1 - pos.seq
        elif pos is None and seq > 1:
            gap = {"kind": "before_first_seen", "first_missed": 1, "last_missed": seq - 1}
            gap["missed"] = seq - 1
        if gap is not None:
            gap.update(channel=path, next_seq=seq, next_time=ts, detected=wall_time())
            self.buffer.gaps.append(gap)
            self.gaps_recorded += 1
            if gap["kind"] != "before_first_seen":
                self.log.warning("gap on %s: %s", path, json.dumps(gap))
        cb = self.buffer.channels.get(path)
        if cb is None:
            cb = self.buffer.channels[path] = ChannelBuffer(
                frame.source, frame.channel, frame.content_type
            )
        cb.frames.append((seq, ts, frame.data))
        self.buffer.bytes += len(frame.data)
        self.positions[path] = Position(seq, ts)

    def take(self) -> Buffer:
        """What is buffered (now the caller's, to commit); the buffer starts empty."""
        buf, self.buffer = self.buffer, Buffer()
        return buf
