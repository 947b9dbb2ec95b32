"""The drive side of the DVD archiver: staged segments onto the disc in a NetDVD device.

:class:`Burner` burns what is staged as appended sessions, reads each session
back and checks it against its manifest before it is recorded as archived,
resolves a session left pending by a restart, and rolls a full disc over
(copies, eject, a notice asking for a blank). It connects to the device only
for the length of one job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import attrs
import trio

from components.netdvd import MediaStatus, NetDVDClient, NetDVDError, open_netdvd
from turbine import layout, run_blocking, wall_time

from .staging import Segment, Staging

DISC_FULL = "disc full, insert a blank"
#: How often a running job's progress is polled and published (seconds).
POLL_S = 0.25
#: Disc space kept free of estimates: ISO volume descriptors, directories, padding.
SESSION_OVERHEAD = {"new": 640 * 1024, "append": 192 * 1024}


class Burner:
    """Burns, verifies and rolls over discs for one archiver.

    ``activity``, ``job`` and ``media`` say what it is doing, for the
    archiver's status. ``publish(**event)`` puts an event on the archiver's
    progress channel; ``notice(message, **fields)`` tells the operator.
    ``lock`` is the archiver's staging lock, held while a session is recorded.
    """

    def __init__(
        self,
        staging: Staging,
        *,
        address: tuple[str, int],
        component: str,
        copies: int,
        lock: trio.Lock,
        log: logging.Logger | logging.LoggerAdapter,
        publish: Callable[..., Awaitable[None]],
        notice: Callable[..., Awaitable[None]],
    ) -> None:
        self._staging = staging
        self._address = address
        self._component = component
        self._copies = copies
        self._lock = lock
        self._log = log
        self._publish = publish
        self._notice = notice
        self.activity = "idle"
        self.job: dict[str, Any] | None = None
        self.media: dict[str, Any] | None = None

    def idle(self) -> None:
        """Say that no job is running."""
        self.job = None
        self.activity = "idle"

    async def eject(self, copies: int | None) -> dict[str, Any]:
        """Finish the disc in the drive: ``copies - 1`` copies (``None``: as configured), eject.

        Raises:
            NetDVDError: the device is busy, unreachable, has no disc, or refused.
        """
        async with self._device() as dvd:
            return await self._finish_disc(dvd, full=False, copies=copies)

    @asynccontextmanager
    async def _device(self) -> AsyncIterator[NetDVDClient]:
        host, port = self._address
        self.activity = "connecting to the NetDVD device"
        async with open_netdvd(host, port) as dvd:
            status = await dvd.status()
            if status.job is not None:
                self.activity = "waiting for the device's running job"
                await dvd.wait()
            if status.mounted:
                await dvd.unmount()
            yield dvd

    async def _media(self, dvd: NetDVDClient) -> MediaStatus:
        media = (await dvd.status()).media
        self.media = attrs.asdict(media)
        return media

    async def burn(self, reason: str) -> dict[str, Any]:
        """Burn every staged segment, as one or more sessions; verify each.

        The archiver commits what it has buffered first.

        Raises:
            NetDVDError: the device is busy, unreachable, has no disc, or refused.
        """
        if not self._staging.segments and not self._staging.state["pending"]:
            return {"sessions": [], "message": "nothing staged"}
        target = self._staging.segments[-1].number if self._staging.segments else 0
        done: list[dict[str, Any]] = []
        async with self._device() as dvd:
            if self._staging.state["pending"]:
                await self._resolve_pending(dvd)
            while True:
                segments = [s for s in self._staging.segments if s.number <= target]
                if not segments:
                    break
                media = await self._media(dvd)
                if not media.present:
                    raise NetDVDError("no disc in the drive: insert a blank", "no_disc")
                burned = await self._burn_fitting(dvd, segments, media)
                if burned is None:
                    if media.blank:
                        raise NetDVDError(
                            f"segment {segments[0].number} does not fit on an empty disc "
                            f"({media.free_bytes} bytes); lower segment_bytes",
                            "disc_full",
                        )
                    await self._finish_disc(dvd, full=True, copies=None)
                    continue
                done.append(burned)
                if burned["segments"] < len(segments):
                    await self._finish_disc(dvd, full=True, copies=None)
        self._log.info("burned %d session(s) (%s)", len(done), reason)
        return {"sessions": done}

    async def _burn_fitting(
        self, dvd: NetDVDClient, segments: list[Segment], media: MediaStatus
    ) -> dict[str, Any] | None:
        """Burn the longest prefix of ``segments`` that fits; None if none does."""
        n = min(_fitting(segments, media), len(segments))
        mode = "new" if media.blank else "append"
        while n > 0:
            session = self._staging.state["next_session"]
            earlier = self._staging.sessions_on(media.name)
            self.activity = f"building session {session}"
            local, manifest_bytes, manifest = await run_blocking(
                self._staging.build_session, segments[:n], session, self._component, earlier
            )
            try:
                await self._write_session(dvd, session, local, mode, manifest, media)
            except NetDVDError as exc:
                await run_blocking(self._staging.set_pending, None)
                if exc.code != "disc_full":
                    raise
                self._log.info("session %d with %d segments does not fit: %s", session, n, exc)
                n //= 2
                continue
            await self._verify(dvd, session, manifest_bytes, manifest)
            async with self._lock:
                record = await run_blocking(self._staging.archived, session, manifest, media.name)
            result = {**record, "mode": mode, "segments": n}
            await self._publish(event="archived", **result)
            return result
        return None

    async def _write_session(
        self,
        dvd: NetDVDClient,
        session: int,
        local: Path,
        mode: str,
        manifest: dict[str, Any],
        media: MediaStatus,
    ) -> None:
        self.activity = f"uploading session {session}"
        await dvd.clear()
        for file in layout.walk_files(local):
            await dvd.put_file(file, file.relative_to(local).as_posix())
        through = manifest["through_segment"]
        pending = {"session": session, "disc": media.name, "through_segment": through}
        await run_blocking(self._staging.set_pending, pending)
        self.activity = f"burning session {session} ({mode})"
        volume = f"{self._component.upper()[:26]}_{session:04d}"
        await dvd.start_burn(mode, volume_id=volume)  # type: ignore[arg-type]
        await self._follow(dvd, f"session {session}")

    async def _follow(self, dvd: NetDVDClient, what: str) -> dict[str, Any]:
        while (status := await dvd.status()).job is not None:
            self.job = {"what": what, **attrs.asdict(status.job)}
            await self._publish(event="progress")
            await trio.sleep(POLL_S)
        outcome = await dvd.wait()
        self.job = None
        return outcome

    async def _verify(
        self,
        dvd: NetDVDClient,
        session: int,
        manifest_bytes: bytes | None,
        manifest: dict[str, Any],
    ) -> None:
        """Read the session back and check every file against the manifest.

        Raises:
            NetDVDError: a file is missing or differs (code ``verify_failed``).
        """
        what = self.activity = f"verifying session {session}"

        def checking(done: int, total: int) -> None:
            self.job = {"what": what, "done": done, "total": total}

        try:
            await verify_session(dvd, session, manifest_bytes, manifest, checking)
        finally:
            self.job = None

    async def _resolve_pending(self, dvd: NetDVDClient) -> None:
        """After a restart during a burn: was the session written?  Keep it if verified."""
        pending = self._staging.state["pending"]
        session = pending["session"]
        media = await self._media(dvd)
        manifest: dict[str, Any] | None = None
        if media.present and not media.blank and media.name == pending["disc"]:
            manifest = await _manifest_on_disc(dvd, session)
        if manifest is not None and manifest.get("through_segment") == pending["through_segment"]:
            try:
                await self._verify(dvd, session, None, manifest)
            except NetDVDError as exc:
                self._log.warning(
                    "session %d from before the restart: %s; burning again", session, exc
                )
            else:
                self._log.info(
                    "session %d from before the restart is on disc and verified", session
                )
                async with self._lock:
                    await run_blocking(self._staging.archived, session, manifest, media.name)
                return
        self._log.info("session %d from before the restart is not on disc; burning again", session)
        await run_blocking(self._staging.set_pending, None)

    async def _finish_disc(
        self, dvd: NetDVDClient, *, full: bool, copies: int | None
    ) -> dict[str, Any]:
        """Copy the disc in the drive onto ``copies - 1`` blanks, eject it, record it."""
        copies = self._copies if copies is None else copies
        media = await self._media(dvd)
        if not media.present:
            raise NetDVDError("no disc in the drive", "no_disc")
        if copies > 1 and not media.blank:
            self.activity = f"copying {media.name}"
            await dvd.request("copy")
            await self._follow(dvd, f"copy of {media.name}")
            await dvd.eject()
            self.activity = f"burning {copies - 1} copies of {media.name}"
            await dvd.request("burn_copy", count=copies - 1)
            await self._follow(dvd, f"copies of {media.name}")
        else:
            await dvd.eject()
        record = {
            "disc": media.name,
            "sessions": self._staging.sessions_on(media.name),
            "copies": copies if not media.blank else 0,
            "full": full,
            "time": wall_time(),
        }
        await run_blocking(self._staging.disc_done, record)
        now = await self._media(dvd)
        if full:
            await self._notice(DISC_FULL, disc=media.name, copies=record["copies"], next=now.name)
        else:
            self._log.info("ejected %s; now in the drive: %s", media.name, now.name)
        if not now.present:
            await self._notice("no disc in the drive: insert a blank")
        return {**record, "next": now.name}


def _fitting(segments: list[Segment], media: MediaStatus) -> int:
    """How many of ``segments`` (in order) the disc's free space takes, by estimate."""
    room = media.free_bytes - SESSION_OVERHEAD["new" if media.blank else "append"]
    n = 0
    for seg in segments:
        room -= seg.estimate
        if room < 0:
            break
        n += 1
    return n


