"""The errors a NetDVD user sees.

Every error carries a short machine-readable ``code`` (the same codes travel on
the wire in error replies, see docs/netdvd.rst) and a message that says what
was wrong and what to do about it.
"""

from __future__ import annotations

from turbine import TurbineError


class NetDVDError(TurbineError):
    """The device refused a command, or talking to it failed.

    ``code`` is one of the error codes of docs/netdvd.rst (e.g. ``"disc_full"``,
    ``"no_disc"``); ``str(err)`` is the device's explanation.
    """

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NetDVDBusyError(NetDVDError):
    """Another client controls the device; it answered BUSY and hung up."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "busy")


class NetDVDProtocolError(NetDVDError):
    """A frame broke the NetDVD wire protocol (ours or the peer's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "protocol")
