"""The NetDVD device: working directory, jobs, and the commands' meaning.

This module knows nothing about sockets; server.py moves the bytes and calls
:class:`Device` for each command.  Every command either succeeds or raises
:class:`NetDVDError` with a code and a message for the client; a command that
fails changes neither the working directory nor the disc.  The working
directory's own operations are :class:`~components.netdvd.workdir.WorkDir`'s;
the device decides when it may be written (never while it is being burned).
The running job is :class:`~components.netdvd.jobs.Jobs`'; the commands that
start one (burn, copy, burn_copy) are in :mod:`components.netdvd.job_commands`.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from turbine import run_blocking

from . import job_commands
from ._args import arg, bad_request, check_relative_path
from ._constants import PROTOCOL_VERSION
from .drive import Drive, Media
from .errors import NetDVDError
from .job_commands import COPY_NAME
from .jobs import Jobs
from .workdir import PutTarget, WorkDir

__all__ = ["DATA_OPS", "Device", "PutTarget", "check_relative_path"]

_JOB_STATES = {"burn": "burning", "copy": "copying", "burn_copy": "burning_copy"}


@attrs.define(eq=False)
class Device:
    """State and commands of one NetDVD device.

    ``spool`` is the directory (ideally on its own partition) that holds the
    clients' working directories (``spool/work``) and the staged copy of a
    disc (``spool/staging``); filling it cannot harm the system.

    Jobs (burn, copy, burn_copy) run in ``job_nursery`` so that the device
    keeps answering ``status`` while they run; they outlive the client that
    started them but not the device.
    """

    drive: Drive
    spool: Path
    job_nursery: trio.Nursery
    clock_offset: float = 0.0
    _workdir: WorkDir | None = None
    mounted: bool = False
    media: Media = Media(present=False)
    _counter: itertools.count[int] = attrs.field(factory=itertools.count)
    #: The running job and the last one's outcome.
    jobs: Jobs = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.jobs = Jobs(self.job_nursery, self._read_media)

    @classmethod
    async def open(cls, drive: Drive, spool: Path, job_nursery: trio.Nursery) -> Device:
        """Prepare the spool (clearing leftovers of a previous run) and read the drive."""
        spool = Path(spool)
        shutil.rmtree(spool / "work", ignore_errors=True)
        (spool / "work").mkdir(parents=True, exist_ok=True)
        (spool / "staging").mkdir(parents=True, exist_ok=True)
        for leftover in (spool / "staging").iterdir():
            if leftover.name != COPY_NAME:
                leftover.unlink()
        device = cls(drive, spool, job_nursery)
        device.media = await drive.media()
        return device

    # -- helpers -----------------------------------------------------------------

    def client_now(self) -> float:
        """Now, by the clock of the client that sent ``init``."""
        return time.time() + self.clock_offset

    @property
    def workdir(self) -> Path | None:
        """The working directory of the client that sent ``init``; ``None`` before."""
        return None if self._workdir is None else self._workdir.path

    def work(self) -> WorkDir:
        """The working directory of the client that sent ``init``.

        Raises:
            NetDVDError: no ``init`` yet (code ``not_initialized``).
        """
        if self._workdir is None:
            raise NetDVDError("send 'init' first", "not_initialized")
        return self._workdir

    def _writable_work(self) -> WorkDir:
        work = self.work()
        if self.jobs.workdir == work.path:
            raise NetDVDError(
                "the working directory is being burned; wait for the burn to end", "busy"
            )
        return work

    def free_bytes(self) -> int:
        """Bytes free on the spool's partition."""
        return shutil.disk_usage(self.spool).free

    async def refresh_media(self) -> Media:
        """Ask the drive about its medium (only when no job is running)."""
        if self.jobs.current is None:
            self.media = await self.drive.media()
        return self.media

    async def _read_media(self) -> None:
        """After a job: what the drive holds now (none, if it cannot tell)."""
        try:
            self.media = await self.drive.media()
        except NetDVDError:
            self.media = Media(present=False)

    def disconnected(self) -> None:
        """The client went away: what it mounted is unmounted."""
        self.mounted = False

    # -- commands ----------------------------------------------------------------

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run command ``op`` (not ``put`` or ``read``, which carry data).

        Raises:
            NetDVDError: the command was refused; nothing was changed.
        """
        handler = _COMMANDS.get(op)
        if handler is None:
            raise NetDVDError(
                f"unknown command {op!r}; the commands are: {', '.join(sorted(_ALL_OPS))}",
                "bad_command",
            )
        if op != "init" and self.workdir is None:
            raise NetDVDError("send 'init' first", "not_initialized")
        return await handler(self, args)

    async def init(self, args: dict[str, Any]) -> dict[str, Any]:
        version = arg(args, "version", int)
        client_time = arg(args, "time", (int, float))
        if not 0 <= version <= PROTOCOL_VERSION:
            raise NetDVDError(
                f"protocol version {version} is not spoken here; "
                f"this device speaks versions 0 to {PROTOCOL_VERSION}",
                "bad_version",
            )
        if not math.isfinite(client_time) or client_time < 0:
            raise bad_request("argument 'time' must be seconds since 1970-01-01 UTC")
        self.clock_offset = client_time - time.time()
        for old in (self.spool / "work").iterdir():
            if old != self.jobs.workdir:
                await run_blocking(shutil.rmtree, old)
        path = self.spool / "work" / f"{os.getpid()}-{next(self._counter)}"
        path.mkdir()
        self._workdir = WorkDir(path, self.client_now, self._counter, self.free_bytes)
        self.mounted = False
        await self.refresh_media()
        return {"version": version, "free_bytes": self.free_bytes()}

    def begin_put(self, args: dict[str, Any]) -> PutTarget:
        """Accept an upload of ``size`` bytes to ``path`` in the working directory.

        Raises:
            NetDVDError: bad path, no space, the path is a directory, or busy.
        """
        return self._writable_work().begin_put(args)

    def finish_put(self, target: PutTarget) -> dict[str, Any]:
        """Move a complete upload into place with its timestamp."""
        return WorkDir.finish_put(target)

    async def mkdir(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._writable_work().mkdir(args)

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.work().list(args)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._writable_work().delete(args)

    async def clear(self, args: dict[str, Any]) -> dict[str, Any]:
        await self._writable_work().empty()
        return {}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        media = await self.refresh_media()
        copy = self.spool / "staging" / COPY_NAME
        job = self.jobs.current
        return {
            "state": _JOB_STATES[job.op] if job else "idle",
            "drive": self.drive.description,
            "media": media.as_dict(),
            "mounted": self.mounted,
            "job": job.as_dict() if job else None,
            "last_job": self.jobs.last,
            "workdir_free_bytes": self.free_bytes(),
            "staged_copy_bytes": copy.stat().st_size if copy.exists() else None,
            "client_time": self.client_now(),
        }

    async def wait(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"last_job": await self.jobs.wait()}

    # -- disc commands -------------------------------------------------------------

    async def _media_with_data(self) -> Media:
        media = await self.refresh_media()
        if not media.present:
            raise NetDVDError("no disc in the drive; load one", "no_disc")
        if media.blank:
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to read", "blank_disc"
            )
        return media

    async def mount(self, args: dict[str, Any]) -> dict[str, Any]:
        self.jobs.idle()
        media = await self._media_with_data()
        self.mounted = True
        return {"media": media.as_dict()}

    def _mounted(self) -> None:
        if not self.mounted:
            raise NetDVDError("the disc is not mounted; send 'mount' first", "not_mounted")
        self.jobs.idle()

    async def disc_list(self, args: dict[str, Any]) -> dict[str, Any]:
        self._mounted()
        entries = await self.drive.list_files()
        return {"entries": [attrs.asdict(e) for e in entries]}

    async def prepare_read(self, args: dict[str, Any]) -> tuple[Path, int]:
        """Extract a disc file to the staging area for a ``read``; return it and its size."""
        self._mounted()
        rel = str(check_relative_path(arg(args, "path", str)))
        entries = {e.path: e for e in await self.drive.list_files()}
        entry = entries.get(rel)
        if entry is None:
            raise NetDVDError(f"{rel!r} is not on the disc", "not_found")
        if entry.kind != "file":
            raise NetDVDError(f"{rel!r} on the disc is a {entry.kind}, not a file", "not_file")
        dest = self.spool / "staging" / f"read-{next(self._counter)}"
        try:
            await self.drive.extract(rel, dest)
        except NetDVDError:
            dest.unlink(missing_ok=True)
            raise
        return dest, dest.stat().st_size

    async def unmount(self, args: dict[str, Any]) -> dict[str, Any]:
        self.mounted = False
        return {}

    async def eject(self, args: dict[str, Any]) -> dict[str, Any]:
        self.jobs.idle()
        media = await self.refresh_media()
        if not media.present:
            raise NetDVDError("no disc in the drive to eject", "no_disc")
        self.mounted = False
        await self.drive.eject()
        media = await self.refresh_media()
        return {"media": media.as_dict()}

    # -- jobs (their commands: components.netdvd.job_commands) ---------------------------

    async def require_disc(self) -> Media:
        """The medium in the drive.

        Raises:
            NetDVDError: there is no disc (code ``no_disc``).
        """
        media = await self.refresh_media()
        if not media.present:
            raise NetDVDError("no disc in the drive; load one", "no_disc")
        return media


_COMMANDS: dict[str, Callable[[Device, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "init": Device.init,
    "mkdir": Device.mkdir,
    "list": Device.list,
    "delete": Device.delete,
    "clear": Device.clear,
    "status": Device.status,
    "wait": Device.wait,
    "mount": Device.mount,
    "disc_list": Device.disc_list,
    "unmount": Device.unmount,
    "eject": Device.eject,
    "burn": job_commands.burn,
    "copy": job_commands.copy,
    "burn_copy": job_commands.burn_copy,
}

#: Commands the server handles itself because they carry data frames.
DATA_OPS = ("put", "read")

_ALL_OPS = (*_COMMANDS, *DATA_OPS)
