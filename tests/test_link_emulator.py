"""The link emulator the network-boundary tests use where the kernel has no
``tc netem``: its schedule on its own (plain, synchronous), then the real thing
between two network namespaces (as root), measured from the sockets' side.
"""

from __future__ import annotations

import hashlib
import random
import socket
import statistics
import struct
import time

import pytest

from tests.link_emulator import Direction, Shape, _answer
from tests.netns import Link, emulate, probe, socket_in


def direction(**shape: float) -> Direction:
    return Direction(Shape(**shape), random.Random(7))


STEP = 0.0001  # the schedule's clock ticks every 0.1 ms here


def run(d: Direction, count: int, every: int) -> tuple[list[float], list[int]]:
    """Offer ``count`` packets, one each ``every`` ticks; how long each was held,
    and the order they left in."""
    offered = [i * every * STEP for i in range(count)]
    left: dict[int, float] = {}
    for tick in range(count * every + int(1.0 / STEP)):
        now = tick * STEP
        if tick % every == 0 and tick // every < count:
            d.offer(b"%d" % (tick // every), now)
        for packet in d.due(now):
            left[int(packet)] = now
    assert sorted(left) == list(range(count))
    return [left[i] - offered[i] for i in range(count)], sorted(left, key=lambda i: (left[i], i))


def test_each_packet_is_held_for_its_delay_give_or_take_the_jitter():
    d = direction(delay=0.020, jitter=0.005)
    held, order = run(d, 2000, every=2)  # 5,000 packets/s for 0.4 s
    assert min(held) >= 0.015 - 1e-9
    assert max(held) <= 0.025 + STEP + 1e-9
    assert 0.019 < statistics.mean(held) < 0.021  # uniform around the delay
    assert statistics.pstdev(held) > 0.002  # uniform +-5 ms: 2.9 ms
    assert order != sorted(order)  # jitter larger than the gap reorders, as netem does


def test_in_order_the_jitter_never_lets_a_packet_overtake():
    d = direction(delay=0.020, jitter=0.005, in_order=True)
    held, order = run(d, 2000, every=2)
    assert order == sorted(order)
    assert min(held) >= 0.015 - 1e-9


def test_random_loss_drops_about_the_given_share_and_counts_it():
    d = direction(delay=0.001, loss=0.01)
    for i in range(20_000):
        d.offer(b"x", i * 0.001)
        d.due(i * 0.001)
    d.due(100.0)
    counts = d.counts
    assert counts.offered == 20_000
    assert counts.sent + counts.lost == 20_000
    assert 150 <= counts.lost <= 250  # 1 %: 200, sd 14
    nothing = direction(delay=0.001, loss=0.0)
    everything = direction(delay=0.001, loss=1.0)
    for each in (nothing, everything):
        for _ in range(100):
            each.offer(b"x", 0.0)
        each.due(1.0)
    assert (nothing.counts.sent, nothing.counts.lost) == (100, 0)
    assert (everything.counts.sent, everything.counts.lost) == (0, 100)


def test_more_than_the_limit_held_at_once_is_dropped_as_overflow():
    d = direction(delay=0.010, limit=1000)
    for _ in range(1500):
        d.offer(b"x", 0.0)
    assert d.next_due() == pytest.approx(0.010)
    assert d.due(0.009) == []
    assert len(d.due(0.010)) == 1000
    assert (d.counts.overflow, d.counts.sent) == (500, 1000)
    d.offer(b"y", 0.020)  # room again
    assert d.due(0.030) == [b"y"]


def test_a_cut_drops_what_is_on_its_way_and_all_until_mended():
    d = direction(delay=0.010)
    d.offer(b"a", 0.0)
    d.offer(b"b", 0.001)
    d.cut()
    d.offer(b"c", 0.002)
    assert d.due(1.0) == [] and d.next_due() is None
    d.mend()
    d.offer(b"d", 1.0)
    assert d.due(1.010) == [b"d"]
    assert (d.counts.cut, d.counts.sent) == (3, 1)


def test_a_cut_one_way_leaves_the_other_way_and_a_mend_mends_both(capsys):
    ways = (direction(delay=0.010), direction(delay=0.010))
    _answer("cut b_to_a", ways)
    assert [w.is_cut for w in ways] == [False, True]
    _answer("cut", ways)
    assert [w.is_cut for w in ways] == [True, True]
    _answer("mend", ways)
    assert [w.is_cut for w in ways] == [False, False]
    _answer("cut sideways", ways)
    assert [w.is_cut for w in ways] == [False, False]
    assert "unknown command 'cut sideways'" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize(
    ("shape", "wrong"),
    [
        ({"delay": 0.01, "jitter": 0.02}, "jitter 0.02 s is more than the delay 0.01 s"),
        ({"delay": 0.01, "loss": 1.5}, "'loss' must be <= 1.0"),
        ({"delay": -1.0}, "'delay' must be >= 0.0"),
        ({"delay": 0.01, "limit": 0}, "'limit' must be > 0"),
    ],
)
def test_a_shape_that_cannot_be_is_refused_saying_what_is_wrong(shape, wrong):
    with pytest.raises(ValueError, match=wrong):
        Shape(**shape)


# -- between two network namespaces, as root --------------------------------

DELAY, JITTER = 0.020, 0.005
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: a receive buffer above rmem_max, as root


@pytest.fixture
def link(link: Link) -> Link:
    """The namespaces, where the emulator can make its TUN devices in them."""
    if probe().tun_missing:
        pytest.skip(f"the link emulator cannot make TUN devices here: {probe().tun_missing}")
    return link


def pair(link: Link) -> tuple[socket.socket, socket.socket]:
    """A UDP socket in A and one in B bound to B's address, 2 s timeouts."""
    a, b = socket_in(link.a), socket_in(link.b)
    b.bind((link.addr_b, 0))
    for s in (a, b):
        s.settimeout(2.0)
    return a, b


@pytest.mark.slow
def test_a_ping_across_the_emulator_takes_the_delay_both_ways(link):
    emulate(link, "--delay", str(DELAY), "--jitter", str(JITTER), "--seed", "1")
    a, b = pair(link)
    with a, b:
        rtts = []
        for i in range(40):
            sent = time.monotonic()
            a.sendto(b"%d" % i, b.getsockname())
            data, back = b.recvfrom(100)
            b.sendto(data, back)
            assert a.recv(100) == b"%d" % i
            rtts.append(time.monotonic() - sent)
    # each way 15 to 25 ms: never under 30 ms, a spread as wide as the jitter
    assert min(rtts) >= 2 * (DELAY - JITTER)
    assert statistics.median(rtts) < 2 * (DELAY + JITTER) + 0.050  # + a loaded machine
    deciles = statistics.quantiles(rtts, n=10)
    assert deciles[-1] - deciles[0] > 0.004  # 90th - 10th percentile: 11 ms when quiet


@pytest.mark.slow
def test_the_emulator_drops_about_the_given_share_and_counts_each(link):
    # room for the whole burst, so every drop is a random one
    emu = emulate(link, "--delay", str(DELAY), "--loss", "0.01", "--limit", "5000", "--seed", "2")
    a, b = pair(link)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        for i in range(3000):
            a.sendto(b"%d" % i, b.getsockname())
        got = set()
        b.settimeout(0.5)  # the last one lands 20 ms after it was sent
        try:
            while True:
                got.add(int(b.recv(100)))
        except TimeoutError:
            pass
    counts = emu.ask("stats")["a_to_b"]
    assert counts["offered"] == 3000
    assert counts["sent"] == len(got)  # what it says it carried is what arrived
    assert counts["lost"] == 3000 - len(got) and counts["overflow"] == 0
    assert 12 <= counts["lost"] <= 55  # 1 % of 3,000: 30, sd 5.5


@pytest.mark.slow
def test_tcp_across_a_lossy_emulated_link_retransmits_and_delivers_every_byte(link):
    emu = emulate(link, "--delay", str(DELAY), "--jitter", str(JITTER), "--loss", "0.01")
    listener = socket_in(link.b, socket.SOCK_STREAM)
    sender = socket_in(link.a, socket.SOCK_STREAM)
    payload = random.Random(3).randbytes(2 << 20)
    with listener, sender:
        listener.bind((link.addr_b, 0))
        listener.listen()
        for s in (listener, sender):
            s.settimeout(10.0)
        started = time.monotonic()
        sender.connect(listener.getsockname())
        handshake = time.monotonic() - started
        receiver, _ = listener.accept()
        with receiver:
            receiver.settimeout(10.0)
            received = hashlib.sha256()
            sender.setblocking(False)
            sent = 0
            count = 0
            while count < len(payload):
                if sent < len(payload):
                    try:
                        sent += sender.send(payload[sent : sent + 65536])
                    except BlockingIOError:
                        pass
                chunk = receiver.recv(1 << 20)
                received.update(chunk)
                count += len(chunk)
            info = sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    assert received.digest() == hashlib.sha256(payload).digest()
    assert handshake >= 2 * (DELAY - JITTER)  # SYN there, SYN-ACK back
    rtt_us, total_retrans = (
        struct.unpack_from("I", info, 68)[0],
        struct.unpack_from("I", info, 100)[0],
    )
    assert rtt_us >= 2 * (DELAY - JITTER) * 1e6  # the kernel's own smoothed RTT
    assert total_retrans > 0  # the sender's kernel saw the losses and resent
    counts = emu.ask("stats")
    assert counts["a_to_b"]["lost"] > 0


@pytest.mark.slow
def test_while_cut_nothing_crosses_and_once_mended_it_does_again(link):
    emu = emulate(link, "--delay", "0.005")
    a, b = pair(link)
    with a, b:
        emu.cut()
        for i in range(50):
            a.sendto(b"%d" % i, b.getsockname())
        b.settimeout(0.3)
        with pytest.raises(TimeoutError):
            b.recv(100)
        assert emu.ask("stats")["a_to_b"]["cut"] == 50
        emu.mend()
        b.settimeout(2.0)
        a.sendto(b"after", b.getsockname())
        assert b.recv(100) == b"after"
