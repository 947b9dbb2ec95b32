"""The archive's store task: group commit of every source's queued writes.

:class:`GroupCommit` is mixed into :class:`~turbine.archive._archive.Archive`.
Its task takes everything queued since its last commit, writes each source's
ops in a worker thread (sources in parallel, their syncs overlapping), syncs
them under the policy, applies retention, and tells the waiting flushes;
failed writes stay queued and are retried.

A commit starts at once when someone waits for it (a flush, a read of what
is not yet written, a deletion) or :data:`COMMIT_BYTES` are queued; puts
alone wait up to :data:`COMMIT_DELAY_S` for more to join them.  Each commit
costs CPU beyond its bytes (the hand-off to the worker thread and back, the
sync, waking the waiters: for one 1 KB put, about 0.45 ms in the event loop
and as much in the writer thread, from 0.8 and 0.55 before the hand-off was
cut to one call each way; see :mod:`._worker`): measured on the
2-core benchmark machine, a gigabyte of 100 KB puts cost the broker 0.70 s
of CPU committed 4 MB at a time (what one commit after another gathered
while the disk kept up), 0.54 s 16 MB at a time, 0.43 s 64 MB at a time.
"""

from __future__ import annotations

import collections
import enum
import errno
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._log import SourceLog
from ._ops import Op, WriteFailed
from ._worker import in_thread

#: A source whose writes failed is retried this often (disk full: until space returns).
RETRY_S = 1.0
#: The write rate in the statistics is over about this many seconds.
RATE_WINDOW_S = 10.0
#: Payload bytes queued (all sources) that start a commit at once (at most an
#: eighth of ``max_backlog``: a producer slowed for the disk sees it catch up).
COMMIT_BYTES = 32 * 2**20
#: Seconds a put waits at most for others to join its commit when nothing waits for it.
COMMIT_DELAY_S = 0.05


class SyncPolicy(enum.Enum):
    """When :meth:`Archive.flush` returns (``docs/storage.rst`` says what each loses)."""

    #: On stable storage (``fdatasync`` returned) before the acknowledgement; group commit.
    ALWAYS = "always"
    #: Written to the OS before the acknowledgement; synced every ``sync_interval`` seconds.
    INTERVAL = "interval"
    #: Written to the OS before the acknowledgement; the OS writes it back when it likes.
    OS = "os"


def _positive(_inst: Any, attr: Any, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be positive, not {value}")


@attrs.frozen
class ArchiveConfig:
    """How the archive writes.

    Args:
        sync: when a flush is acknowledged.
        sync_interval: seconds between syncs under ``SyncPolicy.INTERVAL``.
        max_backlog: bytes of one source's puts waiting for the disk, beyond what
            its memory rings hold of them, past which :meth:`Archive.check_writable`
            refuses more of its puts (all sources together: four times as much).
            Long before that, at a quarter of it, the broker stops reading the
            connections that put to the source until the disk has caught up to an
            eighth (:meth:`Archive.behind`): a producer faster than the disk is
            slowed to its pace, not refused; a burst the rings hold is not slowed.
    """

    sync: SyncPolicy = attrs.field(default=SyncPolicy.ALWAYS, converter=SyncPolicy)
    sync_interval: float = attrs.field(default=1.0, validator=_positive)
    max_backlog: int = attrs.field(default=256 * 2**20, validator=_positive)


@attrs.define
class SourceQueue:
    """One source's writes waiting for the disk, and how far they got."""

    name: str
    directory: str
    log: SourceLog | None = None
    settings: dict[str, Any] = attrs.Factory(dict)  # for creating the log
    ops: list[Op] = attrs.Factory(list)
    sizes: list[int] = attrs.Factory(list)  # bytes of each op in ops
    appended: int = 0  # ops ever queued
    written: int = 0  # of those, written to the OS
    durable: int = 0  # of those, synced
    error: str | None = None
    last_sync: float | None = None
    sync_took: float = 0.0  # seconds its newest sync took (set by the worker thread)
    pending: int = 0  # payload bytes appended and not yet written (queued or being written)
    #: Of those, each channel's (what its memory ring may hold too: :class:`Backlog`);
    #: only channels with bytes waiting have an entry.
    channel_pending: dict[str, int] = attrs.Factory(dict)


def _why(name: str, exc: OSError) -> str:
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EIO: "an I/O error",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"cannot write the archive of {name}: {what}{where}; its puts are refused until "
        f"writing succeeds again (retried every {RETRY_S:g} s)"
    )


