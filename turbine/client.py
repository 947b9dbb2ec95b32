"""The client API component authors use.

::

    async with turbine.open_client("127.0.0.1:3333") as tb:
        src = await tb.open_source("daq_rig_data_source", channels={"x": "application/octet-stream"})
        await src.put("x", b"...")
        await src.flush()
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import AsyncIterator, Mapping
from itertools import repeat
from typing import Any, NamedTuple

import attrs
import trio

from ._constants import (
    CLIENT_MAX_HEADER_BYTES,
    CLIENT_MAX_PAYLOAD_BYTES,
    DEFAULT_PORT,
    MAX_FRAME_BYTES,
    METADATA_CHANNEL,
    PROTOCOL_VERSION,
    PUT_BATCH_BYTES,
    PUT_BATCH_FRAMES,
    RECEIVE_BYTES,
    SUBSCRIPTION_QUEUE_BATCHES,
)
from ._errors import (
    ConnectionFailed,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RequestFailed,
    TurbineError,
    unwrap,
)
from ._io import send_buffers
from .names import check_channel_name, compile_pattern, split_path
from .protocol import NEED_DATA, Connection, Message, Role, encode, split_groups
from .router import check_start


class Frame(NamedTuple):
    """One frame as a reader sees it.

    A named tuple rather than an attrs class: readers build one per frame on
    the hot path, and a tuple is the cheapest immutable record Python has.
    """

    source: str
    channel: str
    seq: int
    timestamp: float
    data: bytes
    content_type: str
    writer: str

    @property
    def path(self) -> str:
        return f"{self.source}/{self.channel}"


class Gap(NamedTuple):
    """Frames a subscriber did not get because the ring evicted them first."""

    source: str
    channel: str
    missed: int
    next_seq: int

    @property
    def path(self) -> str:
        return f"{self.source}/{self.channel}"


@attrs.frozen
class ChannelInfo:
    name: str
    content_type: str
    frames: int
    first_seq: int | None
    last_seq: int | None
    first_time: float | None
    last_time: float | None
    bytes: int
    rate: float | None


@attrs.frozen
class SourceInfo:
    """A source as ``list_sources`` reports it."""

    name: str
    online: bool
    holder: str
    shared: bool
    cache_frames: int
    cache_bytes: int
    bytes: int
    channels: tuple[ChannelInfo, ...]
    metadata: Any

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceInfo:
        return cls(**{**d, "channels": tuple(ChannelInfo(**c) for c in d["channels"])})


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:3333``); a bare host gets the default port.

    Raises:
        TurbineError: the port is not a number.
    """
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    try:
        return host or "127.0.0.1", int(port) if port else DEFAULT_PORT
    except ValueError:
        raise TurbineError(f"bad broker address {address!r}: expected HOST:PORT") from None


