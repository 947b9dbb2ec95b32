"""User-space cost of receiving messages: the protocol's buffer handling alone.

Feeds a byte stream of put messages through ``turbine.protocol.Connection``
the way the broker's and client's read loops do (``get_buffer``, a copy
standing in for ``recv_into`` of at most what a socket holds, ``next_event``)
and prints microseconds per message.  No sockets, no scheduler: a repeatable
measure of copies and allocations on the receive path.

Run: ``.venv/bin/python benchmarks/receive.py``
"""

from __future__ import annotations

import time

from turbine.protocol import NEED_DATA, Connection, Role, State, encode_bytes

#: What one socket read returns at most (the loopback socket buffer).
SOCKET_READ = 212_992


def per_message(size: int, total_bytes: int = 20_000_000, repeats: int = 3) -> tuple[float, float]:
    n = max(total_bytes // size, 200)
    msg = encode_bytes(
        "put", {"source": "s", "channel": "c", "ts": [None], "sizes": [size]}, [b"x" * size]
    )
    stream = memoryview(msg * n)
    best = float("inf")
    for _ in range(repeats):
        conn = Connection(Role.BROKER)
        conn.state = State.OPEN  # skip the handshake: only the framing is measured
        pos = got = 0
        t0 = time.perf_counter()
        while pos < len(stream):
            with conn.get_buffer() as view:
                k = min(len(view), SOCKET_READ, len(stream) - pos)
                view[:k] = stream[pos : pos + k]
            conn.buffer_updated(k)
            pos += k
            while conn.next_event() is not NEED_DATA:
                got += 1
        best = min(best, time.perf_counter() - t0)
        assert got == n
    return best / n * 1e6, len(stream) / best / 1e9


def main() -> None:
    print(f"{'payload':>10}  {'us/message':>10}  {'GB/s':>6}")
    for size in (64, 6_400, 100_000, 1_000_000):
        us, rate = per_message(size)
        print(f"{size:>10}  {us:>10.2f}  {rate:>6.2f}")


if __name__ == "__main__":
    main()
