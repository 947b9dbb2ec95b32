"""A client notices a link cut silently (turbine/_liveness.py) and connects
again promptly when it is back.

The rule is tested on its own (sans-I/O); the client's use of it over a real
broker on loopback, through a :class:`Cable` that can be cut: while cut it
moves no byte either way and answers nothing, as a pulled cable.  The kernel
of this machine still acknowledges what reaches the cable, so here the
client's view of the kernel (``heard_ago``) is the cable's: the time since it
last moved bytes of that connection.  Virtual time throughout (autojump_clock).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import socket

import attrs
import pytest
import trio

import turbine._liveness
import turbine.connection
from turbine import BrokerConfig, ConnectionFailed, TurbineError, open_client
from turbine._address import connect_stream
from turbine._constants import LIVENESS_S, REMOTE_KEEPALIVE_IDLE_S
from turbine._keepalive import RemoteLiveness
from turbine._liveness import (
    CONNECT_ATTEMPT_S,
    Liveness,
    Verdict,
    connect_within,
    heard_ago,
    liveness_timeout,
    unacknowledged,
)
from turbine.mirror import MirrorConfig, run_mirror
from turbine.server import Broker
from turbine.testing import start_broker

LIMIT = 4.0
PATH = "daq_rig_data_source/x"


def test_a_waiting_connection_silent_for_half_the_limit_is_pinged_once_then_lost():
    rule = Liveness(LIMIT)
    assert rule.check(1.9, waiting=True) is Verdict.FINE
    assert rule.check(2.0, waiting=True) is Verdict.PING
    assert rule.check(3.0, waiting=True) is Verdict.FINE  # pinged already
    assert rule.check(4.0, waiting=True) is Verdict.LOST
    # heard again: the next silence gets its own ping
    assert rule.check(0.1, waiting=True) is Verdict.FINE
    assert rule.check(2.5, waiting=True) is Verdict.PING


def test_a_connection_that_waits_for_nothing_or_cannot_tell_is_never_lost():
    rule = Liveness(LIMIT)
    assert rule.check(100.0, waiting=False) is Verdict.FINE
    assert rule.check(None, waiting=True) is Verdict.FINE


async def test_the_kernel_says_how_long_ago_it_heard_from_the_peer():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    with trio.fail_after(5):
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    with client, server, listener:
        ago = heard_ago(client)
        if not hasattr(socket, "TCP_INFO"):
            assert ago is None  # the check is off here
            return
        assert ago is not None and 0 <= ago < 1.0
    assert heard_ago(client) is None  # closed
    assert not unacknowledged(client)  # (data left unacknowledged: tests/test_liveness_netns.py)


def keepalive_of(sock: socket.socket) -> tuple[int, ...] | None:
    """TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT of ``sock``; None without keepalive."""
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        return None
    names = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")
    return tuple(sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, n)) for n in names)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="TCP keepalive times are Linux's")
def test_the_broker_has_tcp_probe_a_silent_connection_from_another_host():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    with a, b:
        assert keepalive_of(a) is None
        RemoteLiveness().keep_alive(a)
        assert keepalive_of(a) == (REMOTE_KEEPALIVE_IDLE_S, 1, 3)
        RemoteLiveness(
            keepalive_idle=30, keepalive_interval=5, keepalive_probes=9, holder_silence=40
        ).keep_alive(b)
        assert keepalive_of(b) == (30, 5, 9)
        with socket.socket() as c:
            RemoteLiveness(keepalive_idle=0, holder_silence=0).keep_alive(c)
            assert keepalive_of(c) is None  # off
    RemoteLiveness().keep_alive(b)  # closed: nothing to do, no error


@pytest.mark.parametrize(
    ("given", "refused"),
    [
        ({"keepalive_idle": -1}, "'keepalive_idle': expected whole seconds, 0 to 32767"),
        ({"keepalive_idle": 2.5}, "'keepalive_idle': expected whole seconds"),
        ({"keepalive_interval": 0}, "'keepalive_interval': expected whole seconds, 1 to 32767"),
        ({"keepalive_probes": 128}, "'keepalive_probes': expected whole probes, 1 to 127"),
        ({"holder_silence": -1.0}, "'holder_silence': expected seconds, 0 or more"),
        ({"holder_silence": float("inf")}, "'holder_silence': expected seconds, 0 or more"),
        (
            {"keepalive_idle": 3, "keepalive_interval": 2, "holder_silence": 5.0},
            "'holder_silence': expected more than 'keepalive_idle' + 'keepalive_interval' (5 s)",
        ),
        ({"keepalive_idle": 0}, "'holder_silence': expected 0 with 'keepalive_idle' 0"),
    ],
)
def test_keepalive_and_holder_silence_that_cannot_work_are_refused_saying_why(given, refused):
    with pytest.raises(ValueError, match=re.escape(refused)):
        RemoteLiveness(**given)
    assert RemoteLiveness(keepalive_idle=0, holder_silence=0).holder_silence == 0  # both off


async def test_a_connection_from_another_host_gets_the_brokers_keepalive_and_holder_silence(
    nursery, monkeypatch
):
    remote = RemoteLiveness(
        keepalive_idle=7, keepalive_interval=2, keepalive_probes=4, holder_silence=12
    )
    monkeypatch.setattr(turbine.connection, "is_loopback", lambda host: False)
    for config, probes, gone_after in (
        (remote, (7, 2, 4), 12),
        (RemoteLiveness(2, 1, 1, 0), (2, 1, 1), None),
    ):
        broker = Broker(BrokerConfig(host="127.0.0.1", port=0, remote=config))
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, broker.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            async with open_client(f"127.0.0.1:{port}", name="far"):
                (conn,) = broker.connections.values()
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert keepalive_of(conn.stream.socket) == probes
                peer = conn.peer
                assert (peer.gone_after if peer.silent else None) == gone_after
                assert broker.status()["remote"] == attrs.asdict(config)


async def test_a_connect_nothing_answers_is_tried_afresh_and_made_once_answered(autojump_clock):
    answered_at = 10.0
    attempts: list[float] = []

    async def connect() -> str:
        attempts.append(trio.current_time())
        await trio.sleep_until(max(answered_at, trio.current_time()))
        # a SYN sent before the link came back is resent by the kernel after 1 s
        if attempts[-1] < answered_at - 1:
            await trio.sleep_forever()
        return "connected"

    start = trio.current_time()
    assert await connect_within(30, connect) == "connected"
    took = trio.current_time() - start
    assert answered_at <= took <= answered_at + 1.0
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps and max(gaps) <= CONNECT_ATTEMPT_S + 1e-9
    with pytest.raises(trio.TooSlowError):
        await connect_within(5, trio.sleep_forever)


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (errno.ENETUNREACH, "cannot reach h:1 (Network is unreachable): check the network"),
        (errno.EHOSTUNREACH, "cannot reach h:1 (No route to host): check the network"),
        (socket.gaierror(-3, "Temporary failure in name resolution"), "cannot reach h:1 (Temp"),
        (
            errno.ECONNREFUSED,
            "no broker at h:1 (connection refused); start one with 'turbine serve'",
        ),
    ],
)
async def test_a_connect_that_fails_says_whether_no_broker_listens_or_the_host_is_not_reached(
    monkeypatch, failure, said
):
    """A laptop off its Wi-Fi is told to check the network, not to start a broker."""

    async def open_tcp_stream(host, port):
        if isinstance(failure, OSError):
            raise failure  # (as trio does for a name it cannot resolve)
        error = OSError(failure, f"Error connecting to {(host, port)}: {os.strerror(failure)}")
        group = ExceptionGroup(f"all attempts to connect to {host}:{port} failed", [error])
        raise OSError(f"all attempts to connect to {host}:{port} failed") from group

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)
    with pytest.raises(ConnectionFailed) as info:
        await connect_stream("h:1", 5)
    assert said in str(info.value)


def closed_port(host: str) -> int:
    """A port of ``host`` bound by nobody's listener (a connect to it is refused)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_ip_address_is_connected_to_directly_and_its_refusal_is_told(monkeypatch, host):
    # No name lookup and no racing of addresses for a literal: trio.open_tcp_stream
    # is for names.
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    async def open_tcp_stream(*args, **kwargs):
        raise AssertionError("an IP address needs no lookup")

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)
    address = f"[{host}]" if ":" in host else host
    listener = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    with trio.fail_after(10), listener:
        try:
            await listener.bind((host, 0))
        except OSError as exc:
            pytest.skip(f"cannot bind {host}: {exc}")
        listener.listen()
        port = listener.getsockname()[1]
        stream = await connect_stream(f"{address}:{port}", 5)
        async with stream:
            assert stream.socket.getpeername()[:2] == (host, port)
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        port = closed_port(host)
        with pytest.raises(
            ConnectionFailed, match=re.escape(f"no broker at {address}:{port} (con")
        ):
            await connect_stream(f"{address}:{port}", 5)


