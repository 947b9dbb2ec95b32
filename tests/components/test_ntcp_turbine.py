"""NTCP over the turbine: serdes plugin, transport translator and the simulator component.

The NTCP client and the control-system simulator are the real ones, over real
loopback TCP, with an in-process broker; the translator runs as a real
process where a test kills it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from components.ntcp import NtcpClient, compare_replies, open_ntcp, parse_reply, scripted_session
from components.ntcp_serdes import NtcpSerdes
from components.ntcp_sim import Rig, RigConfig, serve_ntcp_sim
from components.ntcp_sim.component import NtcpSim
from components.ntcp_translator import JOURNAL_CHANNEL, NtcpTranslator
from turbine import Command, Component, Reply, command, open_client, send_command
from turbine.testing import printed_line, start_broker, wait_for_component

REPO = Path(__file__).resolve().parents[2]
CP = "MDL-00-01"
FAST = RigConfig(displacement_speed=1e3, rotation_speed=1e3)
SINK = "ntcp_rig_command_sink/command.txt"
REPLIES = "ntcp_rig_command_source/command.txt"
DATA = "ntcp_rig_data_source"


class CountingRig(Rig):
    """A real rig that also remembers every execute that moved it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.executes: list[str] = []
        self.executed = trio.Event()

    def execute(self, session: str, trans_id: str, now: float | None = None) -> float:
        done_at = super().execute(session, trans_id, now)  # a refusal raises
        self.executes.append(trans_id)
        self.executed.set()
        return done_at


@pytest.fixture
async def parts():
    """A nursery for simulator, translator and serdes; they stop after the broker."""
    async with trio.open_nursery() as nursery:
        yield nursery
        # The broker is gone: every client has seen its connection close.
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def broker(parts):
    """The broker, stopped first, so components stop without waiting on it."""
    async with trio.open_nursery() as nursery:
        yield await start_broker(nursery)
        nursery.cancel_scope.cancel()


async def start_translator(
    nursery: trio.Nursery, broker: str, sim_port: int, **settings: object
) -> NtcpTranslator:
    translator = NtcpTranslator("rig", broker, {"control": f"127.0.0.1:{sim_port}", **settings})
    await nursery.start(translator.serve)  # returns once its endpoints are open
    return translator


async def start_serdes(
    nursery: trio.Nursery, broker: str, **settings: object
) -> tuple[NtcpSerdes, int]:
    serdes = NtcpSerdes("rigSerdes", broker, {"translator": "rig", "port": 0, **settings})
    await nursery.start(serdes.serve)
    await serdes.wait_connected()
    assert serdes.port is not None
    return serdes, serdes.port


async def start_sim(nursery: trio.Nursery, rig: Rig, port: int = 0) -> int:
    return await nursery.start(serve_ntcp_sim, rig, "127.0.0.1", port)


def translator_process_command(broker: str, sim_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "components.ntcp_translator",
        "--name",
        "rig",
        "--turbine",
        broker,
        "--set",
        f"control=127.0.0.1:{sim_port}",
    ]


async def open_translator_process(broker: str, sim_port: int) -> trio.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return await trio.lowlevel.open_process(
        translator_process_command(broker, sim_port), cwd=REPO, env=env
    )


# ------------------------------------------------------------------ equivalence


