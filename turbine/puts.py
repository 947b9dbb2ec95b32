"""What the broker does with a connection's puts: the hot path of writing.

:class:`Puts` is mixed into :class:`~turbine.requests.Requests` (and so into
the broker's connection): a put its user may not make is refused (one that
may not even read the source is told what a missing one is told), the rest
go to the hub, which says whose subscriptions to wake; a command put into a
component is recorded in the audit log.  Puts have no reply: a refusal is an
error without an id, raised by the client's next request.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import messages as m
from ._errors import RequestFailed
from .audit import Audit, command_excerpt
from .auth import COMMAND, WRITE, Access, is_command_sink
from .groups import unpack_times
from .hub import Hub, no_source
from .names import InvalidName
from .payloads import Payloads
from .peer import Peer
from .router import Waker


class PutView(Protocol):
    """What puts need of the broker: its hub and its audit log."""

    hub: Hub
    audit: Audit | None


class Puts:
    """The put handling of one connection (mixed into it)."""

    broker: PutView
    peer: Peer
    frames_in: int
    #: Sources this connection put to: what its ``flush`` waits for.
    written: set[str]
    #: Whom the puts of its last read woke (turbine/pacing.py).
    woke: dict[Waker, None]

    def error(self, msg_id: int | None, exc: Exception, code: str = "error") -> None:
        raise NotImplementedError

    def put(self, msg: m.Put) -> None:
        sizes = msg.sizes
        access = self.peer.access
        if access is not None and not access.may_put(msg.source):
            refusal = self.put_refused(access, msg.source, msg.channel)
            if self.broker.audit is not None:
                self.broker.audit.record("refused", self.peer, str(refusal), request="put")
            self.error(None, refusal)
            return
        data = Payloads([untracked(msg.payload)], sizes)  # kept whole: no bytes object per frame
        ts = unpack_times(msg.ts) if isinstance(msg.ts, bytes) else msg.ts
        try:
            wakers = self.broker.hub.put(
                self.peer,
                msg.source,
                msg.channel,
                ts,
                data,
                msg.content_type,
                sizes,
                producer=msg.producer,
                pseq=msg.pseq,
                skipped=msg.skipped,
                skipped_span=(msg.skipped_first_time, msg.skipped_last_time)
                if msg.skipped and msg.skipped_first_time is not None
                else None,
                seqs=msg.seqs,
                first_seq=msg.first_seq,
                writers=msg.writers,
            )
        except (RequestFailed, InvalidName) as exc:
            self.error(
                None,
                RequestFailed(
                    f"put to {msg.source}/{msg.channel} refused: {exc}",
                    getattr(exc, "code", "error"),
                ),
            )
            return
        self.written.add(msg.source)  # a replay dropped as stored counts too: flush covers it
        self.frames_in += len(sizes)
        woke = self.woke
        for conn in wakers:
            conn.wake_soon()
            woke[conn] = None
        if access is not None and is_command_sink(msg.source) and self.broker.audit is not None:
            for frame in data:
                self.broker.audit.record(
                    "command",
                    self.peer,
                    f"{access.user} put a command into {msg.source}",
                    source=msg.source,
                    command=command_excerpt(frame),
                )

    def put_refused(self, access: Access, source: str, channel: str) -> RequestFailed:
        """Why ``access`` may not put to ``source``: a source it may not read
        gets the answer a missing one gets (existence does not leak)."""
        if not access.may_read(source) or source not in self.broker.hub.sources:
            why = no_source(source)
        else:
            right = COMMAND if is_command_sink(source) else WRITE
            why = RequestFailed(f"user {access.user!r} has no {right} right on it", "access")
        return RequestFailed(f"put to {source}/{channel} refused: {why}", why.code)


def untracked(payload: Any) -> Any:
    """A put's payload as the ring keeps it: the ``bytes`` object itself when the
    view shows all of one (the usual single-frame put).  A view is an object the
    cycle collector tracks; one per put kept by the million made each full
    collection walk them all (313 ms for 1,000,000, 0 for as many ``bytes``), the
    broker's loop held all that time."""
    if type(payload) is memoryview:
        whole = payload.obj
        if type(whole) is bytes and len(whole) == payload.nbytes:
            return whole
    return payload


def check_open(access: Access | None, source: str) -> None:
    """Refuse ``access`` opening ``source`` without the write right on it.

    Raises:
        RequestFailed: code ``access``.
    """
    if access is not None and not access.may(WRITE, source):
        raise RequestFailed(
            f"user {access.user!r} may not open {source!r}: that takes the write right",
            "access",
        )
