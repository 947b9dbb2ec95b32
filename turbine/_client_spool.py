"""Puts a reconnecting client keeps until the broker has acknowledged them."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._blocking import run_blocking
from ._clock import wall_time
from ._spool_file import SPOOL_SUFFIX, SpoolFile, left_spool_files
from ._values import replace
from .messages import Put
from .protocol import encode_message

log = logging.getLogger("turbine.client")


@attrs.define(slots=True)
class _Entry:
    """One spooled put: in memory (``data``) or on ``file`` at ``offset``."""

    put: Put
    data: list[Any] | None
    nbytes: int
    added: float  # when it was spooled (the time span of frames without their own timestamp)
    file: SpoolFile | None = None
    offset: int = 0
    length: int = 0
    damaged: bool = False  # its record on file did not read back whole: its frames are lost
    recovered: bool = False  # left by an earlier run (which may have had it stored)
    dropped: bool = False  # dropped while newer ones stay: kept as a placeholder, not counted
    #: The spool file with a note of this entry (in memory, spooled during an outage).
    noted: SpoolFile | None = None
    #: Left by an earlier run as a note only: its frames died with that run's memory.
    note: bool = False

    def release(self) -> None:
        """Its record and note on file are no longer needed."""
        if self.file is not None:
            self.file.release()
        if self.noted is not None:
            self.noted.release()
            self.noted = None


@attrs.define
class _Skip:
    """Frames of one channel dropped before they were ever sent, and their time span."""

    frames: int = 0
    first_time: float | None = None
    last_time: float | None = None
    #: The number of the newest entry dropped: only a put after it may carry the gap.
    after: int = -1

    def add(self, frames: int, first: float | None, last: float | None) -> None:
        self.frames += frames
        if first is not None:
            self.first_time = first if self.first_time is None else min(self.first_time, first)
        if last is not None:
            self.last_time = last if self.last_time is None else max(self.last_time, last)


class Skips:
    """Frames dropped before they were ever written, per channel, until a later
    put of their channel carries them to the broker as a gap (``skipped``)."""

    def __init__(self) -> None:
        #: Per (source, channel); empty when no put has a gap to carry.
        self.pending: dict[tuple[str, str], _Skip] = {}

    def add(self, entry: _Entry, number: int) -> None:
        """Readers are to be told of ``entry``'s frames (and those it told of) as
        a gap, by a put after entry ``number`` (``entry``'s)."""
        put = entry.put
        skip = self.pending.setdefault((put.source, put.channel), _Skip())
        skip.after = max(skip.after, number)
        stamped = [t for t in put.ts if t is not None]
        first, last = (min(stamped), max(stamped)) if stamped else (entry.added, entry.added)
        skip.add(len(put.sizes), first, last)
        if put.skipped:
            skip.add(put.skipped, put.skipped_first_time, put.skipped_last_time)

    def carried(self, put: Put, number: int) -> Put:
        """``put`` (entry ``number``), carrying the gap its channel has to tell, if any."""
        key = (put.source, put.channel)
        skip = self.pending.get(key)
        if skip is None or skip.after >= number:
            return put
        del self.pending[key]
        skip.add(put.skipped or 0, put.skipped_first_time, put.skipped_last_time)
        return replace(
            put,
            skipped=skip.frames,
            skipped_first_time=skip.first_time,
            skipped_last_time=skip.last_time,
        )


def stored(put: Put, last: dict[str, int] | None) -> bool | None:
    """Whether the broker stored ``put``, by ``last``: each producer's last put number
    the source holds (``open_source``'s ``producers``); None: it did not say."""
    if last is None:
        return None
    pseq = last.get(put.producer) if put.producer is not None else None
    return pseq is not None and put.pseq is not None and put.pseq <= pseq


class InDoubt:
    """Puts written on a connection and dropped (the spool full) before the broker
    acknowledged them: a broker that hangs with its connection open takes every
    put into the socket.  Stored if a flush answered on that connection covers
    them; otherwise the broker says, when their source is reopened, which it holds."""

    def __init__(self) -> None:
        #: (the connection they were written on, their entry number, the entry), oldest first.
        self._puts: collections.deque[tuple[int, int, _Entry]] = collections.deque()
        self.connection = 0  # counts the client's connections

    @property
    def frames(self) -> int:
        return sum(len(e.put.sizes) for _, _, e in self._puts)

    def add(self, entry: _Entry, number: int) -> None:
        entry.data = entry.file = None  # only its header is needed
        self._puts.append((self.connection, number, entry))

    def acknowledged(self, mark: int) -> None:
        """A flush answered on this connection covers every number below ``mark``."""
        if self._puts:
            now = self.connection
            self._puts = collections.deque(d for d in self._puts if d[0] != now or d[1] >= mark)

    def lost(self, source: str, last: dict[str, int] | None) -> list[tuple[int, _Entry]]:
        """Settle the puts of reopened ``source`` by :func:`stored`; return those not
        stored (all of them when ``last`` is None: the broker did not say), by number."""
        kept: collections.deque[tuple[int, int, _Entry]] = collections.deque()
        out = []
        for doubt in self._puts:
            _, number, entry = doubt
            if entry.put.source != source:
                kept.append(doubt)
            elif not stored(entry.put, last):
                out.append((number, entry))
        self._puts = kept
        return out


class LeftSpools:
    """The spool files an earlier, crashed run of a client left in its spool
    directory: their puts by source, until this run opens the source again.
    Puts that run held in memory are there as notes (their headers only)."""

    def __init__(self, directory: str | None, name: str, file_name: str) -> None:
        self.directory = directory
        self._name = name
        self._file_name = file_name  # this run's own spool file
        self._puts: dict[str, list[_Entry]] = {}
        self._files: list[SpoolFile] = []

    def paths(self) -> list[str]:
        """Spool files of this client's name in the directory (its own, or left by
        an earlier run: :meth:`recover` takes those); one directory listing."""
        return [] if self.directory is None else left_spool_files(self.directory, self._name)

    def recover(self) -> int:
        """Take the spool files an earlier run of this client left in the directory
        (none of them locked: their process is gone); return how many puts they hold.

        Their puts wait for :meth:`take`.  Blocks (file reads): call it
        through :func:`~turbine.run_blocking`.
        """
        found = 0
        for path in self.paths():
            file = SpoolFile.claim(path)
            if file is not None and os.path.basename(path) == self._file_name:
                file.path = _moved_aside(path)  # left by a process with our pid
            if file is None:
                continue
            puts = 0
            for put, offset, length, note in file.records():
                entry = _Entry(put, None, sum(put.sizes), wall_time(), file, offset, length)
                entry.recovered, entry.note = True, note
                self._puts.setdefault(put.source, []).append(entry)
                file.entries += 1
                puts += 1
            if puts == 0:
                file.close()
                continue
            self._files.append(file)
            found += puts
            log.warning(
                "%s: %d puts left by an earlier run; they are sent again when their sources are opened",
                path,
                puts,
            )
        return found

    def producers(self, source: str) -> list[str]:
        """The producers of the left puts of ``source`` (to ask the broker about)."""
        puts = self._puts.get(source, ())
        return list(dict.fromkeys(e.put.producer for e in puts if e.put.producer))

    def take(self, source: str, last: dict[str, int] | None) -> list[_Entry]:
        """The left puts of ``source``, oldest first (now the caller's): those to
        send again and (``note`` set) those lost with the crashed run's memory, the
        noted ones the broker lacks by ``last`` (:func:`stored`; all when None)."""
        out = []
        for entry in self._puts.pop(source, []):
            if entry.note:
                entry.release()
                if stored(entry.put, last):
                    continue
            out.append(entry)
        if lost := sum(len(e.put.sizes) for e in out if e.note):
            log.warning(
                "%d frames of %s that an earlier run held in memory never reached the broker",
                lost,
                source,
            )
        return out

    def close(self) -> None:
        """Keep the files holding puts of sources this run never opened, for the next;
        remove the others."""
        for file in self._files:
            file.close(remove=not any(e.file is file for left in self._puts.values() for e in left))
        self._files.clear()


def _moved_aside(path: str) -> str:
    """Rename the left spool file at ``path`` (it has this client's file name) to a
    name of the same pattern that is free; return that."""
    stem = path[: -len(SPOOL_SUFFIX)]
    n = 0
    while os.path.exists(new := f"{stem}{n}{SPOOL_SUFFIX}"):
        n += 1
    os.replace(path, new)
    return new


class Spool:
    """``put`` messages, oldest first, kept until a ``flush`` covering them is answered.

    Every put message a reconnecting client writes goes through here: while
    connected it is written and kept; while the broker is away it is only
    kept.  After a reconnect every entry is written again, in order, with its
    original producer number and timestamps (the broker drops the ones it had
    stored).  Entries are numbered from 0 for the client's life: ``base`` is
    the number of the oldest kept, ``written`` of the first not yet written
    on the current connection.

    Bounded by ``limit`` bytes of frame data: past it, while connected, the oldest written on
    this connection are dropped first (its acknowledgement is on the way), else the oldest never
    written (:attr:`dropped_frames`); those written on a lost connection and not acknowledged
    are kept (their replay tells whether the broker stored them) unless nothing else is
    left.  Frames dropped before they were ever written reach readers as a gap: the next put of
    their channel carries their count (``skipped``) and time span, and the broker leaves that
    many numbers unused.  Written ones dropped unacknowledged are :class:`InDoubt` until the
    broker's answer (:meth:`settle`): only those it lacks count, and make a gap.  With
    ``directory``, at most ``memory`` bytes of frame data stay in memory: the entries past it go
    to a :class:`SpoolFile` there (named ``name``, written and synced in a worker thread) and
    are read back when written again.  A spool file that cannot be written keeps its frames in
    memory (logged).

    Spool files a crashed run of the same client left in ``directory``
    (:attr:`left`, :meth:`LeftSpools.recover`) are replayed, each put with
    its original producer, number and timestamps, once this client opens the
    put's source again (:meth:`adopt`): the broker stores each once; what
    it kept in memory during an outage is noted there, for the gap.
    """

    def __init__(
        self, limit: int, directory: str | None = None, memory: int = 0, name: str = "client"
    ) -> None:
        self.limit = limit
        self.directory = directory
        self.memory_limit = memory if directory is not None else limit
        #: This client's spool file (made on first use): ``NAME-PID.spool``.
        self.file_name = f"{name}-{os.getpid()}{SPOOL_SUFFIX}"
        self._file: SpoolFile | None = None
        #: What spool files of an earlier run left, waiting for :meth:`adopt`.
        self.left = LeftSpools(directory, name, self.file_name)
        self.memory_bytes = 0  # frame bytes held in memory
        self.file_bytes = 0  # frame bytes held in spool files
        self._entries: collections.deque[_Entry] = collections.deque()
        self.base = 0
        self.written = 0
        self._sent = 0  # entries below this were written on some connection
        self.skips = Skips()  # frames dropped unsent, until a put tells them
        self._in_doubt = InDoubt()  # frames dropped written and unacknowledged
        self.bytes = 0
        self.frames = 0
        self.dropped_frames = 0
        self.recovered_frames = 0
        #: Called when an entry is kept (a reconnecting client's flusher wakes).
        self.on_kept: Callable[[], None] = lambda: None

    @property
    def end(self) -> int:
        """The number the next entry gets."""
        return self.base + len(self._entries)

    async def add(self, put: Put, data: list[Any], nbytes: int, away: bool = False) -> None:
        """Keep one put message (its frames ``data``, ``nbytes`` of them).

        Past the memory limit the put goes to the spool file, written and
        synced in a worker thread; that cannot be cancelled (a cancel takes
        effect after), so a put taken is always kept.  Kept in memory while
        the broker is ``away``, it is noted in the spool file on the event loop
        (a few dozen bytes, not synced: less than a worker thread's hop costs).
        """
        entry = _Entry(put, data, nbytes, wall_time())
        to_file = self.memory_bytes + nbytes > self.memory_limit
        if self.directory is not None and (to_file or away):
            try:
                if to_file:
                    with trio.CancelScope(shield=True):
                        await run_blocking(self._to_file, entry, to_file)
                else:
                    self._to_file(entry, False)
            except OSError as exc:
                log.error(
                    "cannot spool to %s: %s; keeping these frames in memory", self.directory, exc
                )
        self._keep(entry, live=not away)

    def _to_file(self, entry: _Entry, frames: bool) -> None:
        """Write ``entry`` to the spool file (made on first use), or (not ``frames``)
        a note of it only; blocks."""
        assert self.directory is not None
        if self._file is None:
            self._file = SpoolFile.create(self.directory, self.file_name)
        if not frames:
            self._file.note(entry.put)
            entry.noted = self._file
            return
        entry.offset, entry.length = self._file.append(entry.put, entry.data or [])
        entry.file, entry.data = self._file, None

    def _keep(self, entry: _Entry, live: bool = False) -> None:
        """Keep ``entry``, dropping the oldest past the limit (:class:`Spool`)."""
        self._entries.append(entry)
        self._count(entry, 1)
        while self.bytes > self.limit and len(self._entries) > 1:
            if (live and self.written > self.base) or not self._drop_oldest_unsent():
                self._drop_oldest()
        self.on_kept()

    def _drop_oldest_unsent(self) -> bool:
        """Drop the oldest entry never written (not the newest); False: there is none.

        It stays in place, marked, so entry numbers hold; it is never written.
        """
        entries = self._entries
        for i in range(max(self._sent - self.base, 0), len(entries) - 1):
            entry = entries[i]
            if entry.dropped or entry.damaged:
                continue
            self._count(entry, -1)
            entry.release()
            entry.file = entry.data = None
            entry.dropped = entry.damaged = True
            if not entry.recovered:
                self.skips.add(entry, self.base + i)
            if not self.dropped_frames:
                log.warning("the spool is full (%d bytes): dropping the oldest frames", self.limit)
            self.dropped_frames += len(entry.put.sizes)
            while entries and entries[0].dropped:  # nothing before it to hold its number for
                self._forget()
            self.written = max(self.written, self.base)
            return True
        return False

    def _count(self, entry: _Entry, sign: int) -> None:
        if entry.dropped:
            return
        nbytes = sign * entry.nbytes
        self.bytes += nbytes
        self.frames += sign * len(entry.put.sizes)
        if entry.file is not None:
            self.file_bytes += nbytes
        else:
            self.memory_bytes += nbytes

    def _forget(self) -> _Entry:
        """Take the oldest entry out."""
        entry = self._entries.popleft()
        self.base += 1
        self._count(entry, -1)
        entry.release()
        return entry

    def _drop_oldest(self) -> None:
        unsent = self.base >= self._sent  # never written: the broker cannot have it
        entry = self._forget()
        if not self.dropped_frames:
            log.warning("the spool is full (%d bytes): dropping the oldest frames", self.limit)
        self.written = max(self.written, self.base)
        if entry.damaged:
            return
        if not unsent and not entry.recovered and entry.put.pseq is not None:
            self._in_doubt.add(entry, self.base - 1)
            return
        if unsent and not entry.recovered:
            self.skips.add(entry, self.base - 1)
        self.dropped_frames += len(entry.put.sizes)

    def settle(self, source: str, last: dict[str, int] | None) -> None:
        """The broker's answer for reopened ``source`` (:func:`stored`), before the
        replay: the in-doubt puts it lacks count, and make a gap if ``last`` says."""
        for number, entry in self._in_doubt.lost(source, last):
            if last is not None:
                self.skips.add(entry, number)
            self.dropped_frames += len(entry.put.sizes)

    def rewind(self) -> None:
        """A new connection: nothing kept is written on it yet; in doubt waits to settle."""
        self.written = self.base
        self._in_doubt.connection += 1

    def unwritten(self) -> list[Any]:
        """The buffers of every entry not yet written on this connection (now counted as written)."""
        out: list[Any] = []
        entries = self._entries
        skips = self.skips.pending
        for i in range(self.written - self.base, len(entries)):
            entry = entries[i]
            if entry.damaged:
                continue
            data = entry.data
            if data is None:
                assert entry.file is not None
                data = entry.file.read_frames(entry.put, entry.offset, entry.length)
                if data is None:  # damaged on disk: its frames are lost, and readers told
                    if not entry.recovered:
                        self.skips.add(entry, self.base + i)
                    self.dropped_frames += len(entry.put.sizes)
                    entry.damaged = True
                    continue
            if skips:
                entry.put = self.skips.carried(entry.put, self.base + i)
            out += encode_message(entry.put, data)
        self.written = self._sent = self.end
        return out

    def acknowledged(self, mark: int) -> None:
        """The broker holds every entry numbered below ``mark`` (a flush answered on
        this connection): forget them; in-doubt ones below it were stored too."""
        while self.base < mark and self._entries:
            self._forget()
        self._in_doubt.acknowledged(mark)

    def adopt(self, source: str, last: dict[str, int] | None = None) -> None:
        """Source ``source`` is held again: spool what left spool files hold for it,
        behind what is spooled already and before any later put; the noted puts
        lost (:meth:`LeftSpools.take`) count, and make a gap if ``last`` says."""
        for entry in self.left.take(source, last):
            if not entry.note:
                self.recovered_frames += len(entry.put.sizes)
                self._keep(entry)
                continue
            if last is not None:
                self.skips.add(entry, self.end - 1)
            self.dropped_frames += len(entry.put.sizes)

    def close(self) -> None:
        """Remove the spool file (what it held is given up); keep left files whose
        sources this run never opened, for the next."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.left.close()

    def statistics(self) -> dict[str, int]:
        """What the spool holds and has dropped, for status reports."""
        return {
            "spooled_frames": self.frames,
            "spooled_bytes": self.bytes,
            "spooled_file_bytes": self.file_bytes,
            "spool_limit_bytes": self.limit,
            "dropped_frames": self.dropped_frames,
            "in_doubt_frames": self._in_doubt.frames,
            "recovered_frames": self.recovered_frames,
        }
