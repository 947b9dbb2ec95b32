"""The viewer's HTTP API over real HTTP on loopback, against a real in-process broker."""

from __future__ import annotations

import functools
import math
import struct
import subprocess
import sys

import pytest
import trio

from tests.web.helpers import EventStream, http, samples_of
from turbine import Client, Frame, open_client
from turbine._constants import FLOAT64_CONTENT_TYPE, SOURCE_TYPES
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.auth import AuthTable, token_hash
from turbine.render import numbers
from turbine.testing import start_broker
from turbine.web.decimate import blocks, decimate
from turbine.web.levels import SILENCE_DBFS, pcm_level
from turbine.web.serve import serve_web


def f64(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


async def test_sources_lists_what_the_broker_holds(broker: str, web: str) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "daq_rig_data_source", channels={"ch0": FLOAT64_CONTENT_TYPE}
            )
            await src.put("ch0", f64(1, 2, 3))
            await src.flush()
            r = await http(f"{web}/api/sources")
            assert r.status == 200
            [info] = r.json()
            assert info["name"] == "daq_rig_data_source" and info["online"] is True
            assert [c["name"] for c in info["channels"]] == ["ch0"]
            assert info["channels"][0]["content_type"] == FLOAT64_CONTENT_TYPE
            assert (await http(f"{web}/api/sources?pattern=video_*")).json() == []


async def test_numeric_channel_reads_newest_after_and_time_range(broker: str, web: str) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "daq_rig_data_source", channels={"ch0": FLOAT64_CONTENT_TYPE}
            )
            for k in range(10):  # 10 blocks of 4 samples, 1 s apart
                await src.put("ch0", f64(*(10 * k + i for i in range(4))), timestamp=1000.0 + k)
            await src.flush()
            base = f"{web}/api/channel/daq_rig_data_source/ch0"
            r = (await http(f"{base}?newest=2")).json()
            assert r["frames"] == 2 and r["samples"] == 8 and not r["decimated"]
            assert r["v"] == [80, 81, 82, 83, 90, 91, 92, 93]
            assert r["t"][:2] == [1008.0, 1008.25]  # samples spread to the next block
            r = (await http(f"{base}?after={r['first_seq']}")).json()
            assert r["v"] == [90, 91, 92, 93]
            r = (await http(f"{base}?start=1002&duration=2.5")).json()
            assert r["v"][0] == 20 and r["v"][-1] == 43 and r["frames"] == 3
            r = (await http(f"{base}?newest=10&max_points=4")).json()
            assert r["samples"] == 40 and r["decimated"] and len(r["v"]) == 4
            assert min(r["v"]) == 0 and max(r["v"]) == 93  # the envelope survives


def _block(k: int, values: list[float], t0: float = 0.0) -> Frame:
    return Frame("daq_x_data_source", "ch0", k + 1, t0 + k, f64(*values), FLOAT64_CONTENT_TYPE, "x")


def test_decimation_keeps_each_columns_extremes_in_time_order() -> None:
    # 100 blocks a second apart; their sizes vary, so sample spacing changes per block.
    sizes = [10 + (k % 3) for k in range(100)]
    frames = [_block(k, [math.sin(k + i / n) for i in range(n)]) for k, n in enumerate(sizes)]
    spike_hi, spike_lo = (5, 5), (45, 1)  # (block, sample): far from any column edge
    values = {k: numbers(f.data) for k, f in enumerate(frames)}
    values[spike_hi[0]][spike_hi[1]] = 100.0
    values[spike_lo[0]][spike_lo[1]] = -50.0
    frames = [_block(k, values[k]) for k in range(100)]
    every = {b.time(i): v for b in blocks(frames) for i, v in enumerate(b.values)}
    series = decimate(frames, 20)
    assert series.samples == sum(sizes) and series.decimated
    assert len(series.v) == 20  # 10 columns, each with a distinct min and max
    assert series.t == sorted(series.t)
    assert all(every[t] == v for t, v in zip(series.t, series.v, strict=True))  # real samples
    points = list(zip(series.t, series.v, strict=True))
    assert (5 + 5 / sizes[5], 100.0) in points and (45 + 1 / sizes[45], -50.0) in points
    # Few samples come back as they are, spread to the next block.
    few = decimate([_block(0, [3.0, 4.0]), _block(1, [5.0])], 10)
    assert (few.t, few.v, few.decimated) == ([0.0, 0.5, 1.0], [3.0, 4.0, 5.0], False)


