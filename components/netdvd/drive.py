"""DVD drives behind one interface: a real one and an emulated one.

Both write with xorriso, so whatever they write is a standard ISO 9660 image
with Rock Ridge and Joliet, readable by any PC:

* :class:`XorrisoDrive` drives a real burner, ``xorriso -dev /dev/srN``.
* :class:`EmulatedDrive` keeps each disc as an image file written through
  xorriso's ``stdio:`` pseudo drive, with real multisession appends, in a tray
  directory::

      TRAY/drive/    the disc in the drive (at most one *.iso file)
      TRAY/blank/    the supply of blank discs (empty files), loaded in name order
      TRAY/written/  discs ejected after something was written on them

  Its capacity is enforced (a single-layer DVD-R unless told otherwise), and a
  failed write never leaves a half-written disc: sessions are written to a
  copy that replaces the disc only on success.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

import attrs
import trio

from ._constants import DVD_R_CAPACITY, SECTOR
from .errors import NetDVDError
from .xorriso import DiscEntry, Toc, XorrisoFailed, parse_image_size, parse_lsdl, parse_toc
from .xorriso import run_xorriso as _run_xorriso

#: Bytes moved per step when a drive copies an image itself.
_COPY_CHUNK = 1024 * 1024


@attrs.define
class Progress:
    """Progress of one running job; read by ``status`` while the job runs.

    ``done_bytes`` and ``total_bytes`` count the bytes being written or copied;
    the estimate of the time left assumes the rate so far holds.
    """

    op: str
    total_bytes: int = 0
    done_bytes: int = 0
    percent: float = 0.0
    phase: str = "preparing"
    #: Which part of a multi-part job this is, e.g. "copy 2 of 3".
    part: str = ""
    started: float = attrs.field(factory=trio.current_time)

    def update(self, done_bytes: int, percent: float | None = None) -> None:
        """Record ``done_bytes`` written so far (percent derived unless given)."""
        self.done_bytes = done_bytes
        if percent is not None:
            self.percent = percent
        elif self.total_bytes:
            self.percent = min(100.0, 100.0 * done_bytes / self.total_bytes)

    def seconds_left(self) -> float | None:
        """Estimated seconds until the job ends, or None before any progress."""
        elapsed = trio.current_time() - self.started
        if self.done_bytes <= 0 or self.total_bytes <= 0 or elapsed <= 0:
            return None
        rate = self.done_bytes / elapsed
        return max(0.0, (self.total_bytes - self.done_bytes) / rate)

    def as_dict(self) -> dict[str, object]:
        """The wire form used in ``status`` replies."""
        return {
            "op": self.op,
            "phase": self.phase,
            "part": self.part,
            "percent": round(self.percent, 1),
            "bytes_done": self.done_bytes,
            "bytes_total": self.total_bytes,
            "seconds_elapsed": round(trio.current_time() - self.started, 3),
            "seconds_left": self.seconds_left(),
        }


@attrs.frozen
class Media:
    """The medium in a drive, as far as the device can tell."""

    present: bool
    blank: bool = False
    appendable: bool = False
    sessions: int = 0
    used_bytes: int = 0
    free_bytes: int = 0
    capacity_bytes: int = 0
    #: The disc's name (the image file of an emulated disc), or None.
    name: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The wire form used in ``status`` replies."""
        return attrs.asdict(self)


class Drive(Protocol):
    """What the device needs from a drive.  Every method may take long and
    runs xorriso or copies data; none changes anything when it raises.
    """

    @property
    def description(self) -> str:
        """Which drive this is, for people."""
        ...

    async def media(self) -> Media:
        """Describe the medium in the drive."""
        ...

    async def burn(
        self, source: Path, *, append: bool, stamp: int, volume_id: str, progress: Progress
    ) -> None:
        """Write ``source``'s tree as a new disc or as a session appended to it.

        ``stamp`` (seconds since the epoch, the client's clock) becomes the
        volume's dates and the ctime of the files written.

        Raises:
            NetDVDError: no disc, wrong kind of disc, disc full, or the write failed.
        """
        ...

    async def list_files(self) -> list[DiscEntry]:
        """List every file and directory on the disc (latest session's tree)."""
        ...

    async def extract(self, disc_path: str, dest: Path) -> None:
        """Copy the disc's file ``disc_path`` to the local file ``dest``."""
        ...

    async def eject(self) -> None:
        """Eject the disc (the emulated drive then loads the next blank)."""
        ...

    async def read_image(self, dest: Path, progress: Progress) -> int:
        """Copy the whole disc to the image file ``dest``; return its size."""
        ...

    async def write_image(self, image: Path, progress: Progress) -> None:
        """Write the image file ``image`` onto the blank disc in the drive."""
        ...


