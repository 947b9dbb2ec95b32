"""Audio: a tone or a WAV file as 16-bit PCM blocks on ``audio_<name>_data_source/audio.pcm``.

Each frame is one block of ``block_seconds`` of interleaved signed 16-bit
samples, big-endian as the content type says (``audio/L16;rate=16000;channels=1``,
RFC 2586: L16 is network byte order), stamped with the sample-clock time of
its first sample: ``t0 + samples_before / rate`` from one reading of the wall
clock at ``start``, so there is neither drift nor jitter in the timestamps.

Sources: ``tone`` (a sine of ``frequency`` Hz, changed with ``set-frequency``
and kept across restarts) and ``wav`` (a 16-bit PCM WAV ``file``, read with the
standard ``wave`` module on a worker thread; the file's rate and channels win
over the settings, ``loop`` plays it again at its end) and ``alsa`` (an ALSA
capture ``device``, read with ``arecord`` from alsa-utils at ``rate`` and
``channels``; a device that fails is logged and retried with backoff, and
``status`` says ``capture``; without arecord on the machine the setting is
refused before anything starts).

Commands: ``start``, ``stop`` (no blocks while stopped; the next start begins a
new sample clock), ``set-frequency HZ`` (tone), ``status``.
"""

from __future__ import annotations

import array
import math
import os
import shutil
import subprocess
import sys
import wave
from typing import Any

import attrs
import trio

from turbine import Backoff, Component, TurbineError, command, run_blocking
from turbine.render import pcm_content_type, pcm_swap
from turbine.settings import check, path_setting

CHANNEL = "audio.pcm"
BITS = 16
SOURCES = ("tone", "wav", "alsa")
#: ALSA's own capture program (alsa-utils): no Python binding needed, and its
#: errors name the device.
ARECORD = "arecord"
#: After a capture fails (no such device, device busy): first and longest wait.
CAPTURE_RETRY_S = (1.0, 30.0)


@attrs.frozen
class AudioSettings:
    source: str = attrs.field(
        default="tone", validator=check(lambda v: v in SOURCES, "'tone', 'wav' or 'alsa'")
    )
    frequency: float = attrs.field(
        default=440.0, validator=check(lambda v: 0 < v < 1e6, "a frequency in Hz > 0")
    )
    amplitude: float = attrs.field(default=0.5, validator=check(lambda v: 0 <= v <= 1, "0 to 1"))
    rate: int = attrs.field(
        default=16000, validator=check(lambda v: 1 <= v <= 384000, "1-384000 Hz")
    )
    channels: int = attrs.field(default=1, validator=check(lambda v: 1 <= v <= 32, "1-32"))
    block_seconds: float = attrs.field(
        default=0.1, validator=check(lambda v: 0.001 <= v <= 10, "0.001-10 seconds")
    )
    #: The WAV file (source = "wav"); in a site file, relative to the site file.
    file: str = path_setting()
    loop: bool = True
    #: Start playing at once (false: wait for ``start``).
    autostart: bool = True
    #: The ALSA capture device (source = "alsa"), as ``arecord -L`` names it.
    device: str = "default"

    def __attrs_post_init__(self) -> None:
        if self.source == "alsa" and shutil.which(ARECORD) is None:
            raise ValueError(
                f"setting 'source': 'alsa' captures with {ARECORD}, which this machine lacks"
                " (Debian: apt-get install alsa-utils)"
            )
        if self.source == "wav":
            if not self.file:
                raise ValueError("setting 'file': missing; expected a WAV file (source = 'wav')")
            if not os.path.isfile(self.file):
                raise ValueError(f"setting 'file': no such file: {self.file!r}")


class CaptureFailed(TurbineError):
    """ALSA capture could not start, or stopped by itself."""


def tone_block(
    frequency: float, amplitude: float, rate: int, channels: int, start: int, count: int
) -> bytes:
    """``count`` frames of a sine from sample ``start`` on, every channel alike, big-endian."""
    peak = amplitude * 32767
    step = 2 * math.pi * frequency / rate
    samples = array.array("h")
    for i in range(start, start + count):
        v = int(round(peak * math.sin(step * i)))
        samples.extend([v] * channels)
    if sys.byteorder == "little":
        samples.byteswap()
    return samples.tobytes()


def wav_format(path: str) -> tuple[int, int]:
    """(rate, channels) of a 16-bit PCM WAV file.

    Raises:
        ValueError: not a WAV file, or not 16-bit.
    """
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples; expected 16-bit PCM")
            return w.getframerate(), w.getnchannels()
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a 16-bit PCM WAV file ({exc})") from None


