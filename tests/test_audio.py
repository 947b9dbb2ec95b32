"""The audio component: tone and WAV blocks as L16 with sample-clock timestamps."""

from __future__ import annotations

import array
import json
import math
import shutil
import sys
import wave
from pathlib import Path

import pytest
import trio

from components.audio.component import Audio, AudioSettings
from turbine import Frame, open_client, send_command
from turbine.settings import ConfigError
from turbine.testing import (
    fake_data,
    follow_trio_clock,
    next_frames,
    open_broker,
    run_blocking_inline,
    serving,
)


def samples(data: bytes) -> list[int]:
    """Big-endian 16-bit samples, as a reader of audio/L16 decodes them."""
    a = array.array("h", data)
    if sys.byteorder == "little":
        a.byteswap()
    return list(a)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBINE_STATE_DIR", str(tmp_path / "state"))


async def test_a_tone_plays_in_blocks_on_its_sample_clock(autojump_clock: object) -> None:
    audio = Audio("mic", config={"rate": 8000, "frequency": 1000.0, "block_seconds": 0.05})
    source = fake_data(audio)
    with trio.move_on_after(0.2):  # virtual: four blocks
        await audio.run()
    frames = source.frames("audio.pcm")
    assert len(frames) == 4
    assert [len(f.data) for f in frames] == [800] * 4  # 400 samples * 2 bytes
    stamps = [f.timestamp for f in frames]
    # t0 + samples / rate; the float step near today's epoch is ~0.24 us.
    assert stamps == pytest.approx([stamps[0] + k * 0.05 for k in range(4)], abs=1e-6, rel=0)
    first = samples(frames[0].data)
    # 1 kHz at 8 kHz: sample 2 is the crest (sin(pi/2)), amplitude 0.5 of full scale.
    assert first[:3] == [0, round(16383.5 * math.sin(math.pi / 4)), 16384]
    assert audio.channels == {"audio.pcm": "audio/L16;rate=8000;channels=1"}


async def test_a_wav_file_plays_big_endian_and_ends(tmp_path: Path, autojump_clock: object) -> None:
    run_blocking_inline()  # file reads in this task: a worker thread at work looks idle
    path = tmp_path / "clip.wav"
    values = list(range(-300, 300))  # 600 frames, stereo below
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(4000)
        w.writeframes(array.array("h", [v for v in values for _ in (0, 1)]).tobytes())
    audio = Audio(
        "clip", config={"source": "wav", "file": str(path), "loop": False, "block_seconds": 0.1}
    )
    assert audio.channels == {"audio.pcm": "audio/L16;rate=4000;channels=2"}
    source = fake_data(audio)
    with trio.move_on_after(1.0):  # virtual: the clip lasts 0.15 s
        await audio.run()
    frames = source.frames("audio.pcm")
    got = [s for f in frames for s in samples(f.data)]
    assert got == [v for v in values for _ in (0, 1)]
    assert [len(f.data) for f in frames] == [1600, 800]  # 400 frames, then the last 200
    assert frames[1].timestamp - frames[0].timestamp == pytest.approx(0.1)
    assert audio.playing is False


