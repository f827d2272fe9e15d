"""Calibrated scores: a cosine measured against what unrelated pairs score in this index.

Cosines of different modality pairs live on different scales (a CLIP text query scores 0.2-0.35
against images and 0.5-0.9 against texts), and differ from model to model, so neither a fixed
cutoff nor a mixed ranking of images and texts by raw cosine means anything. When an index is
built, ``measure`` samples its vectors and records, per pair of query and item modality
(text->image, text->text, image->image, image->text), the distribution of background cosines:
generic probe captions (``PROBES``) and a sample of the index's own texts as text queries, a
sample of its images as image queries, each against a disjoint sample of items. A score is
then calibrated as ``z = (cosine - mean) / std`` of its pair's background, and
``--cutoff auto`` keeps hits above the background's 99.9th percentile: what unrelated pairs
almost never reach.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..media.capabilities import IMAGE, TEXT, capabilities, on_side

# Query and item modalities compared. A video frame is an image.
PAIRS = ("text->image", "text->text", "image->image", "image->text")
# Background sample sizes: queries and items per pair (a 1000 x 2000 product is 2M cosines).
QUERY_SAMPLE = 1000
ITEM_SAMPLE = 2000
# The background quantile ``--cutoff auto`` keeps hits above.
AUTO_QUANTILE = 0.999
QUANTILES = (0.5, 0.9, 0.99, 0.999)
# Fewer background cosines than this make no calibration for a pair.
MIN_BACKGROUND = 50

# Generic captions of everyday scenes, things and documents: text queries unrelated to most of
# any library, the background a text query is measured against (with the index's own texts).
PROBES = (
    "a dog playing in the park", "a cat sleeping on a sofa", "a plate of pasta with tomato sauce",
    "a city street at night", "a mountain lake at sunrise", "people at a birthday party",
    "a red car parked on the street", "a bowl of fruit on a table", "a child riding a bicycle",
    "a beach with palm trees", "a snowy forest in winter", "an old church building",
    "a screenshot of a spreadsheet", "a scanned invoice", "a handwritten note", "a diagram with arrows",
    "a bird sitting on a branch", "a horse in a field", "a cup of coffee", "a laptop on a desk",
    "a group photo of a team", "fireworks over a river", "a train at a station", "a bridge over a river",
    "flowers in a garden", "a kitchen with wooden cabinets", "a football match in a stadium",
    "a close-up of a face", "a map of a city", "a boat on the sea", "a pair of shoes",
    "a bookshelf full of books", "a plane in the sky", "a painting in a museum", "a concert crowd",
    "a rainy window", "a desert road", "a wedding ceremony", "a baby smiling", "a pizza",
    "a receipt from a shop", "a chart of sales figures", "a selfie in a mirror", "a waterfall",
    "a tiger in the jungle", "an empty office", "a street market", "a plate of sushi",
)


@dataclass(frozen=True)
class Background:
    """The background cosines of one modality pair."""

    mean: float
    std: float
    quantiles: dict[str, float]
    n: int

    def z(self, cosine: float) -> float:
        return (cosine - self.mean) / self.std

    @property
    def auto_z(self) -> float:
        """The calibrated score of the background's AUTO_QUANTILE (what ``--cutoff auto`` keeps above)."""
        return self.z(self.quantiles[str(AUTO_QUANTILE)])

    @classmethod
    def fit(cls, queries: np.ndarray, items: np.ndarray) -> Background | None:
        if len(queries) == 0 or len(items) == 0 or len(queries) * len(items) < MIN_BACKGROUND:
            return None
        cosines = (np.asarray(queries, np.float32) @ np.asarray(items, np.float32).T).ravel()
        std = float(cosines.std())
        return cls(float(cosines.mean()), max(std, 1e-6),
                   {str(q): float(np.quantile(cosines, q)) for q in QUANTILES}, int(cosines.size))

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "quantiles": self.quantiles, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Background:
        return cls(float(data["mean"]), float(data["std"]), {k: float(v) for k, v in data["quantiles"].items()},
                   int(data["n"]))


@dataclass(frozen=True)
class Calibration:
    """Backgrounds by pair (``PAIRS``), measured at generation ``gen`` of the index."""

    pairs: dict[str, Background]
    gen: int
    items: int

    def background(self, query: str, item: str) -> Background | None:
        item = capabilities(item).side  # a video's frames are pictures
        return self.pairs.get(f"{query}->{item}")

    def as_dict(self) -> dict[str, Any]:
        return {"pairs": {k: v.as_dict() for k, v in self.pairs.items()}, "gen": self.gen, "items": self.items}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration | None:
        if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
            return None
        try:
            return cls({k: Background.from_dict(v) for k, v in data["pairs"].items()}, int(data.get("gen", 0)),
                       int(data.get("items", 0)))
        except (KeyError, TypeError, ValueError):
            return None


