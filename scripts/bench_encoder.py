"""Where indexing time goes per image: the image tower in float32 and in bfloat16, and the decode.

  tower    ms per image encoding a batch of uint8 pixels through ``Encoder.encode_pixels`` with
           MMSEARCH_CPU_BF16=0 (float32) and =1 (bfloat16), and the smallest cosine between the
           two vectors of each image. On CPUs without AMX bfloat16 is emulated (slow).
  decode   ms per 12-megapixel JPEG (scripts/photo_corpus.py): full decode to RGB (what open_clip's
           transform needs), mmsearch's draft decode with EXIF orientation, and draft decode plus
           the resize/crop the workers do. One process, one thread: per-core cost.

    python scripts/bench_encoder.py                        # ViT-B-32, RN50, convnext_base
    python scripts/bench_encoder.py --archs ViT-B-32 --repeats 5

Each figure is the median of --repeats runs; prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import REPO, machine, median  # noqa: E402


def tower(arch: str, repeats: int, batch: int = 32) -> dict:
    from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder
    from mmsearch.encoders.torch_encoder import cpu_has_amx_bf16

    rng = np.random.default_rng(0)
    row: dict = {"arch": arch, "amx": cpu_has_amx_bf16()}
    vectors = {}
    for setting, label in (("0", "float32"), ("1", "bfloat16")):
        encoder = Encoder(ModelSpec.resolve(arch, "none"), "cpu", "off" if setting == "0" else "on")
        pixels = rng.integers(0, 256, (batch, encoder.image_size, encoder.image_size, 3), dtype=np.uint8)
        encoder.encode_pixels(pixels[:4])  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            vectors[label] = encoder.encode_pixels(pixels)
            runs.append((time.perf_counter() - start) * 1000 / batch)
        row[f"{label}_ms_per_image"] = median(runs)
        row[f"{label}_dtype"] = str(encoder.image_dtype).replace("torch.", "")
        rng = np.random.default_rng(0)  # the same pixels for both
    row["speedup"] = row["float32_ms_per_image"] / row["bfloat16_ms_per_image"]
    row["min_cosine"] = float((vectors["float32"] * vectors["bfloat16"]).sum(axis=1).min())
    return row


def decode(workdir: Path, repeats: int, count: int = 12, target: int = 224) -> dict:
    from PIL import Image

    from bench import corpus, image_files
    from mmsearch.media.image import PixelTransform, decode_for_model, load_image

    files = [str(p) for p in image_files(corpus(workdir, "12mp", count, (4000, 3000)))]
    pixels = PixelTransform(target, target, Image.Resampling.BICUBIC, (0.5,) * 3, (0.5,) * 3)

    def full(path: str) -> None:
        with Image.open(path) as img:
            img.convert("RGB")

    ways = {
        "full_decode": full,
        "draft_decode": lambda path: load_image(path, target),
        "draft_decode_resize_crop": lambda path: decode_for_model(path, target, 1 << 30, pixels),
    }
    row: dict = {"images": len(files), "megapixels": 12}
    for name, fn in ways.items():
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for path in files:
                fn(path)
            runs.append((time.perf_counter() - start) * 1000 / len(files))
        row[f"{name}_ms"] = median(runs)
    row["draft_speedup"] = row["full_decode_ms"] / row["draft_decode_resize_crop_ms"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="ViT-B-32,RN50,convnext_base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "work")
    args = parser.parse_args(argv)
    towers = [tower(arch, args.repeats) for arch in args.archs.split(",") if arch]
    print(f"{'arch':>14} {'float32 ms':>11} {'bfloat16 ms':>12} {'speedup':>8} {'min cosine':>11}")
    for row in towers:
        print(f"{row['arch']:>14} {row['float32_ms_per_image']:>11.1f} {row['bfloat16_ms_per_image']:>12.1f} "
              f"{row['speedup']:>7.2f}x {row['min_cosine']:>11.5f}")
    decoding = decode(args.workdir, args.repeats)
    print(f"12 MP JPEG, ms per image on one core: full decode {decoding['full_decode_ms']:.1f}, "
          f"draft decode {decoding['draft_decode_ms']:.1f}, draft + resize/crop "
          f"{decoding['draft_decode_resize_crop_ms']:.1f} ({decoding['draft_speedup']:.2f}x)")
    print(json.dumps({"machine": machine(), "towers": towers, "decode": decoding}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
