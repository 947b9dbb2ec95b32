"""Make letterboxed JPEG thumbnails with reduced-size JPEG decoding.

A JPEG decoder can produce the picture at 1/2, 1/4 or 1/8 of its size
directly from the DCT coefficients, skipping most of the work of a full
decode; Pillow exposes this as ``Image.draft``.  ``make_thumbnail`` asks for
the smallest such scale whose picture is nearly as large as the thumbnail's
(``MIN_DECODED_SHARE``), then resizes and letterboxes to the exact size.
"""

from __future__ import annotations

import io
import math

from PIL import Image, UnidentifiedImageError

QCIF = (176, 144)
DEFAULT_QUALITY = 75
_BAR_COLOUR = (0, 0, 0)
#: A DCT scale is decoded at when its picture is at least this share of the thumbnail's
#: picture in both directions; a resize up makes up the rest.  A 720p frame's QCIF
#: picture (176x99) then comes from 1/8 (160x90, up 10 %) rather than 1/4 (320x180,
#: down 45 %): decode and resize 0.78 -> 0.58 ms of CPU (min of 15 runs), 0.3 dB less
#: PSNR against a full decode scaled with LANCZOS (28.7 against 29.0 dB).
MIN_DECODED_SHARE = 7 / 8


def decode_reduced(jpeg: bytes, size: tuple[int, int] = QCIF) -> Image.Image:
    """Decode ``jpeg`` as RGB at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose
    picture is at least ``MIN_DECODED_SHARE`` of the picture a thumbnail of
    ``size`` shows (see :func:`fit_size`), in both directions.

    Raises:
        ValueError: ``jpeg`` is not a complete, readable JPEG.
    """
    head = bytes(jpeg[:4]).hex() or "(empty)"
    try:
        im = Image.open(io.BytesIO(jpeg), formats=["JPEG"])
    except UnidentifiedImageError:
        raise ValueError(f"not a JPEG image: {len(jpeg)} bytes starting {head}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"corrupt JPEG ({len(jpeg)} bytes starting {head}): {exc}") from exc
    width, height = fit_size(im.size, size)
    least = (math.ceil(width * MIN_DECODED_SHARE), math.ceil(height * MIN_DECODED_SHARE))
    try:
        im.draft("RGB", least)
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt JPEG ({len(jpeg)} bytes starting {head}): {exc}") from exc
    return im if im.mode == "RGB" else im.convert("RGB")


def fit_size(source: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """Largest size with the aspect ratio of ``source`` that fits in ``box``."""
    sw, sh = source
    bw, bh = box
    if sw * bh >= sh * bw:  # wider than the box: full width
        return bw, max(1, round(sh * bw / sw))
    return max(1, round(sw * bh / sh)), bh


def make_thumbnail(
    jpeg: bytes, size: tuple[int, int] = QCIF, quality: int = DEFAULT_QUALITY
) -> bytes:
    """Return a JPEG of exactly ``size`` showing all of ``jpeg``.

    The picture keeps its aspect ratio and is centred between black bars
    (letterbox or pillarbox) as needed.

    Raises:
        ValueError: ``jpeg`` is corrupt or not a JPEG, or ``size`` or
            ``quality`` is out of range.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"thumbnail size {width}x{height} must be at least 1x1")
    if not 1 <= quality <= 95:
        raise ValueError(f"thumbnail JPEG quality {quality} out of range 1..95")
    im = decode_reduced(jpeg, size)
    fitted = fit_size(im.size, size)
    if im.size != fitted:
        # BOX (area averaging) downscales as well as BILINEAR and costs less:
        # 320x180 -> 176x99, 0.18 instead of 0.25 ms, a quarter of a thumbnail.
        # Up (a small source, or a reduced decode by at most 1 / MIN_DECODED_SHARE),
        # BOX would repeat pixels: BILINEAR.
        down = im.size[0] >= fitted[0] and im.size[1] >= fitted[1]
        im = im.resize(fitted, Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
    if fitted != size:
        canvas = Image.new("RGB", size, _BAR_COLOUR)
        canvas.paste(im, ((width - fitted[0]) // 2, (height - fitted[1]) // 2))
        im = canvas
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()