class Cable:
    """A TCP relay to ``target`` (HOST:PORT) that can be cut and mended.

    What is sent into a cut is lost, and the connection with it: the cuts here
    outlast the client's liveness, which gives it up.  A connection that lived
    through a cut ends at the broker only ``linger`` s after the mend: the
    broker's TCP learns of it only when it next resends (or probes)."""

    linger = 0.0

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.whole = trio.Event()
        self.whole.set()
        #: When bytes of each connection last moved, by the client's port.
        self.moved: dict[int, float] = {}
        #: The client's port of each connection, by the cable's port at the broker.
        self.client_of: dict[int, int] = {}
        self.cuts = 0

    def cut(self) -> None:
        self.whole = trio.Event()
        self.cuts += 1

    def mend(self) -> None:
        self.whole.set()

    def heard_ago(self, sock) -> float | None:
        """What the client's kernel would say: silence since bytes last moved."""
        try:
            port = sock.getsockname()[1]
        except OSError:
            return None
        return trio.current_time() - self.moved.get(port, trio.current_time())

    def broker_heard_ago(self, sock) -> float | None:
        """What the broker's kernel would say of its end of a connection through
        the cable (the kernel's own answer for any other)."""
        try:
            port = self.client_of.get(sock.getpeername()[1])
        except OSError:
            return None
        if port is None:
            return heard_ago(sock)
        return trio.current_time() - self.moved[port]

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, near: trio.SocketStream) -> None:
        port = near.socket.getpeername()[1]
        self.moved[port] = trio.current_time()
        await self.whole.wait()  # a connect while cut: no hello comes
        far = await trio.open_tcp_stream(self.host, self.port)
        self.client_of[far.socket.getsockname()[1]] = port
        cuts = self.cuts
        async with near, far:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, near, far, port, nursery.cancel_scope)
                nursery.start_soon(self._pump, far, near, port, nursery.cancel_scope)
            if self.cuts != cuts:  # it lived through a cut
                await self.whole.wait()
                await trio.sleep(self.linger)  # its end at the broker is still open

    async def _pump(self, src, dst, port, scope) -> None:
        try:
            async for chunk in src:
                if not self.whole.is_set():
                    break  # lost in the cut; the connection is too (cuts outlast liveness here)
                await dst.send_all(chunk)
                self.moved[port] = trio.current_time()
        except trio.BrokenResourceError:
            pass
        scope.cancel()


