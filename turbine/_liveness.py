"""Noticing a connection whose link died silently (a pulled cable, a network
cut with no FIN or RST), and connecting again promptly once it is back.

TCP on its own notices such a link only when it gives up resending (minutes),
and after the link comes back it resends on a doubling schedule: the client
was stuck for up to ten seconds more.  Here a client's connection that waits
for something (a subscription, a reply, the acknowledgement of data it sent:
a producer that only puts) and from which the kernel has heard
nothing (no data, no acknowledgement) for half of ``timeout`` is pinged with a
request every broker answers at once (``time``); one still silent after
``timeout`` is lost.

Silence is what the kernel saw (``TCP_INFO``), not what the client read: a
broker slow to answer (a flush waiting for its disk), or a subscriber that
reads slowly, still acknowledges every segment, so neither looks dead.  Where
the kernel does not say (not Linux), the check is off.

:func:`connect_within` bounds a TCP connect: a connect to a host cut off gets
no answer to its SYN, which the kernel sends again after 1, 3, 7 s ...; a
fresh attempt every :data:`CONNECT_ATTEMPT_S` sends one at least every
second, so a connection is made within about a second of the link's return.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ._constants import LIVENESS_ENVVAR, LIVENESS_S
from ._errors import TurbineError

T = TypeVar("T")

#: One TCP connect attempt: the kernel sends the SYN at 0 s and again at 1 s;
#: the next attempt sends a fresh one (instead of the kernel's next, at 3 s).
CONNECT_ATTEMPT_S = 1.5
#: How often a watched connection is looked at, per ``limit``.
CHECKS_PER_TIMEOUT = 4

# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 fields; the two read
# here are tcpi_last_data_recv and tcpi_last_ack_recv, in milliseconds.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = 104
_LAST_RECV = struct.Struct("=II")
_LAST_RECV_OFFSET = 52
# tcpi_unacked (u32): segments sent and not yet acknowledged.
_UNACKED = struct.Struct("=I")
_UNACKED_OFFSET = 24


def _tcp_info(sock: Any) -> bytes | None:
    """The kernel's ``struct tcp_info`` of TCP socket ``sock``; None where it does
    not say (no ``TCP_INFO``, not TCP, or the socket is closed)."""
    if _TCP_INFO is None:
        return None
    try:
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, ValueError):
        return None
    return info


def heard_ago(sock: Any) -> float | None:
    """Seconds since the kernel last heard from the peer of TCP socket ``sock``
    (data or an acknowledgement); None where it does not say (or the socket is closed)."""
    info = _tcp_info(sock)
    if info is None or len(info) < _LAST_RECV_OFFSET + _LAST_RECV.size:
        return None
    data_ms, ack_ms = _LAST_RECV.unpack_from(info, _LAST_RECV_OFFSET)
    return min(data_ms, ack_ms) / 1000


def unacknowledged(sock: Any) -> bool:
    """Whether TCP socket ``sock`` has sent data its peer has not acknowledged
    yet (False where the kernel does not say).  A peer that stops reading (a
    zero window) has acknowledged what it got: nothing is unacknowledged then."""
    info = _tcp_info(sock)
    if info is None or len(info) < _UNACKED_OFFSET + _UNACKED.size:
        return False
    return _UNACKED.unpack_from(info, _UNACKED_OFFSET)[0] > 0


def liveness_timeout(value: float | None) -> float | None:
    """The timeout a client uses given ``open_client``'s ``liveness``: None takes
    ``TURBINE_LIVENESS`` or :data:`LIVENESS_S`; 0 (or less) turns the check off.

    Raises:
        TurbineError: ``TURBINE_LIVENESS`` is not a number.
    """
    if value is None:
        text = os.environ.get(LIVENESS_ENVVAR, "").strip()
        try:
            value = float(text) if text else LIVENESS_S
        except ValueError:
            raise TurbineError(
                f"{LIVENESS_ENVVAR}={text!r} is not a number of seconds (0 turns the check off)"
            ) from None
    return value if value > 0 else None


class Verdict:
    """What :meth:`Liveness.check` says to do (named strings: an enum class took ~0.1 ms
    of every ``open_client``)."""

    FINE = "fine"
    PING = "ping"  # silent for half the timeout: provoke an answer
    LOST = "lost"  # silent for the whole timeout: give the connection up


class Liveness:
    """The rule (sans-I/O): a connection that waits for something and was
    silent ``timeout / 2`` s is pinged once; silent ``timeout`` s, it is lost."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pinged = False

    def check(self, silent: float | None, waiting: bool) -> str:
        """The verdict for a connection silent ``silent`` s (None: unknown)."""
        if silent is None or not waiting or silent < self.timeout / 2:
            self._pinged = False
            return Verdict.FINE
        if silent >= self.timeout:
            return Verdict.LOST
        if self._pinged:
            return Verdict.FINE
        self._pinged = True
        return Verdict.PING


async def watch(
    limit: float,
    sock: Any,
    waiting: Callable[[], bool | None],
    ping: Callable[[], Awaitable[object]],
    probe: Callable[[Any], float | None] | None = None,
) -> float | None:
    """Return once connection ``sock`` has been silent ``limit`` s while
    ``waiting()`` or while data it sent is unacknowledged (:func:`unacknowledged`:
    a producer that only puts waits for that) (:class:`Liveness`): its silence
    then, in seconds; or None once ``waiting()`` says None (the connection is over).

    ``ping`` is started (not awaited: a connection whose writes are stuck must
    not stop the watch) when it has been silent half as long.  Where ``probe``
    cannot tell (None) the connection is never given up; ``probe`` defaults
    to :func:`heard_ago`.
    """
    probe = heard_ago if probe is None else probe
    rule = Liveness(limit)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(limit / CHECKS_PER_TIMEOUT)
            waits = waiting()
            if waits is None:
                nursery.cancel_scope.cancel()
                return None
            silent = probe(sock)
            verdict = rule.check(silent, waits or unacknowledged(sock))
            if verdict is Verdict.PING:
                nursery.start_soon(_quietly, ping)
            elif verdict is Verdict.LOST:
                nursery.cancel_scope.cancel()
                assert silent is not None
                return silent
    raise AssertionError("unreachable")  # pragma: no cover


async def _quietly(ping: Callable[[], Awaitable[object]]) -> None:
    try:
        await ping()
    except TurbineError:
        pass  # the connection failed meanwhile: the watch or the read loop says so


async def connect_within(limit: float, connect: Callable[[], Awaitable[T]]) -> T:
    """``connect()``, tried afresh every :data:`CONNECT_ATTEMPT_S` while it gets
    no answer, for at most ``limit`` s in all; a refusal ends it at once.

    Raises:
        trio.TooSlowError: no attempt was answered within ``limit``.
    """
    with trio.fail_after(limit):
        while True:
            with trio.move_on_after(CONNECT_ATTEMPT_S):
                return await connect()
