"""The thumbnailer: QCIF thumbnails of every video source on the turbine.

One component (type ``thumbnail``; run it as ``--name thumbnailer``, so its
own endpoints are ``thumbnail_thumbnailer_*``) serves every camera:

* it finds the cameras with one wildcard subscription in monitor mode,
  ``video_*_data_source/video.jpg``, so a camera that starts later, or
  restarts, is picked up with no configuration; the broker sends it each
  camera's newest frame at most ``rate`` times a second (``max_rate``), so
  the frames it would not use never cross the network;
* for camera ``video_<cam>_data_source`` it publishes
  ``thumbnail_<cam>_data_source/thumbnail.jpg``: a JPEG of exactly the
  thumbnail size (QCIF, 176x144, unless the camera's metadata asks for
  another), the picture letterboxed to keep its aspect ratio, ``rate``
  times a second, stamped with the source frame's capture time; the
  thumbnail source's metadata names the frame source it came from;
* it honours each camera's ``thumbnail`` metadata (``enabled``, ``size``,
  ``quality``), read from ``video_*_data_source/metadata.txt`` as it changes.

It never falls behind.  The subscription's reader only drops each frame
into its camera's one-frame slot (the newest replaces the older one).  Each
camera has its own task that takes whatever is newest in its slot (the
broker sends one frame per camera and period, the newest then; a task that
waited for its own period on top would add up to one frame's delivery to
each thumbnail's age) and decodes it (reduced-size JPEG decoding) and encodes
the thumbnail.  A frame of up to ``INLINE_MAX_BYTES`` (a 720p JPEG is 45 KB:
about 1 ms of work) is thumbnailed in the event loop's own thread; a larger
one in a worker thread, so a huge camera holds up only its own task and one
worker thread, and the other cameras keep their rate.  A corrupt or non-JPEG
frame is logged and skipped.

A camera named ``thumbnailer`` would collide with the component's own
data source, ``thumbnail_thumbnailer_data_source``: it is skipped with a
warning (pick another ``--name`` for the thumbnailer to thumbnail it).
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import trio

from components.thumbnailer.thumbnail import DEFAULT_QUALITY, QCIF, make_thumbnail
from turbine import run_blocking, wall_time
from turbine.client import Client, Frame, Source
from turbine.component import Component, command
from turbine.settings import check

VIDEO_PATTERN = "video_*_data_source/video.jpg"
METADATA_PATTERN = "video_*_data_source/metadata.txt"
THUMBNAIL_CHANNEL = "thumbnail.jpg"
_PREFIX = "video_"
_SUFFIX = "_data_source"
#: Frame ages kept per camera for the percentiles in ``status``.
AGE_HISTORY = 256
#: Largest thumbnail side a camera's metadata may ask for.
MAX_SIDE = 1024
#: Frames up to this size are thumbnailed in the event loop's thread, larger ones in a
#: worker thread.  Handing a frame to a thread and its thumbnail back cost more than the
#: rest of the thumbnailer's own work: 16 cameras at 720p, 1 thumbnail a second each,
#: 2.3-2.4 % of a core with a thread per thumbnail, 1.7-2.1 % without
#: (benchmarks/thumbnailer.py, 4 interleaved pairs, load 6-12).  In the loop's thread a
#: thumbnail takes 0.7-0.8 ms of a 720p frame (45 KB), 1.2 of 1080p (76 KB), 3.2-3.3 of 4K
#: (209 KB) (make_thumbnail, min of 25 x 20, load ~8).
INLINE_MAX_BYTES = 256 * 2**10


def camera_of(source: str) -> str | None:
    """``video_cam1_data_source`` -> ``cam1``; None for any other name."""
    if source.startswith(_PREFIX) and source.endswith(_SUFFIX):
        name = source[len(_PREFIX) : -len(_SUFFIX)]
        return name or None
    return None


@attrs.frozen
class ThumbnailParams:
    """What a camera's metadata asks of its thumbnails."""

    enabled: bool = True
    size: tuple[int, int] = QCIF
    quality: int = DEFAULT_QUALITY

    @classmethod
    def from_metadata(cls, metadata: Any, default: ThumbnailParams) -> ThumbnailParams:
        """Read the ``thumbnail`` entry of a video source's metadata.

        Missing or malformed fields keep ``default``'s value.
        """
        entry = metadata.get("thumbnail") if isinstance(metadata, dict) else None
        if not isinstance(entry, dict):
            return default
        enabled = entry.get("enabled", default.enabled)
        size = entry.get("size", default.size)
        quality = entry.get("quality", default.quality)
        if not isinstance(enabled, bool):
            enabled = default.enabled
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size)
        ):
            size = default.size
        if not (isinstance(quality, int) and 1 <= quality <= 95):
            quality = default.quality
        return cls(enabled, (size[0], size[1]), quality)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@attrs.define
