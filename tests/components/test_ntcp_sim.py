"""The control-system simulator over real loopback TCP, and its rig model."""

import json
import math
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from components.ntcp.client import NtcpClient, NtcpConnectionClosed, open_ntcp, write_at_once
from components.ntcp.protocol import (
    AXES,
    TYPES,
    AxisValue,
    ControlPointValues,
    parse_control_point_reply,
    parse_reply,
)
from components.ntcp.session import compare_replies, scripted_session
from components.ntcp_sim.commands import run_command
from components.ntcp_sim.rig import NOISE_CLIP, Rig, RigConfig, RigError
from components.ntcp_sim.server import serve_ntcp_sim

CP = "MDL-00-01"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_sim(nursery):
    """Start a simulator on a free loopback port; returns (rig, port)."""

    async def start(**config):
        rig = Rig(RigConfig(**config))
        port = await nursery.start(serve_ntcp_sim, rig, "127.0.0.1", 0)
        return rig, port

    return start


def measured(reply_line: str) -> dict[tuple[str, str], float]:
    return parse_control_point_reply(parse_reply(reply_line))[1].as_dict()


# ------------------------------------------------------------------ the scripted session


async def test_scripted_session_over_tcp(start_sim, autojump_clock):
    rig, port = await start_sim()
    with trio.fail_after(30):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            transcript = await scripted_session(ntcp, steps=4)
    replies = {request: reply for request, reply in transcript}
    refused = [(req, rep) for req, rep in transcript if not parse_reply(rep).ok]
    assert [req for req, _ in refused] == [
        f"propose\tbad1\t{CP}\tx\tdisplacement\t1.0000000000E+06",
        "execute\tbad1",
        "execute\tc1",
        "execute\ts4",
    ]
    assert "outside the limits [-1.0000000000E+01, 1.0000000000E+01]" in refused[0][1]
    assert "was rejected at propose" in refused[1][1]
    assert refused[2][1] == "NOT OK\tcannot execute transaction c1: it was already cancelled"
    assert refused[3][1] == "NOT OK\tcannot execute transaction s4: it was already executed"
    assert replies["get-parameter\tp2\tstep-count"] == "OK\t0\tp2\tstep-count\t4"
    assert replies["open-session\tntcp-script"] == "OK\t0\tntcp-script"
    assert replies["close-session\tntcp-script"] == "OK\t0\tntcp-script"

    # Each step's measurement shows the proposed target reached.
    for index, (request, _) in enumerate(transcript):
        if request.startswith("propose\ts"):
            fields = request.split("\t")
            target = {(fields[i], fields[i + 1]): float(fields[i + 2]) for i in (3, 6)}
            after = measured(transcript[index + 2][1])
            for dof, value in target.items():
                assert after[dof] == pytest.approx(value, abs=1e-12)
    # A force-controlled step: y displacement = force / stiffness.
    values = measured(replies[f"get-control-point\tmf1\t{CP}"])
    assert values[("y", "displacement")] == pytest.approx(5.0 / rig.config.stiffness)


async def test_scripted_session_runs_again_on_the_same_simulator(start_sim, autojump_clock):
    """Sessions own their transaction ids, so a second run gets the same replies."""
    _, port = await start_sim()
    with trio.fail_after(30):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            first = await scripted_session(ntcp, steps=3)
        async with open_ntcp("127.0.0.1", port) as ntcp:
            second = await scripted_session(ntcp, steps=3)
    assert first != second  # measurement noise differs...
    assert compare_replies(first, second) == []  # ...and nothing else does


# ------------------------------------------------------------------ transactions


