"""The broker's audit trail: who did what, from where, when, on its own log source.

With ``--auth``, the broker holds ``turbine_broker_debug_log_source`` and puts
one JSON frame on its ``log.txt`` channel (the shape of a component's debug
log, plus the fields below) for every command put into a command sink, every
``acl`` change, every request refused for want of a right, and every failed
login.  It is a source like any other: tap it, fetch it, archive it (reading
it takes the ``read`` right on it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._component_log import LOG_CHANNEL
from .hub import Hub
from .peer import Peer

#: The broker's own log source (type ``turbine``, name ``broker``).
AUDIT_SOURCE = "turbine_broker_debug_log_source"
#: What the audit source may hold in memory.
AUDIT_CACHE_BYTES = 4 * 2**20
#: Longest excerpt of a command frame recorded.
COMMAND_EXCERPT_CHARS = 500


class Audit:
    """Records audit events on :data:`AUDIT_SOURCE` (created by :meth:`open`)."""

    def __init__(self, hub: Hub, clock: Callable[[], float]) -> None:
        self.hub = hub
        self.clock = clock
        self.peer = Peer(0, "broker", "broker")

    def open(self) -> None:
        self.hub.open_source(
            self.peer,
            AUDIT_SOURCE,
            channels={LOG_CHANNEL: "text/plain"},
            cache_bytes=AUDIT_CACHE_BYTES,
        )

    def record(self, event: str, who: Peer | None, message: str, **fields: Any) -> None:
        """One audit entry: ``event`` (``command``, ``acl``, ``refused``,
        ``login_failed``), the client it concerns, and a sentence for people."""
        entry: dict[str, Any] = {
            "time": self.clock(),
            "level": "INFO" if event in ("command", "acl") else "WARNING",
            "logger": "turbine.audit",
            "message": message,
            "event": event,
        }
        if who is not None:
            entry["user"] = None if who.access is None else who.access.user
            entry["client"] = who.name
            entry["from"] = who.address
        entry.update(fields)
        data = json.dumps(entry).encode()
        for conn in self.hub.put(self.peer, AUDIT_SOURCE, LOG_CHANNEL, [None], [data]):
            conn.wake_soon()


def command_excerpt(data: Any) -> str:
    """What a command frame says, cut to :data:`COMMAND_EXCERPT_CHARS`."""
    text = bytes(data[: COMMAND_EXCERPT_CHARS * 4]).decode("utf-8", "replace")
    return text[:COMMAND_EXCERPT_CHARS]
