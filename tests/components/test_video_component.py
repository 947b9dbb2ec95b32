"""The video component on an in-process broker: synthetic, files and mjpeg modes."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from PIL import Image

from components.camera_sim.server import serve_camera_sim
from components.video.component import COMPONENT, Video, camera_url, parse_resolution
from turbine import ConfigError, Frame, open_client, send_command
from turbine.testing import next_frames

VIDEO = "video_cam_data_source/video.jpg"
META = "video_cam_data_source/metadata.txt"
LOG = "video_cam_debug_log_source/log.txt"


def size_of(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        return im.size


@asynccontextmanager
async def running(component: Video) -> AsyncIterator[trio.CancelScope]:
    """Run ``component`` as a task; stop it on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(component.serve)
        yield nursery.cancel_scope
        nursery.cancel_scope.cancel()


async def newest_metadata(tb: Any) -> dict[str, Any]:
    (frame,) = await tb.fetch(META, newest=1)
    return json.loads(frame.data)


async def wait_for_log(tb: Any, text: str, logger: str = "video_cam") -> dict[str, Any]:
    """The first record of ``logger`` on the debug log source containing ``text``."""
    async with tb.subscribe(LOG, start="oldest") as sub:
        async for item in sub:
            if isinstance(item, Frame):
                entry = json.loads(item.data)
                if entry["logger"] == logger and text in entry["message"]:
                    return entry
    raise AssertionError("subscription ended")


@pytest.fixture(autouse=True)
def info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def test_the_component_is_exposed_for_the_control_program() -> None:
    assert COMPONENT is Video
    assert Video.type == "video"
    assert Video.channels == {"video.jpg": "image/jpeg"}


def test_settings_are_checked_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match="use one of synthetic, mjpeg, files"):
        Video("cam", config={"mode": "usb"})
    with pytest.raises(ConfigError, match="mode=mjpeg needs url="):
        Video("cam", config={"mode": "mjpeg"})
    with pytest.raises(ConfigError, match="must look like http://"):
        Video("cam", config={"mode": "mjpeg", "url": "rtsp://cam/stream"})
    with pytest.raises(ConfigError, match="mode=files needs dir="):
        Video("cam", config={"mode": "files"})
    with pytest.raises(ConfigError, match="'fps'"):
        Video("cam", config={"fps": "0"})
    with pytest.raises(ConfigError, match="thumbnail_size"):
        Video("cam", config={"thumbnail_size": "big"})
    with pytest.raises(ConfigError, match="expected int"):
        Video("cam", config={"width": "wide"})


def test_command_line_refuses_bad_settings() -> None:
    result = CliRunner().invoke(Video.cli(), ["--name", "cam", "--set", "mode=mjpeg"])
    assert result.exit_code == 2
    assert "mode=mjpeg needs url=" in result.output


def test_camera_url_sets_resolution_and_fps() -> None:
    url = camera_url(
        "http://u:p@cam:8080/axis-cgi/mjpg/video.cgi?resolution=1x1&camera=2", 640, 480, 15
    )
    assert url == ("http://u:p@cam:8080/axis-cgi/mjpg/video.cgi?camera=2&resolution=640x480&fps=15")
    assert parse_resolution(" 1280X720 ") == (1280, 720)
    with pytest.raises(ValueError, match="expected WIDTHxHEIGHT"):
        parse_resolution("1280*720")


async def test_synthetic_frames_metadata_and_timestamps(broker: str) -> None:
    cam = Video(
        "cam",
        broker,
        {"width": 320, "height": 240, "fps": 20, "control_point": "ntcp_rig", "thumbnail": "no"},
    )
    with trio.fail_after(20):
        async with open_client(broker) as tb, running(cam):
            before = time.time()
            got = await next_frames(tb, VIDEO, 5, start="oldest")
            after = time.time()
            meta = await newest_metadata(tb)
    assert [size_of(f.data) for f in got] == [(320, 240)] * 5
    assert all(f.content_type == "image/jpeg" for f in got)
    # Stamped with the capture time, in order.
    stamps = [f.timestamp for f in got]
    assert stamps == sorted(stamps)
    assert before - 1 <= stamps[-1] <= after
    assert meta["resolution"] == "320x240"
    assert "320x240" in meta["supported_resolutions"]
    assert "1280x720" in meta["supported_resolutions"]
    assert meta["frame_rate"] == 20
    assert 20 in meta["supported_frame_rates"]
    assert meta["supported_color_depths"] == [24]
    assert meta["focal_lengths"] == []
    assert meta["control_point"] == "ntcp_rig"
    assert meta["thumbnail"] == {"enabled": False, "size": [176, 144], "quality": 75}
    assert set(meta["commands"]) >= {"status", "set-fps", "set-resolution"}