@pytest.fixture
async def cable(nursery, broker, monkeypatch) -> tuple[Cable, str]:
    cable = Cable(broker)
    monkeypatch.setattr(turbine._liveness, "heard_ago", cable.heard_ago)
    return cable, await nursery.start(cable.serve)


async def produce(broker: str, every: float, stop: trio.Event, task_status) -> None:
    """Put a frame every ``every`` s (its data: its put time) until ``stop``."""
    async with open_client(broker, name="daq") as tb:
        src = await tb.open_source("daq_rig_data_source")
        task_status.started()
        while not stop.is_set():
            await src.put("x", repr(trio.current_time()).encode())
            await tb.flush()
            await trio.sleep(every)


async def cut_for_10_s(relay: Cable, sub, got: list[int]) -> float:
    """Cut ``relay`` for 10 s; then add what ``sub`` reads to ``got`` up to the first
    frame put after the mend (its data: its put time); return how long after the mend."""
    relay.cut()
    await trio.sleep(10)
    relay.mend()
    mended = trio.current_time()
    with trio.fail_after(30):
        while True:
            batch = await sub.receive_batch()
            got += [f.seq for f in batch]
            if any(float(bytes(f.data)) >= mended for f in batch):
                return trio.current_time() - mended


async def test_a_subscription_over_a_link_cut_silently_fails_within_the_limit(
    cable, broker, nursery, autojump_clock
):
    _, address = cable[0], cable[1]
    stop = trio.Event()
    await nursery.start(produce, broker, 0.1, stop)
    async with open_client(address, name="watch", liveness=LIMIT) as tb:
        async with tb.subscribe(PATH, start=1) as sub:
            await sub.receive_batch()
            cable[0].cut()
            cut = trio.current_time()
            with trio.fail_after(60), pytest.raises(ConnectionFailed, match="nothing heard"):
                while True:
                    await sub.receive_batch()
            took = trio.current_time() - cut
    stop.set()
    assert LIMIT <= took <= LIMIT * 1.25 + 0.2, took