class WavReader:
    """Blocks of a WAV file, big-endian; used from one worker thread at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.wav = wave.open(path, "rb")

    def read(self, frames: int, loop: bool) -> bytes:
        """Up to ``frames`` frames (fewer at the end without ``loop``; b"" when done)."""
        width = self.wav.getnchannels() * 2
        out = b""
        while len(out) < frames * width:
            chunk = self.wav.readframes(frames - len(out) // width)
            if not chunk:
                if not loop or self.wav.getnframes() == 0:
                    break
                self.wav.rewind()
                continue
            out += chunk
        return pcm_swap(out)  # WAV is little-endian, L16 big-endian

    def close(self) -> None:
        self.wav.close()


class Audio(Component):
    """A tone or a WAV file, played in real time as L16 blocks."""

    type = "audio"
    Settings = AudioSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        if c.source == "wav":
            self.rate, self.audio_channels = wav_format(c.file)
        else:
            self.rate, self.audio_channels = c.rate, c.channels
        self.channels = {CHANNEL: pcm_content_type(self.rate, self.audio_channels)}
        self.frequency: float = self.kept.load().get("frequency", c.frequency)
        self.playing = c.autostart
        self._wake = trio.Event()
        #: Counts starts: a play stretch ends when a newer one begins.
        self._stretch = 0
        self.blocks_sent = 0
        self.samples_sent = 0
        self.capture_state = "not started"
        self._capture_scope: trio.CancelScope | None = None

    @property
    def block_frames(self) -> int:
        return max(1, round(self.config.block_seconds * self.rate))

    async def run(self) -> None:
        while True:
            if not self.playing:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if self.config.source == "alsa":
                await self._capture(self._stretch)
            else:
                await self._play(self._stretch)

    async def _play(self, stretch: int) -> None:
        """One stretch of playing, from ``start`` (or a reconnect) to ``stop``."""
        c = self.config
        n = self.block_frames
        t0 = self.now()
        clock0 = trio.current_time()
        sent = 0
        reader = WavReader(c.file) if c.source == "wav" else None
        try:
            while self.playing and self._stretch == stretch:
                if reader is not None:
                    data = await run_blocking(reader.read, n, c.loop)
                    if not data:
                        self.log.info("end of %s", c.file)
                        self.playing = False
                        await self.publish_metadata()
                        return
                else:
                    data = tone_block(
                        self.frequency, c.amplitude, self.rate, self.audio_channels, sent, n
                    )
                await self.data.put(CHANNEL, data, timestamp=t0 + sent / self.rate)
                await self.data.flush()
                frames = len(data) // (2 * self.audio_channels)
                sent += frames
                self.samples_sent += frames
                self.blocks_sent += 1
                await trio.sleep_until(clock0 + sent / self.rate)
        finally:
            if reader is not None:
                reader.close()

    async def _capture(self, stretch: int) -> None:
        """One stretch of capturing from the ALSA device, until ``stop``; retried while it fails."""
        backoff = Backoff(*CAPTURE_RETRY_S)
        while self.playing and self._stretch == stretch:
            with trio.CancelScope() as self._capture_scope:
                try:
                    await self._capture_once(backoff)
                except CaptureFailed as exc:
                    self.capture_state = f"failed: {exc}"
                    wait = backoff.next_delay()
                    self.log.error("%s; trying again in %g s", exc, wait)
                    await trio.sleep(wait)
            self._capture_scope = None

    async def _capture_once(self, backoff: Backoff) -> None:
        """Blocks from ``arecord`` until it ends.

        The first block's first sample was taken one block before the block
        was complete; from there on each block's time is on the sample clock.

        Raises:
            CaptureFailed: arecord could not start or ended (its message).
        """
        c = self.config
        n = self.block_frames
        block = n * 2 * self.audio_channels
        argv = [ARECORD, "-q", "-D", c.device, "-t", "raw", "-f", "S16_LE"]
        argv += ["-r", str(self.rate), "-c", str(self.audio_channels)]
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise CaptureFailed(f"cannot run {ARECORD}: {exc}") from None
        assert proc.stdout is not None and proc.stderr is not None
        t0: float | None = None
        sent = 0
        pending = bytearray()
        try:
            while True:
                chunk = await proc.stdout.receive_some(block - len(pending))
                if not chunk:
                    break
                pending += chunk
                if len(pending) < block:
                    continue
                if t0 is None:
                    t0 = self.now() - n / self.rate
                    self.capture_state = "capturing"
                    self.log.info("capturing from ALSA device %s", c.device)
                    backoff.reset()
                await self.data.put(CHANNEL, pcm_swap(pending), timestamp=t0 + sent / self.rate)
                await self.data.flush()
                pending.clear()
                sent += n
                self.samples_sent += n
                self.blocks_sent += 1
            with trio.move_on_after(1):
                said = (await proc.stderr.receive_some(4096)).decode(errors="replace")
            raise CaptureFailed(
                f"{ARECORD} -D {c.device} ended: {' '.join(said.split()) or 'no message'}"
            )
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()

    def metadata(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().metadata(),
            "sample_rate": self.rate,
            "audio_channels": self.audio_channels,
            "bits": BITS,
            "byte_order": "big-endian",
            "source": {
                "wav": f"WAV file {c.file}",
                "alsa": f"ALSA device {c.device}",
                "tone": f"tone {self.frequency:g} Hz",
            }[c.source],
            "playing": self.playing,
            "timestamp": "sample-clock time of each block's first sample",
        }

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(
            {
                "playing": self.playing,
                "source": self.config.source,
                "frequency": self.frequency,
                "sample_rate": self.rate,
                "audio_channels": self.audio_channels,
                "capture": self.capture_state if self.config.source == "alsa" else None,
                "blocks_sent": self.blocks_sent,
                "samples_sent": self.samples_sent,
            }
        )
        return st

    @command("start", help="play (a new sample clock starts)")
    async def start(self) -> str:
        if not self.playing:
            self.playing = True
            self._stretch += 1
            self._wake.set()
            await self.publish_metadata()
        return "playing"

    @command("stop", help="stop sending blocks")
    async def stop(self) -> str:
        if self.playing:
            self.playing = False
            if self._capture_scope is not None:
                self._capture_scope.cancel()
                self.capture_state = "stopped"
            await self.publish_metadata()
        return "stopped"

    @command("set-frequency", help="the tone's frequency in Hz, kept across restarts")
    async def set_frequency(self, hz: float) -> str:
        if self.config.source != "tone":
            raise ValueError(f"set-frequency: the source is {self.config.source!r}, not a tone")
        if not 0 < hz < self.rate / 2:
            raise ValueError(
                f"set-frequency: expected 0 < HZ < {self.rate / 2:g} (half the rate), got {hz:g}"
            )
        self.frequency = hz
        await self.kept.save({"frequency": hz})
        await self.publish_metadata()
        return f"{hz:g} Hz"


COMPONENT = Audio
