"""Pure parts of the DAQ: signals, the sample clock, sample blocks and CSV recordings.

Nothing here does I/O except :func:`read_csv`, and nothing here knows about
trio or the turbine, so it is all tested synchronously.
"""

from __future__ import annotations

import array
import csv
import math
import random
import re
import sys
from pathlib import Path
from typing import Any

import attrs

#: Signal shapes a channel can produce.
SIGNALS = ("sine", "square", "ramp", "noise", "mix")
#: Per-channel sample rates the DAQ accepts (Hz).
MIN_RATE = 1.0
MAX_RATE = 10_000.0
#: Share of the sine and of the noise in a ``mix`` signal.
MIX_SINE = 0.8
MIX_NOISE = 0.2


class SignalError(ValueError):
    """A channel setting, rate or recording is not acceptable; the message says why."""


def check_rate(rate: float) -> float:
    """Return ``rate`` as a float.

    Raises:
        SignalError: it is outside 1 Hz .. 10 kHz (or not a finite number).
    """
    rate = float(rate)
    if not (MIN_RATE <= rate <= MAX_RATE):
        raise SignalError(
            f"rate {rate:g} Hz is out of range: use {MIN_RATE:g} to {MAX_RATE:g} Hz per channel"
        )
    return rate


def _check_signal(_: object, __: object, value: str) -> None:
    if value not in SIGNALS:
        raise SignalError(f"unknown signal {value!r}: use one of {', '.join(SIGNALS)}")


