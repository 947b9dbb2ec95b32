"""The channel-store seam: what the hub needs from whatever keeps a channel's frames.

A broker keeps each channel's frames in a :class:`ChannelStore`, made by the
:class:`StoreFactory` it is configured with (``BrokerConfig.store``).  Today's
store is the memory ring (:class:`turbine.ringbuffer.Ring`, made by
:data:`turbine.ringbuffer.memory_store`); a disk archive with the ring as its hot cache slots in
behind the same interface without touching the hub's logic.

The contract, in short:

* **Numbering.** Every frame has a sequence number.  ``append_many`` numbers
  frames from ``next_seq`` on, or from an explicit ``seq`` (a mirror storing
  the origin's numbers); numbers skipped that way are a *hole*, kept as such.
  Numbers are never reused, not even after eviction or deletion of a source
  (the hub carries ``next_seq`` over to a re-created channel).
* **Memory.** ``bytes`` is what the store holds *in memory*, payload plus
  :data:`~turbine._constants.FRAME_OVERHEAD_BYTES` per frame; the source's
  ``cache_bytes`` bounds it through :func:`evict_to_fit`, which calls ``evict``.
  ``max_frames`` bounds the frames held in memory per channel.
* **Synchronous reads answer from memory only.**  ``read``, ``from_seq``,
  ``newest_n``, ``oldest_n`` and ``time_range`` never block and never touch a
  disk.  A store with more than memory (a disk archive) answers
  :meth:`ChannelStore.read_now` with ``None`` when a query needs the slow part;
  the broker then hands the query to its store task, which awaits
  :meth:`ChannelStore.read_later`, and the connection's replies still go out
  in the order the requests came (see ``turbine/outbound.py``).
* **Gaps are reported, never hidden.**  :class:`Run` ``.missed`` counts the
  numbers a read asked for that are not there (evicted, or a hole) before the
  run's first frame.  ``read`` (a subscriber's cursor) stops before a hole, so
  the next read reports it; the fetch reads may span holes, and then list the
  numbers of their frames in ``Run.seqs``.

Everything here is pure and synchronous except ``read_later`` and ``flushed``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from operator import itemgetter
from typing import Any, Protocol

import attrs

from ._constants import FETCH_MAX_FRAMES


@attrs.frozen
class Run:
    """Frames of one channel, oldest first, as columns.

    ``first_seq`` numbers the first frame.  Without ``seqs`` the numbers are
    contiguous (frame ``i`` is ``first_seq + i``); a run that spans holes
    lists every frame's number in ``seqs``.  ``writers`` lists
    ``(first_seq, writer)`` for each run of frames by one writer.  ``missed``
    counts numbers before ``first_seq`` that the reader asked for but that
    the store does not hold (evicted, or a hole in the numbering).
    """

    first_seq: int
    ts: list[float]
    data: Sequence[Any]  # a list of payloads, or Payloads (turbine/payloads.py)
    sizes: list[int]
    writers: list[tuple[int, str]]
    missed: int = 0
    seqs: Sequence[int] | None = None

    @property
    def next_seq(self) -> int:
        """The number after this run's last frame (``first_seq`` when empty)."""
        if self.seqs is not None and self.ts:
            return self.seqs[-1] + 1
        return self.first_seq + len(self.ts)

    def pieces(self) -> Iterable[Run]:
        """This run as contiguous runs (itself when it spans no hole)."""
        seqs = self.seqs
        if seqs is None:
            yield self
            return
        a = 0
        for b in range(1, len(seqs) + 1):
            if b == len(seqs) or seqs[b] != seqs[b - 1] + 1:
                first, end = seqs[a], seqs[b - 1] + 1
                writers = [w for w in self.writers if first <= w[0] < end]
                if not writers or writers[0][0] != first:
                    before = [w for w in self.writers if w[0] < first]
                    writers.insert(0, (first, before[-1][1] if before else ""))
                yield Run(first, self.ts[a:b], self.data[a:b], self.sizes[a:b], writers)
                a = b


def empty_run(seq: int, missed: int = 0) -> Run:
    return Run(seq, [], [], [], [], missed)


#: Query kinds: what a fetch selects on one channel (the names of its selection fields),
#: and what a subscriber's cursor reads.
NEWEST, OLDEST, AFTER, TIME, READ = "newest", "oldest", "after", "start", "read"


@attrs.frozen
class Query:
    """One fetch selection on one channel.

    ``kind`` is :data:`NEWEST` or :data:`OLDEST` (``value`` frames),
    :data:`AFTER` (frames after sequence number ``value``) or :data:`TIME`
    (frames stamped ``value <= t < value + duration``; a zero duration selects
    frames stamped exactly ``value``), or :data:`READ`: a subscriber's read
    from sequence number ``value`` (:meth:`ChannelStore.read`, which stops
    before a hole and counts what it skipped).  ``max_frames`` caps ``AFTER``,
    ``TIME`` and ``READ``; ``max_bytes`` caps ``READ`` (at least one frame).
    """

    kind: str
    value: float
    duration: float = float("inf")
    max_frames: int = FETCH_MAX_FRAMES
    max_bytes: int | None = None


