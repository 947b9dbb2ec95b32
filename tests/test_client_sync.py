"""The blocking facade ``turbine.connect`` as a plain script uses it."""

from __future__ import annotations

import faulthandler
import queue
import threading
import time
from collections.abc import Iterator

import pytest
import trio

import turbine
import turbine._client_link
from tests.ports import free_port
from turbine import BrokerConfig, ConnectionFailed, Frame, Gap, RequestFailed, serve_turbine

SRC = "daq_rig_data_source"


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Blocking calls have no deadline of their own: a hung test dumps its stacks and ends."""
    faulthandler.dump_traceback_later(20, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def address() -> Iterator[str]:
    """A broker on its own thread and trio loop, as a script would find one running."""
    ready: queue.Queue[tuple[str, int]] = queue.Queue()
    control: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(
                serve_turbine, BrokerConfig(host="127.0.0.1", port=0, max_frame=100_000)
            )
            control["scope"] = nursery.cancel_scope
            control["token"] = trio.lowlevel.current_trio_token()
            ready.put(addresses[0])

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    host, port = ready.get(timeout=10)
    yield f"{host}:{port}"
    scope = control["scope"]
    trio.from_thread.run_sync(scope.cancel, trio_token=control["token"])  # type: ignore[attr-defined]
    thread.join(10)
    assert not thread.is_alive()


def test_put_flush_fetch_list_status(address):
    with turbine.connect(address, name="script") as tb:
        src = tb.open_source(SRC, {"x": "text/plain"}, cache_frames=100)
        assert src.name == SRC
        before = time.time()
        src.put("x", b"one", 5.0)
        src.put("x", b"two")
        src.flush()
        src.set_metadata({"units": "V"})
        frames = tb.fetch(f"{SRC}/x", oldest=10)
        newest = tb.fetch(f"{SRC}/x", newest=1)
        (info,) = tb.list_sources()
        status = tb.status()
    assert [(f.seq, f.data, f.content_type) for f in frames] == [
        (1, b"one", "text/plain"),
        (2, b"two", "text/plain"),
    ]
    assert frames[0].timestamp == 5.0 and frames[1].timestamp >= before
    assert frames[0].writer.startswith("script#")
    assert [f.seq for f in newest] == [2]
    assert info.name == SRC and info.online and info.metadata == {"units": "V"}
    assert info.cache_frames == 100
    (me,) = status["clients"]
    assert me["sources"] == [SRC]
    assert status["version"] == turbine.__version__


def test_subscribe_yields_frames_another_script_puts(address):
    with (
        turbine.connect(address, name="reader") as reader,
        turbine.connect(address, name="writer") as writer,
    ):
        with reader.subscribe(f"{SRC}/*") as items:
            src = writer.open_source(SRC)
            for i in range(5):
                src.put("x", b"%d" % i)
            src.flush()
            got = [next(items) for _ in range(5)]
        with reader.subscribe(f"{SRC}/x", start=2) as items:
            again = next(items)
    assert all(isinstance(f, Frame) for f in got)
    assert [(f.seq, f.data) for f in got] == [(i + 1, b"%d" % i) for i in range(5)]
    assert got[0].writer.startswith("writer#")
    assert (again.seq, again.data) == (2, b"1")


def test_subscribe_from_an_evicted_seq_yields_a_gap(address):
    with turbine.connect(address) as tb:
        src = tb.open_source(SRC, cache_frames=2)
        for i in range(5):
            src.put("x", b"%d" % i)
        src.flush()
        with tb.subscribe(f"{SRC}/x", start="oldest") as items:
            assert [next(items).seq for _ in range(2)] == [4, 5]
        with tb.subscribe(f"{SRC}/x", start=1) as items:
            assert next(items) == Gap(SRC, "x", 3, 4)


def test_monitor_yields_the_newest(address):
    with turbine.connect(address) as tb:
        src = tb.open_source(SRC)
        for i in range(5):
            src.put("x", b"%d" % i)
        src.flush()
        with tb.monitor(f"{SRC}/x") as items:
            first = next(items)
    assert (first.seq, first.data) == (5, b"4")


def test_shared_put_and_delete(address):
    with (
        turbine.connect(address, name="owner") as owner,
        turbine.connect(address, name="other") as other,
    ):
        owner.open_source(SRC, shared=True)
        other.put(f"{SRC}/x", b"hello", timestamp=7.0)
        (frame,) = owner.fetch(f"{SRC}/x", newest=1)
        with pytest.raises(RequestFailed, match="held by owner#"):
            other.delete(SRC)
        owner.delete(SRC)
        assert other.list_sources() == []
    assert (frame.data, frame.timestamp) == (b"hello", 7.0)
    assert frame.writer.startswith("other#")


def test_errors_reach_the_caller_unwrapped(address):
    with turbine.connect(address, name="first") as first, turbine.connect(address) as second:
        first.open_source(SRC)
        with pytest.raises(RequestFailed, match="held by first#") as info:
            second.open_source(SRC)
        assert info.value.code == "held"
        with pytest.raises(RequestFailed, match="invalid source name"):
            second.open_source("camera1")
        with pytest.raises(RequestFailed, match="over the broker's limit of 100000"):
            second.open_source("daq_other_data_source").put("x", bytes(100_001))
        with pytest.raises(RequestFailed, match="exactly one of"):
            second.fetch(f"{SRC}/x")
        assert second.fetch(f"{SRC}/x", newest=1) == []  # still connected


def test_closed_source_goes_offline_and_another_script_takes_it(address):
    with turbine.connect(address, name="first") as first:
        src = first.open_source(SRC)
        src.put("x", b"1")
        src.close()
        (info,) = first.list_sources()
        assert not info.online
        with turbine.connect(address, name="second") as second:
            taken = second.open_source(SRC)
            taken.put("x", b"2")
            taken.flush()
            assert [f.seq for f in second.fetch(f"{SRC}/x", oldest=5)] == [1, 2]


def test_no_broker_is_a_connection_failure():
    port = free_port()
    with pytest.raises(ConnectionFailed, match=f"no broker at 127.0.0.1:{port}"):
        turbine.connect(f"127.0.0.1:{port}")


def test_calls_after_close_fail_clearly(address):
    tb = turbine.connect(address)
    tb.close()
    with pytest.raises(ConnectionFailed, match="the client is closed"):
        tb.list_sources()
    tb.close()  # closing twice is harmless


def test_a_broker_going_away_ends_subscriptions_with_an_error():
    ready: queue.Queue[tuple[str, int]] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve_turbine, BrokerConfig(host="127.0.0.1", port=0))
            ready.put(addresses[0])
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    host, port = ready.get(timeout=10)
    with turbine.connect(f"{host}:{port}") as tb:
        with tb.subscribe("*/*") as items:
            stop.set()
            thread.join(10)
            with pytest.raises(ConnectionFailed):
                next(items)
        with pytest.raises(ConnectionFailed):
            tb.list_sources()


def test_a_reconnecting_script_spools_to_its_spool_dir_while_the_broker_is_away(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(turbine._client_link, "SPOOL_MEMORY_BYTES", 4)  # one frame in memory
    spool_dir = tmp_path / "spool"

    def serve(port: int, ready: queue.Queue, control: dict) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(
                    serve_turbine, BrokerConfig(host="127.0.0.1", port=port)
                )
                control["stop"] = nursery.cancel_scope.cancel
                control["token"] = trio.lowlevel.current_trio_token()
                ready.put(addresses[0][1])

        trio.run(main)

    def start(port: int = 0) -> tuple[threading.Thread, dict, int]:
        ready: queue.Queue[int] = queue.Queue()
        control: dict[str, object] = {}
        thread = threading.Thread(target=serve, args=(port, ready, control), daemon=True)
        thread.start()
        return thread, control, ready.get(timeout=10)

    def stop(thread: threading.Thread, control: dict) -> None:
        trio.from_thread.run_sync(control["stop"], trio_token=control["token"])
        thread.join(10)

    thread, control, port = start()
    address = f"127.0.0.1:{port}"
    with turbine.connect(address, name="script", reconnect=True, spool_dir=spool_dir) as tb:
        src = tb.open_source(SRC, {"x": "text/plain"})
        src.put("x", b"1", 1001.0)
        tb.flush()
        stop(thread, control)
        for i in range(2, 7):
            src.put("x", b"%d" % i, 1000.0 + i)
        with pytest.raises(turbine.BrokerUnavailable, match="still spooled"):
            tb.flush(timeout=0.05)
        (path,) = spool_dir.iterdir()
        assert path.stat().st_size > 0  # past its memory the spool went on in the file
        thread, control, _ = start(port)  # a new broker on the same port (memory only)
        tb.flush(timeout=20)
        got = tb.fetch(f"{SRC}/x", oldest=100)
    stop(thread, control)
    assert [(f.data, f.timestamp) for f in got] == [(b"%d" % i, 1000.0 + i) for i in range(2, 7)]
    assert not path.exists()
