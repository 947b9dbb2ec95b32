"""The archive of a data directory, for the event loop: queued writes, group commit, flush.

Appending never blocks: ops wait in a per-source queue, and one store task
writes everything that arrived since its last commit in a worker thread,
then syncs it (group commit: one ``fdatasync`` per source per commit, never
one per frame).  :meth:`Archive.flush` is the only call that waits for the disk.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import trio

from ..store import Run
from . import _format as fmt
from ._datadir import ArchiveError, locked, source_dir_name, source_dirs
from ._log import SourceLog
from ._ops import Op, Put, WriteFailed

#: A source whose writes failed is retried this often (disk full: until space returns).
RETRY_S = 1.0
#: The write rate in the statistics is over about this many seconds.
RATE_WINDOW_S = 10.0


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
        max_backlog: bytes of one source's puts waiting for the disk beyond which
            :meth:`Archive.check_writable` refuses more of its puts (all sources
            together: four times as much).  Long before that, at a quarter of it,
            the broker stops reading the connections that put to the source until
            the disk has caught up to an eighth (:meth:`Archive.behind`): a producer
            faster than the disk is slowed to its pace, not refused.
    """

    sync: SyncPolicy = attrs.field(default=SyncPolicy.ALWAYS, converter=SyncPolicy)
    sync_interval: float = attrs.field(default=1.0, validator=_positive)
    max_backlog: int = attrs.field(default=256 * 2**20, validator=_positive)


@attrs.define
class _Queue:
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