def _halves(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint samples of one set (so that no vector is compared with itself)."""
    return vectors[0::2], vectors[1::2]


def measure(images: np.ndarray, texts: np.ndarray, probes: np.ndarray, gen: int = 0, items: int = 0) -> Calibration:
    """Backgrounds from samples of the index's image and text vectors and the probe captions'."""
    images = images[: QUERY_SAMPLE + ITEM_SAMPLE]
    texts = texts[: QUERY_SAMPLE + ITEM_SAMPLE]
    image_queries, image_items = _halves(images)
    text_queries, text_items = _halves(texts)
    text_probes = np.concatenate([probes, text_queries[:QUERY_SAMPLE]]) if len(text_queries) else probes
    pairs: dict[str, Background | None] = {
        "text->image": Background.fit(text_probes, images[:ITEM_SAMPLE]),
        "text->text": Background.fit(np.concatenate([probes, text_queries[:QUERY_SAMPLE]]), text_items[:ITEM_SAMPLE]),
        "image->image": Background.fit(image_queries[:QUERY_SAMPLE], image_items[:ITEM_SAMPLE]),
        "image->text": Background.fit(images[:QUERY_SAMPLE], texts[:ITEM_SAMPLE]),
    }
    return Calibration({k: v for k, v in pairs.items() if v is not None}, gen, items)


def cutoff_z(value: float | str | None, background: Background | None) -> float | None:
    """The calibrated score a hit must reach: ``auto`` (the background's AUTO_QUANTILE), a
    number (a calibrated score), or None (no cutoff)."""
    if value is None or background is None:
        return None
    if value == "auto":
        return background.auto_z
    return float(value)


def _cached_probes(folder: Path | None, dim: int) -> np.ndarray | None:
    """The probe captions' vectors kept for this machine's other indexes of the model, or None."""
    if folder is None:
        return None
    try:
        vectors = np.load(folder / _probe_file(), allow_pickle=False)
    except (OSError, ValueError):
        return None
    return vectors if vectors.shape == (len(PROBES), dim) and vectors.dtype == np.float32 else None


def _keep_probes(folder: Path | None, vectors: np.ndarray) -> None:
    """Best effort: a new index of the same model on this machine skips encoding the probes."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_probe_file()}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(vectors, np.float32), allow_pickle=False)
        os.replace(tmp, folder / _probe_file())
    except OSError:
        pass


def _probe_file() -> str:
    """Named by the probe captions themselves, so changing them never reuses old vectors."""
    digest = hashlib.sha256("\n".join(PROBES).encode("utf-8")).hexdigest()[:16]
    return f"calibration_probes.{digest}.npy"


def refresh(store: Any, encode_texts: Any, cache: Path | None = None) -> Calibration:
    """Measure the index's backgrounds now and keep them in its catalogue (after indexing).
    ``cache``: a folder for this model's probe vectors shared by every index of it on this
    machine (the ONNX export cache entry), so a new index encodes no probe."""
    dim = store.dim
    with store.read() as r:
        images = r.calibration_sample(on_side(IMAGE), QUERY_SAMPLE + ITEM_SAMPLE, dim)
        texts = r.calibration_sample(on_side(TEXT), QUERY_SAMPLE + ITEM_SAMPLE, dim)
        gen, count = r.generation(), r.item_count()
    fingerprint = str(store.manifest.get("model", {}).get("fingerprint"))
    with store.read() as r:
        probes = r.calibration_probes(fingerprint, dim)
    encoded = probes is None
    if encoded:  # once per model: later runs measure without loading any encoder
        probes = _cached_probes(cache, dim)
        if probes is None:
            probes = np.asarray(encode_texts(list(PROBES)), np.float32)
            _keep_probes(cache, probes)
    calibration = measure(images, texts, probes, gen, count)
    with store.write() as w:
        w.save_calibration(calibration.as_dict())
        if encoded:
            w.save_calibration_probes(fingerprint, probes)
    return calibration


def load(store: Any) -> Calibration | None:
    with store.read() as r:
        return Calibration.from_dict(r.calibration())