def session_args(source: Path, *, stamp: int, volume_id: str) -> list[str]:
    """xorriso arguments that add ``source``'s tree at the image root.

    Files keep the mtimes they have in ``source`` (the device sets them from
    the client's clock); the volume dates and the ctime of everything added are
    set to ``stamp``.  Joliet is added so Windows readers see long names too.
    """
    args = [
        "-iso_rr_pattern",
        "off",
        "-disk_pattern",
        "off",
        "-joliet",
        "on",
        "-volid",
        volume_id,
        "-volume_date",
        "c",
        f"={stamp}",
        "-volume_date",
        "m",
        f"={stamp}",
        "-volume_date",
        "uuid",
        dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y%m%d%H%M%S00"),
        "-map",
        str(source),
        "/",
        "-alter_date",
        "b-c",
        f"={stamp}",
        "/",
        "--",
        "-alter_date",
        "c",
        f"={stamp}",
        "/",
        "--",
    ]
    tops = sorted(os.listdir(source))
    if tops:
        args += ["-alter_date_r", "c", f"={stamp}", *("/" + name for name in tops), "--"]
    return args


def _sectors(n_bytes: int) -> int:
    return -(-n_bytes // SECTOR)


async def _copy_file(src: Path, dest: Path, progress: Progress | None, limit: int | None) -> int:
    """Copy ``src`` (at most ``limit`` bytes) to ``dest`` in chunks, counting progress."""
    copied = 0
    async with await trio.open_file(src, "rb") as reader:
        async with await trio.open_file(dest, "wb") as writer:
            while limit is None or copied < limit:
                want = _COPY_CHUNK if limit is None else min(_COPY_CHUNK, limit - copied)
                chunk = await reader.read(want)
                if not chunk:
                    break
                await writer.write(chunk)
                copied += len(chunk)
                if progress is not None:
                    progress.update(copied)
            await writer.flush()
            await trio.to_thread.run_sync(os.fsync, writer.fileno())
    return copied


async def _xorriso(args: list[str], progress: Progress | None = None, **kw: object) -> list[str]:
    def on_progress(sectors: int, percent: float) -> None:
        assert progress is not None
        progress.update(sectors * SECTOR, percent)

    _, lines = await _run_xorriso(
        args,
        on_progress=on_progress if progress is not None else None,
        **kw,  # type: ignore[arg-type]
    )
    return lines


class _XorrisoBase:
    """Operations shared by both drives: they differ only in the device address."""

    def _dev(self) -> str:
        raise NotImplementedError

    async def _toc(self) -> Toc:
        return parse_toc("\n".join(await _xorriso(["-outdev", self._dev(), "-toc"])))

    async def _session_size(self, source: Path, stamp: int, volume_id: str) -> int:
        """Sectors the new session will take, padding included."""
        args = ["-dev", self._dev(), *session_args(source, stamp=stamp, volume_id=volume_id)]
        lines = await _xorriso([*args, "-print_size", "-rollback_end"])
        return parse_image_size("\n".join(lines))

    async def list_files(self) -> list[DiscEntry]:
        lines = await _xorriso(
            ["-indev", self._dev(), "-find", "/", "-exec", "lsdl", "--"], keep_lines=None
        )
        return parse_lsdl("\n".join(lines))

    async def extract(self, disc_path: str, dest: Path) -> None:
        await _xorriso(
            [
                "-osirrox",
                "on",
                "-iso_rr_pattern",
                "off",
                "-indev",
                self._dev(),
                "-extract",
                "/" + disc_path.strip("/"),
                str(dest),
            ]
        )


def disc_media(toc: Toc, used: int, capacity: int, name: str | None) -> Media:
    """A disc in the drive as ``status`` shows it: its ``toc``, ``used`` of ``capacity`` bytes."""
    return Media(
        present=True,
        blank=toc.blank,
        appendable=toc.appendable,
        sessions=toc.sessions,
        used_bytes=used,
        free_bytes=max(0, capacity - used),
        capacity_bytes=capacity,
        name=name,
    )


def _check_kind(toc: Toc, *, append: bool) -> None:
    if append and toc.blank:
        raise NetDVDError(
            "the disc in the drive is blank; burn it as a new disc (mode 'new') first", "blank_disc"
        )
    if not append and not toc.blank:
        raise NetDVDError(
            "the disc in the drive is not blank; append to it (mode 'append') "
            "or eject it and burn on a blank disc",
            "not_blank",
        )
    if append and not toc.appendable:
        raise NetDVDError("the disc in the drive is closed; no session can be appended", "closed")


def _full_error(need: int, free: int) -> NetDVDError:
    return NetDVDError(
        f"disc full: the session needs {need} bytes but only {max(0, free)} bytes are free "
        "on the disc; delete files from the working directory or burn them on another disc",
        "disc_full",
    )


_DISC_NAME = re.compile(r"^disc-(\d+)\.iso$")


@attrs.define(eq=False)
class EmulatedDrive(_XorrisoBase):
    """A drive whose discs are ISO image files in a tray directory.

    ``capacity`` bytes fit on each disc.  When ``auto_blank`` is true, a new
    blank disc is made whenever the blank supply runs out; otherwise the drive
    stays empty after ejecting the last one.
    """

    tray: Path
    capacity: int = DVD_R_CAPACITY
    auto_blank: bool = True

    @property
    def description(self) -> str:
        return f"emulated drive in {self.tray} ({self.capacity} bytes per disc)"

    @classmethod
    def open(
        cls, tray: Path, capacity: int = DVD_R_CAPACITY, auto_blank: bool = True
    ) -> EmulatedDrive:
        """Create the tray's directories and load a blank disc if the drive is empty.

        Raises:
            NetDVDError: the tray is unusable (more than one disc in the drive).
        """
        if capacity < 64 * SECTOR * 8:
            raise NetDVDError(f"capacity {capacity} bytes is too small for a disc (1 MiB at least)")
        drive = cls(Path(tray), capacity, auto_blank)
        for sub in ("drive", "blank", "written"):
            (drive.tray / sub).mkdir(parents=True, exist_ok=True)
        for stale in (drive.tray / "drive").glob(".*.burning"):
            stale.unlink()
        if drive._current() is None:
            drive._load_blank()
        return drive

    def _current(self) -> Path | None:
        discs = sorted((self.tray / "drive").glob("*.iso"))
        if len(discs) > 1:
            raise NetDVDError(
                f"{len(discs)} discs in {self.tray / 'drive'}; a drive holds one, move the others out"
            )
        return discs[0] if discs else None

    def _disc(self) -> Path:
        disc = self._current()
        if disc is None:
            raise NetDVDError(
                f"no disc in the drive; put a blank disc into {self.tray / 'blank'} and eject",
                "no_disc",
            )
        return disc

    def _dev(self) -> str:
        return f"stdio:{self._disc()}"

    def _next_name(self) -> str:
        numbers = [0]
        for sub in ("drive", "blank", "written"):
            for path in (self.tray / sub).glob("disc-*.iso"):
                if match := _DISC_NAME.match(path.name):
                    numbers.append(int(match.group(1)))
        return f"disc-{max(numbers) + 1:04d}.iso"

    def _load_blank(self) -> None:
        supply = sorted((self.tray / "blank").glob("*.iso"))
        target = self.tray / "drive"
        if supply:
            supply[0].rename(target / supply[0].name)
        elif self.auto_blank:
            (target / self._next_name()).touch()

    async def media(self) -> Media:
        disc = self._current()
        if disc is None:
            return Media(present=False, capacity_bytes=self.capacity)
        used = disc.stat().st_size
        if used == 0:
            return Media(
                present=True,
                blank=True,
                appendable=True,
                free_bytes=self.capacity,
                capacity_bytes=self.capacity,
                name=disc.name,
            )
        return disc_media(await self._toc(), used, self.capacity, disc.name)

    async def burn(
        self, source: Path, *, append: bool, stamp: int, volume_id: str, progress: Progress
    ) -> None:
        disc = self._disc()
        toc = await self._toc()
        _check_kind(toc, append=append)
        size = await self._session_size(source, stamp, volume_id)
        start = toc.nwa or 0
        end_bytes = _sectors((start + size) * SECTOR) * SECTOR
        end_bytes = -(-end_bytes // (32 * SECTOR)) * 32 * SECTOR  # sessions end 64 KiB aligned
        if end_bytes > self.capacity:
            raise _full_error(size * SECTOR, self.capacity - start * SECTOR)
        progress.total_bytes = size * SECTOR
        work = disc.with_name(f".{disc.name}.burning")
        try:
            if append:
                await trio.to_thread.run_sync(shutil.copyfile, disc, work)
            else:
                work.touch()
            progress.phase = "writing"
            args = [
                "-dev",
                f"stdio:{work}",
                *session_args(source, stamp=stamp, volume_id=volume_id),
            ]
            try:
                await _xorriso([*args, "-close", "off", "-commit"], progress)
            except XorrisoFailed as exc:
                raise NetDVDError(
                    f"burn failed, the disc is unchanged: {exc}", "burn_failed"
                ) from exc
            written = work.stat().st_size
            if written > self.capacity:
                raise _full_error(written - start * SECTOR, self.capacity - start * SECTOR)
            progress.phase = "verifying"
            after = parse_toc("\n".join(await _xorriso(["-indev", f"stdio:{work}", "-toc"])))
            if after.sessions != toc.sessions + 1:
                raise NetDVDError(
                    f"burn failed, the disc is unchanged: expected {toc.sessions + 1} sessions "
                    f"after writing, found {after.sessions}",
                    "burn_failed",
                )
            os.replace(work, disc)
            progress.update(progress.total_bytes, 100.0)
        finally:
            work.unlink(missing_ok=True)

    async def eject(self) -> None:
        disc = self._disc()
        dest = self.tray / ("blank" if disc.stat().st_size == 0 else "written") / disc.name
        if dest.exists():
            dest = dest.with_name(self._next_name())
        disc.rename(dest)
        self._load_blank()

    async def read_image(self, dest: Path, progress: Progress) -> int:
        disc = self._disc()
        size = disc.stat().st_size
        if size == 0:
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to copy", "blank_disc"
            )
        progress.total_bytes = size
        progress.phase = "reading"
        return await _copy_file(disc, dest, progress, None)

    async def write_image(self, image: Path, progress: Progress) -> None:
        disc = self._disc()
        if disc.stat().st_size != 0:
            raise NetDVDError(
                "the disc in the drive is not blank; eject it so a blank disc is loaded",
                "not_blank",
            )
        size = (await trio.Path(image).stat()).st_size
        if size > self.capacity:
            raise _full_error(size, self.capacity)
        progress.total_bytes = size
        progress.phase = "writing"
        work = disc.with_name(f".{disc.name}.burning")
        try:
            await _copy_file(image, work, progress, None)
            os.replace(work, disc)
        finally:
            work.unlink(missing_ok=True)


@attrs.define(eq=False)
class XorrisoDrive(_XorrisoBase):
    """A real DVD burner at ``device`` (e.g. ``/dev/sr0``), driven by xorriso.

    The medium's own capacity applies.  Unlike the emulated drive, a write
    that fails halfway cannot be undone on real media; the device checks
    everything it can (kind of disc, free space) before writing.

    This class cannot be exercised without a burner; it uses only documented
    xorriso commands (``-toc``, ``-print_size``, ``-commit``, ``-eject``,
    ``-as cdrecord``).
    """

    device: str

    @property
    def description(self) -> str:
        return f"DVD drive {self.device}"

    def _dev(self) -> str:
        return self.device

    async def media(self) -> Media:
        toc = await self._toc()
        if not toc.present:
            return Media(present=False)
        used = toc.readable_sectors * SECTOR
        free = (toc.writable_sectors or 0) * SECTOR if toc.appendable else 0
        return disc_media(toc, used, used + free, None)

    async def _present_toc(self) -> Toc:
        toc = await self._toc()
        if not toc.present:
            raise NetDVDError(f"no disc in {self.device}; insert one", "no_disc")
        return toc

    async def burn(
        self, source: Path, *, append: bool, stamp: int, volume_id: str, progress: Progress
    ) -> None:
        toc = await self._present_toc()
        _check_kind(toc, append=append)
        size = await self._session_size(source, stamp, volume_id)
        free = (toc.writable_sectors or 0) * SECTOR
        if size * SECTOR > free:
            raise _full_error(size * SECTOR, free)
        progress.total_bytes = size * SECTOR
        progress.phase = "writing"
        args = ["-dev", self.device, *session_args(source, stamp=stamp, volume_id=volume_id)]
        try:
            await _xorriso([*args, "-close", "off", "-commit"], progress)
        except XorrisoFailed as exc:
            raise NetDVDError(f"burn failed: {exc}", "burn_failed") from exc
        progress.update(progress.total_bytes, 100.0)

    async def eject(self) -> None:
        await _xorriso(["-outdev", self.device, "-eject", "all"])

    async def read_image(self, dest: Path, progress: Progress) -> int:
        toc = await self._present_toc()
        if toc.blank:
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to copy", "blank_disc"
            )
        size = toc.readable_sectors * SECTOR
        progress.total_bytes = size
        progress.phase = "reading"
        copied = await _copy_file(Path(self.device), dest, progress, size)
        if copied != size:
            raise NetDVDError(
                f"copy failed: read {copied} of {size} bytes from {self.device}", "copy_failed"
            )
        return copied

    async def write_image(self, image: Path, progress: Progress) -> None:
        toc = await self._present_toc()
        if not toc.blank:
            raise NetDVDError(
                "the disc in the drive is not blank; insert a blank disc", "not_blank"
            )
        size = (await trio.Path(image).stat()).st_size
        free = (toc.writable_sectors or 0) * SECTOR
        if size > free:
            raise _full_error(size, free)
        progress.total_bytes = size
        progress.phase = "writing"
        try:
            await _xorriso(
                ["-as", "cdrecord", "-v", f"dev={self.device}", "-multi", str(image)], progress
            )
        except XorrisoFailed as exc:
            raise NetDVDError(f"burn of the copy failed: {exc}", "burn_failed") from exc
