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
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
