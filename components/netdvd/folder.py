"""A drive whose discs are directories: the NetDVD device without xorriso.

:class:`FolderDrive` keeps the :class:`~components.netdvd.drive.Drive`
contract (sessions, capacity, blank/appendable discs, ejecting, copying a
whole disc) with plain file operations done in the calling task: no
subprocess, no worker thread.  So a device (and an archiver above it) runs
under trio's ``autojump_clock``, fast and deterministic, in tests that are
about the logic above the drive.  :class:`~components.netdvd.EmulatedDrive`
(real ISO images written by xorriso) stays the drive that proves the discs.

A disc is ``<tray>/drive/disc-NNNN/``: ``tree/`` holds what the newest
session shows (every file burned so far; a file burned again shows its
newest copy, as on a multisession ISO), ``sessions.json`` the size of each
session in bytes.  Burned discs go to ``written/``, unused ones to ``blank/``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from functools import partial
from pathlib import Path

import attrs

from turbine import run_blocking

from ._constants import DVD_R_CAPACITY, SECTOR
from .drive import Media, Progress, check_kind, disc_media, full_error, sectors
from .errors import NetDVDError
from .xorriso import DiscEntry, Toc

#: What a session costs beyond its files' sectors (volume descriptors, directories,
#: padding), in bytes: of the order xorriso's sessions take, and below the
#: archiver's estimates of it.
NEW_SESSION_BYTES = 256 * 1024
APPEND_SESSION_BYTES = 96 * 1024
_ALIGN = 32 * SECTOR  # sessions end 64 KiB aligned, as the emulated drive's do
_DISC_NAME = re.compile(r"^disc-(\d+)$")


def _tree_bytes(root: Path) -> int:
    """Bytes the files under ``root`` take on a disc (whole sectors each)."""
    return sum(sectors(p.stat().st_size) * SECTOR for p in root.rglob("*") if p.is_file())


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy ``source``'s tree over ``dest`` keeping modification times."""
    shutil.copytree(source, dest, copy_function=shutil.copy2, dirs_exist_ok=True)


