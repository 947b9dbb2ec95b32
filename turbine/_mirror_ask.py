"""``turbine mirror --inside``: the program's side, which asks a broker to copy.

The program asks the broker that copies (``B`` with ``inside="to"``, ``A``
with ``inside="from"``) once a poll and relays what it reports
(``turbine/_mirror_inside.py`` is the broker's side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ._errors import ConnectionFailed, TurbineError
from .client import open_client

#: What a broker without the request says of it, by side (a protocol error;
#: turbine/checks.py words it): one that does not know the ``mirror`` message,
#: and one whose ``mirror`` message still needs an ``origin`` (a pull only).
_REFUSALS = {
    "to": ("the broker reported: unknown message type 'mirror'",),
    "from": (
        "the broker reported: unknown message type 'mirror'",
        "the broker reported: 'mirror' message lacks its 'origin' field",
    ),
}


class MirrorUnsupported(TurbineError):
    """The broker asked to copy inside itself does not know how: asking again is no use."""


async def ask_inside(
    here: str,
    token: str | None,
    name: str,
    inside: str,
    ask: dict[str, Any],
    poll: float,
    relay: Callable[[dict[str, Any]], None],
) -> None:
    """Ask the broker at ``here`` to copy (``Client.mirror_inside(**ask)``) every
    ``poll`` s, giving ``relay`` what it did since (never returns).

    The copying lasts as long as this connection; asked again over a new one
    (the client reconnects), the broker starts it again, from where the copy stops.

    Raises:
        MirrorUnsupported: the broker does not know the request (it closed the
            connection with a protocol error naming it).
        ConnectionFailed: a broker went away.
    """
    async with open_client(here, name=name, token=token, comes_back=True) as b:
        while True:
            try:
                done = await b.mirror_inside(**ask)
            except ConnectionFailed as exc:
                if any(said in str(exc) for said in _REFUSALS[inside]):
                    raise _unsupported(inside, here, b.broker_software) from None
                raise
            relay(done)
            await trio.sleep(poll)


def _unsupported(inside: str, address: str, software: str) -> MirrorUnsupported:
    return MirrorUnsupported(
        f"the broker at {address} ({software}) does not support a mirror inside it "
        f"(--inside {inside}): it does not know this 'mirror' request; upgrade it, "
        "or run the mirror without --inside, as a process of its own"
    )