class Archive:
    """Every source's archive under one data directory.  Use :func:`open_archive`."""

    def __init__(self, root: str, config: ArchiveConfig, clock: Callable[[], float]) -> None:
        self.root = root
        self.config = config
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self.broken: dict[str, str] = {}  # source -> why its archive could not be opened
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._io = trio.Lock()  # held while a worker thread writes or deletes
        self.commits = 0  # group commits so far
        self.bytes_written = 0  # payload bytes written so far (a status shows the rate)
        # Syncs so far, the seconds they took together, and the newest one's (real seconds).
        self.syncs, self.sync_seconds = 0, 0.0
        self.last_sync_seconds: float | None = None
        #: (time, bytes_written) at each commit of the last RATE_WINDOW_S, for the rate.
        self._written_at: collections.deque[tuple[float, int]] = collections.deque([(clock(), 0)])
        self._doomed: list[_Queue] = []  # sources deleted, their files not yet removed
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
        sync and how long syncs take, and each source's write error, damage found, and unreadable archive."""
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
            self._queues[name] = _Queue(name, directory, settings=dict(settings))

    def check_writable(self, name: str) -> None:
        """Raises:
        ArchiveError: ``name``'s writes are failing, or the disk is too far behind the puts.
        """
        q = self._queues[name]
        if q.error:
            raise ArchiveError(q.error)
        limit = self.config.max_backlog
        if q.pending > limit:
            raise ArchiveError(
                f"the archive of {name} is {q.pending // 2**20} MiB behind its puts (the disk "
                "is slower than they come); its puts are refused until it catches up"
            )
        if self.backlog > 4 * limit:
            raise ArchiveError(
                f"the archive is {self.backlog // 2**20} MiB behind the puts (the disk is "
                "slower than they come); puts are refused until it catches up"
            )

    def _write_rate(self) -> float:
        now = self.clock()
        samples = self._written_at
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()
        since, before = samples[0]
        return (self.bytes_written - before) / (now - since) if now > since else 0.0

    def behind(self, names: Iterable[str]) -> bool:
        """Whether one of the sources ``names`` has more than a quarter of
        ``max_backlog`` waiting for the disk (and its writes are not failing:
        then its puts are refused with the reason instead)."""
        soft = self.config.max_backlog // 4
        queues = self._queues
        for name in names:
            q = queues.get(name)
            if q is not None and q.pending > soft and q.error is None:
                return True
        return False

    async def caught_up(self, names: Iterable[str]) -> None:
        """Return once none of the sources ``names`` has more than an eighth of
        ``max_backlog`` waiting (or its writes fail).  Cancellation: safe."""
        low = self.config.max_backlog // 8
        chosen = list(names)
        while True:
            queues = [self._queues.get(n) for n in chosen]
            if not any(q is not None and q.pending > low and q.error is None for q in queues):
                return
            await self._progress.wait()

    @property
    def backlog(self) -> int:
        """Payload bytes appended and not yet written, all sources."""
        return sum(q.pending for q in self._queues.values())

    def append(self, name: str, op: Op) -> None:
        """Queue ``op`` for ``name``'s archive; the store task writes it soon."""
        q = self._queues[name]
        q.ops.append(op)
        size = sum(op.sizes) if isinstance(op, Put) else 0  # payload bytes
        q.sizes.append(size)
        q.pending += size
        q.appended += 1
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
        targets = [(q, q.appended) for q in chosen if q.appended]
        tried = self.commits + 1  # an error counts once a commit after this call has tried again
        deletions = self._deletions_asked
        self._wake.set()
        while True:
            waiting = [(q, t) for q, t in targets if (q.durable if synced else q.written) < t]
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

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # --- the store task

    async def _commit_loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            failing = any(q.error for q in self._queues.values())
            with trio.move_on_after(RETRY_S if failing else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._commit_once()

    async def _commit_once(self) -> None:
        async with self._io:  # ops are taken and put back under the lock: order is kept
            doomed, self._doomed = self._doomed, []
            for q in doomed:  # before any write: a source of that name may be new
                await trio.to_thread.run_sync(_remove, q)
                self._deletions_done += 1
            work = [(q, q.ops, q.sizes) for q in self._queues.values() if q.ops]
            if not work:
                if doomed:
                    self._progressed()
                return
            for q, _, _ in work:
                q.ops, q.sizes = [], []
            sync = self.config.sync is SyncPolicy.ALWAYS
            now = self.clock()
            done: list[tuple[int, str | None]] = [(0, None)] * len(work)

            async def write(i: int, q: _Queue, ops: list[Op]) -> None:
                done[i] = await trio.to_thread.run_sync(_write, q, ops, sync, now)

            async with trio.open_nursery() as nursery:  # sources in parallel: their syncs overlap
                for i, (q, ops, _) in enumerate(work):
                    nursery.start_soon(write, i, q, ops)
            self.commits += 1
            took = [
                q.sync_took
                for (q, _, _), (_, error) in zip(work, done, strict=True)
                if error is None
            ]
            if sync and took:  # the sources synced in parallel: the commit waited for the slowest
                self._synced(max(took))
            for (q, ops, sizes), (written, error) in zip(work, done, strict=True):
                q.written += written
                done_bytes = sum(sizes[:written])
                self.bytes_written += done_bytes
                q.pending -= done_bytes
                if sync and error is None:
                    q.durable = q.written
                    q.last_sync = self.clock()
                q.error = error
                if written < len(ops):
                    if self._queues.get(q.name) is q:  # (not deleted meanwhile) for the retry
                        q.ops, q.sizes = ops[written:] + q.ops, sizes[written:] + q.sizes
            self._written_at.append((self.clock(), self.bytes_written))
            self._write_rate()  # (drops samples older than the window)
        self._progressed()

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
                errors = await trio.to_thread.run_sync(_sync_all, [q.log for q, _ in dirty])
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
        if q is not None:
            self._doomed.append(q)
            self._deletions_asked += 1
            self._wake.set()

    async def delete(self, name: str) -> int:
        """Delete ``name``'s archive (queued writes too); return the bytes freed."""
        q = self._queues.pop(name, None)
        if q is None:
            return 0
        async with self._io:
            return await trio.to_thread.run_sync(_remove, q)

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
            self._queues[name] = _Queue(name, directory, log=log, settings=dict(log.settings))
        top = os.path.join(self.root, "sources")
        for entry in os.listdir(top):
            if entry.endswith(".deleting"):
                shutil.rmtree(os.path.join(top, entry), ignore_errors=True)

    def _close(self) -> None:
        for q in self._queues.values():
            if q.log is not None:
                q.log.close()


def _write(q: _Queue, ops: list[Op], sync: bool, now: float) -> tuple[int, str | None]:
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


def _sync_all(logs: list[Any]) -> list[OSError | None]:
    out: list[OSError | None] = []
    for log in logs:
        try:
            log.sync()
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


def _remove(q: _Queue) -> int:
    freed = q.log.bytes if q.log is not None else 0
    if q.log is not None:
        q.log.close()
    if os.path.exists(q.directory):
        doomed = q.directory + ".deleting"
        os.replace(q.directory, doomed)
        shutil.rmtree(doomed)
    return freed


@contextlib.asynccontextmanager
async def open_archive(
    root: str | os.PathLike[str],
    config: ArchiveConfig = ArchiveConfig(),
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Archive]:
    """Lock and recover the data directory ``root``; run its store task while in use.

    On exit, what is queued is written and synced before the lock is released.

    Raises:
        ArchiveLocked: another broker holds ``root`` (named in the message).
        ArchiveError: ``root`` cannot be used (unwritable, newer format).
    """
    root = os.fspath(root)
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
                        await trio.to_thread.run_sync(_sync_all, logs)
                    nursery.cancel_scope.cancel()
        finally:
            archive._close()
