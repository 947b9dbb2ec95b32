"""The error a simulated rig refuses a request with."""

from __future__ import annotations

from components.ntcp.protocol import NtcpError

__all__ = ["RigError"]


class RigError(NtcpError):
    """The rig refused a request; ``reason`` says why, fit for a ``NOT OK`` reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