class GroupCommit:
    """The store task of an :class:`~turbine.archive._archive.Archive` (mixed in)."""

    config: ArchiveConfig
    clock: Callable[[], float]
    commits: int
    bytes_written: int
    syncs: int
    sync_seconds: float
    last_sync_seconds: float | None
    _queues: dict[str, SourceQueue]
    _dirty: dict[str, SourceQueue]
    _wake: trio.Event
    _gather: trio.CancelScope
    _gather_since: float | None
    _progress: trio.Event
    _queued: int
    _io: trio.Lock
    _doomed: list[SourceQueue]
    _deletions_done: int
    _written_at: collections.deque[tuple[float, int]]

    def _write_rate(self) -> float:
        now = self.clock()
        samples = self._written_at
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()
        since, before = samples[0]
        return (self.bytes_written - before) / (now - since) if now > since else 0.0

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _hurry(self) -> None:
        """Someone waits for the next commit: start it now."""
        self._wake.set()

    def _gathering(self) -> None:
        """The first op since the last commit is queued: commit it within COMMIT_DELAY_S."""
        self._gather_since = now = trio.current_time()
        if now + COMMIT_DELAY_S < self._gather.deadline:
            self._gather.deadline = now + COMMIT_DELAY_S  # (the loop waits: it wakes then)

    def _deadline(self) -> float:
        """When the commit loop commits, if no one hurries it."""
        if self._gather_since is not None:
            return self._gather_since + COMMIT_DELAY_S
        return trio.current_time() + RETRY_S if self._dirty else math.inf  # (failed: retried)

    async def _commit_loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # One wait per commit, not one for the first op and one for the delay:
        # the first op moves the wait's deadline instead of waking this task.
        task_status.started()
        while True:
            if not self._wake.is_set():  # someone waits, or enough is queued
                with trio.CancelScope(deadline=self._deadline()) as self._gather:
                    await self._wake.wait()
            self._wake = trio.Event()
            await self._commit_once()

    async def _commit_once(self) -> None:
        # Ops are taken and put back under the lock: order is kept.  Uncontended
        # (the usual case) it is taken without a checkpoint.
        try:
            self._io.acquire_nowait()
        except trio.WouldBlock:
            await self._io.acquire()
        try:
            if await self._commit_locked():
                self._progressed()
        finally:
            self._io.release()

    async def _commit_locked(self) -> bool:
        """Delete what is doomed, then write and sync every queued op: whether anything was done."""
        doomed, self._doomed = self._doomed, []
        for q in doomed:  # before any write: a source of that name may be new
            await trio.to_thread.run_sync(remove_files, q)
            self._deletions_done += 1
        if not self._dirty:  # (its sources deleted meanwhile)
            self._gather_since = None
            return bool(doomed)
        work = [(q, q.ops, q.sizes) for q in self._dirty.values()]
        self._dirty, self._gather_since = {}, None
        for q, _, _ in work:
            q.ops, q.sizes = [], []
        self._queued = 0
        sync = self.config.sync is SyncPolicy.ALWAYS
        now = self.clock()
        if len(work) == 1:  # one hand-off to a worker thread and back: its write and sync
            q, ops, _ = work[0]
            done = [await in_thread(_write, q, ops, sync, now)]
        else:
            done = [(0, None)] * len(work)

            async def write(i: int, q: SourceQueue, ops: list[Op]) -> None:
                done[i] = await in_thread(_write, q, ops, sync, now)

            async with trio.open_nursery() as nursery:  # sources in parallel: their syncs overlap
                for i, (q, ops, _) in enumerate(work):
                    nursery.start_soon(write, i, q, ops)
        self.commits += 1
        took = [
            q.sync_took for (q, _, _), (_, error) in zip(work, done, strict=True) if error is None
        ]
        if sync and took:  # the sources synced in parallel: the commit waited for the slowest
            self._synced(max(took))
        for (q, ops, sizes), (written, error) in zip(work, done, strict=True):
            q.written += written
            done_bytes = sum(sizes[:written])
            self.bytes_written += done_bytes
            q.pending -= done_bytes
            per_channel = q.channel_pending
            for op, size in zip(ops[:written], sizes[:written], strict=True):
                if size:  # (a put)
                    channel = op.channel  # type: ignore[union-attr]
                    left = per_channel[channel] - size
                    if left:
                        per_channel[channel] = left
                    else:  # all written: a channel gone keeps no entry
                        del per_channel[channel]
            if sync and error is None:
                q.durable = q.written
                q.last_sync = self.clock()
            q.error = error
            if written < len(ops):
                if self._queues.get(q.name) is q:  # (not deleted meanwhile) for the retry
                    q.ops, q.sizes = ops[written:] + q.ops, sizes[written:] + q.sizes
                    self._queued += sum(sizes[written:])
                    self._dirty[q.name] = q
        self._written_at.append((self.clock(), self.bytes_written))
        self._write_rate()  # (drops samples older than the window)
        return True

    async def _sync_loop(self) -> None:
        """Under ``SyncPolicy.INTERVAL``: sync whatever was written, every interval."""
        while True:
            await trio.sleep(self.config.sync_interval)
            dirty = [
                (q, q.written) for q in self._queues.values() if q.log and q.durable < q.written
            ]
            if not dirty:
                continue
            async with self._io:
                began = time.monotonic()
                errors = await trio.to_thread.run_sync(sync_all, [q.log for q, _ in dirty])
                self._synced(time.monotonic() - began)
            now = self.clock()
            for (q, written), error in zip(dirty, errors, strict=True):
                if error is None:
                    q.durable, q.last_sync = written, now
                else:
                    q.error = _why(q.name, error)
            self._progressed()

    def _synced(self, seconds: float) -> None:
        self.syncs += 1
        self.sync_seconds += seconds
        self.last_sync_seconds = seconds


