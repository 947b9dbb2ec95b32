"""The data directory: its layout, its version file and the lock that keeps it to one broker."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote

from .._errors import TurbineError
from .._files import write_atomically
from . import _format as fmt

LOCK_FILE = "turbine.lock"
VERSION_FILE = "turbine-archive.json"
SOURCES_DIR = "sources"


class ArchiveError(TurbineError):
    """The archive cannot do what was asked (locked, unwritable, another version)."""


class ArchiveLocked(ArchiveError):
    """Another process holds the data directory."""


def source_dir_name(source: str) -> str:
    """A file name for ``source`` that no name can turn into a path elsewhere (``..``, ``/``)."""
    name = quote(source, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def source_name(dir_name: str) -> str:
    return unquote(dir_name)


def source_dirs(root: str) -> Iterator[tuple[str, str]]:
    """``(source name, directory)`` of every source archived under ``root``."""
    top = os.path.join(root, SOURCES_DIR)
    for entry in sorted(os.listdir(top)):
        if not entry.endswith(".deleting"):
            yield source_name(entry), os.path.join(top, entry)


@contextlib.contextmanager
def locked(root: str) -> Iterator[None]:
    """Hold ``root`` for this process: create its layout, check its version, lock it.

    The lock is an ``flock`` on ``turbine.lock``, which names the holder; it
    is released when the process ends, however it ends.

    Raises:
        ArchiveLocked: another process holds it (the message names its pid and host).
        ArchiveError: the directory is of a newer format, or cannot be created.
    """
    try:
        os.makedirs(os.path.join(root, SOURCES_DIR), exist_ok=True)
        fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ArchiveError(f"cannot use {root} as a data directory: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveLocked(_held_by(fd, root)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        _check_version(root)
        yield
    finally:
        os.close(fd)  # releases the lock


def _held_by(fd: int, root: str) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        who = f"process {holder['pid']} on {holder['host']}"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        who += f" (since {since})"
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return (
        f"the data directory {root} is in use by {who}; stop that broker, "
        "or start this one with another --data-dir"
    )


def _check_version(root: str) -> None:
    path = os.path.join(root, VERSION_FILE)
    try:
        with open(path) as f:
            version = json.load(f)["format"]
    except FileNotFoundError:
        write_atomically(path, json.dumps({"format": fmt.FORMAT_VERSION}).encode() + b"\n")
        return
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path} is not a Turbine archive version file: {exc}") from None
    if version > fmt.FORMAT_VERSION:
        raise ArchiveError(
            f"{root} holds archive format {version}, newer than this Turbine reads "
            f"({fmt.FORMAT_VERSION}); upgrade Turbine"
        )