async def test_frame_bytes_come_with_their_content_type(broker: str, web: str) -> None:
    jpeg = b"\xff\xd8fake-jpeg\xff\xd9"
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "video_cam_data_source", channels={"frame.jpg": "image/jpeg"}
            )
            await src.put("frame.jpg", b"older")
            await src.put("frame.jpg", jpeg)
            await src.flush()
            r = await http(f"{web}/api/frame/video_cam_data_source/frame.jpg")
            assert r.status == 200 and r.body == jpeg
            assert r.headers["content-type"] == "image/jpeg"
            seq = int(r.headers["x-turbine-seq"])
            r = await http(f"{web}/api/frame/video_cam_data_source/frame.jpg?seq={seq - 1}")
            assert r.body == b"older"
            r = await http(f"{web}/api/frame/video_cam_data_source/frame.jpg?seq={seq + 5}")
            assert r.status == 404 and "not yet put" in r.json()["error"]


async def test_errors_are_json_that_say_what_was_wrong(broker: str, web: str) -> None:
    with trio.fail_after(20):
        r = await http(f"{web}/api/channel/nosuch_data_source/x")
        assert r.status == 404 and "nosuch_data_source" in r.json()["error"]
        async with open_client(broker) as tb:
            await tb.open_source("daq_rig_data_source", channels={"ch0": FLOAT64_CONTENT_TYPE})
            base = f"{web}/api/channel/daq_rig_data_source/ch0"
            r = await http(f"{base}?newest=many")
            assert r.status == 400 and r.json() == {
                "error": "newest must be a whole number, got 'many'"
            }
            r = await http(f"{base}?newest=1&after=3")
            assert r.status == 400 and "not newest and after" in r.json()["error"]
            r = await http(f"{base}?max_points=1")
            assert r.status == 400 and "max_points" in r.json()["error"]
            r = await http(f"{web}/api/stream")
            assert r.status == 400 and "path=" in r.json()["error"]
            r = await http(f"{web}/api/command/daq_rig", raw=b"{not json")
            assert r.status == 400 and "JSON" in r.json()["error"]
            r = await http(f"{web}/api/command/daq_rig", body={"verb": "status", "timeout": 0.2})
            assert r.status == 504 and "daq_rig" in r.json()["error"]
            r = await http(f"{web}/api/nothing-here")
            assert r.status == 404 and r.json()["error"]
            # The broker and the viewer keep working.
            assert (await http(f"{web}/api/sources")).status == 200


async def test_openapi_and_page_are_served(web: str) -> None:
    with trio.fail_after(20):
        doc = (await http(f"{web}/api/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        assert "/api/channel/{source}/{channel}" in doc["paths"]
        page = await http(f"{web}/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")


async def test_stream_sends_live_frames_and_a_slow_tab_loses_only_its_own(
    broker: str, web: str
) -> None:
    with trio.fail_after(30):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "daq_rig_data_source",
                channels={"ch0": FLOAT64_CONTENT_TYPE, "log.txt": "text/plain"},
                cache_frames=10000,
            )
            await src.put("ch0", f64(0.5))
            await src.flush()
            fast = await EventStream.open(web, "path=daq_rig_data_source/*")
            stalled = await EventStream.open(web, "path=daq_rig_data_source/ch0", 4096)
            assert await fast.event() == ("ready", {"patterns": ["daq_rig_data_source/*"]})
            name, ev = await fast.event()  # newest frame first
            assert name == "frame" and samples_of(ev) == [0.5]
            await src.put("log.txt", b"hello")
            await src.flush()
            name, ev = await fast.event()
            assert name == "frame" and ev["text"] == "hello" and ev["channel"] == "log.txt"
            # The stalled tab reads nothing while 3,000 frames go by.
            # The other tab reads each batch of 100 before the next is put.
            got: list[float] = []
            for batch in range(30):
                for i in range(100):
                    await src.put("ch0", f64(float(batch * 100 + i), *[0.0] * 63))
                await src.flush()
                while len(got) < (batch + 1) * 100:
                    name, ev = await fast.event()
                    assert name == "frame", (name, ev)
                    got.append(samples_of(ev)[0])
            assert got == [float(i) for i in range(3000)]  # the reading tab lost nothing
            # The stalled tab, read at last: its queue kept the first ones, then it is told.
            events = [await stalled.event() for _ in range(2 + 256)]
            names = [e[0] for e in events]
            assert "dropped" in names
            lost = events[names.index("dropped")][1]
            assert lost["dropped"] > 0
            await fast.stream.aclose()
            await stalled.stream.aclose()


async def test_a_watched_pattern_streams_each_channels_newest_frame_not_every_one(
    broker: str, web: str
) -> None:
    with trio.fail_after(30):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "thumbnail_cam1_data_source", channels={"thumbnail.jpg": "image/jpeg"}
            )
            await src.put("thumbnail.jpg", b"jpeg 1")
            await src.flush()
            q = "watch=thumbnail_*_data_source/*&path=thumbnail_cam1_data_source/*"
            both = await EventStream.open(web, q)
            wall = await EventStream.open(web, "watch=thumbnail_*_data_source/*")
            assert await wall.event() == (
                "ready",
                {"patterns": [], "watched": ["thumbnail_*_data_source/*"]},
            )
            name, ev = await wall.event()  # the newest frame first, as a path's
            assert name == "frame" and ev["seq"] == 1 and ev["url"].endswith("?seq=1")
            for k in range(2, 101):  # 99 more, far faster than 2 a second
                await src.put("thumbnail.jpg", b"jpeg %d" % k)
            await src.flush()
            seen = []
            while not seen or seen[-1] != 100:  # the newest comes, whatever came between
                name, ev = await wall.event()
                assert name == "frame", (name, ev)
                seen.append(ev["seq"])
            assert len(seen) < 50 and seen == sorted(seen)
            await both.event()  # ready
            every: list[int] = []
            while every.count(100) < 2:  # the last frame from the path and from the watch
                every.append((await both.event())[1]["seq"])
            assert set(range(1, 101)) <= set(every)  # the path's feed: every frame
            await wall.stream.aclose()
            await both.stream.aclose()
        r = await http(f"{web}/api/stream")
        assert r.status == 400 and "path=SOURCE/CHANNEL" in r.json()["error"]


