"""Source names, paths and wildcard patterns."""

from __future__ import annotations

import functools
import re

from ._constants import SOURCE_DETAILS, SOURCE_TYPES
from ._errors import TurbineError


class InvalidName(TurbineError, ValueError):
    """A source, channel or pattern name breaks the naming rules."""


_FORBIDDEN = re.compile(r"[\s/*]")


def convention(types: tuple[str, ...] = SOURCE_TYPES) -> str:
    """The naming convention, as error messages state it."""
    return (
        "source names follow <type>_<name>_<detail> with type one of "
        f"{', '.join(types)}; detail one of {', '.join(SOURCE_DETAILS)}; and a non-empty "
        "name without whitespace or '/' (e.g. video_baseCamera1_data_source)"
    )


def check_source_name(
    name: str, *, types: tuple[str, ...] = SOURCE_TYPES, lenient: bool = False
) -> None:
    """Raise :class:`InvalidName` unless ``name`` is an acceptable source name.

    With ``lenient``, any non-empty name without whitespace, ``/`` or ``*`` is accepted.
    """
    if not name or _FORBIDDEN.search(name) or len(name) > 255:
        raise InvalidName(
            f"invalid source name {name!r}: it must be 1-255 characters without whitespace, '/' or '*'"
        )
    if lenient:
        return
    kind, _, rest = name.partition("_")
    detail = next((d for d in SOURCE_DETAILS if rest.endswith("_" + d)), None)
    middle = rest[: -len(detail) - 1] if detail else ""
    if kind not in types or detail is None or not middle:
        raise InvalidName(f"invalid source name {name!r}: {convention(types)}")


def check_channel_name(name: str) -> None:
    if not name or _FORBIDDEN.search(name) or len(name) > 255:
        raise InvalidName(
            f"invalid channel name {name!r}: it must be 1-255 characters without whitespace, '/' or '*'"
        )


def split_path(path: str) -> tuple[str, str]:
    """Split ``SOURCE/CHANNEL``.

    Raises:
        InvalidName: there is no ``/`` or either side is empty.
    """
    source, sep, channel = path.partition("/")
    if not sep or not source or not channel:
        raise InvalidName(f"{path!r} is not a SOURCE/CHANNEL path")
    return source, channel


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a ``*`` wildcard pattern over ``SOURCE/CHANNEL`` paths.

    ``*`` matches any run of characters other than ``/``.  A pattern without
    ``/`` names sources and matches every channel of them.
    """
    if not pattern or any(c.isspace() for c in pattern):
        raise InvalidName(f"invalid pattern {pattern!r}: it must be non-empty, without whitespace")
    if "/" not in pattern:
        pattern += "/*"
    if pattern.count("/") != 1:
        raise InvalidName(f"invalid pattern {pattern!r}: use SOURCE/CHANNEL with '*' wildcards")
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


def source_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a ``*`` wildcard pattern over source names (the part before any ``/``)."""
    return compile_pattern(pattern.partition("/")[0] + "/*")
