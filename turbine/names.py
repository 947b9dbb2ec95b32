"""Source names, paths and wildcard patterns."""

from __future__ import annotations

import functools
import re

from ._constants import MAX_PATTERN_CHARS, SOURCE_DETAILS, SOURCE_TYPES
from ._errors import TurbineError


class InvalidName(TurbineError, ValueError):
    """A source, channel or pattern name breaks the naming rules."""


@functools.cache
def _forbidden() -> re.Pattern[str]:
    """What no name may hold: compiled on first use (a client that only reads
    checks no name), not by every ``import turbine`` (~0.1 ms)."""
    return re.compile(r"[\s/*]")


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
    if not name or _forbidden().search(name) or len(name) > 255:
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


def check_component_name(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` can be the ``<name>`` of ``<type>_<name>``.

    It may not hold ``_``: in ``daq_tone_1_data_source`` nobody could tell
    where the name ends and the detail begins.
    """
    if not name or "_" in name or _forbidden().search(name):
        raise InvalidName(
            f"invalid component name {name!r}: names are <type>_<name>_<detail>, so a <name> "
            "may not hold '_', whitespace, '/' or '*' (e.g. tone1 or tone-1, not tone_1)"
        )


def check_channel_name(name: str) -> None:
    if not name or _forbidden().search(name) or len(name) > 255:
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


class Pattern:
    """A compiled ``*`` wildcard pattern over ``SOURCE/CHANNEL`` paths.

    Matching takes time linear in the path's length whatever the pattern:
    runs of ``*`` are merged and the literal pieces between them are found in
    order, leftmost first (which is exact when ``*`` is the only wildcard).
    No regular expression is built from the pattern.
    """

    __slots__ = ("text", "_source", "_channel")

    def __init__(self, text: str, source: tuple[str, ...], channel: tuple[str, ...]) -> None:
        self.text = text
        self._source = source
        self._channel = channel

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def match(self, path: str) -> bool:
        """Whether ``path`` (``SOURCE/CHANNEL``, one ``/``) matches."""
        source, sep, channel = path.partition("/")
        return (
            bool(sep)
            and "/" not in channel
            and _match(self._source, source)
            and _match(self._channel, channel)
        )

    def match_source(self, name: str) -> bool:
        """Whether the source ``name`` matches the pattern's source part."""
        return _match(self._source, name)


def _pieces(part: str) -> tuple[str, ...]:
    """The literal pieces of one ``*`` pattern part, around its (merged) wildcards."""
    pieces = part.split("*")
    if len(pieces) <= 2:
        return tuple(pieces)
    return (pieces[0], *filter(None, pieces[1:-1]), pieces[-1])  # a run of '*' is one wildcard


def _match(pieces: tuple[str, ...], text: str) -> bool:
    """Whether ``text`` matches the part whose literal pieces these are.

    One piece: no wildcard, equality.  Otherwise the text starts with the
    first piece, ends with the last, and holds the middle ones in order in
    between; taking each at its leftmost place leaves the most room for the
    rest, so one pass decides.
    """
    if len(pieces) == 1:
        return text == pieces[0]
    head, *middle, tail = pieces
    if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
        return False
    pos, stop = len(head), len(text) - len(tail)
    for piece in middle:
        if piece:
            found = text.find(piece, pos, stop)
            if found < 0:
                return False
            pos = found + len(piece)
    return True


@functools.lru_cache(maxsize=64)  # compiling is cheap; the cache holds patterns up to 1 KiB
def compile_pattern(pattern: str) -> Pattern:
    """Compile a ``*`` wildcard pattern over ``SOURCE/CHANNEL`` paths.

    ``*`` matches any run of characters other than ``/``.  A pattern without
    ``/`` names sources and matches every channel of them.

    Raises:
        InvalidName: the pattern is empty, too long, holds whitespace or more than one ``/``.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidName(
            f"invalid pattern {pattern[:40]!r}...: it has {len(pattern)} characters, "
            f"more than the limit of {MAX_PATTERN_CHARS}"
        )
    if not pattern or any(c.isspace() for c in pattern):
        raise InvalidName(f"invalid pattern {pattern!r}: it must be non-empty, without whitespace")
    source, sep, channel = pattern.partition("/")
    if not sep:
        channel = "*"
    if "/" in channel:
        raise InvalidName(f"invalid pattern {pattern!r}: use SOURCE/CHANNEL with '*' wildcards")
    return Pattern(pattern, _pieces(source), _pieces(channel))


def source_pattern(pattern: str) -> Pattern:
    """Compile a ``*`` wildcard pattern over source names (the part before any ``/``);
    match names with :meth:`Pattern.match_source`.

    Raises:
        InvalidName: as :func:`compile_pattern`: ``list`` takes the patterns
            ``fetch`` and ``subscribe`` take, no others.
    """
    compile_pattern(pattern)
    return compile_pattern(pattern.partition("/")[0] + "/*")
