"""How far the archive is behind the puts: when a producer is slowed, when refused.

:class:`Backlog` is mixed into :class:`~turbine.archive._archive.Archive`.
What waits for the disk and the memory rings still hold costs no memory
beyond the rings' own (reserved as ``cache_bytes``); only what waits beyond
that counts against ``max_backlog`` (``docs/storage.rst``, the last
paragraphs of the sync policies' section).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from ._commit import ArchiveConfig, SourceQueue
from ._datadir import ArchiveError

#: Bytes of a source's frames that memory holds too, by source name.
InMemory = Callable[[str], int]


class Backlog:
    """The backlog checks of an :class:`~turbine.archive._archive.Archive` (mixed in)."""

    config: ArchiveConfig
    _queues: dict[str, SourceQueue]
    _progress: trio.Event

    def check_writable(self, name: str, in_memory: InMemory = lambda _name: 0) -> None:
        """``in_memory(source)``: bytes of a source's frames that memory holds too
        (its rings): the archive may be that much further behind (see :meth:`behind`).

        Raises:
            ArchiveError: ``name``'s writes are failing, or the disk is too far behind the puts.
        """
        q = self._queues[name]
        if q.error:
            raise ArchiveError(q.error)
        limit = self.config.max_backlog
        if q.pending > limit and q.pending - in_memory(name) > limit:
            raise ArchiveError(
                f"the archive of {name} is {q.pending // 2**20} MiB behind its puts (the disk "
                "is slower than they come); its puts are refused until it catches up"
            )
        backlog = self.backlog
        if backlog > 4 * limit and backlog - sum(map(in_memory, self._queues)) > 4 * limit:
            raise ArchiveError(
                f"the archive is {backlog // 2**20} MiB behind the puts (the disk is "
                "slower than they come); puts are refused until it catches up"
            )

    def behind(self, names: Iterable[str], in_memory: InMemory = lambda _name: 0) -> bool:
        """Whether one of the sources ``names`` has more than a quarter of
        ``max_backlog`` waiting for the disk beyond what memory holds of it
        (``in_memory(source)``: its frames in the rings; and its writes are not
        failing: then its puts are refused with the reason instead).

        Frames waiting for the disk that the rings still hold cost no memory
        beyond the rings': a burst may run ahead of the disk by as much as the
        rings take, and the disk catches up after it.
        """
        soft = self.config.max_backlog // 4
        queues = self._queues
        for name in names:
            q = queues.get(name)
            if q is not None and q.pending > soft and q.error is None:
                if q.pending - in_memory(name) > soft:
                    return True
        return False

    async def caught_up(self, names: Iterable[str], in_memory: InMemory = lambda _name: 0) -> None:
        """Return once none of the sources ``names`` has more than an eighth of
        ``max_backlog`` waiting beyond what memory holds of it (or its writes
        fail).  Cancellation: safe."""
        low = self.config.max_backlog // 8
        chosen = list(names)
        while True:
            queues = [self._queues.get(n) for n in chosen]
            if not any(
                q is not None
                and q.pending > low
                and q.error is None
                and q.pending - in_memory(q.name) > low
                for q in queues
            ):
                return
            await self._progress.wait()

    @property
    def backlog(self) -> int:
        """Payload bytes appended and not yet written, all sources."""
        return sum(q.pending for q in self._queues.values())