def test_import_turbine_loads_no_web_stack() -> None:
    code = "import sys, turbine, turbine.cli; print(sorted({'starlette', 'hypercorn', 'turbine.web.api'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


async def test_replay_plays_the_archive_from_a_time_in_order_then_ends(
    broker: str, web: str
) -> None:
    with trio.fail_after(30):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "daq_rig_data_source",
                channels={"ch0": FLOAT64_CONTENT_TYPE, "note.txt": "text/plain"},
            )
            for k in range(10):  # 10 s of data, one block a second, a note every 3 s
                await src.put("ch0", f64(float(k)), timestamp=1000.0 + k)
                if k % 3 == 0:
                    await src.put("note.txt", f"at {k}".encode(), timestamp=1000.0 + k)
            await src.flush()
            r = (await http(f"{web}/api/range?path=daq_rig_data_source/*")).json()
            assert r == {"start": 1000.0, "end": 1009.0}
            assert (await http(f"{web}/api/range?path=video_*/*")).json() == {
                "start": None,
                "end": None,
            }
            tab = await EventStream.open(web, "path=daq_rig_data_source/*&from=1003.5&speed=100")
            name, ready = await tab.event()
            assert name == "ready" and ready["from"] == 1003.5 and ready["speed"] == 100
            frames: list[tuple[float, str]] = []
            clock: list[float] = []
            while True:
                name, ev = await tab.event()
                if name == "end":
                    break
                if name == "clock":
                    clock.append(ev["t"])
                else:
                    assert name == "frame", (name, ev)
                    frames.append((ev["timestamp"], ev.get("text") or repr(samples_of(ev))))
            await tab.stream.aclose()
    assert ev == {"t": 1009.0}
    # Every frame from 1003.5 on, once, in time order; nothing from before.
    assert frames == [
        (1004.0, "[4.0]"),
        (1005.0, "[5.0]"),
        (1006.0, "[6.0]"),
        (1006.0, "at 6"),
        (1007.0, "[7.0]"),
        (1008.0, "[8.0]"),
        (1009.0, "[9.0]"),
        (1009.0, "at 9"),
    ]
    assert clock == sorted(clock) and clock[0] >= 1003.5 and clock[-1] == 1009.0


async def test_a_frame_at_a_time_is_the_newest_stamped_at_or_before_it(
    broker: str, web: str
) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            src = await tb.open_source(
                "video_cam_data_source", channels={"frame.jpg": "image/jpeg"}
            )
            for k, data in enumerate([b"first", b"second", b"third"]):
                await src.put("frame.jpg", data, timestamp=2000.0 + 10 * k)
            await src.flush()
            base = f"{web}/api/frame/video_cam_data_source/frame.jpg"
            assert (await http(f"{base}?at=2015")).body == b"second"
            assert (await http(f"{base}?at=2010")).body == b"second"
            r = await http(f"{base}?at=2100")
            assert r.body == b"third" and r.headers["x-turbine-timestamp"] == "2020.0"
            r = await http(f"{base}?at=1999")
            assert r.status == 404 and "at or before" in r.json()["error"]
            r = await http(f"{base}?at=2015&seq=1")
            assert r.status == 400 and "not both" in r.json()["error"]
            r = await http(f"{web}/api/stream?path=video_*/*&speed=2")
            assert r.status == 400 and "speed needs from" in r.json()["error"]
            r = await http(f"{web}/api/stream?path=video_*/*&from=2000&speed=1000")
            assert r.status == 400 and "between 0.1 and 100" in r.json()["error"]