async def test_a_reconnecting_subscriber_is_back_within_a_second_of_the_mend(
    cable, broker, nursery, autojump_clock
):
    relay, address = cable
    stop = trio.Event()
    await nursery.start(produce, broker, 0.1, stop)
    async with open_client(address, name="watch", reconnect=True, liveness=LIMIT) as tb:
        async with tb.subscribe(PATH, start=1) as sub:
            got: list[int] = []
            got += [f.seq for f in await sub.receive_batch()]
            back = await cut_for_10_s(relay, sub, got)
        assert tb.reconnects == 1
    stop.set()
    assert got == list(range(1, len(got) + 1))  # nothing lost, nothing twice
    assert back <= 1.0, back


async def test_an_idle_subscription_over_a_working_link_is_pinged_and_kept(
    cable, nursery, autojump_clock
):
    _, address = cable
    async with open_client(address, name="watch", liveness=LIMIT) as tb:
        async with tb.subscribe(PATH, start="now"):
            await trio.sleep(60)  # nothing put: only the pings' answers come
            assert await tb.time()  # still connected


async def produce_through_a_cut(
    relay: Cable, address: str, broker: str, nursery
) -> tuple[float, list[int], int]:
    """A reconnecting producer through ``relay`` (at ``address``), read straight
    from ``broker``, across :func:`cut_for_10_s`: how long after the mend a frame
    put after it was read, every frame read, and how often the producer reconnected."""
    stop = trio.Event()
    async with open_client(broker, name="watch") as reader:
        async with reader.subscribe(PATH, start=1) as sub:
            async with open_client(address, name="daq", reconnect=True, liveness=LIMIT) as daq:
                src = await daq.open_source("daq_rig_data_source")

                async def produce() -> None:
                    while not stop.is_set():
                        await src.put("x", repr(trio.current_time()).encode())
                        await trio.sleep(0.1)

                nursery.start_soon(produce)
                await sub.receive_batch()
                got: list[int] = []
                back = await cut_for_10_s(relay, sub, got)
                stop.set()
                await daq.flush()
                return back, got, daq.reconnects


