"""The DVD archiver writes audio channels as WAV files that any PC plays.

The session is built by the archiver's own staging code from committed
segments, and the files are read back with the standard library's ``wave``,
as a reader of the disc would.
"""

from __future__ import annotations

import array
import json
import sys
import wave
from pathlib import Path

from components.audio.component import tone_block
from components.dvd_archiver.staging import Buffer, ChannelBuffer, Staging
from turbine import layout
from turbine.render import pcm_content_type, pcm_format

SOURCE = "audio_tone_data_source"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RATE = 8000
BLOCK = 800  # sample frames: 0.1 s


def blocks(
    channels: int, first_seq: int, start: float, count: int
) -> list[tuple[int, float, bytes]]:
    """``count`` tone blocks on their sample clock from ``start``, as the audio component sends."""
    return [
        (
            first_seq + i,
            start + i * BLOCK / RATE,
            tone_block(440.0, 0.5, RATE, channels, i * BLOCK, BLOCK),
        )
        for i in range(count)
    ]


def little_endian(data: bytes) -> bytes:
    samples = array.array("h", data)
    if sys.byteorder == "little":
        samples.byteswap()
    return samples.tobytes()


def test_pcm_content_types_are_read_as_rfc_2586_says() -> None:
    assert pcm_format(pcm_content_type(16000, 2)) == (16000, 2)
    assert pcm_format("audio/L16; rate=8000") == (8000, 1)  # channels default to 1
    assert pcm_format("audio/l16;rate=44100;channels=2") == (44100, 2)
    assert pcm_format("audio/L16") is None  # no rate: nothing a player can use
    assert pcm_format("audio/L16;rate=fast") is None
    assert pcm_format("application/octet-stream") is None
    assert layout.channel_kind("audio.pcm", pcm_content_type(16000, 1)) == "audio"
    assert layout.channel_kind("audio.pcm", "audio/L16") == "binary"


def test_runs_end_where_the_audio_stops_or_frames_are_missing() -> None:
    first = blocks(1, 1, T0, 3)
    later = blocks(1, 4, T0 + 10.0, 2)  # stopped, started 10 s later
    after_gap = blocks(1, 8, T0 + 10.0 + 7 * BLOCK / RATE, 2)  # seqs 6-7 were evicted
    rows = first + later + after_gap
    runs = layout.audio_runs(rows, RATE, 1)
    assert [[r[0] for r in run] for run in runs] == [[1, 2, 3], [4, 5], [8, 9]]
    # Blocks stamped on arrival, a few ms late, still make one recording.
    late = blocks(1, 10, T0 + 20, 1) + blocks(1, 11, T0 + 20 + BLOCK / RATE + 0.005, 1)
    assert len(layout.audio_runs(late, RATE, 1)) == 1


def test_a_session_holds_a_playable_wav_file_per_recording(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging", tmp_path / "state")
    mono = blocks(1, 1, T0, 5) + blocks(1, 6, T0 + 60.0, 3)
    stereo = blocks(2, 1, T0 + 1.0, 4)
    buffer = Buffer()
    buffer.channels["mono"] = ChannelBuffer(
        SOURCE, "audio.pcm", pcm_content_type(RATE, 1), list(mono)
    )
    buffer.channels["stereo"] = ChannelBuffer(
        SOURCE, "stereo.pcm", pcm_content_type(RATE, 2), list(stereo)
    )
    segment = staging.commit(buffer)
    assert segment is not None
    out, _, manifest = staging.build_session([segment], 1, "dvd_test", [])

    wavs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert wavs == [
        f"{SOURCE}/audio.pcm/2026-01-01/000000.000000_session0001_s1-5.wav",
        f"{SOURCE}/audio.pcm/2026-01-01/000100.000000_session0001_s6-8.wav",
        f"{SOURCE}/stereo.pcm/2026-01-01/000001.000000_session0001_s1-4.wav",
    ]
    expect = {
        wavs[0]: (1, mono[:5]),
        wavs[1]: (1, mono[5:]),
        wavs[2]: (2, stereo),
    }
    for name, (channels, rows) in expect.items():
        with wave.open(str(out / name), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (channels, 2, RATE)
            assert w.getnframes() == len(rows) * BLOCK
            assert w.readframes(w.getnframes()) == b"".join(little_endian(d) for _, _, d in rows)
        assert manifest["files"][name]["sha256"] == layout.sha256_file(out / name)
    assert manifest["channels"][f"{SOURCE}/audio.pcm"]["kind"] == "audio"
    assert manifest["channels"][f"{SOURCE}/audio.pcm"]["frames"] == 8
    assert ".wav" in (out / layout.README_NAME).read_text()
    assert json.loads((out / layout.manifest_path(1)).read_bytes()) == manifest
