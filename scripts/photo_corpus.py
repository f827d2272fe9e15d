"""Deterministic photo-like JPEG corpora for the benchmarks (mmsearch, the naive baseline and rclip).

Each image has the pixel count of ``size`` (e.g. 4000x3000 = 12 MP) but one of several aspect ratios,
landscape or portrait, and some carry an EXIF orientation tag, as phone photos do. The content is
built to cost what a photo costs to decode and compress: smooth colour gradients and soft blobs
(upscaled from a coarse random field), a few hard-edged shapes, and sensor-like grain, saved at
JPEG quality 90 (about 0.3 bytes per pixel, like a camera JPEG).

    from photo_corpus import make_photo_corpus
    paths = make_photo_corpus("bench/photos-12mp", 60, (4000, 3000), seed=0)

    python scripts/photo_corpus.py /tmp/photos --n 60 --size 4000x3000
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (width, height) ratios cycled through the corpus: 4:3 and 3:2 camera frames, 16:9, square, and
# portrait versions of the first two.
ASPECTS = [(4, 3), (3, 4), (3, 2), (16, 9), (1, 1), (2, 3)]
# EXIF orientation tags cycled through every 5th image: 6 = rotate 90 CW, 3 = 180, 8 = 90 CCW.
# The pixels are stored unrotated, as a phone does, so a reader that honours the tag sees another shape.
ORIENTATIONS = [6, 3, 8]
EXIF_ORIENTATION = 0x0112
MANIFEST = ".photo_corpus.json"
FORMAT_VERSION = 1


def _dimensions(index: int, size: tuple[int, int]) -> tuple[int, int]:
    """Same pixel count as ``size``, in the aspect ratio this image gets."""
    aw, ah = ASPECTS[index % len(ASPECTS)]
    area = size[0] * size[1]
    height = math.sqrt(area * ah / aw)
    return max(8, round(height * aw / ah)), max(8, round(height))


def make_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One photo-like RGB image: gradient + soft blobs + shapes + grain."""
    # Smooth base: a coarse random colour field upscaled with bicubic gives sky/wall-like gradients.
    coarse = rng.integers(0, 256, size=(rng.integers(3, 7), rng.integers(3, 7), 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    scale = min(width, height)
    # Hard-edged objects: ellipses, rectangles and polygons in random colours.
    for _ in range(int(rng.integers(6, 14))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.25) * scale
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=colour)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r * rng.uniform(0.3, 1.0), cx + r, cy + r), fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=colour)
    # Soften some edges, as a lens would.
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, scale / 1500)))
    # Sensor grain: per-pixel noise, the part that makes a JPEG expensive to encode and decode.
    pixels = np.asarray(image, dtype=np.int16)
    grain = rng.normal(0.0, 5.0, size=(height, width, 1)).astype(np.int16)
    pixels = np.clip(pixels + grain + rng.integers(-3, 4, size=pixels.shape, dtype=np.int16), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def make_photo_corpus(
    folder: str | Path, n: int, size: tuple[int, int] = (4000, 3000), seed: int = 0, quality: int = 90
) -> list[Path]:
    """Write ``n`` JPEGs ``photo_00000.jpg``... into ``folder`` and return their paths.

    Deterministic in (n, size, seed, quality): the same call gives byte-identical files. A folder
    already holding this exact corpus (checked by a small manifest) is reused without rewriting.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {"version": FORMAT_VERSION, "n": n, "size": list(size), "seed": seed, "quality": quality}
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(n)]
    manifest = folder / MANIFEST
    try:
        if json.loads(manifest.read_text()) == params and all(p.is_file() for p in paths):
            return paths
    except (OSError, ValueError):
        pass
    manifest.unlink(missing_ok=True)
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, i])
        width, height = _dimensions(i, size)
        image = make_photo(width, height, rng)
        exif = Image.Exif()
        exif[0x010F] = "mmsearch-bench"  # Make
        if i % 5 == 4:
            exif[EXIF_ORIENTATION] = ORIENTATIONS[(i // 5) % len(ORIENTATIONS)]
        tmp = path.with_suffix(".tmp")
        image.save(tmp, "JPEG", quality=quality, exif=exif.tobytes())
        tmp.replace(path)
    manifest.write_text(json.dumps(params))
    return paths


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--size", type=_size, default=(4000, 3000), help="WIDTHxHEIGHT, sets the pixel count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    paths = make_photo_corpus(args.folder, args.n, args.size, args.seed, args.quality)
    total = sum(p.stat().st_size for p in paths)
    print(json.dumps({"folder": str(args.folder), "files": len(paths), "mbytes": round(total / 1e6, 1)}))


if __name__ == "__main__":
    main()
