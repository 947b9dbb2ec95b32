"""The DAQ component: ``daq_<name>_data_source/<channel>`` on the turbine.

A data acquisition source with ``channels`` channels (default 8, named
``ch0`` ..) sampled at ``rate`` Hz each (1 Hz to 10 kHz).  Samples go out in
blocks of ``block_seconds`` (rounded to whole samples): one frame per channel
per block, a little-endian float64 array (``application/x-float64-le``, so a
tap prints numbers) whose timestamp is the block's first sample.

Timestamps come from a sample clock (:class:`~components.daq.signals.SampleClock`):
the wall clock is read once when streaming starts, and block ``k`` is stamped
``t0 + k * block_size / rate`` and sent when trio's clock reaches the end of
that block, so there is neither drift nor jitter in the timestamps.

Modes (setting ``mode``):

* ``generate``: each channel a ``sine``, ``square``, ``ramp``, ``noise`` or
  ``mix`` signal with a frequency, amplitude and offset (settings ``signal``,
  ``frequency``, ``amplitude``, ``offset`` for every channel, and
  ``channel_settings`` as JSON, e.g. ``{"ch1": {"signal": "square"}}``, per channel);
* ``replay``: the columns of the CSV file ``file`` at its recorded rate
  (from its ``time`` column, else the ``rate`` setting), looped unless ``loop`` is false.

Metadata (the standard DAQ list): channel listing, units, descriptions,
calibrations (gain, offset), system status (``running``, ``stopped``) and
streaming status (channels streaming, rate, block size).

Commands besides ``status`` and ``help``: ``start``, ``stop``,
``set-rate HZ`` and ``set CHANNEL KEY VALUE`` (KEY one of signal,
frequency, amplitude, offset, units, description, gain, cal_offset).

Run with ``python -m components.daq --name rig --set rate=500``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import attrs
import trio

from components.daq.signals import (
    SIGNALS,
    ChannelConfig,
    Recording,
    SampleClock,
    SignalError,
    block_size_for,
    check_rate,
    encode_block,
    generate,
    read_csv,
)
from turbine import FLOAT64_CONTENT_TYPE
from turbine.component import Component, command
from turbine.settings import ConfigError, check, path_setting

MODES = ("generate", "replay")
MAX_CHANNELS = 256
#: Longest block (seconds); a block is also the longest a rate change waits.
MAX_BLOCK_SECONDS = 10.0
#: Channel keys that only make sense for generated signals.
SIGNAL_KEYS = ("signal", "frequency", "amplitude", "offset")


@attrs.frozen
class DaqSettings:
    """The DAQ's settings (see the module docstring)."""

    mode: str = attrs.field(
        default="generate", validator=check(lambda v: v in MODES, f"one of {', '.join(MODES)}")
    )
    channels: int = attrs.field(
        default=8, validator=check(lambda v: 1 <= v <= MAX_CHANNELS, f"1 to {MAX_CHANNELS}")
    )
    rate: float = attrs.field(default=100.0, validator=lambda _i, _a, v: check_rate(v))
    block_seconds: float = attrs.field(
        default=0.1,
        validator=check(
            lambda v: 0 < v <= MAX_BLOCK_SECONDS, f"more than 0 and at most {MAX_BLOCK_SECONDS:g}"
        ),
    )
    signal: str = "sine"
    frequency: float = 1.0
    amplitude: float = 1.0
    offset: float = 0.0
    units: str = "V"
    channel_settings: dict[str, Any] = attrs.field(factory=dict)
    file: str = path_setting()
    loop: bool = True
    seed: int = 0
    autostart: bool = True

    def __attrs_post_init__(self) -> None:
        if self.mode == "replay":
            if not self.file:
                raise ValueError("setting 'file': replay mode needs the CSV file to replay")
            try:
                os.stat(self.file)  # read when the component starts, not here
            except OSError as exc:
                raise ValueError(
                    f"cannot read recording {self.file!r}: {exc.strerror or exc}"
                ) from None
        # A recording's channels are known once it is read: its names are not checked here.
        replay = self.mode == "replay"
        self.channel_configs(list(self.channel_settings) if replay else self.generated_names())

    def base_channel(self) -> ChannelConfig:
        """What every channel produces unless ``channel_settings`` says otherwise.

        Raises:
            SignalError: a signal setting is wrong.
        """
        return ChannelConfig(
            signal=self.signal,
            frequency=self.frequency,
            amplitude=self.amplitude,
            offset=self.offset,
            units=self.units,
        )

    def generated_names(self) -> list[str]:
        return [f"ch{i}" for i in range(self.channels)]

    def channel_configs(self, names: list[str]) -> dict[str, ChannelConfig]:
        """Channels ``names``, each the base channel with its ``channel_settings``.

        Raises:
            ValueError: ``channel_settings`` names a channel not in ``names``, or
                gives one something other than keys and values.
            SignalError: a setting is wrong.
        """
        configs = dict.fromkeys(names, self.base_channel())
        for ch, overrides in self.channel_settings.items():
            if ch not in configs:
                raise ValueError(
                    f"setting 'channel_settings': no channel {ch!r}; channels: {', '.join(names)}"
                )
            if not isinstance(overrides, dict):
                raise ValueError(
                    f"setting 'channel_settings': {ch!r} must map keys to values, got {overrides!r}"
                )
            for key, value in overrides.items():
                configs[ch] = configs[ch].with_setting(key, value)
        return configs


