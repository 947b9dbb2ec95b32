"""How a broker finds out that a client on another host went silently (a cut
link, a laptop gone from the Wi-Fi: no FIN or RST ever comes), and when the
sources such a client held go to its reconnect: :class:`RemoteLiveness`, the
settings ``turbine serve`` takes for it (``--keepalive-idle`` ...).

The client's side of the same problem is in ``turbine/_liveness.py``, whose
:func:`~turbine._liveness.heard_ago` both use.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs

from ._constants import (
    HOLDER_GONE_SILENT_S,
    REMOTE_KEEPALIVE_IDLE_S,
    REMOTE_KEEPALIVE_INTERVAL_S,
    REMOTE_KEEPALIVE_PROBES,
)
from .settings import check

#: The most seconds Linux takes for TCP_KEEPIDLE and TCP_KEEPINTVL, and probes for TCP_KEEPCNT.
_MOST_KEEPALIVE_S = 32767
_MOST_KEEPALIVE_PROBES = 127


def _whole(low: int, high: int, extra: str = "") -> Any:
    return check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
        f"whole {'seconds' if high == _MOST_KEEPALIVE_S else 'probes'}, {low} to {high}{extra}",
    )


def _check_holder_silence(instance: RemoteLiveness, attribute: Any, value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and 0 <= value < float("inf")):
        raise ValueError(
            f"setting 'holder_silence': expected seconds, 0 or more (0: never), got {value!r}"
        )
    if not value:
        return
    if not instance.keepalive_idle:
        raise ValueError(
            "setting 'holder_silence': expected 0 with 'keepalive_idle' 0: without TCP's "
            "probes a live client that is idle is as silent as a lost one"
        )
    heard = instance.keepalive_idle + instance.keepalive_interval
    if value <= heard:
        raise ValueError(
            f"setting 'holder_silence': expected more than 'keepalive_idle' + "
            f"'keepalive_interval' ({heard} s), got {value!r}: a live client that is idle "
            "is heard from only when TCP probes it, and would lose its sources"
        )


@attrs.frozen
class RemoteLiveness:
    """How a broker finds out that a client on another host went silently (a cut
    link: no FIN or RST ever comes), as ``turbine serve`` options and a site's
    ``[broker]`` keys.  Clients on loopback are never probed.

    TCP probes such a connection once it has been silent ``keepalive_idle`` s,
    then every ``keepalive_interval`` s, and ends it after ``keepalive_probes``
    unanswered (only while nothing the broker sent waits for an
    acknowledgement; otherwise TCP's resends decide).  A source held by one
    from which TCP has heard nothing for ``holder_silence`` s goes to a
    reconnecting client of the holder's name that opens it: its own lost
    connection, whose end the broker has not seen yet.  ``keepalive_idle`` 0:
    no probes; ``holder_silence`` 0: no such hand-over.
    """

    keepalive_idle: int = attrs.field(
        default=REMOTE_KEEPALIVE_IDLE_S, validator=_whole(0, _MOST_KEEPALIVE_S, " (0: no probes)")
    )
    keepalive_interval: int = attrs.field(
        default=REMOTE_KEEPALIVE_INTERVAL_S, validator=_whole(1, _MOST_KEEPALIVE_S)
    )
    keepalive_probes: int = attrs.field(
        default=REMOTE_KEEPALIVE_PROBES, validator=_whole(1, _MOST_KEEPALIVE_PROBES)
    )
    holder_silence: float = attrs.field(
        default=HOLDER_GONE_SILENT_S, validator=_check_holder_silence
    )

    def keep_alive(self, sock: Any) -> None:
        """Turn TCP keepalive on for the broker's connection ``sock`` from another
        host (unless ``keepalive_idle`` is 0): one whose client went silently
        ends within seconds, freeing what it held.  TCP probes only while nothing
        sent waits for an acknowledgement: a connection with writes in flight ends
        when they reach the client's host again (which refuses them)."""
        if not self.keepalive_idle:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (
                ("TCP_KEEPIDLE", self.keepalive_idle),
                ("TCP_KEEPINTVL", self.keepalive_interval),
                ("TCP_KEEPCNT", self.keepalive_probes),
            ):
                if hasattr(socket, name):  # (Linux; elsewhere the system's own times)
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        except OSError:
            pass  # gone already
