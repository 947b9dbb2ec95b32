"""The half of a client's :class:`~turbine._client_link.Link` that loses its
connections and makes them again: a connection silent while it waits is given
up (turbine/_liveness.py); a reconnecting client connects again, with capped
backoff, and resumes (its sources, subscriptions and spool)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import trio

from . import messages as m
from ._constants import RECLAIM_GRACE_S
from ._errors import ConnectionFailed, RequestFailed, TurbineError

if TYPE_CHECKING:
    from typing import Protocol

    from ._client_handles import Feed, Subscription
    from ._client_outbox import Outbox
    from ._client_reader import Reader
    from ._client_requests import Requests
    from ._client_spool import Spool
    from .protocol import Connection

    class Dials(Protocol):
        """What a connection is made with (``turbine._client_link.Dialer``)."""

        async def dial(
            self, *, reconnect: bool = False
        ) -> tuple[trio.SocketStream, Connection, m.Hello, Any, Any]: ...


log = logging.getLogger("turbine.client")

#: Reconnect backoff of ``reconnect=True``: first wait and cap, in seconds (a
#: short cap: back within about a second of the broker or the link).
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 0.5


class Lifeline:
    """The half of :class:`Link` (mixed into it) that loses connections and makes
    them again: it gives up each connection that stays silent while it waits
    (turbine/_liveness.py), and, reconnecting, connects again and resumes."""

    address: str
    reconnects: int
    spool: Spool | None
    _closed: bool
    _up: trio.Event
    _down: trio.Event
    _requests: Requests
    _stream: trio.SocketStream
    _outbox: Outbox
    _feeds: dict[int, Feed]
    _held: dict[str, dict[str, Any]]
    _subs: dict[int, Subscription]
    _dialer: Dials

    def _lost(self, requests: Requests, error: TurbineError, quiet: bool = False) -> None:
        raise NotImplementedError

    def _attach(
        self, stream: trio.SocketStream, proto: Connection, hello: m.Hello, login: Any, sock: Any
    ) -> Reader:
        raise NotImplementedError

    async def _watch(self, limit: float) -> None:
        """Give up each connection silent ``limit`` s while it waits (turbine/_liveness.py)."""
        from ._liveness import watch

        while not self._closed and self._outbox.error is None:
            await self._up.wait()
            requests, stream = self._requests, self._stream
            silent = await watch(
                limit,
                stream.socket,
                functools.partial(self._waits, requests),
                functools.partial(requests.send, m.Time),
            )
            if silent is not None and not self._closed:
                why = f"nothing heard from {self.address} for {silent:.1f} s: the link is down"
                self._lost(requests, ConnectionFailed(why))
                await trio.aclose_forcefully(stream)  # its read loop ends

    def _waits(self, requests: Requests) -> bool | None:
        """Whether connection ``requests`` waits for something; None: it is over."""
        if requests is not self._requests or not self._up.is_set() or self._closed:
            return None
        if self._outbox.error is not None:
            return None  # failed for good (not reconnecting)
        return bool(self._feeds) or requests.outstanding

    async def _keep_connected(self, nursery: trio.Nursery) -> None:
        """Whenever the connection is lost: connect again, with capped backoff, and resume."""
        from ._retry import Backoff

        backoff = Backoff(RECONNECT_FIRST_S, RECONNECT_MAX_S)
        while True:
            await self._down.wait()
            await trio.aclose_forcefully(self._stream)
            held_since: float | None = None  # a source first refused as held, this outage
            while True:
                stream = None
                try:
                    stream, proto, hello, login, sock = await self._dialer.dial(reconnect=True)
                    reader = self._attach(stream, proto, hello, login, sock)
                    nursery.start_soon(reader.run)
                    waited = 0.0 if held_since is None else trio.current_time() - held_since
                    await self._resume(patient=waited < RECLAIM_GRACE_S)
                except TurbineError as exc:  # away still, or refused (logged): try again
                    held = isinstance(exc, RequestFailed) and exc.code == "held"
                    if held and held_since is None:
                        held_since = trio.current_time()
                    if isinstance(exc, ConnectionFailed) or held:
                        log.debug("reconnecting to %s: %s", self.address, exc)
                    else:
                        log.warning("reconnecting to %s: %s", self.address, exc)
                    self._lost(self._requests, exc, quiet=True)  # (logged above)
                    if stream is not None:
                        await trio.aclose_forcefully(stream)  # its read loop ends
                    await trio.sleep(backoff.next_delay())
                    continue
                break
            backoff.reset()
            self.reconnects += 1
            log.warning("reconnected to %s", self.address)
            self._up.set()

    async def _resume(self, patient: bool = False) -> None:
        """On a new connection: hold the sources again, subscribe again, replay the spool.

        Raises:
            RequestFailed: (``patient``) a source is held (code ``held``): by the
                connection that was lost, maybe, which the broker has not seen
                end yet; the caller tries again shortly.  Not ``patient``, such
                a source is given up (logged).
        """
        requests = self._requests
        assert self.spool is not None
        for fields in list(self._held.values()):
            try:
                ok = await requests.call(
                    m.OpenSource, m.Ok, **fields, producers=[self._outbox.producer]
                )
            except RequestFailed as exc:
                if exc.code == "held" and patient:
                    raise
                log.warning("could not take source %s back: %s", fields["source"], exc)
                continue
            result = ok.result if isinstance(ok.result, dict) else {}
            self._outbox.opened(fields["source"], result)
            self.spool.settle(fields["source"], result.get("producers"))
        for sub in list(self._subs.values()):
            await requests.call(m.Subscribe, m.Ok, **sub.resume_fields())
        await self._outbox.replay()
        self._outbox.tell_gaps()  # those the replay carried none of