async def test_proposal_outside_limits_is_rejected_with_the_reason(start_sim, autojump_clock):
    rig, port = await start_sim()
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            await ntcp.open_session("s")
            reply = await ntcp.propose("t1", {CP: {("x", "displacement"): 2.0}})
            assert reply.ok
            rig.set_limit(CP, "x", "displacement", -1.5, 1.5)
            reply = await ntcp.propose("t2", {CP: {("x", "displacement"): 2.0}})
            assert reply.reason == (
                "propose t2 rejected: MDL-00-01 x displacement 2.0000000000E+00 is outside"
                " the limits [-1.5000000000E+00, 1.5000000000E+00]"
            )
            reply = await ntcp.propose("t3", {CP: {("x", "force"): 400.0}})
            assert "x force 4.0000000000E+02 needs displacement 4.0000000000E+00" in reply.reason
            reply = await ntcp.propose("t4", {"MDL-09-09": {("x", "displacement"): 0.0}})
            assert reply.reason == (
                "propose t4 rejected: unknown control point 'MDL-09-09'; this rig has MDL-00-01"
            )
            reply = await ntcp.propose(
                "t5", {CP: {("x", "displacement"): 0.1, ("x", "force"): 1.0}}
            )
            assert "x is given both displacement and force" in reply.reason
            reply = await ntcp.propose("t1", {CP: {("x", "displacement"): 0.0}})
            assert reply.reason == (
                "transaction t1 is still proposed; execute or cancel it before proposing"
                " again under its transId"
            )
            # The rejected ones cannot be executed; the accepted one can.
            assert "rejected at propose" in (await ntcp.execute("t2")).reason
            assert (await ntcp.execute("t1")).ok


async def test_cancel_and_execute_rules(start_sim, autojump_clock):
    _, port = await start_sim()
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            await ntcp.open_session("s")
            assert (await ntcp.propose("t1", {CP: {("x", "displacement"): 1.0}})).ok
            assert (await ntcp.cancel("t1")).ok
            assert (await ntcp.execute("t1")).reason == (
                "cannot execute transaction t1: it was already cancelled"
            )
            assert (await ntcp.cancel("t1")).reason == (
                "cannot cancel transaction t1: it was already cancelled"
            )
            assert (await ntcp.propose("t2", {CP: {("x", "displacement"): 1.0}})).ok
            assert (await ntcp.execute("t2")).ok
            assert (await ntcp.execute("t2")).reason == (
                "cannot execute transaction t2: it was already executed"
            )
            assert (await ntcp.cancel("t2")).reason == (
                "cannot cancel transaction t2: it was already executed"
            )
            assert (await ntcp.execute("t9")).reason == "unknown transaction t9; propose it first"
            assert (await ntcp.cancel("t9")).reason == "unknown transaction t9; propose it first"
            # The cancelled proposal never moved the rig.
            _, values = await ntcp.get_control_point("m", CP)
            assert values.as_dict()[("x", "displacement")] == 1.0


class CountingRig(Rig):
    """A real rig that also remembers every execute that moved it."""

    def __init__(self, config: RigConfig) -> None:
        super().__init__(config)
        self.executes: list[str] = []

    def execute(self, session: str, trans_id: str, now: float | None = None) -> float:
        done_at = super().execute(session, trans_id, now)  # a refusal raises
        self.executes.append(trans_id)
        return done_at


async def test_same_id_new_proposal_is_a_new_transaction_but_a_resent_execute_is_refused(
    nursery, autojump_clock
):
    rig = CountingRig(RigConfig())
    port = await nursery.start(serve_ntcp_sim, rig, "127.0.0.1", 0)
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            await ntcp.open_session("s")
            # A clock-built id, reused within the same second.
            tid = "OPFTransaction20261101093000"
            assert await ntcp.request(f"propose\t{tid}\t{CP}\tx\tdisplacement\t0.5") == (
                f"OK\t0\t{tid}"
            )
            assert await ntcp.request(f"execute\t{tid}") == f"OK\t0\t{tid}"
            # The same execute again (a retry): refused, the rig never sees it twice.
            assert await ntcp.request(f"execute\t{tid}") == (
                f"NOT OK\tcannot execute transaction {tid}: it was already executed"
            )
            # A new proposal under the used id: a new transaction, executed once.
            assert await ntcp.request(f"propose\t{tid}\t{CP}\tx\tdisplacement\t-0.5") == (
                f"OK\t0\t{tid}"
            )
            assert await ntcp.request(f"execute\t{tid}") == f"OK\t0\t{tid}"
            assert await ntcp.request(f"execute\t{tid}") == (
                f"NOT OK\tcannot execute transaction {tid}: it was already executed"
            )
            # While one is open, its id cannot be proposed again.
            assert (await ntcp.propose("open", {CP: {("y", "displacement"): 0.1}})).ok
            assert (
                "is still proposed"
                in (await ntcp.propose("open", {CP: {("y", "displacement"): 0}})).reason
            )
            _, values = await ntcp.get_control_point("dummy", CP)
        await trio.testing.wait_all_tasks_blocked()
    assert rig.executes == [tid, tid]  # four asked, the two re-sent ones refused
    assert values.as_dict()[("x", "displacement")] == -0.5
    assert rig.status()["sessions"] == {}