@attrs.define(eq=False)
class FolderDrive:
    """A drive whose discs are directories in a tray directory (see the module doc).

    ``capacity`` bytes fit on each disc; a new blank disc is made whenever
    the blank supply runs out.
    """

    tray: Path
    capacity: int = DVD_R_CAPACITY

    @property
    def description(self) -> str:
        return f"folder drive in {self.tray} ({self.capacity} bytes per disc)"

    @classmethod
    def open(cls, tray: Path, capacity: int = DVD_R_CAPACITY) -> FolderDrive:
        """Create the tray's directories and load a blank disc if the drive is empty."""
        drive = cls(Path(tray), capacity)
        for sub in ("drive", "blank", "written"):
            (drive.tray / sub).mkdir(parents=True, exist_ok=True)
        if drive._current() is None:
            drive._load_blank()
        return drive

    # --- the disc in the drive

    def _current(self) -> Path | None:
        discs = sorted(p for p in (self.tray / "drive").iterdir() if _DISC_NAME.match(p.name))
        return discs[0] if discs else None

    def _disc(self) -> Path:
        disc = self._current()
        if disc is None:
            raise NetDVDError("no disc in the drive", "no_disc")
        return disc

    @staticmethod
    def sessions(disc: Path) -> list[int]:
        """The size in bytes of each session burned on ``disc``."""
        index = disc / "sessions.json"
        return json.loads(index.read_text()) if index.exists() else []

    def _next_name(self) -> str:
        numbers = [0]
        for sub in ("drive", "blank", "written"):
            for path in (self.tray / sub).iterdir():
                if match := _DISC_NAME.match(path.name):
                    numbers.append(int(match.group(1)))
        return f"disc-{max(numbers) + 1:04d}"

    def _load_blank(self) -> None:
        supply = sorted((self.tray / "blank").iterdir())
        if supply:
            supply[0].rename(self.tray / "drive" / supply[0].name)
        else:
            (self.tray / "drive" / self._next_name() / "tree").mkdir(parents=True)

    def _toc(self, disc: Path) -> Toc:
        sessions = self.sessions(disc)
        used = sum(sessions)
        return Toc(
            present=True,
            blank=not sessions,
            appendable=True,
            sessions=len(sessions),
            nwa=used // SECTOR,
            readable_sectors=used // SECTOR,
            writable_sectors=(self.capacity - used) // SECTOR,
        )

    # --- the Drive protocol: the file work of each call in run_blocking

    async def media(self) -> Media:
        return await run_blocking(self._media)

    async def burn(
        self, source: Path, *, append: bool, stamp: int, volume_id: str, progress: Progress
    ) -> None:
        return await run_blocking(
            partial(
                self._burn,
                source,
                append=append,
                stamp=stamp,
                volume_id=volume_id,
                progress=progress,
            )
        )

    async def list_files(self) -> list[DiscEntry]:
        return await run_blocking(self._list_files)

    async def extract(self, disc_path: str, dest: Path) -> None:
        return await run_blocking(self._extract, disc_path, dest)

    async def eject(self) -> None:
        return await run_blocking(self._eject)

    async def read_image(self, dest: Path, progress: Progress) -> int:
        return await run_blocking(self._read_image, dest, progress)

    async def write_image(self, image: Path, progress: Progress) -> None:
        return await run_blocking(self._write_image, image, progress)

    # --- the file work

    def _media(self) -> Media:
        disc = self._current()
        if disc is None:
            return Media(present=False, capacity_bytes=self.capacity)
        toc = self._toc(disc)
        return disc_media(toc, toc.readable_sectors * SECTOR, self.capacity, disc.name)

    def _burn(
        self, source: Path, *, append: bool, stamp: int, volume_id: str, progress: Progress
    ) -> None:
        disc = self._disc()
        toc = self._toc(disc)
        check_kind(toc, append=append)
        overhead = APPEND_SESSION_BYTES if append else NEW_SESSION_BYTES
        size = -(-(_tree_bytes(source) + overhead) // _ALIGN) * _ALIGN
        used = sum(self.sessions(disc))
        if used + size > self.capacity:
            raise full_error(size, self.capacity - used)
        progress.total_bytes = size
        progress.phase = "writing"
        _copy_tree(source, disc / "tree")  # files keep their mtimes, as on the ISO
        (disc / "sessions.json").write_text(json.dumps([*self.sessions(disc), size]))
        progress.update(size, 100.0)

    def _list_files(self) -> list[DiscEntry]:
        root = self._disc() / "tree"
        return [
            DiscEntry(
                p.relative_to(root).as_posix(),
                "dir" if p.is_dir() else "file",
                p.stat().st_size if p.is_file() else 0,
            )
            for p in sorted(root.rglob("*"))
        ]

    def _extract(self, disc_path: str, dest: Path) -> None:
        path = self._disc() / "tree" / disc_path.strip("/")
        if not path.is_file():
            raise NetDVDError(f"no file {disc_path!r} on the disc", "not_found")
        shutil.copy2(path, dest)

    def _eject(self) -> None:
        disc = self._disc()
        shelf = "written" if self.sessions(disc) else "blank"
        disc.rename(self.tray / shelf / disc.name)
        self._load_blank()

    def _read_image(self, dest: Path, progress: Progress) -> int:
        disc = self._disc()
        if not self.sessions(disc):
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to copy", "blank_disc"
            )
        progress.phase = "reading"
        with tarfile.open(dest, "w") as image:
            image.add(disc / "tree", "tree")
            image.add(disc / "sessions.json", "sessions.json")
        size = dest.stat().st_size
        progress.total_bytes = size
        progress.update(size, 100.0)
        return size

    def _write_image(self, image: Path, progress: Progress) -> None:
        disc = self._disc()
        if self.sessions(disc):
            raise NetDVDError(
                "the disc in the drive is not blank; eject it so a blank disc is loaded",
                "not_blank",
            )
        data = image.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            sizes = json.loads(tar.extractfile("sessions.json").read())  # type: ignore[union-attr]
            if sum(sizes) > self.capacity:
                raise full_error(sum(sizes), self.capacity)
            progress.total_bytes = len(data)
            progress.phase = "writing"
            shutil.rmtree(disc / "tree")
            tar.extractall(disc, filter="tar")
        progress.update(len(data), 100.0)
