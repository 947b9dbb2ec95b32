"""A writer to kill: puts frames into an archive as fast as it can, printing each acknowledged number.

Run as ``python writer_process.py DATA_DIR SEED``.  Frame ``n`` has a size and
bytes that depend on ``n`` alone (:func:`expected`), so a checker knows every
byte of every frame without being told.  ``ACK n`` is printed once a flush
covering frames up to ``n`` has returned.
"""

from __future__ import annotations

import random
import sys

import trio

from turbine.archive import Declare, Put, open_archive

SOURCE = "daq_killed_data_source"
CHANNEL = "x"


def expected(seq: int) -> bytes:
    size = (seq * 7919) % 3_000 + 1
    return (seq.to_bytes(8, "little") * (size // 8 + 1))[:size]


def check_history(frames: list[tuple[int, bytes]], acked: int) -> int:
    """Assert that ``(seq, data)`` pairs are frames 1..n, each once, byte for byte, with
    n at least ``acked``; return n."""
    seqs = [s for s, _ in frames]
    assert seqs == list(range(1, len(seqs) + 1)), "each frame once, in order, no gap"
    assert len(seqs) >= acked, f"acknowledged {acked}, found {len(seqs)}"
    for s, data in frames:
        assert data == expected(s), f"frame {s} differs"
    return len(seqs)


async def main(root: str, seed: int) -> None:
    rng = random.Random(seed)
    async with open_archive(root) as archive:
        log = archive.logs.get(SOURCE)
        if log is None:
            archive.create_source(SOURCE, {"archive_bytes": 2**40})  # nothing evicted
            archive.append(SOURCE, Declare(CHANNEL, "application/octet-stream", 1))
            seq = 1
        else:
            seq = log.channels[CHANNEL].next_seq
        print("READY", seq, flush=True)
        while True:
            for _ in range(rng.randint(1, 8)):
                n = rng.randint(1, 40)
                data = [expected(s) for s in range(seq, seq + n)]
                ts = [float(s) for s in range(seq, seq + n)]
                archive.append(SOURCE, Put(CHANNEL, seq, ts, [len(d) for d in data], data, "w"))
                seq += n
            await archive.flush()
            print("ACK", seq - 1, flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
