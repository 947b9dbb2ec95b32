"""A real ``turbine serve --data-dir`` restarted on the same data dir: every archived source
is back (offline) at once, as ``turbine ls`` shows it, and its numbers continue."""

from __future__ import annotations

import json

import pytest
import trio

from turbine import open_client

from .test_serve_kill import TURBINE, serving

SRC = "daq_restarted_data_source"
TYPES = {"x": "application/x-float64-le", "frames.dat": "image/x-gray8"}


async def turbine_ls(address: str) -> list[dict]:
    done = await trio.run_process(
        [TURBINE, "ls", "--json", "--turbine", address], capture_stdout=True, capture_stderr=True
    )
    return json.loads(done.stdout)


async def stop(proc: trio.Process) -> None:
    proc.terminate()
    await proc.wait()


@pytest.mark.slow
async def test_archived_sources_come_back_offline_and_continue_their_numbers(tmp_path):
    root = str(tmp_path / "data")
    with trio.fail_after(60):
        async with serving(root) as (proc, address):
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, TYPES, cache_frames=3)
                for s in range(1, 8):
                    await src.put("x", b"%8d" % s, float(s))
                await src.put("frames.dat", b"\x00" * 16, 1.0)
                await src.set_metadata({"rate": 10, "units": {"x": "V"}})  # flushes
            await stop(proc)
        for round_ in range(2):  # and again after the numbers moved on
            async with serving(root) as (proc, address):
                (info,) = await turbine_ls(address)  # before anyone reopens the source
                assert (info["name"], info["online"]) == (SRC, False)
                channels = {c["name"]: c for c in info["channels"]}
                assert {n: c["content_type"] for n, c in channels.items()} == {
                    **TYPES,
                    "metadata.txt": "application/json",
                }
                assert channels["x"]["next_seq"] == 8 + round_
                assert channels["frames.dat"]["next_seq"] == 2
                assert info["metadata"] == {"rate": 10, "units": {"x": "V"}}
                listing = await trio.run_process(
                    [TURBINE, "ls", "--turbine", address], capture_stdout=True
                )
                assert f"next #{8 + round_}" in listing.stdout.decode()
                assert info["cache_frames"] == 3  # its settings came back
                assert channels["x"]["frames"] == 0  # memory holds none of x, the disk all
                disk = channels["x"]["disk"]
                assert (disk["frames"], disk["first_seq"], disk["last_seq"]) == (
                    7 + round_,
                    1,
                    7 + round_,
                )
                assert disk["bytes"] >= 8 * (7 + round_)
                assert (disk["first_time"], disk["last_time"]) == (
                    0.0 if round_ else 1.0,
                    7.0,
                )  # min, max
                on_disk = [
                    line for line in listing.stdout.decode().splitlines() if "on disk" in line
                ]
                assert len(on_disk) == 3 and f"#1-{7 + round_}" in on_disk[0]
                status = await trio.run_process(
                    [TURBINE, "status", "--json", "--turbine", address], capture_stdout=True
                )
                st = json.loads(status.stdout)["disk"]
                assert st["bytes"] > 0 and st["damage"] == {} and st["errors"] == {}
                assert st["path"] == root and st["reserved"] == 2**30  # --archive-bytes default
                status = await trio.run_process(
                    [TURBINE, "status", "--turbine", address], capture_stdout=True
                )
                assert f"reserved in {root} (" in status.stdout.decode()
                assert " free); writing" in status.stdout.decode()
                async with open_client(address, name="daq") as client:
                    src = await client.open_source(SRC, TYPES)
                    await src.put("x", b"%8d" % (8 + round_), 0.0)
                    await src.flush()
                    got = await client.fetch(f"{SRC}/x", oldest=100)  # from disk
                    assert [f.seq for f in got] == list(range(1, 9 + round_))
                    assert [f.data for f in got] == [b"%8d" % s for s in range(1, 9 + round_)]
                await stop(proc)


@pytest.mark.slow
async def test_rm_deletes_the_archive_so_the_source_stays_gone_after_a_restart(tmp_path):
    root = str(tmp_path / "data")
    with trio.fail_after(60):
        async with serving(root) as (proc, address):
            async with open_client(address, name="turbine") as client:
                src = await client.open_source(SRC, TYPES, cache_frames=2)
                for s in range(1, 50):
                    await src.put("x", b"%1000d" % s, float(s))
                await src.flush()
                await src.close()
            done = await trio.run_process(
                [TURBINE, "rm", SRC, "--turbine", address], capture_stdout=True
            )
            said = done.stdout.decode()
            assert said.startswith(f"deleted {SRC} (freed ") and "KiB" in said, said
            await stop(proc)
        async with serving(root) as (proc, address):
            assert await turbine_ls(address) == []
            async with open_client(address, name="daq") as client:
                src = await client.open_source(SRC, TYPES)
                await src.put("x", b"new", 0.0)
                await src.flush()
                got = await client.fetch(f"{SRC}/x", oldest=100)
                assert [f.data for f in got] == [b"new"]  # none of the deleted frames is back
            await stop(proc)