async def test_with_auth_the_viewer_does_what_its_user_may_and_says_so(
    nursery: trio.Nursery,
) -> None:
    tokens = {"admin": "admin-token-0123456789", "viewer": "viewer-token-0123456789"}
    rights = {
        "admin": 'admin = true\nread = ["*"]\nwrite = ["*"]\ncommand = ["*"]',
        "viewer": 'read = ["daq_*"]\ncommand = ["daq_ok_*"]',
    }
    table = AuthTable.from_toml(
        "\n".join(
            f'[users.{u}]\ntoken_sha256 = "{token_hash(t)}"\n{rights[u]}\n'
            for u, t in tokens.items()
        )
    )
    broker = await start_broker(nursery, auth=table)
    with trio.fail_after(20):
        async with open_client(broker, token=tokens["admin"]) as tb:
            for name in ("daq_ok_command_sink", "daq_no_command_sink", "video_hidden_data_source"):
                await tb.open_source(name, shared=True)
            web = await nursery.start(
                functools.partial(serve_web, broker, "127.0.0.1", 0, token=tokens["viewer"])
            )
            who = (await http(f"{web}/api/whoami")).json()
            assert who["auth"] is True and who["user"] == "viewer"
            assert who["rights"]["command"] == ["daq_ok_*"] and who["rights"]["admin"] is False
            listed = {s["name"]: s["access"] for s in (await http(f"{web}/api/sources")).json()}
            assert listed == {"daq_ok_command_sink": "r-c", "daq_no_command_sink": "r--"}
            r = await http(f"{web}/api/command/daq_no", body={"verb": "status", "timeout": 2})
            assert r.status == 403 and "daq_no_command_sink" in r.json()["error"]


def test_pcm_levels_are_peak_and_rms_per_channel_in_dbfs() -> None:
    stereo = struct.pack(">6h", 16384, 0, -16384, 0, 16384, 0)  # left half scale, right silent
    level = pcm_level(stereo, "audio/L16;rate=8000;channels=2")
    assert level == {"peak_dbfs": [-6.02, SILENCE_DBFS], "rms_dbfs": [-6.02, SILENCE_DBFS]}
    assert pcm_level(struct.pack(">h", -32768), "audio/L16;rate=8000") == {
        "peak_dbfs": [0.0],
        "rms_dbfs": [0.0],
    }
    assert pcm_level(b"\x00\x01", "image/jpeg") is None


async def _viewer_subscriptions(tb: Client) -> int:
    clients = (await tb.status())["clients"]
    return sum(len(c["subscriptions"]) for c in clients if c["name"].startswith("web#"))


async def test_tabs_on_the_same_paths_share_one_broker_subscription(broker: str, web: str) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            src = await tb.open_source("daq_rig_data_source", channels={"log.txt": "text/plain"})
            await src.put("log.txt", b"first")
            await src.flush()
            tabs = [await EventStream.open(web, "path=daq_rig_data_source/*") for _ in range(3)]
            for tab in tabs:  # each is sent the newest frame first, the later ones by a fetch
                assert (await tab.event())[0] == "ready"
                assert (await tab.event())[1]["text"] == "first"
            assert await _viewer_subscriptions(tb) == 1
            await src.put("log.txt", b"second")
            await src.flush()
            for tab in tabs:
                assert (await tab.event())[1]["text"] == "second"
            for tab in tabs:
                await tab.stream.aclose()
            for _ in range(1000):  # the last tab gone, so is the subscription (soon)
                if not await _viewer_subscriptions(tb):
                    break
                await trio.sleep(0.01)  # noqa: ASYNC110 (a broker state, no event to wait on)
            assert await _viewer_subscriptions(tb) == 0


