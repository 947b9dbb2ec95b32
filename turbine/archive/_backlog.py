"""How far the archive is behind the puts: when a producer is slowed, when refused.

:class:`Backlog` is mixed into :class:`~turbine.archive._archive.Archive`.
What waits for the disk and the memory rings still hold costs no memory
beyond the rings' own (reserved as ``cache_bytes``); only what waits beyond
that counts against ``max_backlog`` (``docs/storage.rst``, the last
paragraphs of the sync policies' section).  Channel by channel: what waits
for a channel's disk writes and what its ring holds are both its newest
frames, so the ring holds ``min(waiting, ring)`` of them, and a ring full
of frames already written is no room for another channel's queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from ._commit import ArchiveConfig, SourceQueue
from ._datadir import ArchiveError

#: Payload bytes of a channel's newest frames that its memory ring holds, by
#: source and channel name.
InMemory = Callable[[str, str], int]


def _nothing(_source: str, _channel: str) -> int:
    return 0


def beyond(q: SourceQueue, in_memory: InMemory) -> int:
    """Payload bytes of ``q``'s source waiting for the disk that only the write queue holds."""
    name = q.name
    return sum(max(0, n - in_memory(name, ch)) for ch, n in q.channel_pending.items() if n)


class Backlog:
    """The backlog checks of an :class:`~turbine.archive._archive.Archive` (mixed in)."""

    config: ArchiveConfig
    _queues: dict[str, SourceQueue]
    _progress: trio.Event

    def check_writable(self, name: str, in_memory: InMemory = _nothing) -> None:
        """``in_memory(source, channel)``: payload bytes of a channel's frames that
        its ring holds: the archive may be that much further behind (see :meth:`behind`).

        Raises:
            ArchiveError: ``name``'s writes are failing, or the disk is too far behind the puts.
        """
        q = self._queues[name]
        if q.error:
            raise ArchiveError(q.error)
        limit = self.config.max_backlog
        if q.pending > limit and beyond(q, in_memory) > limit:
            raise ArchiveError(
                f"the archive of {name} is {q.pending // 2**20} MiB behind its puts (the disk "
                "is slower than they come); its puts are refused until it catches up"
            )
        backlog = self.backlog
        queues = self._queues.values()
        if backlog > 4 * limit and sum(beyond(q, in_memory) for q in queues) > 4 * limit:
            raise ArchiveError(
                f"the archive is {backlog // 2**20} MiB behind the puts (the disk is "
                "slower than they come); puts are refused until it catches up"
            )

    def behind(self, names: Iterable[str], in_memory: InMemory = _nothing) -> bool:
        """Whether one of the sources ``names`` has more than a quarter of
        ``max_backlog`` waiting for the disk beyond what memory holds of it
        (``in_memory(source, channel)``: a channel's frames in its ring; and its
        writes are not failing: then its puts are refused with the reason instead).

        Frames waiting for the disk that the rings still hold cost no memory
        beyond the rings': a burst may run ahead of the disk by as much as the
        rings take, and the disk catches up after it.
        """
        soft = self.config.max_backlog // 4
        queues = self._queues
        for name in names:
            q = queues.get(name)
            if q is not None and q.pending > soft and q.error is None:
                if beyond(q, in_memory) > soft:
                    return True
        return False

    async def caught_up(self, names: Iterable[str], in_memory: InMemory = _nothing) -> None:
        """Return once none of the sources ``names`` has more than an eighth of
        ``max_backlog`` waiting beyond what memory holds of it (or its writes
        fail).  Cancellation: safe."""
        low = self.config.max_backlog // 8
        chosen = list(names)
        while True:
            queues = [self._queues.get(n) for n in chosen]
            if not any(
                q is not None and q.pending > low and q.error is None and beyond(q, in_memory) > low
                for q in queues
            ):
                return
            await self._progress.wait()

    @property
    def backlog(self) -> int:
        """Payload bytes appended and not yet written, all sources."""
        return sum(q.pending for q in self._queues.values())
