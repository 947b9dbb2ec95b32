"""What component authors need to test a component: a real broker in-process, and fakes.

Everything here runs inside the test's trio run (``pytest-trio``), on
loopback, port 0::

    from turbine import open_client, send_command
    from turbine.testing import open_broker, serving


    async def test_counter_counts(autojump_clock):
        async with open_broker() as address, serving(Counter("lab1", address)):
            async with open_client(address) as tb:
                reply = await send_command(tb, "daq_lab1", "set-step", 5)
                assert reply.ok

* :func:`open_broker` / :func:`start_broker`: a real broker on a free port;
* :func:`serving`: a component running, returned once it is ready (its
  endpoints open, metadata published, commands answered);
* :func:`wait_for_component`: wait for a component started elsewhere (a
  process, or ``nursery.start_soon(component.serve)``);
* :func:`next_frames`: the next frames of a channel or pattern, gaps skipped;
* :func:`follow_trio_clock`: the wall clock the turbine reads follows trio's
  clock, so that under ``autojump_clock`` uptimes, command deadlines and
  timestamps move with virtual time and tests need no real sleeps;
* :func:`run_blocking_inline`: blocking work (:func:`turbine.run_blocking`)
  runs in the calling task, not a worker thread, so that a thread at work
  does not let ``autojump_clock`` jump to the next deadline;
* :class:`FakeSource`: records what a component puts, for testing ``run``
  without a broker (:func:`fake_data` installs one).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import attrs
import trio

from ._blocking import set_blocking_inline
from ._clock import set_wall_clock, wall_time
from ._constants import METADATA_CHANNEL
from .client import Client, Frame, open_client
from .component import Component
from .server import BrokerConfig, serve_turbine

C = TypeVar("C", bound=Component)

__all__ = [
    "FakeSource",
    "Put",
    "fake_data",
    "follow_trio_clock",
    "run_blocking_inline",
    "next_frames",
    "open_broker",
    "printed_line",
    "serving",
    "start_broker",
    "wait_for_component",
]


async def start_broker(nursery: trio.Nursery, **config: Any) -> str:
    """Start a broker in ``nursery`` on 127.0.0.1, port 0; return its ``HOST:PORT``.

    ``config`` are :class:`~turbine.BrokerConfig` fields (``max_memory``, ``types`` ...).
    Its clock is the turbine's wall clock, so arrival times follow
    :func:`follow_trio_clock` too.
    """
    config.setdefault("clock", wall_time)
    addresses = await nursery.start(serve_turbine, BrokerConfig(host="127.0.0.1", port=0, **config))
    host, port = addresses[0]
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def open_broker(**config: Any) -> AsyncIterator[str]:
    """A broker for the body of the ``async with``; yields its address, stops it on exit."""
    async with trio.open_nursery() as nursery:
        yield await start_broker(nursery, **config)
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def serving(component: C) -> AsyncIterator[C]:
    """Run ``component`` for the body of the ``async with``; entered once it is ready.

    Stops it on exit (as cancelling :meth:`Component.serve` does).
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(component.serve)
        yield component
        nursery.cancel_scope.cancel()


async def wait_for_component(tb: Client | str, component: str) -> dict[str, Any]:
    """Wait until ``component`` (``<type>_<name>``) has published its metadata; return it.

    A component publishes its metadata once all four of its endpoints are
    open, so after this its commands are answered.  ``tb`` is a client or a
    broker address.  No timeout of its own: wrap it in ``trio.fail_after``.
    """
    if isinstance(tb, str):
        async with open_client(tb, name="wait_for_component") as client:
            return await wait_for_component(client, component)
    path = f"{component}_data_source/{METADATA_CHANNEL}"
    # A channel that appears after the subscription is read from its first frame.
    async with tb.subscribe(path, start="newest") as sub:
        async for item in sub:
            if isinstance(item, Frame):
                return dict(json.loads(item.data))
    raise AssertionError("unreachable: a subscription ends only with its connection")


