"""A scripted NTCP session, and a comparison of two runs of it.

The script is a fixed list of request lines (it never depends on replies), so
it can be replayed over any path - straight to the control system, or through
the turbine - and the two transcripts compared with :func:`compare_replies`.
"""

from __future__ import annotations

import math
from typing import Protocol

from .protocol import (
    AXES,
    NtcpProtocolError,
    format_number,
    parse_reply,
    verb_of,
)

__all__ = ["LineClient", "compare_replies", "scripted_requests", "scripted_session"]


class LineClient(Protocol):
    """Anything that sends one request line and returns the reply line."""

    async def request(self, line: str) -> str: ...


def _targets(step: int) -> tuple[float, float]:
    """Displacement and rotation of a step: a slow sine, well within default limits."""
    phase = 2.0 * math.pi * step / 16.0
    return round(2.0 * math.sin(phase), 6), round(0.05 * math.cos(phase), 6)


def scripted_requests(
    *, steps: int = 5, control_point: str = "MDL-00-01", session: str = "ntcp-script"
) -> list[str]:
    """The request lines of the scripted session.

    In order: open-session; set-parameter and get-parameter; a proposal that
    brings all six degrees of freedom home, its execute and a first
    get-control-point; ``steps`` times propose (x displacement and z rotation)
    / execute / get-control-point; a force-controlled step; a proposal far
    outside the limits (refused) and an execute of it (refused); a proposal
    that is cancelled and then executed (refused); a second execute of the
    last step (refused); close-session.

    Raises:
        ValueError: ``steps`` is below 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    cp = control_point
    zero = format_number(0.0)
    home = "\t".join(
        f"{axis}\t{kind}\t{zero}" for kind in ("displacement", "rotation") for axis in AXES
    )
    lines = [
        f"open-session\t{session}",
        f"set-parameter\tp1\tstep-count\t{steps}",
        "get-parameter\tp2\tstep-count",
        # Home every degree of freedom first, so the script does not depend on
        # where an earlier run left the rig.
        f"propose\th0\t{cp}\t{home}",
        "execute\th0",
        f"get-control-point\tm0\t{cp}",
    ]
    for step in range(1, steps + 1):
        d, r = _targets(step)
        lines += [
            f"propose\ts{step}\t{cp}\tx\tdisplacement\t{format_number(d)}"
            f"\tz\trotation\t{format_number(r)}",
            f"execute\ts{step}",
            f"get-control-point\tm{step}\t{cp}",
        ]
    lines += [
        f"propose\tf1\t{cp}\ty\tforce\t{format_number(5.0)}",
        "execute\tf1",
        f"get-control-point\tmf1\t{cp}",
        f"propose\tbad1\t{cp}\tx\tdisplacement\t{format_number(1.0e6)}",
        "execute\tbad1",
        f"propose\tc1\t{cp}\tx\tdisplacement\t{format_number(0.0)}",
        "cancel\tc1",
        "execute\tc1",
        f"execute\ts{steps}",
        f"close-session\t{session}",
    ]
    return lines


async def scripted_session(
    client: LineClient,
    *,
    steps: int = 5,
    control_point: str = "MDL-00-01",
    session: str = "ntcp-script",
) -> list[tuple[str, str]]:
    """Run :func:`scripted_requests` through ``client``; return (request, reply) pairs.

    ``client`` is an :class:`~components.ntcp.client.NtcpClient` or anything
    with ``async request(line) -> reply line``. Requests go one at a time, each
    after the previous reply. Sets no deadline of its own.
    """
    transcript = []
    for line in scripted_requests(steps=steps, control_point=control_point, session=session):
        transcript.append((line, await client.request(line)))
    return transcript


def _compare_measurements(
    where: str, a: tuple[str, ...], b: tuple[str, ...], noise_tol: float, position_tol: float
) -> list[str]:
    # fields: transId, controlPoint, then axis/type/value triplets.
    diffs = []
    if a[:2] != b[:2]:
        diffs.append(f"{where}: {a[:2]!r} != {b[:2]!r}")
    for i in range(2, len(a), 3):
        ta, tb = a[i : i + 3], b[i : i + 3]
        if ta[:2] != tb[:2]:
            diffs.append(f"{where}: field {i + 2}: {ta[:2]!r} != {tb[:2]!r}")
            continue
        try:
            va, vb = float(ta[2]), float(tb[2])
        except ValueError:
            if ta[2] != tb[2]:
                diffs.append(f"{where}: {' '.join(ta[:2])}: {ta[2]!r} != {tb[2]!r}")
            continue
        tol = noise_tol if ta[1] in ("force", "moment") else position_tol
        if not abs(va - vb) <= tol:
            diffs.append(
                f"{where}: {' '.join(ta[:2])}: {ta[2]} and {tb[2]} differ by"
                f" {abs(va - vb):.3g} (tolerance {tol:g})"
            )
    return diffs


def compare_replies(
    a: list[tuple[str, str]],
    b: list[tuple[str, str]],
    *,
    noise_tol: float = 5.0,
    position_tol: float = 1e-9,
) -> list[str]:
    """Compare two transcripts field for field; return the differences (empty if alike).

    Requests and replies must match exactly, line for line (a get-control-point
    naming several control points has one reply line each), except the
    measured values in successful get-control-point replies: forces and moments may differ by
    ``noise_tol`` (measurement noise; the simulator's noise is clipped at 4
    standard deviations, so 8 sigma is a safe bound), displacements and
    rotations by ``position_tol``.
    """
    diffs: list[str] = []
    if len(a) != len(b):
        diffs.append(f"transcripts differ in length: {len(a)} != {len(b)}")
    for index, ((req_a, rep_a), (req_b, rep_b)) in enumerate(zip(a, b, strict=False), start=1):
        verb = verb_of(req_a)
        where = f"step {index} ({verb or req_a[:20]!r})"
        if req_a != req_b:
            diffs.append(f"{where}: requests differ: {req_a!r} != {req_b!r}")
            continue
        if rep_a == rep_b:
            continue
        lines_a, lines_b = rep_a.split("\n"), rep_b.split("\n")
        if len(lines_a) != len(lines_b):
            diffs.append(f"{where}: {len(lines_a)} reply lines != {len(lines_b)}")
            continue
        for line, (la, lb) in enumerate(zip(lines_a, lines_b, strict=True), start=1):
            at = where if len(lines_a) == 1 else f"{where} line {line}"
            diffs += _compare_line(at, verb, la, lb, noise_tol, position_tol)
    return diffs


def _compare_line(
    where: str, verb: str | None, rep_a: str, rep_b: str, noise_tol: float, position_tol: float
) -> list[str]:
    if rep_a == rep_b:
        return []
    try:
        ra, rb = parse_reply(rep_a), parse_reply(rep_b)
    except NtcpProtocolError as exc:
        return [f"{where}: replies differ ({exc.reason}): {rep_a!r} != {rep_b!r}"]
    measured = (
        verb == "get-control-point"
        and ra.ok
        and rb.ok
        and ra.code == rb.code
        and len(ra.fields) == len(rb.fields)
        and len(ra.fields) >= 2
        and (len(ra.fields) - 2) % 3 == 0
    )
    if measured:
        return _compare_measurements(where, ra.fields, rb.fields, noise_tol, position_tol)
    if ra != rb:
        return [f"{where}: replies differ: {rep_a!r} != {rep_b!r}"]
    return []
