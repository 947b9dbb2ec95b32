"""``/metrics``: checked by the real ``promtool`` and scraped by a real Prometheus on loopback."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import trio

from tests.ports import free_port
from tests.test_reconnect import Broker
from tests.web.helpers import http
from turbine import open_client
from turbine.web.serve import serve_web

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (.ci/run does)"
)


async def _some_traffic(tb, n: int = 5) -> None:  # type: ignore[no-untyped-def]
    src = await tb.open_source("daq_m_data_source", channels={"ch0": "text/plain"})
    for i in range(n):
        await src.put("ch0", b"%d" % i)
    await src.flush()


async def test_metrics_say_what_the_broker_holds(broker: str, web: str) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb:
            await _some_traffic(tb)
            r = await http(f"{web}/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    lines = text.splitlines()
    assert 'turbine_channel_frames_total{channel="ch0",source="daq_m_data_source"} 5.0' in lines
    assert 'turbine_source_online{source="daq_m_data_source"} 1.0' in lines
    assert 'turbine_source_frames_in_total{source="daq_m_data_source"} 5.0' in lines
    assert 'turbine_source_bytes_in_total{source="daq_m_data_source"} 5.0' in lines
    assert any(line.startswith('turbine_memory_bytes{kind="reserved"}') for line in lines)
    assert "turbine_clients 2.0" in lines  # the viewer and this client
    assert any(
        line.startswith("turbine_client_frames_in_total{") and line.endswith(" 5.0")
        for line in lines
    )


async def test_metrics_count_what_each_source_sent(broker: str, web: str) -> None:
    with trio.fail_after(20):
        async with open_client(broker) as tb, tb.subscribe("daq_m_data_source/*") as sub:
            await _some_traffic(tb)  # five frames of one byte, to the subscriber
            for _ in range(5):
                await sub.__anext__()
            await tb.fetch("daq_m_data_source/ch0", newest=2)  # and two in a fetch answer
            lines = (await http(f"{web}/metrics")).body.decode().splitlines()
    assert 'turbine_source_frames_out_total{source="daq_m_data_source"} 7.0' in lines
    assert 'turbine_source_bytes_out_total{source="daq_m_data_source"} 7.0' in lines


@needs_promtool
async def test_promtool_accepts_the_metrics(broker: str, web: str) -> None:
    with trio.fail_after(30):
        async with open_client(broker) as tb:
            await _some_traffic(tb)
            body = (await http(f"{web}/metrics")).body
        done = await trio.run_process(
            [PROMTOOL, "check", "metrics"],
            stdin=body,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


@needs_promtool
async def test_a_broker_with_a_data_dir_has_its_disk_in_the_metrics(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            web = await nursery.start(serve_web, address, "127.0.0.1", 0)
            async with open_client(address) as tb:
                await _some_traffic(tb)
                body = (await http(f"{web}/metrics")).body
            done = await trio.run_process(
                [PROMTOOL, "check", "metrics"], stdin=body, capture_stdout=True, check=False
            )
            nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stdout.decode()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.decode().splitlines()
        if line.startswith("turbine_disk_")
    }
    assert values["turbine_disk_bytes"] > 0 and values["turbine_disk_commits_total"] >= 1
    assert values["turbine_disk_written_bytes_total"] >= 5  # the five frames put
    assert 0 <= values["turbine_disk_last_sync_age_seconds"] < 30
    assert values["turbine_disk_syncs_total"] >= 1  # every commit syncs (the default policy)
    assert 0 < values["turbine_disk_last_sync_duration_seconds"] < 30
    assert (
        values["turbine_disk_sync_seconds_total"]
        >= values["turbine_disk_last_sync_duration_seconds"]
    )
    assert values["turbine_disk_errors_sources"] == 0


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus")
async def test_a_real_prometheus_scrapes_the_viewer(broker: str, web: str, tmp_path: Path) -> None:
    target = web.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: turbine\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    cmd = [
        str(PROMETHEUS),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with trio.fail_after(60):
        async with open_client(broker) as tb, trio.open_nursery() as nursery:
            await _some_traffic(tb, 7)
            proc = await nursery.start(
                functools.partial(
                    trio.run_process,
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            )
            query = urllib.parse.quote('turbine_channel_frames_total{source="daq_m_data_source"}')
            url = f"http://127.0.0.1:{port}/api/v1/query?query={query}"
            while True:  # until Prometheus is up and has scraped once (it scrapes every 1 s)
                try:
                    r = await http(url)
                except OSError:  # not listening yet
                    r = None
                # While it starts it answers 503 "Service Unavailable" in plain text.
                if r is not None and r.status == 200:
                    if result := json.loads(r.body)["data"]["result"]:
                        break
                await trio.sleep(0.2)
            proc.terminate()
    assert result[0]["metric"]["channel"] == "ch0"
    assert result[0]["value"][1] == "7"