async def test_a_reconnecting_producer_gets_its_source_back_from_its_own_lost_connection(
    cable, broker, nursery, autojump_clock, caplog
):
    """Its reopen is refused (``held``) while the broker still has the connection
    that was cut: it tries again until that ends, and loses no frame."""
    relay, address = cable
    relay.linger = 3.0
    back, got, reconnects = await produce_through_a_cut(relay, address, broker, nursery)
    assert reconnects == 1
    assert got == list(range(got[0], got[0] + len(got)))  # nothing lost, nothing twice
    assert relay.linger <= back <= relay.linger + 1.0, (back, got)
    # each try refused meanwhile is a debug line, not a warning
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warned if "held" in w], warned


@pytest.fixture
async def far_cable(nursery, monkeypatch) -> tuple[Cable, str, str]:
    """A broker that takes the cable's connections for ones from another host
    (TCP probes them; ``holder_silence`` 3 s); the cable, its address and the
    broker's own.  A connection that lived through a cut lingers 30 s at the
    broker after the mend: its end is seen only when the sources it held have
    long been taken over."""
    remote = RemoteLiveness(keepalive_idle=1, keepalive_interval=1, holder_silence=3.0)
    broker = await start_broker(nursery, remote=remote)
    cable = Cable(broker)
    cable.linger = 30.0
    monkeypatch.setattr(turbine._liveness, "heard_ago", cable.heard_ago)
    monkeypatch.setattr(turbine.connection, "heard_ago", cable.broker_heard_ago)
    monkeypatch.setattr(turbine.connection, "is_loopback", lambda host: False)
    return cable, await nursery.start(cable.serve), broker


async def test_a_reconnecting_producer_takes_its_source_from_its_silent_connection_at_once(
    far_cable, nursery, autojump_clock
):
    """Its lost connection, silent for the broker's holder_silence, still holds the
    source: the broker gives it to the producer's reconnect, which is back within a
    second of the mend (refused as held, it would have given up after 10 s)."""
    relay, address, broker = far_cable
    back, got, _ = await produce_through_a_cut(relay, address, broker, nursery)
    assert got == list(range(got[0], got[0] + len(got)))  # nothing lost, nothing twice
    assert back <= 1.0, back


async def test_a_push_mirror_takes_its_copy_from_its_silent_connection_at_once(
    far_cable, nursery, autojump_clock
):
    """The mirror beside A puts to B through the cable.  Cut for 10 s, B still has
    the mirror's lost connection holding the copy: the mirror's next session says
    it comes back, so B gives it the copy at once, and B gets every frame once."""
    relay, through_cable, b = far_cable
    a = await start_broker(nursery)
    stop = trio.Event()
    await nursery.start(produce, a, 0.1, stop)
    await nursery.start(run_mirror, MirrorConfig(a, through_cable, ("daq_*",), poll=0.1))
    async with open_client(b, name="watch") as reader:
        async with reader.subscribe(PATH, start=1) as sub:
            got = [f.seq for f in await sub.receive_batch()]
            back = await cut_for_10_s(relay, sub, got)
    stop.set()
    assert got == list(range(1, len(got) + 1))  # nothing lost, nothing twice
    assert back <= 1.5, back


def test_the_limit_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("TURBINE_LIVENESS", raising=False)
    assert liveness_timeout(None) == LIVENESS_S
    assert liveness_timeout(2.5) == 2.5
    assert liveness_timeout(0) is None  # off
    monkeypatch.setenv("TURBINE_LIVENESS", "7")
    assert liveness_timeout(None) == 7.0
    assert liveness_timeout(1.0) == 1.0  # the argument wins
    monkeypatch.setenv("TURBINE_LIVENESS", "0")
    assert liveness_timeout(None) is None
    monkeypatch.setenv("TURBINE_LIVENESS", "soon")
    with pytest.raises(TurbineError, match="TURBINE_LIVENESS='soon' is not a number of seconds"):
        liveness_timeout(None)
