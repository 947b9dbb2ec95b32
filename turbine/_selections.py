"""What a reader may ask for: where a subscription starts, how a fetch selects frames.

Checked by the client before it sends a request and by the broker when one
arrives; a module of its own so that a client checks them without loading
the broker's router.
"""

from __future__ import annotations

from typing import Any

#: Where a new subscription starts on channels that already exist.
STARTS = ("now", "newest", "oldest")


def check_start(start: Any) -> str | int:
    if isinstance(start, bool) or not (start in STARTS or (isinstance(start, int) and start >= 1)):
        raise ValueError(
            f"start must be one of {', '.join(STARTS)} or a sequence number >= 1, not {start!r}"
        )
    return start


#: How a fetch selects frames: exactly one of these (``start`` may add ``duration``).
FETCH_SELECTIONS = ("newest", "oldest", "start", "after")


def check_selection(**given: Any) -> str:
    """The one fetch selection of ``given`` that is not None (see :data:`FETCH_SELECTIONS`).

    Raises:
        ValueError: none of them, or more than one.
    """
    chosen = [k for k in FETCH_SELECTIONS if given.get(k) is not None]
    if len(chosen) != 1:
        raise ValueError(
            "fetch takes exactly one of newest, oldest, start (with duration) or after"
        )
    return chosen[0]
