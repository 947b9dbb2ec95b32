"""What the archive is asked to write: the ops of a source's queue, and a failed write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class Put:
    channel: str
    first_seq: int
    ts: list[float]
    sizes: list[int]
    data: Sequence[Any]
    writer: str


@attrs.frozen
class Producer:
    """``producer``'s put number ``pseq`` is stored (queued after that put's frames)."""

    producer: str
    pseq: int


@attrs.frozen
class Declare:
    channel: str
    content_type: str
    next_seq: int


@attrs.frozen
class Hole:
    channel: str
    first_seq: int
    count: int


@attrs.frozen
class Settings:
    settings: dict[str, Any]


@attrs.frozen
class Summary:
    """A complete block summary of a float64 channel (:data:`turbine.summary.Block`),
    queued after the frames it covers; kept in the segment's summary file."""

    channel: str
    block: tuple[Any, ...]


Op = Put | Declare | Hole | Settings | Producer | Summary


class WriteFailed(Exception):
    """Writing the archive failed after ``written`` ops; ``error`` says why."""

    def __init__(self, written: int, error: OSError) -> None:
        super().__init__(f"{error.strerror or error} after {written} ops")
        self.written = written
        self.error = error
