"""The NetDVD TCP server: one client at a time, frames in, frames out.

The server moves bytes and applies the one-client policy; what the commands
mean lives in device.py, the frame format in protocol.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import trio

from turbine import open_file

from ._constants import DATA_CHUNK, DEFAULT_PORT, PROTOCOL_VERSION, SEND_TIMEOUT
from .device import Device, PutTarget
from .drive import Drive
from .errors import NetDVDError, NetDVDProtocolError
from .protocol import Busy, Data, Error, Event, FrameDecoder, Hello, NeedData, Ok, Request, encode

_RECEIVE_BYTES = 64 * 1024


class _Peer:
    """One client's stream with its decoder; every send has a deadline."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, event: Event) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            await self.stream.send_all(encode(event))
        if scope.cancelled_caught:
            raise trio.BrokenResourceError(f"client did not read for {SEND_TIMEOUT} s")

    async def receive(self) -> Event | None:
        """The next event, or None when the client closed the connection."""
        while True:
            event = self.decoder.next_event()
            if not isinstance(event, NeedData):
                return event
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            if not data:
                if self.decoder.buffered:
                    raise NetDVDProtocolError("connection closed in the middle of a frame")
                return None
            self.decoder.receive_data(data)


class NetDVDServer:
    """Accepts connections for one :class:`Device`; a second client gets BUSY."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._client: str | None = None

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection until the client leaves (never raises for its faults)."""
        peer = _Peer(stream)
        async with stream:
            if self._client is not None:
                try:
                    await peer.send(Busy(f"device busy: {self._client} is connected; try later"))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return
            self._client = _describe(stream)
            try:
                await peer.send(Hello(PROTOCOL_VERSION))
                await self._serve(peer)
            except NetDVDProtocolError as exc:
                try:
                    await peer.send(Error("protocol", str(exc)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._client = None
                self.device.disconnected()

    async def _serve(self, peer: _Peer) -> None:
        while (event := await peer.receive()) is not None:
            if not isinstance(event, Request):
                raise NetDVDProtocolError(
                    f"expected a request, got a {type(event).__name__.lower()} frame"
                )
            if event.op == "put":
                await self._put(peer, event.args)
            elif event.op == "read":
                await self._read(peer, event.args)
            else:
                try:
                    result = await self.device.handle(event.op, event.args)
                except NetDVDError as exc:
                    await peer.send(Error(exc.code, exc.message))
                else:
                    await peer.send(Ok(result))

    async def _put(self, peer: _Peer, args: dict[str, Any]) -> None:
        try:
            if self.device.workdir is None:
                raise NetDVDError("send 'init' first", "not_initialized")
            target = self.device.begin_put(args)
        except NetDVDError as exc:
            await peer.send(Error(exc.code, exc.message))
            return
        await peer.send(Ok({"ready": True}))
        failure = await self._receive_into(peer, target)
        if failure is not None:
            target.partial.unlink(missing_ok=True)
            await peer.send(Error(failure.code, failure.message))
            return
        await peer.send(Ok(self.device.finish_put(target)))

    async def _receive_into(self, peer: _Peer, target: PutTarget) -> NetDVDError | None:
        """Read the upload's data frames into its partial file.

        All announced bytes are read even when writing fails, so the
        conversation stays in step; the failure is returned for the reply.
        """
        remaining = target.size
        failure: NetDVDError | None = None
        try:
            sink = await open_file(target.partial, "wb")
        except OSError as exc:
            sink = None
            failure = NetDVDError(f"cannot write {target.rel!r}: {exc.strerror}", "write_failed")
        try:
            while remaining > 0:
                event = await peer.receive()
                if event is None:
                    raise trio.BrokenResourceError("client left during an upload")
                if not isinstance(event, Data):
                    raise NetDVDProtocolError(
                        f"expected {remaining} more bytes of {target.rel!r} in data frames, "
                        f"got a {type(event).__name__.lower()} frame"
                    )
                if len(event.data) > remaining:
                    raise NetDVDProtocolError(
                        f"upload of {target.rel!r} sent {len(event.data) - remaining} bytes "
                        "more than announced"
                    )
                remaining -= len(event.data)
                if sink is not None and failure is None:
                    try:
                        await sink.write(event.data)
                    except OSError as exc:
                        code = "no_space" if exc.errno == errno.ENOSPC else "write_failed"
                        failure = NetDVDError(f"cannot write {target.rel!r}: {exc.strerror}", code)
        finally:
            if sink is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await sink.aclose()
                    except OSError as exc:
                        failure = failure or NetDVDError(
                            f"cannot write {target.rel!r}: {exc.strerror}", "write_failed"
                        )
            if failure is not None or remaining:
                target.partial.unlink(missing_ok=True)
        return failure

    async def _read(self, peer: _Peer, args: dict[str, Any]) -> None:
        try:
            if self.device.workdir is None:
                raise NetDVDError("send 'init' first", "not_initialized")
            path, size = await self.device.prepare_read(args)
        except NetDVDError as exc:
            await peer.send(Error(exc.code, exc.message))
            return
        try:
            async with await open_file(path, "rb") as source:
                await peer.send(Ok({"size": size}))
                sent = 0
                while sent < size:
                    chunk = await source.read(min(DATA_CHUNK, size - sent))
                    if not chunk:  # cannot happen: the file is ours and complete
                        raise NetDVDProtocolError("staged file shrank while being sent")
                    await peer.send(Data(chunk))
                    sent += len(chunk)
        finally:
            path.unlink(missing_ok=True)


def _describe(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "another client"
    return f"{host}:{port}"


async def serve_netdvd(
    drive: Drive,
    spool: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a NetDVD device for ``drive`` until cancelled.

    ``spool`` holds the working directories and the staged copy; put it on a
    partition that filling cannot harm.  Calls ``task_status.started(port)``
    with the bound port (useful with ``port=0``) once connections are accepted.

    Jobs (burns, copies) belong to the device, not to the client: they keep
    running if their client disconnects, and end when this function is
    cancelled.

    Raises:
        OSError: the address cannot be bound.
        NetDVDError: the drive or the spool is unusable.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as jobs:
        device = await Device.open(drive, Path(spool), jobs)
        server = NetDVDServer(device)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, server.handle, listeners)
            task_status.started(bound)
