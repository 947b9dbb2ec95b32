"""The DAQ component: signals, the sample clock, CSV replay, and its commands over a real broker.

The component tests run under ``autojump_clock``: blocks are due on trio's
clock, and their timestamps must follow the sample clock exactly, whatever the
scheduling.  The broker runs in the test's own trio run and the DAQ starts no
thread or process, so virtual time moves only when every task waits for another
(a block of a few hundred bytes on loopback is readable once its sender's write
returns; megabytes in flight are another matter, see test_broker's
``closed_by_jumps``), never while work is pending.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import pytest
import trio
import trio.testing

from components.daq.component import Daq
from components.daq.signals import (
    ChannelConfig,
    SampleClock,
    SignalError,
    block_size_for,
    check_rate,
    decode_block,
    encode_block,
    generate,
    read_csv,
)
from turbine import FLOAT64_CONTENT_TYPE, ConfigError, Frame, open_client, send_command
from turbine.testing import next_frames

# --- signals ---------------------------------------------------------------------


def values(signal: str, n: int = 8, rate: float = 8.0, **kw: float) -> list[float]:
    return generate(ChannelConfig(signal=signal, **kw), 0.0, rate, n, random.Random(1))


def test_sine_square_ramp_shapes() -> None:
    sine = values("sine", frequency=1.0, amplitude=2.0, offset=1.0)
    assert sine == pytest.approx([1 + 2 * math.sin(2 * math.pi * i / 8) for i in range(8)])
    assert values("square", amplitude=3.0) == [3, 3, 3, 3, -3, -3, -3, -3]
    assert values("ramp") == pytest.approx([-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75])


def test_noise_and_mix_stay_in_bounds_and_repeat_with_the_seed() -> None:
    noise = generate(
        ChannelConfig(signal="noise", amplitude=0.5, offset=10), 0, 100, 1000, random.Random(7)
    )
    assert all(9.5 <= v <= 10.5 for v in noise)
    assert noise == generate(
        ChannelConfig(signal="noise", amplitude=0.5, offset=10), 0, 100, 1000, random.Random(7)
    )
    assert len(set(noise)) > 900
    mix = generate(ChannelConfig(signal="mix"), 0, 100, 1000, random.Random(7))
    assert all(-1.0 <= v <= 1.0 for v in mix)


def test_calibration_applies_gain_then_offset() -> None:
    assert values("square", n=2, rate=1, gain=2.0, cal_offset=0.5) == [2.5, 2.5]
    assert values("square", n=1, rate=1, gain=-1.0) == [-1.0]


def test_channel_settings_are_checked() -> None:
    cfg = ChannelConfig()
    assert cfg.with_setting("frequency", "2.5").frequency == 2.5
    assert cfg.with_setting("signal", "ramp").signal == "ramp"
    with pytest.raises(SignalError, match="unknown signal 'triangle': use one of sine, square"):
        cfg.with_setting("signal", "triangle")
    with pytest.raises(SignalError, match="frequency must be a number, not 'fast'"):
        cfg.with_setting("frequency", "fast")
    with pytest.raises(SignalError, match="unknown channel setting 'colour'"):
        cfg.with_setting("colour", "red")


def test_blocks_are_little_endian_float64() -> None:
    data = encode_block([1.5, -2.0, 1e300])
    assert data == struct.pack("<3d", 1.5, -2.0, 1e300)
    assert decode_block(data) == [1.5, -2.0, 1e300]


def test_rates_from_1_hz_to_10_khz() -> None:
    assert check_rate(1) == 1.0 and check_rate(10_000) == 10_000.0
    for bad in (0.5, 10_001, math.nan, math.inf):
        with pytest.raises(SignalError, match="out of range: use 1 to 10000 Hz"):
            check_rate(bad)
    assert block_size_for(100, 0.1) == 10
    assert block_size_for(1, 0.1) == 1


# --- the sample clock ------------------------------------------------------------


def test_sample_clock_timestamps_are_exact_and_do_not_drift() -> None:
    clock = SampleClock(t0=1000.0, start=5.0, rate=3.0, block_size=1)
    # One third of a second is not representable; adding it up would drift.
    assert clock.timestamp(300_000) == 1000.0 + 100_000.0
    assert clock.due(0) == 5.0 + 1 / 3
    assert clock.timestamp(7) == 1000.0 + 7 / 3


def test_a_rate_change_starts_a_new_segment_at_the_next_block() -> None:
    clock = SampleClock(t0=1000.0, start=0.0, rate=100.0, block_size=10)
    new = clock.retimed(5, rate=500.0, block_size=50)
    assert new.timestamp(0) == clock.timestamp(5) == 1000.5
    assert new.due(0) == pytest.approx(0.5 + 0.1)
    assert new.signal_time(0) == pytest.approx(0.5)
    assert new.timestamp(10) == pytest.approx(1001.5)


# --- CSV recordings --------------------------------------------------------------


def test_read_csv_with_a_time_column(tmp_path: Path) -> None:
    f = tmp_path / "run.csv"
    f.write_text("time,load cell,disp/mm\n0,1,10\n0.01,2,20\n0.02,3,30\n")
    rec = read_csv(f, rate=7)  # the time column wins over a default rate
    assert rec.channels == ("load_cell", "disp_mm")
    assert rec.rate == 100.0
    assert rec.columns == ((1.0, 2.0, 3.0), (10.0, 20.0, 30.0))


def test_read_csv_errors_name_the_row_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("time,a\n0,1\n0.1,oops\n")
    with pytest.raises(SignalError, match=r"row 3, column 'a': 'oops' is not a number"):
        read_csv(f)
    f.write_text("a,b\n1,2\n")
    with pytest.raises(SignalError, match="no time column"):
        read_csv(f)
    assert read_csv(f, rate=50).rate == 50.0
    with pytest.raises(SignalError, match="cannot read recording"):
        read_csv(tmp_path / "missing.csv")


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        Daq("x", config={"rate": "20000"})
    with pytest.raises(ConfigError, match="replay mode needs the CSV file"):
        Daq("x", config={"mode": "replay"})
    with pytest.raises(ConfigError, match="no channel 'ch9'"):
        Daq("x", config={"channels": "2", "channel_settings": '{"ch9": {"gain": 2}}'})
    with pytest.raises(ConfigError, match="expected one of generate, replay"):
        Daq("x", config={"mode": "record"})
    recording = tmp_path / "rec.csv"
    recording.write_text("time,a,b\n0,1,2\n0.01,3,4\n")
    with pytest.raises(ConfigError, match="no channel 'zz'; channels: a, b"):
        Daq(
            "x", config={"mode": "replay", "file": str(recording), "channel_settings": '{"zz": {}}'}
        )


# --- the component over a real broker ---------------------------------------------


async def start_daq(nursery: trio.Nursery, address: str, **config: object) -> Daq:
    daq = Daq("t", address, {k: str(v) for k, v in config.items()})
    await nursery.start(daq.serve)
    return daq


async def collect(tb: object, path: str, n: int, out: list[Frame] | None = None) -> list[Frame]:
    out = [] if out is None else out
    async with tb.subscribe(path, start="now") as sub:  # type: ignore[attr-defined]
        async for item in sub:
            if isinstance(item, Frame) and item.channel != "metadata.txt":
                out.append(item)
                if len(out) == n:
                    return out
    raise AssertionError("subscription ended")


async def test_blocks_follow_the_sample_clock(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        daq = await start_daq(nursery, broker, channels=3, rate=100, block_seconds=0.1)
        async with open_client(broker) as tb:
            frames = await collect(tb, "daq_t_data_source/*", 60)
    assert daq.clock is not None
    t0 = daq.clock.t0
    by_channel: dict[str, list[Frame]] = {}
    for f in frames:
        by_channel.setdefault(f.channel, []).append(f)
    assert set(by_channel) == {"ch0", "ch1", "ch2"}
    for fs in by_channel.values():
        assert {f.content_type for f in fs} == {FLOAT64_CONTENT_TYPE}
        assert {len(f.data) for f in fs} == {10 * 8}
        # Block k is stamped t0 + k * 10 / 100, computed, never read from a clock.
        ks = [round((f.timestamp - t0) / 0.1) for f in fs]
        assert ks == list(range(ks[0], ks[0] + len(fs)))
        assert [f.timestamp for f in fs] == [t0 + k * 10 / 100 for k in ks]
    # The samples continue across blocks: ch0 is a 1 Hz sine sampled at 100 Hz.
    ch0 = by_channel["ch0"]
    k0 = round((ch0[0].timestamp - t0) / 0.1)
    samples = [v for f in ch0 for v in decode_block(f.data)]
    expected = [math.sin(2 * math.pi * (k0 * 10 + i) / 100) for i in range(len(samples))]
    assert samples == pytest.approx(expected, abs=1e-9)


async def test_set_rate_changes_the_block_size_and_keeps_timestamps_continuous(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        daq = await start_daq(nursery, broker, channels=1, rate=100, block_seconds=0.1)
        async with open_client(broker) as tb:
            before = await collect(tb, "daq_t_data_source/ch0", 3)
            reply = await send_command(tb, "daq_t", "set-rate", "500")
            assert reply.ok, reply.error
            assert reply.result == "rate 500 Hz, blocks of 50 samples"
            after = await collect(tb, "daq_t_data_source/ch0", 5)
            meta = json.loads((await tb.fetch("daq_t_data_source/metadata.txt", newest=1))[0].data)
    assert {len(f.data) for f in before} == {80}
    assert {len(f.data) for f in after} == {400}
    # Each block still spans 0.1 s, and the new segment starts on the old schedule.
    new = daq.clock
    assert new is not None and new.rate == 500.0
    ks = [round((f.timestamp - new.t0) / 0.1) for f in after]
    assert ks == list(range(ks[0], ks[0] + 5))
    assert [f.timestamp for f in after] == [new.t0 + k * 50 / 500 for k in ks]
    assert (after[0].timestamp - before[0].timestamp) / 0.1 == pytest.approx(
        round((after[0].timestamp - before[0].timestamp) / 0.1), abs=1e-6
    )
    assert meta["streaming"]["rate"] == 500.0 and meta["streaming"]["block_size"] == 50
    assert daq.rate == 500.0


async def test_stop_start_set_and_refusals(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        daq = await start_daq(nursery, broker, channels=2, rate=10, block_seconds=0.1)
        async with open_client(broker) as tb:
            await collect(tb, "daq_t_data_source/ch0", 2)
            assert (await send_command(tb, "daq_t", "stop")).result == "stopped"
            sent = daq.blocks_sent
            await trio.sleep(2)
            assert daq.blocks_sent == sent
            status = (await send_command(tb, "daq_t", "status")).result
            assert status["system_status"] == "stopped" and status["rate"] == 10.0
            meta = json.loads((await tb.fetch("daq_t_data_source/metadata.txt", newest=1))[0].data)
            assert meta["system_status"] == "stopped" and meta["streaming"]["channels"] == 0

            reply = await send_command(tb, "daq_t", "set", "ch1", "signal", "square")
            assert reply.ok and reply.result == "ch1 signal = 'square'"
            assert (await send_command(tb, "daq_t", "set", "1", "amplitude", "4")).ok
            assert (await send_command(tb, "daq_t", "set", "ch1", "gain", "0.5")).ok
            assert (await send_command(tb, "daq_t", "set", "ch1", "units", "kN")).ok
            assert (await send_command(tb, "daq_t", "start")).ok
            frames = await collect(tb, "daq_t_data_source/ch1", 3)
            assert {v for f in frames for v in decode_block(f.data)} <= {2.0, -2.0}
            meta = json.loads((await tb.fetch("daq_t_data_source/metadata.txt", newest=1))[0].data)
            assert meta["system_status"] == "running"
            assert meta["units"] == {"ch0": "V", "ch1": "kN"}
            assert meta["calibrations"]["ch1"] == {"gain": 0.5, "offset": 0.0}
            assert meta["channel_list"] == ["ch0", "ch1"]
            assert meta["signals"]["ch1"]["signal"] == "square"

            bad = await send_command(tb, "daq_t", "set-rate", "20000")
            assert bad.status == "error" and "out of range: use 1 to 10000 Hz" in bad.error
            bad = await send_command(tb, "daq_t", "set", "ch7", "gain", "2")
            assert bad.status == "error" and bad.error == "no channel 'ch7'; channels: ch0, ch1"
            bad = await send_command(tb, "daq_t", "set", "ch0", "signal", "triangle")
            assert bad.status == "error" and "unknown signal 'triangle'" in bad.error


async def test_replay_streams_the_recording_at_its_rate(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    f = tmp_path / "rec.csv"
    rows = ["time,force,disp"] + [f"{i / 20},{i},{-i}" for i in range(8)]
    f.write_text("\n".join(rows) + "\n")
    with trio.fail_after(60):
        daq = await start_daq(nursery, broker, mode="replay", file=f, block_seconds=0.1)
        assert daq.rate == 20.0 and daq.block_size == 2
        async with open_client(broker) as tb:
            frames = await collect(tb, "daq_t_data_source/force", 5)
            meta = json.loads((await tb.fetch("daq_t_data_source/metadata.txt", newest=1))[0].data)
    samples = [v for fr in frames for v in decode_block(fr.data)]
    # Looped: the recording's 8 samples over and over, wherever we joined.
    start = int(samples[0])
    assert samples == [float((start + i) % 8) for i in range(10)]
    assert meta["channel_list"] == ["force", "disp"]
    assert meta["recording"]["recorded_rate"] == 20.0
    assert meta["streaming"]["rate"] == 20.0


async def test_replay_without_loop_stops_at_the_end(
    broker: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    f = tmp_path / "rec.csv"
    f.write_text("a\n1\n2\n3\n")
    with trio.fail_after(60):
        daq = await start_daq(
            nursery, broker, mode="replay", file=f, rate=10, block_seconds=0.2, loop="false"
        )
        async with open_client(broker) as tb:
            # From the broker's first frame, wherever the stream was when we joined.
            frames = await next_frames(tb, "daq_t_data_source/a", 2, start="oldest")
            async with tb.subscribe("daq_t_data_source/metadata.txt", start="oldest") as sub:
                async for item in sub:
                    if isinstance(item, Frame) and b'"stopped"' in item.data:
                        break
            await trio.sleep(5)  # virtual: nothing more comes
            held = await tb.fetch("daq_t_data_source/a", oldest=10)
    assert [decode_block(fr.data) for fr in frames] == [[1.0, 2.0], [3.0]]
    assert [fr.data for fr in held] == [fr.data for fr in frames]
    assert json.loads(item.data)["system_status"] == "stopped"
    assert not daq.streaming


async def test_blocks_made_while_the_broker_is_away_reach_it_when_it_is_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The DAQ's puts wait in its client's spool through a broker restart; no block
    is skipped and every one keeps its sample-clock timestamp."""
    from tests.test_reconnect import Broker

    with trio.fail_after(120):
        broker = Broker(nursery)
        address = await broker.start()
        daq = await start_daq(nursery, address, channels=1, rate=100, block_seconds=0.1)
        async with open_client(address) as tb:
            before = await collect(tb, "daq_t_data_source/ch0", 5)
        await broker.stop()
        assert daq.client is not None and daq.client.spool is not None
        await daq.client._down.wait()
        await trio.sleep(3)  # virtual: a 3 s outage, 30 blocks
        assert daq.client.spool.frames >= 30
        await broker.start()
        await daq.client.flush(timeout=60)
        async with open_client(address) as tb:
            frames = await tb.fetch("daq_t_data_source/ch0", oldest=10_000)
        assert daq.status()["spool"]["reconnects"] == 1
    assert daq.clock is not None
    t0 = daq.clock.t0
    ks = [round((f.timestamp - t0) / 0.1) for f in frames]
    assert len(ks) >= 30
    assert ks == list(range(ks[0], ks[0] + len(ks)))  # none skipped, none twice
    assert ks[0] <= round((before[-1].timestamp - t0) / 0.1) + 1 + 5
    assert [f.timestamp for f in frames] == [t0 + k * 10 / 100 for k in ks]
