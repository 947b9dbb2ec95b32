"""Fuzz campaign: a real ``turbine serve`` under malformed and hostile clients
while a legitimate publisher and subscriber run.

Asserted throughout and after: the broker answers ``status`` within 50 ms
typically and within 2 s always (see STATUS_WITHIN_S),
the subscriber gets every frame in order (no gap), the broker's RSS comes back
to within 20 % of where it started, and its log holds no traceback.

``make test`` runs it for a few seconds.  A long run, by hand::

    TURBINE_FUZZ_SECONDS=600 TURBINE_FUZZ_SEED=7 .venv/bin/python -m pytest -s tests/test_fuzz.py

prints its figures (messages sent, status latency, RSS before and after).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import trio
from test_cli import TURBINE, read_line

from turbine import Frame, open_client
from turbine._constants import MAX_PATTERN_CHARS, PROTOCOL_VERSION

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("TURBINE_FUZZ_SECONDS", "6"))
SEED = int(os.environ.get("TURBINE_FUZZ_SEED", "1"))  # the bounded run: one known mix
SRC = "daq_legit_data_source"
RING_FRAMES = 20_000  # filled before the start is measured: the ring's memory is steady
ATTACKERS = 4
STATUS_EVERY_S = 0.02
#: Every status answer within this: a hang detector.  On a loaded 2-core machine
#: a process can wait for a CPU for a few hundred ms (0.1-0.35 s seen at load
#: 8-13), so a tighter bound failed without a bug; a broker that a hostile client
#: stalls (a pattern matched in super-linear time, a huge frame handled whole on
#: the event loop, a write with no deadline) holds status for seconds or until
#: that client leaves.
STATUS_WITHIN_S = 2.0
#: The typical status answer within this: 1.3 ms measured at load 7-9, so only
#: a broker the attack keeps slow reaches it (a slice of CPU lost now and then
#: moves single probes, not the median).
STATUS_MEDIAN_WITHIN_S = 0.05
#: The broker's RSS after the attack, against before it.
RSS_BACK_WITHIN = 1.2


#: The status probe: asks every STATUS_EVERY_S for as long as told; prints "time latency" lines.
PROBE = f"""
import sys, time
from turbine import connect
with connect(sys.argv[1], name="probe") as tb:
    end = time.perf_counter() + float(sys.argv[2])
    while time.perf_counter() < end:
        began = time.perf_counter()
        tb.status()
        print(began, time.perf_counter() - began)
        time.sleep({STATUS_EVERY_S})
