"""turbine export: a time range from memory and disk, as files in the DVD archiver's layout."""

from __future__ import annotations

import hashlib
import json
import struct
import time

import trio
from click.testing import CliRunner

from turbine import FLOAT64_CONTENT_TYPE, open_client
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.cli import main
from turbine.testing import start_broker

DAQ = "daq_exp_data_source"
CAM = "video_exp_data_source"
T0 = 1_795_000_000.0  # 2026-11-18T...Z


def block(i: int) -> bytes:
    return struct.pack("<3d", i, i + 0.5, -i)


async def fill(address: str) -> None:
    async with open_client(address, name="daq") as tb:
        daq = await tb.open_source(DAQ, {"x": FLOAT64_CONTENT_TYPE, "log": "text/plain"})
        cam = await tb.open_source(CAM, {"frame.jpg": "image/jpeg"}, cache_frames=2)
        for i in range(20):  # one a second; the camera's ring keeps 2: the rest is on disk
            await daq.put("x", block(i), T0 + i)
            await daq.put("log", f"line {i}".encode(), T0 + i)
            await cam.put("frame.jpg", b"\xff\xd8 jpeg %d" % i, T0 + i)
        await daq.flush()
        await cam.flush()


async def test_export_writes_the_range_with_a_manifest_of_checksums(tmp_path):
    with trio.fail_after(30):
        async with open_archive(tmp_path / "data") as archive, trio.open_nursery() as nursery:
            address = await start_broker(nursery, store=TieredStores(archive))
            await fill(address)
            to = tmp_path / "out"
            args = ["export", "*_exp_data_source/*", "--start", str(T0 + 5), "--duration", "10s"]
            result = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(main, [*args, "--to", str(to), "--turbine", address])
            )
            assert result.exit_code == 0, result.output
            assert result.output.startswith("exported 30 frames of 3 channels to ")
            again = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(main, [*args, "--to", str(to), "--turbine", address])
            )
            assert again.exit_code == 1 and "is not an empty directory" in again.output
            nursery.cancel_scope.cancel()
    manifest = json.loads((to / "manifest.json").read_text())
    for name, f in manifest["files"].items():  # every file listed, with its checksum
        assert hashlib.sha256((to / name).read_bytes()).hexdigest() == f["sha256"]
    files = sorted(manifest["files"])
    assert len(files) == 10 + 1 + 1  # a JPEG per frame, one CSV, one text chunk
    jpegs = [n for n in files if n.endswith(".jpg")]
    assert jpegs[0].startswith(f"{CAM}/frame.jpg/2026-") and jpegs[0].endswith("_s6.jpg")
    assert (to / jpegs[0]).read_bytes() == b"\xff\xd8 jpeg 5"  # from the disk archive
    (csv,) = [n for n in files if n.endswith(".csv")]
    rows = (to / csv).read_text().splitlines()
    assert rows[0] == "seq,timestamp,time_utc,sample,value"
    assert rows[1].startswith(f"6,{T0 + 5!r},") and rows[1].endswith(",0,5.0")
    assert len(rows) == 1 + 10 * 3  # frames 6-15, 3 samples each
    (text,) = [n for n in files if n.endswith(".jsonl")]
    lines = [json.loads(line) for line in (to / text).read_text().splitlines()]
    assert [r["text"] for r in lines] == [f"line {i}" for i in range(5, 15)]
    x = manifest["channels"][f"{DAQ}/x"]
    assert (x["frames"], x["first_seq"], x["last_seq"], x["kind"]) == (10, 6, 15, "float64")
    assert manifest["gaps"] == []
    assert (manifest["start"], manifest["duration"]) == (T0 + 5, 10.0)


async def test_export_as_raw_keeps_every_frame_as_it_was(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_broker(nursery)
            await fill(address)
            to = tmp_path / "raw"
            args = ["export", f"{DAQ}/x", "--start", str(T0), "--duration", "3", "--format", "raw"]
            result = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(main, [*args, "--to", str(to), "--turbine", address])
            )
            assert result.exit_code == 0, result.output
            nursery.cancel_scope.cancel()
    manifest = json.loads((to / "manifest.json").read_text())
    names = sorted(manifest["files"])
    assert [n.rsplit("_", 1)[1] for n in names] == ["s1.bin", "s2.bin", "s3.bin"]
    assert [(to / n).read_bytes() for n in names] == [block(0), block(1), block(2)]


async def test_an_empty_range_writes_nothing_and_a_start_can_be_a_time_ago(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_broker(nursery)
            await fill(address)
            async with open_client(address, name="now") as tb:
                src = await tb.open_source("daq_now_data_source", {"x": "text/plain"})
                await src.put("x", b"a minute ago", time.time() - 60)
                await src.flush()
            to = tmp_path / "run1"

            async def export(*args: str):
                return await trio.to_thread.run_sync(
                    lambda: CliRunner().invoke(
                        main, ["export", *args, "--to", str(to), "--turbine", address]
                    )
                )

            empty = await export(f"{DAQ}/x", "--start", str(T0 - 100), "--duration", "10")
            assert empty.exit_code == 1
            assert "no frames of daq_exp_data_source/x in that time range" in empty.output
            assert not to.exists()  # so the same --to takes the next try
            recent = await export("daq_now_data_source/x", "--start", "-2m", "--duration", "10m")
            assert recent.exit_code == 0, recent.output
            assert recent.output.startswith("exported 1 frame of 1 channel to ")
            nursery.cancel_scope.cancel()
