"""The NetDVD device's job commands: what ``burn``, ``copy`` and ``burn_copy`` check
before they start, and the job each runs (:class:`~components.netdvd.jobs.Jobs`)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ._args import arg, bad_request
from .drive import Progress
from .errors import NetDVDError

if TYPE_CHECKING:
    from .device import Device

#: The staged copy of a disc, in the spool's staging directory.
COPY_NAME = "copy.iso"


async def burn(device: Device, args: dict[str, Any]) -> dict[str, Any]:
    """Burn the working directory (``mode`` new or append), as a job."""
    mode = arg(args, "mode", str)
    if mode not in ("new", "append"):
        raise bad_request(f"argument 'mode' must be 'new' or 'append', not {mode!r}")
    keep = arg(args, "keep", bool, False)
    device.jobs.idle()
    if device.mounted:
        raise NetDVDError("the disc is mounted; unmount it before burning", "mounted")
    workdir = device.work()
    work = workdir.path
    await device.require_disc()
    if not any(work.iterdir()):
        raise NetDVDError("the working directory is empty; upload files first", "empty_workdir")
    stamp = int(device.client_now())
    volume_id = arg(args, "volume_id", str, None) or time.strftime(
        "NETDVD_%Y%m%d_%H%M%S", time.gmtime(stamp)
    )
    if not 0 < len(volume_id) <= 32:
        raise bad_request("argument 'volume_id' must have 1 to 32 characters")
    workdir.date_directories()
    device.jobs.workdir = work

    async def run(progress: Progress) -> None:
        await device.drive.burn(
            work, append=mode == "append", stamp=stamp, volume_id=volume_id, progress=progress
        )
        if not keep:
            await workdir.empty()

    return device.jobs.start("burn", run)


async def copy(device: Device, args: dict[str, Any]) -> dict[str, Any]:
    """Copy the disc in the drive to the staging area, as a job."""
    device.jobs.idle()
    if device.mounted:
        raise NetDVDError("the disc is mounted; unmount it before copying", "mounted")
    media = await device.require_disc()
    if media.blank:
        raise NetDVDError("the disc in the drive is blank; there is nothing to copy", "blank_disc")
    staging = device.spool / "staging"

    async def run(progress: Progress) -> None:
        partial = staging / f"{COPY_NAME}.part"
        try:
            await device.drive.read_image(partial, progress)
            os.replace(partial, staging / COPY_NAME)
        finally:
            partial.unlink(missing_ok=True)

    return device.jobs.start("copy", run)


async def burn_copy(device: Device, args: dict[str, Any]) -> dict[str, Any]:
    """Write the staged copy onto ``count`` blank discs, ejecting each, as a job."""
    count = arg(args, "count", int, 1)
    if not 1 <= count <= 100:
        raise bad_request("argument 'count' must be 1 to 100")
    device.jobs.idle()
    if device.mounted:
        raise NetDVDError("the disc is mounted; unmount and eject it first", "mounted")
    image = device.spool / "staging" / COPY_NAME
    if not image.exists():
        raise NetDVDError("there is no staged copy; send 'copy' with a disc loaded", "no_copy")
    media = await device.require_disc()
    if not media.blank:
        raise NetDVDError(
            "the disc in the drive is not blank; eject it so a blank disc is loaded",
            "not_blank",
        )

    async def run(progress: Progress) -> None:
        for n in range(1, count + 1):
            # Each copy gets its own progress so percent and time left describe it.
            step = Progress("burn_copy", part=f"copy {n} of {count}")
            device.jobs.current = step
            try:
                await device.drive.write_image(image, step)
            except NetDVDError as exc:
                raise NetDVDError(f"copy {n} of {count}: {exc.message}", exc.code) from exc
            await device.drive.eject()

    return device.jobs.start("burn_copy", run)
