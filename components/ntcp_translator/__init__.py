"""The NTCP transport translator (see :mod:`components.ntcp_translator.component`)."""

from .component import JOURNAL_CHANNEL, NtcpTranslator, measurement_channel

__all__ = ["JOURNAL_CHANNEL", "NtcpTranslator", "measurement_channel"]
