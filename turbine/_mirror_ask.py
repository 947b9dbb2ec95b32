"""``turbine mirror --inside``: the program's side, which asks a broker to copy.

The program asks the broker that copies (``B`` with ``inside="to"``, ``A``
with ``inside="from"``) once a poll and relays what it reports
(``turbine/_mirror_inside.py`` is the broker's side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ._errors import ConnectionFailed, TurbineError
from .auth import find_token
from .client import open_client

if TYPE_CHECKING:
    from .mirror import MirrorConfig, MirrorStats

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
    config: MirrorConfig,
    stats: MirrorStats,
    report: Callable[[str], None],
    copying: Callable[[], None],
) -> None:
    """Have ``B`` copy (``A`` with ``inside="from"``), and relay what it did every
    ``config.poll`` s (never returns).

    The copying lasts as long as this connection; asked again over a new one
    (the client reconnects), the broker starts it again, from where the copy stops.

    Raises:
        MirrorUnsupported: the broker does not know the request (it closed the
            connection with a protocol error naming it).
        ConnectionFailed: a broker went away.
    """
    push = config.inside == "from"
    # (this program logs in where the broker copies; the broker, with the token sent, at the other)
    here, here_token, there, there_token = (
        (config.origin, config.origin_token, config.target, config.target_token)
        if push
        else (config.target, config.target_token, config.origin, config.origin_token)
    )
    token = there_token if there_token is not None else find_token()
    async with open_client(here, name=config.name, token=here_token, comes_back=True) as b:
        while True:
            try:
                done = await b.mirror_inside(
                    None if push else there,
                    list(config.patterns),
                    target=there if push else None,
                    prefix=config.prefix,
                    poll=config.poll,
                    retry=config.retry,
                    token=token,
                )
            except ConnectionFailed as exc:
                if any(said in str(exc) for said in _REFUSALS[config.inside]):
                    raise _unsupported(config.inside, here, b.broker_software) from None
                raise
            for line in done["reports"]:
                report(line)
            stats.sessions += done["sessions"]
            stats.sources += done["sources"]
            stats.frames += done["frames"]
            stats.skipped.update(done["skipped"])
            if done["copying"]:
                copying()
            await trio.sleep(config.poll)


def _unsupported(inside: str, address: str, software: str) -> MirrorUnsupported:
    return MirrorUnsupported(
        f"the broker at {address} ({software}) does not support a mirror inside it "
        f"(--inside {inside}): it does not know this 'mirror' request; upgrade it, "
        "or run the mirror without --inside, as a process of its own"
    )
