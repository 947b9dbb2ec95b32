"""What one source's log knows besides its frames: settings, channels, producers.

:class:`LogTable` is a base of :class:`~turbine.archive._log.SourceLog`.  It
turns each op into the records that carry it, keeping the table (channels
and their numbering, settings, the producers' put numbers, the newest
metadata frame) as it goes, and gives the records every segment begins with,
so that any segment tells its source's state without the ones before.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._constants import MAX_PRODUCERS_PER_SOURCE, METADATA_CHANNEL
from . import _format as fmt
from ._ops import Declare, Hole, Op, Producer, Put, Settings, Summary
from ._segment import Records

#: A frames record holds at most this many payload bytes (one larger frame gets its own):
#: damage to one record costs at most this much, and time-range reads start this close.
RECORD_BYTES = 1 * 2**20


@attrs.define
class ChannelState:
    id: int
    name: str
    content_type: str
    next_seq: int


class LogTable:
    """A source log's table and the records of its ops (a base of the log)."""

    settings: dict[str, Any]
    channels: dict[str, ChannelState]
    _by_id: dict[int, ChannelState]
    producers: dict[str, int]
    _newest_meta: Put | None

    def _preamble(self) -> Records:
        """Records that begin every segment: settings, channel table, newest metadata frame."""
        out = Records(fmt.SEGMENT_HEADER.size)
        out.add([fmt.source_body(self.settings)])
        for st in self.channels.values():
            out.add([fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)])
        if self._newest_meta is not None:
            self._add_frames(out, self._newest_meta, self._channel(METADATA_CHANNEL).id)
        if self.producers:
            out.add([fmt.producers_body(self.producers)])
        return out

    def _group(self, ops: list[Op], start: int, at: int, room: int) -> tuple[Records, int]:
        """The records of ``ops[start:end]`` to append at offset ``at``, and ``end``: ops
        until their records take ``room`` bytes, a put's block summaries and producer
        op always with it (a segment never rolls between a put and its producers
        record); updates the table (see :meth:`_state`).

        The producer ops of consecutive puts make one producers record, after the
        last of them and before any other record: a write torn before it loses those
        puts (never acknowledged), never a channel's declaration.

        Raises:
            ValueError: a put's sequence numbers go backwards.
            KeyError: an op names a channel never declared.
        """
        out = Records(at)
        table: dict[str, int] = {}  # producers' numbers not yet in a record
        n = len(ops)
        end = start
        while end < n:
            op = ops[end]
            if isinstance(op, Producer):
                self._produced(op)
                table.pop(op.producer, None)
                table[op.producer] = op.pseq
            elif not isinstance(op, Summary):  # (kept in the segment's summary file)
                if out.at - at >= room:
                    break
                if isinstance(op, Put):
                    after = end + 1
                    while after < n and isinstance(ops[after], Summary):
                        after += 1
                    produced = after < n and isinstance(ops[after], Producer)
                    self._add_put(out, op, fmt.PRODUCED if produced else 0)
                else:
                    if table:
                        out.add([fmt.producers_body(table)])
                        table = {}
                    self._add_op(out, op)
            end += 1
        if table:
            out.add([fmt.producers_body(table)])
        return out, end

    def _add_put(self, out: Records, op: Put, flags: int) -> None:
        st = self._channel(op.channel)
        if op.first_seq < st.next_seq:
            raise ValueError(
                f"{op.channel}: frame {op.first_seq} is older than the next number "
                f"{st.next_seq}; sequence numbers only grow"
            )
        st.next_seq = op.first_seq + len(op.ts)
        if op.channel == METADATA_CHANNEL:
            self._newest_meta = op
        self._add_frames(out, op, st.id, flags)

    def _produced(self, op: Producer) -> None:
        producers = self.producers
        producers.pop(op.producer, None)
        producers[op.producer] = op.pseq
        if len(producers) > MAX_PRODUCERS_PER_SOURCE:
            del producers[next(iter(producers))]

    def _add_op(self, out: Records, op: Op) -> None:
        """The record of a declaration, a hole or new settings."""
        if isinstance(op, Declare):
            st = self.channels.get(op.channel) or self._declare(op)
            st.content_type = op.content_type
            st.next_seq = max(st.next_seq, op.next_seq)
            out.add([fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)])
        elif isinstance(op, Hole):
            st = self._channel(op.channel)
            st.next_seq = max(st.next_seq, op.first_seq + op.count)
            entry = (fmt.HOLE, st.id, op.count, op.first_seq, 0.0, 0.0)
            out.add([fmt.hole_body(st.id, op.first_seq, op.count)], entry)
        else:
            assert isinstance(op, Settings)
            self.settings = dict(op.settings)
            out.add([fmt.source_body(self.settings)])

    def _state(self) -> tuple[Any, ...]:
        """What :meth:`_records` changes, to put back when a write fails."""
        kept = {n: (c.content_type, c.next_seq) for n, c in self.channels.items()}
        return kept, dict(self._by_id), self.settings, self._newest_meta, dict(self.producers)

    def _restore(self, saved: tuple[Any, ...]) -> None:
        kept, by_id, self.settings, self._newest_meta, self.producers = saved
        self._by_id = by_id
        self.channels = {c.name: c for c in by_id.values()}
        for name, (ctype, next_seq) in kept.items():
            self.channels[name].content_type, self.channels[name].next_seq = ctype, next_seq

    def _declare(self, op: Declare) -> ChannelState:
        st = ChannelState(len(self._by_id) + 1, op.channel, op.content_type, op.next_seq)
        self.channels[op.channel] = st
        self._by_id[st.id] = st
        return st

    def _channel(self, name: str) -> ChannelState:
        st = self.channels.get(name)
        if st is None:
            raise KeyError(f"channel {name!r} was not declared to the archive")
        return st

    def _add_frames(self, out: Records, op: Put, channel: int, flags: int = 0) -> None:
        """The frames records of ``op``: one unless its frames hold more than
        :data:`RECORD_BYTES` (and more than one frame)."""
        sizes, ts = op.sizes, op.ts
        n = len(ts)
        if n == 1 or sum(sizes) <= RECORD_BYTES:  # (the common case: no slices)
            body = fmt.frames_body(channel, op.first_seq, ts, sizes, op.writer, op.data, flags)
            out.add(body, (fmt.FRAMES, channel, n, op.first_seq, ts[0], ts[-1]))
            return
        i = 0
        while i < n:
            j, size = i + 1, sizes[i]
            while j < n and size + sizes[j] <= RECORD_BYTES:
                size += sizes[j]
                j += 1
            seq = op.first_seq + i
            part = ts[i:j]
            body = fmt.frames_body(channel, seq, part, sizes[i:j], op.writer, op.data[i:j], flags)
            out.add(body, (fmt.FRAMES, channel, j - i, seq, part[0], part[-1]))
            i = j

    @property
    def newest_metadata(self) -> Put | None:
        return self._newest_meta
