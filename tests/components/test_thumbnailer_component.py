"""The thumbnailer on an in-process broker, and once end to end with real processes.

The thumbnailer decodes in worker threads (``turbine.run_blocking``); a mock
clock jumps while a thread works, and on a loaded machine a camera's frame
timer then runs virtual time far ahead of the thumbnails.  The tests that
count or time frames (a camera component, the rate tests) decode inline
(``run_blocking_inline``) under ``autojump_clock`` with the wall clock
following it, so their counts do not depend on how fast the machine is; the
others run on the real clock with a high thumbnail rate, and wait for what
they expect under ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image

from components.thumbnailer import component as thumbnailer_component
from components.thumbnailer.component import (
    COMPONENT,
    INLINE_MAX_BYTES,
    VIDEO_PATTERN,
    Thumbnailer,
    ThumbnailParams,
    camera_of,
    percentile,
)
from components.thumbnailer.thumbnail import make_thumbnail
from components.video.component import Video
from turbine import ConfigError, Frame, Source, open_client, send_command, wall_time
from turbine.testing import follow_trio_clock, printed_line, run_blocking_inline

THUMBS = "thumbnail_*_data_source/thumbnail.jpg"
LOG = "thumbnail_thumbnailer_debug_log_source/log.txt"
FAST = {"rate": 20}


def picture(jpeg: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(jpeg))
    assert im.format == "JPEG"
    return im.convert("RGB")


def solid_jpeg(size: tuple[int, int], colour: tuple[int, int, int] = (220, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(autouse=True)
def info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


@asynccontextmanager
async def running(*components: Any) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for component in components:
            await nursery.start(component.serve)
        yield
        nursery.cancel_scope.cancel()


async def thumbnails_of(
    tb: Any, cameras: set[str], n: int = 1, after: float = 0.0
) -> dict[str, list[Frame]]:
    """Wait until each camera in ``cameras`` has ``n`` new thumbnails of
    frames captured after ``after``."""
    got: dict[str, list[Frame]] = {c: [] for c in cameras}
    async with tb.subscribe(THUMBS, start="now") as sub:
        async for item in sub:
            if not isinstance(item, Frame):
                continue
            camera = item.source.removeprefix("thumbnail_").removesuffix("_data_source")
            if camera in got and len(got[camera]) < n and item.timestamp > after:
                got[camera].append(item)
            if all(len(v) == n for v in got.values()):
                return got
    raise AssertionError("subscription ended")


async def shortest_gap_once_below(tb: Any, camera: str, limit: float) -> float:
    """Wait for two consecutive new thumbnails of ``camera`` made from frames
    captured less than ``limit`` seconds apart; return that gap."""
    previous = None
    async with tb.subscribe(f"thumbnail_{camera}_data_source/thumbnail.jpg", start="now") as sub:
        async for item in sub:
            if isinstance(item, Frame):
                if previous is not None and item.timestamp - previous < limit:
                    return item.timestamp - previous
                previous = item.timestamp
    raise AssertionError("subscription ended")


async def log_entry(tb: Any, text: str) -> dict[str, Any]:
    async with tb.subscribe(LOG, start="oldest") as sub:
        async for item in sub:
            if isinstance(item, Frame):
                entry = json.loads(item.data)
                if entry["logger"] == "thumbnail_thumbnailer" and text in entry["message"]:
                    return entry
    raise AssertionError("subscription ended")


async def metadata(tb: Any, source: str) -> dict[str, Any]:
    (frame,) = await tb.fetch(f"{source}/metadata.txt", newest=1)
    return json.loads(frame.data)


async def feed_frames(
    source: Source, jpeg: bytes, interval: float = 0.02, *, task_status: Any
) -> None:
    """Put ``jpeg`` on ``source``'s video.jpg every ``interval`` seconds, stamped
    with the turbine's wall clock (virtual time after ``follow_trio_clock``)."""
    task_status.started()
    while True:
        await source.put("video.jpg", jpeg, timestamp=wall_time())
        await source.flush()
        await trio.sleep(interval)


async def raw_camera(tb: Any, name: str, meta: dict[str, Any] | None = None) -> Source:
    source = await tb.open_source(f"video_{name}_data_source", channels={"video.jpg": "image/jpeg"})
    if meta is not None:
        await source.set_metadata(meta)
    return source


# --- pure pieces ------------------------------------------------------------------


def test_exposed_for_the_control_program_and_settings_checked() -> None:
    assert COMPONENT is Thumbnailer
    assert Thumbnailer.type == "thumbnail"
    with pytest.raises(ConfigError, match="'rate'"):
        Thumbnailer("thumbnailer", config={"rate": "0"})
    with pytest.raises(ConfigError, match="unknown setting"):
        Thumbnailer("thumbnailer", config={"colour": "red"})