async def test_turbine_path_gives_the_replies_of_the_direct_path(broker, parts):
    nursery = parts
    rig = Rig(FAST)
    sim_port = await start_sim(nursery, rig)
    with trio.fail_after(30):
        async with open_ntcp("127.0.0.1", sim_port) as ntcp:
            direct = await scripted_session(ntcp)
        await start_translator(nursery, broker, sim_port)
        _, serdes_port = await start_serdes(nursery, broker)
        async with open_ntcp("127.0.0.1", serdes_port) as ntcp:
            via = await scripted_session(ntcp)

        assert compare_replies(direct, via) == []
        replies = [parse_reply(r) for _, r in via]
        # The rejected proposal, its execute, the execute after cancel, the repeated execute.
        assert sum(not r.ok for r in replies) >= 4
        assert any(
            q.startswith("cancel\t") and r.ok for (q, _), r in zip(via, replies, strict=True)
        )
        assert any("outside the limits" in r.reason for r in replies)

        # Every request and reply of the turbine run can be fetched afterwards.
        async with open_client(broker) as tb:
            commands = [Command.from_json(f.data) for f in await tb.fetch(SINK, oldest=10_000)]
            answered = {
                r.id: r
                for r in (Reply.from_json(f.data) for f in await tb.fetch(REPLIES, oldest=10_000))
            }
            journal = await tb.fetch(f"{DATA}/{JOURNAL_CHANNEL}", oldest=10_000)
            measured = await tb.fetch(f"{DATA}/{CP}.x.displacement", newest=1)
    fetched = [(c.args[0], answered[c.id].result) for c in commands if c.verb == "ntcp"]
    assert fetched == via
    assert all(answered[c.id].status == "ok" for c in commands)
    # One journal entry per execute that was forwarded, none for anything else.
    executes = [q for q, _ in via if q.startswith("execute\t")]
    assert [json.loads(f.data)["line"] for f in journal] == executes
    # The last get-control-point's values are on the data source.
    last = next(r for q, r in reversed(via) if q.startswith("get-control-point\t"))
    fields = parse_reply(last).fields
    x_displacement = float(fields[fields.index("x") + 2])
    assert struct.unpack("<d", measured[0].data)[0] == x_displacement


async def test_each_client_connection_is_its_own_session(broker, parts):
    nursery = parts
    sim_port = await start_sim(nursery, Rig(FAST))
    with trio.fail_after(20):
        await start_translator(nursery, broker, sim_port)
        serdes, port = await start_serdes(nursery, broker)
        async with open_ntcp("127.0.0.1", port) as a, open_ntcp("127.0.0.1", port) as b:
            assert await a.request("open-session\ta") == "OK\t0\ta"
            assert await b.request("open-session\tb") == "OK\t0\tb"
            assert await a.request("get-parameter\tt1\tnone") == (
                "NOT OK\tunknown parameter 'none'; set it with set-parameter first"
            )
        # Closing the client closed its control-system connection, so its
        # session name is free again.
        async with open_ntcp("127.0.0.1", port) as c:
            assert await c.request("open-session\ta") == "OK\t0\ta"
        assert serdes.status()["failures"] == 0


# ------------------------------------------------------------------ faults


async def test_translator_killed_during_execute_never_executes_twice(broker, parts):
    nursery = parts
    rig = CountingRig(RigConfig(displacement_speed=1.0, rotation_speed=1e3))
    sim_port = await start_sim(nursery, rig)
    with trio.fail_after(30):
        process = await open_translator_process(broker, sim_port)
        try:
            await wait_for_component(broker, "ntcp_rig")
            _, port = await start_serdes(nursery, broker, timeout=25.0)
            async with open_ntcp("127.0.0.1", port) as ntcp, open_client(broker) as tb:
                assert await ntcp.request("open-session\tkill") == "OK\t0\tkill"
                line = f"propose\tk1\t{CP}\tx\tdisplacement\t8.0E-01"
                assert await ntcp.request(line) == "OK\t0\tk1"
                async with tb.subscribe(f"{DATA}/{JOURNAL_CHANNEL}", start="now") as journal:
                    async with trio.open_nursery() as inner:
                        result: list[str] = []

                        async def execute() -> None:
                            result.append(await ntcp.request("execute\tk1"))

                        inner.start_soon(execute)
                        # The translator journals the execute before it sends
                        # it; kill it once the actuator moves.
                        entry = await journal.receive()
                        assert json.loads(entry.data)["line"] == "execute\tk1"
                        await rig.executed.wait()
                        process.kill()
                        await process.wait()
                        process = await open_translator_process(broker, sim_port)
                assert result[0].startswith("NOT OK\toutcome unknown")
                assert "not sent again" in result[0]
                assert rig.executes == ["k1"]
                # The session died with the killed translator's connection;
                # a new one works and the step that did happen is visible.
                assert await ntcp.request("open-session\tagain") == "OK\t0\tagain"
                reply = parse_reply(await ntcp.request(f"get-control-point\tm\t{CP}"))
                assert 0.0 < float(reply.fields[reply.fields.index("x") + 2]) <= 0.8
                # The client proposes anew under the same id (clients build ids
                # from the clock): a new transaction, which does reach the rig;
                # a re-sent execute of it does not.
                assert await ntcp.request(f"propose k1\t{CP}\tx\tdisplacement\t-0.1") == (
                    "OK\t0\tk1"
                )
                assert await ntcp.request("execute\tk1") == "OK\t0\tk1"
                assert await ntcp.request("execute k1") == (
                    "NOT OK\tcannot execute transaction k1: it was already executed"
                )
                reply = parse_reply(await ntcp.request(f"get-control-point\tdummy\t{CP}"))
                assert float(reply.fields[reply.fields.index("x") + 2]) == -0.1
            assert rig.executes == ["k1", "k1"]
        finally:
            process.kill()
            await process.wait()


