"""The still-image camera against the Axis camera emulator's image.cgi, on a real broker.

Real clock (the emulator and the thumbnailer do real I/O and thread work),
short intervals, every wait under ``trio.fail_after``; the interval test runs
in virtual time.
"""

from __future__ import annotations

import io
import json
from functools import partial

import pytest
import trio
from PIL import Image

from components.camera_sim.server import IMAGE_PATH, serve_camera_sim
from components.still.component import COMPONENT, Still
from components.thumbnailer.component import Thumbnailer
from turbine import ConfigError, Frame, open_client, send_command
from turbine.testing import (
    follow_trio_clock,
    next_frames,
    open_broker,
    run_blocking_inline,
    serving,
)

VIDEO = "video_door_data_source/video.jpg"


def size_of(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        return im.size


def test_settings_are_checked_before_anything_starts() -> None:
    assert COMPONENT is Still and Still.type == "video"
    with pytest.raises(ConfigError, match="setting 'url': camera URL 'ftp://cam' must look like"):
        Still.make_settings({"url": "ftp://cam"}, strict=True)
    with pytest.raises(ConfigError, match="setting 'interval': expected seconds >= 0, got -1"):
        Still.make_settings({"interval": -1}, strict=True)


async def test_snapshots_on_command_and_at_an_interval_are_thumbnailed(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Virtual time: capture stamps follow trio's clock and the thumbnailer decodes
    # inline, so the interval is exact however slow the machine (on the real clock
    # one slow round trip to the camera shortened the next gap).
    follow_trio_clock()
    run_blocking_inline()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_broker() as address:
            port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
            url = f"http://127.0.0.1:{port}{IMAGE_PATH}"
            still = Still("door", address, {"url": url, "interval": 0, "width": 320, "height": 240})
            async with serving(still), open_client(address) as tb:
                # interval = 0: nothing until asked.
                assert await tb.fetch(VIDEO, newest=1) == []
                reply = await send_command(tb, "video_door", "snap")
                assert reply.ok, reply.error
                assert (reply.result["width"], reply.result["height"]) == (320, 240)
                (frame,) = await tb.fetch(VIDEO, newest=1)
                assert frame.content_type == "image/jpeg"
                assert size_of(frame.data) == (320, 240)
                assert frame.timestamp == reply.result["timestamp"]
                assert len(frame.data) == reply.result["bytes"]
                (meta,) = await tb.fetch("video_door_data_source/metadata.txt", newest=1)
                metadata = json.loads(meta.data)
                assert metadata["mode"] == "still" and metadata["resolution"] == "320x240"
                assert metadata["interval"] == 0 and metadata["source"] == url

                reply = await send_command(tb, "video_door", "set-interval", 0.1)
                assert reply.ok and reply.result == "every 0.1 s"
                taken = await next_frames(tb, VIDEO, 3)
                assert all(size_of(f.data) == (320, 240) for f in taken)
                gaps = [b.timestamp - a.timestamp for a, b in zip(taken, taken[1:], strict=False)]
                assert gaps == pytest.approx([0.1, 0.1], abs=1e-3), gaps  # epoch floats: ~0.2 µs

                # The thumbnailer treats it as any camera.
                async with serving(Thumbnailer("thumbnailer", address, {"rate": 20})):
                    (thumb,) = await next_frames(tb, "thumbnail_door_data_source/thumbnail.jpg", 1)
                assert size_of(thumb.data) == (176, 144)

                status = (await send_command(tb, "video_door", "status")).result
                assert status["camera"] == "ok" and status["snapshots"] >= 4
                assert 0 <= status["last_round_trip"] < 5
            nursery.cancel_scope.cancel()


async def test_a_camera_that_fails_is_reported_and_retried() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_broker() as address:
            port = await nursery.start(partial(serve_camera_sim, "127.0.0.1", 0))
            wrong = f"http://127.0.0.1:{port}/axis-cgi/jpg/nothing.cgi"
            still = Still("door", address, {"url": wrong, "interval": 0.1})
            async with serving(still), open_client(address) as tb:
                reply = await send_command(tb, "video_door", "snap")
                assert not reply.ok
                assert f"{wrong}?resolution=640x480 answered 404 Not Found" == reply.error
                async with tb.subscribe("video_door_debug_log_source/log.txt") as sub:
                    async for item in sub:
                        if isinstance(item, Frame):
                            entry = json.loads(item.data)
                            if "snapshot failed" in entry["message"]:
                                break
                assert entry["level"] == "WARNING" and "404" in entry["message"]
                status = (await send_command(tb, "video_door", "status")).result
                assert status["camera"].startswith("failed: ") and status["snapshots"] == 0
            nursery.cancel_scope.cancel()
        # No camera at all: the command says so, the component goes on.
        async with open_broker() as address:
            gone = f"http://127.0.0.1:{port}{IMAGE_PATH}"
            async with serving(Still("door", address, {"url": gone, "interval": 0})):
                async with open_client(address) as tb:
                    reply = await send_command(tb, "video_door", "snap")
                    assert not reply.ok and "cannot connect" in reply.error
                    assert (await send_command(tb, "video_door", "status")).ok
