"""The broker's memory budget: what every source reserves, and which offline
sources give way when a new reservation does not fit.

Pure and synchronous, like the hub (``hub.py``) that applies it.
"""

from __future__ import annotations

from collections.abc import Collection

from ._constants import EVICTION_SHARE
from ._errors import RequestFailed
from ._format import fmt_bytes
from .sources import Source


def reserved(sources: Collection[Source]) -> int:
    """Bytes the sources reserve together (their ``cache_bytes``)."""
    return sum(s.cache_bytes for s in sources)


def make_room(
    sources: Collection[Source],
    max_memory: int,
    need: int,
    replacing: Source | None,
    owner: str,
) -> list[Source]:
    """The offline sources to delete, oldest offline first, so that ``need`` bytes
    fit in ``max_memory`` (``replacing``'s own reservation counts as free).

    Other clients' offline history goes only for a client (``owner``) within
    its share of the memory (its sources' reservations, this one included).

    Raises:
        RequestFailed: it cannot fit even then (code ``memory``); says what is
            left and how to fix it.  Nothing is to be deleted then: a refusal
            must cost no one's frames.
    """
    free = max_memory - reserved(sources) + (replacing.cache_bytes if replacing else 0)
    mine = need + sum(s.cache_bytes for s in sources if s.owner == owner and s is not replacing)
    share = int(max_memory * EVICTION_SHARE)
    offline = sorted(
        (
            s
            for s in sources
            if not s.online and s is not replacing and (s.owner == owner or mine <= share)
        ),
        key=lambda s: s.offline_since or 0,
    )
    available = free + sum(s.cache_bytes for s in offline)  # offline sources may go
    if available < need:
        kept = (
            f"; other clients' offline sources are kept, as {owner} would then reserve "
            f"{fmt_bytes(mine)}, over its share of {fmt_bytes(share)}"
            if mine > share
            else ""
        )
        raise RequestFailed(
            f"cannot reserve {fmt_bytes(need)} (cache_bytes) for this source: only "
            f"{fmt_bytes(max(available, 0))} of the broker's {fmt_bytes(max_memory)} "
            f"are left{kept}; ask for less or start the broker with a larger --max-memory",
            "memory",
        )
    going: list[Source] = []
    for src in offline:
        if free >= need:
            break
        going.append(src)
        free += src.cache_bytes
    return going