async def test_simulator_restart_loses_the_session_and_never_replays(broker, parts):
    nursery = parts
    with trio.fail_after(20):
        first = CountingRig(FAST)
        async with trio.open_nursery() as sims:
            sim_port = await start_sim(sims, first)
            await start_translator(nursery, broker, sim_port)
            _, port = await start_serdes(nursery, broker)
            ntcp = NtcpClient(await trio.open_tcp_stream("127.0.0.1", port))
            assert await ntcp.request("open-session\ts") == "OK\t0\ts"
            assert await ntcp.request(f"propose\tp1\t{CP}\tx\tdisplacement\t1") == "OK\t0\tp1"
            sims.cancel_scope.cancel()
        second = CountingRig(FAST)
        await start_sim(nursery, second, sim_port)
        try:
            reply = parse_reply(await ntcp.request("execute\tp1"))
            assert not reply.ok
            assert first.executes == [] and second.status()["control_points"][CP]["moving"] is False
            assert second.status()["control_points"][CP]["position"]["x/displacement"] == 0.0
            # Requests now reach the restarted simulator; the client opens a new session.
            assert await ntcp.request("open-session\ts") == "OK\t0\ts"
            assert await ntcp.request(f"propose\tp2\t{CP}\tx\tdisplacement\t1") == "OK\t0\tp2"
            assert await ntcp.request("execute\tp2") == "OK\t0\tp2"
            assert second.executes == ["p2"]
        finally:
            await ntcp.aclose()


async def test_simulator_gone_during_execute_gives_outcome_unknown(broker, parts):
    nursery = parts
    rig = CountingRig(RigConfig(displacement_speed=1.0))
    with trio.fail_after(20):
        async with trio.open_nursery() as sims:
            sim_port = await start_sim(sims, rig)
            await start_translator(nursery, broker, sim_port)
            _, port = await start_serdes(nursery, broker)
            async with open_ntcp("127.0.0.1", port) as ntcp:
                assert await ntcp.request("open-session\ts") == "OK\t0\ts"
                assert await ntcp.request(f"propose\tp1\t{CP}\tx\tdisplacement\t1") == "OK\t0\tp1"
                result: list[str] = []

                async def execute() -> None:
                    result.append(await ntcp.request("execute\tp1"))

                async with trio.open_nursery() as inner:
                    inner.start_soon(execute)
                    # Everything waits: the simulator is moving the actuator.
                    await trio.testing.wait_all_tasks_blocked()
                    assert rig.executes == ["p1"] and rig.moving(CP)
                    sims.cancel_scope.cancel()
                assert result == [
                    "NOT OK\toutcome unknown: the control system closed the connection"
                    " after execute was sent; it is not sent again"
                ]
    assert rig.executes == ["p1"]


async def test_stale_request_is_answered_expired_and_never_forwarded(broker, parts):
    nursery = parts
    rig = CountingRig(FAST)
    sim_port = await start_sim(nursery, rig)
    with trio.fail_after(20):
        await start_translator(nursery, broker, sim_port)
        # A command that sat in the sink past its deadline.
        async with open_client(broker) as tb:
            async with tb.subscribe(REPLIES, start="now") as replies:
                stale = Command(
                    "stale-1", "ntcp", ("execute\tp1",), {"session": "x"}, time.time() - 1
                )
                await tb.put(SINK, stale.to_json())
                reply = Reply.from_json((await replies.receive()).data)
        assert (reply.id, reply.status) == ("stale-1", "expired")
        assert "deadline passed" in reply.error
        # Through the serdes with a deadline already gone when the translator reads it.
        _, port = await start_serdes(nursery, broker, deadline=0.0, timeout=10.0)
        async with open_ntcp("127.0.0.1", port) as ntcp:
            answer = await ntcp.request("open-session\tlate")
        assert answer.startswith("NOT OK\texpired: the command's deadline passed")
        assert answer.endswith("not forwarded to the control system")
    assert rig.executes == [] and rig.status()["sessions"] == {}


