"""The DVD archiver: turbine channels onto appendable DVDs through a NetDVD device.

``dvd_<name>`` subscribes to ``patterns`` (default every data source's
channels, metadata included, but never its own sources), stages the frames
on local disk (see :mod:`components.dvd_archiver.staging`) and burns them as
an appended session, laid out for a person with a PC (see
:mod:`turbine.layout` and docs/archive.rst):

* when ``burn_size`` bytes are staged, when ``burn_interval`` seconds have
  passed since the last burn, or on ``burn-now``;
* each session is read back through the device and every file's SHA-256
  checked against the session's manifest; only then is it recorded as
  archived and its staged data deleted;
* when the disc is full the archiver burns what fits, reports
  ``disc full, insert a blank`` on its command source, its log and its data
  source, ejects (after making ``copies - 1`` copies with the device's
  copy and burn-copy) and carries on with the next disc.

Restart-safe: it resumes every channel after the last frame it staged
(segments are atomic; ``state.json`` records what is verified on disc and
the session being burned), so no frame is archived twice and none is
skipped while the ring still holds it; frames the ring evicted first are
recorded as gaps in the manifest.

The archiver connects to the NetDVD device only while it burns, copies or
ejects, so an operator can use the device in between (a busy device is
retried later).

Commands besides ``status`` and ``help``: ``burn-now``, ``eject``,
``copy N``.  Progress goes to ``dvd_<name>_data_source/progress.json``.

Run with ``python -m components.dvd_archiver --name archiver --set netdvd=127.0.0.1:4444``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from components.netdvd import MediaStatus, NetDVDClient, NetDVDError, open_netdvd
from turbine import layout, run_blocking, wall_time
from turbine.client import Frame, parse_address
from turbine.component import Component, command
from turbine.settings import address, as_tuple, check, path_setting

from .staging import Buffer, ChannelBuffer, Position, Segment, Staging

PROGRESS_CHANNEL = "progress.json"
DISC_FULL = "disc full, insert a blank"
#: Queued drive requests (burn, eject, copy); more are refused as busy.
REQUEST_QUEUE = 16
#: How often a running job's progress is polled and published (seconds).
POLL_S = 0.25
#: Disc space kept free of estimates: ISO volume descriptors, directories, padding.
SESSION_OVERHEAD = {"new": 640 * 1024, "append": 192 * 1024}
#: The in-memory buffer is committed at once when it holds this many segments' worth.
BUFFER_SEGMENTS = 4


@attrs.define
class Request:
    """Work for the drive task, and its outcome once ``done`` is set."""

    kind: str  # "burn", "eject", "copy"
    reason: str = "command"
    count: int = 0
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: str | None = None


_POSITIVE_BYTES = check(lambda v: v > 0, "a positive number of bytes")
_POSITIVE_S = check(lambda v: v > 0, "a positive number of seconds")


@attrs.frozen
class DvdArchiverSettings:
    """What to archive and when to burn (docs/archive.rst lists each)."""

    #: The NetDVD device, HOST:PORT.
    netdvd: str = attrs.field(default="127.0.0.1:4444", validator=address)
    #: What to archive (own sources always excluded).
    patterns: tuple[str, ...] = attrs.field(
        default=("*_data_source/*",),
        converter=as_tuple,
        validator=check(
            lambda v: bool(v) and all(isinstance(p, str) for p in v),
            "a list of SOURCE/CHANNEL patterns",
        ),
    )
    #: Source-name prefixes not to archive.
    exclude: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)
    #: Staging directory (default var/dvd_archiver/<name>/staging).
    staging: str = path_setting()
    #: state.json lives here (default var/dvd_archiver/<name>).
    state_dir: str = path_setting()
    #: Burn when this many bytes are staged ...
    burn_size: int = attrs.field(default=256 * 2**20, validator=_POSITIVE_BYTES)
    #: ... or this many seconds after the last burn.
    burn_interval: float = attrs.field(default=3600.0, validator=_POSITIVE_S)
    #: Commit received frames to staging this often ...
    segment_seconds: float = attrs.field(default=1.0, validator=_POSITIVE_S)
    #: ... or when this many bytes are buffered.
    segment_bytes: int = attrs.field(default=4 * 2**20, validator=_POSITIVE_BYTES)
    #: Discs per full disc: 2 = one copy by copy + burn-copy.
    copies: int = attrs.field(default=1, validator=check(lambda v: 1 <= v <= 100, "1 to 100"))
    #: How long burn-now/eject/copy wait before answering.
    command_wait: float = attrs.field(default=8.0, validator=_POSITIVE_S)
    #: After a failed automatic burn, wait this long.
    retry: float = attrs.field(default=30.0, validator=_POSITIVE_S)


class DvdArchiver(Component):
    """Archives turbine channels onto DVDs through a NetDVD device (burn, verify, roll over)."""

    type = "dvd"
    channels = {PROGRESS_CHANNEL: "application/json"}
    Settings = DvdArchiverSettings

    @classmethod
    def rights(cls, name: str, settings: Any) -> dict[str, tuple[str, ...]]:
        """Reads the sources of its ``patterns``."""
        own = super().rights(name, settings)
        sources = (p.partition("/")[0] for p in settings.patterns)
        return own | {"read": (*own["read"], *dict.fromkeys(sources))}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg: DvdArchiverSettings = self.config
        self.device = parse_address(cfg.netdvd)
        base = Path("var") / "dvd_archiver" / self.name
        self.state_dir = Path(cfg.state_dir or base)
        self.staging_dir = Path(cfg.staging or self.state_dir / "staging")
        self.exclude = (f"{self.component}_", *cfg.exclude)
        self.staging: Staging | None = None
        self.positions: dict[str, Position] = {}
        self.buffer = Buffer()
        self.activity = "starting"
        self.job: dict[str, Any] | None = None
        self.media: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.last_result: Any = None
        self.notices: list[dict[str, Any]] = []
        self.gaps_recorded = 0
        self.duplicates_dropped = 0
        self._last_sink_seq: int | None = None
        self._lock = trio.Lock()
        self._full = trio.Event()
        self._send, self._recv = trio.open_memory_channel[Request](REQUEST_QUEUE)
        self._last_burn: float | None = None
        self._retry_at = 0.0

    # --- status

    def status(self) -> dict[str, Any]:
        out = super().status()
        st = self.staging
        archived = st.state["channels"] if st else {}
        out["archiver"] = {
            "activity": self.activity,
            "job": self.job,
            "media": self.media,
            "staged_bytes": st.staged_bytes if st else 0,
            "staged_segments": len(st.segments) if st else 0,
            "buffered_bytes": self.buffer.bytes,
            "next_session": st.state["next_session"] if st else None,
            "pending": st.state["pending"] if st else None,
            "sessions": st.state["sessions"][-10:] if st else [],
            "discs": st.state["discs"][-10:] if st else [],
            "channels": {
                path: {"staged_seq": pos.seq, "archived_seq": archived.get(path, {}).get("seq")}
                for path, pos in sorted(self.positions.items())
            },
            "gaps_recorded": self.gaps_recorded,
            "duplicates_dropped": self.duplicates_dropped,
            "last_result": self.last_result,
            "last_error": self.last_error,
            "notices": self.notices[-5:],
        }
        return out

    async def _publish(self, **event: Any) -> None:
        """Put the archiver's activity (and ``event``) on progress.json."""
        if self._data is None:
            return
        doc = {"time": wall_time(), "activity": self.activity, "job": self.job, **event}
        await self._data.put(PROGRESS_CHANNEL, json.dumps(doc, default=str).encode())
        await self._data.flush()

    async def _notice(self, message: str, **fields: Any) -> None:
        """Report ``message`` on the log, the command source and progress.json."""
        note = {"time": wall_time(), "message": message, **fields}
        self.notices = [*self.notices[-19:], note]
        await self.notify(message, **fields)
        await self._publish(event="notice", message=message, **fields)

    # --- taking frames in

    def offer(self, frame: Frame) -> None:
        """Buffer ``frame`` unless it was taken in before; record a gap before it."""
        path = f"{frame.source}/{frame.channel}"
        pos = self.positions.get(path)
        seq, ts = frame.seq, frame.timestamp
        gap: dict[str, Any] | None = None
        if pos is not None and seq <= pos.seq:
            if ts <= pos.time:
                self.duplicates_dropped += 1
                return
            # the source's numbering started again (e.g. the broker restarted)
            gap = {"kind": "renumbered", "after_seq": pos.seq, "after_time": pos.time}
        elif pos is not None and seq > pos.seq + 1:
            gap = {"kind": "evicted", "first_missed": pos.seq + 1, "last_missed": seq - 1}
            gap["missed"] = seq - 1 - pos.seq
        elif pos is None and seq > 1:
            gap = {"kind": "before_first_seen", "first_missed": 1, "last_missed": seq - 1}
            gap["missed"] = seq - 1
        if gap is not None:
            gap.update(channel=path, next_seq=seq, next_time=ts, detected=wall_time())
            self.buffer.gaps.append(gap)
            self.gaps_recorded += 1
            if gap["kind"] != "before_first_seen":
                self.log.warning("gap on %s: %s", path, json.dumps(gap))
        cb = self.buffer.channels.get(path)
        if cb is None:
            cb = self.buffer.channels[path] = ChannelBuffer(
                frame.source, frame.channel, frame.content_type
            )
        cb.frames.append((seq, ts, frame.data))
        self.buffer.bytes += len(frame.data)
        self.positions[path] = Position(seq, ts)

    async def _take_in(self, pattern: str) -> None:
        assert self.client is not None
        limit = self.config.segment_bytes
        async with self.client.subscribe(pattern, start="oldest") as sub:
            async for item in sub:
                if not isinstance(item, Frame):
                    continue  # a gap shows as a jump in seq at the next frame
                if item.source.startswith(self.exclude):
                    continue
                self.offer(item)
                if self.buffer.bytes >= limit:
                    self._full.set()
                    if self.buffer.bytes >= BUFFER_SEGMENTS * limit:
                        await self.commit()  # backpressure: the ring, not memory, absorbs

    async def commit(self) -> Segment | None:
        """Write what is buffered to staging as one segment."""
        assert self.staging is not None
        async with self._lock:
            buf, self.buffer = self.buffer, Buffer()
            self._full = trio.Event()
            segment = await run_blocking(self.staging.commit, buf)
        if (
            segment is not None
            and self.staging.staged_bytes >= self.config.burn_size
            and trio.current_time() >= self._retry_at
        ):
            self._submit(Request("burn", "size"))
        return segment

    async def _committer(self) -> None:
        while True:
            with trio.move_on_after(self.config.segment_seconds):
                await self._full.wait()
            await self.commit()

    # --- running

    async def run(self) -> None:
        if self.staging is None:
            self.staging = await run_blocking(Staging, self.staging_dir, self.state_dir)
            self.positions = self.staging.positions()
            self.log.info(
                "staging in %s: %d segments (%d bytes) waiting; next session %d",
                self.staging_dir,
                len(self.staging.segments),
                self.staging.staged_bytes,
                self.staging.state["next_session"],
            )
        if self._last_burn is None:
            self._last_burn = trio.current_time()
        self.activity = "idle"
        async with trio.open_nursery() as nursery:
            for pattern in self.config.patterns:
                nursery.start_soon(self._take_in, pattern)
            nursery.start_soon(self._committer)
            nursery.start_soon(self._drive_worker)

    def _submit(self, request: Request) -> Request:
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            request.error = "the archiver is busy: too many requests queued"
            request.done.set()
        return request

    async def _drive_worker(self) -> None:
        assert self.staging is not None
        if self.staging.state["pending"]:
            self._submit(Request("burn", "restart"))
        while True:
            assert self._last_burn is not None
            left = self._last_burn + self.config.burn_interval - trio.current_time()
            request = None
            with trio.move_on_after(max(left, 0.0)):
                request = await self._recv.receive()
            if request is None:
                self._last_burn = trio.current_time()
                if not self.staging.segments and not self.buffer:
                    continue
                request = Request("burn", "interval")
            elif request.reason == "size" and trio.current_time() < self._retry_at:
                continue
            await self._handle(request)

    async def _handle(self, request: Request) -> None:
        try:
            if request.kind == "burn":
                request.result = await self.burn(request.reason)
                self._last_burn = trio.current_time()
            elif request.kind == "eject":
                async with self._device() as dvd:
                    request.result = await self._finish_disc(dvd, full=False, copies=None)
            elif request.kind == "copy":
                async with self._device() as dvd:
                    request.result = await self._finish_disc(
                        dvd, full=False, copies=request.count + 1
                    )
            self.last_result = request.result
            self.last_error = None
        except NetDVDError as exc:
            request.error = f"{request.kind} failed ({exc.code}): {exc}"
            self.last_error = request.error
            self._retry_at = trio.current_time() + self.config.retry
            self.log.error("%s", request.error)
            await self._publish(event="error", message=request.error)
        finally:
            self.job = None
            self.activity = "idle"
            request.done.set()

    @asynccontextmanager
    async def _device(self) -> AsyncIterator[NetDVDClient]:
        host, port = self.device
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

    # --- burning

    async def burn(self, reason: str) -> dict[str, Any]:
        """Burn everything staged now, as one or more sessions; verify each.

        Raises:
            NetDVDError: the device is busy, unreachable, has no disc, or refused.
        """
        assert self.staging is not None
        await self.commit()
        if not self.staging.segments and not self.staging.state["pending"]:
            return {"sessions": [], "message": "nothing staged"}
        target = self.staging.segments[-1].number if self.staging.segments else 0
        done: list[dict[str, Any]] = []
        async with self._device() as dvd:
            if self.staging.state["pending"]:
                await self._resolve_pending(dvd)
            while True:
                segments = [s for s in self.staging.segments if s.number <= target]
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
        self.log.info("burned %d session(s) (%s)", len(done), reason)
        return {"sessions": done}

    def _fits(self, segments: list[Segment], media: MediaStatus) -> int:
        """How many of ``segments`` (in order) the disc's free space takes, by estimate."""
        room = media.free_bytes - SESSION_OVERHEAD["new" if media.blank else "append"]
        n = 0
        for seg in segments:
            room -= seg.estimate
            if room < 0:
                break
            n += 1
        return n

    async def _burn_fitting(
        self, dvd: NetDVDClient, segments: list[Segment], media: MediaStatus
    ) -> dict[str, Any] | None:
        """Burn the longest prefix of ``segments`` that fits; None if none does."""
        assert self.staging is not None
        n = min(self._fits(segments, media), len(segments))
        mode = "new" if media.blank else "append"
        while n > 0:
            session = self.staging.state["next_session"]
            earlier = self.staging.sessions_on(media.name)
            self.activity = f"building session {session}"
            local, manifest_bytes, manifest = await run_blocking(
                self.staging.build_session, segments[:n], session, self.component, earlier
            )
            try:
                await self._write_session(dvd, session, local, mode, manifest, media)
            except NetDVDError as exc:
                self.staging.state["pending"] = None
                await run_blocking(self.staging.save_state)
                if exc.code != "disc_full":
                    raise
                self.log.info("session %d with %d segments does not fit: %s", session, n, exc)
                n //= 2
                continue
            await self._verify(dvd, session, manifest_bytes, manifest)
            async with self._lock:
                await run_blocking(self.staging.archived, session, manifest, media.name)
            result = {
                "session": session,
                "disc": media.name,
                "mode": mode,
                "segments": n,
                "files": len(manifest["files"]),
                "frames": sum(c["frames"] for c in manifest["channels"].values()),
                "gaps": len(manifest["gaps"]),
            }
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
        assert self.staging is not None
        self.activity = f"uploading session {session}"
        await dvd.clear()
        for file in layout.walk_files(local):
            await dvd.put_file(file, file.relative_to(local).as_posix())
        self.staging.state["pending"] = {
            "session": session,
            "disc": media.name,
            "through_segment": manifest["through_segment"],
        }
        await run_blocking(self.staging.save_state)
        self.activity = f"burning session {session} ({mode})"
        volume = f"{self.component.upper()[:26]}_{session:04d}"
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
        self.activity = f"verifying session {session}"
        await dvd.mount()
        try:
            on_disc = await dvd.read(layout.manifest_path(session))
            if manifest_bytes is not None and on_disc != manifest_bytes:
                raise NetDVDError(
                    f"session {session}: the manifest on the disc differs", "verify_failed"
                )
            files = manifest["files"]
            for i, (path, entry) in enumerate(sorted(files.items())):
                self.job = {"what": f"verifying session {session}", "done": i, "total": len(files)}
                data = await dvd.read(path)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise NetDVDError(
                        f"session {session}: {path} on the disc does not match its SHA-256",
                        "verify_failed",
                    )
        finally:
            self.job = None
            await dvd.unmount()

    async def _resolve_pending(self, dvd: NetDVDClient) -> None:
        """After a restart during a burn: was the session written?  Keep it if verified."""
        assert self.staging is not None
        pending = self.staging.state["pending"]
        session = pending["session"]
        media = await self._media(dvd)
        manifest: dict[str, Any] | None = None
        if media.present and not media.blank and media.name == pending["disc"]:
            await dvd.mount()
            try:
                manifest = json.loads(await dvd.read(layout.manifest_path(session)))
            except NetDVDError as exc:
                if exc.code != "not_found":
                    raise
            finally:
                await dvd.unmount()
        if manifest is not None and manifest.get("through_segment") == pending["through_segment"]:
            try:
                await self._verify(dvd, session, None, manifest)
            except NetDVDError as exc:
                self.log.warning(
                    "session %d from before the restart: %s; burning again", session, exc
                )
            else:
                self.log.info("session %d from before the restart is on disc and verified", session)
                async with self._lock:
                    await run_blocking(self.staging.archived, session, manifest, media.name)
                return
        self.log.info("session %d from before the restart is not on disc; burning again", session)
        self.staging.state["pending"] = None
        await run_blocking(self.staging.save_state)

    async def _finish_disc(
        self, dvd: NetDVDClient, *, full: bool, copies: int | None
    ) -> dict[str, Any]:
        """Copy the disc in the drive onto ``copies - 1`` blanks, eject it, record it."""
        assert self.staging is not None
        copies = self.config.copies if copies is None else copies
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
            "sessions": self.staging.sessions_on(media.name),
            "copies": copies if not media.blank else 0,
            "full": full,
            "time": wall_time(),
        }
        self.staging.state["discs"].append(record)
        del self.staging.state["discs"][:-100]
        await run_blocking(self.staging.save_state)
        now = await self._media(dvd)
        if full:
            await self._notice(DISC_FULL, disc=media.name, copies=record["copies"], next=now.name)
        else:
            self.log.info("ejected %s; now in the drive: %s", media.name, now.name)
        if not now.present:
            await self._notice("no disc in the drive: insert a blank")
        return {**record, "next": now.name}

    # --- commands

    async def _ask(self, request: Request) -> Any:
        self._submit(request)
        with trio.move_on_after(self.config.command_wait):
            await request.done.wait()
        if not request.done.is_set():
            return {
                "message": f"{request.kind} is running; follow it with status",
                "activity": self.activity,
            }
        if request.error:
            raise ValueError(request.error)
        return request.result

    @command("burn-now", help="burn what is staged now as a session (and verify it)")
    async def burn_now(self) -> Any:
        return await self._ask(Request("burn"))

    @command("eject", help="finish the disc in the drive (copies if configured) and eject it")
    async def eject(self) -> Any:
        return await self._ask(Request("eject"))

    @command("copy", help="copy the disc in the drive onto N blanks, then eject it")
    async def copy(self, n: int) -> Any:
        if not 1 <= n <= 100:
            raise ValueError(f"copy N: expected 1 to 100 copies, got {n}")
        return await self._ask(Request("copy", count=n))


COMPONENT = DvdArchiver