async def test_sub_device_points_several_per_request_each_with_its_own_values(
    start_sim, autojump_clock
):
    points = ("MDL-00-01:LBCB1", "MDL-00-01:LBCB2", "MDL-00-01:ExternalSensors")
    _, port = await start_sim(control_points=points)
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            assert await ntcp.request("open-session dummySession") == "OK\t0\tdummySession"
            line = (
                "propose\tT1\tMDL-00-01:LBCB1\tx\tdisplacement\t1.0"
                "\tcontrol-point\tMDL-00-01:LBCB2\tx\tdisplacement\t-1.0"
            )
            assert await ntcp.request(line) == "OK\t0\tT1"
            assert await ntcp.request("execute T1") == "OK\t0\tT1"
            reply = await ntcp.request(
                "get-control-point\tdummy\tMDL-00-01:LBCB2\tNOPE\tMDL-00-01:LBCB1"
            )
            second, unknown, first = reply.split("\n")
            assert unknown.startswith("NOT OK\tunknown control point 'NOPE'")
            assert measured(first)[("x", "displacement")] == 1.0
            assert measured(second)[("x", "displacement")] == -1.0
            assert second.startswith("OK\t0\tdummy\tMDL-00-01:LBCB2\tx\tdisplacement\t")
            each = [await ntcp.request(f"get-control-point\tdummy\t{p}") for p in points]
            assert [parse_reply(r).fields[1] for r in each] == list(points)
            assert measured(each[2])[("x", "displacement")] == 0.0
            # Closed under another name than it was opened with, as clients do.
            assert await ntcp.request("close-session\tdummy") == "OK\t0\tdummy"
            assert await ntcp.request("close-session\tdummy") == (
                "NOT OK\tclose-session dummy: no session is open on this connection"
            )
            # Without a session, each named point gets its refusal.
            refused = await ntcp.request("get-control-point\tdummy\tMDL-00-01:LBCB1\tX")
            assert (
                refused.split("\n")
                == [
                    "NOT OK\tget-control-point: no session is open on this connection;"
                    " send open-session first"
                ]
                * 2
            )


async def test_proposal_lapses_after_the_timeout(start_sim, autojump_clock):
    _, port = await start_sim(lapse_timeout=30.0)
    with trio.fail_after(120):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            await ntcp.open_session("s")
            assert (await ntcp.propose("late", {CP: {("x", "displacement"): 1.0}})).ok
            assert (await ntcp.propose("on-time", {CP: {("y", "displacement"): 1.0}})).ok
            await trio.sleep(29.0)
            assert (await ntcp.execute("on-time")).ok
            await trio.sleep(2.0)
            assert (await ntcp.execute("late")).reason == (
                "cannot execute transaction late: it lapsed: it was not executed within"
                " 30 s of its proposal"
            )
            assert "lapsed" in (await ntcp.cancel("late")).reason
            _, values = await ntcp.get_control_point("m", CP)
            assert values.as_dict()[("x", "displacement")] == 0.0