def test_names_and_params() -> None:
    assert camera_of("video_cam1_data_source") == "cam1"
    assert camera_of("video__data_source") is None
    assert camera_of("daq_x_data_source") is None
    default = ThumbnailParams()
    assert ThumbnailParams.from_metadata({}, default) == default
    assert ThumbnailParams.from_metadata(
        {"thumbnail": {"enabled": False, "size": [88, 72], "quality": 30}}, default
    ) == ThumbnailParams(False, (88, 72), 30)
    # Nonsense keeps the defaults, field by field.
    assert ThumbnailParams.from_metadata(
        {"thumbnail": {"enabled": "no", "size": [0, 5], "quality": 30}}, default
    ) == ThumbnailParams(True, (176, 144), 30)
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(100)], 0.99) == 98.0


# --- on the turbine ---------------------------------------------------------------


async def test_cameras_now_and_later_get_qcif_thumbnails(
    broker: str, autojump_clock: trio.abc.Clock
) -> None:
    follow_trio_clock()  # capture times, "restarted" and ages all in virtual time
    run_blocking_inline()  # no clock jump while a thumbnail is made
    early = Video("early", broker, {"width": 320, "height": 240, "fps": 25})
    thumbnailer = Thumbnailer("thumbnailer", broker, FAST)
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(early, thumbnailer):
            got = await thumbnails_of(tb, {"early"}, 2)
            # A camera that starts after the thumbnailer, in a 16:9 format.
            late = Video("late", broker, {"width": 640, "height": 360, "fps": 25})
            async with running(late):
                got.update(await thumbnails_of(tb, {"early", "late"}, 2))
                videos = await tb.fetch("video_late_data_source/video.jpg", oldest=1000)
                meta = await metadata(tb, "thumbnail_late_data_source")
                own = await metadata(tb, "thumbnail_thumbnailer_data_source")
            # The late camera restarts: its thumbnails resume.
            restarted = wall_time()
            late = Video("late", broker, {"width": 640, "height": 360, "fps": 25})
            async with running(late):
                again = await thumbnails_of(tb, {"late"}, 1, after=restarted)
            status = await send_command(tb, "thumbnail_thumbnailer", "status")
    for frames in got.values():
        for frame in frames:
            assert frame.content_type == "image/jpeg"
            assert picture(frame.data).size == (176, 144)
    # Stamped with the capture time of the video frame it was made from.
    stamps = {f.timestamp for f in videos}
    assert all(f.timestamp in stamps for f in got["late"])
    assert meta["source"] == "video_late_data_source/video.jpg"
    assert meta["camera"] == "late"
    assert meta["size"] == [176, 144]
    assert own["cameras"] == {
        "early": "thumbnail_early_data_source/thumbnail.jpg",
        "late": "thumbnail_late_data_source/thumbnail.jpg",
    }
    assert again["late"][0].timestamp > restarted
    assert status.ok
    cams = status.result["cameras"]
    assert set(cams) == {"early", "late"}
    assert cams["early"]["published"] >= 4
    assert cams["early"]["skipped_corrupt"] == 0
    assert cams["early"]["age_p99_s"] is not None


async def test_wide_picture_is_letterboxed(broker: str) -> None:
    thumbnailer = Thumbnailer("thumbnailer", broker, FAST)
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(thumbnailer), trio.open_nursery() as n:
            source = await raw_camera(tb, "wide")
            await n.start(feed_frames, source, solid_jpeg((640, 160)))
            got = await thumbnails_of(tb, {"wide"})
            n.cancel_scope.cancel()
    thumb = picture(got["wide"][0].data)
    assert thumb.size == (176, 144)
    # A 176x44 picture between black bars of 50 rows.
    for x in (3, 88, 172):
        assert max(thumb.getpixel((x, 10))) < 30
        assert thumb.getpixel((x, 72))[0] > 180
        assert max(thumb.getpixel((x, 134))) < 30


