"""A component's life across broker connections: connect, open its endpoints,
run, and reconnect with capped backoff; the session half of
:class:`turbine.component.Component` (mixed into it, as the request half is
into the broker's connection).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from typing import ClassVar

import trio

from ._clock import wall_time
from ._component_log import BrokerLogHandler
from ._component_parts import CommandDesk, KeptState, Patience, open_small_endpoints
from ._errors import ConnectionFailed, RequestFailed, TurbineError, leaves
from ._signals import open_stop_nursery
from .client import Client, Source, open_client

#: Refusals a component waits out: its previous process still holds its
#: sources (they go offline soon), or the broker has no memory (or disk budget) left for now.
WAIT_FOR = ("held", "memory", "disk")
#: How long a component that failed may take to get its last log records and metadata out.
LAST_WORDS_S = 2.0


class Sessions:
    """Serving a component: what :class:`~turbine.component.Component` does with a broker."""

    address: str
    component: str
    token: str | None
    endpoints: dict[str, str]
    channels: dict[str, str]
    cache_frames: ClassVar[int | None]
    cache_bytes: ClassVar[int | None]
    archive_bytes: ClassVar[int | None]
    clock_source: str
    clock_offset: float
    log: logging.Logger
    state: str
    error: str | None
    started: float
    client: Client | None
    _data: Source | None
    _desk: CommandDesk
    _log_handler: BrokerLogHandler
    _patience: Patience
    kept: KeptState
    spool_bytes: int

    async def run(self) -> None:
        raise NotImplementedError

    async def publish_metadata(self) -> None:
        raise NotImplementedError

    async def _session(self, tb: Client, patience: Patience, ready: Callable[[], None]) -> None:
        self.client = tb
        if self.clock_source == "broker":
            reading = await tb.time()
            self.clock_offset = reading.offset
            self.log.info(
                "stamping frames on the broker's clock: %+.1f ms from ours (within %.1f ms)",
                reading.offset * 1e3,
                reading.round_trip * 500,
            )
        log_source, self._desk.replies = await open_small_endpoints(tb, self.endpoints)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._log_handler.pump, log_source)
            nursery.start_soon(self._desk.serve, tb, self.endpoints)
            while True:  # connected and answering commands while the data source is refused
                try:
                    self._data = await tb.open_source(
                        self.endpoints["data"],
                        channels=self.channels,
                        cache_frames=self.cache_frames,
                        cache_bytes=self.cache_bytes,
                        archive_bytes=self.archive_bytes,
                    )
                    break
                except RequestFailed as exc:
                    if exc.code not in WAIT_FOR:
                        raise
                    self.state = "waiting"
                    await patience.wait(exc.code, str(exc))
            # Only a session that opened everything ends the backoff: a broker
            # that accepts the connection but refuses the source is still away.
            patience.ended()
            self.state = "running"
            await self.publish_metadata()
            self.log.info("connected to %s", self.address)
            ready()
            try:
                await self.run()
            except Exception as exc:
                await self._last_words(exc)
                raise
            # run() returning means the work is done; keep answering commands.
            await trio.sleep_forever()

    async def _last_words(self, exc: Exception) -> None:
        """``run`` failed: say so on the debug log source and in the metadata before stopping.

        The process then exits with the traceback, and the MCP restarts it.
        """
        self.state = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        self.log.error("run() failed, stopping: %s", self.error, exc_info=exc)
        with trio.move_on_after(LAST_WORDS_S), contextlib.suppress(TurbineError):
            await self._log_handler.wait_sent()
            await self.publish_metadata()

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        """Start work that outlives broker connections (a listener, a device link) in ``nursery``.

        Called once by :meth:`serve`, before it first connects; ``nursery``
        lives as long as :meth:`serve`.  Return once that work is ready (e.g.
        with ``await nursery.start(...)``).  The default starts nothing.
        """

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, run and reconnect forever (until cancelled).

        ``await nursery.start(component.serve)`` returns once the component is
        ready: its endpoints open, its metadata published, its commands
        answered.  While the broker is unreachable, or refuses the component's
        sources (held by another client, or no memory left), it waits with
        capped backoff; the reason is logged once per change and shown in
        ``status`` as ``waiting_for``.

        Raises:
            RequestFailed: the broker refused a source for a reason waiting
                cannot cure (a bad name or limits).
        """
        root = logging.getLogger()
        root.addHandler(self._log_handler)
        self.started = wall_time()

        def ready() -> None:
            nonlocal task_status
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED

        try:
            async with trio.open_nursery() as lasting:
                await self.start_lasting_work(lasting)
                while True:
                    try:
                        # reconnect: a broker that goes away loses none of the
                        # component's frames (spooled) nor its subscriptions.
                        async with open_client(
                            self.address,
                            name=self.component,
                            reconnect=True,
                            token=self.token,
                            spool_bytes=self.spool_bytes,
                            spool_dir=self.kept.directory,
                        ) as tb:
                            await self._session(tb, self._patience, ready)
                    except* ConnectionFailed as group:
                        kind, reason = "unreachable", f"broker unreachable ({leaves(group)[0]})"
                    except* RequestFailed as group:
                        refused = leaves(group)
                        if any(e.code not in WAIT_FOR for e in refused):  # type: ignore[attr-defined]
                            raise
                        kind, reason = refused[0].code, str(refused[0])  # type: ignore[attr-defined]
                    self._data = self._desk.replies = None
                    self.state = "waiting"
                    await self._patience.wait(kind, reason)
        finally:
            root.removeHandler(self._log_handler)

    async def serve_until_stopped(self) -> None:
        """:meth:`serve` until SIGTERM or SIGINT; then say "down" in the metadata and stop."""

        async def stop(signum: signal.Signals) -> None:
            self.log.info("stopping (%s)", signum.name)
            self.state = "down"
            with trio.move_on_after(1), contextlib.suppress(TurbineError):
                await self.publish_metadata()

        async with open_stop_nursery(stop) as nursery:
            nursery.start_soon(self.serve)