async def test_markers_live_on_a_shared_source_every_viewer_reads_and_writes(
    nursery: trio.Nursery,
) -> None:
    broker = await start_broker(nursery, types=(*SOURCE_TYPES, "web"))
    one = await nursery.start(serve_web, broker, "127.0.0.1", 0)
    two = await nursery.start(serve_web, broker, "127.0.0.1", 0)
    with trio.fail_after(20):
        assert (await http(f"{one}/api/markers")).json() == []
        r = await http(f"{one}/api/markers", body={"label": " pump on ", "time": 1000.5})
        assert r.status == 201 and r.json()["label"] == "pump on"
        r = await http(f"{two}/api/markers", body={"label": "valve shut", "time": 990.0})
        assert r.status == 201  # the other viewer holds the source: this one puts to it
        for web in (one, two):
            got = (await http(f"{web}/api/markers")).json()
            assert [(m["time"], m["label"]) for m in got] == [
                (990.0, "valve shut"),
                (1000.5, "pump on"),
            ]
        r = await http(f"{one}/api/markers", body={"label": ""})
        assert r.status == 400 and "label" in r.json()["error"]
        r = await http(f"{one}/api/markers", body={"label": "x", "time": "noon"})
        assert r.status == 400 and "time" in r.json()["error"]
        async with open_client(broker) as tb:
            [info] = await tb.list_sources("web_markers_data_source")
            assert info.shared and info.channels[0].frames == 2


async def test_markers_need_the_web_type_and_say_so(broker: str, web: str) -> None:
    with trio.fail_after(20):
        r = await http(f"{web}/api/markers", body={"label": "pump on"})
        assert r.status == 400 and "--type web" in r.json()["error"]


async def test_a_long_range_is_drawn_from_the_brokers_block_summaries(
    broker: str, web: str
) -> None:
    day, blocks, n = 86400.0, 1200, 1000  # 1.2 M samples over a day: one block every 72 s
    with trio.fail_after(60):
        async with open_client(broker) as tb:
            src = await tb.open_source("daq_rig_data_source", {"ch0": FLOAT64_CONTENT_TYPE})
            values = [[math.sin(k / 50 + i / n) for i in range(n)] for k in range(blocks)]
            values[300][123], values[900][7] = -5.0, 5.0  # one low and one high spike
            for k, v in enumerate(values):
                await src.put("ch0", f64(*v), timestamp=1e6 + k * day / blocks)
            await src.flush()
            url = f"{web}/api/channel/daq_rig_data_source/ch0?start=1e6&duration={day}"
            r = (await http(url + "&max_points=400")).json()
            raw = (await http(url + "&max_points=400&duration=3600")).json()
    assert r["summarized"] and r["samples"] == blocks * n and r["blocks"] == blocks
    assert 0 < len(r["v"]) <= 400 and r["t"] == sorted(r["t"])
    assert (min(r["v"]), max(r["v"])) == (-5.0, 5.0)
    assert r["t"][r["v"].index(-5.0)] == pytest.approx(1e6 + 300 * 72, abs=day / 200)
    assert r["t"][r["v"].index(5.0)] == pytest.approx(1e6 + 900 * 72, abs=day / 200)
    assert "summarized" not in raw and raw["samples"] == 50 * n  # an hour: 50 blocks, read whole


async def test_a_broker_restarted_from_its_data_dir_still_draws_a_day_from_summaries(
    tmp_path,
) -> None:
    day, blocks, n = 86400.0, 1200, 1000  # 1.2 M samples over a day, as above
    values = [[math.cos(k / 40 + i / n) for i in range(n)] for k in range(blocks)]
    values[200][5], values[1000][900] = -7.0, 7.0
    url = "/api/channel/daq_rig_data_source/ch0?start=1e6&duration=86400&max_points=400"

    async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_archive(tmp_path) as archive, trio.open_nursery() as nursery:
            address = await start_broker(nursery, store=TieredStores(archive))
            web = await nursery.start(serve_web, address, "127.0.0.1", 0)
            task_status.started((address, web))

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            address, web = await nursery.start(serve)
            async with open_client(address) as tb:
                src = await tb.open_source("daq_rig_data_source", {"ch0": FLOAT64_CONTENT_TYPE})
                for k, v in enumerate(values):
                    await src.put("ch0", f64(*v), timestamp=1e6 + k * day / blocks)
                await src.flush()
            before = (await http(web + url)).json()
            nursery.cancel_scope.cancel()  # the broker stops; the archive closes with it
        async with trio.open_nursery() as nursery:
            _, web = await nursery.start(serve)
            after = (await http(web + url)).json()
            nursery.cancel_scope.cancel()
    assert before["summarized"] and before["blocks"] == blocks
    assert after["summarized"] and after["blocks"] == blocks and after["samples"] == blocks * n
    assert (min(after["v"]), max(after["v"])) == (-7.0, 7.0)
    assert (after["t"], after["v"]) == (before["t"], before["v"])
