"""What the client gives its caller to write to a source and to read a subscription.

Each holds a narrow handle on the connection, not the client: a
:class:`Source` the two calls it needs to put frames and the one to send a
request (:class:`PutSink`, :class:`Requester`); a :class:`Subscription` the
receiving end of its :class:`Feed`, which the client's read loop fills.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._client_records import Frame, FrameGroup, Gap, iter_frames
from ._constants import METADATA_CHANNEL, SUBSCRIPTION_QUEUE_BATCHES
from ._errors import ConnectionFailed, TurbineError
from .messages import CloseSource, Flush, Ok

if TYPE_CHECKING:  # for the type checker only: each Protocol class costs 0.1 ms to build
    from typing import Protocol, TypeVar

    from .messages import Message, Request

    R = TypeVar("R", bound=Message)

    class PutSink(Protocol):
        """Where a source's frames go: queued without waiting, written in batches."""

        def queue(self, source: str, channel: str, data: Any, timestamp: float | None) -> bool:
            """Queue one frame; True when the batches are full and must be sent now."""

        async def send(self, buffers: Sequence[Any] = ()) -> object:
            """Write what is queued."""

    class Requester(Protocol):
        async def call(self, kind: type[Request], reply: type[R], **fields: Any) -> R:
            """Send a request and return its reply."""


class Source:
    """A source this client holds (or a shared one it writes to)."""

    def __init__(
        self, name: str, channels: Mapping[str, str], puts: PutSink, requests: Requester
    ) -> None:
        self.name = name
        self.channels = dict(channels)
        self._queue = puts.queue
        self._send = puts.send
        self._call = requests.call

    async def put(
        self, channel: str, data: bytes | bytearray | memoryview, timestamp: float | None = None
    ) -> None:
        """Queue one frame; it is sent in a batch with others.

        Waits only when its batch is full and being written (backpressure).
        ``timestamp`` defaults to the broker's clock when the frame arrives.

        Raises:
            TurbineError: the frame is too large, or the connection failed.
        """
        if self._queue(self.name, channel, data, timestamp):
            await self._send()

    async def flush(self) -> None:
        """Return once the broker holds every frame put so far.

        Raises:
            RequestFailed: the broker refused an earlier put (says which and why).
        """
        await self._call(Flush, Ok)

    async def set_metadata(
        self, metadata: Mapping[str, Any], timestamp: float | None = None
    ) -> None:
        """Publish ``metadata`` as a new JSON frame on ``metadata.txt`` and flush."""
        import json  # here: a client that publishes no metadata does not load it

        await self.put(METADATA_CHANNEL, json.dumps(metadata, sort_keys=True).encode(), timestamp)
        await self.flush()

    async def close(self) -> None:
        """Flush and let go of the source; it stays readable, shown offline."""
        await self._call(CloseSource, Ok, source=self.name)


