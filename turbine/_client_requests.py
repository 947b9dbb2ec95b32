"""Request correlation: each request carries an id, and the reply with that id wakes its caller."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, TypeVar

import trio

from ._client_outbox import Outbox
from ._errors import ConnectionFailed, RemoteProtocolError, RequestFailed
from .messages import Error, Frames, Message, Request
from .protocol import Connection

R = TypeVar("R", bound=Message)


class _Pending:
    __slots__ = ("event", "message", "parts")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: Message | None = None
        self.parts: list[Message] = []  # a reply's parts before its last (``more: true``)


class Requests:
    """The requests of one connection that wait for their replies.

    The broker refuses a put (which has no id) with an ``error`` that names
    no request; such refusals are kept (:meth:`defer`) and raised by the next
    request that completes, so ``flush`` reports them.

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
        self._pending: dict[int, _Pending] = {}
        self._deferred: list[RequestFailed] = []

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
        return (await self.call_parts(kind, reply, **fields))[-1]

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
        pending = self._pending[rid] = _Pending()
        try:
            mark = await self._outbox.send(self._proto.send(request))
            await pending.event.wait()
        finally:
            del self._pending[rid]
        msg = pending.message
        if msg is None:
            raise self._outbox.error or ConnectionFailed("the connection to the broker was closed")
        if type(msg) is Error:
            raise RequestFailed(msg.message, msg.code)
        if self._deferred:
            errors, self._deferred = self._deferred, []
            raise errors[0]
        parts = [*pending.parts, msg]
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
        pending = self._pending.get(rid)
        if pending is not None and type(msg) is Frames and msg.more:
            pending.parts.append(msg)  # the rest of the reply follows
        elif pending is not None:
            pending.message = msg
            pending.event.set()

    def defer(self, error: RequestFailed) -> None:
        """Keep a put's refusal for the next request to raise."""
        self._deferred.append(error)

    def fail(self) -> None:
        """Wake every waiting caller: the connection failed (the outbox holds why)."""
        for pending in self._pending.values():
            pending.event.set()