@attrs.frozen
class ChannelSpec:
    """What a factory needs to make (or reopen) the store of one channel."""

    source: str
    channel: str
    max_frames: int  # frames the store keeps in memory at most
    next_seq: int  # the number the first frame gets (continues a deleted channel)
    content_type: str | None = None  # the type its creator gave it (None: guessed from the name)
    #: A mirrored source's origin (``turbine.origin.Origin.to_wire``), for a store to keep.
    origin: dict[str, Any] | None = None


class ChannelStore(Protocol):
    """The frames of one channel; see the module docstring for the contract.

    Attributes:
        max_frames: frames kept in memory at most (set through :meth:`resize`).
        first_seq: number of the oldest frame in memory (``next_seq`` when memory holds none).
        next_seq: number the next frame appended without ``seq`` gets.
        bytes: memory held, payload plus per-frame overhead.
    """

    max_frames: int
    first_seq: int
    next_seq: int
    bytes: int

    def __len__(self) -> int:
        """Frames held in memory (holes are not frames)."""
        ...

    @property
    def last_seq(self) -> int:
        """Number of the newest frame (``first_seq - 1`` when empty)."""
        ...

    @property
    def oldest_seq(self) -> int:
        """Number of the oldest frame held anywhere, memory or slower storage
        (``first_seq`` for a memory store): where a subscription from ``oldest`` starts."""
        ...

    @property
    def oldest_arrival(self) -> int | None:
        """The owner's arrival number of the oldest frame held (its put's first frame's:
        see :func:`evict_to_fit`)."""
        ...

    @property
    def first_time(self) -> float | None: ...

    @property
    def last_time(self) -> float | None: ...

    @property
    def newest(self) -> Any:
        """The newest payload, or ``None`` when empty."""
        ...

    def append_many(
        self,
        ts: Sequence[float],
        data: Sequence[Any],
        writer: str,
        arrival: int,
        sizes: list[int] | None = None,
        seq: int | None = None,
    ) -> int:
        """Append a batch of frames; return the memory bytes evicted to stay in ``max_frames``.

        ``arrival`` numbers the first frame in the owner's arrival order (for
        eviction across channels); ``sizes`` are the payload lengths when the
        caller has them.  ``seq`` numbers the first frame explicitly; numbers
        between ``next_seq`` and ``seq`` become a hole.  Never blocks: a store
        that writes to disk queues the write for its own task.

        Raises:
            ValueError: ``seq`` is below ``next_seq`` (numbers never go back).
        """
        ...

    def skip_to(self, seq: int) -> None:
        """Leave the numbers from ``next_seq`` to ``seq`` unused, a hole, with no frame
        after it yet (frames their producer dropped).  Never blocks.

        Raises:
            ValueError: ``seq`` is below ``next_seq``.
            RequestFailed: (a store on disk) its archive cannot take writes (code ``disk``).
        """
        ...

    def evict(self, count: int = 1) -> int:
        """Drop the ``count`` oldest frames from memory; return the bytes freed."""
        ...

    def evict_oldest(self, needed: int, before: int | None = None) -> int:
        """Drop from memory as few of the oldest frames as free ``needed`` bytes,
        of those whose arrival number is below ``before`` (None: any), never
        the newest; return the bytes freed."""
        ...

    def resize(self, max_frames: int) -> int:
        """Keep at most ``max_frames`` in memory from now on; return the bytes evicted."""
        ...

    def read(self, seq: int, max_frames: int, max_bytes: int | None = None) -> Run | None:
        """A subscriber's read: frames from ``seq`` on, contiguous, from memory.

        At most ``max_frames`` and ``max_bytes`` (but at least one frame).  A
        ``seq`` that is not held starts at the next frame held and reports the
        numbers skipped as ``missed``; the run stops before a hole.  One past
        the newest gives an empty run.  ``None``: those frames are held, but
        not in memory; the broker's store task then reads them with
        ``read_later(Query(READ, seq, max_frames=..., max_bytes=...))`` and
        delivers that run next.
        """
        ...

    def from_seq(self, seq: int, max_frames: int) -> Run:
        """Up to ``max_frames`` frames numbered ``seq`` or later, across holes, from memory."""
        ...

    def newest_n(self, n: int) -> Run: ...

    def oldest_n(self, n: int) -> Run: ...

    def time_range(self, start: float, duration: float, max_frames: int) -> Run:
        """Frames with ``start <= timestamp < start + duration`` (non-decreasing timestamps)."""
        ...

    def read_now(self, query: Query) -> Run | None:
        """Answer ``query`` from memory at once, or ``None`` if it needs :meth:`read_later`."""
        ...

    def read_parts(self, query: Query, max_bytes: int | None) -> AsyncGenerator[Run, None]:
        """:meth:`read_later`'s answer to a fetch query as consecutive runs of about
        ``max_bytes`` of payload each (at least one frame), each read only when
        asked (a large answer from a disk never held whole); a memory store
        answers in one run."""
        ...

    async def read_later(self, query: Query) -> Run:
        """Answer ``query`` in full (memory and slower storage); may block on a disk.

        Runs in the broker's store task, never in a request handler.
        Cancellation abandons the read.
        """
        ...

    async def flushed(self) -> None:
        """Return once every frame appended before the call is as durable as the store makes it."""
        ...

    def drop(self) -> int:
        """Forget every frame for good (its source is deleted); return the bytes freed."""
        ...

    def disk(self) -> dict[str, Any] | None:
        """What the store keeps beyond memory (``frames``, ``bytes``, ``first_seq``,
        ``last_seq``, ``first_time``, ``last_time``, as written so far), or ``None`` for a
        memory-only store.  Never blocks."""
        ...


