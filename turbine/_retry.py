"""Capped exponential backoff, the one schedule every retry loop follows."""

from __future__ import annotations

#: Doubling stops here: 2**60 times any first delay is past every cap.
_MAX_DOUBLINGS = 60


def capped_delay(first: float, most: float, attempt: int) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): ``first`` doubling per attempt, at most ``most``."""
    return min(first * 2 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS), most)


class Backoff:
    """Counts failures in a row; :meth:`next_delay` says how long to wait before the next try.

    ``reset()`` once the thing retried works again (frames flow, a session
    opened), not merely when a connection is accepted.
    """

    __slots__ = ("first", "most", "failures")

    def __init__(self, first: float, most: float, failures: int = 0) -> None:
        self.first = first
        self.most = most
        self.failures = failures

    def next_delay(self) -> float:
        """Count one more failure; the wait before trying again."""
        self.failures += 1
        return capped_delay(self.first, self.most, self.failures)

    def reset(self) -> None:
        """The next failure waits ``first`` again."""
        self.failures = 0
