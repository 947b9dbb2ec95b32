"""The broker's state, pure and synchronous: sources, channels, memory, reads.

The server (``server.py``) moves bytes and calls in here; nothing here awaits.
How sources are opened, restored, released and deleted, and the memory they
reserve, is the hub's :class:`~turbine.lifecycle.SourceLifecycle` half.
"""

from __future__ import annotations

import array
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._constants import (
    FETCH_MAX_FRAMES,
    MAX_FRAME_BYTES,
    MAX_MEMORY_BYTES,
    SOURCE_TYPES,
    SUMMARY_MAX_COLUMNS,
)
from ._errors import RequestFailed
from .fetch import PendingFetch, fetch_query
from .lifecycle import SourceLifecycle
from .names import compile_pattern, source_pattern
from .origin import new_identity
from .peer import Peer
from .ringbuffer import memory_store
from .router import Group, Readable, Router, Waker
from .sources import Channel, Source
from .store import StoreFactory


class Hub(SourceLifecycle):
    """Every source, subscription and memory budget of one broker.

    Args:
        max_memory: bytes all sources' rings may reserve together.
        max_frame: largest single frame accepted.
        lenient_names: accept source names outside the naming convention.
        types: source types the convention allows.
        clock: seconds since the epoch (injected for tests).
        store: makes each channel's store (memory rings by default).
        identity: this broker's identity (``turbine/origin.py``); a fresh one by default.
    """

    def __init__(
        self,
        *,
        max_memory: int = MAX_MEMORY_BYTES,
        max_frame: int = MAX_FRAME_BYTES,
        lenient_names: bool = False,
        types: tuple[str, ...] = SOURCE_TYPES,
        clock: Callable[[], float] = time.time,
        store: StoreFactory = memory_store,
        identity: str | None = None,
    ) -> None:
        self.identity = identity or new_identity()
        self.max_memory = max_memory
        self.max_frame = max_frame
        self.lenient_names = lenient_names
        self.types = types
        self.clock = clock
        self.store = store
        self.sources: dict[str, Source] = {}
        self.router = Router()
        self._next_seq: dict[str, int] = {}  # path -> next seq of deleted channels: never reused
        for old in getattr(store, "recovered", list)():  # a disk archive's sources from before
            self.restore_source(
                old.name, old.settings, old.content_types(), old.producers, old.summaries
            )
        #: A durable store's ``producer_stored(source, producer, pseq)``, or None.
        self._producer_stored = getattr(store, "producer_stored", None)

    # --- writing

    def put(
        self,
        writer: Peer,
        source: str,
        channel: str,
        ts: Sequence[Any],
        data: Sequence[Any],
        content_type: str | None = None,
        sizes: list[int] | None = None,
        seq: int | None = None,
        producer: str | None = None,
        pseq: int | None = None,
        seqs: list[int] | None = None,
        writers: list[Any] | None = None,
        first_seq: int | None = None,
        skipped: int | None = None,
        skipped_span: tuple[float, float | None] | None = None,
    ) -> Sequence[Waker]:
        """Append frames to ``source/channel``; return whom to wake (its subscribers).

        ``sizes`` are the frames' lengths when the caller has them already
        (a put message lists them).  ``seq`` numbers the first frame; numbers
        it skips become a hole that subscribers are told of as a gap.
        ``producer`` and its put number ``pseq`` de-duplicate: a put whose
        number that producer had stored already for this source is dropped,
        as if stored (a replay after a lost connection).  ``skipped`` frames
        the producer dropped before these leave that many numbers unused;
        ``skipped_span`` is their first and last timestamp, told to the
        subscribers with the gap.

        ``seqs`` numbers every frame (a mirror's put: the origin's numbers,
        increasing; numbers it skips are holes; frames numbered below the
        channel's next number are held already and skipped, so a mirror that
        resends after a reconnect stores nothing twice).  ``writers`` lists
        ``[first_seq, writer]`` for each run of frames by one writer (the
        origin's writers; the putting client's name without it).  ``first_seq``
        instead of ``seqs`` numbers the frames from it on, one after another.
        Only a mirrored source takes ``seqs`` or ``first_seq``, and it takes no
        put without one.  ``ts`` is a list (None: the broker's clock) or an
        array of floats (a packed put's).

        Raises:
            RequestFailed: no such source, not the holder of a non-shared
                source, a bad channel name, a frame over the size limit, a
                ``seq`` below the channel's next number, or ``seqs`` /
                ``writers`` that are bad or do not fit the source.
        """
        src = self.sources.get(source)
        if src is None:
            raise no_source(source)
        if src.holder is not writer and not src.shared:
            src.check_writer(writer)  # raises
        if producer is not None:
            if pseq is None:
                raise RequestFailed("a put with a producer needs its pseq", "request")
            if src.stored_before(producer, pseq):
                return ()
        ch = src.channels.get(channel)
        if ch is None:
            try:
                ch = self.channel(src, channel, content_type)
            except ValueError as exc:
                raise RequestFailed(str(exc), "name") from None
        if sizes is None:
            sizes = list(map(len, data))
        src.check_frames(ch, data, sizes, self.max_frame)
        if ts:
            if type(ts) is list and None in ts:  # (an array of floats holds none)
                now = self.clock()
                if ts.count(None) == len(ts):  # the usual put: the broker stamps every frame
                    # (an array: the ring takes it in one copy, a list of floats one by one)
                    ts = array.array("d", (now,)) * len(ts)
                else:
                    ts = [now if t is None else t for t in ts]
            if seqs is not None or first_seq is not None or src.origin is not None:
                src.append_copy(ch, ts, data, sizes, seqs, writers, writer.name, first_seq)
            else:
                if skipped and seq is None:
                    seq = ch.store.next_seq + skipped
                    if skipped_span is not None:
                        ch.dropped(seq, skipped_span)
                src.append(ch, ts, data, writer.name, sizes, seq)
        elif skipped and seqs is None and first_seq is None and src.origin is None:
            # A put with no frames telling of dropped ones (its channel got no later put).
            seq = ch.store.next_seq + skipped
            if skipped_span is not None:
                ch.dropped(seq, skipped_span)
            ch.store.skip_to(seq)
        if producer is not None:
            src.stored(producer, pseq)  # type: ignore[arg-type]  # checked above
            if self._producer_stored is not None:
                self._producer_stored(source, producer, pseq)
        if skipped_span is not None and skipped:  # (behind the producer op: one write group)
            self.store.keep_settings(source, src.settings())  # the span outlives a restart
        return self.router.wakers(ch) if ts else ()

    # --- reading

    def channels(self, pattern: str, readable: Readable | None = None) -> list[Channel]:
        """Channels matching ``pattern`` (of sources ``readable`` allows, if given)."""
        matcher = compile_pattern(pattern)
        return [
            ch
            for src in self.sources.values()
            if readable is None or readable(src.name)
            for ch in src.channels.values()
            if matcher.match(ch.path)
        ]

    def list_sources(
        self, pattern: str = "*", readable: Readable | None = None
    ) -> list[dict[str, Any]]:
        """Sources matching ``pattern`` (that ``readable`` allows, if given), as ``list`` shows them."""
        matcher = source_pattern(pattern)
        now = self.clock()
        return [
            s.info(now)
            for s in self.sources.values()
            if matcher.match_source(s.name) and (readable is None or readable(s.name))
        ]

    def fetch(
        self,
        pattern: str,
        *,
        newest: int | None = None,
        oldest: int | None = None,
        start: float | None = None,
        duration: float | None = None,
        after: int | None = None,
        max_frames: int = FETCH_MAX_FRAMES,
        readable: Readable | None = None,
    ) -> tuple[list[Group], list[Any]] | PendingFetch:
        """Frames the stores hold now, as delivery groups and payloads.

        Exactly one of ``newest``, ``oldest``, ``start`` (with ``duration``) or
        ``after`` selects the frames.  When a store cannot answer from memory
        (:meth:`~turbine.store.ChannelStore.read_now` gives ``None``), the
        answer is a :class:`PendingFetch` for the broker's store task to run.
        Sources ``readable`` refuses are left out, as if they did not exist.

        Raises:
            RequestFailed: the selection is missing, doubled or negative.
        """
        query = fetch_query(newest, oldest, start, duration, after, max_frames)
        return PendingFetch(self.channels(pattern, readable), query).now()

    def summarize(
        self,
        pattern: str,
        start: float,
        duration: float,
        columns: int,
        readable: Readable | None = None,
    ) -> list[dict[str, Any]]:
        """The block summaries of the numeric channels matching ``pattern`` in
        ``start <= t < start + duration``, merged into at most ``columns`` columns
        (:meth:`~turbine.summary.Summaries.columns`), one entry per channel.

        Raises:
            RequestFailed: the range or the column count is not one a plot can use.
        """
        if not (math.isfinite(start) and math.isfinite(duration) and duration > 0):
            raise RequestFailed(
                f"summarize needs a finite start and a duration above 0, got {start!r}, {duration!r}",
                "request",
            )
        if not 1 <= columns <= SUMMARY_MAX_COLUMNS:
            raise RequestFailed(
                f"columns must be between 1 and {SUMMARY_MAX_COLUMNS}, got {columns}", "request"
            )
        out = []
        for ch in self.channels(pattern, readable):
            if ch.summaries is not None:
                ch.summaries.drop_before(ch.store.oldest_seq)
                found = ch.summaries.columns(start, duration, columns)
                out.append({"source": ch.source_name, "channel": ch.name, **found})
        return out


def no_source(name: str) -> RequestFailed:
    """The refusal of a put to a source that does not exist (or that the writer may not see)."""
    return RequestFailed(
        f"no source named {name!r}; open it first (or start the component that owns it)",
        "missing",
    )
