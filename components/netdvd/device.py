"""The NetDVD device: working directory, jobs, and the commands' meaning.

This module knows nothing about sockets; server.py moves the bytes and calls
:class:`Device` for each command.  Every command either succeeds or raises
:class:`NetDVDError` with a code and a message for the client; a command that
fails changes neither the working directory nor the disc.  The working
directory's own operations are :class:`~components.netdvd.workdir.WorkDir`'s;
the device decides when it may be written (never while it is being burned).
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

from ._args import arg, bad_request, check_relative_path
from ._constants import PROTOCOL_VERSION
from .drive import Drive, Media, Progress
from .errors import NetDVDError
from .workdir import PutTarget, WorkDir

__all__ = ["DATA_OPS", "Device", "PutTarget", "check_relative_path"]

_JOB_STATES = {"burn": "burning", "copy": "copying", "burn_copy": "burning_copy"}
_COPY_NAME = "copy.iso"


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
    job: Progress | None = None
    last_job: dict[str, Any] | None = None
    mounted: bool = False
    media: Media = Media(present=False)
    _job_done: trio.Event = attrs.field(factory=trio.Event)
    _job_workdir: Path | None = None
    _counter: itertools.count[int] = attrs.field(factory=itertools.count)

    @classmethod
    async def open(cls, drive: Drive, spool: Path, job_nursery: trio.Nursery) -> Device:
        """Prepare the spool (clearing leftovers of a previous run) and read the drive."""
        spool = Path(spool)
        shutil.rmtree(spool / "work", ignore_errors=True)
        (spool / "work").mkdir(parents=True, exist_ok=True)
        (spool / "staging").mkdir(parents=True, exist_ok=True)
        for leftover in (spool / "staging").iterdir():
            if leftover.name != _COPY_NAME:
                leftover.unlink()
        device = cls(drive, spool, job_nursery)
        device._job_done.set()
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

    def _work(self) -> WorkDir:
        if self._workdir is None:
            raise NetDVDError("send 'init' first", "not_initialized")
        return self._workdir

    def _writable_work(self) -> WorkDir:
        work = self._work()
        if self._job_workdir == work.path:
            raise NetDVDError(
                "the working directory is being burned; wait for the burn to end", "busy"
            )
        return work

    def _idle(self) -> None:
        if self.job is not None:
            raise NetDVDError(
                f"the device is busy with {self.job.op!r}; follow it with 'status' "
                "or wait for it with 'wait'",
                "busy",
            )

    def free_bytes(self) -> int:
        """Bytes free on the spool's partition."""
        return shutil.disk_usage(self.spool).free

    async def refresh_media(self) -> Media:
        """Ask the drive about its medium (only when no job is running)."""
        if self.job is None:
            self.media = await self.drive.media()
        return self.media

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
            if old != self._job_workdir:
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
        return await self._work().list(args)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._writable_work().delete(args)

    async def clear(self, args: dict[str, Any]) -> dict[str, Any]:
        await self._writable_work().empty()
        return {}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        media = await self.refresh_media()
        copy = self.spool / "staging" / _COPY_NAME
        return {
            "state": _JOB_STATES[self.job.op] if self.job else "idle",
            "drive": self.drive.description,
            "media": media.as_dict(),
            "mounted": self.mounted,
            "job": self.job.as_dict() if self.job else None,
            "last_job": self.last_job,
            "workdir_free_bytes": self.free_bytes(),
            "staged_copy_bytes": copy.stat().st_size if copy.exists() else None,
            "client_time": self.client_now(),
        }

    async def wait(self, args: dict[str, Any]) -> dict[str, Any]:
        await self._job_done.wait()
        return {"last_job": self.last_job}

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
        self._idle()
        media = await self._media_with_data()
        self.mounted = True
        return {"media": media.as_dict()}

    def _mounted(self) -> None:
        if not self.mounted:
            raise NetDVDError("the disc is not mounted; send 'mount' first", "not_mounted")
        self._idle()

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
        self._idle()
        media = await self.refresh_media()
        if not media.present:
            raise NetDVDError("no disc in the drive to eject", "no_disc")
        self.mounted = False
        await self.drive.eject()
        media = await self.refresh_media()
        return {"media": media.as_dict()}

    # -- jobs ------------------------------------------------------------------------

    def _start(self, op: str, run: Callable[[Progress], Awaitable[None]]) -> dict[str, Any]:
        progress = Progress(op)
        self.job = progress
        self._job_done = trio.Event()
        self.job_nursery.start_soon(self._run_job, progress, run)
        return {"job": op}

    async def _run_job(
        self, progress: Progress, run: Callable[[Progress], Awaitable[None]]
    ) -> None:
        result: dict[str, Any] = {"op": progress.op, "ok": True}
        try:
            await run(progress)
        except NetDVDError as exc:
            result = {"op": progress.op, "ok": False, "code": exc.code, "message": exc.message}
        except OSError as exc:
            result = {
                "op": progress.op,
                "ok": False,
                "code": f"{progress.op}_failed",
                "message": f"{progress.op} failed: {exc}",
            }
        finally:
            self._job_workdir = None
            self.job = None
            result["seconds"] = round(trio.current_time() - progress.started, 3)
            self.last_job = result
            with trio.CancelScope(shield=True):
                try:
                    self.media = await self.drive.media()
                except NetDVDError:
                    self.media = Media(present=False)
            self._job_done.set()

    async def _require_disc(self) -> Media:
        media = await self.refresh_media()
        if not media.present:
            raise NetDVDError("no disc in the drive; load one", "no_disc")
        return media

    async def burn(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = arg(args, "mode", str)
        if mode not in ("new", "append"):
            raise bad_request(f"argument 'mode' must be 'new' or 'append', not {mode!r}")
        keep = arg(args, "keep", bool, False)
        self._idle()
        if self.mounted:
            raise NetDVDError("the disc is mounted; unmount it before burning", "mounted")
        workdir = self._work()
        work = workdir.path
        await self._require_disc()
        if not any(work.iterdir()):
            raise NetDVDError("the working directory is empty; upload files first", "empty_workdir")
        stamp = int(self.client_now())
        volume_id = arg(args, "volume_id", str, None) or time.strftime(
            "NETDVD_%Y%m%d_%H%M%S", time.gmtime(stamp)
        )
        if not 0 < len(volume_id) <= 32:
            raise bad_request("argument 'volume_id' must have 1 to 32 characters")
        workdir.date_directories()
        self._job_workdir = work

        async def run(progress: Progress) -> None:
            await self.drive.burn(
                work, append=mode == "append", stamp=stamp, volume_id=volume_id, progress=progress
            )
            if not keep:
                await workdir.empty()

        return self._start("burn", run)

    async def copy(self, args: dict[str, Any]) -> dict[str, Any]:
        self._idle()
        if self.mounted:
            raise NetDVDError("the disc is mounted; unmount it before copying", "mounted")
        media = await self._require_disc()
        if media.blank:
            raise NetDVDError(
                "the disc in the drive is blank; there is nothing to copy", "blank_disc"
            )
        staging = self.spool / "staging"

        async def run(progress: Progress) -> None:
            partial = staging / f"{_COPY_NAME}.part"
            try:
                await self.drive.read_image(partial, progress)
                os.replace(partial, staging / _COPY_NAME)
            finally:
                partial.unlink(missing_ok=True)

        return self._start("copy", run)

    async def burn_copy(self, args: dict[str, Any]) -> dict[str, Any]:
        count = arg(args, "count", int, 1)
        if not 1 <= count <= 100:
            raise bad_request("argument 'count' must be 1 to 100")
        self._idle()
        if self.mounted:
            raise NetDVDError("the disc is mounted; unmount and eject it first", "mounted")
        image = self.spool / "staging" / _COPY_NAME
        if not image.exists():
            raise NetDVDError("there is no staged copy; send 'copy' with a disc loaded", "no_copy")
        media = await self._require_disc()
        if not media.blank:
            raise NetDVDError(
                "the disc in the drive is not blank; eject it so a blank disc is loaded",
                "not_blank",
            )

        async def run(progress: Progress) -> None:
            for n in range(1, count + 1):
                # Each copy gets its own progress so percent and time left describe it.
                step = Progress("burn_copy", part=f"copy {n} of {count}")
                self.job = step
                try:
                    await self.drive.write_image(image, step)
                except NetDVDError as exc:
                    raise NetDVDError(f"copy {n} of {count}: {exc.message}", exc.code) from exc
                await self.drive.eject()

        return self._start("burn_copy", run)


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
    "burn": Device.burn,
    "copy": Device.copy,
    "burn_copy": Device.burn_copy,
}

#: Commands the server handles itself because they carry data frames.
DATA_OPS = ("put", "read")

_ALL_OPS = (*_COMMANDS, *DATA_OPS)
