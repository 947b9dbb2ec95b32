"""The client's read loop: bytes from the socket, messages to whoever waits for them.

A subscription's reader that waits for its next batch reads the socket
itself while the loop has nothing in hand (:meth:`Reader.receive_for`): the
frame then reaches it in the scheduler pass its bytes arrive in, instead of
the loop's task reading it and waking the reader one pass later (the
latency of every subscription).  At most one task reads at a time; who does
is the reader's :class:`Turn`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import trio

from ._client_handles import Feed
from ._client_reads import SocketReads
from ._client_records import Gap
from ._client_requests import Requests
from ._errors import (
    ConnectionFailed,
    ProtocolError,
    RemoteProtocolError,
    RequestFailed,
    TurbineError,
)
from .messages import Error, Frames, GapReport, Message, Ok
from .protocol import NEED_DATA, Connection

#: A delivery that waits: the feed was full (its reader is behind).
Full = tuple[Feed, Iterable[Any]]

#: What ends a connection when reading it (the read loop turns each into a ConnectionFailed).
LOST = (ProtocolError, TurbineError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Turn:
    """Who reads the socket (named strings: an enum class took ~0.1 ms of ``import turbine``)."""

    LOOP = "loop"  # the read loop's task: reading, or routing what it read
    WAITING = "waiting"  # the read loop, waiting for bytes: a subscription's reader may take over
    LENT = "lent"  # a subscription's reader that waits for its batch
    FREE = "free"  # given back: the read loop takes it when it next runs
    ENDED = "ended"  # the read loop is gone (the connection ended)


class Reader:
    """Reads the broker's messages and routes each: replies to :class:`Requests`, frames and
    gaps to the subscription's :class:`Feed` in :attr:`feeds`, and an error that answers no
    request (a refused put) to the next request; :attr:`done` once it stopped.  Only a plain
    socket (not TLS) may be read by a subscription's reader itself.

    Args:
        sock: the connected socket.
        proto: the connection's protocol state.
        address: the broker's address, for error messages.
        requests: the requests waiting for replies.
        on_lost: called with the error when the connection ends or breaks.
    """

    def __init__(
        self,
        sock: Any,
        proto: Connection,
        address: str,
        requests: Requests,
        on_lost: Callable[[TurbineError], None],
    ) -> None:
        self._sock = sock
        self._proto = proto
        self._address = address
        self._requests = requests
        self._on_lost = on_lost
        self._direct = isinstance(sock, trio.socket.SocketType)
        #: The subscriptions to deliver to, by subscription id.
        self.feeds: dict[int, Feed] = {}
        self._turn = Turn.LOOP
        self._waiting: trio.CancelScope | None = None  # the loop's wait for bytes (WAITING)
        self._back = trio.Event()  # set when a lent socket is given back
        self._full: Full | None = None  # a delivery a subscription's reader left to the loop
        self._failure: BaseException | None = None  # what it met reading, for the loop to raise
        self._reads = SocketReads(sock, proto)
        # What :attr:`Feed.wake` is while a subscription's reader waits for bytes:
        # the waiting reader meets ClosedResourceError, sees its feed ended and
        # gives the socket back.  Without a cancel scope around every wait (about
        # 50 Python calls a frame): trio's notify_closing ends the wait, and the
        # socket, still open, is waited on again as before.  Only a failed link's
        # feeds are woken so (a task waiting to write the socket then meets the
        # same error, as it would anyway).
        self._wake = functools.partial(trio.lowlevel.notify_closing, sock)
        self.done = trio.Event()  # :meth:`run` returned (the end, a failure, a cancel)

    async def run(self) -> None:
        """Read until the connection ends; then call ``on_lost`` (never raises)."""
        try:
            while True:
                while self._turn is Turn.LENT:
                    await self._back.wait()
                if self._turn is Turn.ENDED:
                    return  # a subscription's reader met the end and reported it
                self._turn = Turn.LOOP
                if self._full is not None:
                    full, self._full = self._full, None
                    await deliver_late(*full)
                    await self._route()
                if self._failure is not None:
                    raise self._failure
                n = await self._receive()
                if n is None:
                    continue  # lent meanwhile
                await self._route()
                if not n:
                    raise self._closed()
        except LOST as exc:
            self._on_lost(_lost_error(exc, self._address))
        finally:
            self._turn = Turn.ENDED
            self.done.set()

    def _closed(self) -> ConnectionFailed:
        return ConnectionFailed(f"the broker at {self._address} closed the connection")

    async def _receive(self) -> int | None:
        """One read into the protocol's buffer (0: the broker closed); None when a
        subscription's reader took the socket over while the loop waited."""
        if not self._direct:
            with self._proto.get_buffer() as view:
                n: int = await self._sock.recv_into(view)
            self._proto.buffer_updated(n)
            return n
        n_now = None if self._reads.may_wait() else self._reads.read()
        if n_now is not None:
            await trio.lowlevel.checkpoint()  # data at once: let others run (as a socket read does)
            return n_now
        self._turn = Turn.WAITING
        if self.feeds:
            with trio.CancelScope() as self._waiting:
                await trio.lowlevel.wait_readable(self._sock)
            self._waiting = None
        else:  # no subscription's reader to give the socket to: no scope (~25 calls a wait)
            await trio.lowlevel.wait_readable(self._sock)
        if self._turn is not Turn.WAITING:
            return None
        self._turn = Turn.LOOP
        return self._reads.read()

    async def _route(self) -> None:
        """Route every complete message received, waiting where a feed is full."""
        while (full := self._dispatch()) is not None:
            await deliver_late(*full)

    def _dispatch(self) -> Full | None:
        """Route complete messages until none is left; stop at a delivery to a
        full feed and return it (the caller waits for it, then goes on)."""
        proto = self._proto
        handlers = self._handlers
        while (msg := proto.next_event()) is not NEED_DATA:
            handler = handlers.get(type(msg))
            if handler is None:
                raise RemoteProtocolError(f"unexpected {msg.type!r} message from the broker")
            full = handler(self, msg)
            if full is not None:
                return full
        return None

    async def receive_for(self, feed: Feed) -> Iterable[Any]:
        """The next batch for ``feed`` (whose channel is empty), read from the socket
        by the calling task when the read loop waits for bytes or is given it back.

        Anything else read meanwhile is routed as the loop routes it; a delivery
        that would wait (a full feed), or a lost connection, is left to the loop,
        which makes it before a reader reads the socket again.  Cancellation: safe
        (nothing is lost; the socket goes back to the loop).

        Raises:
            trio.EndOfChannel: the feed ended and every batch was taken.
        """
        turn = self._turn
        if turn is Turn.WAITING:
            if self._waiting is None:  # the loop began its wait with no feed: it delivers this one
                return await feed.channel.receive()
            self._waiting.cancel()  # the loop's wait ends at once: it waits for the socket's return
        elif turn is not Turn.FREE or self._full is not None:
            return await feed.channel.receive()  # what the loop was left to deliver goes first
        self._turn = Turn.LENT
        self._back = back = trio.Event()
        try:
            waited = woke = False
            while True:
                n = None if not woke and self._reads.may_wait() else self._reads.read()
                woke = False
                if n is None:
                    feed.wake = self._wake
                    try:
                        await trio.lowlevel.wait_readable(self._sock)
                    except trio.ClosedResourceError:
                        if not feed.ended:
                            raise  # the socket was closed
                    feed.wake = None
                    if feed.ended:
                        break
                    waited = woke = True
                    continue
                self._full = self._dispatch()
                if not n:
                    self._failure = self._closed()
                if self._full is not None or self._failure is not None:
                    break
                try:
                    batch = feed.channel.receive_nowait()
                except trio.WouldBlock:
                    continue
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return batch
        except LOST as exc:
            self._failure = exc
        finally:
            feed.wake = None
            if self._failure is not None and (self._full is None or self._turn is Turn.ENDED):
                # Report the loss now, as the loop would in the step it met it: a
                # request made meanwhile must find the connection lost (and, with
                # reconnect, wait for the next one), not its protocol state closed.
                failure, self._failure = self._failure, None
                self._turn = Turn.ENDED
                self._on_lost(_lost_error(failure, self._address))
            elif self._turn is Turn.LENT:
                self._turn = Turn.FREE
            back.set()
        return await feed.channel.receive()

    def _on_frames(self, msg: Frames) -> Full | None:
        if msg.sub is not None:
            feed = self.feeds.get(msg.sub)
            if feed is not None:
                positions = feed.positions
                if positions is not None:
                    for group in msg.groups:
                        positions[f"{group[0]}/{group[1]}"] = group[3] + len(group[4])
                batch = feed.unpack(msg.groups, msg.payload)  # type: ignore[arg-type]  # (uncut)
                try:
                    feed.send_nowait(batch)
                except trio.WouldBlock:
                    return feed, batch
                except trio.ClosedResourceError:
                    pass  # its reader left without reading on: dropped
        elif msg.id is not None:
            self._requests.resolve(msg.id, msg)
        else:
            raise RemoteProtocolError(
                "the broker sent frames for neither a subscription nor a fetch"
            )
        return None

    def _on_gap(self, msg: GapReport) -> Full | None:
        feed = self.feeds.get(msg.sub)
        if feed is not None:
            if feed.positions is not None:
                feed.positions[f"{msg.source}/{msg.channel}"] = msg.next_seq
            batch: list[Any] = [
                Gap(
                    msg.source, msg.channel, msg.missed, msg.next_seq, msg.first_time, msg.last_time
                )
            ]
            try:
                feed.send_nowait(batch)
            except trio.WouldBlock:
                return feed, batch
            except trio.ClosedResourceError:
                pass
        return None

    def _on_ok(self, msg: Ok) -> None:
        self._requests.resolve(msg.id, msg)

    def _on_error(self, msg: Error) -> None:
        if msg.id is not None:
            self._requests.resolve(msg.id, msg)
        elif msg.sub is not None:  # the broker ended a subscription (a revoked right)
            feed = self.feeds.get(msg.sub)
            if feed is not None:
                feed.close(RequestFailed(msg.message, msg.code))
        elif msg.code == "protocol":
            raise RemoteProtocolError(f"the broker reported: {msg.message}")
        else:
            self._requests.defer(RequestFailed(msg.message, msg.code))

    _handlers: ClassVar[dict[type[Message], Callable[[Reader, Any], Full | None]]] = {
        Frames: _on_frames,
        GapReport: _on_gap,
        Ok: _on_ok,
        Error: _on_error,
    }


def _lost_error(exc: BaseException, address: str) -> TurbineError:
    """The error a connection ends with when reading it met ``exc``."""
    if isinstance(exc, ProtocolError):
        return ConnectionFailed(f"the connection to {address} failed: {exc}")
    if isinstance(exc, TurbineError):
        return exc
    return ConnectionFailed(f"lost the connection to {address}: {exc}")


async def deliver_late(feed: Feed, batch: Iterable[Any]) -> None:
    """Wait until ``feed`` takes ``batch``: a slow reader stops the read loop reading the socket.

    The subscription may end while we wait (its reader left without
    reading on); the batch is then dropped, and the connection goes on.
    """
    with contextlib.suppress(trio.ClosedResourceError):
        await feed.send(batch)
