"""A synthetic camera: a test pattern rendered with Pillow.

Each frame shows a static background (colour bars, a grey ramp, a grid), an
element that moves with the frame number, and a text strip with the frame
counter and the capture timestamp.

Rendering is built for many cameras at once:

* the background is drawn once per renderer;
* the frame with the moving element is encoded once per position of that
  element (the motion repeats every ``period`` frames) and cached;
* for every frame only the text strip, a band of whole JPEG MCU rows at the
  top of the picture, is drawn and encoded, and its entropy-coded rows are
  spliced into the cached frame.  The frames are encoded with one restart
  marker per MCU row, so each row's coded data stands alone and can be swapped
  without touching the rest.  The result is byte-for-byte the JPEG that a full
  encode of the same picture gives (``render_full``), at a fraction of the
  cost.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncGenerator

import attrs
import trio
from PIL import Image, ImageDraw, ImageFont

from turbine import wall_time

# 4:2:0 chroma subsampling: a JPEG MCU is 16x16 pixels.
_MCU = 16
_MIN_WIDTH = 64
_MIN_HEIGHT = 48
_MAX_SIDE = 8192
# Frames after which the moving element is back where it started.
DEFAULT_PERIOD = 60
DEFAULT_QUALITY = 80

_BARS = [
    (192, 192, 192),
    (192, 192, 0),
    (0, 192, 192),
    (0, 192, 0),
    (192, 0, 192),
    (192, 0, 0),
    (0, 0, 192),
]


def format_timestamp(timestamp: float) -> str:
    """Format a POSIX timestamp as UTC ISO 8601 with milliseconds."""
    millis = int(round(timestamp * 1000))
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


class PatternRenderer:
    """Render test-pattern frames of one size as JPEG bytes.

    Args:
        width, height: picture size in pixels (64x48 up to 8192x8192).
        quality: JPEG quality, 1..95.
        period: number of frames after which the moving element repeats; the
            renderer keeps up to this many encoded frames in memory.

    Raises:
        ValueError: for a size, quality or period out of range.

    Not thread-safe; one renderer per task (or share it within one trio task
    tree, which is single-threaded).
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        quality: int = DEFAULT_QUALITY,
        period: int = DEFAULT_PERIOD,
    ) -> None:
        if not (_MIN_WIDTH <= width <= _MAX_SIDE and _MIN_HEIGHT <= height <= _MAX_SIDE):
            raise ValueError(
                f"resolution {width}x{height} out of range: width and height must be "
                f"between {_MIN_WIDTH}x{_MIN_HEIGHT} and {_MAX_SIDE}x{_MAX_SIDE}"
            )
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality {quality} out of range 1..95")
        if period < 1:
            raise ValueError(f"period must be at least 1 frame, got {period}")
        self.width = width
        self.height = height
        self.quality = quality
        self.period = period
        self._font = ImageFont.load_default(size=max(8, min(40, height // 20)))
        text_h = int(self._font.getbbox("0Ag")[3]) + 4
        # The text strip: whole MCU rows at the top of the picture.
        self._strip_rows = max(1, -(-text_h // _MCU))
        self._strip_h = self._strip_rows * _MCU
        self._background = self._draw_background()
        self._strip_background = self._background.crop((0, 0, width, self._strip_h))
        self._cache: dict[int, list[bytes]] = {}
        self._splice_ok = True

    # -- drawing ---------------------------------------------------------

    def _draw_background(self) -> Image.Image:
        w, h = self.width, self.height
        im = Image.new("RGB", (w, h), (16, 16, 16))
        draw = ImageDraw.Draw(im)
        bars_bottom = h * 2 // 3
        for i, colour in enumerate(_BARS):
            x0 = i * w // len(_BARS)
            x1 = (i + 1) * w // len(_BARS)
            draw.rectangle((x0, self._strip_h, x1 - 1, bars_bottom - 1), fill=colour)
        ramp = Image.linear_gradient("L").rotate(90, expand=True).resize((w, h - bars_bottom))
        im.paste(ramp.convert("RGB"), (0, bars_bottom))
        step = max(16, w // 16)
        for x in range(0, w, step):
            draw.line((x, bars_bottom, x, h - 1), fill=(64, 64, 64))
        for y in range(bars_bottom, h, step):
            draw.line((0, y, w - 1, y), fill=(64, 64, 64))
        return im

    def _element_box(self, frame_no: int) -> tuple[int, int, int, int]:
        """Where the moving element is: it sweeps left to right and back."""
        phase = frame_no % self.period
        half = self.period / 2
        fraction = phase / half if phase < half else (self.period - phase) / half
        size = max(8, self.height // 8)
        x = int(fraction * (self.width - size))
        y = self._strip_h + (self.height * 2 // 3 - self._strip_h - size) // 2
        return (x, y, x + size - 1, y + size - 1)

    def _draw_element(self, im: Image.Image, frame_no: int) -> None:
        box = self._element_box(frame_no)
        draw = ImageDraw.Draw(im)
        draw.rectangle(box, fill=(255, 255, 255), outline=(0, 0, 0), width=2)

    def _draw_strip(self, frame_no: int, timestamp: float) -> Image.Image:
        strip = self._strip_background.copy()
        draw = ImageDraw.Draw(strip)
        text = f"frame {frame_no:08d}  {format_timestamp(timestamp)}"
        draw.text((4, 2), text, fill=(255, 255, 255), font=self._font)
        return strip

    def _encode(self, im: Image.Image) -> bytes:
        out = io.BytesIO()
        im.save(out, "JPEG", quality=self.quality, subsampling=2, restart_marker_rows=1)
        return out.getvalue()

    # -- public ----------------------------------------------------------

    def picture(self, frame_no: int, timestamp: float) -> Image.Image:
        """The frame as a Pillow image (not encoded)."""
        im = self._background.copy()
        self._draw_element(im, frame_no)
        im.paste(self._draw_strip(frame_no, timestamp), (0, 0))
        return im

    def render_full(self, frame_no: int, timestamp: float) -> bytes:
        """Draw and encode the whole frame; the reference for ``render``."""
        return self._encode(self.picture(frame_no, timestamp))

    def render(self, frame_no: int, timestamp: float) -> bytes:
        """Return frame ``frame_no`` stamped with ``timestamp`` as JPEG bytes.

        Cost after the first ``period`` frames: drawing and encoding the text
        strip plus a byte splice; the first time each element position is
        seen, one full encode.
        """
        phase = frame_no % self.period
        segments = self._cache.get(phase)
        if segments is None:
            im = self._background.copy()
            self._draw_element(im, frame_no)
            segments = _split_scan(self._encode(im))
            if segments is None or len(segments) - 2 < self._strip_rows:
                # Not the layout we expect from the encoder: no fast path.
                self._splice_ok = False
            else:
                self._cache[phase] = segments
        if not self._splice_ok or segments is None:
            return self.render_full(frame_no, timestamp)
        strip = _split_scan(self._encode(self._draw_strip(frame_no, timestamp)))
        if strip is None or len(strip) - 2 != self._strip_rows:
            self._splice_ok = False
            return self.render_full(frame_no, timestamp)
        # segments = [header, row0, row1, ..., rowN-1, trailer]
        rows = strip[1:-1] + segments[1 + self._strip_rows : -1]
        return _join_scan(segments[0], rows, segments[-1])


def _split_scan(jpeg: bytes) -> list[bytes] | None:
    """Split a baseline JPEG with one restart interval per MCU row.

    Returns ``[header, row0, ..., rowN-1, trailer]`` where ``header`` runs up
    to the end of the SOS segment, each row is its entropy-coded data without
    the RST marker, and ``trailer`` is the EOI marker.  Returns None if the
    JPEG does not have that shape (several scans, no DRI, ...).
    """
    if jpeg[:2] != b"\xff\xd8":
        return None
    pos = 2
    has_dri = False
    while True:
        if pos + 4 > len(jpeg) or jpeg[pos] != 0xFF:
            return None
        marker = jpeg[pos + 1]
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if marker == 0xDD:
            has_dri = True
        if marker in (0xC2, 0xC6, 0xCA, 0xCE):  # progressive: several scans
            return None
        pos += 2 + length
        if marker == 0xDA:
            break
    if not has_dri or not jpeg.endswith(b"\xff\xd9"):
        return None
    header = jpeg[:pos]
    data = jpeg[pos:-2]
    rows = []
    start = 0
    find = data.find
    i = find(b"\xff", 0)
    while i != -1:
        nxt = data[i + 1] if i + 1 < len(data) else 0
        if 0xD0 <= nxt <= 0xD7:
            rows.append(data[start:i])
            start = i + 2
            i = find(b"\xff", start)
        else:
            i = find(b"\xff", i + 2 if nxt == 0 else i + 1)
    rows.append(data[start:])
    return [header, *rows, b"\xff\xd9"]


def _join_scan(header: bytes, rows: list[bytes], trailer: bytes) -> bytes:
    parts = [header]
    for k, row in enumerate(rows):
        if k:
            parts.append(bytes((0xFF, 0xD0 + (k - 1) % 8)))
        parts.append(row)
    parts.append(trailer)
    return b"".join(parts)


@attrs.frozen
class SyntheticConfig:
    """Settings of a synthetic camera."""

    width: int = 640
    height: int = 480
    fps: float = attrs.field(default=10.0)
    quality: int = DEFAULT_QUALITY

    @fps.validator
    def _check_fps(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 < value <= 1000:
            raise ValueError(f"fps must be in (0, 1000], got {value}")


async def synthetic_frames(config: SyntheticConfig) -> AsyncGenerator[tuple[bytes, float], None]:
    """Yield ``(jpeg, capture_time)`` at ``config.fps``, forever.

    ``capture_time`` is the wall-clock time (``turbine.wall_time()``) at which the
    frame was rendered.  Pacing follows a fixed schedule on trio's clock; a
    consumer that falls behind makes the generator skip frame numbers rather
    than queue frames, so the counter in the picture shows the gap.
    """
    renderer = PatternRenderer(config.width, config.height, quality=config.quality)
    interval = 1.0 / config.fps
    start = trio.current_time()
    frame_no = 0
    while True:
        await trio.sleep_until(start + frame_no * interval)
        captured = wall_time()
        yield renderer.render(frame_no, captured), captured
        behind = int((trio.current_time() - start) / interval)
        frame_no = max(frame_no + 1, behind)
