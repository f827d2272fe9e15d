"""Retrieval quality on a captioned dataset: text->image and image->text Recall@K.

The protocol is the one used for COCO and Flickr30k (and by open_clip's own evaluation):

* text->image: every caption is a query over all images; a hit when its own image is among the
  top K. Recall is averaged over captions.
* image->text: every image is a query over all captions; a hit when *any* of its captions is
  among the top K. Recall is averaged over images.

Ties count against the model (a candidate scoring exactly as high as the right answer ranks
above it), so a collapsed model that gives everything the same vector scores zero, not 100%.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .corpus import BadInput, Skip, load_image
from .datasets import Dataset
from .errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .indexer import Progress

DEFAULT_KS = (1, 5, 10)


class DualEncoder(Protocol):
    """What evaluation needs from a model (``mmsearch.model.Encoder`` is one)."""

    image_size: int

    def preprocess(self, image: Any) -> torch.Tensor: ...
    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray: ...
    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class EvalReport:
    """Recall figures (percent) and what they were computed on."""

    images: int
    captions: int
    text_to_image: dict[str, float]
    image_to_text: dict[str, float]
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    model: str | None = None
    dataset: str | None = None
    split: str | None = None

    @property
    def rsum(self) -> float:
        """Sum of all recalls, the usual single number to compare checkpoints."""
        return sum(self.text_to_image.values()) + sum(self.image_to_text.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": self.split, "model": self.model,
            "images": self.images, "captions": self.captions,
            "text_to_image": self.text_to_image, "image_to_text": self.image_to_text,
            "rsum": round(self.rsum, 4), "chance": self.chance,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def recall_at_k(
    image_emb: np.ndarray, text_emb: np.ndarray, text_owner: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> tuple[dict[str, float], dict[str, float]]:
    """(text->image, image->text) Recall@K in percent; ``text_owner[j]`` is caption j's image index.

    Works in chunks of ``chunk`` queries, so memory stays at chunk x N similarities.
    """
    image_emb = np.asarray(image_emb, np.float32)
    text_emb = np.asarray(text_emb, np.float32)
    owner = np.asarray(text_owner, np.int64)
    n_img, n_txt = len(image_emb), len(text_emb)
    if n_img == 0 or n_txt == 0 or len(owner) != n_txt:
        raise DatasetError("recall needs at least one image and one caption, and one owner per caption")
    if owner.min() < 0 or owner.max() >= n_img:
        raise DatasetError("caption owner index out of range")
    # text -> image: rank of the right image = images scoring at least as high, minus itself.
    t2i_rank = np.empty(n_txt, np.int64)
    for start in range(0, n_txt, chunk):
        sims = text_emb[start:start + chunk] @ image_emb.T
        right = sims[np.arange(len(sims)), owner[start:start + chunk]]
        t2i_rank[start:start + chunk] = (sims >= right[:, None]).sum(axis=1) - 1
    # image -> text: rank of the best own caption = other images' captions scoring at least as high.
    i2t_rank = np.empty(n_img, np.int64)
    has_caption = np.zeros(n_img, bool)
    has_caption[owner] = True
    for start in range(0, n_img, chunk):
        sims = image_emb[start:start + chunk] @ text_emb.T  # (chunk, n_txt)
        rows = np.arange(start, start + len(sims))
        own = owner[None, :] == rows[:, None]
        best_own = np.where(own, sims, -np.inf).max(axis=1)
        i2t_rank[start:start + len(sims)] = ((sims >= best_own[:, None]) & ~own).sum(axis=1)
    i2t_rank = i2t_rank[has_caption]
    t2i = {f"R@{k}": round(float((t2i_rank < k).mean() * 100), 4) for k in ks}
    i2t = {f"R@{k}": round(float((i2t_rank < k).mean() * 100), 4) for k in ks}
    return t2i, i2t


def chance_recall(n_images: int, text_owner: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Expected recall (percent) of a model that ranks at random, under the same protocol."""
    owner = np.asarray(text_owner)
    per_image = np.bincount(owner, minlength=n_images)
    per_image = per_image[per_image > 0]
    n_txt = len(owner)
    t2i = {f"R@{k}": round(min(1.0, k / n_images) * 100, 4) for k in ks}
    i2t = {}
    for k in ks:
        # P(at least one of the image's c captions is in a random top k of n_txt captions).
        misses = [_hypergeom_miss(n_txt, int(c), k) for c in per_image]
        i2t[f"R@{k}"] = round(float(1 - np.mean(misses)) * 100, 4)
    return {"text_to_image": t2i, "image_to_text": i2t}


def _hypergeom_miss(n: int, c: int, k: int) -> float:
    """P(none of c marked among k drawn without replacement from n)."""
    if k >= n:
        return 0.0
    p = 1.0
    for i in range(min(k, n)):
        p *= max(0.0, (n - c - i) / (n - i))
    return p


def embed_dataset(
    encoder: DualEncoder, dataset: Dataset, batch_size: int = 64, workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int], list[Skip]]:
    """Encode every image and caption in batches: (image vectors, caption vectors, caption owners, skips).

    Images that cannot be decoded are skipped (with their captions) and reported.
    """
    workers = workers or min(8, os.cpu_count() or 2)
    skipped: list[Skip] = []
    kept: list[int] = []
    image_chunks: list[np.ndarray] = []
    items = dataset.items
    if progress is not None:
        progress.start("images", len(items))

    def decode(index: int) -> tuple[int, Any]:
        try:
            return index, encoder.preprocess(load_image(items[index].image, target=encoder.image_size))
        except (BadInput, OSError) as exc:
            return index, Skip(str(items[index].image), str(exc))

    import torch

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), batch_size):
            tensors = []
            for index, result in pool.map(decode, range(start, min(start + batch_size, len(items)))):
                if isinstance(result, Skip):
                    skipped.append(result)
                    if progress is not None:
                        progress.skip(result)
                else:
                    kept.append(index)
                    tensors.append(result)
            if tensors:
                image_chunks.append(encoder.encode_image_tensors(torch.stack(tensors)))
            if progress is not None:
                progress.advance(min(batch_size, len(items) - start))
    if not kept:
        raise DatasetError(f"no image of {dataset.source} could be decoded")
    position = {index: row for row, index in enumerate(kept)}
    texts: list[str] = []
    owners: list[int] = []
    for index in kept:
        for caption in items[index].captions:
            texts.append(caption)
            owners.append(position[index])
    if progress is not None:
        progress.start("captions", len(texts))
    text_chunks = []
    for start in range(0, len(texts), batch_size):
        text_chunks.append(encoder.encode_texts(texts[start:start + batch_size]))
        if progress is not None:
            progress.advance(len(texts[start:start + batch_size]))
    return np.concatenate(image_chunks), np.concatenate(text_chunks), owners, skipped


def evaluate(
    encoder: DualEncoder, dataset: Dataset, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS,
    workers: int | None = None, progress: Progress | None = None, split: str | None = None,
) -> EvalReport:
    """Encode ``dataset`` with ``encoder`` and compute Recall@K both ways."""
    image_emb, text_emb, owners, skipped = embed_dataset(encoder, dataset, batch_size, workers, progress)
    t2i, i2t = recall_at_k(image_emb, text_emb, owners, ks)
    spec = getattr(encoder, "spec", None)
    return EvalReport(
        images=len(image_emb), captions=len(text_emb), text_to_image=t2i, image_to_text=i2t,
        chance=chance_recall(len(image_emb), owners, ks), skipped=skipped,
        model=spec.display if spec is not None else None, dataset=dataset.source, split=split,
    )