async def test_set_fps_and_resolution(broker: str, autojump_clock: trio.abc.Clock) -> None:
    cam = Video("cam", broker, {"width": 160, "height": 120, "fps": 5})
    with trio.fail_after(60):
        async with open_client(broker) as tb, running(cam):
            await next_frames(tb, VIDEO, 1, start="oldest")
            reply = await send_command(tb, "video_cam", "set-resolution", "320x176")
            assert reply.ok, reply.error
            assert reply.result["resolution"] == "320x176"
            # Frames after the change have the new size.
            got = await next_frames(tb, VIDEO, 3)
            assert {size_of(f.data) for f in got} == {(320, 176)}
            assert (await newest_metadata(tb))["resolution"] == "320x176"

            reply = await send_command(tb, "video_cam", "set-fps", "20")
            assert reply.ok, reply.error
            got = await next_frames(tb, VIDEO, 21)
            # 20 intervals of 50 ms, on the component's (mock) clock.
            assert got[-1].timestamp - got[0].timestamp < 3
            assert (await newest_metadata(tb))["frame_rate"] == 20

            bad = await send_command(tb, "video_cam", "set-resolution", "10x10")
            assert bad.status == "error"
            assert "out of range" in bad.error
            bad = await send_command(tb, "video_cam", "set-fps", "0")
            assert bad.status == "error" and "fps 0 out of range" in bad.error
            bad = await send_command(tb, "video_cam", "set-resolution", "huge")
            assert bad.status == "error" and "expected WIDTHxHEIGHT" in bad.error

            status = await send_command(tb, "video_cam", "status")
            assert status.ok
            assert status.result["resolution"] == "320x176"
            assert status.result["settings"]["fps"] == 20
            assert status.result["frames"] >= 25
            assert status.result["restarts"] == 2


def write_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    path.write_bytes(out.getvalue())
    return out.getvalue()


# The files source reads in a worker thread, and a mock clock that jumps
# while a thread works would jump straight to the test's deadline: the
# files tests run on the real clock, at a high frame rate.


async def test_files_are_looped(broker: str, tmp_path: Path) -> None:
    a = write_jpeg(tmp_path / "a.jpg", (200, 100), (255, 0, 0))
    b = write_jpeg(tmp_path / "b.JPEG", (200, 100), (0, 0, 255))
    (tmp_path / "notes.txt").write_text("not a picture")
    cam = Video("cam", broker, {"mode": "files", "dir": str(tmp_path), "fps": 50})
    with trio.fail_after(20):
        async with open_client(broker) as tb, running(cam):
            got = await next_frames(tb, VIDEO, 5, start="oldest")
            meta = await newest_metadata(tb)
            bad = await send_command(tb, "video_cam", "set-resolution", "640x480")
    assert [f.data for f in got] == [a, b, a, b, a]
    assert meta["resolution"] == "200x100"
    assert meta["source"] == str(tmp_path)
    assert bad.status == "error" and "own resolution" in bad.error


async def test_files_directory_missing_is_logged_and_retried(broker: str, tmp_path: Path) -> None:
    folder = tmp_path / "later"
    cam = Video("cam", broker, {"mode": "files", "dir": str(folder), "fps": 50})
    with trio.fail_after(20):
        async with open_client(broker) as tb, running(cam):
            entry = await wait_for_log(tb, "No such file or directory")
            assert entry["level"] == "ERROR"
            assert "trying again" in entry["message"]
            folder.mkdir()
            frame = write_jpeg(folder / "x.jpg", (64, 64), (0, 255, 0))
            got = await next_frames(tb, VIDEO, 1, start="oldest")
    assert got[0].data == frame


async def test_mjpeg_camera_drops_and_recovers(broker: str, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as outer:
        camera = trio.CancelScope()

        async def camera_sim(port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with camera:
                await serve_camera_sim("127.0.0.1", port, task_status=task_status)

        port = await outer.start(camera_sim, 0)
        url = f"http://127.0.0.1:{port}/axis-cgi/mjpg/video.cgi"
        cam = Video(
            "cam",
            broker,
            {"mode": "mjpeg", "url": url, "width": 320, "height": 240, "fps": 10},
        )
        with trio.fail_after(120):
            async with open_client(broker) as tb, running(cam):
                got = await next_frames(tb, VIDEO, 3, start="oldest")
                assert {size_of(f.data) for f in got} == {(320, 240)}
                meta = await newest_metadata(tb)
                assert meta["source"] == url
                assert meta["resolution"] == "320x240"

                # The camera goes away: the component says so and keeps trying.
                camera.cancel()
                await wait_for_log(tb, "dropped")
                entry = await wait_for_log(tb, "reconnecting in 1.0 s (attempt 2)")
                assert "Connection refused" in entry["message"]
                assert entry["level"] == "WARNING"
                status = await send_command(tb, "video_cam", "status")
                assert status.result["source"].startswith("reconnecting: ")

                # It comes back on the same port: frames flow again.
                camera = trio.CancelScope()
                await outer.start(camera_sim, port)
                entry = await wait_for_log(tb, "recovered")
                assert "frames flowing" in entry["message"]
                await next_frames(tb, VIDEO, 2)
                assert (await send_command(tb, "video_cam", "status")).result[
                    "source"
                ] == "streaming"

                # set-resolution is passed to the camera in the URL.
                reply = await send_command(tb, "video_cam", "set-resolution", "160x120")
                assert reply.ok, reply.error
                assert "resolution=160x120&fps=10" in reply.result["url"]
                got = await next_frames(tb, VIDEO, 2)
                assert {size_of(f.data) for f in got} == {(160, 120)}
            camera.cancel()


async def test_mjpeg_wrong_path_is_an_error_not_a_crash(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}/no/such/path"
    cam = Video("cam", broker, {"mode": "mjpeg", "url": url})
    with trio.fail_after(60):
        async with open_client(broker) as tb, running(cam):
            entry = await wait_for_log(tb, "404 Not Found")
            assert entry["level"] == "ERROR"
            status = await send_command(tb, "video_cam", "status")
    assert status.result["source"].startswith("failed: ")
    assert "404" in status.result["source"]
