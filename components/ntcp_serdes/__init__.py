"""The NTCP serdes plugin (see :mod:`components.ntcp_serdes.component`)."""

from .component import NtcpSerdes

__all__ = ["NtcpSerdes"]
