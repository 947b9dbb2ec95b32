"""The emulated DVD drive: discs are ISO image files in a tray directory, written with xorriso."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import attrs
import trio

from ._constants import DVD_R_CAPACITY, SECTOR
from .drive import Media, Progress, check_kind, disc_media, full_error, sectors
from .errors import NetDVDError
from .xorriso import XorrisoFailed, parse_toc
from .xorriso_drive import XorrisoBase, copy_file, session_args, xorriso_lines

_DISC_NAME = re.compile(r"^disc-(\d+)\.iso$")


@attrs.define(eq=False)
class EmulatedDrive(XorrisoBase):
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
        check_kind(toc, append=append)
        size = await self._session_size(source, stamp, volume_id)
        start = toc.nwa or 0
        end_bytes = sectors((start + size) * SECTOR) * SECTOR
        end_bytes = -(-end_bytes // (32 * SECTOR)) * 32 * SECTOR  # sessions end 64 KiB aligned
        if end_bytes > self.capacity:
            raise full_error(size * SECTOR, self.capacity - start * SECTOR)
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
                await xorriso_lines([*args, "-close", "off", "-commit"], progress)
            except XorrisoFailed as exc:
                raise NetDVDError(
                    f"burn failed, the disc is unchanged: {exc}", "burn_failed"
                ) from exc
            written = work.stat().st_size
            if written > self.capacity:
                raise full_error(written - start * SECTOR, self.capacity - start * SECTOR)
            progress.phase = "verifying"
            after = parse_toc("\n".join(await xorriso_lines(["-indev", f"stdio:{work}", "-toc"])))
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
        return await copy_file(disc, dest, progress, None)

    async def write_image(self, image: Path, progress: Progress) -> None:
        disc = self._disc()
        if disc.stat().st_size != 0:
            raise NetDVDError(
                "the disc in the drive is not blank; eject it so a blank disc is loaded",
                "not_blank",
            )
        size = (await trio.Path(image).stat()).st_size
        if size > self.capacity:
            raise full_error(size, self.capacity)
        progress.total_bytes = size
        progress.phase = "writing"
        work = disc.with_name(f".{disc.name}.burning")
        try:
            await copy_file(image, work, progress, None)
            os.replace(work, disc)
        finally:
            work.unlink(missing_ok=True)
