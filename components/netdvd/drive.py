"""DVD drives behind one interface: a real one and an emulated one.

Both write with xorriso, so whatever they write is a standard ISO 9660 image
with Rock Ridge and Joliet, readable by any PC:

* :class:`~components.netdvd.xorriso_drive.XorrisoDrive` drives a real burner, ``xorriso -dev /dev/srN``.
* :class:`~components.netdvd.emulated.EmulatedDrive` keeps each disc as an image file written through
  xorriso's ``stdio:`` pseudo drive, with real multisession appends, in a tray
  directory::

      TRAY/drive/    the disc in the drive (at most one *.iso file)
      TRAY/blank/    the supply of blank discs (empty files), loaded in name order
      TRAY/written/  discs ejected after something was written on them

  Its capacity is enforced (a single-layer DVD-R unless told otherwise), and a
  failed write never leaves a half-written disc: sessions are written to a
  copy that replaces the disc only on success.

The interface (:class:`Drive`), what it reports (:class:`Media`,
:class:`Progress`) and the checks every drive makes before it writes are
here; the xorriso drives are in ``xorriso_drive.py`` and ``emulated.py``, the
folder drive (:class:`~components.netdvd.folder.FolderDrive`) in ``folder.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import attrs
import trio

from ._constants import SECTOR
from .errors import NetDVDError
from .xorriso import DiscEntry, Toc


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


def sectors(n_bytes: int) -> int:
    return -(-n_bytes // SECTOR)


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


def check_kind(toc: Toc, *, append: bool) -> None:
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


def full_error(need: int, free: int) -> NetDVDError:
    return NetDVDError(
        f"disc full: the session needs {need} bytes but only {max(0, free)} bytes are free "
        "on the disc; delete files from the working directory or burn them on another disc",
        "disc_full",
    )
