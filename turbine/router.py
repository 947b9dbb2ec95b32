"""The interest table: which subscriptions want which channels.

Pure and synchronous.  A subscription holds one :class:`Cursor` per channel it
matches; the cursor is the next sequence number that subscriber wants, so the
channel's ring is the only buffer between producer and subscriber, and a slow
subscriber only lets its own cursors fall behind.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from .names import compile_pattern

if TYPE_CHECKING:
    from .hub import Channel

#: Where a new subscription starts on channels that already exist.
STARTS = ("now", "newest", "oldest")


class Cursor:
    """One subscription's read position on one channel."""

    __slots__ = ("sub", "channel", "next_seq")

    def __init__(self, sub: Subscription, channel: Channel, next_seq: int) -> None:
        self.sub = sub
        self.channel = channel
        self.next_seq = next_seq

    @property
    def pending(self) -> bool:
        return self.next_seq < self.channel.ring.next_seq


@attrs.define(eq=False)
class Subscription:
    """A pattern one client wants frames for.

    ``owner`` is opaque here (the broker's connection); ``monitor`` delivers
    only the newest frame of each channel.
    """

    id: int
    owner: Any
    pattern: str
    start: str | int = "now"
    monitor: bool = False
    regex: re.Pattern[str] = attrs.field(init=False)
    cursors: dict[Channel, Cursor] = attrs.field(init=False, factory=dict)
    delivered: int = 0
    missed: int = 0

    def __attrs_post_init__(self) -> None:
        self.regex = compile_pattern(self.pattern)

    def start_seq(self, channel: Channel, existed: bool) -> int:
        """Where this subscription starts on ``channel``.

        A channel created after the subscription starts at its first frame,
        whatever ``start`` says: nothing a new source sends is lost.
        """
        ring = channel.ring
        if not existed:
            return ring.first_seq
        if self.start == "now":
            return ring.next_seq
        if self.start == "newest":
            return max(ring.last_seq, ring.first_seq)
        if self.start == "oldest":
            return ring.first_seq
        return int(self.start)


def check_start(start: Any) -> str | int:
    if isinstance(start, bool) or not (start in STARTS or (isinstance(start, int) and start >= 1)):
        raise ValueError(
            f"start must be one of {', '.join(STARTS)} or a sequence number >= 1, not {start!r}"
        )
    return start


#: How a fetch selects frames: exactly one of these (``start`` may add ``duration``).
FETCH_SELECTIONS = ("newest", "oldest", "start", "after")


def check_selection(**given: Any) -> str:
    """The one fetch selection of ``given`` that is not None (see :data:`FETCH_SELECTIONS`).

    Raises:
        ValueError: none of them, or more than one.
    """
    chosen = [k for k in FETCH_SELECTIONS if given.get(k) is not None]
    if len(chosen) != 1:
        raise ValueError(
            "fetch takes exactly one of newest, oldest, start (with duration) or after"
        )
    return chosen[0]


class Router:
    """Every live subscription, and which channels each one reads."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def add(self, sub: Subscription, channels: list[Channel]) -> None:
        """Register ``sub`` and attach it to the matching channels that exist now."""
        self.subscriptions.append(sub)
        for ch in channels:
            if sub.regex.match(ch.path):
                self._attach(sub, ch, sub.start_seq(ch, existed=True))

    def remove(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)
        for ch, cur in sub.cursors.items():
            ch.cursors.remove(cur)
        sub.cursors.clear()

    def channel_created(self, ch: Channel) -> None:
        """Attach every matching subscription to a channel that did not exist before."""
        for sub in self.subscriptions:
            if sub.regex.match(ch.path):
                self._attach(sub, ch, sub.start_seq(ch, existed=False))

    def channel_removed(self, ch: Channel) -> None:
        for cur in ch.cursors:
            del cur.sub.cursors[ch]
        ch.cursors.clear()

    @staticmethod
    def _attach(sub: Subscription, ch: Channel, seq: int) -> None:
        cur = Cursor(sub, ch, seq)
        sub.cursors[ch] = cur
        ch.cursors.append(cur)