def test_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected 'tone', 'wav' or 'alsa', got 'mic'"):
        Audio.make_settings({"source": "mic"}, strict=True)
    with pytest.raises(ValueError, match="no such file"):
        AudioSettings(source="wav", file=str(tmp_path / "missing.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(ValueError, match="not a 16-bit PCM WAV file"):
        Audio("x", config={"source": "wav", "file": str(bad)})


async def test_commands_on_the_turbine_and_a_kept_frequency(autojump_clock: object) -> None:
    follow_trio_clock()  # command deadlines in virtual time
    run_blocking_inline()  # self.kept.save writes and fsyncs in this task
    config = {"rate": 8000, "block_seconds": 0.1, "autostart": False}
    with trio.fail_after(30):
        async with open_broker() as address, open_client(address) as tb:
            async with serving(Audio("tone", address, config)):
                status = (await send_command(tb, "audio_tone", "status")).result
                assert status["playing"] is False and status["blocks_sent"] == 0
                reply = await send_command(tb, "audio_tone", "set-frequency", 5000.0)
                assert not reply.ok and "half the rate" in reply.error
                reply = await send_command(tb, "audio_tone", "set-frequency", 500.0)
                assert reply.ok and reply.result == "500 Hz"
                async with tb.subscribe("audio_tone_data_source/audio.pcm", start="now") as sub:
                    assert (await send_command(tb, "audio_tone", "start")).result == "playing"
                    frames = [await sub.receive() for _ in range(3)]
                assert all(isinstance(f, Frame) for f in frames)
                assert all(len(f.data) == 1600 for f in frames)
                assert (await send_command(tb, "audio_tone", "stop")).result == "stopped"
                status = (await send_command(tb, "audio_tone", "status")).result
                assert status["playing"] is False and status["frequency"] == 500.0
            # A new process for the same component keeps the frequency set by command.
            async with serving(Audio("tone", address, config)):
                status = (await send_command(tb, "audio_tone", "status")).result
                assert status["frequency"] == 500.0


ALSA_DEVICE = """
pcm.turbinetest {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
"""

needs_arecord = pytest.mark.skipif(
    shutil.which("arecord") is None,
    reason="ALSA capture needs arecord (Debian: apt-get install alsa-utils; .ci/run installs it)",
)


def test_alsa_without_arecord_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="captures with arecord, which this machine lacks"):
        Audio.make_settings({"source": "alsa"}, strict=True)


@needs_arecord
async def test_alsa_capture_through_alsa_lib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real capture through alsa-lib and arecord, from ALSA's file plugin (no sound card needed):
    the device reads its samples from a file, so the test knows every one it should get."""
    played = array.array("h", [int(9000 * math.sin(i / 7)) for i in range(8000)])
    (tmp_path / "in.raw").write_bytes(played.tobytes())  # S16_LE on this machine
    assert sys.byteorder == "little"
    (tmp_path / ".asoundrc").write_text(ALSA_DEVICE.format(infile=tmp_path / "in.raw"))
    monkeypatch.setenv("HOME", str(tmp_path))  # alsa-lib reads ~/.asoundrc
    config = {"source": "alsa", "device": "turbinetest", "rate": 8000, "block_seconds": 0.1}
    with trio.fail_after(20):
        async with open_broker() as address:
            audio = Audio("mic", address, config)
            async with serving(audio), open_client(address) as tb:
                got = await next_frames(tb, "audio_mic_data_source/audio.pcm", 5, start="oldest")
                assert await send_command(tb, "audio_mic", "stop")
                status = (await send_command(tb, "audio_mic", "status")).result
                (meta,) = await tb.fetch("audio_mic_data_source/metadata.txt", newest=1)
    assert got[0].content_type == "audio/L16;rate=8000;channels=1"
    assert [len(f.data) for f in got] == [1600] * 5
    assert [s for f in got for s in samples(f.data)] == list(played[:4000])
    # Sample-clock timestamps: 800 samples (0.1 s) apart exactly, the first one block early.
    assert [round(b.timestamp - a.timestamp, 6) for a, b in zip(got, got[1:], strict=False)] == [
        0.1
    ] * 4
    assert status["capture"] == "stopped" and status["blocks_sent"] >= 5
    assert '"source": "ALSA device turbinetest"' in meta.data.decode()


@needs_arecord
async def test_an_alsa_device_that_fails_is_logged_and_retried() -> None:
    config = {"source": "alsa", "device": "nosuchdevice", "rate": 8000}
    with trio.fail_after(20):
        async with open_broker() as address:
            async with serving(Audio("mic", address, config)), open_client(address) as tb:
                log = "audio_mic_debug_log_source/log.txt"
                async with tb.subscribe(log, start="oldest") as sub:
                    async for item in sub:
                        if isinstance(item, Frame) and b"trying again" in item.data:
                            break
                status = (await send_command(tb, "audio_mic", "status")).result
    message = json.loads(item.data)
    assert message["level"] == "ERROR"
    assert "arecord -D nosuchdevice ended: ALSA lib" in message["message"]
    assert "Unknown PCM nosuchdevice" in message["message"]
    assert status["capture"].startswith("failed: arecord -D nosuchdevice ended")