def fmt_address(host: str, port: int) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets (the inverse of :func:`parse_address`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _as_bytes(data: bytes | memoryview) -> bytes:
    if type(data) is bytes:
        return data
    obj = data.obj  # type: ignore[union-attr]
    return obj if type(obj) is bytes and len(obj) == len(data) else bytes(data)


_new_tuple = tuple.__new__


def frames_from(groups: list[Any], payload: memoryview) -> list[Frame]:
    """Turn a ``frames`` message's groups into :class:`Frame` objects (no per-frame Python loop)."""
    frames: list[Frame] = []
    # tuple.__new__ straight from zip's exact 7-tuples: Frame._make is a
    # Python-level call per frame (385 -> 87 ns a frame).
    for source, channel, ctype, seq, ts, datas, writer in split_groups(groups, payload):
        if type(datas[0]) is not bytes:
            datas = list(map(_as_bytes, datas))
        frames += map(
            _new_tuple,
            repeat(Frame),
            zip(
                repeat(source),
                repeat(channel),
                range(seq, seq + len(ts)),
                ts,
                datas,
                repeat(ctype),
                repeat(writer),
            ),
        )
    return frames


class _Pending:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: Message | None = None


class Subscription:
    """Frames (and gaps) for a pattern; iterate with ``async for``.

    Backpressure: the client buffers a bounded number of batches per
    subscription; when a reader does not keep up, the connection stops
    reading, the broker's cursor falls behind, and evicted frames arrive as
    :class:`Gap` items.  The producer is never slowed.
    """

    def __init__(
        self, client: Client, sid: int, pattern: str, start: str | int, monitor: bool
    ) -> None:
        self.client = client
        self.id = sid
        self.pattern = pattern
        self.start = start
        self.monitor = monitor
        self.channels: list[str] = []
        self._send, self._recv = trio.open_memory_channel[list[Any]](SUBSCRIPTION_QUEUE_BATCHES)
        self._batch: list[Any] = []
        self._i = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Frame | Gap:
        i = self._i
        if i < len(self._batch):
            self._i = i + 1
            return self._batch[i]
        try:
            self._batch = await self._recv.receive()
        except trio.EndOfChannel:
            if self.client._error is not None:
                raise self.client._error from None
            raise StopAsyncIteration from None
        self._i = 1
        return self._batch[0]

    async def receive(self) -> Frame | Gap:
        """The next frame or gap.

        Raises:
            ConnectionFailed: the connection to the broker was lost.
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionFailed("the subscription was closed") from None


class Source:
    """A source this client holds (or a shared one it writes to)."""

    def __init__(self, client: Client, name: str, channels: dict[str, str]) -> None:
        self.client = client
        self.name = name
        self.channels = dict(channels)

    async def put(
        self, channel: str, data: bytes | bytearray | memoryview, timestamp: float | None = None
    ) -> None:
        """Queue one frame; it is sent in a batch with others.

        Waits only when its batch is full and being written (backpressure).
        ``timestamp`` defaults to the broker's clock when the frame arrives.

        Raises:
            TurbineError: the frame is too large, or the connection failed.
        """
        client = self.client
        if client._queue(self.name, channel, data, timestamp):
            await client._send([])

    async def flush(self) -> None:
        """Return once the broker holds every frame put so far.

        Raises:
            RequestFailed: the broker refused an earlier put (says which and why).
        """
        await self.client._request("flush", {})

    async def set_metadata(
        self, metadata: Mapping[str, Any], timestamp: float | None = None
    ) -> None:
        """Publish ``metadata`` as a new JSON frame on ``metadata.txt`` and flush."""
        await self.put(METADATA_CHANNEL, json.dumps(metadata, sort_keys=True).encode(), timestamp)
        await self.flush()

    async def close(self) -> None:
        """Flush and let go of the source; it stays readable, shown offline."""
        await self.client._request("close_source", {"source": self.name})


class Client:
    """A connection to a broker.  Create with :func:`open_client`."""

    def __init__(
        self, stream: trio.SocketStream, proto: Connection, address: str, hello: Message
    ) -> None:
        self.address = address
        self.stream = stream
        self.sock = stream.socket
        self.proto = proto
        self.broker_software: str = hello["software"]
        self.max_frame: int = hello.get("max_frame", MAX_FRAME_BYTES)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[int, Subscription] = {}
        self._batches: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
        self._batch_bytes = 0
        self._batch_frames = 0
        self._send_lock = trio.Lock()
        self._wake_flusher = trio.Event()
        self._put_errors: list[RequestFailed] = []
        self._error: TurbineError | None = None

    # --- requests

    async def _request(self, kind: str, fields: dict[str, Any]) -> Message:
        self._check()
        rid = next(self._ids)
        pending = self._pending[rid] = _Pending()
        try:
            await self._send(self.proto.send(kind, {"id": rid, **fields}))
            await pending.event.wait()
        finally:
            del self._pending[rid]
        msg = pending.message
        if msg is None:
            raise self._error or ConnectionFailed("the connection to the broker was closed")
        if msg.type == "error":
            raise RequestFailed(msg["message"], msg["code"])
        if self._put_errors:
            errors, self._put_errors = self._put_errors, []
            raise errors[0]
        return msg

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def _send(self, buffers: list[Any]) -> None:
        """Write queued puts, then ``buffers``, as one vectored write."""
        async with self._send_lock:
            out = self._take_batches()
            out += buffers
            if out:
                try:
                    await send_buffers(self.sock, out)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._fail(ConnectionFailed(f"lost the connection to {self.address}: {exc}"))
                    raise self._error from None  # type: ignore[misc]

    def _take_batches(self) -> list[Any]:
        out: list[Any] = []
        for (source, channel), (ts, data) in self._batches.items():
            out += encode(
                "put",
                {"source": source, "channel": channel, "ts": ts, "sizes": list(map(len, data))},
                data,
            )
        self._batches.clear()
        self._batch_bytes = self._batch_frames = 0
        return out

    async def _put(self, source: str, channel: str, data: Any, timestamp: float | None) -> None:
        if self._queue(source, channel, data, timestamp):
            await self._send([])

    def _queue(self, source: str, channel: str, data: Any, timestamp: float | None) -> bool:
        """Add one frame to its batch; True when the batches are full and must be sent now."""
        if self._error is not None:
            raise self._error
        size = len(data)
        if size > self.max_frame:
            raise RequestFailed(
                f"a frame of {size} bytes is over the broker's limit of {self.max_frame} bytes",
                "too_large",
            )
        batch = self._batches.get((source, channel))
        if batch is None:
            check_channel_name(channel)
            batch = self._batches[(source, channel)] = ([], [])
        batch[0].append(timestamp)
        batch[1].append(data)
        self._batch_bytes += size
        self._batch_frames += 1
        if self._batch_bytes >= PUT_BATCH_BYTES or self._batch_frames >= PUT_BATCH_FRAMES:
            return True
        self._wake_flusher.set()
        return False

    async def _flusher(self) -> None:
        """Send queued puts as soon as the putting task lets others run."""
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = trio.Event()
            if self._batches:
                with contextlib.suppress(TurbineError):
                    await self._send([])

    # --- receiving

    async def _reader(self) -> None:
        proto = self.proto
        try:
            while True:
                with proto.get_buffer() as view:
                    n = await self.sock.recv_into(view)
                proto.buffer_updated(n)
                while True:
                    msg = proto.next_event()
                    if msg is NEED_DATA:
                        break
                    await self._dispatch(msg)
                if not n:
                    raise ConnectionFailed(f"the broker at {self.address} closed the connection")
        except ProtocolError as exc:
            self._fail(ConnectionFailed(f"the connection to {self.address} failed: {exc}"))
        except TurbineError as exc:
            self._fail(exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(ConnectionFailed(f"lost the connection to {self.address}: {exc}"))

    async def _dispatch(self, msg: Message) -> None:
        kind = msg.type
        if kind == "frames" and "sub" in msg.fields:
            sub = self._subs.get(msg["sub"])
            if sub is not None:
                batch = frames_from(msg["groups"], msg.payload)
                try:
                    sub._send.send_nowait(batch)
                except trio.WouldBlock:
                    await sub._send.send(batch)  # a slow reader: stop reading the socket
        elif kind == "gap":
            sub = self._subs.get(msg["sub"])
            if sub is not None:
                gap = Gap(msg["source"], msg["channel"], msg["missed"], msg["next_seq"])
                await sub._send.send([gap])
        elif kind in ("ok", "error", "frames") and msg.get("id") is not None:
            pending = self._pending.get(msg["id"])
            if pending is not None:
                pending.message = msg
                pending.event.set()
        elif kind == "error":
            if msg["code"] == "protocol":
                raise RemoteProtocolError(f"the broker reported: {msg['message']}")
            self._put_errors.append(RequestFailed(msg["message"], msg["code"]))
        else:
            raise RemoteProtocolError(f"unexpected {kind!r} message from the broker")

    def _fail(self, error: TurbineError) -> None:
        if self._error is None:
            self._error = error
        for pending in self._pending.values():
            pending.event.set()
        for sub in self._subs.values():
            sub._send.close()

    # --- the public API

    async def open_source(
        self,
        name: str,
        channels: Mapping[str, str] | None = None,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
        shared: bool | None = None,
    ) -> Source:
        """Create (or take back) source ``name`` with its channels and ring limits.

        ``channels`` maps channel names to content types.  A ``shared`` source
        accepts puts from every client.  Reopening a source continues its
        sequence numbers; limits left as ``None`` keep the source's current
        ones (a new source gets the broker's defaults).

        Raises:
            RequestFailed: invalid name, held by another client (named in the
                message), or not enough broker memory left (says how much is).
        """
        channels = dict(channels or {})
        options = {"cache_frames": cache_frames, "cache_bytes": cache_bytes, "shared": shared}
        await self._request(
            "open_source",
            {
                "source": name,
                "channels": channels,
                **{k: v for k, v in options.items() if v is not None},
            },
        )
        return Source(self, name, channels)

    async def put(
        self, path: str, data: bytes | bytearray | memoryview, *, timestamp: float | None = None
    ) -> None:
        """Put one frame on ``SOURCE/CHANNEL`` (a shared source, or one this client holds).

        Returns once the broker holds it.

        Raises:
            RequestFailed: no such source, or it is not shared.
        """
        source, channel = split_path(path)
        await self._put(source, channel, data, timestamp)
        await self._request("flush", {})

    async def flush(self) -> None:
        """Return once the broker holds every frame this client put so far."""
        await self._request("flush", {})

    async def fetch(
        self,
        pattern: str,
        *,
        newest: int | None = None,
        oldest: int | None = None,
        start: float | None = None,
        duration: float | None = None,
        after: int | None = None,
    ) -> list[Frame]:
        """Frames the broker holds now for a path or pattern.

        Choose exactly one: the ``newest`` or ``oldest`` N per channel, a time
        range from ``start`` lasting ``duration`` seconds, or every frame
        ``after`` a sequence number.

        Raises:
            RequestFailed: no selection, or more than one.
        """
        sel = {
            "newest": newest,
            "oldest": oldest,
            "start": start,
            "duration": duration,
            "after": after,
        }
        fields = {k: v for k, v in sel.items() if v is not None}
        if "duration" in fields and math.isinf(fields["duration"]):
            del fields["duration"]
        compile_pattern(pattern)
        msg = await self._request("fetch", {"pattern": pattern, **fields})
        return frames_from(msg["groups"], msg.payload)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, pattern: str, *, start: str | int = "now", monitor: bool = False
    ) -> AsyncIterator[Subscription]:
        """Every frame of every channel matching ``pattern``, in order per channel.

        ``start`` is ``"now"``, ``"newest"``, ``"oldest"`` or a sequence
        number; channels that appear later are read from their first frame.
        """
        compile_pattern(pattern)
        check_start(start)
        sid = next(self._ids)
        sub = Subscription(self, sid, pattern, start, monitor)
        self._subs[sid] = sub
        try:
            msg = await self._request(
                "subscribe", {"sub": sid, "pattern": pattern, "start": start, "monitor": monitor}
            )
            sub.channels = msg["result"]["channels"]
            yield sub
        finally:
            del self._subs[sid]
            sub._send.close()
            if self._error is None:
                # Tell the broker, but do not wait for its answer: the reader
                # may be cancelled already, and the reply is ignored anyway.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(1),
                    contextlib.suppress(TurbineError),
                ):
                    await self._send(
                        self.proto.send("unsubscribe", {"id": next(self._ids), "sub": sid})
                    )

    def monitor(self, pattern: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """The newest frame of each matching channel, skipping what the reader was too slow for."""
        return self.subscribe(pattern, start="newest", monitor=True)

    async def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        """Sources whose names match ``pattern``, with channels and newest metadata."""
        msg = await self._request("list", {"pattern": pattern})
        return [SourceInfo.from_dict(d) for d in msg["result"]]

    async def status(self) -> dict[str, Any]:
        """The broker's status: version, uptime, memory, clients, recent closes."""
        return (await self._request("status", {}))["result"]

    async def delete(self, source: str) -> None:
        """Delete a source and its frames.

        Raises:
            RequestFailed: no such source, or another client holds it.
        """
        await self._request("delete", {"source": source})

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self._batches and self._error is None:
                with trio.move_on_after(5), contextlib.suppress(TurbineError):
                    await self._send([])
            self._fail(ConnectionFailed("the client was closed"))
            await trio.aclose_forcefully(self.stream)


async def connect_stream(address: str) -> trio.SocketStream:
    host, port = parse_address(address)
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectionFailed(
            f"no broker at {address} ({cause.strerror or cause}); start one with 'turbine serve'"
        ) from None


@contextlib.asynccontextmanager
async def open_client(
    address: str = "127.0.0.1:3333", *, name: str = "client", connect_timeout: float = 10.0
) -> AsyncIterator[Client]:
    """Connect to the broker at ``HOST:PORT`` and hold the connection open.

    Raises:
        ConnectionFailed: nothing listens there, or it is not a turbine broker.
    """
    stream = await connect_stream(address)
    proto = Connection(
        Role.CLIENT, max_payload=CLIENT_MAX_PAYLOAD_BYTES, max_header=CLIENT_MAX_HEADER_BYTES
    )
    try:
        with trio.fail_after(connect_timeout):
            while (msg := proto.next_event()) is NEED_DATA:
                data = await stream.receive_some(RECEIVE_BYTES)
                proto.receive_data(data)
        await send_buffers(
            stream.socket, proto.send("client_hello", {"protocol": PROTOCOL_VERSION, "name": name})
        )
    except (trio.TooSlowError, ProtocolError, OSError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        why = "it did not greet us in time" if isinstance(exc, trio.TooSlowError) else str(exc)
        raise ConnectionFailed(f"{address} does not speak the turbine protocol: {why}") from None
    client = Client(stream, proto, address, msg)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            nursery.start_soon(client._flusher)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The background tasks never raise, so a group holds what the caller's
        # own code raised: give it back unwrapped.
        inner = unwrap(group)
        if inner is not group:
            raise inner from None
        raise


__all__ = [
    "Client",
    "Frame",
    "Gap",
    "LocalProtocolError",
    "Source",
    "SourceInfo",
    "Subscription",
    "open_client",
    "parse_address",
]