async def test_request_sent_while_the_translator_is_down_is_refused_then_dropped(broker, parts):
    nursery = parts
    rig = CountingRig(FAST)
    sim_port = await start_sim(nursery, rig)
    with trio.fail_after(20):
        process = await open_translator_process(broker, sim_port)
        await wait_for_component(broker, "ntcp_rig")
        process.kill()
        await process.wait()
        _, port = await start_serdes(nursery, broker, deadline=0.2, timeout=10.0)
        async with open_ntcp("127.0.0.1", port) as ntcp, open_client(broker) as tb:
            start = trio.current_time()
            answer = await ntcp.request("execute\tp1")
            assert trio.current_time() - start < 5
            assert answer.startswith(
                "NOT OK\tthe translator is not running: no reply from ntcp_rig"
            )
            assert answer.endswith("the request expired and will not be forwarded")
            # When the translator comes back it reads the request, and drops it.
            async with tb.subscribe(REPLIES, start="now") as replies:
                await start_translator(nursery, broker, sim_port)
                reply = Reply.from_json((await replies.receive()).data)
            assert reply.status == "expired"
            assert await ntcp.request("open-session\tback") == "OK\t0\tback"
    assert rig.executes == []


async def test_unreachable_control_system_is_reported_promptly(broker, parts):
    nursery = parts
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    closed_port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with trio.fail_after(10):
        await start_translator(nursery, broker, closed_port, connect_timeout=1.0)
        _, port = await start_serdes(nursery, broker)
        async with open_ntcp("127.0.0.1", port) as ntcp:
            answer = await ntcp.request("open-session\tnowhere")
    assert answer.startswith(f"NOT OK\tcontrol system 127.0.0.1:{closed_port} unreachable")


async def test_no_translator_ever_is_reported_at_once(broker, parts):
    nursery = parts
    with trio.fail_after(10):
        _, port = await start_serdes(nursery, broker)
        async with open_ntcp("127.0.0.1", port) as ntcp:
            answer = await ntcp.request("open-session\tnobody")
            # A client that names three control points waits for three lines.
            several = await ntcp.request("get-control-point\tdummy\tA:LBCB1\tA:LBCB2\tA:LBCB1")
            after = await ntcp.request("open-session nobody")
    assert answer == "NOT OK\tno translator ntcp_rig has run on this turbine"
    assert several.split("\n") == [answer] * 3
    assert after == answer


class OneLineTranslator(Component):
    """A translator that answers every request with one line, whatever it asked for."""

    type = "ntcp"

    @command("ntcp")
    async def ntcp(self, line: str, session: str = "") -> str:
        return "OK\t0\tdummy\tA:LBCB1\tx\tdisplacement\t0.0000000000E+00"


async def test_a_reply_with_fewer_lines_than_the_client_waits_for_is_refused(broker, parts):
    nursery = parts
    with trio.fail_after(10):
        nursery.start_soon(OneLineTranslator("rig", broker).serve)
        await wait_for_component(broker, "ntcp_rig")
        serdes, port = await start_serdes(nursery, broker)
        async with open_ntcp("127.0.0.1", port) as ntcp:
            one = await ntcp.request("get-control-point\tdummy\tA:LBCB1")
            two = await ntcp.request("get-control-point\tdummy\tA:LBCB1\tA:LBCB2")
    assert one.startswith("OK\t0\tdummy\tA:LBCB1")
    assert two.split("\n") == ["NOT OK\tntcp_rig answered 1 line where 2 were due"] * 2
    assert serdes.status()["failures"] == 1


# ------------------------------------------------------------------ the simulator component


