"""open_client(reconnect=True): a broker that goes away and comes back loses no frame.

Real brokers on loopback, stopped and started again on the same port (with the
same data dir where numbers must continue); the tests wait on events, never
on sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import trio

import turbine._client_flushes
import turbine._client_handles
import turbine._client_link
import turbine._client_outbox
import turbine.client
from tests.test_broker import CAM, wait_offline
from turbine import BrokerUnavailable, ConnectionFailed, Gap, RequestFailed, open_client
from turbine._constants import RECLAIM_GRACE_S
from turbine._spool_file import SpoolFile
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.hub import Hub
from turbine.messages import Flush, Put
from turbine.peer import Peer
from turbine.requests import Requests
from turbine.server import BrokerConfig, serve_turbine
from turbine.testing import open_broker, printed_line

SRC = "daq_rig_data_source"
PATH = f"{SRC}/x"


class Broker:
    """A broker that can be stopped and started again on the same port."""

    def __init__(self, nursery: trio.Nursery, data_dir=None, **config) -> None:
        self.nursery = nursery
        self.data_dir = data_dir
        self.config = config
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        stopped = self._stopped = trio.Event()
        with contextlib.ExitStack() as done:
            done.callback(stopped.set)
            await self._serve_in_scope(task_status)

    async def _serve_in_scope(self, task_status) -> None:
        with self._scope:  # type: ignore[union-attr]
            async with contextlib.AsyncExitStack() as stack:
                config = dict(self.config)
                if self.data_dir is not None:
                    archive = await stack.enter_async_context(open_archive(self.data_dir))
                    config["store"] = TieredStores(archive)
                broker = BrokerConfig(host="127.0.0.1", port=self.port, **config)
                async with trio.open_nursery() as nursery:
                    addresses = await nursery.start(serve_turbine, broker)
                    task_status.started(addresses[0][1])

    async def start(self) -> str:
        self._scope = trio.CancelScope()
        self.port = await self.nursery.start(self._serve)
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop the broker; return once it has (its port and data dir free)."""
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


async def test_puts_during_an_outage_are_stored_once_in_order_with_their_timestamps(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"}, cache_frames=5)
                for i in range(1, 11):
                    await src.put("x", b"%d" % i, 1000.0 + i)
                await src.flush()
                await broker.stop()
                await daq._down.wait()  # the client noticed
                for i in range(11, 21):
                    await src.put("x", b"%d" % i, 1000.0 + i)
                with pytest.raises(BrokerUnavailable, match="10 frames .* still spooled"):
                    await daq.flush(timeout=0.05)
                assert daq.spool is not None and daq.spool.frames == 10
                await broker.start()  # same port, same data dir
                await daq.flush(timeout=20)
                assert daq.spool.frames == 0 and daq.reconnects == 1
                await src.put("x", b"21", 1021.0)
                await src.flush()
                got = await daq.fetch(PATH, oldest=100)
            await broker.stop()
    assert [f.data for f in got] == [b"%d" % i for i in range(1, 22)]
    assert [f.seq for f in got] == list(range(1, 22))  # each once, numbers continuing
    assert [f.timestamp for f in got] == [1000.0 + i for i in range(1, 22)]


async def test_an_outage_longer_than_memory_spools_to_a_file_and_replays_it(tmp_path, monkeypatch):
    monkeypatch.setattr(turbine._client_link, "SPOOL_MEMORY_BYTES", 4)  # one frame in memory
    spool_dir = tmp_path / "state"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path / "data")
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True, spool_dir=spool_dir) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"})
                await src.put("x", b"1", 1001.0)
                await src.flush()
                await broker.stop()
                await daq._down.wait()
                for i in range(2, 12):
                    await src.put("x", b"%d" % i, 1000.0 + i)
                    await trio.lowlevel.checkpoint()  # the flusher makes each a put message
                with pytest.raises(BrokerUnavailable):
                    await daq.flush(timeout=0.05)
                (path,) = spool_dir.iterdir()
                assert path.name == f"daq-{os.getpid()}.spool" and path.stat().st_size > 0
                assert daq.spool is not None and daq.spool.file_bytes >= 8
                await broker.start()
                await daq.flush(timeout=20)
                assert path.stat().st_size == 0  # acknowledged: nothing left on file
                got = await daq.fetch(PATH, oldest=100)
            assert not path.exists()  # closed: removed
            await broker.stop()
    assert [f.data for f in got] == [b"%d" % i for i in range(1, 12)]
    assert [f.timestamp for f in got] == [1000.0 + i for i in range(1, 12)]


