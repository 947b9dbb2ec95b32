"""The simulator component's operator commands, as text in and text out.

The component wrapper feeds each line from its command sink to
:func:`run_command` and publishes the answer on its command source::

    status                                   -> JSON of Rig.status()
    set-limit <cp> <axis> <type> <lo> <hi>   -> "OK set-limit ..." or "NOT OK <reason>"

Fields are separated by spaces or tabs.
"""

from __future__ import annotations

import json

from .rig import Rig, RigError

__all__ = ["COMMANDS", "run_command"]

COMMANDS = {
    "status": "status: the rig's state as JSON",
    "set-limit": "set-limit <controlPoint> <axis> <type> <lo> <hi>: change one limit",
}


def run_command(rig: Rig, text: str, now: float | None = None) -> str:
    """Run one operator command against ``rig`` and return the answer text.

    Never raises for a bad command: the answer then starts ``NOT OK`` and
    says what was wrong and what is accepted.
    """
    verb, *args = text.split() or [""]
    if verb == "status" and not args:
        return json.dumps(rig.status(now), sort_keys=True)
    if verb == "set-limit":
        if len(args) != 5:
            return f"NOT OK set-limit takes 5 arguments, got {len(args)}; usage: {COMMANDS[verb]}"
        cp, axis, kind, lo_text, hi_text = args
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError:
            return f"NOT OK set-limit: limits must be numbers, got {lo_text!r} {hi_text!r}"
        try:
            rig.set_limit(cp, axis, kind, lo, hi)
        except RigError as exc:
            return f"NOT OK set-limit: {exc.reason}"
        return f"OK set-limit {cp} {axis} {kind} {lo!r} {hi!r}"
    usage = "; ".join(COMMANDS.values())
    return f"NOT OK unknown command {text.strip()[:40]!r}; commands are {usage}"
