"""A mirror catching up a backlog holds a bounded part of it, however slow its target."""

from __future__ import annotations

import contextlib
import functools
import tracemalloc
from typing import Any

import trio
import trio.testing

from turbine import open_client
from turbine.mirror import MirrorConfig, run_mirror
from turbine.testing import start_broker

SRC = "daq_rig_data_source"
FRAME = 100_000
BACKLOG = 1_000  # frames of channel x that A holds: 100 MB


class StuckTarget:
    """A target that takes channel y's puts and never returns from one of x's."""

    def __init__(self) -> None:
        self.frames = {"x": 0, "y": 0}

    async def status(self) -> dict[str, Any]:
        return {"identity": "bbbb"}

    async def open_mirror(self, name, channels, mirror, *, cache_frames=None, cache_bytes=None):
        return {channel: 1 for channel in channels}

    async def list_sources(self, pattern: str = "*") -> list[Any]:
        return []

    async def put_copy(self, source, channel, ts, data, seqs, writers, content_type=None, *, sizes):
        self.frames[channel] += len(sizes)
        if channel == "x":
            await trio.sleep_forever()

    async def flush(self) -> None:
        pass


async def test_a_target_that_takes_nothing_leaves_the_mirror_holding_a_few_mib(nursery):
    a = await start_broker(nursery, identity="aaaa", max_memory=2**28)
    with trio.fail_after(60):
        async with open_client(a, name="daq") as pa:
            src = await pa.open_source(SRC, cache_frames=2 * BACKLOG, cache_bytes=2**27)
            frame = b"\1" * FRAME
            for _ in range(BACKLOG):
                await src.put("x", frame)
            await src.put("y", b"y")
            await pa.flush()
            target = StuckTarget()

            @contextlib.asynccontextmanager
            async def stuck():
                yield target

            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                # (a long poll: after its first look the mirror waits only for A)
                config = MirrorConfig(a, "(stuck)", ("daq_*",), poll=600, retry=600)
                async with trio.open_nursery() as mirror:
                    mirror.start_soon(functools.partial(run_mirror, config, target=stuck))
                    # y's copy goes on reading the connection to A, for x's copy too,
                    # until x's deliveries fill what the mirror holds for it
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                    held = tracemalloc.get_traced_memory()[0] - before
                    mirror.cancel_scope.cancel()
            finally:
                tracemalloc.stop()
            assert target.frames["y"] == 1 and target.frames["x"] >= 1
            (info,) = await pa.list_sources(SRC)
            assert info.frames_out > 50  # A sent a good part of the backlog meanwhile
            # 4 deliveries of 1 MiB queued for x, one in hand, one being read; not 64 MiB
            assert held < 12 * 2**20, f"the mirror holds {held / 2**20:.1f} MiB"
