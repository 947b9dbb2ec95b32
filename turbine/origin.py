"""Where a source's frames come from: broker identities and the origin of mirrored sources.

Every broker has an identity, a short random text made once: kept in its data
directory (``broker-id``) when it has one, so it survives restarts, else made
anew by each process.  A mirrored source carries its :class:`Origin`: the
broker and source the frames were first put to, and the brokers they passed
through on the way.  A broker refuses to hold a mirror of data that came from
itself, so a ring of mirrors (A to B to C to A) never copies a source back
where it came from.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import attrs

from ._errors import RequestFailed
from ._files import write_atomically

#: The file in a data directory that keeps the broker's identity.
IDENTITY_FILE = "broker-id"


def new_identity() -> str:
    """A fresh broker identity (random; 16 hex digits)."""
    return uuid.uuid4().hex[:16]


def load_identity(data_dir: str | os.PathLike[str]) -> str:
    """The identity kept in ``data_dir``, made (and written durably) on first use.

    Raises:
        ValueError: the file exists but does not hold an identity.
        OSError: it cannot be read or written.
    """
    path = Path(data_dir) / IDENTITY_FILE
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        text = new_identity()
        write_atomically(path, f"{text}\n".encode("ascii"))
        return text
    if not text or len(text) > 64 or not text.isprintable() or " " in text:
        raise ValueError(
            f"{path} does not hold a broker identity (one word); remove it to make one"
        )
    return text


@attrs.frozen
class Origin:
    """The broker and source a mirrored source's frames were first put to.

    ``via`` lists the brokers the frames passed through after the origin,
    oldest first (the holding broker is the last one when it mirrors further).
    """

    broker: str
    source: str
    via: tuple[str, ...] = ()

    @property
    def brokers(self) -> tuple[str, ...]:
        """Every broker these frames have been on."""
        return (self.broker, *self.via)

    def passed(self, broker: str) -> Origin:
        """This origin as a copy of a copy held on ``broker`` records it."""
        return Origin(self.broker, self.source, (*self.via, broker))

    def to_wire(self) -> dict[str, Any]:
        return {"broker": self.broker, "source": self.source, "via": list(self.via)}

    @classmethod
    def from_wire(cls, value: Any) -> Origin:
        """Raises ValueError when ``value`` is not a map of broker, source and via."""
        if not isinstance(value, dict):
            raise ValueError(f"mirror must be a map with broker and source, not {value!r}"[:300])
        broker, source, via = value.get("broker"), value.get("source"), value.get("via", [])
        if via is None:
            via = []
        if not (
            isinstance(broker, str)
            and broker
            and isinstance(source, str)
            and source
            and isinstance(via, list)
            and all(isinstance(b, str) and b for b in via)
        ):
            raise ValueError(
                "mirror must be a map with broker and source (non-empty strings) and "
                f"optionally via (a list of broker identities), not {value!r}"[:300]
            )
        unknown = set(value) - {"broker", "source", "via"}
        if unknown:
            raise ValueError(f"mirror has unknown fields {sorted(unknown)}"[:300])
        return cls(broker, source, tuple(via))

    def describe(self) -> str:
        hops = "".join(f" via {b}" for b in self.via)
        return f"{self.source} on broker {self.broker}{hops}"


def copy_pieces(
    path: str,
    count: int,
    seqs: list[int] | None,
    writers: list[Any] | None,
    default_writer: str,
    next_seq: int,
    first_seq: int | None = None,
) -> list[tuple[int, int, int, str]]:
    """The runs of a mirror's put: ``(start, end, first_seq, writer)`` per run of
    contiguous numbers by one writer, leaving out frames numbered below ``next_seq``.

    The put numbers its frames by ``seqs`` (one number each) or by
    ``first_seq`` (the first of numbers one after another: the compact form).

    Raises:
        RequestFailed: both or neither of ``seqs`` and ``first_seq``, ``seqs``
            not one increasing integer per frame, ``first_seq`` below 1, or
            ``writers`` not increasing ``[seq, name]`` pairs from the first frame.
    """
    if first_seq is not None:
        if seqs is not None:
            raise RequestFailed(f"put to {path}: seqs or first_seq, not both", "request")
        if type(first_seq) is not int or first_seq < 1:
            raise RequestFailed(f"put to {path}: first_seq must be an integer >= 1", "request")
        marks = _writer_marks(path, writers, first_seq)
        return _contiguous_pieces(first_seq, count, marks, default_writer, next_seq)
    if seqs is None:
        raise RequestFailed(
            f"{path} is a mirrored source: a put must carry the origin's seqs (or first_seq)",
            "mirror",
        )
    if len(seqs) != count:
        raise RequestFailed(
            f"put to {path}: seqs must be one integer >= 1 per frame ({count})", "request"
        )
    # The usual put numbers its frames one after another: checked by one list
    # comparison in C, and cut by the writers alone (copy_pieces was half of a
    # mirror target's CPU with a Python step per frame).  The frames are stored
    # under ``first`` and their count alone, so a number that equals its place
    # (1005.0 for 1005) stores what an int would: only ``first``'s type matters,
    # and no pass over the types is needed (it cost as much as the comparison).
    first = seqs[0] if seqs else 0
    contiguous = (
        type(first) is int
        and first >= 1
        and seqs[-1] == first + count - 1
        and seqs == list(range(first, first + count))
    )
    if not contiguous and not all(type(s) is int and s >= 1 for s in seqs):
        raise RequestFailed(
            f"put to {path}: seqs must be one integer >= 1 per frame ({count})", "request"
        )
    if not contiguous and any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
        raise RequestFailed(f"put to {path}: seqs must increase", "request")
    marks = _writer_marks(path, writers, first)
    if contiguous:
        return _contiguous_pieces(first, count, marks, default_writer, next_seq)
    pieces: list[tuple[int, int, int, str]] = []
    m = 0
    name = marks[0][1] if marks else default_writer
    start = None
    for i, s in enumerate(seqs):
        while m < len(marks) and marks[m][0] <= s:
            new, m = marks[m][1], m + 1
            if new != name and start is not None:
                pieces.append((start, i, seqs[start], name))
                start = None
            name = new
        if s < next_seq:
            continue  # held already (a resend)
        if start is not None and s != seqs[i - 1] + 1:
            pieces.append((start, i, seqs[start], name))
            start = None
        if start is None:
            start = i
    if start is not None:
        pieces.append((start, len(seqs), seqs[start], name))
    return pieces


def _writer_marks(path: str, writers: list[Any] | None, first: int) -> list[tuple[int, str]]:
    """A mirror's ``writers`` as ``(seq, name)`` marks, checked; ``first`` numbers the put's first frame.

    Raises:
        RequestFailed: not increasing ``[seq, name]`` pairs, or none naming the first frame's writer.
    """
    marks: list[tuple[int, str]] = []
    for w in writers or ():
        if not (
            isinstance(w, list)
            and len(w) == 2
            and type(w[0]) is int
            and isinstance(w[1], str)
            and (not marks or w[0] > marks[-1][0])
        ):
            raise RequestFailed(
                f"put to {path}: writers must be increasing [seq, name] pairs, not {w!r}"[:300],
                "request",
            )
        marks.append((w[0], w[1]))
    if marks and marks[0][0] > first:
        raise RequestFailed(f"put to {path}: writers must name the first frame's writer", "request")
    return marks


def _contiguous_pieces(
    first: int, count: int, marks: list[tuple[int, str]], default_writer: str, next_seq: int
) -> list[tuple[int, int, int, str]]:
    """:func:`copy_pieces` for frames numbered ``first``, ``first + 1``, ...: one
    step per writer mark, none per frame."""
    lo, hi = max(first, next_seq), first + count
    if lo >= hi:
        return []
    name = default_writer
    for seq, writer in marks:
        if seq > lo:
            break
        name = writer
    pieces: list[tuple[int, int, int, str]] = []
    start = lo
    for seq, writer in marks:
        if seq <= lo or writer == name:
            continue
        if seq >= hi:
            break
        pieces.append((start - first, seq - first, start, name))
        start, name = seq, writer
    pieces.append((start - first, hi - first, start, name))
    return pieces


def check_mirror(
    identity: str,
    name: str,
    mirror: Origin | None,
    shared: bool,
    exists: bool,
    have: Origin | None,
) -> None:
    """Refuse an open of source ``name`` on broker ``identity`` that does not fit
    its mirroring: ``mirror`` is the opener's origin (None: not a mirror),
    ``exists`` whether the source is there, ``have`` its origin then.

    Raises:
        RequestFailed: code ``loop``: ``mirror``'s frames came from this broker;
            code ``mirror``: a shared mirror, or a mirror taking over a source
            that is not one (or the other way round, or of another origin).
    """
    if mirror is not None and identity in mirror.brokers:
        raise RequestFailed(
            f"source {name!r} would mirror {mirror.describe()}, and those frames came "
            f"from this broker ({identity}): a mirror never copies a source back",
            "loop",
        )
    if mirror is not None and shared:
        raise RequestFailed(f"mirrored source {name!r} cannot be shared", "mirror")
    if not exists or have == mirror:
        return
    if have is None:
        why = f"source {name!r} is not a mirror; a mirror cannot take it over"
    elif mirror is None:
        why = (
            f"source {name!r} is a mirror of {have.describe()}; only a mirror may hold it "
            "(delete it first to use the name for a source of your own)"
        )
    elif (have.broker, have.source) == (mirror.broker, mirror.source):
        return  # the same frames, on another path: its numbers continue
    else:
        why = f"source {name!r} is a mirror of {have.describe()}, not of {mirror.describe()}"
    raise RequestFailed(why, "mirror")
