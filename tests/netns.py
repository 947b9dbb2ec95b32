"""Two network namespaces joined by a veth pair, and a delayed, lossy path
between them: the network boundary of the mirror tests and of the link
emulator's own tests.

Needs root (``ip netns``); :func:`probe` says why namespaces cannot be made
where they cannot, for a skip (the ``link`` fixture in ``tests/conftest.py``
does that).  Delay and loss come from ``tc netem`` on the veth ends where the
kernel has netem, and from ``tests/link_emulator.py`` otherwise: then each namespace routes the other's
veth address through a TUN device the emulator owns, so the addresses (and
everything a test does with them) are the same either way.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from tests.link_emulator import enter_namespace
from tests.test_cli import read_line, stop

EMULATOR = Path(__file__).with_name("link_emulator.py")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@attrs.frozen
class Probe:
    """Why network namespaces cannot be made here, why ``tc netem`` cannot be
    used in them, and why the link emulator cannot make its TUN devices in
    them; each None where it can."""

    why_not: str | None
    netem_missing: str | None = None
    tun_missing: str | None = None

    @property
    def shaper(self) -> str:
        """What adds delay and loss to the link here, for the tests to say."""
        if self.netem_missing is None:
            return "tc netem"
        return "link emulator" if self.tun_missing is None else "nothing"

    @property
    def why_no_shaper(self) -> str | None:
        """Why neither can delay and drop packets here; None where one can."""
        if self.netem_missing is None or self.tun_missing is None:
            return None
        return (
            f"no way to delay and drop packets here: tc netem: {self.netem_missing};"
            f" TUN devices for the link emulator: {self.tun_missing}"
        )


def _in(namespace: str, *cmd: str) -> str | None:
    """Why ``cmd`` failed in ``namespace``; None if it did not."""
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *cmd], capture_output=True, text=True, timeout=10
        )
    except FileNotFoundError:
        return f"{cmd[0]} is not installed"
    return (done.stderr.strip() or f"{cmd[0]} failed") if done.returncode else None


@functools.cache
def probe() -> Probe:
    """What this machine allows, found out once (in a namespace made and deleted for it)."""
    if os.geteuid() != 0:
        return Probe("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        return Probe("ip is not installed (Debian: iproute2)")
    name = f"tbprobe{os.getpid()}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        return Probe(f"ip netns add is not allowed here: {made.stderr.strip()}")
    try:
        return Probe(
            None,
            _in(name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"),
            _in(name, "ip", "tuntap", "add", "dev", "tbprobe", "mode", "tun"),
        )
    finally:
        _ip("netns", "del", name)  # and the probe's devices with it


@attrs.define
class Link:
    """Namespaces ``a`` and ``b``; the veth ends ``dev_a`` (``addr_a``) and ``dev_b`` (``addr_b``)."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    procs: list[subprocess.Popen[str]] = attrs.field(factory=list)

    def run(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=60
        )

    def check(self, ns: str, *cmd: str) -> str:
        done = self.run(ns, *cmd)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
        return done.stdout

    def start(self, ns: str, *cmd: str, stdin: bool = False) -> subprocess.Popen[str]:
        """``cmd`` running in namespace ``ns`` (its stdin a pipe, if asked),
        stopped when the link goes."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def shape(self, *qdisc: str) -> subprocess.CompletedProcess[str]:
        """Put ``qdisc`` on both ends (each direction of the link)."""
        done = self.run(self.a, "tc", "qdisc", "replace", "dev", self.dev_a, "root", *qdisc)
        if done.returncode == 0:
            self.check(self.b, "tc", "qdisc", "replace", "dev", self.dev_b, "root", *qdisc)
        return done

    def cut(self, up: bool) -> None:
        self.check(self.a, "ip", "link", "set", self.dev_a, "up" if up else "down")


@contextmanager
def joined_namespaces() -> Iterator[Link]:
    """Two new namespaces joined by a veth pair (10.77.N.1 in ``a``, .2 in
    ``b``), loopback up in each; deleted, with every process started in them,
    on the way out.  Call only where ``probe().why_not`` is None."""
    tag = f"{os.getpid() % 100000}"
    net = f"10.77.{os.getpid() % 250}"
    link = Link(f"tbA{tag}", f"tbB{tag}", f"tva{tag}", f"tvb{tag}", f"{net}.1", f"{net}.2")
    try:
        for ns in (link.a, link.b):
            assert _ip("netns", "add", ns).returncode == 0
        pair = _ip("link", "add", link.dev_a, "type", "veth", "peer", "name", link.dev_b)
        assert pair.returncode == 0, pair.stderr
        for dev, ns, addr in ((link.dev_a, link.a, link.addr_a), (link.dev_b, link.b, link.addr_b)):
            assert _ip("link", "set", dev, "netns", ns).returncode == 0
            link.check(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            link.check(ns, "ip", "link", "set", dev, "up")
            link.check(ns, "ip", "link", "set", "lo", "up")
        yield link
    finally:
        for proc in link.procs:
            stop(proc)
        for ns in (link.a, link.b):
            _ip("netns", "del", ns)  # deletes the veth ends with it


@attrs.define
class Emulator:
    """A running ``tests/link_emulator.py`` between the two namespaces."""

    proc: subprocess.Popen[str]

    def ask(self, command: str) -> dict[str, object]:
        """Send one command (cut, mend, stats) and return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(read_line(self.proc.stdout))

    def cut(self) -> None:
        self.ask("cut")

    def mend(self) -> None:
        self.ask("mend")


def emulate(link: Link, *options: str) -> Emulator:
    """Route each namespace's traffic for the other's veth address through the
    link emulator, started with ``options`` (``--delay 0.02 --loss 0.01`` ...).
    It stops with the link."""
    tun_a, tun_b = f"tua{link.dev_a[3:]}", f"tub{link.dev_b[3:]}"
    proc = subprocess.Popen(
        [sys.executable, str(EMULATOR), f"{link.a}:{tun_a}", f"{link.b}:{tun_b}", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    link.procs.append(proc)
    line = read_line(proc.stdout)
    if line != "ready\n":
        stop(proc)
        raise AssertionError(f"link emulator did not start: {line}{proc.stderr.read()}")
    for ns, tun, far, near in (
        (link.a, tun_a, link.addr_b, link.addr_a),
        (link.b, tun_b, link.addr_a, link.addr_b),
    ):
        # the kernel's queue into the emulator holds what comes while the
        # emulator waits for a CPU (500 by default): drops are its own to make
        link.check(ns, "ip", "link", "set", tun, "up", "txqueuelen", "10000")
        link.check(ns, "ip", "route", "add", f"{far}/32", "dev", tun, "src", near)
    return Emulator(proc)


def socket_in(namespace: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A new IPv4 socket in network namespace ``namespace``, usable from any
    thread: it is made on a short-lived thread of its own, the only part of this
    process that ever enters the namespace."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            enter_namespace(namespace)
            made.append(socket.socket(socket.AF_INET, kind))
        except BaseException as e:  # handed to the caller below
            made.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]
