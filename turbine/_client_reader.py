"""The client's read loop: bytes from the socket, messages to whoever waits for them."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from ._client_handles import Feed
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


class Reader:
    """Reads the broker's messages and routes each: replies to :class:`Requests`,
    frames and gaps to the subscription's :class:`Feed` in :attr:`feeds`, and an
    error that answers no request (a refused put) to the next request.

    Args:
        sock: the connected socket.
        proto: the connection's protocol state.
        address: the broker's address, for error messages.
        requests: the requests waiting for replies.
        on_lost: called with the error when the connection ends or breaks.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
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
        #: The subscriptions to deliver to, by subscription id.
        self.feeds: dict[int, Feed] = {}

    async def run(self) -> None:
        """Read until the connection ends; then call ``on_lost`` (never raises)."""
        proto = self._proto
        handlers = self._handlers
        try:
            while True:
                with proto.get_buffer() as view:
                    n = await self._sock.recv_into(view)
                proto.buffer_updated(n)
                while True:
                    msg = proto.next_event()
                    if msg is NEED_DATA:
                        break
                    handler = handlers.get(type(msg))
                    if handler is None:
                        raise RemoteProtocolError(
                            f"unexpected {msg.type!r} message from the broker"
                        )
                    await handler(self, msg)
                if not n:
                    raise ConnectionFailed(f"the broker at {self._address} closed the connection")
        except ProtocolError as exc:
            self._on_lost(ConnectionFailed(f"the connection to {self._address} failed: {exc}"))
        except TurbineError as exc:
            self._on_lost(exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._on_lost(ConnectionFailed(f"lost the connection to {self._address}: {exc}"))

    async def _on_frames(self, msg: Frames) -> None:
        if msg.sub is not None:
            feed = self.feeds.get(msg.sub)
            if feed is not None:
                positions = feed.positions
                if positions is not None:
                    for group in msg.groups:
                        positions[f"{group[0]}/{group[1]}"] = group[3] + len(group[4])
                batch = feed.unpack(msg.groups, msg.payload)
                try:
                    feed.send_nowait(batch)
                except trio.WouldBlock:
                    await self._deliver_late(feed, batch)
        elif msg.id is not None:
            self._requests.resolve(msg.id, msg)
        else:
            raise RemoteProtocolError(
                "the broker sent frames for neither a subscription nor a fetch"
            )

    async def _on_gap(self, msg: GapReport) -> None:
        feed = self.feeds.get(msg.sub)
        if feed is not None:
            if feed.positions is not None:
                feed.positions[f"{msg.source}/{msg.channel}"] = msg.next_seq
            await self._deliver_late(
                feed,
                [
                    Gap(
                        msg.source,
                        msg.channel,
                        msg.missed,
                        msg.next_seq,
                        msg.first_time,
                        msg.last_time,
                    )
                ],
            )

    async def _on_ok(self, msg: Ok) -> None:
        self._requests.resolve(msg.id, msg)

    async def _on_error(self, msg: Error) -> None:
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

    _handlers: ClassVar[dict[type[Message], Callable[[Reader, Any], Awaitable[None]]]] = {
        Frames: _on_frames,
        GapReport: _on_gap,
        Ok: _on_ok,
        Error: _on_error,
    }

    @staticmethod
    async def _deliver_late(feed: Feed, batch: list[Any]) -> None:
        """Wait until ``feed`` takes ``batch``: a slow reader stops this loop reading the socket.

        The subscription may end while we wait (its reader left without
        reading on); the batch is then dropped, and the connection goes on.
        """
        with contextlib.suppress(trio.ClosedResourceError):
            await feed.send(batch)
