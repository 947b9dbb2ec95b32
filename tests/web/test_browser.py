"""The page in a real headless Chromium (Debian's), driven by Playwright, against a real DAQ."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import trio
from PIL import Image

from components.daq.component import Daq
from turbine import open_client

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


def _look(url: str, out: Path) -> tuple[list[str], bytes, bytes, bytes]:
    """Open the page; return the source names listed and two plot screenshots plus an image one."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector('#sources tr[data-source="daq_web_data_source"]', timeout=20000)
            names = page.locator("#sources td.name").all_inner_texts()
            plot = page.locator(".panel.timeseries .plot").first
            plot.locator("path.js-line").first.wait_for(timeout=20000)
            page.wait_for_timeout(1000)
            first = plot.screenshot(path=str(out / "plot-1.png"))
            page.wait_for_timeout(1500)
            second = plot.screenshot(path=str(out / "plot-2.png"))
            image = page.locator(".panel.image img").first
            image.wait_for(timeout=20000)
            page.wait_for_function(
                "() => { const i = document.querySelector('.panel.image img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=20000,
            )
            shot = image.screenshot(path=str(out / "image.png"))
            page.screenshot(path=str(out / "page.png"), full_page=True)
            assert not errors, errors
            return names, first, second, shot
        finally:
            browser.close()


async def test_the_page_lists_sources_and_plots_live_daq_data(
    broker: str, web: str, tmp_path: Path
) -> None:
    buf = io.BytesIO()  # a real JPEG for the thumbnail panel
    Image.new("RGB", (160, 120), (200, 40, 40)).save(buf, "JPEG")
    with trio.fail_after(90):
        async with open_client(broker) as tb, trio.open_nursery() as nursery:
            cam = await tb.open_source(
                "thumbnail_cam_data_source", channels={"thumbnail.jpg": "image/jpeg"}
            )
            await cam.put("thumbnail.jpg", buf.getvalue())
            await cam.flush()
            daq = Daq("web", broker, {"channels": "2", "rate": "200", "block_seconds": "0.05"})
            await nursery.start(daq.serve)
            names, first, second, shot = await trio.to_thread.run_sync(_look, web + "/", tmp_path)
            nursery.cancel_scope.cancel()
    assert "daq_web_data_source" in names and "thumbnail_cam_data_source" in names
    assert first != second, f"the DAQ plot did not move (screenshots in {tmp_path})"
    r, g, b = Image.open(io.BytesIO(shot)).convert("RGB").getpixel((80, 60))
    assert r > 150 and g < 90 and b < 90, "the thumbnail panel does not show the red thumbnail"
