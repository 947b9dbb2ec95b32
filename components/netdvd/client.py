"""Async (trio) client of a NetDVD device.

Typical use, e.g. by an archiver::

    async with open_netdvd("127.0.0.1", 4444) as dvd:
        await dvd.upload(Path("run-0042"), "run-0042")
        await dvd.burn("append")                 # or "new" on a blank disc
        await dvd.mount()
        names = [e.path for e in await dvd.disc_list()]
        data = await dvd.read("run-0042/summary.txt")
        await dvd.unmount()

Every method raises :class:`NetDVDError` with the device's code and message
when the device refuses a command, and :class:`NetDVDProtocolError` (a
NetDVDError) when the conversation breaks.  A client is for one task at a
time; concurrent calls are serialised.
"""

from __future__ import annotations

import builtins
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import trio

from turbine import open_file

from ._constants import DATA_CHUNK, POLL_INTERVAL, PROTOCOL_VERSION
from ._wire import Wire
from .errors import NetDVDBusyError, NetDVDError, NetDVDProtocolError
from .protocol import Busy, Data, Hello, Request


@attrs.frozen
class WorkEntry:
    """A file or directory in the working directory."""

    path: str
    kind: str  # "file" or "dir"
    size: int
    mtime: float


_Record = TypeVar("_Record", bound=attrs.AttrsInstance)


def _by_field(cls: type[_Record], data: dict[str, Any]) -> _Record:
    """The record ``cls`` from the device's answer, field by field (one it leaves out is None)."""
    kwargs: dict[str, Any] = {f.name: data.get(f.name) for f in attrs.fields(cls)}
    return cls(**kwargs)


@attrs.frozen
class DiscFile:
    """A file, directory or link on the mounted disc."""

    path: str
    kind: str  # "file", "dir", "link" or "other"
    size: int


@attrs.frozen
class MediaStatus:
    """The medium in the drive."""

    present: bool
    blank: bool
    appendable: bool
    sessions: int
    used_bytes: int
    free_bytes: int
    capacity_bytes: int
    name: str | None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> MediaStatus:
        return _by_field(cls, data)


@attrs.frozen
class JobProgress:
    """Progress of a running burn, copy or burn_copy."""

    op: str
    phase: str
    part: str
    percent: float
    bytes_done: int
    bytes_total: int
    seconds_elapsed: float
    seconds_left: float | None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> JobProgress:
        return _by_field(cls, data)


@attrs.frozen
class Status:
    """What ``status`` reports; ``job`` is None when the device is idle."""

    state: str  # "idle", "burning", "copying" or "burning_copy"
    drive: str
    media: MediaStatus
    mounted: bool
    job: JobProgress | None
    last_job: dict[str, Any] | None
    workdir_free_bytes: int
    staged_copy_bytes: int | None
    client_time: float

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Status:
        return cls(
            state=data["state"],
            drive=data["drive"],
            media=MediaStatus.from_wire(data["media"]),
            mounted=data["mounted"],
            job=JobProgress.from_wire(data["job"]) if data.get("job") else None,
            last_job=data.get("last_job"),
            workdir_free_bytes=data["workdir_free_bytes"],
            staged_copy_bytes=data.get("staged_copy_bytes"),
            client_time=data["client_time"],
        )


ProgressHandler = Callable[[JobProgress], None]


