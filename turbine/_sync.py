"""A blocking facade over the client, for plain scripts.

``turbine.connect(address)`` runs the async client on a background thread
with its own trio loop and offers the same methods as blocking calls.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio

from ._constants import DEFAULT_ADDRESS, SPOOL_BYTES
from ._errors import ConnectionFailed
from .client import Client, Frame, Gap, Source, SourceInfo, open_client


class BlockingSource:
    def __init__(self, portal: BlockingClient, source: Source) -> None:
        self._portal = portal
        self._source = source
        self.name = source.name

    def put(self, channel: str, data: bytes, timestamp: float | None = None) -> None:
        self._portal._call(self._source.put, channel, data, timestamp)

    def flush(self) -> None:
        self._portal._call(self._source.flush)

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        self._portal._call(self._source.set_metadata, metadata)

    def close(self) -> None:
        self._portal._call(self._source.close)


class BlockingClient:
    """The client API as blocking calls.  Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        address: str,
        name: str = "script",
        timeout: float = 10.0,
        reconnect: bool = False,
        spool_bytes: int = SPOOL_BYTES,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.address = address
        self._reconnect = reconnect
        self._spool_bytes = spool_bytes
        self._spool_dir = spool_dir
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, address, name, timeout), daemon=True
        )
        self._thread.start()
        err = self._ready.get()
        if err is not None:
            self._thread.join()
            raise err

    async def _main(self, address: str, name: str, connect_timeout: float) -> None:
        try:
            async with open_client(
                address,
                name=name,
                connect_timeout=connect_timeout,
                reconnect=self._reconnect,
                spool_bytes=self._spool_bytes,
                spool_dir=self._spool_dir,
            ) as client:
                self._client = client
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.put(None)
                await self._stop.wait()
        except BaseException as exc:  # handed to the caller's thread
            if self._client is None:
                self._ready.put(exc)
            else:
                raise

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._token is None or not self._thread.is_alive():
            raise ConnectionFailed("the client is closed")
        try:
            return trio.from_thread.run(lambda: fn(*args, **kwargs), trio_token=self._token)
        except trio.RunFinishedError:
            raise ConnectionFailed("the client is closed") from None

    def open_source(
        self, name: str, channels: Mapping[str, str] | None = None, **kwargs: Any
    ) -> BlockingSource:
        assert self._client is not None
        return BlockingSource(self, self._call(self._client.open_source, name, channels, **kwargs))

    def put(self, path: str, data: bytes, *, timestamp: float | None = None) -> None:
        assert self._client is not None
        self._call(self._client.put, path, data, timestamp=timestamp)

    def flush(self, timeout: float | None = None) -> None:
        """Like the async ``flush``: blocks until the broker holds every frame put so far
        (reconnecting, at most ``timeout`` seconds during an outage).

        Raises:
            BrokerUnavailable: ``timeout`` passed first; the frames stay spooled.
        """
        assert self._client is not None
        self._call(self._client.flush, timeout)

    def fetch(self, pattern: str, **selection: Any) -> list[Frame]:
        assert self._client is not None
        return self._call(self._client.fetch, pattern, **selection)

    def list_sources(self, pattern: str = "*") -> list[SourceInfo]:
        assert self._client is not None
        return self._call(self._client.list_sources, pattern)

    def status(self) -> dict[str, Any]:
        assert self._client is not None
        return self._call(self._client.status)

    def delete(self, source: str) -> None:
        assert self._client is not None
        self._call(self._client.delete, source)

    @contextlib.contextmanager
    def subscribe(
        self,
        pattern: str,
        *,
        start: str | int = "now",
        monitor: bool = False,
        max_rate: float | None = None,
    ) -> Iterator[Iterator[Frame | Gap]]:
        """Like the async ``subscribe``; yields a plain iterator (blocks per item)."""
        assert self._client is not None
        cm = self._client.subscribe(pattern, start=start, monitor=monitor, max_rate=max_rate)
        sub = self._call(cm.__aenter__)

        def items() -> Iterator[Frame | Gap]:
            while True:
                try:
                    yield self._call(sub.__anext__)
                except StopAsyncIteration:
                    return

        try:
            yield items()
        finally:
            with contextlib.suppress(ConnectionFailed):
                self._call(cm.__aexit__, None, None, None)

    def monitor(
        self, pattern: str, *, max_rate: float | None = None
    ) -> contextlib.AbstractContextManager[Iterator[Frame | Gap]]:
        return self.subscribe(pattern, start="newest", monitor=True, max_rate=max_rate)

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    name: str = "script",
    timeout: float = 10.0,
    reconnect: bool = False,
    spool_bytes: int = SPOOL_BYTES,
    spool_dir: str | os.PathLike[str] | None = None,
) -> BlockingClient:
    """Connect with blocking calls (for scripts that do not use trio).

    ``reconnect=True`` rides through a lost connection as
    :func:`~turbine.open_client` does, with the same spool: at most
    ``spool_bytes`` of unacknowledged puts, past 8 MiB of them in a synced
    file in ``spool_dir`` (a script has no state dir of its own, so without
    one, as with ``open_client``, the spool stays in memory), and what an
    earlier run of the same ``name`` left there replayed.

    Raises:
        ConnectionFailed: no broker at the address.
    """
    return BlockingClient(address, name, timeout, reconnect, spool_bytes, spool_dir)
