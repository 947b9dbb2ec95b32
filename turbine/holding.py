"""Who may do what with a source: its holder (the client that has it open)
and its owner (the client name that created it).

:class:`Holding` is the half of :class:`turbine.sources.Source` that answers
who may open (take over, also while it is kept for a reconnecting holder),
write to, shrink or delete it; each check raises
:class:`~turbine.RequestFailed` saying who holds or owns it and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._constants import RECLAIM_GRACE_S
from ._errors import RequestFailed
from .peer import Peer

log = logging.getLogger("turbine.server")


class Holding:
    """A source's holder and owner, and the rules they set (mixed into the source)."""

    name: str
    #: Who holds the source, None when offline.
    holder: Peer | None
    #: The last holder's name (kept when it goes offline).
    holder_name: str
    #: The client name that created it ("" when unknown): only it may shrink or delete it.
    owner: str
    #: Whether every client may put to it (not only its holder).
    shared: bool
    cache_frames: int
    cache_bytes: int
    archive_bytes: int
    archive_age: float | None
    offline_since: float | None
    #: Until when (clock) an offline source is kept for the client ``reserved_for``.
    reserved_until: float | None
    reserved_for: str

    @property
    def online(self) -> bool:
        return self.holder is not None

    def _not_owner(self, peer: Peer) -> bool:
        """``peer`` is neither the owner (the client name that created it) nor an
        administrator (with access control on, rights decide the rest)."""
        admin = peer.access is not None and peer.access.admin
        return bool(self.owner) and peer.client != self.owner and not admin

    def check_opener(self, peer: Peer) -> float | None:
        """Raises RequestFailed unless ``peer`` may take this source over: it is
        offline, or its owner opens it while a client of another name holds it,
        or a reconnecting client of the holder's name opens it while the holder
        has gone silent: then how long it has been (see :meth:`hand_over`)."""
        holder = self.holder
        reclaims = (
            bool(self.owner)
            and peer.client == self.owner
            and (holder is None or holder.client != self.owner)
        )
        if holder is None or reclaims:
            return None
        silent = holder.gone_silent() if peer.reconnects else None
        if silent is None or holder.client != peer.client:
            self.refuse_holder(peer)
        return silent

    def hand_over(self, peer: Peer, silent: float | None) -> None:
        """Make ``peer`` the holder (every check passed); ``silent``: the seconds
        the holder it takes over from was silent (:meth:`check_opener`), logged."""
        if silent is not None:
            log.warning(
                "%s takes source %s over from %s, silent for %.1f s (its lost connection)",
                peer.name,
                self.name,
                self.holder_name,
                silent,
            )
        self.holder, self.holder_name, self.offline_since = peer, peer.name, None

    def check_reserved(self, peer: Peer, clock: Callable[[], float]) -> None:
        """Raises RequestFailed (``held``): this offline source is kept for the
        client that held it (reconnecting), and ``peer`` is another."""
        if self.reserved_until is None or peer.client in (self.reserved_for, self.owner):
            return
        now = clock()
        if now >= self.reserved_until or not self.reserved_for:
            return
        raise RequestFailed(
            f"source {self.name!r} is held by {self.holder_name or self.reserved_for}, which is "
            f"reconnecting (offline for {now - (self.offline_since or now):.1f} s); only one "
            f"client at a time may hold a source (stop that client, or use another name; after "
            f"{RECLAIM_GRACE_S:g} s offline another client may take it over)",
            "held",
        )

    def limits_for(
        self,
        peer: Peer,
        cache_frames: int,
        cache_bytes: int,
        archive_bytes: int | None,
        archive_age: float | None,
    ) -> tuple[int, int, int | None, float | None]:
        """The limits ``peer`` gets asking for these: only the owner may shrink (and
        so discard) a source's history; another client gets at least what it has
        (``archive_bytes`` / ``archive_age`` None: as the store decides)."""
        if not self._not_owner(peer):
            return cache_frames, cache_bytes, archive_bytes, archive_age
        if archive_bytes is not None:
            archive_bytes = max(archive_bytes, self.archive_bytes)
        if archive_age is not None and self.archive_age is not None:
            archive_age = max(archive_age, self.archive_age)
        elif archive_age is not None:
            archive_age = None  # none: no age limit, the most history
        return (
            max(cache_frames, self.cache_frames),
            max(cache_bytes, self.cache_bytes),
            archive_bytes,
            archive_age,
        )

    def check_deleter(self, peer: Peer) -> None:
        """Raises RequestFailed unless ``peer`` may delete this source (code ``held``:
        another client holds it; ``owner``: it belongs to another client)."""
        if self.online and self.holder is not peer:
            raise RequestFailed(
                f"source {self.name!r} is held by {self.holder_name}; stop that client first",
                "held",
            )
        if self._not_owner(peer):
            raise RequestFailed(
                f"source {self.name!r} belongs to {self.owner}; only that client may delete it "
                f"(turbine rm --as {self.owner})",
                "owner",
            )

    def check_writer(self, writer: Peer) -> None:
        """Raises RequestFailed unless ``writer`` may put to this source."""
        if self.holder is not writer and not self.shared:
            who = f"held by {self.holder_name}" if self.online else "offline"
            raise RequestFailed(
                f"source {self.name!r} is {who} and not shared; only its holder may put to it",
                "held",
            )

    def refuse_holder(self, peer: Peer) -> None:
        """Raises RequestFailed: this source is held (by ``peer`` or another)."""
        if self.holder is peer:
            raise RequestFailed(f"you already hold source {self.name!r}", "held")
        raise RequestFailed(
            f"source {self.name!r} is held by {self.holder_name}; only one client at a time "
            "may hold a source (stop that client, or use another name)",
            "held",
        )