async def test_a_replay_of_puts_the_broker_had_stored_is_not_stored_twice(monkeypatch):
    """The link drops (the broker stays up) after puts were stored and before their
    acknowledgement: the client replays them, the broker drops the copies."""

    async def no_acknowledgements(self) -> None:  # this test says when to flush
        await trio.sleep_forever()

    monkeypatch.setattr(turbine._client_flushes.Flushes, "run", no_acknowledgements)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery)
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"})
                for i in range(5):
                    await src.put("x", b"%d" % i)
                await daq._outbox.send()  # written, not acknowledged
                async with open_client(address) as other:
                    while len(await other.fetch(PATH, oldest=100)) < 5:
                        pass  # stored by the broker
                assert daq.spool is not None and daq.spool.frames == 5
                daq._stream.socket.shutdown(2)  # the link drops
                await daq.flush(timeout=10)
                assert daq.reconnects == 1 and daq.spool.frames == 0
                got = await daq.fetch(PATH, oldest=100)
            await broker.stop()
    assert [f.data for f in got] == [b"%d" % i for i in range(5)]


async def test_a_subscription_resumes_at_the_first_frame_it_had_not_received(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with (
                open_client(address, name="daq", reconnect=True) as daq,
                open_client(address, name="reader", reconnect=True) as reader,
            ):
                src = await daq.open_source(SRC, {"x": "text/plain"})
                await src.put("x", b"1")
                await src.flush()
                async with reader.subscribe(PATH, start="oldest") as sub:
                    assert (await sub.receive()).data == b"1"
                    for i in range(2, 6):
                        await src.put("x", b"%d" % i)
                    await src.flush()
                    got = [await sub.receive() for _ in range(2)]  # 2 and 3; 4, 5 queued or not
                    await broker.stop()
                    await reader._down.wait()
                    await daq._down.wait()
                    for i in range(6, 11):
                        await src.put("x", b"%d" % i)
                    await broker.start()
                    await daq.flush(timeout=20)
                    while len(got) < 9:
                        got.append(await sub.receive())
            await broker.stop()
    assert [(f.seq, f.data) for f in got] == [(i, b"%d" % i) for i in range(2, 11)]


async def test_a_resumed_subscription_gets_a_gap_for_what_the_broker_no_longer_holds(
    monkeypatch,
):
    held = trio.Event()
    allowed = trio.Event()
    handshake = turbine._client_link.handshake

    async def held_back(*args, **kwargs):
        held.set()
        await allowed.wait()
        return await handshake(*args, **kwargs)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery)
            address = await broker.start()
            async with (
                open_client(address, name="daq") as daq,
                open_client(address, name="reader", reconnect=True) as reader,
            ):
                src = await daq.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                async with (
                    reader.subscribe(PATH, start="oldest") as sub,
                    reader.monitor(PATH) as mon,
                ):
                    await src.put("x", b"1")
                    await src.flush()
                    assert (await sub.receive()).seq == 1
                    assert (await mon.receive()).seq == 1
                    monkeypatch.setattr(turbine._client_link, "handshake", held_back)
                    reader._stream.socket.shutdown(2)  # the link drops
                    await held.wait()
                    for i in range(2, 51):
                        await src.put("x", b"%d" % i)
                    await src.flush()  # the ring holds 41..50 now
                    allowed.set()
                    gap = await sub.receive()
                    rest = [await sub.receive() for _ in range(10)]
                    newest = await mon.receive()
            await broker.stop()
    assert gap == Gap(SRC, "x", 39, 41)  # 2..40: explicit, with the count
    assert [f.seq for f in rest] == list(range(41, 51))
    assert newest.seq == 50  # a monitor resumes with the newest