async def verify_session(
    dvd: NetDVDClient,
    session: int,
    manifest_bytes: bytes | None,
    manifest: dict[str, Any],
    checking: Callable[[int, int], None],
) -> None:
    """Mount the disc, read session ``session``'s manifest (equal to ``manifest_bytes``
    unless None) and every file it lists back, each against its SHA-256; unmount.
    ``checking(done, total)`` is told before each file.

    Raises:
        NetDVDError: a file is missing or differs (code ``verify_failed``).
    """
    await dvd.mount()
    try:
        on_disc = await dvd.read(layout.manifest_path(session))
        if manifest_bytes is not None and on_disc != manifest_bytes:
            raise NetDVDError(
                f"session {session}: the manifest on the disc differs", "verify_failed"
            )
        files = manifest["files"]
        for i, (path, entry) in enumerate(sorted(files.items())):
            checking(i, len(files))
            data = await dvd.read(path)
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise NetDVDError(
                    f"session {session}: {path} on the disc does not match its SHA-256",
                    "verify_failed",
                )
    finally:
        await dvd.unmount()


async def _manifest_on_disc(dvd: NetDVDClient, session: int) -> dict[str, Any] | None:
    """Session ``session``'s manifest on the disc in the drive, or None: it has none.

    Raises:
        NetDVDError: the disc cannot be read (not a missing manifest).
    """
    await dvd.mount()
    try:
        return cast(dict[str, Any], json.loads(await dvd.read(layout.manifest_path(session))))
    except NetDVDError as exc:
        if exc.code != "not_found":
            raise
        return None
    finally:
        await dvd.unmount()
