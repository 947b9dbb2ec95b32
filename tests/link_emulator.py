"""A network link between two network namespaces, emulated in user space.

Where the kernel has ``tc netem`` the tests shape a veth pair with it; where it
has not (built without ``CONFIG_NET_SCH_NETEM``), this process is the link
instead.  It owns one TUN device in each namespace and carries the IP packets
the kernel routes into one device out of the other, each after a one-way delay
(``delay`` +- ``jitter``, uniform, drawn per packet) and with independent random
loss, as netem does on each end of a veth pair.  Both kernels' TCP stacks see a
real lossy, delayed path: they retransmit, time out and back off as they would
on a long-distance line.

Run as root, from any namespace::

    python tests/link_emulator.py NS_A:DEV_A NS_B:DEV_B --delay 0.02 --jitter 0.005 --loss 0.01

It makes the two devices (down, without addresses, IPv6 off: the caller
configures them, see ``tests/netns.py``), prints ``ready`` and then answers commands on stdin,
one line each, with one line of JSON:

``cut``
    drop every packet, and those on their way, until ``mend`` (a cable cut:
    neither kernel is told); ``cut a_to_b`` or ``cut b_to_a``: one way only
``mend``
    carry packets again
``stats``
    what each direction did with the packets it was given (see ``Counts``)

End of stdin ends it, and the devices go with it.  The schedule (:class:`Direction`)
is sans-I/O and tested on its own; the loop around it only moves bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import selectors
import struct
import sys
import time

import attrs

# <linux/if_tun.h>, <sched.h>
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
# The most an IPv4 packet can be, so a read never truncates one.
_MAX_PACKET = 65_535
# Packets read from one device before the loop looks at the clock again: a burst
# must not hold back packets that are due the other way.
_READ_BATCH = 64


@attrs.frozen
class Shape:
    """What one direction of the link does to a packet.

    ``delay`` and ``jitter`` are seconds: each packet is held for a time drawn
    uniformly from ``delay - jitter`` to ``delay + jitter``, so with jitter
    later packets can overtake earlier ones, as with netem (``in_order`` keeps
    them in order instead).  ``loss`` is the chance, from 0 to 1, that a packet
    is dropped.  At most ``limit`` packets are held at once; more are dropped
    (netem's default limit is also 1,000).
    """

    delay: float = attrs.field(validator=attrs.validators.ge(0.0))
    jitter: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    loss: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    limit: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    in_order: bool = False

    @jitter.validator
    def _check_jitter(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value > self.delay:
            raise ValueError(f"jitter {value} s is more than the delay {self.delay} s")


@attrs.define
class Counts:
    """Packets one direction was given (``offered``) and what became of each:
    ``sent`` on, ``lost`` at random, dropped because ``limit`` were held
    (``overflow``) or because the link was ``cut``.  Those still held are the
    rest."""

    offered: int = 0
    sent: int = 0
    lost: int = 0
    overflow: int = 0
    cut: int = 0


@attrs.define
class Direction:
    """One direction of the link, sans I/O: packets go in with :meth:`offer`
    and come out of :meth:`due` once their time has come."""

    shape: Shape
    rng: random.Random
    counts: Counts = attrs.field(factory=Counts)
    is_cut: bool = False
    _held: list[tuple[float, int, bytes]] = attrs.field(factory=list)  # a heap
    _order: int = 0  # ties on the same time leave in arrival order
    _last: float = float("-inf")  # the latest time given, for ``in_order``

    def offer(self, packet: bytes, now: float) -> None:
        """Take ``packet``, read at ``now``: hold it for its delay, or drop it."""
        counts = self.counts
        counts.offered += 1
        if self.is_cut:
            counts.cut += 1
            return
        shape = self.shape
        if shape.loss and self.rng.random() < shape.loss:
            counts.lost += 1
            return
        if len(self._held) >= shape.limit:
            counts.overflow += 1
            return
        leave = now + shape.delay
        if shape.jitter:
            leave += self.rng.uniform(-shape.jitter, shape.jitter)
        if shape.in_order:
            leave = self._last = max(leave, self._last)
        self._order += 1
        heapq.heappush(self._held, (leave, self._order, packet))

    def due(self, now: float) -> list[bytes]:
        """The packets whose time is ``now`` or earlier, in the order they leave."""
        held = self._held
        out: list[bytes] = []
        while held and held[0][0] <= now:
            out.append(heapq.heappop(held)[2])
        self.counts.sent += len(out)
        return out

    def next_due(self) -> float | None:
        """When the next held packet leaves; None when none is held."""
        return self._held[0][0] if self._held else None

    def cut(self) -> None:
        """Drop what is held and everything offered until :meth:`mend`."""
        self.is_cut = True
        self.counts.cut += len(self._held)
        self._held.clear()

    def mend(self) -> None:
        self.is_cut = False


def enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (the whole
    process, when it has one thread): sockets and devices it makes from then on
    are made there."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python 3.12
            os.setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(namespace: str, device: str) -> int:
    """A new TUN device ``device`` in ``namespace``, as a non-blocking file
    descriptor that reads and writes whole IP packets (no extra header).  The
    device exists while the descriptor is open.

    Raises:
        OSError: not root, no such namespace, no /dev/net/tun, or the name is taken.
    """
    enter_namespace(namespace)  # a TUN device is made in the opener's namespace
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", device.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    # no IPv6 of its own (link-local address, router solicitations): only what
    # the caller routes into the device crosses the link, and is counted
    ipv6 = f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6"  # this namespace's
    if os.path.exists(ipv6):
        with open(ipv6, "w") as f:
            f.write("1")
    return fd


def carry(fds: tuple[int, int], directions: tuple[Direction, Direction], control: int) -> None:
    """Move packets between the two TUN descriptors (``directions[0]`` from the
    first to the second) and answer commands read from ``control`` on stdout,
    until ``control`` ends."""
    selector = selectors.DefaultSelector()
    for side, fd in enumerate(fds):
        selector.register(fd, selectors.EVENT_READ, side)
    selector.register(control, selectors.EVENT_READ, None)
    pending = b""
    while True:
        now = time.monotonic()
        wake: float | None = None
        for side, direction in enumerate(directions):
            for packet in direction.due(now):
                try:
                    os.write(fds[1 - side], packet)
                except OSError:  # the far device is down: the packet is lost
                    pass
            at = direction.next_due()
            if at is not None and (wake is None or at < wake):
                wake = at
        timeout = None if wake is None else max(0.0, wake - time.monotonic())
        for key, _ in selector.select(timeout):
            if key.data is None:
                chunk = os.read(control, 4096)
                if not chunk:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _answer(line.decode().strip(), directions)
                continue
            direction = directions[key.data]
            for _ in range(_READ_BATCH):
                try:
                    packet = os.read(key.fd, _MAX_PACKET)
                except BlockingIOError:
                    break
                direction.offer(packet, time.monotonic())


def _answer(command: str, directions: tuple[Direction, Direction]) -> None:
    names = ("a_to_b", "b_to_a")
    verb, _, way = command.partition(" ")
    chosen = [d for name, d in zip(names, directions, strict=True) if way in ("", name)]
    if verb == "cut" and chosen:
        for direction in chosen:
            direction.cut()
    elif command == "mend":
        for direction in directions:
            direction.mend()
    elif command != "stats":
        print(
            json.dumps(
                {"error": f"unknown command {command!r}: cut [a_to_b|b_to_a], mend or stats"}
            ),
            flush=True,
        )
        return
    reply = {name: attrs.asdict(d.counts) for name, d in zip(names, directions, strict=True)}
    reply["cut"] = directions[0].is_cut
    print(json.dumps(reply), flush=True)


def _end(text: str) -> tuple[str, str]:
    namespace, sep, device = text.partition(":")
    if not (sep and namespace and device) or len(device.encode()) > 15:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAMESPACE:DEVICE (a device name of at most 15 bytes)"
        )
    return namespace, device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=_end, help="NAMESPACE:DEVICE of one end")
    parser.add_argument("b", type=_end, help="NAMESPACE:DEVICE of the other end")
    parser.add_argument("--delay", type=float, required=True, help="one-way delay, seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="+- seconds, uniform")
    parser.add_argument("--loss", type=float, default=0.0, help="chance of a drop, 0 to 1")
    parser.add_argument("--limit", type=int, default=1000, help="packets held per direction")
    parser.add_argument("--in-order", action="store_true", help="no overtaking under jitter")
    parser.add_argument("--seed", type=int, default=None, help="the same drops and delays")
    args = parser.parse_args(argv)
    try:
        shape = Shape(args.delay, args.jitter, args.loss, args.limit, args.in_order)
    except ValueError as e:
        parser.error(str(e))
    seed = random.Random(args.seed)
    directions = (
        Direction(shape, random.Random(seed.random())),
        Direction(shape, random.Random(seed.random())),
    )
    try:
        fds = (open_tun(*args.a), open_tun(*args.b))
    except OSError as e:
        sys.exit(f"link_emulator: cannot make the TUN devices: {e}")
    print("ready", flush=True)
    carry(fds, directions, sys.stdin.fileno())


if __name__ == "__main__":
    main()
