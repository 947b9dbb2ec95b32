"""What one frame of the latency row costs each process, in load-independent counts.

The shared harness's latency row (1,000 B frames at 1,000 frames/s, one
publisher, one subscriber) in three processes of our own, each counting over
the same window of frames: trio task steps and waits for I/O (the scheduler
passes a frame causes), voluntary context switches (the process slept and the
kernel woke it), CPU microseconds, and with ``--calls`` Python and builtin
calls (``sys.setprofile``: slow, so its latency figures mean nothing).  The
publisher makes the adapter's calls (``flush`` and ``trio.sleep`` before each
``put``); the subscriber iterates its subscription as the adapter does.  On two
shared cores the latency figures swing with the load; the counts do not.

Run: ``.venv/bin/python benchmarks/wakeups.py [--frames 3000] [--calls]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import resource
import struct
import sys
import time
from typing import Any

import trio

import turbine
from turbine.server import BrokerConfig, serve_turbine

HEADER = struct.Struct("<qq")  # sequence number, publisher's time.monotonic_ns()
SIZE = 1000
WARMUP = 300
SOURCE, CHANNEL = "daq_probe_data_source", "x"


class Counts(trio.abc.Instrument):
    """Task steps and I/O waits of one trio run, and Python calls when asked; the
    time of the last return from a wait for I/O (:attr:`woke`, ``monotonic_ns``)."""

    def __init__(self, calls: bool) -> None:
        self.steps = 0
        self.io_waits = 0
        self.woke = 0
        #: Nanoseconds from a mark to a point of the frame's path, one per round,
        #: and the Python calls made in between (with ``calls``).
        self.spans: list[int] = []
        self.path_calls: list[int] = []
        self._mark_calls = 0
        self.py_calls = 0
        self.c_calls = 0
        self.by_function: dict[str, int] = {}
        #: The calls between a :meth:`mark` and the :meth:`end_path` after it, by function.
        self.on_path_functions: dict[str, int] = {}
        self.on_path = False
        if calls:
            sys.setprofile(self._profile)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1

    def after_io_wait(self, timeout: float) -> None:
        self.mark()

    def mark(self) -> int:
        """The frame's path begins (a wake-up, a time stamp)."""
        self._mark_calls = self.py_calls
        self.on_path = True
        self.woke = time.monotonic_ns()
        return self.woke

    def end_path(self, since: int) -> None:
        """The frame's path, begun at ``since`` (a :meth:`mark`), ends here."""
        self.spans.append(time.monotonic_ns() - since)
        self.path_calls.append(self.py_calls - self._mark_calls)
        self.on_path = False

    def time_writes(self, module: Any, since: Any) -> None:
        """Note how long after ``since()`` each first write of a round (by
        ``module.write_now``) ended; ``since()`` gives 0 when none is timed."""
        write_now = module.write_now

        def timed(fd: int, buffers: list[Any]) -> Any:
            result = write_now(fd, buffers)
            if t := since():
                self.end_path(t)
            return result

        module.write_now = timed

    def median_span_us(self) -> float:
        return _median(self.spans) / 1e3

    def median_path_calls(self) -> float:
        return _median(self.path_calls)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if (
                code.co_filename.endswith(_NOT_COUNTED)
                or code.co_qualname == "UserDict.__contains__"
            ):
                return  # this instrument's own calls (trio asks a UserDict for its hooks)
            self.py_calls += 1
            key = f"{code.co_filename.rpartition('/')[2]}:{code.co_qualname}"
            self.by_function[key] = self.by_function.get(key, 0) + 1
            if self.on_path:
                self.on_path_functions[key] = self.on_path_functions.get(key, 0) + 1
        elif event == "c_call":
            self.c_calls += 1

    def snapshot(self) -> dict[str, Any]:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "functions": dict(self.by_function),
            "path functions": dict(self.on_path_functions),
            "task steps": self.steps,
            "I/O waits": self.io_waits,
            "sleeps (nvcsw)": use.ru_nvcsw,
            "preempted (nivcsw)": use.ru_nivcsw,
            "CPU us": (use.ru_utime + use.ru_stime) * 1e6,
            "Python calls": self.py_calls,
            "builtin calls": self.c_calls,
        }


