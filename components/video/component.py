"""The video component: ``video_<name>_data_source/video.jpg`` on the turbine.

One component per camera.  The frames come from one of three places,
chosen with the ``mode`` setting:

* ``synthetic``: a test pattern (``width`` x ``height`` at ``fps``);
* ``mjpeg``: an Axis VAPIX camera at ``url``; the component asks it for
  ``resolution=WxH&fps=N`` and reconnects with backoff when it drops,
  logging each drop and the recovery;
* ``files``: the JPEG files of ``dir``, looped, ``fps`` a second.

Each frame goes out with its capture time as its timestamp.  The metadata
follows the standard list for video channels: resolution, supported
resolutions and colour depths, frame rates, focal lengths, the control point
name if the camera is NTCP addressable, and the thumbnail parameters the
thumbnailer honours (``thumbnail``, ``thumbnail_size``, ``thumbnail_quality``).

Commands besides ``status`` and ``help``: ``set-fps N`` and
``set-resolution WxH`` change the setting and restart the frame source.

Run with ``python -m components.video --name cam1 --set mode=synthetic``.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import attrs
import trio
from PIL import Image

from components.video.files import jpeg_files
from components.video.mjpeg import HttpStatusError, mjpeg_frames
from components.video.synthetic import PatternRenderer, SyntheticConfig, synthetic_frames
from turbine import Backoff
from turbine.component import Component, command
from turbine.settings import as_tuple, check, path_setting

VIDEO_CHANNEL = "video.jpg"
MODES = ("synthetic", "mjpeg", "files")
#: Resolutions a synthetic camera (and the Axis emulator) offers in the metadata.
STANDARD_RESOLUTIONS = (
    "160x120",
    "176x144",
    "320x240",
    "352x288",
    "640x480",
    "704x576",
    "800x600",
    "1280x720",
    "1280x960",
    "1920x1080",
)
STANDARD_FRAME_RATES = (1, 2, 5, 10, 15, 25, 30)
#: Highest frame rate accepted by ``set-fps`` (an Axis camera stops at 60).
MAX_FPS = {"synthetic": 1000.0, "files": 1000.0, "mjpeg": 60.0}
#: After a frame source fails for good (bad directory, 404 ...): first and longest wait.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``.

    Raises:
        ValueError: not ``WIDTHxHEIGHT`` with positive whole numbers.
    """
    w, sep, h = str(text).strip().lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise ValueError(f"resolution {text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    return int(w), int(h)


def camera_url(url: str, width: int, height: int, fps: float | None) -> str:
    """``url`` with the VAPIX ``resolution`` and ``fps`` query parameters set
    (replacing any the URL had; no ``fps`` when it is None, as for a
    snapshot), other parameters kept.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"camera URL {url!r} must look like http://HOST[:PORT]/PATH")
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("resolution", "fps")
    ]
    query.append(("resolution", f"{width}x{height}"))
    if fps is not None:
        query.append(("fps", f"{fps:g}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's header (no decoding); None if unreadable."""
    try:
        with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
            return im.size
    except Exception:  # any unreadable input: the size is simply unknown
        return None


_QUALITY = check(lambda v: 1 <= v <= 95, "1..95")


@attrs.frozen
class VideoSettings:
    """mode=synthetic, mjpeg (with url) or files (with dir); the rest as named."""

    mode: str = "synthetic"
    url: str = ""
    dir: str = path_setting()
    width: int = 640
    height: int = 480
    fps: float = 10.0
    quality: int = attrs.field(default=80, validator=_QUALITY)
    thumbnail: bool = True
    thumbnail_size: str = "176x144"
    thumbnail_quality: int = attrs.field(default=75, validator=_QUALITY)
    control_point: str = ""
    focal_lengths: tuple[float, ...] = attrs.field(default=(), converter=as_tuple)
    reconnect_max: float = 30.0

    def __attrs_post_init__(self) -> None:
        """The settings that depend on each other.

        Raises:
            ValueError: says which setting is wrong and what would be right.
        """
        mode = self.mode
        if mode not in MODES:
            raise ValueError(f"setting 'mode' is {mode!r}; use one of {', '.join(MODES)}")
        if mode == "mjpeg":
            if not self.url:
                raise ValueError("mode=mjpeg needs url=http://HOST[:PORT]/axis-cgi/mjpg/video.cgi")
            camera_url(self.url, 1, 1, 1)
        if mode == "files" and not self.dir:
            raise ValueError("mode=files needs dir=DIRECTORY holding *.jpg files")
        if not 0 < self.fps <= MAX_FPS[mode]:
            raise ValueError(f"setting 'fps' is {self.fps:g}; use (0, {MAX_FPS[mode]:g}]")
        if self.width < 1 or self.height < 1:
            raise ValueError("settings 'width' and 'height' must be positive")
        try:
            parse_resolution(self.thumbnail_size)
        except ValueError as exc:
            raise ValueError(f"setting 'thumbnail_size': {exc}") from None


class Video(Component):
    """A camera on the turbine: publishes video_<name>_data_source/video.jpg.

    mode=synthetic (test pattern), mode=mjpeg with url=http://... (Axis VAPIX
    camera; reconnects with backoff), or mode=files with dir=DIR (JPEG files,
    looped).
    """

    type = "video"
    channels = {VIDEO_CHANNEL: "image/jpeg"}
    Settings = VideoSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames = 0
        self.last_capture: float | None = None
        self.source_state = "starting"
        self.restarts = 0
        self.measured: tuple[int, int] | None = None
        self._restart_scope: trio.CancelScope | None = None

    # --- what the turbine sees

    @property
    def url(self) -> str:
        """The URL asked of the camera (mode=mjpeg), with resolution and fps."""
        c = self.config
        return camera_url(c.url, c.width, c.height, c.fps)

    def resolution(self) -> tuple[int, int]:
        if self.config.mode == "files" or self.measured is not None:
            return self.measured or (0, 0)
        return self.config.width, self.config.height

    def metadata(self) -> dict[str, Any]:
        c = self.config
        w, h = self.resolution()
        mode = c.mode
        here = f"{w}x{h}" if w else None
        if mode == "files":
            resolutions = [here] if here else []
        else:
            resolutions = sorted(
                set(STANDARD_RESOLUTIONS) | ({here} if here else set()),
                key=parse_resolution,
            )
        source = {"synthetic": "test pattern", "mjpeg": c.url, "files": c.dir}[mode]
        return {
            **super().metadata(),
            "mode": mode,
            "source": source,
            "resolution": here,
            "width": w or None,
            "height": h or None,
            "supported_resolutions": resolutions,
            "color_depth": 24,
            "supported_color_depths": [24],
            "frame_rate": c.fps,
            "supported_frame_rates": sorted(set(STANDARD_FRAME_RATES) | {c.fps}),
            "focal_lengths": list(c.focal_lengths),
            "control_point": c.control_point or None,
            "jpeg_quality": c.quality if mode == "synthetic" else None,
            "thumbnail": {
                "enabled": c.thumbnail,
                "size": list(parse_resolution(c.thumbnail_size)),
                "quality": c.thumbnail_quality,
            },
        }

    def status(self) -> dict[str, Any]:
        w, h = self.resolution()
        return {
            **super().status(),
            "source": self.source_state,
            "url": self.url if self.config.mode == "mjpeg" else None,
            "resolution": f"{w}x{h}" if w else None,
            "frames": self.frames,
            "last_capture": self.last_capture,
            "restarts": self.restarts,
        }

    # --- frames

    def frames_from_source(self) -> AsyncGenerator[tuple[bytes, float], None]:
        """The ``(jpeg, capture_time)`` generator the settings describe.

        Raises:
            ValueError: a setting the frame source refuses (resolution ...).
        """
        c = self.config
        if c.mode == "synthetic":
            return synthetic_frames(SyntheticConfig(c.width, c.height, c.fps, c.quality))
        if c.mode == "mjpeg":
            return mjpeg_frames(
                self.url, self.log, max_backoff=c.reconnect_max, on_state=self._camera_state
            )
        return jpeg_files(c.dir, fps=c.fps)

    def _camera_state(self, state: str) -> None:
        """What the network camera is doing, for ``status`` (streaming / reconnecting)."""
        self.source_state = state

    async def _pump(self) -> None:
        """Publish frames until the source ends or fails."""
        self.measured = None
        async with aclosing(self.frames_from_source()) as frames:
            async for jpeg, captured in frames:
                if self.measured is None:
                    self.measured = jpeg_size(jpeg)
                    self.source_state = "streaming"
                    self.log.info(
                        "streaming %s frames at %g fps",
                        "x".join(map(str, self.measured or ("?", "?"))),
                        self.config.fps,
                    )
                    await self.publish_metadata()
                await self.data.put(VIDEO_CHANNEL, jpeg, timestamp=captured)
                self.frames += 1
                self.last_capture = captured

    async def run(self) -> None:
        backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        while True:
            with trio.CancelScope() as scope:
                self._restart_scope = scope
                try:
                    await self._pump()
                    reason = "the frame source ended"
                except (ValueError, OSError, HttpStatusError) as exc:
                    reason = str(exc) or type(exc).__name__
                self.source_state = f"failed: {reason}"
                wait = backoff.next_delay()
                self.log.error("%s; trying again in %.0f s", reason, wait)
                await trio.sleep(wait)
            if scope.cancelled_caught:
                backoff.reset()
                self.restarts += 1
                self.source_state = "restarting"

    def _restart(self) -> None:
        if self._restart_scope is not None:
            self._restart_scope.cancel()

    # --- commands

    @command("set-fps", help="change the frame rate (frames per second)")
    async def set_fps(self, fps: float) -> dict[str, Any]:
        mode = self.config.mode
        if not 0 < fps <= MAX_FPS[mode]:
            raise ValueError(
                f"fps {fps:g} out of range: use more than 0, at most {MAX_FPS[mode]:g}"
            )
        self.change_settings(fps=fps)
        self.log.info("frame rate set to %g fps", fps)
        self._restart()
        await self.publish_metadata()
        return {"fps": fps, "url": self.url if mode == "mjpeg" else None}

    @command("set-resolution", help="change the resolution, WIDTHxHEIGHT (synthetic and mjpeg)")
    async def set_resolution(self, resolution: str) -> dict[str, Any]:
        mode = self.config.mode
        if mode == "files":
            raise ValueError("mode=files plays the files at their own resolution")
        width, height = parse_resolution(resolution)
        if mode == "synthetic":
            PatternRenderer(width, height, period=1)  # raises ValueError if out of range
        self.change_settings(width=width, height=height)
        self.measured = None
        self.log.info("resolution set to %dx%d", width, height)
        self._restart()
        await self.publish_metadata()
        return {"resolution": f"{width}x{height}", "url": self.url if mode == "mjpeg" else None}


COMPONENT = Video

__all__ = ["COMPONENT", "Video", "camera_url", "jpeg_size", "parse_resolution"]