async def test_a_holder_reconnecting_gets_its_source_back_and_a_stranger_meanwhile_is_refused(
    tmp_path, monkeypatch
):
    held = trio.Event()
    allowed = trio.Event()
    handshake = turbine._client_link.handshake

    async def held_back(*args, **kwargs):
        if kwargs.get("reconnect"):  # the holder's reconnect, not the stranger's connect
            held.set()
            await allowed.wait()
        return await handshake(*args, **kwargs)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"})
                await src.put("x", b"1")
                await src.flush()
                monkeypatch.setattr(turbine._client_link, "handshake", held_back)
                await broker.stop()
                await held.wait()  # the holder is reconnecting, held back
                await src.put("x", b"2")  # spooled
                await broker.start()  # the same data dir: the source comes back offline
                async with open_client(address, name="stranger") as stranger:
                    with pytest.raises(RequestFailed, match="held by daq.*reconnecting") as exc:
                        await stranger.open_source(SRC)
                    assert exc.value.code == "held"
                    allowed.set()
                    await daq.flush()  # its source back, its spooled put stored
                    (info,) = await stranger.list_sources(SRC)
                    assert info.online and info.holder.startswith("daq#")
                    frames = await stranger.fetch(PATH, oldest=10)
                    assert [f.data for f in frames] == [b"1", b"2"]
                # Closed on purpose, its sources are free at once.
                async with open_client(address, name="stranger") as stranger:
                    await daq.aclose()
                    await stranger.open_source(SRC)
            await broker.stop()


def test_a_source_waits_for_a_reconnecting_holder_only_and_only_for_a_while():
    now = [1000.0]
    hub = Hub(clock=lambda: now[0])

    def peer(n: int, client: str) -> Peer:
        p = Peer(n)
        p.named(client)
        return p

    holder = peer(1, "daq")
    holder.reconnects = True
    script = peer(2, "script")  # a client that does not reconnect
    stranger = peer(3, "stranger")
    hub.open_source(holder, SRC)
    hub.open_source(script, "daq_other_data_source")
    hub.release(holder)  # both connections ended
    hub.release(script)
    hub.open_source(stranger, "daq_other_data_source")  # not kept: its holder does not come back
    with pytest.raises(RequestFailed, match="reconnecting"):
        hub.open_source(stranger, SRC)
    now[0] += RECLAIM_GRACE_S
    hub.open_source(stranger, SRC)  # it did not come back in time
    again = peer(4, "daq")
    with pytest.raises(RequestFailed, match="held by stranger"):
        hub.open_source(again, "daq_other_data_source")  # (not its owner: no reclaim)
    hub.open_source(again, SRC)  # but its owner takes its source back


def count_flushes(monkeypatch) -> list[int]:
    """The ids of the flush requests the broker (of this process) answers, in order."""
    seen: list[int] = []
    answer = Requests._handlers[Flush]

    def counted(conn: Requests, msg: Flush) -> None:
        seen.append(msg.id)
        answer(conn, msg)

    monkeypatch.setitem(Requests._handlers, Flush, counted)
    return seen


async def test_a_put_and_its_flush_cost_the_broker_one_flush_request(monkeypatch):
    flushes = count_flushes(monkeypatch)
    writes: list[int] = []
    write = turbine._client_outbox.send_buffers

    async def counted(sock: Any, buffers: list[Any], **how: Any) -> None:
        writes.append(len(buffers))
        await write(sock, buffers, **how)

    monkeypatch.setattr(turbine._client_outbox, "send_buffers", counted)
    with trio.fail_after(10):
        async with open_broker() as address, open_client(address, reconnect=True) as daq:
            src = await daq.open_source(SRC, {"x": "text/plain"}, shared=True)
            del writes[:]
            for i in range(10):
                await src.put("x", b"%d" % i)
                await src.flush()
            assert len(flushes) == 10
            assert len(writes) == 10  # each put goes out with its flush, in one write
            for i in range(10):
                await daq.put(PATH, b"%d" % i)  # put and flush in one call
            assert len(flushes) == 20
            assert daq.spool is not None and daq.spool.frames == 0


async def test_flushes_in_flight_cover_each_other(monkeypatch):
    flushes = count_flushes(monkeypatch)
    with trio.fail_after(10):
        async with open_broker() as address, open_client(address, reconnect=True) as daq:
            src = await daq.open_source(SRC, {"x": "text/plain"})
            await src.put("x", b"1")
            async with trio.open_nursery() as flushing:
                for _ in range(3):  # the same put: one flush covers all three
                    flushing.start_soon(src.flush)
            assert len(flushes) == 1
            await src.put("x", b"2")
            async with trio.open_nursery() as flushing:
                flushing.start_soon(src.flush)
                await trio.testing.wait_all_tasks_blocked()  # sent (answered or not)
                await src.put("x", b"3")
                flushing.start_soon(src.flush)  # covers a later put: one more
                flushing.start_soon(src.flush)  # and this one waits for that one
            assert len(flushes) == 3
            assert daq.spool is not None and daq.spool.frames == 0
            got = await daq.fetch(PATH, oldest=10)
    assert [f.data for f in got] == [b"1", b"2", b"3"]