def _write(q: SourceQueue, ops: list[Op], sync: bool, now: float) -> tuple[int, str | None]:
    """In a worker thread: write one source's ops, sync them, apply its retention.

    Returns how many ops were written, and why not all, if not.
    """
    try:
        if q.log is None:
            q.log = SourceLog.create(q.directory, q.settings, now)
        q.log.write(ops, now)
        if sync:
            began = time.monotonic()
            q.log.sync()
            q.sync_took = time.monotonic() - began
        s = q.log.settings
        q.log.evict(s.get("archive_bytes"), s.get("archive_age"), now)
    except WriteFailed as exc:
        return exc.written, _why(q.name, exc.error)
    except OSError as exc:  # creating the log, or the sync
        return (len(ops) if q.log is not None else 0), _why(q.name, exc)
    except (ValueError, KeyError) as exc:  # ops this archive cannot take: dropped, said
        return len(ops), f"the archive of {q.name} refused a write: {exc}"
    return len(ops), None


def sync_all(logs: list[Any]) -> list[OSError | None]:
    out: list[OSError | None] = []
    for log in logs:
        try:
            log.sync()
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


def remove_files(q: SourceQueue) -> int:
    freed = q.log.bytes if q.log is not None else 0
    if q.log is not None:
        q.log.close()
    if os.path.exists(q.directory):
        doomed = q.directory + ".deleting"
        os.replace(q.directory, doomed)
        shutil.rmtree(doomed)
    return freed
