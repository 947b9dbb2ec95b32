"""QCIF thumbnails with reduced-size decoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from components.thumbnailer.thumbnail import (
    MIN_DECODED_SHARE,
    QCIF,
    decode_reduced,
    fit_size,
    make_thumbnail,
)
from components.video.synthetic import PatternRenderer

RED = (220, 30, 30)


def solid_jpeg(
    size: tuple[int, int], colour: tuple[int, int, int] = RED, mode: str = "RGB"
) -> bytes:
    out = io.BytesIO()
    im = Image.new("RGB", size, colour)
    (im if mode == "RGB" else im.convert(mode)).save(out, "JPEG", quality=90)
    return out.getvalue()


def open_jpeg(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return im.convert("RGB")


def is_black(pixel: tuple[int, int, int]) -> bool:
    return max(pixel) < 24


def is_red(pixel: tuple[int, int, int]) -> bool:
    return pixel[0] > 180 and pixel[1] < 70 and pixel[2] < 70


@pytest.mark.parametrize(
    "source", [(1280, 720), (640, 480), (176, 144), (64, 48), (480, 640), (1920, 1080), (100, 700)]
)
def test_always_exactly_qcif(source: tuple[int, int]) -> None:
    thumb = open_jpeg(make_thumbnail(solid_jpeg(source)))
    assert thumb.size == (176, 144)


def test_16_9_is_letterboxed() -> None:
    thumb = open_jpeg(make_thumbnail(solid_jpeg((1280, 720))))
    # 176x99 picture between bars of 22 and 23 rows.
    for x in (2, 88, 173):
        assert all(is_black(thumb.getpixel((x, y))) for y in range(0, 20))
        assert all(is_red(thumb.getpixel((x, y))) for y in range(25, 119))
        assert all(is_black(thumb.getpixel((x, y))) for y in range(124, 144))


def test_portrait_is_pillarboxed() -> None:
    thumb = open_jpeg(make_thumbnail(solid_jpeg((480, 640))))
    # 108x144 picture between bars of 34 columns.
    for y in (2, 72, 141):
        assert all(is_black(thumb.getpixel((x, y))) for x in range(0, 32))
        assert all(is_red(thumb.getpixel((x, y))) for x in range(37, 139))
        assert all(is_black(thumb.getpixel((x, y))) for x in range(144, 176))


def test_picture_content_survives() -> None:
    """The synthetic pattern's colour bars are still where they were."""
    frame = PatternRenderer(1280, 720).render(0, 0.0)
    thumb = open_jpeg(make_thumbnail(frame))
    # Bars: light grey first, blue last, in the upper part of the picture.
    y = 22 + 40
    left, right = thumb.getpixel((5, y)), thumb.getpixel((170, y))
    assert min(left) > 150
    assert right[2] > 150 and right[0] < 60 and right[1] < 60


def test_other_size_and_quality() -> None:
    frame = PatternRenderer(640, 480).render(0, 0.0)
    assert open_jpeg(make_thumbnail(frame, size=(320, 240))).size == (320, 240)
    assert len(make_thumbnail(frame, quality=95)) > len(make_thumbnail(frame, quality=20))
    with pytest.raises(ValueError, match="quality 0 out of range"):
        make_thumbnail(frame, quality=0)
    with pytest.raises(ValueError, match="size 0x144"):
        make_thumbnail(frame, size=(0, 144))


def test_greyscale_input_gives_colour_jpeg() -> None:
    thumb = open_jpeg(make_thumbnail(solid_jpeg((640, 480), (128, 128, 128), mode="L")))
    assert thumb.size == QCIF
    assert Image.open(io.BytesIO(make_thumbnail(solid_jpeg((640, 480), mode="L")))).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a JPEG image: 0 bytes"),
        (b"GIF89a not really", "not a JPEG image"),
        (solid_jpeg((640, 480))[:300], "corrupt JPEG"),
        (solid_jpeg((640, 480))[:-700], "corrupt JPEG"),
    ],
)
def test_bad_input_is_a_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_thumbnail(data)


def test_png_is_refused() -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 48)).save(out, "PNG")
    with pytest.raises(ValueError, match="not a JPEG image"):
        make_thumbnail(out.getvalue())


@pytest.mark.parametrize(
    ("source", "decoded", "picture"),
    [
        ((1280, 720), (160, 90), (176, 99)),  # 1/8, up 10 %: 1/4 would be 320x180
        ((640, 480), (160, 120), (176, 132)),
        ((1920, 1080), (240, 135), (176, 99)),  # 1/8, down: covers the picture
        ((480, 640), (120, 160), (108, 144)),
        ((176, 144), (176, 144), (176, 144)),  # full size: 1/2 would be too small
    ],
)
def test_draft_decodes_at_the_smallest_scale_nearly_as_large_as_the_picture(
    source: tuple[int, int], decoded: tuple[int, int], picture: tuple[int, int]
) -> None:
    im = decode_reduced(solid_jpeg(source), QCIF)
    assert im.size == decoded
    assert im.mode == "RGB"
    assert fit_size(source, QCIF) == picture
    # At least 7/8 of the thumbnail's picture each way: at most a small resize up.
    assert im.size[0] >= picture[0] * MIN_DECODED_SHARE
    assert im.size[1] >= picture[1] * MIN_DECODED_SHARE
