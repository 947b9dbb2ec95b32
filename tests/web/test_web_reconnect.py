"""The viewer outlives a broker restart: its API answers again and open tabs go on."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.test_reconnect import Broker
from tests.web.helpers import EventStream, http
from turbine import open_client
from turbine.web.serve import serve_web


async def test_the_viewer_reconnects_when_the_broker_restarts(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)  # archived, as the demo's: numbers go on
            address = await broker.start()
            web = await nursery.start(serve_web, address, "127.0.0.1", 0)
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source("daq_rig_data_source", {"x": "text/plain"})
                await src.put("x", b"before")
                await src.flush()
                tab = await EventStream.open(web, "path=daq_rig_data_source/x")
                assert (await tab.event())[0] == "ready"
                assert (await tab.event())[1]["text"] == "before"
                await broker.stop()
                await daq._down.wait()
                await broker.start()  # same port, same data dir
                await src.put("x", b"after")
                await daq.flush(timeout=20)
                while True:  # the open tab's stream resumes on the new broker
                    name, ev = await tab.event()
                    if name == "frame":
                        break
                assert ev["text"] == "after"
                r = await http(f"{web}/api/sources")
                assert r.status == 200
                assert [s["name"] for s in r.json()] == ["daq_rig_data_source"]
                await tab.stream.aclose()
            await broker.stop()
            nursery.cancel_scope.cancel()


async def test_after_a_memory_only_broker_restart_the_tabs_go_on_from_the_new_numbers(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery)  # no data dir: the new broker numbers from 1 again
            address = await broker.start()
            web = await nursery.start(serve_web, address, "127.0.0.1", 0)
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source("daq_rig_data_source", {"log.txt": "text/plain"})
                await src.put("log.txt", b"one")
                await src.flush()
                tab = await EventStream.open(web, "path=daq_rig_data_source/log.txt")
                assert (await tab.event())[0] == "ready"
                assert (await tab.event())[1]["text"] == "one"  # (subscribed: the newest first)
                for line in (b"two", b"three"):
                    await src.put("log.txt", line)
                await src.flush()
                assert [(await tab.event())[1]["seq"] for _ in range(2)] == [2, 3]
                await broker.stop()
                await daq._down.wait()
                await broker.start()
                await src.put("log.txt", b"after the restart")
                await daq.flush(timeout=20)
                seen = []
                while not seen or seen[-1][0] != "frame":
                    seen.append(await tab.event())
                # The page is told that the numbers began again (a log panel shows
                # only lines numbered above its last), then gets the new line.
                assert (
                    "renumbered",
                    {"source": "daq_rig_data_source", "channel": "log.txt"},
                ) in seen
                assert seen[-1][1]["text"] == "after the restart" and seen[-1][1]["seq"] == 1
                await tab.stream.aclose()
            await broker.stop()
            nursery.cancel_scope.cancel()
