"""The component framework: readiness, waiting out a refusing broker, lasting work, testing aids.

Every test runs under ``autojump_clock``, with the turbine's wall clock
following trio's (``turbine.testing.follow_trio_clock``): no real sleeps.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import attrs
import pytest
import trio
from click.testing import CliRunner

from components.ntcp_sim.component import NtcpSim
from turbine import (
    Component,
    ConfigError,
    NoReply,
    command,
    open_client,
    send_command,
    unwrap,
)
from turbine._component_parts import find_commands, usage
from turbine.cli.components import reply_text
from turbine.testing import (
    fake_data,
    follow_trio_clock,
    open_broker,
    serving,
    start_broker,
    wait_for_component,
)

MiB = 2**20


@attrs.frozen
class TickerSettings:
    interval: float = 1.0


class Ticker(Component):
    """Puts a tick per interval; its data source asks for 8 MiB."""

    type = "daq"
    channels = {"tick": "text/plain"}
    Settings = TickerSettings
    cache_bytes = 8 * MiB

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ticks = 0
        self.lasting_started = 0

    async def run(self) -> None:
        while True:
            await self.data.put("tick", str(self.ticks).encode())
            self.ticks += 1
            await trio.sleep(self.config.interval)

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        self.lasting_started += 1

    @command("ticks", help="how many ticks so far")
    async def ticks_so_far(self) -> int:
        return self.ticks


def retry_delays(caplog: pytest.LogCaptureFixture, logger: str) -> list[float]:
    return [
        float(m.group(1))
        for r in caplog.records
        if r.name == logger and (m := re.search(r"trying again in ([0-9.]+) s", r.getMessage()))
    ]


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING
    ]


async def test_serve_returns_from_nursery_start_once_ready_and_commands_work(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daq_t1")
    follow_trio_clock()
    with trio.fail_after(30):
        async with open_broker() as address:
            ticker = Ticker("t1", address, {"interval": 0.5})
            await nursery.start(ticker.serve)
            assert ticker.state == "running"
            async with open_client(address) as tb:
                meta = await wait_for_component(tb, "daq_t1")
                assert meta["status"] == "running" and meta["channels"] == ["tick"]
                await trio.sleep(2.0)  # virtual: four more ticks
                reply = await send_command(tb, "daq_t1", "ticks")
                assert reply.ok and reply.result >= 4
                status = (await send_command(tb, "daq_t1", "status")).result
                assert status["uptime"] >= 2.0 and status["waiting_for"] is None
            # (Here: cancelling the test's nursery below ends this test too.)
            assert ticker.lasting_started == 1
            said = [r.getMessage() for r in caplog.records if r.name == "daq_t1"]
            assert [m.split(" from ")[0] for m in said if m.startswith("command ")] == [
                "command ticks",
                "command status",  # one space, with no arguments too
            ]
            nursery.cancel_scope.cancel()


async def test_a_full_broker_makes_a_component_wait_not_crash(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    caplog.set_level(logging.DEBUG, logger="daq_t2")
    follow_trio_clock()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            # 16 MiB: the component's log and command endpoints (6 MiB) fit,
            # its 8 MiB data source does not while another client holds 5 MiB.
            address = await start_broker(nursery, max_memory=16 * MiB)
            async with open_client(address, name="hog") as hog:
                big = await hog.open_source("daq_hog_data_source", cache_bytes=5 * MiB)
                ticker = Ticker("t2", address)
                started = trio.Event()

                async def serve() -> None:
                    await nursery.start(ticker.serve)
                    started.set()

                async with open_client(address) as tb:
                    # Operators see why on its debug log source ...
                    log = "daq_t2_debug_log_source/log.txt"
                    async with tb.subscribe(log, start="oldest") as sub:
                        nursery.start_soon(serve)
                        async for item in sub:
                            if b"cannot reserve" in getattr(item, "data", b""):
                                break
                    # ... and it is connected and answers commands while it waits.
                    reply = await send_command(tb, "daq_t2", "status", wait=30)
                    assert reply.result["state"] == "waiting"
                    assert "cannot reserve 8.0 MiB" in reply.result["waiting_for"]
                    await trio.sleep(30)
                    assert not started.is_set()
                    await big.close()
                    await hog.delete("daq_hog_data_source")
                    with trio.fail_after(10):
                        await started.wait()
                    status = (await send_command(tb, "daq_t2", "status")).result
                    assert status["state"] == "running" and status["waiting_for"] is None
            nursery.cancel_scope.cancel()
    # The reason was logged once, however many times it was tried; waits grew to the cap.
    memory = [w for w in warnings_of(caplog, "daq_t2") if "cannot reserve" in w]
    assert len(memory) == 1
    delays = retry_delays(caplog, "daq_t2")
    assert delays == sorted(delays) and delays[-1] == 5.0 and len(delays) <= 12


async def test_a_held_endpoint_is_waited_for_with_capped_backoff(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    caplog.set_level(logging.DEBUG, logger="daq_t3")
    follow_trio_clock()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await start_broker(nursery)
            async with open_client(address, name="squatter") as squatter:
                # Someone holds the first endpoint the component opens: every
                # attempt connects fine and is then refused.
                held = await squatter.open_source("daq_t3_debug_log_source")
                ticker = Ticker("t3", address)
                nursery.start_soon(ticker.serve)
                await trio.sleep(15)
                assert ticker.state == "waiting"
                assert "held by squatter" in (ticker.status()["waiting_for"] or "")
                attempts = len(retry_delays(caplog, "daq_t3"))  # one per refused attempt
                await held.close()
            with trio.fail_after(10):
                async with open_client(address) as tb:
                    await wait_for_component(tb, "daq_t3")
            nursery.cancel_scope.cancel()
    # 15 s at 0.1, 0.2, 0.4 ... 5 s: a handful of attempts, not 150.
    assert attempts <= 8
    delays = retry_delays(caplog, "daq_t3")
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and max(delays) == 5.0
    assert len([w for w in warnings_of(caplog, "daq_t3") if "held by squatter" in w]) == 1


async def test_serving_and_fake_data(autojump_clock: trio.abc.Clock) -> None:
    follow_trio_clock()
    ticker = Ticker("t4", config={"interval": 0.25})
    source = fake_data(ticker)
    with trio.move_on_after(1.0):  # virtual time: 0, 0.25, 0.5, 0.75 s
        await ticker.run()
    assert [p.data for p in source.frames("tick")] == [b"0", b"1", b"2", b"3"]
    await ticker.publish_metadata()
    assert source.metadata is not None and source.metadata["component"] == "daq_t4"
    with pytest.raises(ValueError, match="no channel 'tock'"):
        await source.put("tock", b"")

    with trio.fail_after(10):
        async with open_broker() as address, serving(Ticker("t5", address)) as t5:
            assert t5.state == "running"
            async with open_client(address) as tb:
                assert (await send_command(tb, "daq_t5", "ticks")).ok


async def test_a_command_waits_for_a_component_that_has_not_started(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    follow_trio_clock()
    with trio.fail_after(30):
        async with open_broker() as address, open_client(address) as tb:
            late = Ticker("late", address)

            async def start_later() -> None:
                await trio.sleep(3)
                await nursery.start(late.serve)

            nursery.start_soon(start_later)
            reply = await send_command(tb, "daq_late", "ticks", wait=10)
            assert reply.ok and late.state == "running"
            with pytest.raises(NoReply, match="no component 'daq_never' has run here within 2 s"):
                await send_command(tb, "daq_never", "status", wait=2)
            nursery.cancel_scope.cancel()


def test_a_component_that_cannot_start_says_why_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            NtcpSim.cli(), ["--name", "busy", "--set", f"port={port}", "--turbine", "127.0.0.1:1"]
        )
    assert result.exit_code == 1, result.output
    assert "ntcp_busy:" in result.output and "address already in use" in result.output.lower()
    assert result.exception is None or isinstance(result.exception, SystemExit)


class Fragile(Component):
    """Its work fails once it has started."""

    type = "audio"
    channels = {"pcm": "audio/L16"}

    async def run(self) -> None:
        await trio.sleep(1)
        raise FileNotFoundError("tone.wav vanished")


async def test_a_failing_run_is_seen_on_the_turbine(autojump_clock: trio.abc.Clock) -> None:
    follow_trio_clock()
    with trio.fail_after(30):
        async with open_broker() as address, open_client(address) as tb:
            fragile = Fragile("mic", address)
            with pytest.raises(BaseExceptionGroup) as failed:
                async with trio.open_nursery() as nursery:
                    await nursery.start(fragile.serve)
            assert isinstance(unwrap(failed.value), FileNotFoundError)
            (meta,) = await tb.fetch("audio_mic_data_source/metadata.txt", newest=1)
            assert json.loads(meta.data)["status"] == "failed"
            assert json.loads(meta.data)["error"] == "FileNotFoundError: tone.wav vanished"
            logs = [
                json.loads(f.data)
                for f in await tb.fetch("audio_mic_debug_log_source/*", oldest=100)
            ]
            (last,) = [e for e in logs if e["level"] == "ERROR"]
            assert "run() failed" in last["message"]
            assert "FileNotFoundError: tone.wav vanished" in last["exception"]


async def test_state_is_kept_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURBINE_STATE_DIR", str(tmp_path))
    first = Ticker("keeper")
    assert first.kept.directory == tmp_path / "daq_keeper"
    assert first.kept.load() == {}
    await first.kept.save({"frequency": 880.0, "note": "A5"})
    again = Ticker("keeper")  # the next process
    assert again.kept.load() == {"frequency": 880.0, "note": "A5"}
    assert [p.name for p in (tmp_path / "daq_keeper").iterdir()] == ["state.json"]  # no temp left
    again.kept.path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="cannot read .*state.json"):
        again.kept.load()


def test_help_names_each_verb_and_argument_once() -> None:
    class Helped(Component):
        type = "daq"

        @command("set-step", help="count in steps of STEP")
        async def set_step(self, step: int) -> None: ...

        @command("copy", help="copy N: copy the disc onto N blanks")
        async def copy(self, n: int) -> None: ...

        @command("seek", help="POSITION [SPEED]: go to POSITION")
        async def seek(self, position: float, speed: float = 1.0) -> None: ...

    table = {v: usage(v, fn) for v, fn in find_commands(Helped("h1")).items()}
    assert table["set-step"] == "set-step STEP: count in steps of STEP"
    assert table["copy"] == "copy N: copy the disc onto N blanks"
    assert table["seek"] == "seek POSITION [SPEED]: go to POSITION"
    # turbine cmd X help: one usage line per command, the verb once.
    printed = reply_text("help", table).splitlines()
    assert printed[0] == "copy N: copy the disc onto N blanks"
    assert printed[-1] == "status: the component's state, uptime and settings"
    assert "set-step STEP: count in steps of STEP" in printed
    assert reply_text("status", {"a": "b"}) == '{\n  "a": "b"\n}'
