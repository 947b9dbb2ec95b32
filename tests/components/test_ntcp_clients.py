"""Deployed NTCP clients' own sequences, straight to the simulator and through the turbine.

Each sequence (tests/components/ntcp_clients.py, written from the client's
public source) is replayed byte for byte, with the client's line ends, over
raw loopback TCP: once against the control-system simulator, once against
the serdes plugin, whose requests cross a real broker to the transport
translator and on to an identical simulator. The serdes and the translator
run as real processes, as the master control program starts them. On both
paths every reply must pass the client's own checks, the replies must be
the same, and every reply must be ``OK`` (more than the clients ask).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from components.ntcp import LineBuffer, compare_replies, parse_control_point_reply, parse_reply
from components.ntcp_sim import Rig, RigConfig, serve_ntcp_sim
from tests.components.ntcp_clients import (
    CLIENTS,
    EclabviewMeasured,
    FirstTokenIsOk,
    MatlabMeasured,
    NoNok,
    NtcpClientSequence,
)
from turbine import open_client, send_command
from turbine.testing import start_broker, wait_for_component

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
POINTS = tuple(dict.fromkeys(cp for client in CLIENTS for cp in client.control_points))


def rig_config() -> RigConfig:
    return RigConfig(control_points=POINTS, displacement_speed=1e3, rotation_speed=1e3)


class CountingRig(Rig):
    """A real rig that also remembers every execute that moved it."""

    def __init__(self, config: RigConfig) -> None:
        super().__init__(config)
        self.executes: list[str] = []

    def execute(self, session: str, trans_id: str, now: float | None = None) -> float:
        done_at = super().execute(session, trans_id, now)
        self.executes.append(trans_id)
        return done_at


async def replay(port: int, client: NtcpClientSequence) -> list[tuple[str, str]]:
    """Send the client's requests as it does, read the lines it reads, apply its checks.

    Returns the transcript ``(request, reply lines joined by \\n)``.
    """
    transcript = []
    lines = LineBuffer()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:

        async def next_line() -> str:
            while (line := lines.next_line()) is None:
                data = await stream.receive_some(65536)
                assert data, f"{client.name}: connection closed while waiting for a reply"
                lines.receive_data(data)
            return line

        for index, step in enumerate(client.steps, start=1):
            await stream.send_all(step.request.encode("ascii") + client.line_end)
            replies = [await next_line() for _ in step.checks]
            for check, reply in zip(step.checks, replies, strict=True):
                complaint = check(reply)
                assert complaint is None, (
                    f"{client.name} ({client.source}) would stop at step {index}"
                    f" {step.request!r}: {complaint}"
                )
            transcript.append((step.request, "\n".join(replies)))
    return transcript


def component_process(module: str, name: str, broker: str, *settings: str) -> list[str]:
    command = [sys.executable, "-m", module, "--name", name, "--turbine", broker]
    for setting in settings:
        command += ["--set", setting]
    return command


@pytest.fixture
async def parts():
    async with trio.open_nursery() as nursery:
        yield nursery
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_each_deployed_client_runs_the_same_direct_and_through_the_turbine(parts):
    direct_rig, via_rig = CountingRig(rig_config()), CountingRig(rig_config())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with trio.fail_after(60):
        direct_port = await parts.start(serve_ntcp_sim, direct_rig, "127.0.0.1", 0)
        direct = {client.name: await replay(direct_port, client) for client in CLIENTS}

        via_sim = await parts.start(serve_ntcp_sim, via_rig, "127.0.0.1", 0)
        async with trio.open_nursery() as broker_nursery:
            broker = await start_broker(broker_nursery)
            translator = await trio.lowlevel.open_process(
                component_process(
                    "components.ntcp_translator",
                    "rig",
                    broker,
                    f"control=127.0.0.1:{via_sim}",
                    f"control_points={json.dumps(POINTS)}",
                ),
                cwd=REPO,
                env=env,
            )
            serdes = await trio.lowlevel.open_process(
                component_process(
                    "components.ntcp_serdes", "rigSerdes", broker, "translator=rig", "port=0"
                ),
                cwd=REPO,
                env=env,
            )
            try:
                await wait_for_component(broker, "ntcp_rig")
                await wait_for_component(broker, "ntcp_rigSerdes")
                async with open_client(broker) as tb:
                    status = await send_command(tb, "ntcp_rigSerdes", "status")
                    serdes_port = status.result["ntcp_port"]
                    via = {client.name: await replay(serdes_port, client) for client in CLIENTS}
                    last = await tb.fetch(
                        "ntcp_rig_data_source/MDL-00-01:LBCB2.x.displacement", newest=1
                    )
                    status = await send_command(tb, "ntcp_rigSerdes", "status")
            finally:
                for process in (serdes, translator):
                    process.kill()
                    await process.wait()
            broker_nursery.cancel_scope.cancel()

    for client in CLIENTS:
        assert compare_replies(direct[client.name], via[client.name]) == [], client.name
        for request, reply in via[client.name]:
            for line in reply.split("\n"):
                assert parse_reply(line).ok, (client.name, request, line)
    assert status.result["failures"] == 0
    # Every execute reached each rig once, in the clients' order: the
    # OpenFresco step that reuses its id within one second is a new transaction.
    executes = [
        r.split("\t", 1)[1] for c in CLIENTS for r, _ in direct[c.name] if r.startswith("execute")
    ]
    assert direct_rig.executes == executes == via_rig.executes
    assert executes.count("OPFTransaction20261101093000") == 2
    # The translator published what the last LBCB2 reply measured.
    nees = via["NEES UIUC testNtcpLink.pl"]
    lbcb2 = [r for q, r in nees if q == "get-control-point\tdummy\tMDL-00-01:LBCB2"][-1]
    measured = parse_control_point_reply(parse_reply(lbcb2))[1].as_dict()
    assert struct.unpack("<d", last[0].data)[0] == measured[("x", "displacement")] == -1.0


def test_the_clients_checks_reject_what_the_clients_stop_on():
    twelve = "\t".join(
        f"{axis}\t{kind}\t0.0000000000E+00"
        for kind in ("displacement", "rotation", "force", "moment")
        for axis in "xyz"
    )
    good = f"OK\t0\tT1\tMDL-00-01\t{twelve}"
    signals = (("x", "displacement"), ("x", "force"))
    assert FirstTokenIsOk()(good) is None and FirstTokenIsOk()("NOT OK\tno") is not None
    assert NoNok()("OK\t0\tT1") is None and NoNok()("NOK bad") is not None
    eclabview = EclabviewMeasured("T1", "MDL-00-01", signals)
    assert eclabview(good) is None
    assert "wrong OPFTransactionID" in eclabview(good.replace("\tT1\t", "\tdummy\t"))
    assert "wrong control-point" in eclabview(good.replace("MDL-00-01", "MDL-00-01:LBCB1"))
    assert "wrong number" in eclabview("OK\t0\tT1\tMDL-00-01\ty\tforce\t1")
    assert MatlabMeasured()(good) is None
    assert "tokens" in MatlabMeasured()("OK\t0\tdummy\tMDL-00-01\tx\tdisplacement\t1")
    assert "str2num" in MatlabMeasured()(good.replace("0.0000000000E+00", "zero", 1))
