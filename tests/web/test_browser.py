"""The page in a real headless Chromium (Debian's), driven by Playwright, against a real DAQ."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from PIL import Image

from components.daq.component import Daq
from tests.ports import free_ports
from tests.test_mcp import TURBINE, open_mcp_process, run_mcp, running, wait_state
from tests.web.helpers import http
from turbine import open_client
from turbine._constants import FLOAT64_CONTENT_TYPE, SOURCE_TYPES
from turbine.mcp import load_config
from turbine.render import pcm_content_type
from turbine.testing import start_broker
from turbine.web.serve import serve_web

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    """Headless Chromium (``CHROMIUM``) under playwright, closed on exit."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _look(url: str, out: Path) -> tuple[list[str], bytes, bytes, bytes, dict[str, Any]]:
    """Open the page; return the source names listed, two plot screenshots plus an image
    one, and what the source browser and the plot's cursor readout show."""
    seen: dict[str, Any] = {}
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        daq = '#sources tr[data-source="daq_web_data_source"]'
        page.wait_for_selector(daq, timeout=20000)
        page.wait_for_selector(f"{daq} details", timeout=20000)  # its newest metadata
        page.wait_for_function(  # its channels' rates, once it has put a few blocks
            "s => document.querySelector(s + ' span.channel small').textContent.includes('Hz')",
            arg=daq,
            timeout=20000,
        )
        seen["rows"] = {
            name: page.locator(f'#sources tr[data-source="{name}"] td').all_inner_texts()
            for name in ("daq_web_data_source", "thumbnail_gone_data_source")
        }
        seen["metadata"] = json.loads(page.locator(f"{daq} details pre").text_content() or "")
        names = page.locator("#sources td.name").all_inner_texts()
        plot = page.locator(".panel.timeseries .plot").first
        line = plot.locator("path.js-line").first
        line.wait_for(timeout=20000)
        page.wait_for_timeout(1000)
        first = plot.screenshot(path=str(out / "plot-1.png"))
        # Until the line is drawn anew (new samples), not for a fixed 1.5 s: a
        # loaded machine may redraw later; 20 s is a hang bound.  Read after the
        # screenshot: a redraw during it must not count as the next one.
        drawn = line.get_attribute("d")
        page.wait_for_function(
            "(d) => { const p = document.querySelector('.panel.timeseries .plot path.js-line');"
            " return p && p.getAttribute('d') !== d; }",
            arg=drawn,
            timeout=20000,
        )
        second = plot.screenshot(path=str(out / "plot-2.png"))
        plot.hover()  # the cursor readout: the time and each channel's value under it
        readout = plot.locator(".hoverlayer .legend")
        readout.wait_for(timeout=20000)
        seen["readout"] = readout.text_content()
        seen["traces"] = page.evaluate(
            "() => document.querySelector('.panel.timeseries .plot').data.map((d) => d.name)"
        )
        image = page.locator(".panel.wall .tile img").first
        image.wait_for(timeout=20000)
        page.wait_for_function(
            "() => { const i = document.querySelector('.panel.wall .tile img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=20000,
        )
        shot = image.screenshot(path=str(out / "image.png"))
        page.screenshot(path=str(out / "page.png"), full_page=True)
        assert not errors, errors
        return names, first, second, shot, seen


