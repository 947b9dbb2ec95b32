"""The still-image camera: snapshots from an Axis camera's ``/axis-cgi/jpg/image.cgi``.

One component per camera.  It asks the camera for one JPEG
(``?resolution=WxH``) every ``interval`` seconds, and on the ``snap``
command, and publishes each as a frame of ``video_<name>_data_source/video.jpg``
stamped with the time the camera answered (``self.now()``: the wall clock,
or the broker's with ``clock = "broker"``; the picture was taken between the
request and then; ``status`` shows that round trip as ``last_round_trip``).

Why the ``video`` type and not a type of its own: the source types are a
short list every broker checks (``still_door`` would need ``types = ["still"]``
on each broker that carries it), and a snapshot is the same thing as a video
frame, a JPEG with its capture time.  Under ``video`` the thumbnailer
thumbnails it, the web viewer shows it and the DVD archiver burns it as a
``.jpg`` with no change to any of them; the metadata's ``"mode": "still"`` and
``interval`` tell a reader it is a still camera.

A snapshot that fails (camera down, a 404, not a JPEG) is logged as a
warning and shown in ``status`` (``camera``); the next interval tries again.
``snap`` answers with the error instead.

Commands besides ``status`` and ``help``: ``snap`` and ``set-interval S``
(0: only on ``snap``).

Run with ``python -m components.still --name door --set url=http://127.0.0.1:8081/axis-cgi/jpg/image.cgi``.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from components.video.component import (
    STANDARD_RESOLUTIONS,
    VIDEO_CHANNEL,
    camera_url,
    jpeg_size,
    parse_resolution,
)
from components.video.errors import HttpError, HttpStatusError, VideoError
from components.video.httpclient import open_get
from turbine.component import Component, command
from turbine.settings import check

#: Largest snapshot accepted (an Axis camera's biggest JPEG is a few MiB).
MAX_SNAPSHOT_BYTES = 16 * 2**20
_JPEG_TYPES = ("image/jpeg", "image/jpg")


def _url(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        camera_url(value, 1, 1, None)
    except ValueError as exc:
        raise ValueError(f"setting {attribute.name!r}: {exc}") from None


@attrs.frozen
class StillSettings:
    """Where the camera is, the picture size, and how often to take one."""

    url: str = attrs.field(default="http://127.0.0.1:8081/axis-cgi/jpg/image.cgi", validator=_url)
    width: int = attrs.field(default=640, validator=check(lambda v: v > 0, "pixels > 0"))
    height: int = attrs.field(default=480, validator=check(lambda v: v > 0, "pixels > 0"))
    #: Seconds between snapshots; 0: only on ``snap``.
    interval: float = attrs.field(default=5.0, validator=check(lambda v: v >= 0, "seconds >= 0"))
    #: Seconds a snapshot may take (connect, answer, body).
    timeout: float = attrs.field(default=10.0, validator=check(lambda v: v > 0, "seconds > 0"))
    #: Whether the thumbnailer makes thumbnails of it (as of a video camera).
    thumbnail: bool = True


async def take_snapshot(url: str) -> bytes:
    """GET one JPEG from ``url``: its bytes.  No deadline of its own: wrap it in ``trio.fail_after``.

    Raises:
        HttpStatusError: the camera answered with a status other than 200.
        HttpError: the answer is not a JPEG, or is larger than
            :data:`MAX_SNAPSHOT_BYTES`.
        CameraDisconnected: the camera cannot be reached, or went silent.
    """
    async with await open_get(url, accept="image/jpeg") as response:
        head = response.head
        if head.status != 200:
            raise HttpStatusError(url, head.status, head.reason)
        if head.media_type not in _JPEG_TYPES:
            raise HttpError(f"{url} sent {head.media_type or 'no content type'}, not a JPEG")
        body = bytearray()
        while chunk := await response.receive_some():
            body += chunk
            if len(body) > MAX_SNAPSHOT_BYTES:
                raise HttpError(f"{url} sent more than {MAX_SNAPSHOT_BYTES} bytes")
    return bytes(body)


class Still(Component):
    """A still-image camera on the turbine: video_<name>_data_source/video.jpg, a snapshot a frame."""

    type = "video"
    channels = {VIDEO_CHANNEL: "image/jpeg"}
    Settings = StillSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshots = 0
        self.last_capture: float | None = None
        self.last_round_trip: float | None = None
        self.measured: tuple[int, int] | None = None
        self.camera = "not asked yet"
        self._one_at_a_time = trio.Lock()
        self._interval_changed = trio.Event()

    @property
    def url(self) -> str:
        """The URL asked of the camera, with the resolution."""
        c = self.config
        return camera_url(c.url, c.width, c.height, None)

    def metadata(self) -> dict[str, Any]:
        c = self.config
        w, h = self.measured or (c.width, c.height)
        return {
            **super().metadata(),
            "mode": "still",
            "source": c.url,
            "interval": c.interval,
            "resolution": f"{w}x{h}",
            "width": w,
            "height": h,
            "supported_resolutions": sorted(
                {*STANDARD_RESOLUTIONS, f"{w}x{h}"}, key=parse_resolution
            ),
            "color_depth": 24,
            "supported_color_depths": [24],
            "thumbnail": {"enabled": c.thumbnail},
        }

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "camera": self.camera,
            "url": self.url,
            "snapshots": self.snapshots,
            "last_capture": self.last_capture,
            "last_round_trip": self.last_round_trip,
        }

    async def snap(self) -> dict[str, Any]:
        """Take one snapshot and publish it; what was published.

        Raises:
            VideoError: the camera did not give a JPEG (the message says why).
        """
        async with self._one_at_a_time:
            asked = self.now()
            try:
                with trio.fail_after(self.config.timeout):
                    jpeg = await take_snapshot(self.url)
            except trio.TooSlowError:
                self.camera = f"failed: no snapshot within {self.config.timeout:g} s"
                raise VideoError(
                    f"{self.url}: no snapshot within {self.config.timeout:g} s"
                ) from None
            except VideoError as exc:
                self.camera = f"failed: {exc}"
                raise
            captured = self.now()
            self.camera = "ok"
            size = jpeg_size(jpeg)
            if size != self.measured:
                self.measured = size
                await self.publish_metadata()
            await self.data.put(VIDEO_CHANNEL, jpeg, timestamp=captured)
            await self.data.flush()
            self.snapshots += 1
            self.last_capture = captured
            self.last_round_trip = captured - asked
        w, h = size or (None, None)
        return {"timestamp": captured, "bytes": len(jpeg), "width": w, "height": h}

    async def run(self) -> None:
        deadline = trio.current_time()
        while True:
            interval = self.config.interval
            if interval > 0 and trio.current_time() >= deadline:
                try:
                    await self.snap()
                except VideoError as exc:
                    self.log.warning("snapshot failed: %s; next in %g s", exc, interval)
                deadline = max(deadline + interval, trio.current_time())
            changed = self._interval_changed
            if interval > 0:
                with trio.move_on_at(deadline):
                    await changed.wait()
            else:
                await changed.wait()
            if changed.is_set():
                self._interval_changed = trio.Event()
                deadline = trio.current_time()

    @command("snap", help="take a snapshot now and publish it")
    async def snap_command(self) -> dict[str, Any]:
        return await self.snap()

    @command("set-interval", help="seconds between snapshots (0: only on snap)")
    async def set_interval(self, seconds: float) -> str:
        self.change_settings(interval=seconds)
        self._interval_changed.set()
        self.log.info("interval set to %g s", seconds)
        await self.publish_metadata()
        return f"every {seconds:g} s" if seconds > 0 else "only on snap"


COMPONENT = Still
