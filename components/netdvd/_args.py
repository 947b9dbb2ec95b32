"""Reading a NetDVD command's arguments, and the paths they name."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ._constants import MAX_PATH_BYTES
from .errors import NetDVDError

__all__ = ["arg", "bad_request", "check_relative_path"]


def bad_request(message: str) -> NetDVDError:
    return NetDVDError(message, "bad_request")


def arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in args:
        if default is ...:
            raise bad_request(f"missing argument {name!r}")
        return default
    value = args[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        names = " or ".join(k.__name__ for k in _tuple(kind))
        raise bad_request(f"argument {name!r} must be {names}, not {type(value).__name__}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_relative_path(text: str) -> PurePosixPath:
    """Validate a client's path inside the working directory or on the disc.

    Paths are '/'-separated and relative (a leading '/' is ignored); '..',
    empty names, control characters and backslashes are refused so that a
    path means the same thing on every reader of the disc.

    Raises:
        NetDVDError: code ``bad_path``.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise NetDVDError(f"path is longer than {MAX_PATH_BYTES} bytes", "bad_path")
    if any(ord(c) < 32 or ord(c) == 127 or c == "\\" for c in text):
        raise NetDVDError(
            f"path {text!r} holds a control character or a backslash; use plain names", "bad_path"
        )
    parts = [p for p in text.strip("/").split("/")]
    if parts == [""] or any(p in ("", ".", "..") for p in parts):
        raise NetDVDError(
            f"path {text!r} must name something below the root, without '.', '..' or '//'",
            "bad_path",
        )
    if any(len(p.encode()) > 255 for p in parts):
        raise NetDVDError(f"a name in {text!r} is longer than 255 bytes", "bad_path")
    return PurePosixPath(*parts)
