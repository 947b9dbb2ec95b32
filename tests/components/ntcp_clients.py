"""What deployed NTCP clients send, and what they check in the replies.

Each client below is a sequence of request lines, written down from the
client's public source (named in its comment), with the line ending it uses
and, per request, the checks it applies to each reply line it reads. The
values (targets, times in transaction ids) are made up; the shapes are the
clients'. Nothing here is the clients' code: only the facts of what goes over
the wire.

A check is a callable taking one reply line and returning ``None`` when the
client would accept it, or a sentence saying what the client would stop on.
"""

from __future__ import annotations

import attrs

from components.ntcp.protocol import AXES, TYPES

# ------------------------------------------------------------------ checks


@attrs.frozen
class Read:
    """The client reads the line and checks nothing in it."""

    def __call__(self, reply: str) -> str | None:
        return None


@attrs.frozen
class FirstTokenIsOk:
    """OpenFresco's ECLabVIEW: ``strcmp(strtok(rData, "\\t"), "OK") != 0`` stops the test."""

    def __call__(self, reply: str) -> str | None:
        return None if reply.split("\t", 1)[0] == "OK" else f"first token is not OK: {reply!r}"


@attrs.frozen
class NoNok:
    """The NEES test script: ``$result =~ m!NOK!`` aborts the step.

    (It would not notice ``NOT OK``; the replay test asks more of every reply.)
    """

    def __call__(self, reply: str) -> str | None:
        return None if "NOK" not in reply else f"reply holds NOK: {reply!r}"


@attrs.frozen
class EclabviewMeasured:
    """ECLabVIEW's ``acquire()``: one get-control-point reply line per output control point.

    Tab-separated: ``OK``, a code it skips, the transaction id (must equal the
    one it proposed under), the control point (must be ``MDL-00-01``), then
    axis/type/value triplets; each of the control point's signals (an axis and
    a type) must be answered exactly once, and every axis must be x, y or z.
    The line, its ``\\n`` and a NUL must fit the 512-byte buffer it reads into
    (``TCP_Socket::recvMsgUnknownSize`` reads what is available, until a read
    ends in ``\\n``).
    """

    trans_id: str
    control_point: str
    signals: tuple[tuple[str, str], ...]

    def __call__(self, reply: str) -> str | None:
        if len(reply) + 2 > 512:
            return f"{len(reply) + 1} bytes overflow its 512-byte receive buffer"
        tokens = reply.split("\t")
        if tokens[0] != "OK":
            return f"failed to acquire: {reply!r}"
        if len(tokens) < 4 or tokens[2] != self.trans_id:
            return f"received wrong OPFTransactionID: want {self.trans_id}, got {tokens[2:3]}"
        if tokens[3] != self.control_point:
            return f"received wrong control-point: want {self.control_point}, got {tokens[3]}"
        triplets = tokens[4:]
        if len(triplets) % 3:
            return f"triplets cut short: {triplets!r}"
        seen = [(triplets[i], triplets[i + 1]) for i in range(0, len(triplets), 3)]
        if any(axis not in AXES or kind not in TYPES for axis, kind in seen):
            return f"received wrong direction or type: {seen!r}"
        for signal in self.signals:
            if seen.count(signal) != 1:
                return f"received wrong number of {signal}: {seen.count(signal)}"
        for i in range(2, len(triplets), 3):
            try:
                float(triplets[i])
            except ValueError:
                return f"atof cannot read {triplets[i]!r}"
        return None


@attrs.frozen
class MatlabMeasured:
    """The MATLAB LBCB plugin's ``query.m``: split on spaces and tabs (``strtok``).

    Tokens 5 to 40 (1-based) are read as 12 triplets, axis then type then a
    number (``str2num``); it files each value by type and axis, so all six
    degrees of freedom of both kinds must come. (It then reads five more
    triplets, tokens 41 to 55, from the external sensors of its own rig; its
    token cell is preallocated, so their absence stops nothing.)
    """

    def __call__(self, reply: str) -> str | None:
        tokens = reply.replace("\t", " ").split()
        if len(tokens) < 40:
            return f"{len(tokens)} tokens; tokens 5 to 40 hold the 12 triplets"
        seen = set()
        for k in range(12):
            axis, kind, number = tokens[4 + 3 * k : 7 + 3 * k]
            if axis not in AXES or kind not in TYPES:
                return f"triplet {k + 1} is {axis!r} {kind!r}"
            try:
                float(number)
            except ValueError:
                return f"str2num cannot read {number!r}"
            seen.add((kind, axis))
        if len(seen) != 12:
            return f"some degrees of freedom missing: {sorted(seen)}"
        return None