async def test_the_page_lists_sources_and_plots_live_daq_data(
    broker: str, web: str, tmp_path: Path
) -> None:
    buf = io.BytesIO()  # a real JPEG for the thumbnail panel
    Image.new("RGB", (160, 120), (200, 40, 40)).save(buf, "JPEG")
    with trio.fail_after(90):
        async with open_client(broker) as gone:  # a camera that put a frame and went
            src = await gone.open_source(
                "thumbnail_gone_data_source", channels={"thumbnail.jpg": "image/jpeg"}
            )
            await src.put("thumbnail.jpg", buf.getvalue())
            await src.flush()
        async with open_client(broker) as tb, trio.open_nursery() as nursery:
            cam = await tb.open_source(
                "thumbnail_cam_data_source", channels={"thumbnail.jpg": "image/jpeg"}
            )
            await cam.put("thumbnail.jpg", buf.getvalue())
            await cam.flush()
            daq = Daq("web", broker, {"channels": "2", "rate": "200", "block_seconds": "0.05"})
            await nursery.start(daq.serve)
            names, first, second, shot, seen = await trio.to_thread.run_sync(
                _look, web + "/", tmp_path
            )
            nursery.cancel_scope.cancel()
    assert "daq_web_data_source" in names and "thumbnail_cam_data_source" in names
    # The source browser: type, name, online or not, channels with content type and rate.
    daq_row, gone_row = (
        seen["rows"]["daq_web_data_source"],
        seen["rows"]["thumbnail_gone_data_source"],
    )
    assert daq_row[:3] == ["daq", "daq_web_data_source", "online"], daq_row
    assert re.search(r"ch0 application/x-float64-le \d+\.\d Hz", daq_row[3]), daq_row
    assert gone_row[:3] == ["thumbnail", "thumbnail_gone_data_source", "offline"], gone_row
    assert "thumbnail.jpg image/jpeg" in gone_row[3], gone_row
    assert seen["metadata"]["component"] == "daq_web"  # the newest metadata frame
    # A plot of several channels, and its cursor readout: a time and each channel's value.
    assert seen["traces"] == ["ch0", "ch1"], seen["traces"]
    assert re.search(r"\d\d:\d\d:\d\d", seen["readout"]), seen["readout"]
    assert "ch0" in seen["readout"] and "ch1" in seen["readout"], seen["readout"]
    assert first != second, f"the DAQ plot did not move (screenshots in {tmp_path})"
    r, g, b = Image.open(io.BytesIO(shot)).convert("RGB").getpixel((80, 60))
    assert r > 150 and g < 90 and b < 90, "the thumbnail panel does not show the red thumbnail"


def _jpeg(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), rgb).save(buf, "JPEG")
    return buf.getvalue()


def _red(shot: bytes) -> bool:
    r, g, b = Image.open(io.BytesIO(shot)).convert("RGB").getpixel((80, 60))
    return bool(r > 150 and g < 90 and b < 90)


def _pause_scrub_play(url: str, out: Path, older: float) -> dict[str, object]:
    """Pause, scrub to ``older``, then replay at 100x until the page is live again."""
    seen: dict[str, object] = {}
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        stamp = page.locator(".panel.wall .tile .stamp").first
        page.wait_for_selector('.panel.wall .tile .stamp[data-seq="3"]', timeout=20000)
        seen["live_t"] = float(stamp.get_attribute("data-t") or 0)
        page.click("#pause")
        page.wait_for_selector('body[data-mode="paused"]', timeout=5000)
        page.wait_for_selector("#slider[data-ready]", timeout=10000)
        page.locator("#slider").evaluate(
            "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(older)
        )
        page.wait_for_selector('.panel.wall .tile .stamp[data-seq="1"]', timeout=10000)
        page.wait_for_function(
            "() => { const i = document.querySelector('.panel.wall .tile img');"
            " return i.complete && i.naturalWidth > 0; }",
            timeout=10000,
        )
        seen["scrub_t"] = float(stamp.get_attribute("data-t") or 0)
        seen["cursor"] = page.locator("#cursor").inner_text()
        seen["scrub_shot"] = page.locator(".panel.wall .tile img").first.screenshot(
            path=str(out / "scrubbed.png")
        )
        page.select_option("#speed", "100")
        page.click("#play")
        page.wait_for_selector('body[data-mode="replay"]', timeout=5000)
        page.wait_for_selector('.panel.wall .tile .stamp[data-seq="3"]', timeout=15000)
        page.wait_for_selector('body[data-mode="live"]', timeout=15000)
        page.screenshot(path=str(out / "replayed.png"), full_page=True)
        assert not errors, errors
        return seen