class StoreFactory(Protocol):
    """Makes the store of each channel; a broker is configured with one.

    ``durable`` says whether ``flushed`` may wait (a memory store's never
    does, so the broker answers ``flush`` at once).
    """

    durable: bool

    def __call__(self, spec: ChannelSpec) -> ChannelStore: ...

    def archive_settings(
        self, source: str, archive_bytes: int | None, archive_age: float | None
    ) -> tuple[int, float | None]:
        """The disk retention ``source`` gets when it is opened asking for these
        (``None``: keep the source's, or take the broker's default): its
        ``archive_bytes`` (0: memory only) and ``archive_age`` (seconds, or
        ``None``).  A pure check: nothing changes until :meth:`keep_settings`.

        Raises:
            RequestFailed: the archive does not fit the broker's disk budget
                (code ``disk``, saying how much is left), or the retention is
                bad or would turn an archived source memory-only or back
                (code ``limits``).
        """
        ...

    def keep_settings(self, source: str, settings: dict[str, Any]) -> None:
        """Remember ``source``'s settings (:meth:`turbine.sources.Source.settings`);
        a durable factory archives them, so a restart brings them back."""
        ...

    def behind(self, sources: Iterable[str]) -> bool:
        """Whether the slower storage of one of ``sources`` is so far behind their
        puts that the broker should stop reading from the connections that put to
        them (until :meth:`caught_up`).  Never blocks; a memory store never is."""
        ...

    async def caught_up(self, sources: Iterable[str]) -> None:
        """Return once ``sources``' slower storage has caught up enough to read on."""
        ...

    def statistics(self) -> dict[str, Any] | None:
        """The disk under the stores, for the broker's status (``None``: memory only)."""
        ...

    async def delete(self, source: str) -> int:
        """Delete what ``source`` keeps beyond its stores' memory (its disk
        archive) for good; return the bytes freed.  Called for ``delete``
        only, after the hub dropped the source's stores."""
        ...


def answer(store: ChannelStore, query: Query) -> Run:
    """``query`` answered by the synchronous reads of ``store`` (from memory)."""
    kind = query.kind
    if kind == NEWEST:
        return store.newest_n(int(query.value))
    if kind == OLDEST:
        return store.oldest_n(int(query.value))
    if kind == AFTER:
        return store.from_seq(int(query.value) + 1, query.max_frames)
    if kind == TIME:
        return store.time_range(query.value, query.duration, query.max_frames)
    if kind == READ:
        run = store.read(int(query.value), query.max_frames, query.max_bytes)
        if run is None:
            raise ValueError("a memory read cannot answer a read of frames not in memory")
        return run
    raise ValueError(f"unknown query kind {kind!r}")


def evict_to_fit(stores: Iterable[ChannelStore], held: int, budget: int) -> int:
    """Evict the oldest frames across ``stores`` until ``held`` bytes fit ``budget``.

    "Oldest" is by arrival across the stores (a source's channels share one
    budget).  Each store keeps its newest frame, so a source's newest
    metadata survives.  Returns the bytes freed.

    A step per run of one store's frames older than every other store's
    oldest (one step for a source of one channel), not per frame.

    A put's frames share one arrival number, its first frame's (repeating an
    array; extending it by a range was a Python int per frame, ~120 us of a
    4,096-frame put).  The owner numbers puts by their frames, so two puts'
    numbers never overlap, and frames compare across stores as they would
    numbered one by one.
    """
    candidates = list(stores)
    freed = 0
    while held - freed > budget:
        oldest = [(a, s) for s in candidates if len(s) > 1 and (a := s.oldest_arrival) is not None]
        if not oldest:
            break
        oldest.sort(key=itemgetter(0))
        before = oldest[1][0] if len(oldest) > 1 else None
        step = oldest[0][1].evict_oldest(held - freed - budget, before)
        if not step:
            break
        freed += step
    return freed
