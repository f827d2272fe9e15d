#!/usr/bin/env python
"""Render a captioned synthetic dataset for `mmsearch eval` and `mmsearch train`.

Each image is a scene of one to three groups of objects; a group is 1-3 copies of a shape in one
colour and size, placed in one region (left, right, top, bottom, centre). Every image gets several
captions written with varied phrasings (counts, sizes and positions mentioned or not, groups in
either order, different sentence frames).

Some colour+shape combinations (one colour per shape, chosen from the seed) never appear in the
train and val splits; every test image contains at least one of them. Test recall therefore
measures whether a model composes "red" and "triangle" it learned separately, not whether it
remembers the training images.

Writes DIR/images/<split>/<n>.png, DIR/<split>.jsonl (one row per image: image, captions, split),
DIR/dataset.jsonl (all rows) and DIR/metadata.json (sizes, held-out pairs, seed).

    python scripts/make_synthetic_dataset.py --out data/shapes --train 5000 --val 500 --test 500
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (250, 140, 20), "white": (250, 250, 250), "cyan": (30, 210, 220),
}
SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "cross": "crosses"}
SIZES = ("small", "large")
REGIONS = {  # centre of the region as a fraction of the image side, and spread
    "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5),
}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (120, 120, 120), "brown": (110, 75, 40)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
REGION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the middle", "in the center", "in the centre"),
}
FRAMES = (
    "{d}", "a picture of {d}", "an image showing {d}", "there is {d}", "a photo with {d}",
    "{d} on a {bg} background", "a {bg} background with {d}", "this scene has {d}",
)


def held_out_pairs(seed: int) -> set[tuple[str, str]]:
    """One colour per shape, different colours, fixed by the seed."""
    rng = random.Random(seed * 7919 + 1)
    colours = rng.sample(list(COLOURS), len(SHAPES))
    return {(colour, shape) for colour, shape in zip(colours, SHAPES)}


def make_scene(rng: random.Random, held: set[tuple[str, str]], test: bool) -> dict:
    """Groups of objects; test scenes contain a held-out pair, others none."""
    while True:
        n_groups = rng.choices((1, 2, 3), weights=(3, 4, 2))[0]
        layouts = {1: [["center"], ["left"], ["right"], ["top"], ["bottom"]],
                   2: [["left", "right"], ["top", "bottom"]],
                   3: [["left", "center", "right"], ["top", "center", "bottom"]]}[n_groups]
        regions = list(rng.choice(layouts))
        rng.shuffle(regions)
        groups = []
        used: set[tuple[str, str]] = set()
        for region in regions:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(list(SHAPES))
            if (colour, shape) in used:
                break
            used.add((colour, shape))
            count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0] if n_groups < 3 else 1
            size = rng.choice(SIZES) if count == 1 else "small"
            groups.append({"colour": colour, "shape": shape, "size": size, "count": count, "region": region})
        if len(groups) != n_groups:
            continue
        has_held = any((g["colour"], g["shape"]) in held for g in groups)
        if has_held == test:
            return {"groups": groups, "background": rng.choice(list(BACKGROUNDS))}


def render(scene: dict, size: int, rng: random.Random) -> Image.Image:
    scale = 4  # draw large, then downsample: smooth edges at any output size
    side = size * scale
    img = Image.new("RGB", (side, side), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    n_groups = len(scene["groups"])
    for group in scene["groups"]:
        cx, cy = REGIONS[group["region"]]
        radius = (0.16 if group["size"] == "large" else 0.085) * (0.8 if n_groups == 3 else 1.0)
        count = group["count"]
        offsets = [(0.0, 0.0)] if count == 1 else [
            (math.cos(a) * 0.13, math.sin(a) * 0.13)
            for a in [rng.uniform(0, 2 * math.pi) + i * 2 * math.pi / count for i in range(count)]
        ]
        for dx, dy in offsets:
            x = (cx + dx + rng.uniform(-0.03, 0.03)) * side
            y = (cy + dy + rng.uniform(-0.03, 0.03)) * side
            _shape(draw, group["shape"], x, y, radius * side * rng.uniform(0.9, 1.1), COLOURS[group["colour"]])
    return img.resize((size, size), Image.LANCZOS)


def _shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.75), (x + r * 0.95, y + r * 0.75)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)], fill=colour)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([x - r, y - w, x + r, y + w], fill=colour)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=colour)


def _group_phrase(group: dict, rng: random.Random, with_size: bool, with_count: bool, with_region: bool) -> str:
    count = group["count"]
    noun = group["shape"] if count == 1 else SHAPES[group["shape"]]
    words = []
    if count == 1:
        words.append("a")
    elif with_count:
        words.append(COUNT_WORDS[count] if rng.random() < 0.8 else str(count))
    elif rng.random() < 0.5:
        words.append("some")
    if with_size:
        words.append(group["size"])
    words += [group["colour"], noun]
    phrase = " ".join(words)
    if with_region:
        phrase += " " + rng.choice(REGION_PHRASES[group["region"]])
    return phrase


def captions_for(scene: dict, rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    for attempt in range(n * 10):
        groups = list(scene["groups"])
        rng.shuffle(groups)
        style = attempt % 4
        phrases = [
            _group_phrase(g, rng, with_size=style in (1, 3) or rng.random() < 0.3,
                          with_count=style != 2 or rng.random() < 0.5, with_region=style >= 2)
            for g in groups
        ]
        desc = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        caption = rng.choice(FRAMES).format(d=desc, bg=scene["background"])
        if caption not in out:
            out.append(caption)
        if len(out) == n:
            break
    return out


def generate(out: Path, sizes: dict[str, int], image_size: int = 64, captions: int = 5, seed: int = 0) -> dict:
    """Write the dataset under ``out``; returns the metadata."""
    held = held_out_pairs(seed)
    out.mkdir(parents=True, exist_ok=True)
    all_rows = []
    for split_index, (split, count) in enumerate(sizes.items()):
        rng = random.Random(f"{seed}-{split}-{split_index}")
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            scene = make_scene(rng, held, test=(split == "test"))
            rel = f"images/{split}/{i:06d}.png"
            render(scene, image_size, rng).save(out / rel, optimize=False, compress_level=1)
            rows.append({"image": rel, "captions": captions_for(scene, rng, captions), "split": split,
                         "objects": scene["groups"], "background": scene["background"]})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        all_rows += rows
    (out / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    meta = {"sizes": sizes, "image_size": image_size, "captions_per_image": captions, "seed": seed,
            "held_out_pairs": sorted(f"{c} {s}" for c, s in held)}
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--train", type=int, default=2000, help="train images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--test", type=int, default=200, help="test images (each holds a held-out colour+shape pair)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    meta = generate(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.size, args.captions, args.seed)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