class NetDVDClient:
    """A connection to a NetDVD device; make one with :func:`open_netdvd`."""

    def __init__(self, stream: trio.abc.Stream, device_version: int) -> None:
        self._wire = Wire(stream)
        #: The highest protocol version the device announced.
        self.device_version = device_version

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send command ``op`` and return its result (low level; prefer the methods).

        Raises:
            NetDVDError: the device refused the command.
        """
        return await self._wire.request(op, args)

    async def aclose(self) -> None:
        """Close the connection (a running job goes on on the device)."""
        await self._wire.aclose()

    # -- session -------------------------------------------------------------------

    async def init(self, client_time: dt.datetime | float | None = None) -> int:
        """Start the session: a fresh, empty working directory on the device.

        ``client_time`` (default: now) is the clock the device uses for the
        timestamps it writes.  Returns the bytes free for the working directory.
        """
        result = await self.request("init", version=PROTOCOL_VERSION, time=_seconds(client_time))
        return int(result["free_bytes"])

    # -- working directory ---------------------------------------------------------

    async def put_bytes(self, path: str, data: bytes, *, mtime: float | None = None) -> None:
        """Store ``data`` as file ``path`` of the working directory.

        ``mtime`` defaults to the client clock at the device.
        """
        wire = self._wire
        async with wire.lock:
            await self._put_start(path, len(data), mtime)
            for start in range(0, len(data), DATA_CHUNK):
                await wire.send(Data(data[start : start + DATA_CHUNK]))
            await wire.reply()

    async def put_file(self, local: Path, path: str, *, mtime: float | None = None) -> None:
        """Upload the local file ``local`` as ``path``, keeping its mtime by default."""
        local = Path(local)
        stat = local.stat()
        wire = self._wire
        async with wire.lock:
            await self._put_start(path, stat.st_size, stat.st_mtime if mtime is None else mtime)
            sent = 0
            async with await open_file(local, "rb") as source:
                while sent < stat.st_size:
                    chunk = await source.read(min(DATA_CHUNK, stat.st_size - sent))
                    if not chunk:
                        raise NetDVDError(f"{local} shrank while being uploaded", "local")
                    await wire.send(Data(chunk))
                    sent += len(chunk)
            await wire.reply()

    async def _put_start(self, path: str, size: int, mtime: float | None) -> None:
        args: dict[str, Any] = {"path": path, "size": size}
        if mtime is not None:
            args["mtime"] = mtime
        await self._wire.send(Request("put", args))
        await self._wire.reply()

    async def mkdir(self, path: str, *, mtime: float | None = None) -> None:
        """Make directory ``path`` (and its parents) in the working directory."""
        args: dict[str, Any] = {"path": path}
        if mtime is not None:
            args["mtime"] = mtime
        await self.request("mkdir", **args)

    async def upload(self, local: Path, path: str | None = None) -> int:
        """Upload a local file or directory tree as ``path`` (default: its name).

        Files and directories keep their mtimes; symbolic links and special
        files are skipped.  Returns the number of bytes uploaded.
        """
        local = Path(local)
        target = (path if path is not None else local.name).strip("/")
        if local.is_file():
            await self.put_file(local, target)
            return local.stat().st_size
        if not local.is_dir():
            raise NetDVDError(f"{local} is neither a file nor a directory", "local")
        total = 0
        files, dirs = _tree(local, target)
        for file, file_path in files:
            await self.put_file(file, file_path)
            total += file.stat().st_size
        for dir_path, mtime in dirs:
            await self.mkdir(dir_path, mtime=mtime)
        return total

    async def list(self) -> list[WorkEntry]:
        """Everything in the working directory, sorted by path."""
        result = await self.request("list")
        return [WorkEntry(**entry) for entry in result["entries"]]

    async def delete(self, path: str) -> None:
        """Delete file or directory tree ``path`` from the working directory."""
        await self.request("delete", path=path)

    async def clear(self) -> None:
        """Empty the working directory."""
        await self.request("clear")

    # -- jobs --------------------------------------------------------------------

    async def start_burn(
        self,
        mode: Literal["new", "append"],
        *,
        volume_id: str | None = None,
        keep: bool = False,
    ) -> None:
        """Start burning the working directory and return at once.

        ``"new"`` needs a blank disc, ``"append"`` adds a session to a written
        one.  Unless ``keep``, the working directory is emptied after a
        successful burn.  Follow with :meth:`status` or :meth:`wait`.
        """
        args: dict[str, Any] = {"mode": mode, "keep": keep}
        if volume_id is not None:
            args["volume_id"] = volume_id
        await self.request("burn", **args)

    async def wait(self) -> dict[str, Any]:
        """Wait for the running job (if any) and return its outcome.

        Raises:
            NetDVDError: the job failed; code and message are the job's.
        """
        outcome = (await self.request("wait"))["last_job"] or {"ok": True}
        if not outcome.get("ok", True):
            raise NetDVDError(outcome["message"], outcome["code"])
        return outcome

    async def _follow(self, progress: ProgressHandler | None, interval: float) -> dict[str, Any]:
        if progress is not None:
            while (status := await self.status()).job is not None:
                progress(status.job)
                await trio.sleep(interval)
        return await self.wait()

    async def burn(
        self,
        mode: Literal["new", "append"],
        *,
        volume_id: str | None = None,
        keep: bool = False,
        progress: ProgressHandler | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> dict[str, Any]:
        """Burn the working directory and wait until it is done.

        ``progress`` (if given) is called with each polled :class:`JobProgress`.

        Raises:
            NetDVDError: e.g. ``no_disc``, ``not_blank``, ``blank_disc``,
                ``disc_full``, ``burn_failed``; the disc and the working
                directory are then as they were.
        """
        await self.start_burn(mode, volume_id=volume_id, keep=keep)
        return await self._follow(progress, poll_interval)

    async def copy(
        self, *, progress: ProgressHandler | None = None, poll_interval: float = POLL_INTERVAL
    ) -> dict[str, Any]:
        """Copy the disc in the drive to the device's staging area and wait."""
        await self.request("copy")
        return await self._follow(progress, poll_interval)

    async def burn_copy(
        self,
        count: int = 1,
        *,
        progress: ProgressHandler | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> dict[str, Any]:
        """Write the staged copy onto ``count`` blank discs, ejecting each one.

        Starts with the disc in the drive, which must be blank.
        """
        await self.request("burn_copy", count=count)
        return await self._follow(progress, poll_interval)

    async def status(self) -> Status:
        """The device's state, medium, and progress of a running job."""
        return Status.from_wire(await self.request("status"))

    # -- disc ----------------------------------------------------------------------

    async def mount(self) -> MediaStatus:
        """Make the disc readable through :meth:`disc_list` and :meth:`read`."""
        return MediaStatus.from_wire((await self.request("mount"))["media"])

    async def disc_list(self) -> builtins.list[DiscFile]:
        """Every file and directory on the mounted disc (newest session's tree)."""
        result = await self.request("disc_list")
        return [DiscFile(**entry) for entry in result["entries"]]

    async def read(self, path: str) -> bytes:
        """Return the content of file ``path`` on the mounted disc."""
        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(chunk)

        await self._read(path, collect)
        return b"".join(chunks)

    async def read_to(self, path: str, local: Path) -> int:
        """Copy file ``path`` of the mounted disc to the local file ``local``; return its size."""
        async with await open_file(local, "wb") as sink:
            return await self._read(path, sink.write)

    async def _read(self, path: str, on_chunk: Callable[[bytes], Awaitable[object]]) -> int:
        wire = self._wire
        async with wire.lock:
            await wire.send(Request("read", {"path": path}))
            size = int((await wire.reply())["size"])
            received = 0
            while received < size:
                event = await wire.receive()
                if not isinstance(event, Data) or len(event.data) > size - received:
                    raise NetDVDProtocolError(f"bad data frame while reading {path!r}")
                received += len(event.data)
                await on_chunk(event.data)
            return size

    async def unmount(self) -> None:
        """Stop reading the disc."""
        await self.request("unmount")

    async def eject(self) -> MediaStatus:
        """Eject the disc; returns the medium loaded next (emulated drive)."""
        return MediaStatus.from_wire((await self.request("eject"))["media"])


def _seconds(client_time: dt.datetime | float | None) -> float:
    """``init``'s clock as seconds since the epoch (None: now).

    Raises:
        ValueError: a datetime without a time zone.
    """
    if client_time is None:
        return time.time()
    if isinstance(client_time, dt.datetime):
        if client_time.tzinfo is None:
            raise ValueError("client_time must be timezone-aware (UTC)")
        return client_time.timestamp()
    return float(client_time)


def _tree(local: Path, target: str) -> tuple[list[tuple[Path, str]], list[tuple[str, float]]]:
    """The regular files under directory ``local`` with their paths under ``target``,
    sorted, and every directory (``target`` first) with its mtime; links and
    special files are left out."""
    files: list[tuple[Path, str]] = []
    dirs: list[tuple[str, float]] = [(target, local.stat().st_mtime)]
    for root, subdirs, names in os.walk(local):
        subdirs.sort()
        base = Path(root)
        rel = base.relative_to(local).as_posix()
        prefix = target if rel == "." else f"{target}/{rel}"
        for name in subdirs:
            dirs.append((f"{prefix}/{name}", (base / name).stat().st_mtime))
        for name in sorted(names):
            file = base / name
            if not file.is_symlink() and file.is_file():
                files.append((file, f"{prefix}/{name}"))
    return files, dirs


@asynccontextmanager
async def open_netdvd(
    host: str,
    port: int,
    *,
    client_time: dt.datetime | float | None = None,
    init: bool = True,
) -> AsyncIterator[NetDVDClient]:
    """Connect to a NetDVD device and (unless ``init`` is false) start a session.

    Raises:
        NetDVDBusyError: another client holds the device.
        NetDVDError: the device cannot be reached or refused the session.
    """
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise NetDVDError(
            f"cannot reach the NetDVD device at {host}:{port}: {exc}", "connection"
        ) from exc
    async with stream:
        client = NetDVDClient(stream, PROTOCOL_VERSION)
        hello = await client._wire.receive()
        if isinstance(hello, Busy):
            raise NetDVDBusyError(hello.message)
        if not isinstance(hello, Hello):
            raise NetDVDProtocolError(f"expected the device's hello, got {hello!r}")
        client.device_version = hello.version
        if init:
            await client.init(client_time)
        yield client