"""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def maps(pid: int) -> dict[str, int]:
    """Resident KiB by kind of mapping (debugging the RSS figure)."""
    out: dict[str, int] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if not line[0].isupper():
            parts = line.split()
            kind = parts[5] if len(parts) > 5 else "anon"
        elif line.startswith("Rss:"):
            key = kind if kind in ("[heap]", "anon") else "files"
            out[key] = out.get(key, 0) + int(line.split()[1])
    return out


def frame(header: object, payload: bytes = b"") -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">II", len(head), len(payload)) + head + payload


HELLO = frame({"type": "client_hello", "protocol": PROTOCOL_VERSION, "name": "fuzz"})


def junk_value(rng: random.Random, depth: int = 0) -> object:
    """A value of any msgpack type, sometimes huge or nested."""
    pick = rng.randrange(12 if depth < 3 else 8)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if pick == 3:
        return rng.choice([0.5, -1e300, float("inf"), float("nan")])
    if pick == 4:
        return "x" * rng.choice([0, 1, 255, 256, 1024, 1025, 100_000])
    if pick == 5:
        return rng.randbytes(rng.randrange(16))
    if pick == 6:
        return rng.choice(["*", "*/*", "now", "oldest", "daq_*", "*" * 1000 + "/nomatch"])
    if pick == 7:
        return "".join(rng.choice("ab*/ \x00é") for _ in range(rng.randrange(40)))
    if pick in (8, 9):
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(junk_value(rng, 3)): junk_value(rng, depth + 1) for _ in range(rng.randrange(4))}


# Built once: the campaign's own process must not stall its status probe.
HALF_PUT = frame(
    {"type": "put", "source": SRC, "channel": "x", "ts": [None], "sizes": [10_000_000]},
    bytes(10_000_000),
)[:200_000]


@functools.cache
def long_string(size: int, field: str) -> bytes:
    header = {
        "type": "client_hello" if field == "name" else "subscribe",
        "protocol": PROTOCOL_VERSION,
        "id": 1,
        "sub": 1,
        "pattern": "*",
    }
    header[field] = "s" * size
    return frame(header)


TYPES = ["open_source", "close_source", "put", "flush", "subscribe", "unsubscribe", "fetch"]
TYPES += ["list", "status", "delete", "client_hello", "ok", "error", "frames", "gap", "nope"]
FIELDS = ["id", "sub", "source", "channel", "pattern", "start", "ts", "sizes", "channels"]
FIELDS += ["cache_frames", "cache_bytes", "shared", "monitor", "newest", "name", "content_type"]


def hostile(rng: random.Random, n: int) -> tuple[bytes, bool]:
    """One hostile message (or stream of bytes) and whether to say hello first."""
    kind = rng.randrange(11)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(1, 3000)), rng.random() < 0.5
    if kind == 1:  # lengths that cannot be or that declare far more than is sent
        hlen, plen = rng.choice([(0, 0), (2**32 - 1, 0), (20, 2**32 - 1), (20, 68157440)])
        return struct.pack(">II", hlen, plen) + rng.randbytes(rng.randrange(8)), True
    if kind == 2:  # a real type with fields of any type
        header = {"type": rng.choice(TYPES)}
        for key in rng.sample(FIELDS, rng.randrange(len(FIELDS))):
            header[key] = junk_value(rng)
        try:
            return frame(header, rng.randbytes(rng.randrange(64))), True
        except (OverflowError, ValueError, TypeError):
            return b"\x00\x00\x00\x01\x00\x00\x00\x00\xc1", True
    if kind == 3:  # nesting as deep as msgpack allows, and deeper
        depth = rng.choice([100, 500, 900, 1100, 100_000])
        head = b"\x83\xa4type\xa5flush\xa2id\x01\xa1x" + b"\x91" * depth + b"\xc0"
        return struct.pack(">II", len(head), 0) + head, True
    if kind == 4:  # long strings everywhere a string goes
        size = rng.choice([256, 10_000, 2**20] * 3 + [4 * 2**20 - 200])  # at the header limit
        field = rng.choice(["name", "source", "pattern", "content_type", "start", "type"])
        return long_string(size, field), field != "name"
    if kind == 5:  # pathological patterns, at and over the limit
        pattern = rng.choice(
            [
                "*" * 1000 + "/nomatch",
                "*a" * (MAX_PATTERN_CHARS // 2 - 1) + "Q",
                "*" * 12 + "Q",
                "*" * (MAX_PATTERN_CHARS + 1),
            ]
        )
        request = rng.choice(
            [
                {"type": "subscribe", "id": 1, "sub": 1, "pattern": pattern},
                {"type": "fetch", "id": 2, "pattern": pattern, "newest": 5},
                {"type": "list", "id": 3, "pattern": pattern},
            ]
        )
        return frame(request), True
    if kind == 6:  # half of a put of 10 MB, then silence
        return HALF_PUT[: rng.randrange(8, len(HALF_PUT))], True
    if kind == 7:  # metadata that would break list for everyone
        source = f"daq_fuzz{n}_data_source"
        deep = rng.choice([b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 600 + b"1" + b"}" * 600])
        return (
            frame({"type": "open_source", "id": 1, "source": source})
            + frame(
                {"type": "put", "source": source, "channel": "metadata.txt"}
                | {"ts": [None], "sizes": [len(deep)]},
                deep,
            )
            + frame({"type": "list", "id": 2, "pattern": "*"})
            + frame({"type": "delete", "id": 3, "source": source})
        ), True
    if kind == 8:  # a put to someone else's source
        return frame(
            {"type": "put", "source": SRC, "channel": "x", "ts": [None], "sizes": [3]}, b"bad"
        ), True
    if kind == 9:  # many requests at once
        return b"".join(frame({"type": "status", "id": i}) for i in range(200)), True
    return b"", False  # a connection that says nothing


class Campaign:
    def __init__(self, address: str, seed: int) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.rng = random.Random(seed)
        self.messages = 0
        self.connections = 0
        self.held: list[trio.SocketStream] = []
        self.sent_log: list[tuple[float, bytes, int]] = []

    async def connect(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        self.connections += 1
        return stream

    async def attack(self, deadline: float) -> None:
        n = 0
        while trio.current_time() < deadline:
            n += 1
            if self.rng.random() < 0.05:
                await self.flood(self.rng.randrange(20, 100))
                continue
            data, hello = hostile(self.rng, id(self) + n)
            self.sent_log.append((time.perf_counter(), data[:60], len(data)))
            stream = await self.connect()
            try:
                await stream.send_all((HELLO if hello else b"") + data)
                self.messages += 1
                if self.rng.random() < 0.3 and len(self.held) < 50:
                    self.held.append(stream)  # hold it, half-sent or silent
                    continue
                with trio.move_on_after(0.5):  # read what the broker says, up to its close
                    while await stream.receive_some(1 << 16):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the broker closed on us mid-send: fine
            await stream.aclose()

    async def flood(self, count: int) -> None:
        streams = [await self.connect() for _ in range(count)]
        for stream in streams:
            try:
                await stream.send_all(HELLO[: self.rng.randrange(len(HELLO))])
                self.messages += 1
            except trio.BrokenResourceError:
                pass
        await trio.sleep(0.2)
        for stream in streams:
            await stream.aclose()

    async def release(self) -> None:
        for stream in self.held:
            await stream.aclose()
        self.held.clear()


def test_a_real_broker_survives_hostile_clients_while_others_carry_on(tmp_path):
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [TURBINE, "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=dict(os.environ, **json.loads(os.environ.get("FUZZ_ENV", "{}"))),
        )
    try:
        line = read_line(proc.stdout)
        address = line.split()[-1]
        figures = trio.run(run_campaign, address, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    text = log.read_text()
    figures["log_lines"] = len(text.splitlines())
    print(json.dumps(figures, indent=2))
    if report := os.environ.get("TURBINE_FUZZ_REPORT"):
        Path(report).write_text(json.dumps(figures, indent=2))
    assert "Traceback" not in text, text[-3000:]
    assert figures["status_median_s"] < STATUS_MEDIAN_WITHIN_S, figures
    assert figures["status_max_s"] < STATUS_WITHIN_S, figures
    assert figures["rss_after"] <= RSS_BACK_WITHIN * figures["rss_before"], figures


async def visit(address: str, i: int) -> None:
    """A well-behaved client that asks for the status and leaves."""
    async with open_client(address, name=f"visitor{i}") as tb:
        await tb.status()


async def run_campaign(address: str, pid: int) -> dict[str, object]:
    latencies: list[float] = []
    probes: list[tuple[float, float]] = []
    got: list[Frame] = []
    async with (
        open_client(address, name="publisher") as pub,
        open_client(address, name="subscriber") as sub_client,
        open_client(address, name="operator") as operator,
    ):
        src = await pub.open_source(SRC, cache_frames=RING_FRAMES, cache_bytes=64 << 20)
        sent = 0

        async def publish(until: float) -> None:
            nonlocal sent
            while trio.current_time() < until:
                for _ in range(20):
                    sent += 1
                    await src.put("x", b"%d " % sent + bytes(100))
                await src.flush()
                await trio.sleep(0.005)

        async def probe(until: float) -> None:
            # In a process of its own: the campaign's own work must not delay it.
            done = await trio.run_process(
                [sys.executable, "-c", PROBE, address, str(until - trio.current_time())],
                capture_stdout=True,
            )
            for line in done.stdout.decode().splitlines():
                began, latency = map(float, line.split())
                latencies.append(latency)
                probes.append((began, latency))

        async with sub_client.subscribe(f"{SRC}/x", start="oldest") as sub:
            caught_up = trio.Event()

            async def subscribe() -> None:
                async for item in sub:
                    assert isinstance(item, Frame), f"the legitimate subscriber lost {item}"
                    got.append(item)
                    if len(got) >= sent:
                        caught_up.set()

            async def all_delivered() -> None:
                nonlocal caught_up
                if len(got) < sent:
                    caught_up = trio.Event()
                    await caught_up.wait()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscribe)
                # Warm up: the ring full, the broker's memory steady.
                while sent < RING_FRAMES:
                    for _ in range(500):
                        sent += 1
                        await src.put("x", b"%d " % sent + bytes(100))
                    await src.flush()
                await all_delivered()
                # ... and a broker that has served connections before: the start
                # is a broker in use, not a process that never accepted one.
                for _ in range(3):
                    async with trio.open_nursery() as churn:
                        for i in range(50):
                            churn.start_soon(visit, address, i)
                await trio.sleep(1.5)  # the broker gives freed memory back once a second
                await operator.status()
                rss_before = rss(pid)
                if os.environ.get("FUZZ_DEBUG"):
                    print(maps(pid))
                campaign = Campaign(address, SEED)
                began = trio.current_time()
                deadline = began + SECONDS
                async with trio.open_nursery() as attack:
                    attack.start_soon(publish, deadline)
                    attack.start_soon(probe, deadline)
                    for _ in range(ATTACKERS):
                        attack.start_soon(campaign.attack, deadline)
                await campaign.release()
                # Everyone hostile has gone: wait for the broker to see it.
                with trio.fail_after(40):
                    while len((await operator.status())["clients"]) > 3:  # noqa: ASYNC110
                        await trio.sleep(0.1)
                for _ in range(20):  # a few more rounds at rest
                    await operator.status()
                # The broker gives freed memory back at most a second after the
                # last close: wait for that state, not a time (a broker starved
                # of CPU may take longer).  Memory that leaked never comes back:
                # 20 s is a hang bound, which no slow machine needs.
                with trio.move_on_after(20):
                    while (rss_after := rss(pid)) > RSS_BACK_WITHIN * rss_before:  # noqa: ASYNC110
                        await trio.sleep(0.1)
                if os.environ.get("FUZZ_DEBUG"):
                    print(maps(pid))
                    st = await operator.status()
                    print("sources", st["sources"], st["memory"], len(st["closed"]))
                    print([s.name for s in await operator.list_sources()])
                await src.put("x", b"%d " % (sent + 1))
                sent += 1
                await src.flush()
                with trio.fail_after(20):
                    await all_delivered()
                nursery.cancel_scope.cancel()
    if os.environ.get("FUZZ_DEBUG"):
        for at, lat in sorted(probes, key=lambda p: -p[1])[:3]:
            print("probe", round(lat, 4))
            for t, d, n in campaign.sent_log:
                if at - 0.3 < t < at + lat:
                    print("   ", round(t - at, 3), n, d)
    seqs = [f.seq for f in got]
    assert seqs == list(range(1, sent + 1)), "the subscriber got every frame, in order"
    assert [int(f.data.split(b" ")[0]) for f in got] == seqs
    return {
        "seed": SEED,
        "seconds": round(trio.current_time() - began, 1),
        "hostile_messages": campaign.messages,
        "hostile_connections": campaign.connections,
        "legit_frames": sent,
        "status_probes": len(latencies),
        "status_max_s": round(max(latencies), 4),
        "status_median_s": round(sorted(latencies)[len(latencies) // 2], 4),
        "rss_before": rss_before,
        "rss_after": rss_after,
    }