class Feed:
    """The client's end of one subscription: the read loop delivers batches into it.

    Bounded (``queue`` batches, ``SUBSCRIPTION_QUEUE_BATCHES`` by default): when
    the reader falls behind, :meth:`send` waits, and so the read loop stops
    reading the socket.

    Args:
        positions: see :attr:`positions`.
        unpack: what a ``frames`` message's groups and payload become (a
            batch: its items in order, made as they are taken).
        wait: how to wait for the next batch when none is there (the
            client's :meth:`~turbine._client_reader.Reader.receive_for`, which
            reads the socket in the waiting task); None: the channel alone.
        queue: batches it holds at most (a delivery is at most
            DELIVERY_BATCH_BYTES, or one larger frame); None: SUBSCRIPTION_QUEUE_BATCHES.
    """

    def __init__(
        self,
        positions: dict[str, int] | None = None,
        unpack: Callable[[list[Any], memoryview], Iterable[Any]] = iter_frames,
        wait: Callable[[Feed], Awaitable[Iterable[Any]]] | None = None,
        queue: int | None = None,
    ) -> None:
        #: Per channel path, the first sequence number not yet received (a
        #: reconnecting client's subscriptions keep it, to resume there).
        self.positions = positions
        #: What a ``frames`` message's groups and payload become for the reader.
        self.unpack = unpack
        size = SUBSCRIPTION_QUEUE_BATCHES if queue is None else queue
        send, self.channel = trio.open_memory_channel[Iterable[Any]](size)
        self.send_nowait = send.send_nowait
        self.send = send.send
        self._close = send.close
        self._wait = wait
        #: Why the feed ended, when the connection failed; None after a normal end.
        self.error: TurbineError | None = None
        self.ended = False
        #: Wakes the reader waiting for bytes on the socket for this feed (set
        #: while it waits): :meth:`close` with an error (the link failed) calls it.
        self.wake: Callable[[], None] | None = None

    async def next_batch(self) -> Iterable[Any]:
        """The next batch delivered (a checkpoint).

        Raises:
            trio.EndOfChannel: the feed ended and every batch was taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            batch = self.channel.receive_nowait()
        except trio.WouldBlock:
            if self._wait is None:
                return await self.channel.receive()
            return await self._wait(self)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def close(self, error: TurbineError | None = None) -> None:
        """End the feed; the reader sees the frames already delivered, then ``error`` (if any).

        A reader waiting for bytes on the socket is woken at once when the link
        failed (``error``); a feed its subscription closed (no error) ends for a
        reader in another task when the next message arrives: the reply to the
        ``unsubscribe`` sent at the close, at the latest."""
        if error is not None and self.error is None:
            self.error = error
        self.ended = True
        self._close()
        if self.wake is not None and error is not None:
            self.wake()


class Subscription:
    """Frames (and gaps) for a pattern; iterate with ``async for``.

    Backpressure: the client buffers a bounded number of batches per
    subscription; when a reader does not keep up, the connection stops
    reading, the broker's cursor falls behind, and evicted frames arrive as
    :class:`Gap` items.  The producer is never slowed.
    """

    def __init__(
        self,
        sid: int,
        pattern: str,
        start: str | int,
        monitor: bool,
        feed: Feed,
        max_rate: float | None = None,
    ) -> None:
        self.id = sid
        self.pattern = pattern
        self.start = start
        self.monitor = monitor
        self.max_rate = max_rate
        self.channels: list[str] = []
        self._feed = feed
        self.positions = feed.positions
        self._items: Iterator[Any] = iter(())  # the rest of the batch being read

    def resume_fields(self) -> dict[str, Any]:
        """What resumes it on a new connection: the newest for a monitor, else the
        first frame not yet received (the subscribe request's fields)."""
        if self.monitor:
            return {
                "sub": self.id,
                "pattern": self.pattern,
                "start": "newest",
                "monitor": True,
                "max_rate": self.max_rate,
            }
        return {
            "sub": self.id,
            "pattern": self.pattern,
            "start": "oldest",
            "resume": self.positions,
        }

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Frame | Gap:
        for item in self._items:
            return item  # type: ignore[no-any-return]
        while True:
            try:
                self._items = items = iter(await self._feed.next_batch())
            except trio.EndOfChannel:
                if self._feed.error is not None:
                    raise self._feed.error from None
                raise StopAsyncIteration from None
            for item in items:
                return item  # type: ignore[no-any-return]

    async def receive_batch(self) -> list[Frame | FrameGroup | Gap]:
        """The frames and gaps that arrived together (at least one), in order.

        Raises:
            ConnectionFailed: the connection to the broker was lost, or the
                subscription was closed.
        """
        rest = list(self._items)
        if rest:
            return rest
        try:
            batch = await self._feed.next_batch()
        except trio.EndOfChannel:
            if self._feed.error is not None:
                raise self._feed.error from None
            raise ConnectionFailed("the subscription was closed") from None
        return list(batch)

    async def receive(self) -> Frame | Gap:
        """The next frame or gap.

        Raises:
            ConnectionFailed: the connection to the broker was lost.
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionFailed("the subscription was closed") from None
