"""A fetch: the selection a request names, as a store query, and its answer from
the stores (from memory at once, or in the connection's store task).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import attrs

from ._errors import RequestFailed
from ._selections import check_selection
from .router import Group, add_run
from .sources import Channel
from .store import AFTER, NEWEST, OLDEST, TIME, Query, Run


def fetch_query(
    newest: int | None,
    oldest: int | None,
    start: float | None,
    duration: float | None,
    after: int | None,
    max_frames: int,
) -> Query:
    """The store query of a fetch selection.

    Raises:
        RequestFailed: the selection is missing, doubled or negative.
    """
    try:
        kind = check_selection(newest=newest, oldest=oldest, start=start, after=after)
    except ValueError as exc:
        raise RequestFailed(str(exc), "request") from None
    if any(v is not None and v < 0 for v in (newest, oldest, duration, after)):
        raise RequestFailed("fetch counts and durations must not be negative", "request")
    value = {NEWEST: newest, OLDEST: oldest, TIME: start, AFTER: after}[kind]
    assert value is not None
    span = duration if duration is not None else float("inf")
    return Query(kind, value, span, max_frames)


@attrs.frozen
class PendingFetch:
    """A fetch of ``query`` from ``channels``; :meth:`run` it in a store task
    when :meth:`now` (memory) cannot answer.

    :meth:`run` reads every channel again (frames put meanwhile are included).
    Cancellation abandons it.
    """

    channels: list[Channel]
    query: Query

    def now(self) -> tuple[list[Group], list[Any]] | PendingFetch:
        """The answer from memory, or this fetch itself when a store needs its task."""
        runs = []
        for ch in self.channels:
            run = ch.store.read_now(self.query)
            if run is None:
                return self
            runs.append((ch, run))
        return _answer(runs)

    async def run(self) -> tuple[list[Group], list[Any]]:
        return _answer([(ch, await ch.store.read_later(self.query)) for ch in self.channels])

    async def parts(
        self, max_bytes: int
    ) -> AsyncGenerator[tuple[list[Group], list[Any], bool], None]:
        """The answer in parts of about ``max_bytes`` of payload, each read only when
        the one before was taken (:meth:`~turbine.store.ChannelStore.read_parts`):
        ``(groups, payloads, last)``, the last part maybe empty."""
        groups: list[Group] = []
        payloads: list[Any] = []
        size = 0
        for ch in self.channels:
            async with contextlib.aclosing(ch.store.read_parts(self.query, max_bytes)) as runs:
                async for run in runs:
                    add_run(groups, payloads, ch, run)
                    nbytes = sum(run.sizes)
                    size += nbytes
                    ch.source.frames_out += len(run.ts)
                    ch.source.bytes_out += nbytes
                    if size >= max_bytes:
                        yield groups, payloads, False
                        groups, payloads, size = [], [], 0
        yield groups, payloads, True


def _answer(runs: list[tuple[Channel, Run]]) -> tuple[list[Group], list[Any]]:
    """The groups and payloads of a fetch's answer, counted as sent from each source."""
    groups: list[Group] = []
    payloads: list[Any] = []
    for ch, run in runs:
        add_run(groups, payloads, ch, run)
        ch.source.frames_out += len(run.ts)
        ch.source.bytes_out += sum(run.sizes)
    return groups, payloads
