"""What a connection's subscriptions are sent: frames and gaps, in batches, fairly.

The writer of a connection (or the reader writing for it) pulls a batch with
:meth:`Delivery.pull`; the router says which frames each cursor is owed
(:func:`~turbine.router.collect`), this module turns them into messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import messages as m
from ._constants import DELIVERY_BATCH_BYTES, DELIVERY_BATCH_FRAMES
from .groups import split_frames
from .protocol import Connection, encode_message
from .router import Cursor, Subscription, collect

#: Starts reading a cursor's next frames from slower storage (the store task's prefetch).
Prefetch = Callable[[Cursor, int, int], None]


class Delivery:
    """The subscribed frames of one connection, one batch budget per pull.

    Subscriptions take turns being first, so one busy subscription cannot
    starve the others.  ``frames`` and ``gaps`` count what was sent.
    """

    def __init__(
        self, proto: Connection, subs: dict[int, Subscription], prefetch: Prefetch
    ) -> None:
        self._proto = proto
        self._subs = subs
        self._prefetch = prefetch
        self._rotation = 0
        self.frames = 0  # frames sent
        self.gaps = 0  # gap messages sent

    def pull(self, buffers: list[Any]) -> bool:
        """Add pending subscribed frames (and gaps before them) to ``buffers``.

        Returns True if more frames are pending after this batch.
        """
        budget_frames, budget_bytes = DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES
        subs = list(self._subs.values())
        if not subs:
            return False
        more = False
        self._rotation = (self._rotation + 1) % len(subs)
        for sub in subs[self._rotation :] + subs[: self._rotation]:
            if budget_frames <= 0 or budget_bytes <= 0:
                return True  # more to send after this batch
            groups, payloads, gaps, n, size, cold = collect(
                sub.cursors.values(), budget_frames, budget_bytes
            )
            for cur in cold:
                self._prefetch(cur, budget_frames, budget_bytes)
            for cur, run in gaps:
                sub.missed += run.missed
                self.gaps += 1
                buffers += self._proto.send(
                    m.GapReport(
                        sub=sub.id,
                        source=cur.channel.source_name,
                        channel=cur.channel.name,
                        missed=run.missed,
                        next_seq=run.first_seq,
                    )
                )
            if groups:
                for part, part_payloads in split_frames(groups, payloads, n, size):
                    buffers += encode_message(m.Frames(sub=sub.id, groups=part), part_payloads)
                budget_frames -= n
                budget_bytes -= size
                sub.delivered += n
                self.frames += n
                for c in sub.cursors.values():
                    if c.pending:
                        more = True
                        break
        return more
