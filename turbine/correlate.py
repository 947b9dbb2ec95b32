"""Reply correlation: hand each reply to the request waiting for it.

A request says what it waits for with :meth:`Correlator.expect` and awaits
the :class:`Pending` it gets back; whatever reads the replies hands each one
over with :meth:`Correlator.deliver` (replies that carry the key of their
request, like a command id) or :meth:`Correlator.deliver_next` (in-order
protocols, where a reply answers the oldest request still waiting). When the
connection that carries the replies ends, :meth:`Correlator.fail` wakes every
waiter with :class:`ReplyLost`; :meth:`Correlator.close` also refuses every
later request.

Only :meth:`Pending.wait` blocks; everything else is synchronous, so the
reader never waits on a slow requester::

    replies: Correlator[str, Reply] = Correlator()

    # the requester
    with replies.expect(cmd.id) as pending:
        await send(cmd)
        reply = await pending.wait()

    # the reader
    for reply in incoming:
        replies.deliver(reply.id, reply)  # False: nobody waits (late, or not ours)

Leaving the ``with`` block withdraws the request, answered or not, so a reply
that comes after its requester gave up (cancelled, timed out) is dropped.
"""

from __future__ import annotations

from types import TracebackType
from typing import Generic, TypeVar

import trio

from ._errors import TurbineError

__all__ = ["Correlator", "Pending", "ReplyLost"]

K = TypeVar("K")
T = TypeVar("T")


class ReplyLost(TurbineError):
    """The reply will not come: what carried it ended. ``reason`` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Pending(Generic[K, T]):
    """One request waiting for its reply; made by :meth:`Correlator.expect`.

    Use it as a context manager: leaving the block withdraws the request.
    """

    __slots__ = ("_event", "_lost", "_owner", "_reply", "key")

    def __init__(self, owner: Correlator[K, T], key: K) -> None:
        self._owner = owner
        self.key = key
        self._event = trio.Event()
        self._reply: T | None = None
        self._lost: str | None = None

    @property
    def done(self) -> bool:
        """Whether the reply came or was lost (then :meth:`result` does not raise WouldBlock)."""
        return self._event.is_set()

    def result(self) -> T:
        """The reply, without waiting.

        Raises:
            trio.WouldBlock: it has not come yet.
            ReplyLost: it will not come.
        """
        if not self._event.is_set():
            raise trio.WouldBlock
        if self._lost is not None:
            raise ReplyLost(self._lost)
        return self._reply  # type: ignore[return-value]

    async def wait(self) -> T:
        """Wait for the reply and return it. Sets no deadline of its own.

        Raises:
            ReplyLost: it will not come (the connection carrying it ended).
        """
        await self._event.wait()
        return self.result()

    def _settle(self, reply: T | None, lost: str | None) -> None:
        self._reply, self._lost = reply, lost
        self._event.set()

    def __enter__(self) -> Pending[K, T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._withdraw(self)


class Correlator(Generic[K, T]):
    """The requests of one reply stream that wait for their replies, by key.

    Keys are unique among the waiting requests; requests are kept in the
    order they were made (which :meth:`deliver_next` relies on).
    """

    def __init__(self) -> None:
        self._waiting: dict[K, Pending[K, T]] = {}
        self._closed: str | None = None

    def __len__(self) -> int:
        """How many requests are waiting."""
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        """Whether a request with ``key`` waits for its reply."""
        return key in self._waiting

    @property
    def closed(self) -> str | None:
        """Why :meth:`close` was called, or ``None`` while open."""
        return self._closed

    def expect(self, key: K) -> Pending[K, T]:
        """Register a request waiting for the reply with ``key``.

        Raises:
            ValueError: a request with that key is already waiting.
            ReplyLost: the correlator was closed; no reply will come.
        """
        if self._closed is not None:
            raise ReplyLost(self._closed)
        if key in self._waiting:
            raise ValueError(f"a request with key {key!r} is already waiting for its reply")
        pending = self._waiting[key] = Pending(self, key)
        return pending

    def deliver(self, key: K, reply: T) -> bool:
        """Hand ``reply`` to the request waiting with ``key``.

        Returns False (and drops the reply) if none waits: it gave up, was
        answered already, or the reply is not for this correlator.
        """
        pending = self._waiting.pop(key, None)
        if pending is None:
            return False
        pending._settle(reply, None)
        return True

    def deliver_next(self, reply: T) -> bool:
        """Hand ``reply`` to the oldest waiting request (in-order protocols).

        Returns False (and drops the reply) if none waits.
        """
        if not self._waiting:
            return False
        return self.deliver(next(iter(self._waiting)), reply)

    def fail(self, reason: str) -> None:
        """Wake every waiting request with :class:`ReplyLost`; later ones may still be made."""
        waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            pending._settle(None, reason)

    def close(self, reason: str) -> None:
        """:meth:`fail` the waiting requests and refuse every later :meth:`expect`."""
        self._closed = self._closed or reason
        self.fail(reason)

    def _withdraw(self, pending: Pending[K, T]) -> None:
        if self._waiting.get(pending.key) is pending:
            del self._waiting[pending.key]