async def test_simulator_component_publishes_measurements_and_answers_commands(broker, parts):
    nursery = parts
    sim = NtcpSim("rigSim", broker, {"port": 0, "interval": 0.01, "displacement_speed": 1e3})
    with trio.fail_after(10):
        await nursery.start(sim.serve)
        ntcp_port = sim.port
        await wait_for_component(broker, "ntcp_rigSim")
        async with open_client(broker) as tb:
            async with tb.subscribe(f"ntcp_rigSim_data_source/{CP}.x.force", start="oldest") as sub:
                frame = await sub.receive()
            assert frame.content_type == "application/x-float64-le"
            assert abs(struct.unpack("<d", frame.data)[0]) <= 4 * 0.5

            reply = await send_command(
                tb, "ntcp_rigSim", "set-limit", CP, "x", "displacement", "-1", "1"
            )
            assert reply.ok, reply.error
            bad = await send_command(
                tb, "ntcp_rigSim", "set-limit", CP, "q", "displacement", "0", "1"
            )
            assert bad.status == "error" and "unknown axis 'q'" in bad.error
            status = await send_command(tb, "ntcp_rigSim", "status")
            assert status.result["ntcp_port"] == ntcp_port
            assert status.result["rig"]["control_points"][CP]["limits"]["x/displacement"] == [-1, 1]

            async with open_ntcp("127.0.0.1", ntcp_port) as ntcp:
                assert await ntcp.request("open-session\tc") == "OK\t0\tc"
                answer = await ntcp.request(f"propose\tt\t{CP}\tx\tdisplacement\t2")
                assert (
                    answer.startswith("NOT OK\tpropose t rejected")
                    and "[-1.0000000000E+00" in answer
                )
                assert await ntcp.request(f"propose\tu\t{CP}\tx\tdisplacement\t0.5") == "OK\t0\tu"
                assert await ntcp.request("execute\tu") == "OK\t0\tu"
            path = f"ntcp_rigSim_data_source/{CP}.x.displacement"
            async with tb.subscribe(path, start="now") as sub:
                frame = await sub.receive()
            assert struct.unpack("<d", frame.data)[0] == 0.5


async def test_simulator_module_runs_as_a_component_with_name(broker):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "components.ntcp_sim",
        "--name",
        "cliSim",
        "--turbine",
        broker,
        "--set",
        "port=0",
    ]
    with trio.fail_after(15):
        process = await trio.lowlevel.open_process(command, cwd=REPO, env=env)
        try:
            await wait_for_component(broker, "ntcp_cliSim")
            async with open_client(broker) as tb:
                status = await send_command(tb, "ntcp_cliSim", "status")
            assert status.ok and status.result["ntcp_port"] > 0
        finally:
            process.kill()
            await process.wait()


async def _serve_broker(data_dir: Path, port: int = 0) -> tuple[trio.Process, int]:
    """A real broker process on ``data_dir``; its process and port."""
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "turbine",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
    )
    line = await printed_line(proc, "the broker")
    return proc, int(line.rsplit(b":", 1)[1])


@pytest.mark.slow
async def test_a_request_while_the_broker_restarts_is_answered_and_the_session_goes_on(
    parts, tmp_path
):
    nursery = parts
    rig = CountingRig(FAST)
    sim_port = await start_sim(nursery, rig)
    proc, port = await _serve_broker(tmp_path / "data")
    broker = f"127.0.0.1:{port}"
    try:
        with trio.fail_after(40):
            await start_translator(nursery, broker, sim_port)
            _, ntcp_port = await start_serdes(nursery, broker, deadline=0.5, timeout=10.0)
            async with open_ntcp("127.0.0.1", ntcp_port) as ntcp:
                assert await ntcp.request("open-session\ts") == "OK\t0\ts"
                assert await ntcp.request(f"propose\tp1\t{CP}\tx\tdisplacement\t1") == "OK\t0\tp1"
                proc.kill()  # the broker crashes; the request below is in flight meanwhile
                await proc.wait()
                start = trio.current_time()
                answer = await ntcp.request("execute\tp1")
                assert trio.current_time() - start < 5  # bounded: deadline and a probe or two
                assert answer.startswith(
                    f"NOT OK\toutcome unknown: the turbine at {broker} is away"
                )
                proc, _ = await _serve_broker(tmp_path / "data", port)
                # The session goes on once the broker is back; the execute spooled while
                # it was away reaches the translator expired, and is not forwarded.
                reply = parse_reply(await ntcp.request(f"get-control-point\tm\t{CP}"))
                while not reply.ok:  # (answered NOT OK until the path is whole again)
                    reply = parse_reply(await ntcp.request(f"get-control-point\tm\t{CP}"))
                assert rig.executes == []
                assert await ntcp.request("execute\tp1") == "OK\t0\tp1"
                assert rig.executes == ["p1"]  # once
    finally:
        proc.kill()
        await proc.wait()