async def test_pause_then_scrub_shows_an_older_frame_and_replay_returns_to_live(
    broker: str, web: str, tmp_path: Path
) -> None:
    now = time.time()
    with trio.fail_after(90):
        async with open_client(broker) as tb:
            daq = await tb.open_source(
                "daq_rig_data_source", channels={"ch0": FLOAT64_CONTENT_TYPE}
            )
            await daq.put("ch0", struct.pack("<d", 1.0))
            cam = await tb.open_source(
                "thumbnail_cam_data_source", channels={"thumbnail.jpg": "image/jpeg"}
            )
            for rgb, age in (((200, 40, 40), 20), ((40, 200, 40), 10), ((40, 40, 200), 0)):
                await cam.put("thumbnail.jpg", _jpeg(rgb), timestamp=now - age)
            await cam.flush()
            await daq.flush()
            seen = await trio.to_thread.run_sync(_pause_scrub_play, web + "/", tmp_path, now - 15)
    assert seen["scrub_t"] == pytest.approx(now - 20, abs=1e-3)  # the frame at or before the cursor
    assert seen["scrub_t"] < seen["live_t"]  # type: ignore[operator]
    # The cursor reads the time scrubbed to (the slider's step is 1 ms).
    shown = datetime.fromisoformat(str(seen["cursor"]).replace("Z", "+00:00"))
    assert shown.timestamp() == pytest.approx(now - 15, abs=0.002)
    assert _red(seen["scrub_shot"]), (
        f"the scrubbed panel does not show the older red frame ({tmp_path})"
    )  # type: ignore[arg-type]


# A long-running plain program for the MCP to restart (a camera emulator on a free port).
SLEEPER = '[[process]]\nname = "sleeper"\nkind = "camera_sim"\nargs = ["--port", "0"]\n'


def _restart_and_ask(url: str, out: Path) -> dict[str, str]:
    seen: dict[str, str] = {}
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        row = '#programs tr[data-program="sleeper"]'
        page.wait_for_selector(f'{row}[data-state="running"][data-restarts="0"]', timeout=20000)
        seen["pid_before"] = page.locator(f"{row} td").nth(4).inner_text()
        page.click(f"{row} button.restart")
        page.wait_for_selector(f'{row}[data-state="running"][data-restarts="1"]', timeout=20000)
        seen["pid_after"] = page.locator(f"{row} td").nth(4).inner_text()
        seen["site_reply"] = page.locator("#site-reply").inner_text()
        page.wait_for_selector('#console-target option[value="mcp_t"]', state="attached")
        page.select_option("#console-target", "mcp_t")
        for verb in ("status", "help"):
            page.fill("#console-line", verb)
            page.locator("#console-reply").evaluate("e => { e.dataset.state = ''; }")
            page.click("#console button")
            page.wait_for_selector('#console-reply[data-state="ok"]', timeout=15000)
            seen[verb] = page.locator("#console-reply").inner_text()
        page.screenshot(path=str(out / "site.png"), full_page=True)
        assert not errors, errors
        return seen


