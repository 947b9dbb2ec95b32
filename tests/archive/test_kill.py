"""kill -9 of a real writer process at random moments: every acknowledged frame survives, byte for byte."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import trio

from turbine.archive import open_archive

from .writer_process import CHANNEL, SOURCE, check_history

WRITER = os.path.join(os.path.dirname(__file__), "writer_process.py")


def run_and_kill(root: str, seed: int, acks: int) -> tuple[int, int]:
    """Start the writer, kill -9 it once it has acknowledged ``acks`` flushes (it is
    writing the next ones then); return (its first seq, the last seq acknowledged)."""
    proc = subprocess.Popen(
        [sys.executable, WRITER, root, str(seed)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", f"writer did not start: {ready}"
        first = int(ready[1])
        acked = first - 1
        for _ in range(acks):
            line = proc.stdout.readline()
            assert line.startswith("ACK "), f"writer said {line!r}"
            acked = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for line in proc.stdout.read().splitlines():  # acknowledged before the kill landed
            if line.startswith("ACK "):
                acked = int(line.split()[1])
        return first, acked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


async def all_frames(root: str) -> list[tuple[int, bytes]]:
    async with open_archive(root) as archive:
        out = []
        seq = 1
        while True:
            runs = await archive.read(SOURCE, CHANNEL, seq, 5000)
            if not runs:
                return out
            for r in runs:
                assert r.missed == 0, f"numbers missing before {r.first_seq}"
                out += [(r.first_seq + i, bytes(d)) for i, d in enumerate(r.data)]
                seq = r.first_seq + len(r.ts)


@pytest.mark.slow
async def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path):
    root = str(tmp_path / "data")
    rng = random.Random(11)
    next_first = 1
    with trio.fail_after(120):
        for round_ in range(8):
            first, acked = await trio.to_thread.run_sync(
                run_and_kill, root, round_, rng.randint(1, 150)
            )
            assert first >= next_first  # numbers continue after a restart
            next_first = check_history(await all_frames(root), acked) + 1
    assert next_first > 1