async def test_execute_replies_when_the_actuator_arrives(start_sim, autojump_clock):
    rig, port = await start_sim(displacement_speed=2.0, rotation_speed=0.1)
    with trio.fail_after(60):
        async with open_ntcp("127.0.0.1", port) as ntcp, open_ntcp("127.0.0.1", port) as watcher:
            await ntcp.open_session("s")
            await watcher.open_session("w")
            await ntcp.propose("t1", {CP: {("x", "displacement"): 3.0, ("z", "rotation"): 0.1}})
            seen = {}

            async def watch():
                await trio.sleep(0.5)
                _, values = await watcher.get_control_point("m", CP)
                seen.update(values.as_dict())

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                reply = await ntcp.execute("t1")
            took = trio.current_time() - started
            assert reply.ok
            # x needs 3.0 / 2.0 = 1.5 s; z needs 0.1 / 0.1 = 1.0 s: the slower one rules.
            assert took == pytest.approx(1.5)
            assert seen[("x", "displacement")] == pytest.approx(1.0)  # 0.5 s * 2.0 / s
            assert seen[("z", "rotation")] == pytest.approx(0.05)
            assert rig.status()["control_points"][CP]["moving"] is False
            _, values = await ntcp.get_control_point("m", CP)
            assert values.as_dict()[("x", "displacement")] == 3.0
            # A second execute pipelined behind the first is answered after it.
            await ntcp.propose("t2", {CP: {("x", "displacement"): 1.0}})
            started = trio.current_time()
            replies = await pipelined(
                port,
                [
                    "open-session\tp",
                    "propose\tt\tMDL-00-01\tx\tdisplacement\t0",
                    "execute\tt",
                    "execute\tt",
                ],
            )
            assert replies[2:] == [
                "OK\t0\tt",
                "NOT OK\tcannot execute transaction t: it was already executed",
            ]
            assert trio.current_time() - started == pytest.approx(1.5)