Check = Read | FirstTokenIsOk | NoNok | EclabviewMeasured | MatlabMeasured


@attrs.frozen
class Step:
    """One request line and a check per reply line the client reads for it."""

    request: str
    checks: tuple[Check, ...]


@attrs.frozen
class NtcpClientSequence:
    name: str
    #: Where in which public project the sequence comes from.
    source: str
    line_end: bytes
    #: Control points the rig behind it must have.
    control_points: tuple[str, ...]
    steps: tuple[Step, ...]


def _e(value: float) -> str:
    """C's and LabVIEW's ``%.10E``."""
    return f"{value:.10E}"


# ------------------------------------------------------------------ OpenFresco


def _openfresco() -> NtcpClientSequence:
    # aschellenberg74/OpenFresco, SRC/experimentalControl/ECLabVIEW.cpp: the
    # constructor opens the session and sets nstep; setup() runs control()
    # and acquire() once at zero; each step runs them again; the destructor
    # closes the session. Lines end in "\n". Here with two trial control
    # points (the second and later are sent as "control-point CPNode<tag>")
    # and two output control points, all of which it names MDL-00-01.
    #
    # control() builds the transaction id from time() to the second
    # ("OPFTransaction%4d%02d%02d%02d%02d%02d", months from 0), so two steps
    # within one second propose under the same id: a new transaction.
    ok = (FirstTokenIsOk(),)
    out_signals = (("x", "displacement"), ("x", "force"))

    def step(trans_id: str, cp1_x: float, cp2_x: float, cp2_y: float) -> list[Step]:
        propose = (
            f"propose\t{trans_id}\tMDL-00-01\tx\tdisplacement\t{_e(cp1_x)}"
            f"\tcontrol-point\tCPNode02\tx\tdisplacement\t{_e(cp2_x)}"
            f"\ty\tdisplacement\t{_e(cp2_y)}"
        )
        measured = EclabviewMeasured(trans_id, "MDL-00-01", out_signals)
        return [
            Step(propose, ok),
            Step(f"execute\t{trans_id}", ok),
            Step(f"get-control-point\t{trans_id}\tMDL-00-01\tMDL-00-01", (measured, measured)),
        ]

    same_second = "OPFTransaction20261101093000"
    return NtcpClientSequence(
        name="OpenFresco ECLabVIEW",
        source="aschellenberg74/OpenFresco SRC/experimentalControl/ECLabVIEW.cpp",
        line_end=b"\n",
        control_points=("MDL-00-01", "CPNode02"),
        steps=(
            Step("open-session\tOpenFresco", ok),
            Step("set-parameter\tOPFTransaction\tnstep\t1", ok),
            *step(same_second, 0.0, 0.0, 0.0),  # setup(): the initial measurement
            *step(same_second, 0.25, 0.5, -0.125),  # step 1, in the same second
            *step("OPFTransaction20261101093001", 0.5, 1.0, -0.25),
            Step("close-session\tOpenFresco", ok),
        ),
    )


# ------------------------------------------------------------------ NEES test script


