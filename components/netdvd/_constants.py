"""Every NetDVD default, named and commented in one place."""

#: The highest protocol version this device and client speak.
PROTOCOL_VERSION = 0

#: TCP port of the device unless told otherwise.
DEFAULT_PORT = 4444

#: Bytes on a single-layer DVD-R: 2,298,496 sectors of 2048 bytes.
DVD_R_CAPACITY = 2_298_496 * 2048

#: ISO 9660 logical sector size.
SECTOR = 2048

#: Largest frame body (msgpack map) either side accepts.  A data frame carries at
#: most DATA_CHUNK bytes, so this leaves ample room for the map around it.
MAX_FRAME = 1024 * 1024 + 4096

#: Bytes carried by one data frame of an upload or a download.
DATA_CHUNK = 256 * 1024

#: Longest path (in UTF-8 bytes) accepted for a file in the working directory.
MAX_PATH_BYTES = 1024

#: Seconds a write to the peer may take before the connection is dropped.
SEND_TIMEOUT = 30.0

#: Seconds between two progress lines of a running xorriso.
PACIFIER_INTERVAL = 0.25

#: Lines of xorriso output kept to explain a failure.
XORRISO_TAIL_LINES = 40

#: Seconds between two status polls when a client follows a job's progress.
POLL_INTERVAL = 0.5
