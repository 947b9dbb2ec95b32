"""The client's write side: puts batched per channel, written ahead of everything else."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ._constants import PUT_BATCH_BYTES, PUT_BATCH_FRAMES
from ._errors import ConnectionFailed, RequestFailed, TurbineError
from ._io import send_buffers
from .messages import Put
from .names import check_channel_name
from .protocol import encode_message


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
        sock: trio.socket.SocketType,
        address: str,
        max_frame: int,
        on_lost: Callable[[TurbineError], None],
        producer: str | None = None,
    ) -> None:
        self.error: TurbineError | None = None
        self._sock = sock
        self._address = address
        self._max_frame = max_frame
        self._on_lost = on_lost
        self.producer = producer or secrets.token_hex(8)
        #: Each source's number of the last put taken for writing.
        self.pseqs: dict[str, int] = {}
        self._batches: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
        self._bytes = 0
        self._frames = 0
        self._lock = trio.Lock()
        self._wake_flusher = trio.Event()

    @property
    def has_puts(self) -> bool:
        """Whether frames are queued and not written yet."""
        return bool(self._batches)

    def queue(self, source: str, channel: str, data: Any, timestamp: float | None) -> bool:
        """Add one frame to its channel's batch; True when the batches are full: :meth:`send` now.

        The hot path of every put: no await, no per-frame message.

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
        self._frames += 1
        if self._bytes >= PUT_BATCH_BYTES or self._frames >= PUT_BATCH_FRAMES:
            return True
        self._wake_flusher.set()
        return False

    async def send(self, buffers: Sequence[Any] = ()) -> None:
        """Write the queued puts, then ``buffers``, as one vectored write.

        Raises:
            ConnectionFailed: the write failed; the connection is then failed
                as a whole (``on_lost``).
        """
        async with self._lock:
            if self.error is not None:
                raise self.error
            out = self._take_batches()
            out += buffers
            if out:
                try:
                    await send_buffers(self._sock, out)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    error = ConnectionFailed(f"lost the connection to {self._address}: {exc}")
                    self._on_lost(error)
                    raise error from None

    def _take_batches(self) -> list[Any]:
        out: list[Any] = []
        pseqs = self.pseqs
        producer = self.producer
        for (source, channel), (ts, data) in self._batches.items():
            pseq = pseqs[source] = pseqs.get(source, 0) + 1
            put = Put(
                source=source,
                channel=channel,
                ts=ts,
                sizes=list(map(len, data)),
                producer=producer,
                pseq=pseq,
            )
            out += encode_message(put, data)
        self._batches.clear()
        self._bytes = self._frames = 0
        return out

    async def run_flusher(self) -> None:
        """Write queued puts as soon as the putting task lets others run; never returns."""
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = trio.Event()
            if self._batches:
                with contextlib.suppress(TurbineError):
                    await self.send()

    def fail(self, error: TurbineError) -> None:
        """Refuse every later put and write with ``error`` (or the first error given)."""
        if self.error is None:
            self.error = error
