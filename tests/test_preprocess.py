"""The fast decode path (JPEG draft + Pillow resize/crop in workers + batch normalisation) stays
faithful to open_clip's own preprocessing, on real photos of several sizes and aspect ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageOps

from mmsearch import Engine
from mmsearch.media.image import decode_for_model, load_image
from mmsearch.encoders.pixels import pixel_transform_for

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))
# (width, height, EXIF orientation): phone photos both ways up, a panorama, mid and small sizes.
SIZES = [(4000, 3000, 1), (3000, 4000, 1), (4000, 3000, 6), (6000, 2000, 1), (1600, 1200, 1), (800, 600, 1), (300, 451, 1)]


def mosaic(width: int, height: int, seed: int) -> Image.Image:
    """A large image with real photographic detail at full resolution: photos tiled, some mirrored."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in PHOTOS]
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        x, row = 0, 0
        while x < width:
            tile = photos[rng.integers(len(photos))]
            if rng.random() < 0.5:
                tile = ImageOps.mirror(tile)
            canvas.paste(tile, (x, y))
            x += tile.size[0]
            row = max(row, tile.size[1])
        y += row
    return canvas


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = []
    for i, (w, h, orientation) in enumerate(SIZES):
        path = folder / f"photo_{w}x{h}_o{orientation}.jpg"
        image = mosaic(w, h, seed=i)
        if orientation == 6:  # stored sideways, displayed upright by the EXIF tag
            image = image.transpose(Image.Transpose.ROTATE_90)
            exif = Image.Exif()
            exif[0x0112] = 6
            image.save(path, quality=90, exif=exif)
        else:
            image.save(path, quality=90)
        files.append(path)
    return files


def reference(preprocess, path: Path) -> torch.Tensor:
    """open_clip's own path: full decode, upright, its transform."""
    with Image.open(path) as img:
        return preprocess(ImageOps.exif_transpose(img).convert("RGB"))


def normalise(pixels: np.ndarray, transform) -> torch.Tensor:
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(transform.mean).view(3, 1, 1)
    std = torch.tensor(transform.std).view(3, 1, 1)
    return (x - mean) / std


def eval_cfg(size: int, **changes) -> dict:
    """open_clip's preprocessing config of a model at ``size`` (as ``get_model_preprocess_cfg`` gives it)."""
    return {"size": size, "mode": "RGB", "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0, **changes}


@pytest.mark.parametrize("size", [224, 256])
def test_pixel_transform_equals_open_clip_transform(size):
    preprocess = open_clip.image_transform(size, is_train=False)
    transform = pixel_transform_for(eval_cfg(size))
    assert transform is not None and transform.resize == transform.crop == size
    for path in PHOTOS:
        with Image.open(path) as img:
            img = img.convert("RGB")
            for variant in (img, img.rotate(90, expand=True), img.resize((size, size + 37))):
                ours = normalise(transform.apply(variant), transform)
                theirs = preprocess(variant)
                assert ours.shape == theirs.shape
                assert float((ours - theirs).abs().max()) < 1e-5


def test_unfamiliar_transforms_have_no_pixel_form():
    assert pixel_transform_for(eval_cfg(224, resize_mode="squash")) is None
    assert pixel_transform_for(eval_cfg((224, 256))) is None  # not square: open_clip's own transform runs


def test_draft_path_matches_open_clip_on_real_photos(photo_files):
    preprocess = open_clip.image_transform(224, is_train=False)
    transform = pixel_transform_for(eval_cfg(224))
    for path in photo_files:
        fast = decode_for_model(str(path), 224, 10**9, transform)
        assert fast.shape == (224, 224, 3), path.name
        diff = (normalise(fast, transform) - reference(preprocess, path)).abs()
        assert float(diff.mean()) <= 0.01, f"{path.name}: mean abs difference {float(diff.mean()):.4f}"


def test_draft_decodes_large_jpegs_smaller(photo_files):
    big = photo_files[0]
    decoded = load_image(big, 224)
    assert min(decoded.size) >= 2 * 224
    assert decoded.size[0] * decoded.size[1] <= 4000 * 3000 // 16


def test_self_retrieval_unchanged_by_fast_path(tmp_path, tiny_model, photo_files):
    """Items indexed through the workers' fast path are found by open_clip's reference vectors."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for path in photo_files:
        (folder / path.name).write_bytes(path.read_bytes())
    for path in PHOTOS:
        (folder / path.name).write_bytes(path.read_bytes())
    with Engine(tmp_path / "index", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([folder])
        encoder = engine.encoder
        assert encoder.pixel_transform is not None
        for path in sorted(folder.iterdir()):
            with torch.inference_mode():
                ref = encoder.encode_image_tensors(reference(encoder.preprocess, path)[None])[0]
            hits = engine.search_vector(ref, k=3)
            assert hits[0].path == str(path), path.name
            assert hits[0].score >= 0.99, (path.name, hits[0].score)
            # A query with the file itself returns its own stored vector (same code path).
            own = engine.search(str(path), k=1, include_query=True)
            assert own[0].path == str(path) and own[0].score == pytest.approx(1.0, abs=1e-5)


def test_models_without_pixel_form_still_index(tmp_path, tiny_model):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for path in PHOTOS:
        (folder / path.name).write_bytes(path.read_bytes())
    with Engine(tmp_path / "index", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.encoder.pixel_transform = None  # as for a model with an unfamiliar transform
        engine.add([folder])
        for path in PHOTOS:
            hit = engine.search(str(folder / path.name), k=1, include_query=True)[0]
            assert hit.path == str(folder / path.name) and hit.score == pytest.approx(1.0, abs=1e-5)