async def test_each_flush_covering_a_refused_put_raises_its_refusal():
    refusals: list[str] = []

    async def flush(src: turbine._client_handles.Source) -> None:
        with pytest.raises(RequestFailed) as exc:
            await src.flush()
        refusals.append(str(exc.value))

    with trio.fail_after(10):
        async with open_broker() as address, open_client(address, reconnect=True) as daq:
            src = await daq.open_source(SRC, {"x": "text/plain"})
            await daq.delete(SRC)
            await src.put("x", b"1")  # to a source no longer there
            async with trio.open_nursery() as flushing:
                flushing.start_soon(flush, src)
                flushing.start_soon(flush, src)
    assert len(refusals) == 2  # both were waiting for the flush that reported it
    assert all(r.startswith(f"put to {PATH} refused: no source named {SRC!r}") for r in refusals)


async def test_a_client_closed_while_its_broker_is_away_closes_with_its_frames_spooled():
    # (Its flusher used to retry the failed link's flush without ever yielding: no close.)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery)
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"})
                await broker.stop()
                await daq._down.wait()
                await src.put("x", b"1")
                with pytest.raises(BrokerUnavailable):
                    await daq.flush(timeout=0.05)
            assert daq.spool is not None and daq.spool.frames == 1  # given up, as documented


async def test_without_reconnect_a_lost_connection_raises():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery)
            address = await broker.start()
            async with open_client(address, name="script") as tb:
                src = await tb.open_source(SRC, {"x": "text/plain"})
                await broker.stop()
                with pytest.raises(ConnectionFailed):
                    for i in range(10_000):
                        await src.put("x", b"%d" % i)
                        await src.flush()