async def pipelined(port, lines):
    """Send all lines in one write; return the replies."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all("".join(line + "\n" for line in lines).encode())
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = await stream.receive_some(4096)
            assert chunk, "simulator closed the connection"
            data += chunk
    return data.decode("ascii").split("\n")[: len(lines)]


def test_rig_refuses_to_execute_a_moving_transaction():
    rig = Rig(RigConfig(displacement_speed=1.0), clock=lambda: 0.0)
    rig.open_session("s")
    rig.propose("s", "t1", [ControlPointValues(CP, (AxisValue("x", "displacement", 2.0),))])
    assert rig.execute("s", "t1", now=10.0) == 12.0
    assert rig.moving(CP, now=11.0)
    assert rig.read_control_point(CP, now=11.0).as_dict()[("x", "displacement")] == 1.0
    with pytest.raises(RigError, match="cannot execute transaction t1: it is already executing"):
        rig.execute("s", "t1", now=11.0)
    with pytest.raises(RigError, match="cannot cancel transaction t1: it is already executing"):
        rig.cancel("s", "t1", now=11.0)
    assert not rig.moving(CP, now=12.0)
    with pytest.raises(RigError, match="it was already executed"):
        rig.execute("s", "t1", now=12.0)


async def test_measurements_follow_the_stiffness_model(start_sim, autojump_clock):
    rig, port = await start_sim(stiffness=250.0, rotational_stiffness=40.0, force_noise=0.3)
    with trio.fail_after(30):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            await ntcp.open_session("s")
            for step, d in enumerate([0.5, -1.0, 2.0, 0.0]):
                targets = {("x", "displacement"): d, ("y", "displacement"): -d / 2}
                targets[("x", "rotation")] = d / 10
                assert (await ntcp.propose(f"t{step}", {CP: targets})).ok
                assert (await ntcp.execute(f"t{step}")).ok
                reply, values = await ntcp.get_control_point(f"m{step}", CP)
                assert reply.fields[:2] == (f"m{step}", CP)
                assert [(v.axis, v.type) for v in values.values] == [
                    (a, t) for t in TYPES for a in AXES
                ]
                got = values.as_dict()
                for axis in AXES:
                    force = got[(axis, "force")]
                    assert abs(force - 250.0 * got[(axis, "displacement")]) <= NOISE_CLIP * 0.3
                    moment = got[(axis, "moment")]
                    expected = 40.0 * got[(axis, "rotation")]
                    assert abs(moment - expected) <= NOISE_CLIP * rig.config.moment_noise
            # Noise is really there: repeated readings differ.
            forces = set()
            for i in range(5):
                _, values = await ntcp.get_control_point(f"r{i}", CP)
                forces.add(values.as_dict()[("x", "force")])
            assert len(forces) == 5


# ------------------------------------------------------------------ robustness


async def test_malformed_lines_get_not_ok_and_the_connection_keeps_working(
    start_sim, autojump_clock
):
    _, port = await start_sim()
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port, max_line_length=1 << 20) as ntcp:
            assert await ntcp.request("open-session\ts") == "OK\t0\ts"
            cases = {
                "hello": "unknown request 'hello'",
                "execute\t": "execute takes 1 field (<transId>), got 0",
                "execute\t \t": "transId (field 2) is empty",
                "execute": "execute takes 1 field (<transId>), got 0",
                "propose\tt1\tMDL-00-01\tx\tdisplacement\tfar": "'far' is not a number",
                "propose\tt1\tMDL-00-01\tq\tdisplacement\t1": "has no <axis> <type> <value>",
                "": "empty request",
                "x" * 70_000: "line longer than 65536 bytes",
                "get-control-point\tm\tNOPE": "unknown control point 'NOPE'",
                "get-parameter\tp\tnever-set": "unknown parameter 'never-set'",
                "open-session\tagain": "session 's' is already open on this connection",
                "get-control-point\tm": "get-control-point takes <transId> <controlPoint>",
            }
            for line, reason in cases.items():
                reply = parse_reply(await ntcp.request(line))
                assert not reply.ok and reason in reply.reason, (line[:40], reply)
            assert await ntcp.request("execute\tnone") == (
                "NOT OK\tunknown transaction none; propose it first"
            )
            assert (await ntcp.propose("t1", {CP: {("x", "displacement"): 0.25}})).ok


async def test_raw_bytes_pipelining_and_crlf(start_sim, autojump_clock):
    _, port = await start_sim()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # Several requests in one write, CRLF endings, a non-ASCII line and
            # a request cut in the middle: replies come back one per line, in order.
            await stream.send_all(
                b"execute\tt0\r\nopen-session\ts\r\n\xff\xfe\nset-parameter\tp\tk\tv\nget-par"
            )
            await stream.send_all(b"ameter\tp\tk\r\n")
            data = b""
            while data.count(b"\n") < 5:
                chunk = await stream.receive_some(4096)
                assert chunk, "simulator closed the connection"
                data += chunk
            lines = data.decode("ascii").split("\n")[:5]
            assert lines == [
                "NOT OK\texecute: no session is open on this connection; send open-session first",
                "OK\t0\ts",
                "NOT OK\tline is not ASCII text: b'\\xff\\xfe'",
                "OK\t0\tp",
                "OK\t0\tp\tk\tv",
            ]


async def test_parallel_connections_and_session_ownership(start_sim, autojump_clock):
    rig, port = await start_sim(control_points=("MDL-00-01", "MDL-00-02"))
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as a:
            assert (await a.open_session("shared")).ok
            async with open_ntcp("127.0.0.1", port) as b:
                assert (await b.open_session("shared")).reason == (
                    "session 'shared' is already open; close it or pick another name"
                )
                assert (await b.open_session("other")).ok

                async def drive(client, name, cp, value):
                    assert (await client.propose(name, {cp: {("x", "displacement"): value}})).ok
                    assert (await client.execute(name)).ok

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drive, a, "t1", "MDL-00-01", 1.0)
                    nursery.start_soon(drive, b, "t1", "MDL-00-02", -1.0)
            await trio.testing.wait_all_tasks_blocked()
            assert rig.status()["sessions"].keys() == {"shared"}  # b's closed on disconnect
            values = rig.measurements()
            assert values["MDL-00-01/x/displacement"] == 1.0
            assert values["MDL-00-02/x/displacement"] == -1.0
        # a's session was released when its connection ended.
        async with open_ntcp("127.0.0.1", port) as c:
            assert (await c.open_session("shared")).ok


async def test_client_reports_a_closed_connection(autojump_clock, nursery):
    async def answer_once_then_close(stream):
        async with stream:
            await stream.receive_some(100)

    listeners = await nursery.start(
        partial(trio.serve_tcp, answer_once_then_close, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            with pytest.raises(NtcpConnectionClosed, match="closed the connection"):
                await ntcp.request("open-session\ts")
            with pytest.raises(NtcpConnectionClosed, match="unusable"):
                await ntcp.request("open-session\ts")


@pytest.mark.parametrize(
    ("after_reply", "why"),
    [
        (b"", "the control system closed the connection"),
        (b"OK\t0\tlate\n", "the control system sent a line no request waited for: 'OK\\t0\\tlate'"),
    ],
)
async def test_an_idle_client_notices_what_the_control_system_did_meanwhile(
    autojump_clock, nursery, after_reply, why
):
    done = trio.Event()

    async def answer_then(stream):
        async with stream:
            await stream.receive_some(100)
            await stream.send_all(b"OK\t0\ts\n")
            await stream.send_all(after_reply)  # and close
        done.set()

    listeners = await nursery.start(partial(trio.serve_tcp, answer_then, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            assert await ntcp.request("open-session\ts") == "OK\t0\ts"
            await done.wait()  # nothing of ours reads meanwhile
            assert ntcp.closed == why
            with pytest.raises(NtcpConnectionClosed, match=re.escape(f"unusable: {why}")):
                await ntcp.request("close-session\ts")


class TaskSteps(trio.abc.Instrument):
    """Counts the scheduler passes of one task (times it was resumed)."""

    def __init__(self, task):
        self.task = task
        self.steps = 0

    def before_task_step(self, task):
        if task is self.task:
            self.steps += 1


async def test_a_request_answered_makes_one_pass_through_the_scheduler(start_sim, autojump_clock):
    # Free lock and a socket that takes the line: the wait for the reply is the only pass
    # (a send_all and a lock each made one more, at every hop of a relay).
    _, port = await start_sim()
    with trio.fail_after(10):
        async with open_ntcp("127.0.0.1", port) as ntcp:
            assert (await ntcp.request("open-session\ts")).startswith("OK")
            steps = TaskSteps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                reply = await ntcp.request("get-control-point\tt1\tMDL-00-01")
            finally:
                trio.lowlevel.remove_instrument(steps)
    assert reply.startswith("OK\t0\tt1\tMDL-00-01")
    assert steps.steps == 1


async def test_write_at_once_leaves_what_the_socket_did_not_take_to_send_all(autojump_clock):
    a, b = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(a), trio.SocketStream(b)
    data = bytes(range(256)) * 40_000  # more than a socket buffer holds
    rest = write_at_once(sender, data)
    assert 0 < len(rest) < len(data) and data.endswith(rest)
    got = bytearray()

    async def read_all():
        while len(got) < len(data):
            got.extend(await receiver.receive_some(1 << 20))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await sender.send_all(rest)
    assert got == data
    assert write_at_once(sender, b"") == b""
    await sender.aclose()
    with pytest.raises(trio.ClosedResourceError):
        write_at_once(sender, b"x\n")
    await receiver.aclose()
    # A stream that is no socket: everything is left to send_all.
    memory, _ = trio.testing.memory_stream_pair()
    assert write_at_once(memory, b"x\n") == b"x\n"


async def test_a_request_over_a_stream_that_is_no_socket(autojump_clock, nursery):
    near, far = trio.testing.memory_stream_pair()

    async def answer():
        while data := await far.receive_some(100):
            await far.send_all(b"OK\t0\t" + data.split(b"\t", 1)[1])

    nursery.start_soon(answer)
    ntcp = NtcpClient(near)
    with trio.fail_after(10):
        assert await ntcp.request("open-session\tmem") == "OK\t0\tmem"
    await ntcp.aclose()


# ------------------------------------------------------------------ the rig model


def test_rig_publishes_every_channel_and_reports_status():
    rig = Rig(RigConfig(control_points=("MDL-00-01", "MDL-00-02")), clock=lambda: 0.0)
    values = rig.measurements()
    assert len(values) == 2 * 12
    assert set(values) >= {"MDL-00-01/x/displacement", "MDL-00-02/z/moment"}
    rig.open_session("s")
    rig.propose("s", "t1", [ControlPointValues(CP, (AxisValue("x", "displacement", 1.0),))])
    rig.set_limit(CP, "y", "force", -5, 5)
    status = rig.status()
    assert status["sessions"] == {
        "s": {
            "proposed": 1,
            "executing": 0,
            "executed": 0,
            "cancelled": 0,
            "lapsed": 0,
            "rejected": 0,
        }
    }
    assert status["control_points"][CP]["limits"]["y/force"] == [-5.0, 5.0]
    assert status["control_points"][CP]["position"]["x/displacement"] == 0.0
    assert status["time"] == 0.0


def test_rig_set_limit_validates():
    rig = Rig(clock=lambda: 0.0)
    with pytest.raises(RigError, match="unknown control point 'X'"):
        rig.set_limit("X", "x", "force", 0, 1)
    with pytest.raises(RigError, match="unknown axis 'w'"):
        rig.set_limit(CP, "w", "force", 0, 1)
    with pytest.raises(RigError, match="unknown type 'speed'"):
        rig.set_limit(CP, "x", "speed", 0, 1)
    with pytest.raises(RigError, match="lower limit 2.0 is above upper limit 1.0"):
        rig.set_limit(CP, "x", "force", 2, 1)
    with pytest.raises(RigError, match="finite"):
        rig.set_limit(CP, "x", "force", -math.inf, 1)


def test_rig_config_validates():
    with pytest.raises(ValueError, match="at least one control point"):
        RigConfig(control_points=())
    with pytest.raises(ValueError, match="must be ASCII without spaces"):
        RigConfig(control_points=("MDL 1",))
    with pytest.raises(ValueError, match="clashes with an axis"):
        RigConfig(control_points=("x",))
    with pytest.raises(ValueError, match="the keyword control-point"):
        RigConfig(control_points=("control-point",))
    with pytest.raises(ValueError, match="displacement_speed must be a positive"):
        RigConfig(displacement_speed=0)


def test_rig_noise_is_seeded():
    def readings(seed):
        rig = Rig(RigConfig(seed=seed), clock=lambda: 0.0)
        return [rig.measurements()[f"{CP}/x/force"] for _ in range(3)]

    assert readings(1) == readings(1)
    assert readings(1) != readings(2)


def test_rig_forgets_the_oldest_finished_transactions():
    rig = Rig(RigConfig(max_transactions=3), clock=lambda: 0.0)
    rig.open_session("s")
    group = [ControlPointValues(CP, (AxisValue("x", "displacement", 0.0),))]
    for i in range(3):
        rig.propose("s", f"t{i}", group)
    with pytest.raises(RigError, match="3 transactions are open in this session"):
        rig.propose("s", "t3", group)
    rig.cancel("s", "t0")
    rig.propose("s", "t3", group)
    with pytest.raises(RigError, match="unknown transaction t0"):
        rig.execute("s", "t0")


def test_operator_commands():
    rig = Rig(clock=lambda: 5.0)
    assert run_command(rig, "set-limit MDL-00-01 x displacement -2 2.5") == (
        "OK set-limit MDL-00-01 x displacement -2.0 2.5"
    )
    status = json.loads(run_command(rig, "status"))
    assert status["control_points"][CP]["limits"]["x/displacement"] == [-2.0, 2.5]
    assert status["time"] == 5.0
    assert run_command(rig, "set-limit MDL-00-01 x displacement 3 2") == (
        "NOT OK set-limit: lower limit 3.0 is above upper limit 2.0"
    )
    assert run_command(rig, "set-limit MDL-00-01 x").startswith(
        "NOT OK set-limit takes 5 arguments, got 2; usage: set-limit <controlPoint>"
    )
    assert "limits must be numbers" in run_command(rig, "set-limit MDL-00-01 x force a b")
    assert run_command(rig, "reboot").startswith("NOT OK unknown command 'reboot'; commands are")
    assert run_command(rig, "").startswith("NOT OK unknown command ''")


# ------------------------------------------------------------------ the command line


async def test_command_line_prints_its_address_and_serves():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "components.ntcp_sim", "--port", "0", "--speed", "1000"]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    env=env,
                    cwd=REPO,
                    check=False,
                )
            )
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(200)
                assert chunk, "simulator exited before printing its address"
                line += chunk
            text = line.decode().strip()
            assert text.startswith("ntcp_sim listening on 127.0.0.1:")
            port = int(text.rsplit(":", 1)[1])
            async with open_ntcp("127.0.0.1", port) as ntcp:
                assert await ntcp.request("open-session\tcli") == "OK\t0\tcli"
                assert (await ntcp.propose("t1", {CP: {("x", "displacement"): 1.0}})).ok
                assert (await ntcp.execute("t1")).ok
            process.terminate()
