"""File descriptors: the broker's limit, and refusing connections cleanly without any left.

Each connection costs the broker one descriptor.  ``turbine serve`` raises its
soft limit to the hard one at start (:func:`raise_limit`).  When the limit is
reached anyway, ``accept`` fails at once for every waiting connection, and
trio's own loop would retry every 0.1 s while clients wait for a hello that
never comes.  :class:`Acceptor` keeps one descriptor in reserve instead: out
of descriptors, it frees the reserve, accepts the waiting connection with it,
tells that client why (an ``error`` instead of ``hello``), closes it, and takes
the reserve back.  It says so in the log once, not per client (again only
after :data:`~turbine._constants.FULL_LOG_INTERVAL_S`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Awaitable, Callable

import trio

from ._constants import ACCEPT_RETRY_S, FULL_LOG_INTERVAL_S, LAST_WORDS_S

log = logging.getLogger("turbine.server")

#: The errors of an accept that found no descriptor for the new connection.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def limit() -> int:
    """This process's soft limit on open descriptors (``RLIMIT_NOFILE``); -1 if unknown."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return -1
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_limit() -> int:
    """Raise the soft limit on open descriptors to the hard limit; return the soft limit now."""
    try:
        import resource
    except ImportError:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # keep the soft limit we have (a hard limit the kernel caps lower)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Acceptor:
    """Accepts connections for ``handler``; out of descriptors, refuses each at once.

    Args:
        refusal: the bytes a refused client gets (an ``error`` message).
        on_refused: called with the refused client's address, for the record.
    """

    def __init__(self, refusal: bytes, on_refused: Callable[[str], None]) -> None:
        self._refusal = refusal
        self._on_refused = on_refused
        self._reserve: int | None = None
        self._logged = -math.inf  # when the shortage was last logged (trio time)
        self.refused = 0

    def _take_reserve(self) -> None:
        if self._reserve is None:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self._reserve = None  # none free now: the next shortage waits instead

    def _give_reserve(self) -> bool:
        if self._reserve is None:
            return False
        os.close(self._reserve)
        self._reserve = None
        return True

    async def serve(
        self,
        listener: trio.SocketListener,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        """Accept on ``listener`` until cancelled, each connection handled in ``nursery``.

        Raises:
            OSError: ``accept`` failed for a reason other than descriptors.
        """
        self._take_reserve()
        try:
            async with listener:
                while True:
                    stream: trio.SocketStream | None
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in OUT_OF_DESCRIPTORS:
                            raise
                        stream = await self._when_short(listener, exc)
                        if stream is None:
                            continue
                    nursery.start_soon(handler, stream)
        finally:
            self._give_reserve()

    async def _when_short(
        self, listener: trio.SocketListener, exc: OSError
    ) -> trio.SocketStream | None:
        """Out of descriptors: accept the next client with the reserve; refuse it,
        unless descriptors came back meanwhile (then return its stream)."""
        if trio.current_time() - self._logged >= FULL_LOG_INTERVAL_S:
            self._logged = trio.current_time()
            log.warning(
                "out of file descriptors (%s; limit %d): refusing new connections until "
                "some close (raise the hard limit: ulimit -Hn, or LimitNOFILE= in systemd)",
                os.strerror(exc.errno or 0),
                limit(),
            )
        if not self._give_reserve():
            await trio.sleep(ACCEPT_RETRY_S)  # no reserve to say it with: wait for one
            self._take_reserve()
            return None
        try:
            sock, address = await listener.socket.accept()
        except OSError:
            await trio.sleep(ACCEPT_RETRY_S)  # someone else took it, or the system is out
            self._take_reserve()
            return None
        self._take_reserve()
        if self._reserve is not None:
            return trio.SocketStream(sock)  # connections closed while we waited: serve it
        with sock:
            with trio.move_on_after(LAST_WORDS_S):
                try:
                    await sock.send(self._refusal)
                except OSError:
                    pass  # gone already: nothing to tell
        self._take_reserve()
        self.refused += 1
        self._on_refused(f"{address[0]}:{address[1]}")
        return None