class Feed:
    """One camera: its newest frame, its thumbnail source and its counters."""

    camera: str
    source_path: str
    params: ThumbnailParams
    newest: Frame | None = None
    arrived: trio.Event = attrs.field(factory=trio.Event)
    params_changed: trio.Event = attrs.field(factory=trio.Event)
    thumbnails: Source | None = None
    frames_seen: int = 0
    published: int = 0
    skipped_corrupt: int = 0
    last_error: str | None = None
    last_published: float | None = None
    ages: list[float] = attrs.field(factory=list)

    def offer(self, frame: Frame) -> None:
        """Keep ``frame`` as the newest (never blocks, never queues)."""
        self.newest = frame
        self.frames_seen += 1
        self.arrived.set()

    async def take(self) -> Frame:
        """Wait for a frame not taken yet and return the newest one."""
        while self.newest is None:
            await self.arrived.wait()
            self.arrived = trio.Event()
        frame, self.newest = self.newest, None
        return frame

    def set_params(self, params: ThumbnailParams) -> None:
        if params != self.params:
            self.params = params
            self.params_changed.set()

    def status(self) -> dict[str, Any]:
        return {
            "source": self.source_path,
            "thumbnails": f"thumbnail_{self.camera}_data_source/{THUMBNAIL_CHANNEL}",
            "enabled": self.params.enabled,
            "size": "x".join(map(str, self.params.size)),
            "quality": self.params.quality,
            "frames_seen": self.frames_seen,
            "published": self.published,
            "skipped_corrupt": self.skipped_corrupt,
            "last_error": self.last_error,
            "last_published": self.last_published,
            "age_p50_s": percentile(self.ages, 0.5),
            "age_p99_s": percentile(self.ages, 0.99),
        }


_SIDE = check(lambda v: 1 <= v <= MAX_SIDE, f"1 to {MAX_SIDE} pixels")


@attrs.frozen
class ThumbnailerSettings:
    """rate: thumbnails per second per camera; width, height, quality: the
    defaults for cameras whose metadata does not say; workers: threads decoding
    large frames (over INLINE_MAX_BYTES) at the same time."""

    rate: float = attrs.field(default=1.0, validator=check(lambda v: 0 < v <= 100, "(0, 100]"))
    width: int = attrs.field(default=QCIF[0], validator=_SIDE)
    height: int = attrs.field(default=QCIF[1], validator=_SIDE)
    quality: int = attrs.field(
        default=DEFAULT_QUALITY, validator=check(lambda v: 1 <= v <= 95, "1..95")
    )
    workers: int = attrs.field(default=4, validator=check(lambda v: v >= 1, "at least 1"))


