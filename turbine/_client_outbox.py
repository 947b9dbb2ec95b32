"""The client's write side: puts batched per channel, written ahead of everything else."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._constants import PUT_BATCH_BYTES, PUT_BATCH_FRAMES
from ._errors import ConnectionFailed, RequestFailed, TurbineError
from ._io import send_buffers
from .messages import Put
from .names import check_channel_name
from .protocol import encode_put

if TYPE_CHECKING:
    from ._client_spool import Spool


class WriteTurn:
    """One writer at a time, first come first served: what a ``trio.Lock`` does for
    the outbox, in two plain steps when nobody waits (trio's lock is about ten
    Python calls a taking, on the path of every flush and request, for the owner
    tracking a lock shared with unknown code needs).  Taken only by the outbox's
    own methods, each giving it back in a ``finally``."""

    def __init__(self) -> None:
        self.taken = False
        self._lot = trio.lowlevel.ParkingLot()

    async def take(self) -> None:
        """Wait for the turn (a checkpoint: a cancelled caller stops here)."""
        if not self.taken:
            # No pass through the scheduler before an uncontended write (the
            # latency path of every request and flush); the write lets others
            # run after it, or the wait for its reply does.
            await trio.lowlevel.checkpoint_if_cancelled()
            self.taken = True
            return
        await self._lot.park()  # woken holding it: give_back hands it over

    def give_back(self) -> None:
        # The lot itself says who waits: a waiter cancelled leaves it at once,
        # before it runs again (a count kept by the waiters would still hold it).
        if self._lot:
            self._lot.unpark()  # the next waiter takes it as it is
        else:
            self.taken = False


class Outbox:
    """Everything the client writes to its broker, one writer at a time.

    A put only queues its frame (:meth:`queue`, no await): frames are kept in
    columns per channel and go out as one ``put`` message per channel.  The
    putting task writes the batches itself once they are full; anything less
    goes out from :meth:`run_flusher` as soon as the putting task lets others
    run.  Every :meth:`send` writes the queued puts first, so a request always
    follows the frames put before it (a ``flush`` covers them).

    After :meth:`fail` the outbox refuses everything with the connection's
    error, kept in :attr:`error` (the first one wins).

    With a :class:`~turbine._client_spool.Spool` (a reconnecting client) the
    outbox outlives its connections: every put message written is kept in the
    spool until acknowledged; a lost connection does not fail it, puts go on
    being queued (:meth:`detach`); a new connection (:meth:`attach`) writes
    only requests until :meth:`replay` has written the spool again.

    Args:
        sock: the connected socket.
        address: the broker's address, for error messages.
        max_frame: the broker's largest frame, as its ``hello`` announced.
        on_lost: called with the error when a write fails.
        producer: this producer's id, sent with every ``put`` with the put's
            number (``pseq``, counted per source from 1) so that the broker
            stores a replayed put once; a random one by default.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType | None,
        address: str,
        max_frame: int,
        on_lost: Callable[[TurbineError], None],
        producer: str | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.error: TurbineError | None = None
        self._sock = sock
        self._address = address
        self._max_frame = max_frame
        self._on_lost = on_lost
        self.spool = spool
        self._holding = False  # attached, the spool not yet written again
        self.producer = producer or os.urandom(8).hex()  # (secrets.token_hex, without its import)
        #: Each source's number of the last put taken for writing.
        self.pseqs: dict[str, int] = {}
        self._batches: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
        self._bytes = 0
        self._frames = 0
        self._turn = WriteTurn()
        self._wake_flusher = trio.Event()
        #: Sources whose broker records the gap a put with no frames tells (reconnecting).
        self.empty_puts: set[str] = set()

    @property
    def has_puts(self) -> bool:
        """Whether frames are queued and not written yet."""
        return bool(self._batches)

    def queue(
        self, source: str, channel: str, data: Any, timestamp: float | None, wake: bool = True
    ) -> bool:
        """Add one frame to its channel's batch; True when the batches are full: :meth:`send` now.

        The hot path of every put: no await, no message; ``wake=False``: the caller flushes.

        Raises:
            TurbineError: the connection failed (its error), or the frame is
                over the broker's limit (``RequestFailed`` with code ``too_large``).
        """
        if self.error is not None:
            raise self.error
        size = len(data)
        if size > self._max_frame:
            raise RequestFailed(
                f"a frame of {size} bytes is over the broker's limit of {self._max_frame} bytes",
                "too_large",
            )
        batch = self._batches.get((source, channel))
        if batch is None:
            check_channel_name(channel)
            batch = self._batches[(source, channel)] = ([], [])
        batch[0].append(timestamp)
        batch[1].append(data)
        self._bytes += size
        frames = self._frames = self._frames + 1
        if self._bytes >= PUT_BATCH_BYTES or frames >= PUT_BATCH_FRAMES:
            return True
        if frames == 1 and wake:
            self._wake_flusher.set()  # the first frame since the last write wakes it
        return False

    def wake_flusher(self) -> None:
        """Have the flusher task write what a ``queue(wake=False)`` left, not flushed after all."""
        self._wake_flusher.set()

    async def send(self, buffers: Sequence[Any] = (), *, then_waits: bool = False) -> int:
        """Write the queued puts, then ``buffers``, as one vectored write (``then_waits``:
        :func:`~turbine._io.send_buffers`).  Returns the spool number below which
        every put was written before ``buffers`` (what a ``flush`` among them acknowledges).

        Raises:
            ConnectionFailed: the write failed; the connection is then failed
                as a whole (``on_lost``).
        """
        await self._turn.take()
        try:
            if self.error is not None:
                raise self.error
            out = await self._take_batches()
            if self.spool is not None:
                if self._sock is None:
                    if buffers:
                        raise ConnectionFailed(f"not connected to {self._address}")
                    return self.spool.written  # the puts wait in the spool
                if self._holding:
                    out = []  # the spool is written again first (replay)
                else:
                    out = self.spool.unwritten()
            mark = self.written_mark
            out += buffers
            if out:
                await self._write(out, bool(buffers) or self.spool is None, then_waits)
            return mark
        finally:
            self._turn.give_back()

    async def stage(self) -> None:
        """Take the queued puts into the spool (a reconnecting client's), unwritten:
        they go out with the next write, ahead of it (a flush's own request).

        Raises:
            TurbineError: the connection failed (its error).
        """
        assert self.spool is not None
        await self._turn.take()
        try:
            if self.error is not None:
                raise self.error
            await self._take_batches()
        finally:
            self._turn.give_back()

    async def _write(self, out: list[Any], raise_error: bool, then_waits: bool = False) -> None:
        assert self._sock is not None
        try:
            await send_buffers(self._sock, out, then_waits=then_waits)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error = ConnectionFailed(f"lost the connection to {self._address}: {exc}")
            self._on_lost(error)
            if raise_error:
                raise error from None

    async def _take_batches(self) -> list[Any]:
        """The queued batches as put messages (to write), or, reconnecting, into the
        spool (which may write them to its file: puts queued meanwhile wait for the next)."""
        out: list[Any] = []
        pseqs = self.pseqs
        producer = self.producer
        spool = self.spool
        batches, self._batches = self._batches, {}
        self._bytes = self._frames = 0
        for (source, channel), (ts, data) in batches.items():
            pseq = pseqs[source] = pseqs.get(source, 0) + 1
            sizes = list(map(len, data))
            if spool is not None:
                put = Put(
                    source=source, channel=channel, ts=ts, sizes=sizes, producer=producer, pseq=pseq
                )
                # written from there (Spool.unwritten); noted on file while the broker is away
                await spool.add(put, data, sum(sizes), away=self._sock is None)
            else:
                out += encode_put(source, channel, ts, sizes, producer, pseq, data)
        return out

    def opened(self, source: str, result: Any) -> None:
        """``source`` was opened; ``result``, the broker's answer, says whether it
        records the gap of a put with no frames (``empty_puts``)."""
        if isinstance(result, dict) and result.get("empty_puts") is True:
            self.empty_puts.add(source)
        else:
            self.empty_puts.discard(source)

    def tell_gaps(self) -> None:
        """Queue a put with no frames for each channel whose gap (frames the spool
        dropped) waits for a later put, where the broker records it: readers learn
        of the gap also when the channel gets no more puts (written by the flusher
        or the next :meth:`send`)."""
        if self.spool is None or self._sock is None:
            return
        for source, channel in list(self.spool.skips.pending):
            if source in self.empty_puts:
                self._batches.setdefault((source, channel), ([], []))  # carries the gap
                self._wake_flusher.set()

    async def run_flusher(self) -> None:
        """Write queued puts as soon as the putting task lets others run; never returns."""
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = trio.Event()
            if self._batches:
                with contextlib.suppress(TurbineError):
                    await self.send(then_waits=True)  # for the next wake

    def detach(self) -> None:
        """The connection is gone (a reconnecting client): keep queueing, write nothing."""
        self._sock = None

    def attach(self, sock: trio.socket.SocketType, max_frame: int) -> None:
        """A new connection: requests go out at once, puts after :meth:`replay`."""
        self._sock = sock
        self._max_frame = max_frame
        self._holding = True
        if self.spool is not None:
            self.spool.rewind()

    async def replay(self) -> None:
        """Write every spooled put again, in order; then puts flow as before."""
        await self._turn.take()
        try:
            await self._take_batches()
            self._holding = False
            if self._sock is not None and self.spool is not None:
                out = self.spool.unwritten()
                if out:
                    await self._write(out, raise_error=True)
        finally:
            self._turn.give_back()

    @property
    def written_mark(self) -> int:
        """The spool number below which everything was written on this connection."""
        return self.spool.written if self.spool is not None else 0

    def fail(self, error: TurbineError) -> None:
        """Refuse every later put and write with ``error`` (or the first error given)."""
        if self.error is None:
            self.error = error