async def test_a_frame_over_the_inline_size_is_thumbnailed_in_a_worker_thread(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A usual frame is thumbnailed in the event loop's thread (cheaper than
    # the hand-over); a huge one in a worker thread, holding up only its camera.
    threads: dict[int, set[bool]] = {}

    def recording(jpeg: bytes, *args: Any) -> bytes:
        threads.setdefault(len(jpeg), set()).add(threading.current_thread() is main)
        return make_thumbnail(jpeg, *args)

    main = threading.current_thread()
    monkeypatch.setattr(thumbnailer_component, "make_thumbnail", recording)
    small = solid_jpeg((320, 240))
    # Bytes after a JPEG's end marker are ignored by decoders: a huge frame, cheaply.
    huge = solid_jpeg((320, 240), (30, 30, 220)) + bytes(INLINE_MAX_BYTES)
    thumbnailer = Thumbnailer("thumbnailer", broker, FAST)
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(thumbnailer), trio.open_nursery() as n:
            await n.start(feed_frames, await raw_camera(tb, "small"), small)
            await n.start(feed_frames, await raw_camera(tb, "huge"), huge)
            got = await thumbnails_of(tb, {"small", "huge"})
            n.cancel_scope.cancel()
    assert threads[len(small)] == {True} and threads[len(huge)] == {False}
    assert picture(got["huge"][0].data).getpixel((88, 72))[2] > 180  # the huge frame's blue


async def test_metadata_thumbnail_parameters_are_honoured(broker: str) -> None:
    thumbnailer = Thumbnailer("thumbnailer", broker, FAST)
    off_camera = Video("off", broker, {"width": 160, "height": 120, "fps": 25, "thumbnail": "no"})
    with trio.fail_after(30):
        async with (
            open_client(broker) as tb,
            running(thumbnailer, off_camera),
            trio.open_nursery() as n,
        ):
            small = await raw_camera(tb, "small", {"thumbnail": {"size": [88, 72], "quality": 30}})
            await n.start(feed_frames, small, solid_jpeg((320, 240)))
            toggled = await raw_camera(tb, "toggled", {"thumbnail": {"enabled": False}})
            await n.start(feed_frames, toggled, solid_jpeg((320, 240)))
            got = await thumbnails_of(tb, {"small"}, 5)
            # Meanwhile nothing from the cameras that said don't-thumbnail.
            assert not await tb.fetch("thumbnail_off_data_source/thumbnail.jpg", newest=1)
            assert not await tb.fetch("thumbnail_toggled_data_source/thumbnail.jpg", newest=1)
            off_meta = await metadata(tb, "thumbnail_off_data_source")
            # Metadata changes take effect while running.
            await toggled.set_metadata({"thumbnail": {"enabled": True, "size": [64, 48]}})
            later = await thumbnails_of(tb, {"toggled"})
            entry = await log_entry(tb, "thumbnails on, 64x48")
            n.cancel_scope.cancel()
    assert {picture(f.data).size for f in got["small"]} == {(88, 72)}
    assert off_meta["enabled"] is False
    assert off_meta["source"] == "video_off_data_source/video.jpg"
    assert picture(later["toggled"][0].data).size == (64, 48)
    assert (
        entry["message"] == "video_toggled_data_source/video.jpg: thumbnails on, 64x48, quality 75"
    )


async def test_corrupt_frames_are_logged_and_skipped(broker: str) -> None:
    thumbnailer = Thumbnailer("thumbnailer", broker, FAST)
    good = solid_jpeg((320, 240))
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(thumbnailer):
            source = await raw_camera(tb, "bad")
            await tb.put("video_bad_data_source/video.jpg", b"this is not a picture")
            first = await log_entry(tb, "#1 skipped")
            await tb.put("video_bad_data_source/video.jpg", good[: len(good) // 3])
            second = await log_entry(tb, "#2 skipped")
            async with trio.open_nursery() as n:
                await n.start(feed_frames, source, good)
                got = await thumbnails_of(tb, {"bad"})
                n.cancel_scope.cancel()
            status = await send_command(tb, "thumbnail_thumbnailer", "status")
    assert first["level"] == "WARNING"
    assert "not a JPEG image" in first["message"]
    assert "corrupt JPEG" in second["message"]
    assert picture(got["bad"][0].data).size == (176, 144)
    assert status.result["cameras"]["bad"]["skipped_corrupt"] == 2
    assert status.result["state"] == "running"


async def test_rate_limits_each_camera(broker: str, autojump_clock: trio.abc.Clock) -> None:
    follow_trio_clock()  # frame stamps in the virtual time the broker paces by
    run_blocking_inline()
    thumbnailer = Thumbnailer("thumbnailer", broker, {"rate": 8})
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(thumbnailer), trio.open_nursery() as n:
            source = await raw_camera(tb, "fast")
            await n.start(feed_frames, source, solid_jpeg((320, 240)), 0.005)
            got = await thumbnails_of(tb, {"fast"}, 5)
            reply = await send_command(tb, "thumbnail_thumbnailer", "set-rate", "0")
            n.cancel_scope.cancel()
    # The camera sends 200 frames a second; the thumbnails are made from
    # frames captured at least most of a period (1/8 s) apart.
    stamps = [f.timestamp for f in got["fast"]]
    assert all(b - a > 0.08 for a, b in zip(stamps, stamps[1:], strict=False))
    assert reply.status == "error" and "out of range" in reply.error


async def test_the_broker_sends_only_the_frames_the_rate_uses(
    broker: str, autojump_clock: trio.abc.Clock
) -> None:
    # In virtual time the camera puts exactly 200 frames a second however
    # loaded the machine is, and the broker paces by the same clock.
    follow_trio_clock()
    run_blocking_inline()
    thumbnailer = Thumbnailer("thumbnailer", broker, {"rate": 8})
    with trio.fail_after(30):
        async with open_client(broker) as tb, running(thumbnailer), trio.open_nursery() as n:
            source = await raw_camera(tb, "fast")
            began = trio.current_time()
            await n.start(feed_frames, source, solid_jpeg((320, 240)), 0.005)
            await thumbnails_of(tb, {"fast"}, 5)
            status = await tb.status()
            elapsed = trio.current_time() - began
            reply = await send_command(tb, "thumbnail_thumbnailer", "set-rate", "20")
            # The reply comes before the thumbnailer has subscribed again: wait
            # until thumbnails come faster than 8 a second, then look.
            gap = await shortest_gap_once_below(tb, "fast", 0.1)
            after = await tb.status()
            n.cancel_scope.cancel()

    def monitors(status: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            s
            for c in status["clients"]
            for s in c["subscriptions"]
            if s["pattern"] == VIDEO_PATTERN and s["monitor"]
        ]

    (camera,) = [c for c in status["clients"] if "video_fast_data_source" in c["sources"]]
    (watch,) = monitors(status)
    # The camera puts up to 200 frames a second; the thumbnailer is sent at most
    # 8 a second (and the first at once), not all of them.
    assert watch["delivered"] <= elapsed * 8 + 2, (watch, elapsed)
    assert camera["frames_in"] >= 4 * watch["delivered"], (camera, watch)
    assert reply.status == "ok"
    assert gap >= 0.045, gap  # at most 20 a second (a frame comes every 5 ms)
    assert len(monitors(after)) == 1  # subscribed again at the new rate, not twice


# --- end to end, with processes ------------------------------------------------------


@pytest.mark.slow
async def test_tap_shows_three_qcif_jpegs_end_to_end(tmp_path: Path) -> None:
    """turbine serve, the thumbnailer, then two cameras, then turbine tap."""
    bin_dir = Path(sys.executable).parent
    processes: list[trio.Process] = []
    log_path = tmp_path / "components.log"

    async def start(*argv: str, **kwargs: Any) -> trio.Process:
        proc = await trio.lowlevel.open_process(list(argv), **kwargs)
        processes.append(proc)
        return proc

    try:
        with trio.fail_after(60), log_path.open("wb") as logs:
            serve = await start(
                str(bin_dir / "turbine"), "serve", "--port", "0", stdout=subprocess.PIPE
            )
            line = await printed_line(serve, "turbine serve")
            address = line.decode().split()[-1]
            assert line.startswith(b"turbine listening on"), line
            component = [sys.executable, "-m"]
            await start(
                *component,
                "components.thumbnailer",
                "--name",
                "thumbnailer",
                "--turbine",
                address,
                "--set",
                "rate=4",
                stderr=logs,
            )
            for name in ("cam1", "cam2"):
                await start(
                    *component,
                    "components.video",
                    "--name",
                    name,
                    "--turbine",
                    address,
                    "--set",
                    "width=640",
                    "--set",
                    "height=360",
                    stderr=logs,
                )
            tap = await trio.run_process(
                [
                    str(bin_dir / "turbine"),
                    "tap",
                    THUMBS,
                    "--count",
                    "3",
                    "--format",
                    "json",
                    "--timeout",
                    "40",
                    "--turbine",
                    address,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        for proc in reversed(processes):
            proc.kill()
        with trio.move_on_after(10):
            for proc in processes:
                await proc.wait()
    assert tap.returncode == 0, tap.stderr.decode() + log_path.read_text()
    lines = tap.stdout.decode().splitlines()
    assert len(lines) == 3
    for text in lines:
        frame = json.loads(text)
        assert frame["source"] in ("thumbnail_cam1_data_source", "thumbnail_cam2_data_source")
        assert frame["content_type"] == "image/jpeg"
        assert picture(base64.b64decode(frame["data_b64"])).size == (176, 144)
