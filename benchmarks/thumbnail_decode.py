"""Time thumbnailing (reduced-size vs full decode) and pattern rendering.

Run by hand: ``python benchmarks/thumbnail_decode.py [--repeat N]``.  Prints a
table of CPU time per frame on this machine, and what it means for the
target of 16 synthetic 1280x720 cameras at 30 frames/s, thumbnailed at
1 frame/s each.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.thumbnailer.thumbnail import (  # noqa: E402
    QCIF,
    decode_reduced,
    fit_size,
    make_thumbnail,
)
from components.video.synthetic import PatternRenderer  # noqa: E402

SIZES = [(640, 480), (1280, 720)]


def busy_jpeg(size: tuple[int, int], quality: int = 85) -> bytes:
    """A photo-like frame: coloured noise, softened, so it compresses like a
    camera picture rather than like flat test-pattern areas."""
    w, h = size
    bands = [Image.effect_noise((w, h), 60).filter(ImageFilter.GaussianBlur(1.5)) for _ in "RGB"]
    out = io.BytesIO()
    Image.merge("RGB", bands).save(out, "JPEG", quality=quality)
    return out.getvalue()


def thumbnail_full_decode(jpeg: bytes, size: tuple[int, int] = QCIF, quality: int = 75) -> bytes:
    """The same thumbnail as make_thumbnail, without draft: the baseline."""
    im = Image.open(io.BytesIO(jpeg))
    im.load()
    fitted = fit_size(im.size, size)
    im = im.resize(fitted, Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", size)
    canvas.paste(im, ((size[0] - fitted[0]) // 2, (size[1] - fitted[1]) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=quality)
    return out.getvalue()


def full_decode(jpeg: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(jpeg))
    im.load()
    return im


def per_call(fn: Callable[[], object], repeat: int) -> float:
    """Best of 3 runs of ``repeat`` calls: CPU seconds per call."""
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, (time.process_time() - start) / repeat)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100, help="calls per measurement")
    args = parser.parse_args()
    n = args.repeat
    rows: list[tuple[str, str, float]] = []
    results: dict[tuple[str, tuple[int, int]], float] = {}

    for size in SIZES:
        label = f"{size[0]}x{size[1]}"
        renderer = PatternRenderer(*size)
        inputs = {"pattern": renderer.render(0, time.time()), "busy": busy_jpeg(size)}
        for kind, jpeg in inputs.items():
            tag = f"{label} {kind} ({len(jpeg) // 1024} KiB)"
            for name, fn in [
                ("decode, full", lambda j=jpeg: full_decode(j)),
                ("decode, draft", lambda j=jpeg: decode_reduced(j, QCIF)),
                ("make_thumbnail, full decode", lambda j=jpeg: thumbnail_full_decode(j)),
                ("make_thumbnail (draft)", lambda j=jpeg: make_thumbnail(j)),
            ]:
                t = per_call(fn, n)
                rows.append((tag, name, t))
                results[(f"{name} {kind}", size)] = t

        cold = PatternRenderer(*size)
        frame = iter(range(10**9))
        t_cold = per_call(lambda r=cold, f=frame: r.render_full(next(f), time.time()), n)
        warm = PatternRenderer(*size)
        for i in range(warm.period):
            warm.render(i, time.time())
        t_warm = per_call(lambda r=warm, f=frame: r.render(next(f), time.time()), n)
        rows.append((f"{label} render", "render_full (draw + encode all)", t_cold))
        rows.append((f"{label} render", "render (cached frame + text strip)", t_warm))
        results[("render_full", size)] = t_cold
        results[("render", size)] = t_warm

    width = max(len(r[0]) for r in rows) + 2
    name_w = max(len(r[1]) for r in rows) + 2
    print(f"{'input':<{width}}{'operation':<{name_w}}{'ms/frame':>10}{'frames/s/core':>15}")
    print("-" * (width + name_w + 25))
    for tag, name, t in rows:
        print(f"{tag:<{width}}{name:<{name_w}}{t * 1e3:>10.3f}{1 / t:>15.0f}")

    hd = (1280, 720)
    print()
    print("16 cameras, 1280x720, 30 frames/s, thumbnailed at 1 frame/s each:")
    for kind in ("pattern", "busy"):
        draft = results[(f"make_thumbnail (draft) {kind}", hd)]
        full = results[(f"make_thumbnail, full decode {kind}", hd)]
        print(
            f"  thumbnailer, {kind:7}: {16 * draft * 100:5.1f}% of one core with draft, "
            f"{16 * full * 100:5.1f}% with full decode (target < 10%)"
        )
    for name in ("render", "render_full"):
        print(
            f"  rendering, {name:11}: {16 * 30 * results[(name, hd)] * 100:5.0f}% of one core "
            f"(480 frames/s)"
        )


if __name__ == "__main__":
    main()
