"""Retrieval quality on a captioned dataset: text->image and image->text Recall@K.

The protocol is the one used for COCO and Flickr30k and by open_clip's own evaluation: top K
over the similarity matrix.

* text->image: every caption is a query over all images; a hit when its own image is among the
  top K. Recall is averaged over captions.
* image->text: every image is a query over all captions; a hit when *any* of its captions is
  among the top K. Recall is averaged over images.

Tied scores are common in real sets: captions with identical text ("a photo of a dog") get
identical vectors, so an image's own caption ties with every other image's copy of it. The
headline figures break ties in dataset order, as a stable sort does (the figures a paper
reports). Two more readings are kept where they differ (``EvalReport.ties``): ``strict``, where
every tied candidate ranks above the right answer (a collapsed model that gives everything one
vector scores zero), and ``expected``, the mean over random orders of the tied candidates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..media import BadInput, Skip, load_image
from .datasets import Dataset
from ..errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..indexing import Progress

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
    # {direction: {"strict": {...}, "expected": {...}}} where tied scores change a figure.
    ties: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
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
            "rsum": round(self.rsum, 4), "ties": self.ties, "chance": self.chance,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def recall_at_k(
    image_emb: np.ndarray, text_emb: np.ndarray, text_owner: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> tuple[dict[str, float], dict[str, float]]:
    """(text->image, image->text) Recall@K in percent, top-K protocol (see ``recall_figures``)."""
    figures = recall_figures(image_emb, text_emb, text_owner, ks, chunk)
    return figures.text_to_image, figures.image_to_text


@dataclass
class RecallFigures:
    """Recall@K in percent both ways, under three readings of tied scores.

    ``text_to_image``/``image_to_text``: the top-K protocol of COCO/Flickr30k papers and open_clip's
    evaluation (the K best-scoring candidates, tied scores in dataset order). ``strict``: every
    candidate tied with the right answer ranks above it. ``expected``: the mean over random orders
    of tied candidates. Without ties the three agree.
    """

    text_to_image: dict[str, float]
    image_to_text: dict[str, float]
    strict: dict[str, dict[str, float]]
    expected: dict[str, dict[str, float]]

    def ties(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{direction: {"strict": ..., "expected": ...}}`` for each direction where ties change a figure."""
        found = {}
        for direction, headline in (("text_to_image", self.text_to_image), ("image_to_text", self.image_to_text)):
            if self.strict[direction] != headline or self.expected[direction] != headline:
                found[direction] = {"strict": self.strict[direction], "expected": self.expected[direction]}
        return found