class Daq(Component):
    """A data acquisition source: N channels of generated signals or a replayed CSV recording."""

    type = "daq"
    channels = {}  # per instance: see __init__
    Settings = DaqSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg: DaqSettings = self.config
        self.recording: Recording | None = None
        try:
            if cfg.mode == "replay":
                self.recording = read_csv(cfg.file, rate=cfg.rate)
                names = list(self.recording.channels)
                self.rate = self.recording.rate
            else:
                names = cfg.generated_names()
                self.rate = cfg.rate
            self.channel_configs = cfg.channel_configs(names)
        except ValueError as exc:  # a SignalError, or channel_settings naming no recorded column
            raise ConfigError(f"{exc}") from None
        # One channel per signal or recorded column: known only once configured.
        self.channels = dict.fromkeys(names, FLOAT64_CONTENT_TYPE)
        self.block_size = block_size_for(self.rate, cfg.block_seconds)
        self.streaming = cfg.autostart
        self.clock: SampleClock | None = None
        self.next_block = 0
        self.blocks_sent = 0
        self.position = 0  # replay: index of the next recorded sample
        self.loops = 0
        self._rngs = {n: random.Random(cfg.seed * 100_003 + i) for i, n in enumerate(names)}
        self._poke: trio.Event | None = None

    # --- streaming

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def _wait(self, deadline: float) -> None:
        """Sleep until ``deadline`` on trio's clock, or until a command changes something."""
        self._poke = trio.Event()
        with trio.move_on_at(deadline):
            await self._poke.wait()

    async def run(self) -> None:
        while True:
            if not self.streaming:
                await self._wait(float("inf"))
                continue
            if self.clock is None:
                self.clock = SampleClock(
                    self.now(), trio.current_time(), self.rate, self.block_size
                )
                self.next_block = 0
                self.log.info(
                    "streaming %d channels at %g Hz in blocks of %d",
                    len(self.channels),
                    self.rate,
                    self.block_size,
                )
            clock, k = self.clock, self.next_block
            now = trio.current_time()
            due = clock.due(k)
            if now < due:
                await self._wait(due)
                continue  # re-read: a command may have changed the clock or stopped us
            # Behind the schedule, every block is still sent, with its
            # sample-clock timestamp: a real instrument's samples exist whether
            # or not the broker does (while it is away they wait in the spool).
            await self._send_block(clock, k)
            self.next_block = k + 1
            self.blocks_sent += 1

    async def _send_block(self, clock: SampleClock, k: int) -> None:
        ts = clock.timestamp(k)
        n = clock.block_size
        data = self.data
        if self.recording is None:
            t = clock.signal_time(k)
            for name, cfg in self.channel_configs.items():
                samples = generate(cfg, t, clock.rate, n, self._rngs[name])
                await data.put(name, encode_block(samples), timestamp=ts)
            return
        rec = self.recording
        total = rec.samples
        start = self.position % total if self.config.loop else self.position
        stop = start + n
        if not self.config.loop and stop >= total:
            stop = total
        idx = [i % total for i in range(start, stop)]
        for col, (name, cfg) in enumerate(self.channel_configs.items()):
            column = rec.columns[col]
            g, c = cfg.gain, cfg.cal_offset
            samples = [column[i] * g + c for i in idx]
            await data.put(name, encode_block(samples), timestamp=ts)
        self.position += len(idx)
        if self.config.loop:
            if start + n >= total:
                self.loops += 1
        elif self.position >= total:
            self.log.info("the recording %s ended after %d samples", rec.path, total)
            await self._stop_streaming()

    async def _stop_streaming(self) -> None:
        self.streaming = False
        self.clock = None
        self._wake()
        await self.publish_metadata()

    # --- what the world sees

    def metadata(self) -> dict[str, Any]:
        md = super().metadata()
        names = list(self.channel_configs)
        md.update(
            {
                "mode": self.config.mode,
                "channel_list": names,
                "units": {n: c.units for n, c in self.channel_configs.items()},
                "descriptions": {n: self._describe(n) for n in names},
                "calibrations": {
                    n: {"gain": c.gain, "offset": c.cal_offset}
                    for n, c in self.channel_configs.items()
                },
                "system_status": "down"
                if self.state == "down"
                else "running"
                if self.streaming
                else "stopped",
                "streaming": {
                    "channels": len(names) if self.streaming else 0,
                    "rate": self.rate,
                    "block_size": self.block_size,
                    "sample_format": "float64 little-endian, timestamp = first sample of the block",
                },
            }
        )
        if self.recording is None:
            md["signals"] = {
                n: {k: getattr(c, k) for k in SIGNAL_KEYS} for n, c in self.channel_configs.items()
            }
        else:
            md["recording"] = {
                "file": self.recording.path,
                "samples": self.recording.samples,
                "recorded_rate": self.recording.rate,
                "loop": self.config.loop,
            }
        return md

    def _describe(self, name: str) -> str:
        c = self.channel_configs[name]
        if c.description:
            return c.description
        if self.recording is not None:
            return f"column {name} of {self.recording.path}"
        return f"{c.signal}, {c.frequency:g} Hz, amplitude {c.amplitude:g}, offset {c.offset:g}"

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(
            {
                "system_status": "down"
                if self.state == "down"
                else "running"
                if self.streaming
                else "stopped",
                "mode": self.config.mode,
                "channels": len(self.channel_configs),
                "rate": self.rate,
                "block_size": self.block_size,
                "blocks_sent": self.blocks_sent,
            }
        )
        if self.recording is not None:
            st["position"] = self.position
            st["loops"] = self.loops
        return st

    # --- commands

    @command("start", help="start streaming (from a fresh sample clock)")
    async def start(self) -> str:
        if not self.streaming:
            self.streaming = True
            self.clock = None
            if self.recording is not None and not self.config.loop:
                self.position = 0
            self._wake()
            await self.publish_metadata()
        return f"streaming {len(self.channels)} channels at {self.rate:g} Hz"

    @command("stop", help="stop streaming")
    async def stop(self) -> str:
        if self.streaming:
            await self._stop_streaming()
            self.log.info("stopped streaming after %d blocks", self.blocks_sent)
        return "stopped"

    @command("set-rate", help="set the sample rate per channel (1 to 10000 Hz)")
    async def set_rate(self, hz: float) -> str:
        try:
            rate = check_rate(hz)
        except SignalError as exc:
            raise ValueError(str(exc)) from None
        self.rate = rate
        self.block_size = block_size_for(rate, self.config.block_seconds)
        if self.clock is not None:
            # The next block starts where the current schedule puts it, at the new rate.
            self.clock = self.clock.retimed(self.next_block, rate, self.block_size)
            self.next_block = 0
        self._wake()
        self.log.info("rate now %g Hz (blocks of %d samples)", rate, self.block_size)
        await self.publish_metadata()
        return f"rate {rate:g} Hz, blocks of {self.block_size} samples"

    @command(
        "set",
        help="set a channel's signal, frequency, amplitude, offset, units, description, gain or cal_offset",
    )
    async def set_channel(self, channel: str, key: str, value: str) -> str:
        name = self._channel(channel)
        if self.recording is not None and key in SIGNAL_KEYS:
            raise ValueError(
                f"{key!r} is a generated signal's setting; a replayed channel takes "
                "units, description, gain and cal_offset"
            )
        try:
            self.channel_configs[name] = self.channel_configs[name].with_setting(key, value)
        except SignalError as exc:
            raise ValueError(str(exc)) from None
        self.log.info("channel %s: %s = %s", name, key, value)
        await self.publish_metadata()
        return f"{name} {key} = {getattr(self.channel_configs[name], key)!r}"

    def _channel(self, channel: str) -> str:
        if channel in self.channel_configs:
            return channel
        names = list(self.channel_configs)
        if channel.isdigit() and int(channel) < len(names):
            return names[int(channel)]
        raise ValueError(f"no channel {channel!r}; channels: {', '.join(names)}")


#: The class the MCP launches for ``kind = "daq"`` (see turbine.mcp).
COMPONENT = Daq

__all__ = ["COMPONENT", "SIGNALS", "Daq"]
