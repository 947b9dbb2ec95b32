"""What the broker does for the reading requests of one connection.

:class:`Reads` is mixed into :class:`~turbine.requests.Requests` (and so into
the broker's connection): ``subscribe`` adds a subscription to the router,
``unsubscribe`` removes it, ``fetch`` answers from memory at once or hands a
read of slower storage to the connection's store task (``storetask.py``) with
its reply's place kept, and ``list`` describes the sources; each sees only
what the connection may read.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

from . import messages as m
from ._constants import FETCH_PART_BYTES
from ._errors import RequestFailed
from ._selections import check_start
from .fetch import PendingFetch
from .groups import fetch_reply
from .hub import Hub
from .peer import Peer
from .router import Subscription
from .storetask import StoreReads


class HubView(Protocol):
    """What the reading requests need of the broker: its hub."""

    hub: Hub


class Reads:
    """The reading request handlers of one connection (mixed into it)."""

    broker: HubView
    peer: Peer
    subs: dict[int, Subscription]
    reads: StoreReads

    def queue(self, msg: m.Message, payloads: list[Any] | tuple[()] = ()) -> None:
        raise NotImplementedError

    def reply(self, msg: m.Request, result: Any = None) -> None:
        raise NotImplementedError

    def wake_soon(self) -> None:
        """Mark frames to send (a subscription's :class:`~turbine.router.Waker`)."""
        raise NotImplementedError

    def frames_go_now(self) -> bool:
        raise NotImplementedError

    def readable(self) -> Callable[[str], bool] | None:
        """What this connection may read (None: everything)."""
        access = self.peer.access
        return None if access is None else access.may_read

    def on_subscribe(self, msg: m.Subscribe) -> None:
        sid = msg.sub
        if sid in self.subs:
            raise RequestFailed(
                f"subscription id {sid} is already in use on this connection", "request"
            )
        resume = msg.resume
        if resume is not None and not all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in resume.items()
        ):
            why = f"resume must map channel paths to sequence numbers >= 1, not {resume!r}"
            raise RequestFailed(why[:300], "request")
        max_rate = msg.max_rate
        if max_rate is not None and not (msg.monitor and 0 < max_rate < math.inf):
            raise RequestFailed(
                f"max_rate must be a number of frames per second above 0, with monitor "
                f"(not {max_rate!r}{'' if msg.monitor else ' without monitor'})",
                "request",
            )
        sub = Subscription(
            sid,
            self,
            msg.pattern,
            check_start("now" if msg.start is None else msg.start),
            bool(msg.monitor),
            self.readable(),
            resume,
            0.0 if max_rate is None else 1.0 / max_rate,
        )
        hub = self.broker.hub
        hub.router.add(sub, hub.channels("*/*"))
        self.subs[sid] = sub
        cursors = sorted(sub.cursors.items(), key=lambda item: item[0].path)
        self.reply(
            msg,
            {
                "channels": [ch.path for ch, _ in cursors],
                "next": {ch.path: cursor.next_seq for ch, cursor in cursors},
            },
        )

    def on_unsubscribe(self, msg: m.Unsubscribe) -> None:
        sub = self.subs.pop(msg.sub, None)
        if sub is not None:
            self.broker.hub.router.remove(sub)
        self.reply(msg)

    def on_fetch(self, msg: m.Fetch) -> None:
        result = self.broker.hub.fetch(
            msg.pattern,
            newest=msg.newest,
            oldest=msg.oldest,
            start=msg.start,
            duration=msg.duration,
            after=msg.after,
            readable=self.readable(),
        )
        if isinstance(result, PendingFetch):
            pending = result

            async def fetched() -> AsyncGenerator[Sequence[tuple[m.Message, list[Any]]], None]:
                async for groups, payloads, last in pending.parts(FETCH_PART_BYTES):
                    yield fetch_reply(msg.id, groups, payloads, more=not last)

            self.reads.stream(fetched, msg.id)  # from slower storage, in its turn, in parts
            return
        groups, payloads = result
        for part, part_payloads in fetch_reply(msg.id, groups, payloads):
            self.queue(part, part_payloads)

    def on_summarize(self, msg: m.Summarize) -> None:
        hub = self.broker.hub
        self.reply(
            msg, hub.summarize(msg.pattern, msg.start, msg.duration, msg.columns, self.readable())
        )

    def on_list(self, msg: m.ListSources) -> None:
        access = self.peer.access
        sources = self.broker.hub.list_sources(msg.pattern, self.readable())
        if access is not None:
            for info in sources:
                info["access"] = access.codes(info["name"])
        self.reply(msg, sources)