#: The files of this instrument's own calls (and of trio's calls of it).
_NOT_COUNTED = ("wakeups.py", "_instrumentation.py")


def _median(values: list[int]) -> float:
    kept = sorted(values[len(values) // 10 :])  # (the warm-up's left out)
    return kept[len(kept) // 2] if kept else float("nan")


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    counted = ("functions", "path functions")
    calls = {c: {k: n - a[c].get(k, 0) for k, n in b[c].items()} for c in counted}
    return {**calls, **{k: b[k] - a[k] for k in a if k not in counted}}


async def _word(conn: multiprocessing.connection.Connection) -> Any:
    return await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)


def broker_main(conn: multiprocessing.connection.Connection, calls: bool) -> None:
    import turbine.sender

    counts = Counts(calls)

    def since_wake() -> int:
        woke, counts.woke = counts.woke, 0  # the first write after a wake: the frame's
        return woke

    counts.time_writes(turbine.sender, since_wake)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve_turbine, BrokerConfig(host="127.0.0.1", port=0))
            host, port = addresses[0]
            conn.send(f"{host}:{port}")
            await _word(conn)  # the window begins
            first = counts.snapshot()
            await _word(conn)  # it ends
            conn.send(
                {
                    **_delta(first, counts.snapshot()),
                    "span": counts.median_span_us(),
                    "path calls": counts.median_path_calls(),
                }
            )
            await _word(conn)  # the clients are done
            nursery.cancel_scope.cancel()

    trio.run(main, instruments=[counts])


def publisher_main(
    conn: multiprocessing.connection.Connection,
    address: str,
    frames: int,
    rate: float,
    size: int,
    calls: bool,
) -> None:
    import turbine._io

    counts = Counts(calls)
    stamp = [0]

    def since_stamp() -> int:
        t, stamp[0] = stamp[0], 0
        return t

    counts.time_writes(turbine._io, since_stamp)

    async def main() -> None:
        pad = bytes(size - HEADER.size)
        async with turbine.open_client(address) as tb:
            src = await tb.open_source(SOURCE, channels={CHANNEL: "application/octet-stream"})
            conn.send("ready")
            await _word(conn)
            put, pack, now = src.put, HEADER.pack, time.monotonic_ns
            start = time.monotonic()
            first: dict[str, float] = {}
            late = 0
            for seq in range(WARMUP + frames + 1):
                if seq == WARMUP:
                    conn.send("window")
                    first = counts.snapshot()
                d = start + seq / rate - time.monotonic()
                if d > 0:  # the adapter's pacing
                    await src.flush()
                    await trio.sleep(d)
                elif seq > WARMUP:
                    late += 1  # put right after the last: two frames share a round
                stamp[0] = t = counts.mark()
                await put(CHANNEL, pack(seq, t) + pad)
            await src.flush()
            span = counts.median_span_us()
            conn.send(
                {
                    **_delta(first, counts.snapshot()),
                    "late": late,
                    "span": span,
                    "path calls": counts.median_path_calls(),
                }
            )
            await put(CHANNEL, pack(-1, now()) + pad)
            await src.flush()

    trio.run(main, instruments=[counts])


def subscriber_main(conn: multiprocessing.connection.Connection, address: str, calls: bool) -> None:
    counts = Counts(calls)

    async def main() -> None:
        lat: list[int] = []
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        unpack, now, Frame = HEADER.unpack_from, time.monotonic_ns, turbine.Frame
        async with turbine.open_client(address) as tb:
            async with tb.subscribe(f"{SOURCE}/{CHANNEL}", start="now") as sub:
                conn.send("ready")
                done = False
                while not done:
                    with trio.move_on_after(0.2):
                        async for item in sub:
                            if type(item) is not Frame:
                                continue
                            seq, sent = unpack(item.data)
                            if seq < 0:
                                done = True
                                break
                            if seq == WARMUP:
                                first = counts.snapshot()
                            elif seq > WARMUP:
                                t = now()
                                lat.append(t - sent)
                                if counts.woke:
                                    counts.end_path(counts.woke)
                                    counts.woke = 0
                                last = counts.snapshot()
        lat.sort()
        conn.send(
            {
                "counts": {
                    **_delta(first, last),
                    "span": counts.median_span_us(),
                    "path calls": counts.median_path_calls(),
                },
                "frames": len(lat),
                "p50": lat[len(lat) // 2] / 1e6,
                "p99": lat[int(len(lat) * 0.99)] / 1e6,
            }
        )

    trio.run(main, instruments=[counts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000, help="frames counted (after a warm-up)")
    ap.add_argument(
        "--rate",
        type=float,
        default=250.0,
        help="frames per second (the row's 1,000 lets a late publisher put two frames a round "
        "on a busy machine, which changes the counts per frame)",
    )
    ap.add_argument("--size", type=int, default=SIZE, help="bytes a frame (at least 16)")
    ap.add_argument(
        "--per-frame",
        action="store_true",
        help="divide by frames, not rounds (for a rate the publisher cannot keep: the "
        "small-frame rows' shape, --rate 1e9 --size 64)",
    )
    ap.add_argument(
        "--calls",
        type=int,
        default=0,
        metavar="N",
        help="count Python calls too (slow), and list each process's N most called functions",
    )
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    b_end, b_child = ctx.Pipe()
    broker = ctx.Process(target=broker_main, args=(b_child, args.calls))
    broker.start()
    address = b_end.recv()
    s_end, s_child = ctx.Pipe()
    sub = ctx.Process(target=subscriber_main, args=(s_child, address, args.calls))
    sub.start()
    assert s_end.recv() == "ready"
    p_end, p_child = ctx.Pipe()
    pub = ctx.Process(
        target=publisher_main,
        args=(p_child, address, args.frames, args.rate, args.size, args.calls),
    )
    pub.start()
    assert p_end.recv() == "ready"
    p_end.send("go")
    assert p_end.recv() == "window"
    b_end.send("begin")
    pub_counts = p_end.recv()
    b_end.send("end")
    broker_counts = b_end.recv()
    sub_result = s_end.recv()
    b_end.send("stop")
    for p in (pub, sub):
        p.join(10)
    broker.join(10)
    n = sub_result["frames"]
    rows = {"publisher": pub_counts, "broker": broker_counts, "subscriber": sub_result["counts"]}
    late = pub_counts.pop("late")
    spans = {role: c.pop("span") for role, c in rows.items()}
    functions = {role: c.pop("functions") for role, c in rows.items()}
    on_path = {role: c.pop("path functions") for role, c in rows.items()}
    path_calls = {role: c.pop("path calls") for role, c in rows.items()}
    rounds = n if args.per_frame else n - late
    keys = list(pub_counts)
    if not args.calls:
        keys = [k for k in keys if not k.endswith("calls")]
    print(
        f"{n} frames at {args.rate:g}/s in {rounds} rounds ({late} put late, with the frame "
        f"before); p50 {sub_result['p50']:.3f} ms, p99 {sub_result['p99']:.3f} ms"
    )
    extra = " path calls |" if args.calls else ""
    unit = "frame" if args.per_frame else "round"
    print(f"| per {unit} | {' | '.join(keys)} | path us (median) |{extra}")
    print(f"|---|{'---|' * (len(keys) + 1 + bool(extra))}")
    for role, c in rows.items():
        cells = " | ".join(f"{c[k] / rounds:.2f}" for k in keys)
        more = f" {path_calls[role]:.0f} |" if args.calls else ""
        print(f"| {role} | {cells} | {spans[role]:.0f} |{more}")
    print(
        "path: publisher, from the frame's time stamp to the end of its write; broker, "
        "from its wake-up to the end of its first write (the frame's); subscriber, from "
        "its wake-up to the frame in hand"
    )
    for role, calls in functions.items() if args.calls else ():
        top = sorted(calls.items(), key=lambda kv: -kv[1])[: args.calls]
        print(f"\n{role}: Python calls per round, the most called")
        for name, count in top:
            print(f"{count / rounds:8.2f}  {name}")
        top = sorted(on_path[role].items(), key=lambda kv: -kv[1])[: args.calls]
        print(f"\n{role}: Python calls per round on the frame's path, the most called")
        for name, count in top:
            print(f"{count / rounds:8.2f}  {name}")


if __name__ == "__main__":
    main()