async def test_the_restart_button_restarts_a_program_and_the_console_answers(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with (
            run_mcp(tmp_path, SLEEPER) as site,
            open_client(site.address) as tb,
            trio.open_nursery() as viewer,
        ):
            await wait_state(tb, running("sleeper"), seconds=30)
            web = await viewer.start(serve_web, site.address, "127.0.0.1", 0)
            seen = await trio.to_thread.run_sync(_restart_and_ask, web + "/", tmp_path)
            after = await wait_state(tb, running("sleeper"))
            viewer.cancel_scope.cancel()
    assert after["sleeper"]["restarts"] == 1  # the MCP's own count went up
    assert seen["pid_before"] != seen["pid_after"] == str(after["sleeper"]["pid"])
    assert "started sleeper" in seen["site_reply"]
    assert '"programs"' in seen["status"] and '"sleeper"' in seen["status"]
    assert "restart" in seen["help"] and "status" in seen["help"]


LAYOUT = {
    "w": 60,
    "p": [
        {"k": "wall"},
        {"k": "values"},
        {"k": "log", "s": "daq_rig_debug_log_source", "c": "log.txt"},
        {"k": "meta", "s": "daq_rig_data_source"},
        {"k": "audio", "s": "audio_tone_data_source", "c": "audio.pcm"},
    ],
}


def _panels(url: str, out: Path, add_camera: Callable[[], None]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    tile = '.panel.wall .tile[data-path="thumbnail_{}_data_source/thumbnail.jpg"] .stamp[data-seq]'
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "#layout=" + quote(json.dumps(LAYOUT)))
        page.wait_for_selector(tile.format("a"), timeout=20000)
        trio.from_thread.run_sync(add_camera)  # a camera that comes later gets its tile
        page.wait_for_selector(tile.format("b"), timeout=20000)
        value = '.panel.values tr[data-path="daq_rig_data_source/ch0"] td.value[data-value]'
        seen["value"] = page.locator(value).get_attribute("data-value", timeout=20000)
        lines = page.locator(".panel.logpanel .log div:not([hidden])")
        lines.nth(1).wait_for(timeout=20000)
        seen["log_all"] = lines.all_inner_texts()
        page.select_option(".panel.logpanel select.level", "ERROR")
        seen["log_error"] = lines.all_inner_texts()
        meta = page.locator(".panel.meta pre")
        page.wait_for_function("() => document.querySelector('.panel.meta pre').textContent")
        seen["meta"] = json.loads(meta.inner_text())
        meter = page.locator(".panel.audio .meter").first
        seen["peak"] = float(meter.get_attribute("data-peak", timeout=20000) or "nan")
        seen["layout"] = json.loads(
            page.evaluate("() => decodeURIComponent(location.hash.slice('#layout='.length))")
        )
        page.select_option("#timescale", "10")
        seen["scale"] = json.loads(
            page.evaluate("() => decodeURIComponent(location.hash.slice('#layout='.length))")
        )["w"]
        page.screenshot(path=str(out / "panels.png"), full_page=True)
        page.reload()  # the link shows the same view
        page.wait_for_selector(tile.format("b"), timeout=20000)
        seen["kinds"] = page.evaluate(
            "() => [...document.querySelectorAll('.panel')].map((p) => p.className)"
        )
        assert not errors, errors
        return seen


async def test_wall_values_log_levels_metadata_audio_meter_and_the_layout_in_the_url(
    broker: str, web: str, tmp_path: Path
) -> None:
    record = {"time": time.time(), "logger": "daq.rig"}
    with trio.fail_after(90):
        async with open_client(broker) as tb:
            daq = await tb.open_source(
                "daq_rig_data_source", channels={"ch0": FLOAT64_CONTENT_TYPE}
            )
            await daq.put("ch0", struct.pack("<3d", 1.0, 2.0, 42.5))
            await daq.put("metadata.txt", json.dumps({"rig": "north", "gain": 2}).encode())
            log = await tb.open_source(
                "daq_rig_debug_log_source", channels={"log.txt": "application/json"}
            )
            for level, message in (("INFO", "all fine"), ("ERROR", "pump failed")):
                await log.put(
                    "log.txt", json.dumps({**record, "level": level, "message": message}).encode()
                )
            tone = await tb.open_source(
                "audio_tone_data_source", channels={"audio.pcm": pcm_content_type(16000, 1)}
            )
            await tone.put("audio.pcm", struct.pack(">8h", *[16384, -16384] * 4))  # half scale
            cams = {}
            for name in ("a", "b"):
                cams[name] = await tb.open_source(
                    f"thumbnail_{name}_data_source", channels={"thumbnail.jpg": "image/jpeg"}
                )
            await cams["a"].put("thumbnail.jpg", _jpeg((200, 40, 40)))
            for src in (daq, log, tone, cams["a"]):
                await src.flush()
            later = trio.Event()

            async def camera_b() -> None:
                await later.wait()
                await cams["b"].put("thumbnail.jpg", _jpeg((40, 200, 40)))
                await cams["b"].flush()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(camera_b)
                seen = await trio.to_thread.run_sync(_panels, web + "/", tmp_path, later.set)
    assert float(seen["value"]) == 42.5  # the newest sample of the newest block
    assert [t.split(" ", 1)[1] for t in seen["log_all"]] == [
        "INFO daq.rig: all fine",
        "ERROR daq.rig: pump failed",
    ]
    assert [t.split(" ", 1)[1] for t in seen["log_error"]] == ["ERROR daq.rig: pump failed"]
    assert seen["meta"] == {"rig": "north", "gain": 2}
    assert seen["peak"] == pytest.approx(-6.02, abs=0.01)  # half of full scale
    assert seen["layout"] == LAYOUT
    assert seen["scale"] == 10
    assert [k.split()[1] for k in seen["kinds"]] == ["wall", "values", "logpanel", "meta", "audio"]


def _mark(url: str, out: Path) -> tuple[list[str], int]:
    """Drop a marker in one tab; return the plot labels a second tab shows, and how many
    times that tab asked for the markers while waiting for it (0: it was pushed)."""
    with _chromium() as browser:
        first, second = (browser.new_page(viewport={"width": 1400, "height": 900}) for _ in "ab")
        errors: list[str] = []
        asked: list[str] = []
        second.on("request", lambda r: asked.append(r.url) if "/api/markers" in r.url else None)
        for page in (first, second):
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.locator(".panel.timeseries .plot path.js-line").first.wait_for(timeout=20000)
        second.wait_for_function("() => state.source && state.source.readyState === 1")
        before = len(asked)
        first.fill("#marker-label", "pump on")
        first.click("#mark")
        label = ".panel.timeseries .annotation-text"
        first.wait_for_selector(f"{label} >> text=pump on", timeout=10000)
        second.wait_for_selector(f"{label} >> text=pump on", timeout=10000)  # on its stream
        second.screenshot(path=str(out / "marker.png"), full_page=True)
        assert not errors, errors
        texts: list[str] = second.locator(label).evaluate_all("els => els.map(e => e.textContent)")
        return texts, len(asked) - before


async def test_a_marker_dropped_in_one_tab_shows_on_every_tabs_plot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    broker = await start_broker(nursery, types=(*SOURCE_TYPES, "web"))
    web = await nursery.start(serve_web, broker, "127.0.0.1", 0)
    with trio.fail_after(90):
        async with open_client(broker) as tb, trio.open_nursery() as inner:
            daq = Daq("web", broker, {"channels": "1", "rate": "100", "block_seconds": "0.1"})
            await inner.start(daq.serve)
            labels, asked = await trio.to_thread.run_sync(_mark, web + "/", tmp_path)
            markers = await tb.fetch("web_markers_data_source/markers.json", newest=10)
            inner.cancel_scope.cancel()
    assert labels == ["pump on"]
    assert asked == 0  # the other tab did not poll for it: the marker came on its stream
    assert [json.loads(f.data)["label"] for f in markers] == [
        "pump on"
    ]  # on the broker, archived like any


def _demo_site(tmp_path: Path) -> tuple[Path, str]:
    """configs/demo.toml on free ports (the broker on 0), run from ``tmp_path``; and the viewer's URL."""
    text = (Path(__file__).parents[2] / "configs" / "demo.toml").read_text()
    text = re.sub(r"^port = 3333\b", "port = 0", text, flags=re.M)
    fixed = ("8080", "8081", "6000", "6001", "4444")
    ports = dict(zip(fixed, map(str, free_ports(len(fixed))), strict=True))
    text = re.sub(r"\b(8080|8081|6000|6001|4444)\b", lambda m: ports[m.group(1)], text)
    site = tmp_path / "demo.toml"
    site.write_text(text)
    return site, f"http://127.0.0.1:{ports['8080']}"


def _demo(url: str, out: Path, components: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        for name in components:  # every demo component in the source browser
            page.wait_for_selector(f'#sources tr[data-source="{name}_data_source"]', timeout=60000)
        plot = page.locator(".panel.timeseries .plot").first
        plot.locator("path.js-line").first.wait_for(timeout=30000)
        first = plot.screenshot(path=str(out / "demo-plot-1.png"))
        cam1 = '.panel.wall .tile[data-path^="thumbnail_cam1_"] .stamp'  # a 10 fps camera
        tile = page.locator(cam1 + "[data-seq]")  # (the door camera snaps only every 5 s)
        tile.wait_for(timeout=60000)
        seq = int(tile.get_attribute("data-seq") or 0)
        page.wait_for_function(  # its thumbnail updates, until the wall has 6 s of history
            f"s => Number(document.querySelector('{cam1}').dataset.seq) > s",
            arg=seq + 6,
            timeout=45000,
        )
        seen["plot_moved"] = first != plot.screenshot(path=str(out / "demo-plot-2.png"))
        # An NTCP control point's channel, clicked in the source browser, is plotted too.
        ntcp = page.locator(
            '#sources tr[data-source="ntcp_rigSim_data_source"] span.channel',
            has_text="x-float64-le",
        ).first
        seen["ntcp_path"] = ntcp.get_attribute("data-path", timeout=30000)
        ntcp.click()
        page.wait_for_function(  # (a control point held still draws a flat line: no height)
            "() => { const p = document.querySelectorAll('.panel.timeseries .plot')[1];"
            " return p && p.data && p.data[0].y.length > 0 && p.querySelector('path.js-line'); }",
            timeout=30000,
        )
        seen["ntcp_traces"] = page.evaluate(
            "() => document.querySelectorAll('.panel.timeseries .plot')[1].data.map((d) => d.name)"
        )
        live_t = float(tile.get_attribute("data-t") or 0)
        page.click("#pause")  # then scrub 5 s back: an older frame, an older timestamp
        page.wait_for_selector("#slider[data-ready]", timeout=10000)
        page.locator("#slider").evaluate(
            "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(live_t - 5)
        )
        page.wait_for_function(
            f"t => Number(document.querySelector('{cam1}').dataset.t) < t",
            arg=live_t - 4,
            timeout=20000,
        )
        seen["scrubbed_back_s"] = live_t - float(tile.get_attribute("data-t") or 0)
        page.click("#go-live")
        row = '#programs tr[data-program="daq_demo"]'
        page.wait_for_selector(f'{row}[data-state="running"][data-restarts="0"]', timeout=30000)
        page.click(f"{row} button.restart")
        page.wait_for_selector(f'{row}[data-state="running"][data-restarts="1"]', timeout=30000)
        page.select_option("#console-target", "daq_demo")
        page.fill("#console-line", "status")
        page.click("#console button")
        page.wait_for_selector('#console-reply[data-state="ok"]', timeout=20000)
        seen["status"] = page.locator("#console-reply").inner_text()
        # With auth: what the viewer's user may do, in the header and by each source.
        seen["whoami"] = page.locator("#whoami").inner_text()
        seen["access"] = page.locator('#sources tr[data-source="daq_demo_data_source"] .access')
        seen["access"] = seen["access"].inner_text()
        # The demo's 50-odd sources and its programs fit the left column: nothing sticks out sideways.
        seen["overflow"] = page.evaluate(
            """() => Object.fromEntries(["left", "browser", "sources", "site"].map((id) => {
                 const e = document.getElementById(id);
                 return [id, e.scrollWidth - e.clientWidth];
               }).concat([["page", document.documentElement.scrollWidth - window.innerWidth],
                          ["rows", document.querySelectorAll("#sources tbody tr").length]]))"""
        )
        page.screenshot(path=str(out / "demo.png"), full_page=True)
        assert not errors, errors
        return seen


async def test_the_demo_site_in_the_browser(tmp_path: Path) -> None:
    """configs/demo.toml as `make demo` runs it (auth on), on free ports: what the issue lists."""
    site, url = _demo_site(tmp_path)
    components = [p.label for p in load_config(site).programs if p.component]
    env = {**os.environ, "HOME": str(tmp_path)}  # the operator's token file lands here
    argv = [TURBINE, "mcp", str(site)]
    log = tmp_path / "mcp.log"
    async with open_mcp_process(
        argv, log, env=env, cwd=tmp_path, started_within=240, stopped_within=30
    ):
        with trio.fail_after(240):
            while True:  # the broker listens; wait until the MCP's viewer process does too
                try:
                    await http(f"{url}/api/sources")
                    break
                except OSError:
                    await trio.sleep(0.2)
            seen = await trio.to_thread.run_sync(_demo, url, tmp_path, components)
    overflow = seen["overflow"]
    assert overflow["rows"] >= len(components), overflow
    assert all(overflow[k] <= 0 for k in ("left", "browser", "sources", "site", "page")), overflow
    assert seen["plot_moved"], f"the DAQ plot did not move ({tmp_path})"
    assert seen["scrubbed_back_s"] >= 4
    assert '"component": "daq_demo"' in seen["status"] and '"state": "running"' in seen["status"]
    assert seen["whoami"].startswith("viewer's user: "), seen["whoami"]
    assert seen["ntcp_traces"] == [seen["ntcp_path"].split("/", 1)[1]], seen
    assert re.fullmatch(r"r[w-][c-]", seen["access"].strip()), seen["access"]


def _day(url: str, out: Path) -> dict[str, Any]:
    """A plot of one channel at the 1-day time scale; what it drew and the reads it made."""
    layout = {"w": 86400, "p": [{"k": "plot", "s": "daq_day_data_source", "c": ["ch0"]}]}
    reads: list[dict[str, Any]] = []
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "response",
            lambda r: reads.append(r.json()) if "/api/channel/daq_day" in r.url else None,
        )
        page.goto(url + "#layout=" + quote(json.dumps(layout)))
        page.locator(".panel.timeseries .plot path.js-line").first.wait_for(timeout=20000)
        page.wait_for_function(  # the history: more than a live block's two extremes
            "() => document.querySelector('.panel.timeseries .plot').data[0].y.length > 2"
        )
        drawn = page.evaluate(
            """() => { const d = document.querySelector('.panel.timeseries .plot').data[0];
                       return {points: d.y.length, low: Math.min(...d.y), high: Math.max(...d.y)}; }"""
        )
        took = page.evaluate(
            """() => performance.getEntriesByType('resource')
                 .filter((e) => e.name.includes('/api/channel/daq_day'))
                 .map((e) => e.responseEnd - e.startTime)"""
        )
        page.screenshot(path=str(out / "day.png"))
        assert not errors, errors
        return {"drawn": drawn, "reads": reads, "took_ms": took}


async def test_a_day_of_a_1_khz_channel_is_drawn_from_the_block_summaries(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    broker = await start_broker(nursery)
    web = await nursery.start(serve_web, broker, "127.0.0.1", 0)
    # 1.2 M samples spread over the last day, one block every 72 s: the oldest 60 s inside
    # the day, which is the slack the page has to read it (the newest is 12 s old).
    blocks, n = 1200, 1000
    made = [struct.pack(f"<{n}d", *(((k + i) % 100) / 100 for i in range(n))) for k in range(4)]
    with trio.fail_after(90):
        async with open_client(broker) as tb:
            src = await tb.open_source("daq_day_data_source", {"ch0": FLOAT64_CONTENT_TYPE})
            now = time.time()
            for k in range(blocks):
                block = made[k % 4] if k != 600 else struct.pack(f"<{n}d", *([0.5] * 999 + [7.0]))
                await src.put("ch0", block, timestamp=now - 86400 + 60 + k * 72)
            await src.flush()
            seen = await trio.to_thread.run_sync(_day, web + "/", tmp_path)
    read = seen["reads"][0]  # (the first: the history the plot opened with)
    assert read["summarized"] and read["samples"] == blocks * n and read["blocks"] == blocks
    assert 0 < len(read["v"]) <= 2000
    drawn = seen["drawn"]  # (and maybe the newest block's extremes again, from the stream)
    assert 0 < drawn["points"] <= 2002 and (drawn["low"], drawn["high"]) == (0.0, 7.0)
    print(f"a day's read took {seen['took_ms']} ms in the page")  # (timed in benchmarks/web.py)


SEAM = "daq_seam_data_source"


def _seam(url: str, out: Path, put_while_down: Callable[[], None]) -> list[float]:
    """Open a plot, put frames while the tab's stream is down, open the stream again;
    return the values the plot then draws, in time order."""
    layout = {"w": 60, "p": [{"k": "plot", "s": SEAM, "c": ["ch0"]}]}
    drawn = "() => document.querySelector('.panel.timeseries .plot').data?.[0]?.y?.length ?? 0"
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "#layout=" + quote(json.dumps(layout)))
        page.wait_for_function(f"() => ({drawn})() === 25", timeout=20000)
        page.wait_for_function("() => state.source && state.source.readyState === 1")
        page.evaluate("() => state.source.close()")  # as when a panel opens, or the link drops
        put_while_down()
        page.evaluate("() => connect()")
        with contextlib.suppress(sync_api.TimeoutError):  # the assertion says what is missing
            page.wait_for_function(f"() => ({drawn})() === 35", timeout=15000)
        page.screenshot(path=str(out / "seam.png"), full_page=True)
        assert not errors, errors
        return [
            float(v)
            for v in page.evaluate(
                "() => { const d = document.querySelector('.panel.timeseries .plot').data[0];"
                " return d.x.map((x, i) => [+x, d.y[i]]).sort((a, b) => a[0] - b[0]).map((p) => p[1]); }"
            )
        ]


async def test_frames_put_while_the_stream_was_down_fill_the_plot(
    broker: str, web: str, tmp_path: Path
) -> None:
    t0 = time.time() - 20

    def block(i: int) -> bytes:
        return struct.pack("<5d", *(10 * i + k for k in range(5)))

    with trio.fail_after(90):
        async with open_client(broker) as tb:
            daq = await tb.open_source(SEAM, channels={"ch0": FLOAT64_CONTENT_TYPE})
            for i in range(5):
                await daq.put("ch0", block(i), t0 + 0.5 * i)
            await daq.flush()

            async def two_more() -> None:
                for i in (5, 6):
                    await daq.put("ch0", block(i), t0 + 0.5 * i)
                await daq.flush()

            values = await trio.to_thread.run_sync(
                _seam, web + "/", tmp_path, lambda: trio.from_thread.run(two_more)
            )
    assert values == [10 * i + k for i in range(7) for k in range(5)], f"see {tmp_path}"


def _values(url: str, out: Path) -> tuple[dict[str, str], list[str]]:
    """The newest values panel's rows (path: value) and every 4xx/5xx the page got."""
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        failed: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        page.goto(url + "#layout=" + quote(json.dumps({"w": 10, "p": [{"k": "values"}]})))
        page.wait_for_selector(".panel.values td.value[data-value]", timeout=20000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(out / "values.png"), full_page=True)
        assert not errors, errors
        rows = page.locator(".panel.values tbody tr").evaluate_all(
            "trs => trs.map(tr => [tr.dataset.path, tr.querySelector('td.value').textContent])"
        )
        return dict(rows), failed


async def test_a_channel_without_frames_gets_an_empty_value_row_and_no_failed_read(
    broker: str, web: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_client(broker) as tb:
            rig = await tb.open_source(
                "ntcp_rig_data_source",
                channels={"a.x.force": FLOAT64_CONTENT_TYPE, "a.y.force": FLOAT64_CONTENT_TYPE},
            )
            await rig.put("a.x.force", struct.pack("<d", 2.5))
            await rig.flush()
            rows, failed = await trio.to_thread.run_sync(_values, web + "/", tmp_path)
    assert rows == {"ntcp_rig_data_source/a.x.force": "2.5", "ntcp_rig_data_source/a.y.force": ""}
    assert failed == []