def _finite(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise SignalError(f"{attribute.name} must be a finite number, not {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    _finite(_, attribute, value)
    if value < 0:
        raise SignalError(f"{attribute.name} must be 0 or more, not {value:g}")


@attrs.frozen
class ChannelConfig:
    """What one channel produces and how it is described.

    Samples are ``gain * raw + cal_offset`` where ``raw`` is the signal:

    * ``sine``: ``offset + amplitude * sin(2 pi f t)``;
    * ``square``: ``offset + amplitude`` for the first half of each period, ``offset - amplitude`` after;
    * ``ramp``: a sawtooth from ``offset - amplitude`` up to ``offset + amplitude`` once per period;
    * ``noise``: ``offset`` plus uniform noise in ``[-amplitude, amplitude]``;
    * ``mix``: ``offset + amplitude * (0.8 sin(2 pi f t) + 0.2 u)`` with ``u`` uniform in ``[-1, 1]``.
    """

    signal: str = attrs.field(default="sine", validator=_check_signal)
    frequency: float = attrs.field(default=1.0, converter=float, validator=_non_negative)
    amplitude: float = attrs.field(default=1.0, converter=float, validator=_finite)
    offset: float = attrs.field(default=0.0, converter=float, validator=_finite)
    units: str = "V"
    description: str = ""
    gain: float = attrs.field(default=1.0, converter=float, validator=_finite)
    cal_offset: float = attrs.field(default=0.0, converter=float, validator=_finite)

    def with_setting(self, key: str, value: object) -> ChannelConfig:
        """A copy with ``key`` set to ``value`` (converted to the field's type).

        Raises:
            SignalError: unknown key, or a value that does not fit it.
        """
        fields = attrs.fields_dict(ChannelConfig)
        if key not in fields:
            raise SignalError(f"unknown channel setting {key!r}: use one of {', '.join(fields)}")
        if fields[key].type in ("float", float):
            try:
                value = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise SignalError(f"{key} must be a number, not {value!r}") from None
        else:
            value = str(value)
        changes: dict[str, Any] = {key: value}
        try:
            return attrs.evolve(self, **changes)
        except (TypeError, ValueError) as exc:
            raise SignalError(str(exc)) from None


def generate(
    config: ChannelConfig, t0: float, rate: float, n: int, rng: random.Random
) -> list[float]:
    """``n`` calibrated samples of ``config`` from signal time ``t0`` at ``rate`` Hz.

    Sample ``i`` is taken at ``t0 + i / rate`` (seconds since the channel started).
    """
    f = config.frequency
    amp = config.amplitude
    off = config.offset
    gain = config.gain
    cal = config.cal_offset
    times = [t0 + i / rate for i in range(n)]
    shape = config.signal
    if shape == "sine":
        w = 2 * math.pi * f
        raw = [off + amp * math.sin(w * t) for t in times]
    elif shape == "square":
        raw = [off + (amp if (f * t) % 1.0 < 0.5 else -amp) for t in times]
    elif shape == "ramp":
        raw = [off + amp * (2.0 * ((f * t) % 1.0) - 1.0) for t in times]
    elif shape == "noise":
        uniform = rng.uniform
        raw = [off + amp * uniform(-1.0, 1.0) for _ in times]
    else:  # mix
        w = 2 * math.pi * f
        uniform = rng.uniform
        raw = [off + amp * (MIX_SINE * math.sin(w * t) + MIX_NOISE * uniform(-1, 1)) for t in times]
    if gain == 1.0 and cal == 0.0:
        return raw
    return [gain * v + cal for v in raw]


def encode_block(samples: list[float]) -> bytes:
    """Samples as a little-endian float64 array (``application/x-float64-le``)."""
    block = array.array("d", samples)
    if sys.byteorder != "little":
        block.byteswap()
    return block.tobytes()


def decode_block(data: bytes) -> list[float]:
    """The inverse of :func:`encode_block`."""
    block = array.array("d")
    block.frombytes(data)
    if sys.byteorder != "little":
        block.byteswap()
    return block.tolist()


def block_size_for(rate: float, block_seconds: float) -> int:
    """Samples per block: ``rate * block_seconds`` rounded, at least one."""
    return max(1, round(rate * block_seconds))


@attrs.frozen
class SampleClock:
    """When each block starts, derived from a start time and the sample rate only.

    Block ``k`` starts at ``t0 + k * block_size / rate`` exactly (no
    accumulated additions, so no drift), and is due once its last sample has
    been taken, at ``start + (k + 1) * block_size / rate`` on the scheduler's
    clock.  A rate change starts a new segment at the next block boundary
    (:meth:`retimed`), so timestamps stay continuous.

    Attributes:
        t0: wall-clock time (seconds since the epoch) of block 0's first sample.
        start: the scheduler's clock (e.g. ``trio.current_time()``) at ``t0``.
        rate: samples per second per channel.
        block_size: samples per block.
        elapsed: signal time at block 0 (seconds since the first segment began).
    """

    t0: float
    start: float
    rate: float
    block_size: int
    elapsed: float = 0.0

    @property
    def period(self) -> float:
        return self.block_size / self.rate

    def timestamp(self, k: int) -> float:
        """Wall-clock time of block ``k``'s first sample."""
        return self.t0 + k * self.block_size / self.rate

    def due(self, k: int) -> float:
        """Scheduler time at which block ``k`` is complete."""
        return self.start + (k + 1) * self.block_size / self.rate

    def signal_time(self, k: int) -> float:
        """Signal time of block ``k``'s first sample."""
        return self.elapsed + k * self.block_size / self.rate

    def retimed(self, k: int, rate: float, block_size: int) -> SampleClock:
        """A clock whose block 0 is this clock's block ``k``, running at ``rate``."""
        return SampleClock(
            t0=self.timestamp(k),
            start=self.start + k * self.block_size / self.rate,
            rate=rate,
            block_size=block_size,
            elapsed=self.signal_time(k),
        )


@attrs.frozen
class Recording:
    """Channels read from a CSV file, sample by sample, and their recorded rate."""

    path: str
    channels: tuple[str, ...]
    columns: tuple[tuple[float, ...], ...]
    rate: float

    @property
    def samples(self) -> int:
        return len(self.columns[0]) if self.columns else 0


_TIME_COLUMNS = ("time", "t", "timestamp", "seconds", "time_s")
_BAD_CHANNEL_CHARS = re.compile(r"[\s/*]+")


def read_csv(path: str | Path, rate: float | None = None) -> Recording:
    """Read recorded channels from a CSV file.

    The first row names the columns.  When the first column is called
    ``time`` (or ``t``, ``timestamp``, ``seconds``, ``time_s``) it holds each
    row's time in seconds and sets the recorded rate (rows per second, from
    the first to the last row); otherwise the rate is ``rate``.  Every
    other column is a channel; names are made safe for the turbine (spaces,
    ``/`` and ``*`` become ``_``).

    Raises:
        SignalError: the file is missing, empty, not numeric (row and column
            named), has no channel, or its rate cannot be known or is out of range.
    """
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except OSError as exc:
        raise SignalError(f"cannot read recording {str(p)!r}: {exc.strerror or exc}") from None
    if len(rows) < 2:
        raise SignalError(f"{p}: a recording needs a header row and at least one row of samples")
    header = [h.strip() for h in rows[0]]
    has_time = header[0].lower() in _TIME_COLUMNS
    names = header[1:] if has_time else header
    if not names:
        raise SignalError(f"{p}: no channel columns (only {header[0]!r})")
    channels = tuple(_BAD_CHANNEL_CHARS.sub("_", n) or f"ch{i}" for i, n in enumerate(names))
    if len(set(channels)) != len(channels):
        raise SignalError(f"{p}: channel names repeat: {', '.join(channels)}")
    values: list[list[float]] = [[] for _ in header]
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise SignalError(f"{p}, row {lineno}: {len(row)} values, but {len(header)} columns")
        for col, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                raise SignalError(
                    f"{p}, row {lineno}, column {header[col]!r}: {cell.strip()!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise SignalError(
                    f"{p}, row {lineno}, column {header[col]!r}: {cell!r} is not finite"
                )
            values[col].append(v)
    if has_time:
        times = values[0]
        span = times[-1] - times[0]
        if len(times) >= 2 and span > 0:
            rate = round((len(times) - 1) / span, 6)
        elif rate is None:
            raise SignalError(
                f"{p}: the time column does not give a rate (one row, or times not increasing); "
                "set the rate"
            )
        columns = values[1:]
    else:
        columns = values
        if rate is None:
            raise SignalError(
                f"{p}: no time column (first column named time) and no rate given; "
                "add a time column or set the rate"
            )
    try:
        rate = check_rate(rate)  # type: ignore[arg-type]
    except SignalError as exc:
        raise SignalError(f"{p}: recorded {exc}") from None
    return Recording(str(p), channels, tuple(tuple(c) for c in columns), rate)