class Thumbnailer(Component):
    """Publishes thumbnail_<cam>_data_source/thumbnail.jpg for every video_<cam> camera.

    rate: thumbnails per second per camera; width, height, quality: the
    defaults for cameras whose metadata does not say; workers: threads decoding
    large frames (over INLINE_MAX_BYTES) at the same time.
    """

    type = "thumbnail"
    channels: dict[str, str] = {}
    Settings = ThumbnailerSettings

    @classmethod
    def rights(cls, name: str, settings: Any) -> dict[str, tuple[str, ...]]:
        """Reads every camera's data source, writes every camera's thumbnail source."""
        own = super().rights(name, settings)
        camera = VIDEO_PATTERN.partition("/")[0]
        return own | {
            "read": (*own["read"], camera),
            "write": (*own["write"], "thumbnail_*_data_source"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c: ThumbnailerSettings = self.config
        self.default_params = ThumbnailParams(True, (c.width, c.height), c.quality)
        self.feeds: dict[str, Feed] = {}
        self._metadata: dict[str, Any] = {}
        self._ignored: set[str] = set()
        self._limiter = trio.CapacityLimiter(c.workers)
        self._nursery: trio.Nursery | None = None
        self._monitor: trio.CancelScope | None = None  # the camera subscription's, at one rate

    # --- what the turbine sees

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "pattern": VIDEO_PATTERN,
            "rate": self.config.rate,
            "default_size": [self.config.width, self.config.height],
            "default_quality": self.config.quality,
            "cameras": {
                f.camera: f"thumbnail_{f.camera}_data_source/{THUMBNAIL_CHANNEL}"
                for f in self.feeds.values()
            },
        }

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "cameras": {f.camera: f.status() for f in self.feeds.values()},
        }

    # --- the work

    async def run(self) -> None:
        # Sources opened on the previous connection are gone: start afresh.
        self.feeds = {}
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_metadata)
            while True:
                # The broker sends each camera's newest frame at most `rate`
                # times a second, so no other frame crosses the network; a
                # new rate (set-rate) cancels the scope: subscribe again.
                with trio.CancelScope() as scope:
                    self._monitor = scope
                    client = self.client_or_fail()
                    async with client.monitor(VIDEO_PATTERN, max_rate=self.config.rate) as sub:
                        async for item in sub:
                            if isinstance(item, Frame):
                                feed = self.feeds.get(item.source)
                                if feed is None:
                                    feed = self._new_feed(item.source)
                                    if feed is None:
                                        continue
                                feed.offer(item)
                if not scope.cancelled_caught:
                    break

    def client_or_fail(self) -> Client:
        assert self.client is not None, "run() is only called while connected"
        return self.client

    def _new_feed(self, source: str) -> Feed | None:
        camera = camera_of(source)
        if camera is None:
            return None
        if f"{self.type}_{camera}" == self.component:
            if source not in self._ignored:
                self._ignored.add(source)
                self.log.warning(
                    "camera %s has the thumbnailer's own name; it gets no thumbnails "
                    "(run the thumbnailer under another --name)",
                    source,
                )
            return None
        params = ThumbnailParams.from_metadata(self._metadata.get(source), self.default_params)
        feed = Feed(camera, f"{source}/video.jpg", params)
        self.feeds[source] = feed
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_feed, feed)
        return feed

    async def _watch_metadata(self) -> None:
        """Keep every camera's thumbnail parameters current."""
        async with self.client_or_fail().subscribe(METADATA_PATTERN, start="newest") as sub:
            async for item in sub:
                if not isinstance(item, Frame):
                    continue
                try:
                    metadata = json.loads(item.data)
                except ValueError:
                    continue
                self._metadata[item.source] = metadata
                feed = self.feeds.get(item.source)
                if feed is not None:
                    feed.set_params(ThumbnailParams.from_metadata(metadata, self.default_params))

    async def _open_thumbnails(self, feed: Feed) -> Source:
        tb = self.client_or_fail()
        # The metadata subscription may not have delivered this camera's
        # metadata yet: read it now, before the first thumbnail.
        video_source = feed.source_path.rpartition("/")[0]
        for frame in await tb.fetch(f"{video_source}/metadata.txt", newest=1):
            try:
                metadata = json.loads(frame.data)
            except ValueError:
                continue
            self._metadata.setdefault(video_source, metadata)
            feed.params = ThumbnailParams.from_metadata(
                self._metadata[video_source], self.default_params
            )
        source = await tb.open_source(
            f"thumbnail_{feed.camera}_data_source", channels={THUMBNAIL_CHANNEL: "image/jpeg"}
        )
        await self._publish_feed_metadata(feed, source)
        self.log.info("thumbnailing %s to %s/%s", feed.source_path, source.name, THUMBNAIL_CHANNEL)
        await self.publish_metadata()
        return source

    async def _publish_feed_metadata(self, feed: Feed, source: Source) -> None:
        p = feed.params
        await source.set_metadata(
            {
                "type": "thumbnail",
                "camera": feed.camera,
                "source": feed.source_path,
                "thumbnailer": self.component,
                "channels": [THUMBNAIL_CHANNEL],
                "content_types": {THUMBNAIL_CHANNEL: "image/jpeg"},
                "enabled": p.enabled,
                "size": list(p.size),
                "resolution": f"{p.size[0]}x{p.size[1]}",
                "quality": p.quality,
                "rate": self.config.rate,
            }
        )

    async def _serve_feed(self, feed: Feed) -> None:
        """Thumbnail ``feed``'s newest frame as the broker sends them (at most ``rate``
        a second), forever."""
        feed.thumbnails = await self._open_thumbnails(feed)
        while True:
            if feed.params_changed.is_set():
                feed.params_changed = trio.Event()
                await self._publish_feed_metadata(feed, feed.thumbnails)
                self.log.info(
                    "%s: thumbnails %s",
                    feed.source_path,
                    f"on, {feed.params.size[0]}x{feed.params.size[1]}, quality {feed.params.quality}"
                    if feed.params.enabled
                    else "off (the camera's metadata says don't-thumbnail)",
                )
            if not feed.params.enabled:
                await feed.params_changed.wait()
                continue
            frame = await feed.take()
            params = feed.params
            try:
                if len(frame.data) <= INLINE_MAX_BYTES:
                    await trio.lowlevel.checkpoint()
                    thumb = make_thumbnail(frame.data, params.size, params.quality)
                else:
                    thumb = await run_blocking(
                        make_thumbnail,
                        frame.data,
                        params.size,
                        params.quality,
                        limiter=self._limiter,
                    )
            except ValueError as exc:
                feed.skipped_corrupt += 1
                feed.last_error = str(exc)
                self.log.warning("%s #%d skipped: %s", feed.source_path, frame.seq, exc)
            else:
                # Not flushed: the client's flusher writes it at once, and the
                # round trip of a flush per thumbnail was a tenth of the
                # thumbnailer's CPU (a refusal is raised by the next put).
                await feed.thumbnails.put(THUMBNAIL_CHANNEL, thumb, timestamp=frame.timestamp)
                now = wall_time()
                feed.published += 1
                feed.last_published = now
                feed.ages.append(now - frame.timestamp)
                if len(feed.ages) > AGE_HISTORY:
                    del feed.ages[: len(feed.ages) - AGE_HISTORY]

    # --- commands

    @command("set-rate", help="thumbnails per second per camera")
    async def set_rate(self, rate: float) -> str:
        if not 0 < rate <= 100:
            raise ValueError(f"rate {rate:g} out of range: use more than 0, at most 100")
        self.change_settings(rate=rate)
        if self._monitor is not None:
            self._monitor.cancel()  # the cameras' frames come at the new rate
        self.log.info("thumbnail rate set to %g per second per camera", rate)
        await self.publish_metadata()
        return f"{rate:g} thumbnails per second per camera (from the next period on)"


COMPONENT = Thumbnailer

__all__ = ["COMPONENT", "Feed", "ThumbnailParams", "Thumbnailer", "camera_of", "percentile"]