def _nees_script() -> NtcpClientSequence:
    # mbletzinger/lbcb-om, "Test Utilities/testNtcpLink.pl" run with --lbcb=2
    # (the UIUC NEES site's link test): lines end in "\r\n"; open-session and
    # set-parameter have a space after the verb; the transaction id is
    # "trans$year$month$mday$hour$min$sec.320[$i 0 4]" (spaces inside, and
    # $month an unset variable incremented each step); both LBCBs in one
    # propose, the second named straight after the first one's triplet;
    # every get-control-point uses the id "dummy" and names one sub-device;
    # the session is closed as "dummy" (opened as "dummySession") and that
    # reply is never read. Steps alternate between 1.0 and -1.0.
    nok = (NoNok(),)
    steps = [
        Step("open-session dummySession", nok),
        Step("set-parameter dummySetParam\tnstep\t0", nok),
    ]
    for i, increment in enumerate(("1.0", "-1.0", "1.0", "-1.0"), start=1):
        trans_id = f"trans2026{i}1935{10 + i}.320[{i} 0 4]"
        steps += [
            Step(
                f"propose\t{trans_id}\tMDL-00-01:LBCB1\tx\tdisplacement\t{increment}"
                f"\tMDL-00-01:LBCB2\tx\tdisplacement\t{increment}",
                nok,
            ),
            Step(f"execute\t{trans_id}", nok),
            Step("get-control-point\tdummy\tMDL-00-01:LBCB1", (Read(),)),
            Step("get-control-point\tdummy\tMDL-00-01:LBCB2", (Read(),)),
            Step("get-control-point\tdummy\tMDL-00-01:ExternalSensors", (Read(),)),
        ]
    steps.append(Step("close-session\tdummy", (Read(),)))
    return NtcpClientSequence(
        name="NEES UIUC testNtcpLink.pl",
        source='mbletzinger/lbcb-om "Test Utilities/testNtcpLink.pl"',
        line_end=b"\r\n",
        control_points=("MDL-00-01:LBCB1", "MDL-00-01:LBCB2", "MDL-00-01:ExternalSensors"),
        steps=tuple(steps),
    )


# ------------------------------------------------------------------ MATLAB plugin


def _matlab_plugin() -> NtcpClientSequence:
    # mbletzinger/lbcb-plugin, 00_LBCB_Plugin/@MDL_LBCB/ open.m, propose.m,
    # execute.m, query.m, close.m and private/Sendvar_LabView.m at commit
    # 19424a2281afa5b5cc8fae811aad570242a0a66d (the LBCB plugin for
    # UI-SimCor, January 2009): lines end in "\n" (char 10); open reads one
    # reply line, sets nstep; each step proposes all six degrees of freedom of
    # MDL-00-01 with "%.10e" (lower-case exponent; a force-controlled DOF is
    # sent as force or moment), executes, and queries with the id "dummy";
    # the transaction id is "trans%4d%02d%02d%02d%02d%4.2f" of clock (seconds
    # with two decimals); close sends close-session "dummy" and never reads.
    read = (Read(),)

    def propose(trans_id: str, d: tuple[float, float, float], z_force: float | None) -> str:
        z = f"z\tforce\t{z_force:.10e}" if z_force is not None else f"z\tdisplacement\t{d[2]:.10e}"
        return (
            f"propose\t{trans_id}\tMDL-00-01\tx\tdisplacement\t{d[0]:.10e}"
            f"\ty\tdisplacement\t{d[1]:.10e}\t{z}"
            f"\tx\trotation\t{0.0:.10e}\ty\trotation\t{0.0:.10e}\tz\trotation\t{0.001:.10e}"
        )

    steps = [
        Step("open-session\tdummyOpenSession", read),
        Step("set-parameter\tdummySetParam\tnstep\t3", read),
    ]
    for trans_id, d, z_force in (
        ("trans2026120109305.25", (0.1, 0.0, 0.0), None),
        ("trans2026120109306.75", (0.2, -0.05, 0.0), 20.0),
        ("trans20261201093010.50", (-0.3, 0.05, 0.0), None),
    ):
        steps += [
            Step(propose(trans_id, d, z_force), read),
            Step(f"execute\t{trans_id}", read),
            Step("get-control-point\tdummy\tMDL-00-01", (MatlabMeasured(),)),
        ]
    steps.append(Step("close-session\tdummy", (Read(),)))
    return NtcpClientSequence(
        name="MATLAB LBCB plugin",
        source="mbletzinger/lbcb-plugin 00_LBCB_Plugin/@MDL_LBCB/*.m @ 19424a22",
        line_end=b"\n",
        control_points=("MDL-00-01",),
        steps=tuple(steps),
    )


CLIENTS: tuple[NtcpClientSequence, ...] = (_openfresco(), _nees_script(), _matlab_plugin())
