"""Giving memory back (turbine/_memory.py): a deleted source's rings are freed and
their pages returned a slice at a time, so that no step of the broker's loop pays
for all of it, and the broker's RSS still falls back."""

from __future__ import annotations

import array
import sys
import time
from pathlib import Path

import pytest
import trio

from turbine import _memory
from turbine.peer import Peer
from turbine.server import Broker, BrokerConfig

OWNER = Peer(1, name="owner")


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class LoopHeld(trio.abc.Instrument):
    """The CPU time of the longest task step (the loop held, whatever else runs
    on the machine: a step that waits for a CPU is not counted)."""

    def __init__(self) -> None:
        self.longest = (0.0, "")
        self._began = time.thread_time()  # added mid-step: that step counts from here

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        held = time.thread_time() - self._began
        if held > self.longest[0]:
            self.longest = (held, task.name)


@pytest.mark.skipif(_memory._libc() is None, reason="returning pages needs glibc's malloc_trim")
async def test_a_deleted_source_s_memory_goes_back_without_holding_the_loop(
    nursery, autojump_clock
):
    # Freeing a deleted ring of 1 MB frames at once held the loop ~100 ms a GiB:
    # in the delete (20 ms here, where the frames had mappings of their own) or,
    # in the broker (frames on the heap), in the trim that returns their pages,
    # whose cost is the heap's free pages: the harness's latency row, right
    # after such a delete, had its 23-38 ms max.
    broker = Broker(BrokerConfig(max_memory=1 << 30))
    nursery.start_soon(broker.trimmer)
    hub = broker.hub
    hub.open_source(OWNER, "daq_big_data_source", cache_bytes=512 << 20, cache_frames=1000)
    for i in range(256):  # written, so resident: 256 MiB of payloads
        hub.put(OWNER, "daq_big_data_source", "x", [None], [bytes([i]) * 1_000_000])
    await trio.sleep(2)  # whatever was pending is trimmed
    full = rss()
    held = LoopHeld()
    trio.lowlevel.add_instrument(held)
    try:
        # as make_room deletes an offline source: nothing but the ring tells the trimmer
        hub.delete("daq_big_data_source", OWNER)
        await trio.sleep(2)  # the trimmer's turn (the clock jumps only once it waits)
    finally:
        trio.lowlevel.remove_instrument(held)
    assert full - rss() > 200 << 20, "the deleted ring's pages went back to the system"
    assert held.longest[0] < 0.005, f"a step held the loop {held.longest}"


def test_a_buried_column_is_freed_a_slice_at_a_time_while_a_reaper_runs():
    woken: list[int] = []
    buffers = [bytes(1000) for _ in range(30)] + [None, memoryview(b"abc")]
    numbers = array.array("q", range(5000))  # 40,000 bytes
    with _memory.reaping(lambda: woken.append(1)):
        _memory.bury(numbers, buffers)
        assert woken == [1]
        left = []
        while _memory.reap(max_bytes=10_000, max_objects=4):
            left.append((len(buffers), len(numbers)))
        # the last column buried first, from its end: 4 objects a slice at most
        assert left[:3] == [(28, 5000), (24, 5000), (20, 5000)]
        # then the numbers, 10,000 bytes (1,250 of 8) a slice
        assert left[-3:] == [(0, 3750), (0, 2500), (0, 1250)]
        assert (buffers, list(numbers)) == ([], [])
        kept = [b"x"]
        _memory.bury(kept)
    assert kept == [b"x"]  # left alone once no reaper runs: freed as its last reference goes
    before = sys.getrefcount(kept)
    _memory.bury(kept)  # nobody reaps: nothing is kept
    assert sys.getrefcount(kept) == before


def test_a_buried_array_still_viewed_is_left_to_its_view():
    # An array with a view cannot shrink; the reaper (the broker's trimmer) must
    # not fail on it, and the rest is reaped.
    viewed, other = array.array("q", range(1000)), array.array("q", range(1000))
    view = memoryview(viewed)
    with _memory.reaping(lambda: None):
        _memory.bury(other, viewed)
        while _memory.reap(max_bytes=800):
            pass
    assert (len(viewed), len(other), view[999]) == (1000, 0, 999)
