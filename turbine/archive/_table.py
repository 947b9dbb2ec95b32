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

    def _preamble(self) -> list[tuple[list[Any], fmt.Entry | None]]:
        """Records that begin every segment: settings, channel table, newest metadata frame."""
        out: list[tuple[list[Any], fmt.Entry | None]] = [
            (fmt.encode_record([fmt.source_body(self.settings)]), None)
        ]
        for st in self.channels.values():
            body = fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)
            out.append((fmt.encode_record([body]), None))
        if self._newest_meta is not None:
            out += self._frames_records(self._newest_meta)
        if self.producers:
            out.append((fmt.encode_record([fmt.producers_body(self.producers)]), None))
        return out

    def _records(self, op: Op, produced: bool = False) -> list[tuple[list[Any], fmt.Entry | None]]:
        """The records of one op (a put ``produced``: its producer op comes next);
        updates the channel table (see :meth:`_state`)."""
        if isinstance(op, Put):
            st = self._channel(op.channel)
            if op.first_seq < st.next_seq:
                raise ValueError(
                    f"{op.channel}: frame {op.first_seq} is older than the next number "
                    f"{st.next_seq}; sequence numbers only grow"
                )
            st.next_seq = op.first_seq + len(op.ts)
            if op.channel == METADATA_CHANNEL:
                self._newest_meta = op
            return self._frames_records(op, fmt.PRODUCED if produced else 0)
        if isinstance(op, Declare):
            st = self.channels.get(op.channel) or self._declare(op)
            st.content_type = op.content_type
            st.next_seq = max(st.next_seq, op.next_seq)
            body = fmt.channel_body(st.id, st.next_seq, st.name, st.content_type)
            return [(fmt.encode_record([body]), None)]
        if isinstance(op, Producer):
            producers = self.producers
            producers.pop(op.producer, None)
            producers[op.producer] = op.pseq
            if len(producers) > MAX_PRODUCERS_PER_SOURCE:
                del producers[next(iter(producers))]
            body = fmt.producers_body({op.producer: op.pseq})
            return [(fmt.encode_record([body]), None)]
        if isinstance(op, Hole):
            st = self._channel(op.channel)
            entry = fmt.Entry(0, 0, fmt.HOLE, st.id, op.count, op.first_seq, 0.0, 0.0)
            st.next_seq = max(st.next_seq, op.first_seq + op.count)
            return [(fmt.encode_record([fmt.hole_body(st.id, op.first_seq, op.count)]), entry)]
        if isinstance(op, Summary):
            return []  # kept in the segment's summary file (the log writes it)
        assert isinstance(op, Settings)
        self.settings = dict(op.settings)
        return [(fmt.encode_record([fmt.source_body(self.settings)]), None)]

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

    def _frames_records(self, op: Put, flags: int = 0) -> list[tuple[list[Any], fmt.Entry | None]]:
        st = self._channel(op.channel)
        out: list[tuple[list[Any], fmt.Entry | None]] = []
        i, n = 0, len(op.ts)
        while i < n:
            j, size = i + 1, op.sizes[i]
            while j < n and size + op.sizes[j] <= RECORD_BYTES:
                size += op.sizes[j]
                j += 1
            seq = op.first_seq + i
            ts = op.ts[i:j]
            body = fmt.frames_body(st.id, seq, ts, op.sizes[i:j], op.writer, op.data[i:j], flags)
            out.append(
                (
                    fmt.encode_record(body),
                    fmt.Entry(0, 0, fmt.FRAMES, st.id, j - i, seq, ts[0], ts[-1]),
                )
            )
            i = j
        return out

    @property
    def newest_metadata(self) -> Put | None:
        return self._newest_meta
