"""One connection to a NetDVD device: events written and read through the
sans-I/O framing, one exchange at a time (:attr:`Wire.lock`)."""

from __future__ import annotations

from typing import Any

import trio

from ._constants import DATA_CHUNK
from .errors import NetDVDError, NetDVDProtocolError
from .protocol import Error, Event, FrameDecoder, NeedData, Ok, Request, encode


class Wire:
    """The stream to a device and its decoder; a :class:`~components.netdvd.client.NetDVDClient`'s."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder()
        #: Held for one exchange: a request and its reply (and data frames).
        self.lock = trio.Lock()

    async def send(self, event: Event) -> None:
        """Write ``event``.

        Raises:
            NetDVDError: the connection is lost (code ``connection``).
        """
        try:
            await self._stream.send_all(encode(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise NetDVDError(f"connection to the device lost: {exc}", "connection") from exc

    async def receive(self) -> Event:
        """The next event from the device.

        Raises:
            NetDVDError: the connection is lost or closed (code ``connection``).
        """
        while True:
            event = self._decoder.next_event()
            if not isinstance(event, NeedData):
                return event
            try:
                data = await self._stream.receive_some(DATA_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise NetDVDError(f"connection to the device lost: {exc}", "connection") from exc
            if not data:
                raise NetDVDError("the device closed the connection", "connection")
            self._decoder.receive_data(data)

    async def reply(self) -> dict[str, Any]:
        """The result of the next reply.

        Raises:
            NetDVDError: the device refused the command (its code and message).
            NetDVDProtocolError: the next event is not a reply.
        """
        event = await self.receive()
        if isinstance(event, Error):
            raise NetDVDError(event.message, event.code)
        if not isinstance(event, Ok):
            raise NetDVDProtocolError(f"expected a reply, got {event!r}")
        return event.result

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send command ``op`` and return its result.

        Raises:
            NetDVDError: the device refused the command.
        """
        async with self.lock:
            await self.send(Request(op, args))
            return await self.reply()

    async def aclose(self) -> None:
        await self._stream.aclose()