def recall_figures(
    image_emb: np.ndarray, text_emb: np.ndarray, text_owner: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> RecallFigures:
    """Recall@K both ways; ``text_owner[j]`` is caption j's image index.

    text->image: each caption queries all images; a hit when its image is among the top K.
    image->text: each image with a caption queries all captions; a hit when any of its captions is
    among the top K. Identical vectors (captions with the same text) get bit-identical scores, so
    their ties are real ties, whatever the matrix kernel does. Works in chunks of ``chunk``
    queries: memory stays at chunk x N similarities.
    """
    image_emb = np.asarray(image_emb, np.float32)
    text_emb = np.asarray(text_emb, np.float32)
    owner = np.asarray(text_owner, np.int64)
    n_img, n_txt = len(image_emb), len(text_emb)
    if n_img == 0 or n_txt == 0 or len(owner) != n_txt:
        raise DatasetError("recall needs at least one image and one caption, and one owner per caption")
    if owner.min() < 0 or owner.max() >= n_img:
        raise DatasetError("caption owner index out of range")
    ks = tuple(int(k) for k in ks)
    # Positives as CSR rows: caption j's one image; image i's captions.
    t2i = _ranked(text_emb, image_emb, np.arange(n_txt + 1), owner, ks, chunk)
    by_owner = np.argsort(owner, kind="stable")
    queries, counts = np.unique(owner, return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    i2t = _ranked(image_emb[queries], text_emb, indptr, by_owner, ks, chunk)
    return RecallFigures(
        text_to_image=t2i["topk"], image_to_text=i2t["topk"],
        strict={"text_to_image": t2i["strict"], "image_to_text": i2t["strict"]},
        expected={"text_to_image": t2i["expected"], "image_to_text": i2t["expected"]},
    )


def _ranked(queries: np.ndarray, candidates: np.ndarray, indptr: np.ndarray, positives: np.ndarray,
            ks: tuple[int, ...], chunk: int) -> dict[str, dict[str, float]]:
    """Hit rates of each query's best positive candidate, by reading of ties.

    Query q's positive candidates are ``positives[indptr[q]:indptr[q + 1]]``. With ``a``
    candidates scoring above the best positive, ``n`` non-positives tied with it (``b`` of them
    earlier in candidate order) and ``p`` positives tied: a top-K hit when a + b < K, a strict hit
    when a + n < K, and an expected hit 1 - P(the first K - a of the n + p tied are all
    non-positive) under a random order of the tied.
    """
    unique, inverse = np.unique(candidates, axis=0, return_inverse=True)
    duplicates = len(unique) < len(candidates)
    topk, strict, expected = (np.zeros(len(ks)) for _ in range(3))
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        # Identical candidates are scored once, so their ties are exact.
        sims = (queries[start:stop] @ unique.T)[:, inverse.reshape(-1)] if duplicates else queries[start:stop] @ candidates.T
        lo, hi = indptr[start], indptr[stop]
        pos_rows = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))
        pos_cols = positives[lo:hi]
        pos_scores = sims[pos_rows, pos_cols]
        offsets = indptr[start:stop] - lo
        best = np.maximum.reduceat(pos_scores, offsets)
        above = (sims > best[:, None]).sum(axis=1)
        tied = (sims == best[:, None]).sum(axis=1)
        is_best = pos_scores == best[pos_rows]
        n_pos = np.add.reduceat(is_best, offsets)
        n_neg = tied - n_pos
        first_pos = np.minimum.reduceat(np.where(is_best, pos_cols, len(candidates)), offsets)
        before = np.zeros_like(n_neg)
        rows = np.flatnonzero(n_neg)  # only queries tied with a non-positive
        if len(rows):
            earlier = np.arange(len(candidates))[None, :] < first_pos[rows, None]
            before[rows] = ((sims[rows] == best[rows, None]) & earlier).sum(axis=1)
        scored = n_pos > 0  # a NaN score ties nothing: a miss under every reading
        for i, k in enumerate(ks):
            topk[i] += (scored & (above + before < k)).sum()
            strict[i] += (scored & (above + n_neg < k)).sum()
            room = k - above
            miss = _all_negative(tied, n_pos, room)
            expected[i] += np.where(scored & (room > 0), 1.0 - miss, 0.0).sum()
    n = max(1, len(queries))
    return {
        name: {f"R@{k}": round(float(values[i] / n * 100), 4) for i, k in enumerate(ks)}
        for name, values in (("topk", topk), ("strict", strict), ("expected", expected))
    }


def _all_negative(total: np.ndarray, marked: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """P(none of ``marked`` among the first ``draws`` of ``total`` in random order), elementwise."""
    total, marked, draws = (np.asarray(a, np.float64) for a in (total, marked, draws))
    prob = np.ones_like(total)
    for i in range(int(max(0, draws.max(initial=0)))):
        active = i < draws
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(total - i > 0, np.maximum(0.0, total - marked - i) / (total - i), 0.0)
        prob = np.where(active, prob * factor, prob)
    return prob


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
    # Each distinct caption is encoded once: the same text gets the same vector, whatever batch
    # it would have fallen in (and common captions cost one encoder pass).
    distinct = list(dict.fromkeys(texts))
    if progress is not None:
        progress.start("captions", len(texts))
    text_chunks = []
    for start in range(0, len(distinct), batch_size):
        text_chunks.append(encoder.encode_texts(distinct[start:start + batch_size]))
        if progress is not None:
            progress.advance(len(distinct[start:start + batch_size]))
    if progress is not None and len(distinct) < len(texts):
        progress.advance(len(texts) - len(distinct))
    row = {text: i for i, text in enumerate(distinct)}
    text_emb = np.concatenate(text_chunks)[[row[text] for text in texts]]
    return np.concatenate(image_chunks), text_emb, owners, skipped


def evaluate(
    encoder: DualEncoder, dataset: Dataset, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS,
    workers: int | None = None, progress: Progress | None = None, split: str | None = None,
) -> EvalReport:
    """Encode ``dataset`` with ``encoder`` and compute Recall@K both ways."""
    image_emb, text_emb, owners, skipped = embed_dataset(encoder, dataset, batch_size, workers, progress)
    figures = recall_figures(image_emb, text_emb, owners, ks)
    spec = getattr(encoder, "spec", None)
    return EvalReport(
        images=len(image_emb), captions=len(text_emb), text_to_image=figures.text_to_image,
        image_to_text=figures.image_to_text, ties=figures.ties(),
        chance=chance_recall(len(image_emb), owners, ks), skipped=skipped,
        model=spec.display if spec is not None else None, dataset=dataset.source, split=split,
    )
