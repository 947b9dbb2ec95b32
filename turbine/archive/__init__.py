"""The disk archive under every source: segment logs in a data directory.

``docs/storage.rst`` describes the on-disk format and what each sync policy
keeps through a killed process and a power cut.
"""

from ._archive import Archive, ArchiveConfig, SyncPolicy, open_archive
from ._datadir import ArchiveError, ArchiveLocked
from ._format import FORMAT_VERSION, FormatError
from ._log import SourceLog
from ._ops import Declare, Hole, Put, Settings

__all__ = [
    "FORMAT_VERSION",
    "Archive",
    "ArchiveConfig",
    "ArchiveError",
    "ArchiveLocked",
    "Declare",
    "FormatError",
    "Hole",
    "Put",
    "Settings",
    "SourceLog",
    "SyncPolicy",
    "open_archive",
]