async def test_a_full_spool_drops_the_oldest_frames_and_readers_get_one_gap(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with (
                open_client(address, name="daq", reconnect=True, spool_bytes=100) as daq,
                open_client(address, name="reader", reconnect=True) as reader,
            ):
                src = await daq.open_source(SRC, {"x": "text/plain"})
                await src.put("x", b"%010d" % 0)
                await src.flush()  # number 1
                async with reader.subscribe(PATH, start="oldest") as sub:
                    assert (await sub.receive()).seq == 1
                    await broker.stop()
                    await daq._down.wait()
                    await reader._down.wait()
                    for i in range(1, 31):
                        await src.put("x", b"%010d" % i, 1000.0 + i)
                        await daq._outbox.send()  # one put message each, into the spool
                    assert daq.spool is not None
                    assert (daq.spool.frames, daq.spool.dropped_frames) == (10, 20)
                    await broker.start()
                    await daq.flush(timeout=20)
                    gap = await sub.receive()
                    rest = [await sub.receive() for _ in range(10)]
                    got = await daq.fetch(PATH, oldest=100)
            await broker.stop()
            address = await broker.start()  # the gap and its span come back from the disk
            async with open_client(address, name="later") as later:
                async with later.subscribe(PATH, start="oldest") as sub:
                    again = [await sub.receive() for _ in range(12)]
            await broker.stop()
    assert gap == Gap(SRC, "x", 20, 22, 1001.0, 1020.0)  # frames 1..20 (numbers 2..21), explicit
    assert [(f.seq, f.data) for f in rest] == [(i + 1, b"%010d" % i) for i in range(21, 31)]
    assert [f.seq for f in got] == [1, *range(22, 32)]
    assert again[1] == gap and [f.seq for f in again[:1] + again[2:]] == [1, *range(22, 32)]


async def test_a_spool_gap_of_a_channel_that_gets_no_later_put_reaches_the_broker(tmp_path):
    """Frames of x dropped from the full spool by later puts of y only: after the
    reconnect a put with no frames tells x's gap, so the next frame of x, put by
    another client after this one closed, comes after it (not under the next number)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with open_client(address, name="daq", reconnect=True, spool_bytes=100) as daq:
                src = await daq.open_source(SRC, {"x": "text/plain", "y": "text/plain"})
                await src.put("x", b"%010d" % 0)
                await src.flush()  # number 1
                await broker.stop()
                await daq._down.wait()
                for ch, first in (("x", 1), ("y", 1)):
                    for i in range(first, first + 10):
                        await src.put(ch, b"%010d" % i, 1000.0 + i)
                        await daq._outbox.send()  # one put message each, into the spool
                assert daq.spool is not None
                assert (daq.spool.frames, daq.spool.dropped_frames) == (10, 10)  # all of x's
                await broker.start()
                await daq.flush(timeout=20)
            async with open_client(address, name="later") as later:
                other = await later.open_source(SRC)
                await other.put("x", b"after", 2000.0)
                await later.flush()
                async with later.subscribe(PATH, start="oldest") as sub:
                    got = [await sub.receive() for _ in range(3)]
            await broker.stop()
            address = await broker.start()  # the gap comes back from the disk
            async with open_client(address, name="again") as again:
                async with again.subscribe(PATH, start="oldest") as sub:
                    back = [await sub.receive() for _ in range(3)]
            await broker.stop()
    assert got[0].seq == 1
    assert got[1] == Gap(SRC, "x", 10, 12, 1001.0, 1010.0)  # numbers 2..11, explicit
    assert (got[2].seq, got[2].data) == (12, b"after")
    assert back[1] == got[1] and [f.seq for f in (back[0], back[2])] == [1, 12]


#: A producer that spools to its state dir while the broker is away and is then killed -9.
CRASHING_PRODUCER = """
import sys

import trio

import turbine._client_link
from turbine import open_client


async def main(address, spool_dir, source, memory):
    turbine._client_link.SPOOL_MEMORY_BYTES = int(memory)  # bytes of frames; the rest: the file
    async with open_client(address, name="daq", reconnect=True, spool_dir=spool_dir) as daq:
        src = await daq.open_source(source, {"x": "text/plain"})
        for i in range(1, 6):
            await src.put("x", b"%d" % i, 1000.0 + i)
        await daq.flush()
        print("stored", flush=True)
        await daq._down.wait()
        for i in range(6, 16):
            await src.put("x", b"%d" % i, 1000.0 + i)
            await daq._outbox.send()  # a put message each, synced to the spool file
        print("spooled", flush=True)
        await trio.sleep_forever()


trio.run(main, *sys.argv[1:])
"""


async def read_line(proc: trio.Process) -> bytes:
    return (await printed_line(proc, "the producer")).strip()


async def run_and_kill_producer(broker: Broker, address: str, spool_dir, memory: int) -> int:
    """Run CRASHING_PRODUCER (``memory`` bytes of its spool in memory): it stores 1..5,
    ``broker`` stops, it spools 6..15 and is killed -9; return its pid."""
    argv = [sys.executable, "-c", CRASHING_PRODUCER, address, str(spool_dir), SRC, str(memory)]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    try:
        assert await read_line(proc) == b"stored"
        await broker.stop()
        assert await read_line(proc) == b"spooled"
    finally:
        proc.kill()  # -9: no close, the spool file stays behind
        await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()
    return proc.pid


@pytest.mark.slow
async def test_what_a_killed_producer_spooled_is_replayed_by_its_next_run(tmp_path):
    spool_dir = tmp_path / "state"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path / "data")
            address = await broker.start()
            pid = await run_and_kill_producer(broker, address, spool_dir, memory=0)
            (left,) = spool_dir.iterdir()
            assert left.name == f"daq-{pid}.spool" and left.stat().st_size > 0
            await broker.start()
            async with open_client(address, name="daq", reconnect=True, spool_dir=spool_dir) as daq:
                await daq.open_source(SRC, {"x": "text/plain"})
                await daq.flush(timeout=20)
                assert daq.spool is not None
                assert daq.spool.statistics()["recovered_frames"] == 10
                got = await daq.fetch(PATH, oldest=100)
                assert not left.exists()  # replayed and acknowledged: removed
            await broker.stop()
    assert [f.data for f in got] == [b"%d" % i for i in range(1, 16)]
    assert [f.seq for f in got] == list(range(1, 16))
    assert [f.timestamp for f in got] == [1000.0 + i for i in range(1, 16)]


@pytest.mark.slow
async def test_what_a_killed_producer_held_in_memory_is_a_gap_for_its_next_runs_readers(tmp_path):
    """Puts 6..9 of the outage fit the spool's memory (noted on file), 10..15 went to
    the file; the producer is killed -9.  Its next run replays 10..15 and readers
    get one gap of exactly 6..9, with their time span, instead of silence."""
    spool_dir = tmp_path / "state"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path / "data")
            address = await broker.start()
            await run_and_kill_producer(broker, address, spool_dir, memory=4)
            await broker.start()
            async with open_client(address, name="daq", reconnect=True, spool_dir=spool_dir) as daq:
                await daq.open_source(SRC, {"x": "text/plain"})
                await daq.flush(timeout=20)
                assert daq.spool is not None
                stats = daq.spool.statistics()
                async with daq.subscribe(PATH, start="oldest") as sub:
                    got = [await sub.receive() for _ in range(12)]
            await broker.stop()
    assert (stats["recovered_frames"], stats["dropped_frames"]) == (6, 4)
    assert got[5] == Gap(SRC, "x", 4, 10, 1006.0, 1009.0)
    frames = got[:5] + got[6:]
    assert [(f.seq, f.data) for f in frames] == [
        (i, b"%d" % i) for i in [*range(1, 6), *range(10, 16)]
    ]
    assert [f.timestamp for f in frames] == [1000.0 + f.seq for f in frames]


async def test_a_left_spool_file_of_puts_the_broker_had_stored_stores_each_once(tmp_path):
    """A crash after the broker stored puts and before their acknowledgement: the next
    run replays them with the crashed run's producer and numbers; the broker drops
    those it holds."""
    spool_dir = tmp_path / "state"
    frames = [b"%d" % i for i in range(1, 6)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path / "data")
            address = await broker.start()
            async with open_client(address, name="daq") as crashed:
                crashed._outbox.producer = "crashed-run"
                src = await crashed.open_source(SRC, {"x": "text/plain"})
                for i in range(3):  # stored: put numbers 1, 2, 3
                    await src.put("x", frames[i], 1001.0 + i)
                    await src.flush()
            left = SpoolFile.create(str(spool_dir), "daq-1.spool")
            for i in range(5):  # it had spooled all five, unacknowledged
                put = Put(
                    source=SRC,
                    channel="x",
                    ts=[1001.0 + i],
                    sizes=[len(frames[i])],
                    producer="crashed-run",
                    pseq=i + 1,
                )
                left.append(put, [frames[i]])
            left.close(remove=False)
            async with open_client(address, name="daq", reconnect=True, spool_dir=spool_dir) as daq:
                await daq.open_source(SRC, {"x": "text/plain"})
                await daq.flush(timeout=20)
                got = await daq.fetch(PATH, oldest=100)
            await broker.stop()
    assert [(f.seq, f.data, f.timestamp) for f in got] == [
        (i + 1, frames[i], 1001.0 + i) for i in range(5)
    ]
    assert not (spool_dir / "daq-1.spool").exists()


async def test_after_a_site_restart_a_reader_from_oldest_gets_what_only_the_disk_holds(tmp_path):
    """The demo's restart: the MCP stops its components at once, the DVD archiver is
    gone before the DAQ's last blocks are put, then the broker stops; after the
    restart the archiver subscribes from oldest and must get those blocks from the
    disk before the live ones (the ring of the restarted broker never held them);
    it once started at the ring and recorded a gap of 4 there."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path)
            address = await broker.start()
            async with open_client(address, name="daq") as daq:
                src = await daq.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                for i in range(1, 21):  # the archiver had taken 1..16 when it stopped
                    await src.put("x", b"%d" % i, 1000.0 + i)
                await src.flush()
            await broker.stop()
            address = await broker.start()  # the same data dir: the source comes back
            async with (
                open_client(address, name="daq") as daq,
                open_client(address, name="archiver") as archiver,
            ):
                src = await daq.open_source(SRC, {"x": "text/plain"}, cache_frames=10)
                for i in range(21, 25):
                    await src.put("x", b"%d" % i, 1000.0 + i)
                await src.flush()
                async with archiver.subscribe(PATH, start="oldest") as sub:
                    got = [await sub.receive() for _ in range(24)]
            await broker.stop()
    assert not [g for g in got if isinstance(g, Gap)]
    assert [(f.seq, f.data) for f in got] == [(i, b"%d" % i) for i in range(1, 25)]


async def test_a_reader_behind_a_source_dropped_from_memory_and_reopened_misses_nothing(
    tmp_path, monkeypatch
):
    """An offline source makes room for another (its ring is dropped, its disk
    history stays); its producer comes back and puts on.  A subscriber that had
    not read yet gets every frame once, in order: the old ones from the disk."""
    monkeypatch.setattr(turbine._client_handles, "SUBSCRIPTION_QUEUE_BATCHES", 1)
    frame = bytes(64 << 10)
    count = 400  # 25 MiB: far more than the reader's socket buffers hold
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path, max_memory=4_000_000)
            address = await broker.start()
            async with open_client(address, name="reader") as reader:
                async with reader.subscribe(PATH) as sub:
                    async with open_client(address, name="daq") as daq:
                        src = await daq.open_source(SRC, {"x": "x/y"}, cache_bytes=3_500_000)
                        for i in range(count):
                            await src.put("x", frame, 1000.0 + i)
                        await src.flush()
                    async with open_client(address, name="cam") as cam:
                        await wait_offline(cam, SRC)
                        await cam.open_source(CAM, cache_bytes=1_000_000)  # SRC makes room
                    async with open_client(address, name="daq") as daq:
                        src = await daq.open_source(SRC, {"x": "x/y"}, cache_bytes=1_000_000)
                        for i in range(count, count + 5):
                            await src.put("x", frame, 1000.0 + i)
                        await src.flush()
                    got = [await sub.receive()]
                    while isinstance(got[-1], Gap) or got[-1].seq < count + 5:
                        got.append(await sub.receive())
            await broker.stop()
    assert not [g for g in got if isinstance(g, Gap)]
    assert [f.seq for f in got] == list(range(1, count + 6))
    assert [f.timestamp for f in got] == [1000.0 + i for i in range(count + 5)]


