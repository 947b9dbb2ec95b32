"""Who is on the other end of a connection, as the hub sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ._constants import HOLDER_GONE_SILENT_S

if TYPE_CHECKING:
    from .auth import Access


@attrs.define(eq=False)
class Peer:
    """One client connection's identity, passed wherever the hub needs to know who asks.

    Compared by identity: two connections from one client program are two
    peers.  ``name`` is what frames record as their writer and what messages
    and ``status`` show (``alice#3 (127.0.0.1:50000)``); the broker sets it
    again when the client says its name (:meth:`named`).  ``access`` is the
    user the client logged in as, with its rights (None: a broker without
    ``--auth``, where everyone may do everything).  Later: the origin broker
    of mirrored data.
    """

    id: int
    address: str = "?"
    name: str = ""
    access: Access | None = None
    client: str = "client"
    #: Its client_hello said ``reconnect``: its sources wait for it when it is gone.
    reconnects: bool = False
    #: Seconds since its connection last heard from the client (TCP; a client on
    #: another host only, whose connection TCP probes): None where not known.
    silent: Callable[[], float | None] | None = None
    #: Silent this long (despite TCP's probes), its client must be gone
    #: (``turbine serve --holder-silence``).
    gone_after: float = HOLDER_GONE_SILENT_S

    def gone_silent(self) -> float | None:
        """How long it has been silent, if at least :attr:`gone_after` s; else None."""
        ago = self.silent() if self.silent is not None else None
        return ago if ago is not None and ago >= self.gone_after else None

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.named("client")

    def named(self, client: str) -> None:
        """Take the name the client gave itself."""
        self.client = client  # the owner of the sources it creates (until access control)
        self.name = f"{client}#{self.id} ({self.address})"
