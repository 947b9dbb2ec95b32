"""A reconnecting client's flushes: each asks its broker to acknowledge the spooled puts.

Loaded only by a client made with ``reconnect=True`` (as its spool is).
Flushes cover each other: the newest flush in flight is kept
(:class:`FlushInFlight`), a flush whose puts it covers waits for its answer
(and raises the refusal it brought) instead of sending its own, and one
covering later puts sends one more.  So a put and its flush cost the broker
one request, as without ``reconnect``, also while :meth:`Flushes.run`
flushes what the spool holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from . import messages as m
from ._errors import BrokerUnavailable, ConnectionFailed, LocalProtocolError, TurbineError

if TYPE_CHECKING:
    from ._client_outbox import Outbox
    from ._client_requests import Requests
    from ._client_spool import Spool


class FlushInFlight:
    """A flush sent and not yet answered."""

    __slots__ = ("answered", "covers", "error")

    def __init__(self, covers: int) -> None:
        #: The spool number below which it covers every put (more if puts came meanwhile).
        self.covers = covers
        self.answered = trio.Event()
        #: Why it failed, other than a lost connection (a refused put), once answered.
        self.error: TurbineError | None = None


class Flushes:
    """The flushes of one reconnecting client, across its connections.

    Args:
        spool: the client's spool: what a flush covers, and forgets once answered.
        outbox: where the queued puts are taken from (written with the flush).
        address: the broker's address, for error messages.
        connected: waits while the broker is away; returns the current
            connection's requests.
        try_again: whether a flush that failed with this error on that
            connection is sent again (a lost link while reconnecting).
    """

    def __init__(
        self,
        spool: Spool,
        outbox: Outbox,
        address: str,
        connected: Callable[[], Awaitable[Requests]],
        try_again: Callable[[TurbineError, Requests], bool],
    ) -> None:
        self._spool = spool
        self._outbox = outbox
        self._address = address
        self._connected = connected
        self._try_again = try_again
        #: The newest flush in flight: flushes it covers wait for its answer.
        self._newest: FlushInFlight | None = None
        self._kept = trio.Event()  # the spool kept an entry that no flush covers
        self._staging = False  # a flush takes the queued puts: it covers what is kept now
        spool.on_kept = self._on_kept

    def _on_kept(self) -> None:
        if not self._staging:
            self._kept.set()

    async def run(self) -> None:
        """Flush whenever puts wait for their acknowledgement, so the spool does not grow.

        Returns once the client failed or was closed.
        """
        while True:
            while self._spool.end == self._spool.base:  # nothing unacknowledged
                await self._kept.wait()
                self._kept = trio.Event()
            try:
                await self.flush()
            except TurbineError:
                if self._outbox.error is not None:
                    return  # failed or closed: the spool stays as it is (and a retry would spin)

    # The API is flush(timeout=...): the timeout raises BrokerUnavailable, not TooSlowError.
    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once the broker acknowledged every put spooled or queued so far.

        During an outage wait for the broker to come back, at most ``timeout``
        seconds (None: no limit).

        Raises:
            BrokerUnavailable: ``timeout`` passed first; the frames stay spooled.
            RequestFailed: the broker refused an earlier put (says which and why).
        """
        spool = self._spool
        self._staging = True  # (run need not wake for what this flush covers)
        try:
            await self._outbox.stage()  # the frames queued so far go out with the flush
        finally:
            self._staging = False
        target = spool.end
        try:
            if timeout is None:  # no cancel scope: a put + flush of every request makes one
                await self._until_acknowledged(target)
                return
            with trio.move_on_after(timeout):
                await self._until_acknowledged(target)
                return
        finally:
            if spool.base < target:
                self._kept.set()  # not all acknowledged: run flushes them
        raise BrokerUnavailable(
            f"the broker at {self._address} did not acknowledge within {timeout} s; "
            f"{spool.frames} frames ({spool.bytes} bytes) are still spooled"
        )

    async def _until_acknowledged(self, target: int) -> None:
        """Return once every put below spool number ``target`` is acknowledged."""
        spool = self._spool
        while spool.base < target:
            requests = await self._connected()
            newest = self._newest
            if spool.base >= target:
                break  # a flush answered meanwhile covered them
            if newest is not None and newest.covers >= target:
                await newest.answered.wait()  # that one covers these puts
                if newest.error is not None:
                    raise newest.error
                continue
            await self._send(requests)

    async def _send(self, requests: Requests) -> None:
        """Send one flush covering every put spooled so far; on its answer, forget them.

        It is the newest in flight until answered.  A lost connection returns
        (the caller tries again once reconnected).
        """
        flushing = self._newest = FlushInFlight(self._spool.end)
        try:
            _, mark = await requests.call_marked(m.Flush, m.Ok)
            self._spool.acknowledged(mark)
        except TurbineError as exc:
            lost = isinstance(exc, ConnectionFailed | LocalProtocolError)
            if lost and self._try_again(exc, requests):
                return
            flushing.error = exc  # the flushes waiting for this one raise it too
            raise
        finally:
            if self._newest is flushing:
                self._newest = None
            flushing.answered.set()
