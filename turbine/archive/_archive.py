"""The archive of a data directory, for the event loop: queued writes, group commit, flush.

Appending never blocks: ops wait in a per-source queue, and one store task
(:class:`~turbine.archive._commit.GroupCommit`, mixed in) writes everything
that arrived since its last commit in a worker thread, then syncs it (group
commit: one ``fdatasync`` per source per commit, never one per frame).
:meth:`Archive.flush` is the only call that waits for the disk.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import trio

from ..store import Run
from . import _format as fmt
from ._backlog import Backlog
from ._commit import (
    COMMIT_BYTES,
    ArchiveConfig,
    GroupCommit,
    SourceQueue,
    SyncPolicy,
    remove_files,
    sync_all,
)
from ._datadir import ArchiveError, locked, source_dir_name, source_dirs
from ._log import SourceLog
from ._ops import Op, Put


class Archive(GroupCommit, Backlog):
    """Every source's archive under one data directory.  Use :func:`open_archive`."""

    def __init__(self, root: str, config: ArchiveConfig, clock: Callable[[], float]) -> None:
        self.root = root
        self.config = config
        self.clock = clock
        self._queues: dict[str, SourceQueue] = {}
        #: The sources with ops queued (the next commit's), in the order they came.
        self._dirty: dict[str, SourceQueue] = {}
        self.broken: dict[str, str] = {}  # source -> why its archive could not be opened
        self._wake = trio.Event()  # set when the next commit should start at once
        #: The commit loop's wait for the next commit; its deadline is when puts
        #: that nobody waits for are committed (at most COMMIT_DELAY_S after the first).
        self._gather = trio.CancelScope()
        self._gather_since: float | None = None  # when the first op since the last commit came
        self._queued = 0  # payload bytes queued and not yet taken by a commit, all sources
        self._commit_bytes = min(COMMIT_BYTES, config.max_backlog // 8)  # queued: commit now
        self._progress = trio.Event()
        self._io = trio.Lock()  # held while a worker thread writes or deletes
        self.commits = 0  # group commits so far
        self.bytes_written = 0  # payload bytes written so far (a status shows the rate)
        # Syncs so far, the seconds they took together, and the newest one's (real seconds).
        self.syncs, self.sync_seconds = 0, 0.0
        self.last_sync_seconds: float | None = None
        #: (time, bytes_written) at each commit of the last RATE_WINDOW_S, for the rate.
        self._written_at: collections.deque[tuple[float, int]] = collections.deque([(clock(), 0)])
        self._doomed: list[SourceQueue] = []  # sources deleted, their files not yet removed
        self._deletions_asked = self._deletions_done = 0

    # --- what is there

    @property
    def logs(self) -> dict[str, SourceLog]:
        """The recovered or created archive of each source (written so far)."""
        return {n: q.log for n, q in self._queues.items() if q.log is not None}

    def __contains__(self, name: str) -> bool:
        return name in self._queues

    def held(self) -> dict[str, int]:
        """Bytes on disk of each source's archive."""
        return {n: log.bytes for n, log in self.logs.items()}

    @property
    def bytes(self) -> int:
        """Bytes on disk, all sources."""
        return sum(self.held().values())

    def statistics(self) -> dict[str, Any]:
        """Bytes on disk, commits, payload bytes written and their rate (bytes per
        second, over about the last :data:`RATE_WINDOW_S`), the backlog, the last
        sync and how long syncs take, and each source's write error, damage found, and
        unreadable archive."""
        return {
            "path": self.root,
            "bytes": self.bytes,
            "commits": self.commits,
            "bytes_written": self.bytes_written,  # payload bytes since the archive opened
            "write_rate": self._write_rate(),
            "backlog": self.backlog,
            "last_sync": max((q.last_sync or 0 for q in self._queues.values()), default=0) or None,
            "syncs": self.syncs,
            "sync_seconds": self.sync_seconds,
            "last_sync_seconds": self.last_sync_seconds,
            "errors": {n: q.error for n, q in self._queues.items() if q.error},
            "damage": {
                n: [attrs.asdict(d) for d in log.damage]
                for n, log in self.logs.items()
                if log.damage
            },
            "broken": dict(self.broken),
        }

    # --- writing (never blocks)

    def create_source(self, name: str, settings: dict[str, Any]) -> None:
        """Archive ``name`` from now on (its directory is created by the next commit)."""
        if name not in self._queues:
            directory = os.path.join(self.root, "sources", source_dir_name(name))
            self._queues[name] = SourceQueue(name, directory, settings=dict(settings))

    def append(self, name: str, op: Op) -> None:
        """Queue ``op`` for ``name``'s archive; the store task writes it soon."""
        q = self._queues[name]
        q.ops.append(op)
        self._dirty[name] = q
        size = 0
        if isinstance(op, Put):
            size = sum(op.sizes)  # payload bytes
            q.channel_pending[op.channel] = q.channel_pending.get(op.channel, 0) + size
        q.sizes.append(size)
        q.pending += size
        q.appended += 1
        self._queued += size
        if self._gather_since is None:
            self._gathering()
        if self._queued >= self._commit_bytes:
            self._wake.set()

    async def flush(self, names: Iterable[str] | None = None) -> None:
        """Return once every op appended before the call is in the archive under
        the sync policy (on stable storage, by default).

        A source whose writes were failing is tried again at once.

        Raises:
            ArchiveError: a source's writes are failing (its ops stay queued and
                are written when the disk allows; flush again then).
        """
        await self._wait(names, synced=self.config.sync is SyncPolicy.ALWAYS)

    async def written(self, names: Iterable[str] | None = None) -> None:
        """Return once every op appended before the call is written (readable; maybe not synced).

        Raises:
            ArchiveError: as :meth:`flush`.
        """
        await self._wait(names, synced=False)

    async def _wait(self, names: Iterable[str] | None, synced: bool) -> None:
        if names is None:
            chosen = list(self._queues.values())
        else:
            chosen = [self._queues[n] for n in names if n in self._queues]
        # Nothing appended since the last durable (or written) point: answered at
        # once, no commit asked (a flush of each of a source's channels, a flush
        # again).  Every op of these sources is then past that point, whatever
        # its writes' error: an op that failed stays queued, not yet counted.
        attained = "durable" if synced else "written"
        targets = [(q, q.appended) for q in chosen if getattr(q, attained) < q.appended]
        deletions = self._deletions_asked
        if not targets and self._deletions_done >= deletions:
            return
        tried = self.commits + 1  # an error counts once a commit after this call has tried again
        self._hurry()
        while True:
            waiting = [(q, t) for q, t in targets if getattr(q, attained) < t]
            if not waiting and self._deletions_done >= deletions:
                return
            if self.commits >= tried:
                for q, _ in waiting:
                    if q.error:
                        raise ArchiveError(q.error)
            await self._progress.wait()

    async def changed(self) -> None:
        """Return at the end of the next commit or sync (for status watchers and tests)."""
        await self._progress.wait()

    # --- reading (in worker threads)

    async def read(
        self,
        name: str,
        channel: str,
        seq: int,
        max_frames: int,
        max_bytes: int | None = None,
        until_time: float | None = None,
    ) -> list[Run]:
        """Frames of ``name/channel`` written so far, from ``seq`` (see :meth:`SourceLog.read`)."""
        log = self.logs.get(name)
        if log is None or channel not in log.channels:
            return []
        return await trio.to_thread.run_sync(
            log.read, channel, seq, max_frames, max_bytes, until_time
        )

    async def time_range(
        self,
        name: str,
        channel: str,
        start: float,
        end: float,
        max_frames: int,
        max_bytes: int | None = None,
    ) -> list[Run]:
        """Frames stamped ``start <= t < end`` (see :meth:`SourceLog.time_range`)."""
        log = self.logs.get(name)
        if log is None or channel not in log.channels:
            return []
        return await trio.to_thread.run_sync(
            log.time_range, channel, start, end, max_frames, max_bytes
        )

    def delete_soon(self, name: str) -> None:
        """Forget ``name`` now (queued writes too); its files go with the next commit."""
        q = self._queues.pop(name, None)
        self._dirty.pop(name, None)
        if q is not None:
            self._doomed.append(q)
            self._deletions_asked += 1
            self._hurry()

    async def delete(self, name: str) -> int:
        """Delete ``name``'s archive (queued writes too); return the bytes freed."""
        q = self._queues.pop(name, None)
        self._dirty.pop(name, None)
        if q is None:
            return 0
        async with self._io:
            return await trio.to_thread.run_sync(remove_files, q)

    # --- opening and closing

    def _recover(self) -> None:
        for name, directory in source_dirs(self.root):
            try:
                log = SourceLog.open(directory)
            except FileNotFoundError:
                shutil.rmtree(directory)  # its creation was cut short: it never held a frame
                continue
            except (OSError, fmt.FormatError) as exc:
                self.broken[name] = f"{directory}: {exc}"
                continue
            self._queues[name] = SourceQueue(name, directory, log=log, settings=dict(log.settings))
        top = os.path.join(self.root, "sources")
        for entry in os.listdir(top):
            if entry.endswith(".deleting"):
                shutil.rmtree(os.path.join(top, entry), ignore_errors=True)

    def _close(self) -> None:
        for q in self._queues.values():
            if q.log is not None:
                q.log.close()


@contextlib.asynccontextmanager
async def open_archive(
    root: str | os.PathLike[str],
    config: ArchiveConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Archive]:
    """Lock and recover the data directory ``root``; run its store task while in use.

    On exit, what is queued is written and synced before the lock is released.

    Raises:
        ArchiveLocked: another broker holds ``root`` (named in the message).
        ArchiveError: ``root`` cannot be used (unwritable, newer format).
    """
    root = os.fspath(root)
    config = config or ArchiveConfig()
    with locked(root):
        archive = Archive(root, config, clock)
        await trio.to_thread.run_sync(archive._recover)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(archive._commit_loop)
                if config.sync is SyncPolicy.INTERVAL:
                    nursery.start_soon(archive._sync_loop)
                try:
                    yield archive
                finally:
                    with trio.CancelScope(shield=True):
                        await archive._commit_once()
                        logs = [q.log for q in archive._queues.values() if q.log]
                        await trio.to_thread.run_sync(sync_all, logs)
                    nursery.cancel_scope.cancel()
        finally:
            archive._close()
