"""A mirror across a real network boundary: A and B in two network namespaces
joined by a veth pair (``tests/netns.py``), and the link cut for 10 s: once
shaped to 1 Mbit/s with ``tc``, once delayed 20 ms +- 5 ms and 1 % lossy each
way, by ``tc netem`` where the kernel has it and by ``tests/link_emulator.py``
where it has not (the test's name says which).

Needs root (``ip netns``); skipped with the reason where that is not allowed.
The brokers, the mirror and the clients are processes inside the namespaces.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest

from tests.netns import Emulator, Link, emulate, probe
from tests.test_cli import TURBINE, read_line

pytestmark = pytest.mark.slow

SRC = "daq_rig_data_source"
PORT = 3333  # each namespace has its own ports


def serve(link: Link, ns: str, host: str) -> None:
    proc = link.start(ns, TURBINE, "serve", "--host", host, "--port", str(PORT), "--insecure")
    line = read_line(proc.stdout)
    assert line.startswith(f"turbine listening on {host}:{PORT}"), line


CLIENT = textwrap.dedent(
    """
    import json, sys, trio
    from turbine import open_client

    async def main(address, what, first, last):
        with trio.fail_after(60):
            async with open_client(address, name="daq") as tb:
                if what == "put":
                    src = await tb.open_source("{src}", cache_frames=100000)
                    for i in range(first, last + 1):
                        await src.put("x", b"frame %d" % i, timestamp=float(i))
                    await tb.flush()
                    print(json.dumps([]))
                    return
                got = []
                async with tb.subscribe("{src}/x", start=first) as sub:
                    while len(got) < last - first + 1:
                        for item in await sub.receive_batch():
                            seq = getattr(item, "seq", None)
                            got.append([seq, bytes(item.data).decode() if seq else repr(item)])
                print(json.dumps(got))

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    """
).replace("{src}", SRC)


def client(link: Link, tmp_path: Path, ns: str, address: str, what: str, first: int, last: int):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = link.check(ns, sys.executable, str(script), address, what, str(first), str(last))
    return json.loads(out)


def frames(first: int, last: int) -> list[list[object]]:
    return [[i, f"frame {i}"] for i in range(first, last + 1)]


def start_mirror(link: Link, push: bool = False, inside: bool = False) -> subprocess.Popen[str]:
    """The mirror beside B (pull), across the link from A; or beside A (``push``),
    across the link from B; ``inside``: B (A when pushing) copies itself, asked by the mirror."""
    near, far = "127.0.0.1", link.addr_b if push else link.addr_a
    origin, target = (near, far) if push else (far, near)
    return link.start(
        link.a if push else link.b,
        TURBINE,
        "mirror",
        "--from",
        f"{origin}:{PORT}",
        "--to",
        f"{target}:{PORT}",
        "--poll",
        "0.1",
        "daq_*",
        *(["--inside", "from" if push else "to"] if inside else []),
    )


STEADY = textwrap.dedent(
    """
    import json, sys, time, trio
    from turbine import open_client

    PAD = b"." * 100

    async def line():
        return await trio.to_thread.run_sync(sys.stdin.readline)

    async def produce(tb, rate):
        # rate / 100 frames each 10 ms, each stamped with the time of its put,
        # until stdin ends
        src = await tb.open_source("{src}", cache_frames=1_000_000)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            async def until_told():
                await line()
                stop.set()
            nursery.start_soon(until_told)
            print("producing", flush=True)
            start, tick, n = trio.current_time(), 0, 0
            while not stop.is_set():
                await trio.sleep_until(start + tick / 100)
                tick += 1
                for _ in range(rate // 100):
                    n += 1
                    await src.put("x", b"frame %d " % n + PAD, timestamp=time.time())
        await tb.flush()
        print(n, flush=True)

    async def watch(tb):
        # every frame with its lag; stdin says when the link was mended (say
        # "caught up" once a frame put after it is here) and then how many
        got = []  # [seq, put at, lag]; [None, what] for anything but the frame expected
        told = {}

        async def orders(cancel_scope):
            told["mended"] = float(await line())
            told["want"] = int(await line())
            if len(got) >= told["want"]:
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(orders, nursery.cancel_scope)
            async with tb.subscribe("{src}/x", start=1) as sub:
                print("watching", flush=True)
                while len(got) < told.get("want", float("inf")):
                    batch = await sub.receive_batch()
                    now = time.time()
                    for item in batch:
                        seq = getattr(item, "seq", None)
                        if seq is None or bytes(item.data) != b"frame %d " % seq + PAD:
                            got.append([None, repr(item)])
                        else:
                            got.append([seq, item.timestamp, now - item.timestamp])
                    last = got[-1]
                    if "mended" in told and "caught" not in told and last[0]:
                        if last[1] >= told["mended"]:
                            told["caught"] = now
                            print("caught up", now, flush=True)
            nursery.cancel_scope.cancel()
        print(json.dumps(got), flush=True)

    async def main(address, what):
        with trio.fail_after(120):
            reconnect = "--reconnect" in sys.argv  # rides through a lost connection
            async with open_client(address, name="daq", reconnect=reconnect) as tb:
                await (produce(tb, int(sys.argv[3])) if what == "produce" else watch(tb))

    trio.run(main, sys.argv[1], sys.argv[2])
    """
).replace("{src}", SRC)

RATE = 200  # frames/s, steady, each ~110 B: a backlog TCP at 1 % loss clears fast
BEFORE_CUT, CUT, AFTER_CAUGHT_UP = 3, 10, 2  # seconds
#: B has a frame put after the mend this soon after it.  The mirror's client
#: gives its silent connection to A up a few seconds into the cut
#: (turbine/_liveness.py) and tries a fresh connect at least every second and a
#: half; TCP alone resends on a doubling schedule, 6-7 s after the mend here.
CATCH_UP_S = 4.0


@attrs.define
class Lossy:
    """The link with 20 ms +- 5 ms each way and 1 % loss each way, by what
    this machine has, and how to cut it (with the emulator packets vanish
    silently; with netem the veth goes down)."""

    link: Link
    emulator: Emulator | None

    NETEM = ("netem", "delay", "20ms", "5ms", "loss", "1%")

    @classmethod
    def shape(cls, link: Link) -> Lossy:
        if probe().netem_missing is None:
            shaped = link.shape(*cls.NETEM)
            assert shaped.returncode == 0, shaped.stderr
            return cls(link, None)
        return cls(link, emulate(link, "--delay", "0.02", "--jitter", "0.005", "--loss", "0.01"))

    def cut(self, b_first: bool = False) -> None:
        """``b_first``: B's packets stop 0.3 s before A's, so that what B sent
        last waits through the cut unacknowledged: B's TCP resends it on its
        back-off schedule (instead of probing), and B's end of the connection
        outlives the mend by seconds, as after a cut in the middle of replies."""
        if b_first:
            if self.emulator:
                self.emulator.ask("cut b_to_a")
            else:
                self.link.check(
                    self.link.b, "tc", "qdisc", "replace", "dev", self.link.dev_b, "root",
                    "netem", "loss", "100%",
                )  # fmt: skip
            time.sleep(0.3)
        if self.emulator:
            self.emulator.cut()
        else:
            self.link.cut(up=False)

    def mend(self) -> None:
        if self.emulator:
            self.emulator.mend()
        else:
            self.link.cut(up=True)
            self.link.shape(*self.NETEM)


def lags(sorted_lags: list[float]) -> str:
    p99 = sorted_lags[len(sorted_lags) * 99 // 100]
    return f"{statistics.median(sorted_lags):.3f} / {p99:.3f} / {sorted_lags[-1]:.3f} s"


def tell(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


class Steady:
    """The STEADY script's watcher (in ``watch_ns``, on its broker there) and a
    producer at RATE (in ``produce_ns``, to ``address``), through a link cut for
    CUT s: :meth:`cut` returns when the watcher has every frame put before the
    mend, :meth:`frames` stops both and checks each frame came once, in order."""

    def __init__(
        self,
        link: Link,
        tmp_path: Path,
        watch_ns: str,
        produce_ns: str,
        address: str,
        *produce: str,
    ) -> None:
        script = tmp_path / "steady.py"
        script.write_text(STEADY)
        self.watcher = link.start(
            watch_ns, sys.executable, str(script), f"127.0.0.1:{PORT}", "watch", stdin=True
        )
        assert read_line(self.watcher.stdout, 30) == "watching\n"
        self.producer = link.start(
            produce_ns,
            sys.executable,
            str(script),
            address,
            "produce",
            str(RATE),
            *produce,
            stdin=True,
        )
        assert read_line(self.producer.stdout, 30) == "producing\n"
        self.started = time.time()

    def cut(self, path: Lossy, b_first: bool = False) -> tuple[float, float, float]:
        """Cut the link for CUT s (real time: a steady producer; ``b_first``: see
        :meth:`Lossy.cut`); return when it was cut, mended, and when the watcher
        had every frame put before the mend."""
        time.sleep(BEFORE_CUT)
        path.cut(b_first)
        cut = time.time()
        time.sleep(CUT)
        path.mend()
        mended = time.time()
        tell(self.watcher, repr(mended))
        line = read_line(self.watcher.stdout, 30)
        assert line.startswith("caught up"), line
        return cut, mended, float(line.split()[-1])

    def frames(self) -> tuple[list[list[float]], str]:
        """Stop both after AFTER_CAUGHT_UP s: every frame the watcher saw as
        [seq, put time, lag], checked to be each put once, in order, numbered
        from 1; and what the producer said on stderr."""
        time.sleep(AFTER_CAUGHT_UP)
        out, err = self.producer.communicate("stop\n", timeout=30)
        assert self.producer.returncode == 0, err
        count = int(out)
        out, watched = self.watcher.communicate(f"{count}\n", timeout=60)
        assert self.watcher.returncode == 0, watched
        got = json.loads(out)
        assert [row[0] for row in got] == list(range(1, count + 1))
        return got, err


INSIDE = pytest.mark.parametrize("inside", [False, True], ids=["process", "inside B"])


@INSIDE
@pytest.mark.parametrize("shaper", [probe().shaper])
def test_over_a_delayed_lossy_link_the_mirror_keeps_up_and_recovers_after_a_10_s_cut(
    link, tmp_path, shaper, inside
):
    """``shaper`` (in the test's name) says what delays and drops the packets here."""
    if probe().why_no_shaper:
        pytest.skip(probe().why_no_shaper)
    path = Lossy.shape(link)
    serve(link, link.a, "0.0.0.0")
    serve(link, link.b, "127.0.0.1")
    mirror = start_mirror(link, inside=inside)
    steady = Steady(link, tmp_path, link.b, link.a, f"127.0.0.1:{PORT}")
    cut, mended, caught_up = steady.cut(path)
    assert caught_up - mended < CATCH_UP_S, f"caught up {caught_up - mended:.1f} s after the mend"
    # every frame on B, once, in order, under its number on A
    got, _ = steady.frames()
    started = steady.started
    # lag bounded: steady from the mirror's start (its first look at A) to a
    # second before the cut (frames on their way at the cut wait for it), and
    # again from half a second after B had everything put before the mend
    steady = sorted(lag for _, put, lag in got if started + 1 <= put < cut - 1)
    again = sorted(lag for _, put, lag in got if put >= caught_up + 0.5)
    print(
        f"{shaper}: lag p50 / p99 / max, steady {lags(steady)}, again {lags(again)};"
        f" caught up {caught_up - mended:.1f} s after the mend"
    )
    # (at least half the frames of each window: the producer's pace is real time)
    assert len(steady) >= RATE * (BEFORE_CUT - 2) / 2, len(steady)
    assert len(again) >= RATE * (AFTER_CAUGHT_UP - 1) / 2, len(again)
    for lag in (steady, again):
        assert statistics.median(lag) < 0.25  # 25 ms when quiet
        assert lag[-1] < 2.0  # ~0.1 s when quiet: a lost packet resent
    assert mirror.poll() is None, mirror.communicate()


@INSIDE
def test_the_mirror_recovers_after_the_link_is_cut_for_10_s(link, tmp_path, inside):
    # a slow link (1 Mbit/s) where the kernel has tbf; netem where it has that too
    link.shape("tbf", "rate", "1mbit", "burst", "32kbit", "latency", "100ms")
    serve(link, link.a, "0.0.0.0")
    serve(link, link.b, "127.0.0.1")
    mirror = start_mirror(link, inside=inside)
    a, b = f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT}"
    client(link, tmp_path, link.a, a, "put", 1, 500)
    assert client(link, tmp_path, link.b, b, "get", 1, 500) == frames(1, 500)
    link.cut(up=False)
    client(link, tmp_path, link.a, a, "put", 501, 1000)  # over lo, inside A's namespace
    time.sleep(10)  # real time: the cut the issue asks for, in real network stacks
    link.cut(up=True)
    assert client(link, tmp_path, link.b, b, "get", 1, 1000) == frames(1, 1000)
    assert mirror.poll() is None  # still running


@pytest.mark.parametrize("inside", [False, True], ids=["process", "inside A"])
@pytest.mark.parametrize("shaper", [probe().shaper])
def test_a_push_mirror_resumes_within_seconds_after_a_10_s_cut(link, tmp_path, shaper, inside):
    """The mirror beside A puts to B across the link.  Cut silently in the middle
    of B's replies, B's end of the mirror's connection lives on seconds after the
    mend (its resends wait out TCP's back-off), still holding the copy: the
    mirror's next session says it comes back, so B gives it the copy its silent
    connection holds (docs/protocol.rst, Transport) instead of refusing it.
    ``inside``: A pushes itself, asked by the mirror beside it."""
    if probe().why_no_shaper:
        pytest.skip(probe().why_no_shaper)
    path = Lossy.shape(link)
    serve(link, link.a, "127.0.0.1")
    serve(link, link.b, "0.0.0.0")
    mirror = start_mirror(link, push=True, inside=inside)
    steady = Steady(link, tmp_path, link.b, link.a, f"127.0.0.1:{PORT}")
    _, mended, caught_up = steady.cut(path, b_first=True)
    back = caught_up - mended
    print(
        f"{shaper}: push mirror ({'inside A' if inside else 'process'}), B had a frame put"
        f" after the mend {back:.1f} s after it"
    )
    # every frame on B, once, in order, under its number on A
    got, _ = steady.frames()
    assert len(got) >= RATE * (BEFORE_CUT + CUT) / 2  # the producer's pace is real time
    assert mirror.poll() is None, mirror.communicate()
    mirror.terminate()
    _, said = mirror.communicate(timeout=30)
    assert back < CATCH_UP_S, f"back {back:.1f} s after the mend; the mirror said: {said}"
