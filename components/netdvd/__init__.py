"""NetDVD: a network-attached DVD burner for archiving, and its client.

Run the device with ``python -m components.netdvd --tray DIR``; talk to it
with :func:`open_netdvd`.  The protocol is described in docs/netdvd.rst.
"""

from ._constants import DEFAULT_PORT, DVD_R_CAPACITY, PROTOCOL_VERSION
from .client import (
    DiscFile,
    JobProgress,
    MediaStatus,
    NetDVDClient,
    Status,
    WorkEntry,
    open_netdvd,
)
from .drive import Drive, Media, Progress
from .emulated import EmulatedDrive
from .errors import NetDVDBusyError, NetDVDError, NetDVDProtocolError
from .folder import FolderDrive
from .server import serve_netdvd
from .xorriso_drive import XorrisoDrive

__all__ = [
    "DEFAULT_PORT",
    "DVD_R_CAPACITY",
    "PROTOCOL_VERSION",
    "DiscFile",
    "Drive",
    "EmulatedDrive",
    "FolderDrive",
    "JobProgress",
    "Media",
    "MediaStatus",
    "NetDVDBusyError",
    "NetDVDClient",
    "NetDVDError",
    "NetDVDProtocolError",
    "Progress",
    "Status",
    "WorkEntry",
    "XorrisoDrive",
    "open_netdvd",
    "serve_netdvd",
]
