"""Drives written with xorriso, and the real DVD burner among them.

:class:`XorrisoBase` holds what every xorriso drive does the same way (table
of contents, session size, listing, extracting); :class:`XorrisoDrive` drives
a real burner, ``xorriso -dev /dev/srN``. The emulated drive
(``emulated.py``) is the other one.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import attrs
import trio

from ._constants import SECTOR
from .drive import Media, Progress, check_kind, disc_media, full_error
from .errors import NetDVDError
from .xorriso import DiscEntry, Toc, XorrisoFailed, parse_image_size, parse_lsdl, parse_toc
from .xorriso import run_xorriso as _run_xorriso

#: Bytes moved per step when a drive copies an image itself.
_COPY_CHUNK = 1024 * 1024


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


async def copy_file(src: Path, dest: Path, progress: Progress | None, limit: int | None) -> int:
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


async def xorriso_lines(
    args: list[str], progress: Progress | None = None, **kw: object
) -> list[str]:
    def on_progress(sectors: int, percent: float) -> None:
        assert progress is not None
        progress.update(sectors * SECTOR, percent)

    _, lines = await _run_xorriso(
        args,
        on_progress=on_progress if progress is not None else None,
        **kw,  # type: ignore[arg-type]
    )
    return lines


class XorrisoBase:
    """Operations shared by both drives: they differ only in the device address."""

    def _dev(self) -> str:
        raise NotImplementedError

    async def _toc(self) -> Toc:
        return parse_toc("\n".join(await xorriso_lines(["-outdev", self._dev(), "-toc"])))

    async def _session_size(self, source: Path, stamp: int, volume_id: str) -> int:
        """Sectors the new session will take, padding included."""
        args = ["-dev", self._dev(), *session_args(source, stamp=stamp, volume_id=volume_id)]
        lines = await xorriso_lines([*args, "-print_size", "-rollback_end"])
        return parse_image_size("\n".join(lines))

    async def list_files(self) -> list[DiscEntry]:
        lines = await xorriso_lines(
            ["-indev", self._dev(), "-find", "/", "-exec", "lsdl", "--"], keep_lines=None
        )
        return parse_lsdl("\n".join(lines))

    async def extract(self, disc_path: str, dest: Path) -> None:
        await xorriso_lines(
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


@attrs.define(eq=False)
class XorrisoDrive(XorrisoBase):
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
        check_kind(toc, append=append)
        size = await self._session_size(source, stamp, volume_id)
        free = (toc.writable_sectors or 0) * SECTOR
        if size * SECTOR > free:
            raise full_error(size * SECTOR, free)
        progress.total_bytes = size * SECTOR
        progress.phase = "writing"
        args = ["-dev", self.device, *session_args(source, stamp=stamp, volume_id=volume_id)]
        try:
            await xorriso_lines([*args, "-close", "off", "-commit"], progress)
        except XorrisoFailed as exc:
            raise NetDVDError(f"burn failed: {exc}", "burn_failed") from exc
        progress.update(progress.total_bytes, 100.0)

    async def eject(self) -> None:
        await xorriso_lines(["-outdev", self.device, "-eject", "all"])

    async def read_image(self, dest: Path, progress: Progress) -> int:
        toc = await self._present_toc()
        if toc.blank:
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to copy", "blank_disc"
            )
        size = toc.readable_sectors * SECTOR
        progress.total_bytes = size
        progress.phase = "reading"
        copied = await copy_file(Path(self.device), dest, progress, size)
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
            raise full_error(size, free)
        progress.total_bytes = size
        progress.phase = "writing"
        try:
            await xorriso_lines(
                ["-as", "cdrecord", "-v", f"dev={self.device}", "-multi", str(image)], progress
            )
        except XorrisoFailed as exc:
            raise NetDVDError(f"burn of the copy failed: {exc}", "burn_failed") from exc
