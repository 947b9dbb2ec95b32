"""What a connection's subscriptions are sent: frames and gaps, in batches, fairly.

The writer of a connection (or the reader writing for it) pulls a batch with
:meth:`Delivery.pull`; the router says which frames each cursor is owed
(:func:`~turbine.router.collect`), this module turns them into messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from . import messages as m
from ._constants import DELIVERY_BATCH_BYTES, DELIVERY_BATCH_FRAMES
from .groups import split_frames
from .protocol import Connection, encode_frames
from .router import Cursor, Subscription, collect

_NO_SPAN: tuple[None, None] = (None, None)  # a gap whose time span the broker does not know

#: Starts reading a cursor's next frames from slower storage (the store task's prefetch).
Prefetch = Callable[[Cursor, int, int], None]


class Delivery:
    """The subscribed frames of one connection, one batch budget per pull.

    Subscriptions take turns being first, so one busy subscription cannot
    starve the others.  ``frames`` and ``gaps`` count what was sent.

    A rate-limited monitor's channel that has a newer frame before its
    interval is over waits: :attr:`wake_at` is the earliest time one may go
    (``clock``'s time; ``inf``: none waits), and ``on_wake_at`` is told each
    time it moves earlier, so that whoever pulls can pull again then.
    """

    def __init__(
        self,
        proto: Connection,
        subs: dict[int, Subscription],
        prefetch: Prefetch,
        clock: Callable[[], float],
        on_wake_at: Callable[[float], None],
    ) -> None:
        self._proto = proto
        self._subs = subs
        self._prefetch = prefetch
        self._clock = clock
        self._on_wake_at = on_wake_at
        self._rotation = 0
        self.frames = 0  # frames sent
        self.gaps = 0  # gap messages sent
        self.wake_at = math.inf

    def pull(self, buffers: list[Any]) -> bool:
        """Add pending subscribed frames (and gaps before them) to ``buffers``.

        Returns True if more frames are pending after this batch.
        """
        budget_frames, budget_bytes = DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES
        if self.wake_at != math.inf and self.wake_at <= self._clock():
            # Due now: the cursors below say when next (none, if the monitor went:
            # a wake time left in the past would end the writer's every sleep at once).
            self.wake_at = math.inf
        subs = list(self._subs.values())
        if not subs:
            return False
        more = False
        self._rotation = (self._rotation + 1) % len(subs)
        for sub in subs[self._rotation :] + subs[: self._rotation]:
            if budget_frames <= 0 or budget_bytes <= 0:
                return True  # more to send after this batch
            cursors: Iterable[Cursor] = sub.cursors.values()
            if sub.interval:
                cursors = self._due(sub)
            groups, payloads, gaps, n, size, cold = collect(cursors, budget_frames, budget_bytes)
            for cur in cold:
                self._prefetch(cur, budget_frames, budget_bytes)
            for cur, run in gaps:
                sub.missed += run.missed
                self.gaps += 1
                spans = cur.channel.drop_spans
                span = spans.get(run.first_seq, _NO_SPAN) if spans else _NO_SPAN
                buffers += self._proto.send(
                    m.GapReport(
                        sub=sub.id,
                        source=cur.channel.source_name,
                        channel=cur.channel.name,
                        missed=run.missed,
                        next_seq=run.first_seq,
                        first_time=span[0],
                        last_time=span[1],
                    )
                )
            if groups:
                for part, part_payloads in split_frames(groups, payloads, n, size):
                    buffers += encode_frames(sub.id, part, part_payloads)
                budget_frames -= n
                budget_bytes -= size
                sub.delivered += n
                self.frames += n
                for c in cursors:
                    if c.pending:
                        more = True
                        break
        return more

    def _due(self, sub: Subscription) -> list[Cursor]:
        """The cursors of a rate-limited monitor that may send their newest frame now;
        each that has to wait moves :attr:`wake_at`."""
        now = self._clock()
        due = []
        for cur in sub.cursors.values():
            if cur.loading or not cur.pending:
                continue
            if cur.due <= now:
                cur.due = now + sub.interval
                due.append(cur)
            elif cur.due < self.wake_at:
                self.wake_at = cur.due
                self._on_wake_at(cur.due)
        return due
