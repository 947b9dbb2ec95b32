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

import json
from pathlib import Path
from typing import Any

import attrs
import trio

from components.netdvd import NetDVDError
from turbine import run_blocking, wall_time
from turbine.client import Frame, parse_address
from turbine.component import Component, command
from turbine.settings import address, as_tuple, check, path_setting

from .burner import DISC_FULL, Burner
from .intake import Intake
from .staging import Segment, Staging

__all__ = ["COMPONENT", "DISC_FULL", "DvdArchiver", "DvdArchiverSettings", "Request"]

PROGRESS_CHANNEL = "progress.json"
#: Queued drive requests (burn, eject, copy); more are refused as busy.
REQUEST_QUEUE = 16
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
        self.intake = Intake(self.log)
        self.burner: Burner | None = None
        self.last_error: str | None = None
        self.last_result: Any = None
        self.notices: list[dict[str, Any]] = []
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
        burner = self.burner
        archived = st.state["channels"] if st else {}
        out["archiver"] = {
            "activity": burner.activity if burner else "starting",
            "job": burner.job if burner else None,
            "media": burner.media if burner else None,
            "staged_bytes": st.staged_bytes if st else 0,
            "staged_segments": len(st.segments) if st else 0,
            "buffered_bytes": self.intake.buffer.bytes,
            "next_session": st.state["next_session"] if st else None,
            "pending": st.state["pending"] if st else None,
            "sessions": st.state["sessions"][-10:] if st else [],
            "discs": st.state["discs"][-10:] if st else [],
            "channels": {
                path: {"staged_seq": pos.seq, "archived_seq": archived.get(path, {}).get("seq")}
                for path, pos in sorted(self.intake.positions.items())
            },
            "gaps_recorded": self.intake.gaps_recorded,
            "duplicates_dropped": self.intake.duplicates_dropped,
            "last_result": self.last_result,
            "last_error": self.last_error,
            "notices": self.notices[-5:],
        }
        return out

    async def _publish(self, **event: Any) -> None:
        """Put the archiver's activity (and ``event``) on progress.json."""
        if self._data is None or self.burner is None:
            return
        burner = self.burner
        doc = {"time": wall_time(), "activity": burner.activity, "job": burner.job, **event}
        await self._data.put(PROGRESS_CHANNEL, json.dumps(doc, default=str).encode())
        await self._data.flush()

    async def _notice(self, message: str, **fields: Any) -> None:
        """Report ``message`` on the log, the command source and progress.json."""
        note = {"time": wall_time(), "message": message, **fields}
        self.notices = [*self.notices[-19:], note]
        await self.notify(message, **fields)
        await self._publish(event="notice", message=message, **fields)

    # --- taking frames in (:class:`~components.dvd_archiver.intake.Intake` buffers them)

    async def _take_in(self, pattern: str) -> None:
        assert self.client is not None
        limit, intake = self.config.segment_bytes, self.intake
        async with self.client.subscribe(pattern, start="oldest") as sub:
            async for item in sub:
                if not isinstance(item, Frame):
                    continue  # a gap shows as a jump in seq at the next frame
                if item.source.startswith(self.exclude):
                    continue
                intake.offer(item)
                if intake.buffer.bytes >= limit:
                    self._full.set()
                    if intake.buffer.bytes >= BUFFER_SEGMENTS * limit:
                        await self.commit()  # backpressure: the ring, not memory, absorbs

    async def commit(self) -> Segment | None:
        """Write what is buffered to staging as one segment."""
        assert self.staging is not None
        async with self._lock:
            buf = self.intake.take()
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
            self.intake.positions = self.staging.positions()
            self.log.info(
                "staging in %s: %d segments (%d bytes) waiting; next session %d",
                self.staging_dir,
                len(self.staging.segments),
                self.staging.staged_bytes,
                self.staging.state["next_session"],
            )
            self.burner = Burner(
                self.staging,
                address=self.device,
                component=self.component,
                copies=self.config.copies,
                lock=self._lock,
                log=self.log,
                publish=self._publish,
                notice=self._notice,
            )
        if self._last_burn is None:
            self._last_burn = trio.current_time()
        assert self.burner is not None
        self.burner.idle()
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
                if not self.staging.segments and not self.intake.buffer:
                    continue
                request = Request("burn", "interval")
            elif request.reason == "size" and trio.current_time() < self._retry_at:
                continue
            await self._handle(request)

    async def _handle(self, request: Request) -> None:
        assert self.burner is not None
        try:
            if request.kind == "burn":
                await self.commit()
                request.result = await self.burner.burn(request.reason)
                self._last_burn = trio.current_time()
            elif request.kind == "eject":
                request.result = await self.burner.eject(copies=None)
            elif request.kind == "copy":
                request.result = await self.burner.eject(copies=request.count + 1)
            self.last_result = request.result
            self.last_error = None
        except NetDVDError as exc:
            request.error = f"{request.kind} failed ({exc.code}): {exc}"
            self.last_error = request.error
            self._retry_at = trio.current_time() + self.config.retry
            self.log.error("%s", request.error)
            await self._publish(event="error", message=request.error)
        finally:
            self.burner.idle()
            request.done.set()

    # --- commands

    async def _ask(self, request: Request) -> Any:
        self._submit(request)
        with trio.move_on_after(self.config.command_wait):
            await request.done.wait()
        if not request.done.is_set():
            return {
                "message": f"{request.kind} is running; follow it with status",
                "activity": self.burner.activity if self.burner else "starting",
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