@contextlib.asynccontextmanager
async def broker_process(data_dir, port: int = 0):
    """A real broker process on ``data_dir``; yields it and its port; killed at the end."""
    argv = [sys.executable, "-m", "turbine", "serve", "--port", str(port), "--data-dir"]
    proc = await trio.lowlevel.open_process([*argv, str(data_dir)], stdout=subprocess.PIPE)
    try:
        line = await printed_line(proc, "the broker")
        yield proc, int(line.rsplit(b":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("then", ["killed", "resumed"])
async def test_puts_a_hung_broker_took_are_a_gap_only_where_it_lost_them(tmp_path, then):
    """A hung broker (stopped, its connection open) takes every put into the socket,
    so a full spool drops puts it has written and that are not acknowledged.  If
    that broker is then killed, they are lost: readers get one gap of exactly
    their frames.  If it carries on, it stored them: no gap, nothing counted."""
    frame = bytes(500)
    with trio.fail_after(60):
        async with broker_process(tmp_path) as (proc, port):
            address = f"127.0.0.1:{port}"
            async with open_client(
                address, name="daq", reconnect=True, spool_bytes=10 * 500
            ) as daq:
                src = await daq.open_source(SRC, {"x": "x/y"})
                for i in range(1, 6):
                    await src.put("x", frame, 1000.0 + i)
                await src.flush()
                proc.send_signal(signal.SIGSTOP)
                for i in range(6, 101):
                    await src.put("x", frame, 1000.0 + i)
                    await daq._outbox.send()  # one put message each, into the socket
                assert daq.spool is not None
                assert daq.spool.statistics()["in_doubt_frames"] == 85  # 6..90; 91..100 kept
                if then == "killed":
                    proc.kill()
                    await proc.wait()
                    restarted = broker_process(tmp_path, port)
                else:
                    proc.send_signal(signal.SIGCONT)
                    restarted = contextlib.nullcontext((proc, port))
                async with restarted:
                    await daq.flush(timeout=30)
                    stats = daq.spool.statistics()
                    async with open_client(address, name="reader") as reader:
                        async with reader.subscribe(PATH, start="oldest") as sub:
                            got = [await sub.receive()]
                            while isinstance(got[-1], Gap) or got[-1].timestamp < 1100.0:
                                got.append(await sub.receive())
    frames = [f for f in got if not isinstance(f, Gap)]
    gaps = [g for g in got if isinstance(g, Gap)]
    assert stats["in_doubt_frames"] == 0
    if then == "killed":
        assert gaps == [Gap(SRC, "x", 85, 91, 1006.0, 1090.0)]
        assert [f.seq for f in frames] == [*range(1, 6), *range(91, 101)]
        assert stats["dropped_frames"] == 85
    else:
        assert gaps == []
        assert [f.seq for f in frames] == list(range(1, 101))
        assert stats["dropped_frames"] == 0
    assert [f.timestamp for f in frames] == [1000.0 + f.seq for f in frames]
