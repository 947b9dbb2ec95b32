"""Request correlation: each request carries an id, and the reply with that id wakes its caller
(through :class:`turbine.correlate.Correlator`, the one reply-correlation helper)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any, TypeVar

from ._client_outbox import Outbox
from ._errors import ConnectionFailed, RemoteProtocolError, RequestFailed
from .correlate import Correlator, ReplyLost
from .messages import Error, Frames, Message, Request
from .protocol import Connection

R = TypeVar("R", bound=Message)

#: How many put refusals a connection remembers for the puts that wait on them.
REFUSALS_KEPT = 1024


def refused_path(error: RequestFailed) -> str | None:
    """The ``SOURCE/CHANNEL`` a put refusal names: its message starts
    ``put to PATH refused:`` (docs/protocol.rst); None for any other error."""
    text = str(error)
    if not text.startswith("put to "):
        return None
    path, sep, _ = text[len("put to ") :].partition(" refused:")
    return path if sep else None


class Requests:
    """The requests of one connection that wait for their replies.

    The broker refuses a put (which has no id) with an ``error`` that names
    no request; such refusals are kept (:meth:`defer`) and raised by the next
    request that completes, so ``flush`` reports them.  They are also
    remembered by the path they name, so that each of several tasks putting
    at once learns of its own put's refusal (:meth:`take_refusal`), not only
    the one whose ``flush`` came back first.

    Args:
        proto: the connection's protocol state, which checks and encodes requests.
        outbox: where requests are written (after the puts queued before them).
        ids: where ids come from (a reconnecting client keeps its ids across
            connections: subscription ids stay unique).
    """

    def __init__(self, proto: Connection, outbox: Outbox, ids: Iterator[int] | None = None) -> None:
        self._proto = proto
        self._outbox = outbox
        self._ids = itertools.count(1) if ids is None else ids
        self._replies: Correlator[int, list[Message]] = Correlator()  # every part of a reply
        self._parts: dict[int, list[Message]] = {}  # parts before the last (``more: true``)
        self._deferred: list[RequestFailed] = []
        self.refusals = 0  # put refusals received on this connection so far
        self._refused: deque[tuple[int, str, RequestFailed]] = deque(maxlen=REFUSALS_KEPT)

    @property
    def outstanding(self) -> bool:
        """Whether a request waits for its reply."""
        return len(self._replies) > 0

    def next_id(self) -> int:
        """A fresh id, unique on this connection (requests and subscriptions share them)."""
        return next(self._ids)

    async def call(self, kind: type[Request], reply: type[R], **fields: Any) -> R:
        """Send request ``kind(id=..., **fields)`` and wait for its reply, a ``reply`` message.

        Raises:
            RequestFailed: the broker refused it, or refused an earlier put.
            ConnectionFailed: the connection failed before the reply came.
            RemoteProtocolError: the broker answered with another kind of message.
        """
        return (await self._call(kind, reply, fields))[0][-1]  # (one frame less to resume)

    async def send(self, kind: type[Request], **fields: Any) -> None:
        """Send request ``kind(id=..., **fields)`` and wait for no reply (it is ignored):
        for the end of a connection, when its read loop may be gone already."""
        await self._outbox.send(self._proto.send(kind(id=next(self._ids), **fields)))

    async def call_marked(
        self, kind: type[Request], reply: type[R], **fields: Any
    ) -> tuple[R, int]:
        """Like :meth:`call`; also the spool number below which every put was written before it."""
        parts, mark = await self._call(kind, reply, fields)
        return parts[-1], mark

    async def call_parts(self, kind: type[Request], reply: type[R], **fields: Any) -> list[R]:
        """Like :meth:`call`, returning every part of the reply (a fetch may come in several).

        Raises:
            RequestFailed: the broker refused it, or refused an earlier put.
            ConnectionFailed: the connection failed before the reply came.
            RemoteProtocolError: the broker answered with another kind of message.
        """
        return (await self._call(kind, reply, fields))[0]

    async def _call(
        self, kind: type[Request], reply: type[R], fields: dict[str, Any]
    ) -> tuple[list[R], int]:
        if self._outbox.error is not None:
            raise self._outbox.error
        rid = next(self._ids)
        request = kind(id=rid, **fields)
        try:
            with self._replies.expect(rid) as pending:
                mark = await self._outbox.send(self._proto.send(request), then_waits=True)
                *parts, msg = await pending.wait()
        except ReplyLost as lost:
            raise self._outbox.error or ConnectionFailed(lost.reason) from None
        finally:
            self._parts.pop(rid, None)
        if type(msg) is Error:
            raise RequestFailed(msg.message, msg.code)
        if self._deferred:
            errors, self._deferred = self._deferred, []
            raise errors[0]
        parts.append(msg)
        for part in parts:
            if type(part) is not reply:
                raise RemoteProtocolError(
                    f"the broker answered {request.type!r} with {part.type!r}, not {reply.type!r}"
                )
        return parts, mark  # type: ignore[return-value]

    def resolve(self, rid: int, msg: Message) -> None:
        """Hand ``msg``, the reply (or a part of it) to request ``rid``, to its caller.

        A reply nobody waits for is ignored.
        """
        if type(msg) is Frames and msg.more:
            if rid in self._replies:
                self._parts.setdefault(rid, []).append(msg)  # the rest of the reply follows
        else:
            self._replies.deliver(rid, [*self._parts.pop(rid, ()), msg])

    def defer(self, error: RequestFailed) -> None:
        """Keep a put's refusal for the next request to raise."""
        self._deferred.append(error)
        self.refusals += 1
        path = refused_path(error)
        if path is not None:
            self._refused.append((self.refusals, path, error))

    def take_refusal(self, path: str, since: int) -> RequestFailed | None:
        """The refusal of a put to ``path`` that came after the first ``since``
        refusals, if any; it is not raised again by a later request."""
        for number, refused, error in self._refused:
            if number > since and refused == path:
                self._refused.remove((number, refused, error))
                if error in self._deferred:
                    self._deferred.remove(error)
                return error
        return None

    def fail(self) -> None:
        """Wake every waiting caller: the connection failed (the outbox holds why)."""
        self._replies.fail("the connection to the broker was closed")
        self._parts.clear()