async def next_frames(tb: Client, path: str, n: int = 1, start: str | int = "now") -> list[Frame]:
    """The next ``n`` frames of ``path`` (a channel or a pattern), from ``start``; gaps skipped.

    ``start`` is as for :meth:`~turbine.Client.subscribe` (``"now"``: frames put
    from here on; ``"oldest"``: what the broker holds first).  No timeout of its
    own: wrap it in ``trio.fail_after``.
    """
    got: list[Frame] = []
    async with tb.subscribe(path, start=start) as sub:
        async for item in sub:
            if isinstance(item, Frame):
                got.append(item)
                if len(got) == n:
                    return got
    raise AssertionError("unreachable: a subscription ends only with its connection")


async def printed_line(proc: trio.Process, who: str = "the process") -> bytes:
    """The next line ``proc`` prints on its standard output (``stdout=PIPE``),
    without the newline: the line a server prints once it listens, say.

    Raises:
        AssertionError: ``proc`` closed its output first ("``who`` exited").
    """
    assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
    line = b""
    while not line.endswith(b"\n"):  # a byte at a time: what follows stays unread
        chunk = await proc.stdout.receive_some(1)
        assert chunk, f"{who} exited before printing a line"
        line += chunk
    return line.rstrip(b"\r\n")


def follow_trio_clock(epoch: float | None = None) -> None:
    """From now on in this trio run, the turbine's wall clock reads ``epoch + trio.current_time()``.

    ``epoch`` defaults to the real time now minus trio's time, so wall time
    starts where it is and then moves as trio's clock does (virtual time
    under ``autojump_clock``).  Components, command deadlines
    (:func:`~turbine.send_command`) and uptimes read this clock.
    """
    base = (wall_time() - trio.current_time()) if epoch is None else epoch
    set_wall_clock(lambda: base + trio.current_time())


def run_blocking_inline() -> None:
    """From now on in this trio run, :func:`turbine.run_blocking` calls its function
    in the calling task instead of a worker thread.

    Under ``autojump_clock`` a task waiting for a thread counts as blocked, so
    the virtual clock jumps to the next deadline while the thread works (a
    timeout fires, a retry comes early).  Use it in tests whose blocking work
    is small (a few files); the event loop waits while it runs.
    """
    set_blocking_inline()


@attrs.frozen
class Put:
    """One frame a :class:`FakeSource` was given."""

    channel: str
    data: bytes
    timestamp: float | None


@attrs.define
class FakeSource:
    """A source that records instead of sending: stands in for ``component.data``.

    ``puts`` holds every frame in order; :meth:`frames` those of one
    channel; ``metadata`` the last metadata set; ``flushes`` counts flushes.
    """

    name: str
    channels: dict[str, str] = attrs.field(factory=dict)
    puts: list[Put] = attrs.field(factory=list)
    metadata: dict[str, Any] | None = None
    flushes: int = 0

    async def put(
        self, channel: str, data: bytes | bytearray | memoryview, timestamp: float | None = None
    ) -> None:
        if channel != METADATA_CHANNEL and self.channels and channel not in self.channels:
            raise ValueError(
                f"{self.name} has no channel {channel!r}; it has {sorted(self.channels)}"
            )
        self.puts.append(Put(channel, bytes(data), timestamp))
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        self.flushes += 1
        await trio.lowlevel.checkpoint()

    async def set_metadata(
        self, metadata: Mapping[str, Any], timestamp: float | None = None
    ) -> None:
        self.metadata = json.loads(json.dumps(metadata, sort_keys=True))
        await self.put(METADATA_CHANNEL, json.dumps(metadata, sort_keys=True).encode(), timestamp)

    async def close(self) -> None:
        await self.flush()

    def frames(self, channel: str) -> list[Put]:
        """The frames put on ``channel``, oldest first."""
        return [p for p in self.puts if p.channel == channel]


def fake_data(component: Component) -> FakeSource:
    """Give ``component`` a :class:`FakeSource` as its data source (no broker needed); return it.

    For testing ``run`` and command handlers directly::

        source = fake_data(counter)
        with trio.move_on_after(3):
            await counter.run()
        assert len(source.frames("count")) == 3
    """
    fake = FakeSource(component.endpoints["data"], dict(component.channels))
    component._data = fake  # type: ignore[assignment]
    return fake
