"""Near-duplicates: which vectors lie within a cosine threshold of each other, grouped.

Two uses share this code:

- ``mmsearch dupes`` (``Engine.duplicates``): every pair of items of one modality whose vectors
  have a cosine similarity of at least the threshold, joined into groups (union-find: a chain
  a~b~c is one group), each with a deterministic keeper (``keeper_key``).
- ``--dedup`` on queries (``Engine.search(..., dedup=True)``) and clip-retrieval's
  ``deduplicate``: the hits of one query joined the same way; the best-ranked hit of each group
  stays and carries the ids of the others.

The full scan is a range search (all pairs at or above a similarity) computed exactly on the
stored float32 vectors. Small sets are compared all against all; larger ones are first split
into ``sqrt(probes * n)`` k-means cells (faiss), and each vector is compared only with the
vectors of its ``probes`` nearest cells: near-duplicates sit in the same cell or a neighbouring
one, so the work falls from n^2 to about ``2 * n * sqrt(probes * n)`` dot products and the
recall stays at the level ``scripts/bench_dupes.py`` measures (BENCHMARKS.md). Similarities are
always exact: a reported pair is never a false positive of the partition, only a missed pair
can be one of its costs.

Thresholds are cosine similarities in (0, 1]. ``DEFAULT_THRESHOLD`` (0.97) lies between the two
fixed points the peers publish: immich groups assets within cosine distance 0.01 (similarity
0.99: re-encodes and resizes only), clip-retrieval hides result duplicates above 0.94 (which also
joins shots of one scene taken seconds apart). Without the real model weights on the build
machine the value could not be tuned on real photos; see README "Near-duplicates".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import QueryError

DEFAULT_THRESHOLD = 0.97
CLIP_RETRIEVAL_THRESHOLD = 0.94  # clip-retrieval's clip_back.py get_non_uniques
EXACT_MAX = 4096  # below this many vectors, all pairs are compared directly
PROBES = 4  # cells each vector is compared with in a partitioned scan (at 1M planted: 3 cells split 15 of 10,000 groups)
_BLOCK = 4096  # rows per matrix product (bounds memory: _BLOCK x cell or x n floats)


def check_threshold(value: Any, name: str = "threshold") -> float:
    """``value`` as a similarity threshold, or QueryError naming ``name`` and why."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QueryError(f"{name} must be a number between 0 and 1 (a cosine similarity), got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise QueryError(f"{name} must be above 0 and at most 1 (a cosine similarity), got {value:g}")
    return float(value)


def dedup_threshold(dedup: bool | float) -> float | None:
    """The threshold a ``dedup`` argument asks for: None (off), True (the default) or a number."""
    if dedup is None or dedup is False:
        return None
    if dedup is True:
        return DEFAULT_THRESHOLD
    return check_threshold(dedup, "dedup")


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        """Sets of two or more members, each in ascending order, ordered by their first member."""
        roots = self.parent.copy()
        while True:  # every member pointed at its root, all at once
            up = roots[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        found: dict[int, list[int]] = {}
        for i in np.flatnonzero(self.size[roots] > 1).tolist():
            found.setdefault(int(roots[i]), []).append(i)
        return sorted((g for g in found.values() if len(g) > 1), key=lambda g: g[0])


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _block_pairs(q: np.ndarray, qpos: np.ndarray, x: np.ndarray, xpos: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (a, b), a < b, of the pairs of ``q`` rows and ``x`` rows at or above ``threshold``
    (a pair may be found from either side: a partitioned scan compares it once, in one direction)."""
    sims = q @ x.T
    rows, cols = np.nonzero(sims >= threshold)
    a, b = qpos[rows], xpos[cols]
    keep = a != b
    return np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])


Progress = Callable[[int, int], None]  # (done, total) of the comparison work


def similar_pairs(vectors: np.ndarray, threshold: float, *, probes: int = PROBES, exact_max: int = EXACT_MAX,
                  seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """Row pairs (an int64 array of shape (m, 2), a < b, each pair once) of ``vectors`` whose
    cosine similarity is at least ``threshold``; exact below ``exact_max`` rows, else through a
    k-means partition (see the module's description)."""
    threshold = check_threshold(threshold)
    x = _normalised(vectors)
    n = len(x)
    tick = progress or (lambda done, total: None)
    if n < 2:
        return np.empty((0, 2), np.int64)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    everyone = np.arange(n, dtype=np.int64)
    if n <= exact_max:
        for start in range(0, n, _BLOCK):
            rows = everyone[start:start + _BLOCK]
            found.append(_block_pairs(x[rows], rows, x, everyone, threshold))
            tick(min(n, start + _BLOCK), n)
    else:
        probes_of = _probe_cells(x, probes, seed)
        cells = int(probes_of.max()) + 1
        primary = probes_of[:, 0]
        by_cell = np.argsort(primary, kind="stable")
        cell_starts = np.searchsorted(primary[by_cell], np.arange(cells + 1))
        flat = probes_of.ravel()
        visitors = np.argsort(flat, kind="stable")
        visit_starts = np.searchsorted(flat[visitors], np.arange(cells + 1))
        for cell in range(cells):
            members = by_cell[cell_starts[cell]:cell_starts[cell + 1]]
            if len(members):
                queries = visitors[visit_starts[cell]:visit_starts[cell + 1]] // probes_of.shape[1]
                for start in range(0, len(queries), _BLOCK):
                    rows = queries[start:start + _BLOCK]
                    found.append(_block_pairs(x[rows], rows, x[members], members, threshold))
            if cell % 64 == 63 or cell == cells - 1:
                tick(cell + 1, cells)
    if not found:
        return np.empty((0, 2), np.int64)
    pairs = np.stack([np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else np.empty((0, 2), np.int64)


def _probe_cells(x: np.ndarray, probes: int, seed: int) -> np.ndarray:
    """For each row, its ``probes`` nearest k-means cells (nearest first): (n, probes) int64."""
    import faiss

    n, dim = x.shape
    nlist = max(2, int(round(math.sqrt(max(1, probes) * n))))
    sample_size = min(n, nlist * 16)
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, sample_size, replace=False))] if sample_size < n else x
    kmeans = faiss.Kmeans(dim, nlist, niter=6, seed=seed, spherical=True, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 20, verbose=False)
    kmeans.train(np.ascontiguousarray(sample))
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    _, cells = quantizer.search(x, min(probes, nlist))
    return cells.astype(np.int64)


def groups_of(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (of two or more) of the graph on 0..n-1 with edges ``pairs``."""
    sets = UnionFind(n)
    for a, b in pairs.tolist():
        sets.union(a, b)
    return sets.groups()


def video_components(vectors: np.ndarray, pairs: np.ndarray, rows: dict[int, Any], ids: Sequence[int]) -> list[list[int]]:
    """Groups of videos from pairs of their frames (positions into ``ids``): pairs within one
    video are dropped (a scene that returns), videos joined by any cross pair form a group, and
    each video is represented by its frame in the most similar cross pair it takes part in, so a
    copy of a video is one group of two whose similarity is that of its best-matching moment."""
    path_of = [rows[item_id].path for item_id in ids]
    names = sorted(set(path_of))
    node = {name: n for n, name in enumerate(names)}
    sets = UnionFind(len(names))
    best: dict[str, tuple[float, int]] = {}
    for a, b in pairs.tolist():
        if path_of[a] == path_of[b]:
            continue
        sets.union(node[path_of[a]], node[path_of[b]])
        sim = float(np.dot(vectors[a], vectors[b]))
        for own in (a, b):
            if sim > best.get(path_of[own], (-2.0, -1))[0]:
                best[path_of[own]] = (sim, own)
    return [[best[names[n]][1] for n in group] for group in sets.groups()]


# -- groups of items ---------------------------------------------------------------------------------
def keeper_key(item: Any) -> tuple:
    """Sort key choosing a group's keeper (smallest first): the largest resolution (pixels;
    items without a stored size count as 0), then the oldest file (modification time: the
    catalogue stores no capture date yet), then the lowest item id."""
    pixels = (item.width or 0) * (item.height or 0)
    return (-pixels, getattr(item, "mtime_ns", 0) or 0, item.id)


@dataclass
class DuplicateGroup:
    """Near-duplicate items: ``keeper`` (see ``keeper_key``) and the ``others``, each with its
    cosine similarity to the keeper in ``similarity`` (same order, most similar first)."""

    keeper: Any
    others: list[Any] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)

    @property
    def items(self) -> list[Any]:
        return [self.keeper, *self.others]

    def as_dict(self) -> dict[str, Any]:
        return {
            "keeper": self.keeper.as_dict(),
            "others": [dict(item.as_dict(), similarity=round(float(s), 6))
                       for item, s in zip(self.others, self.similarity)],
        }


def make_groups(components: Sequence[Sequence[Any]], vector_of: Callable[[int], np.ndarray]) -> list[DuplicateGroup]:
    """``DuplicateGroup``s from components of items (objects with ``id``, ``width``, ``height``,
    ``mtime_ns``), ordered largest first, then by keeper id."""
    groups = []
    for members in components:
        ordered = sorted(members, key=keeper_key)
        keeper, others = ordered[0], ordered[1:]
        base = vector_of(keeper.id)
        sims = [float(np.dot(base, vector_of(o.id))) for o in others]
        order = sorted(range(len(others)), key=lambda i: (-sims[i], others[i].id))
        groups.append(DuplicateGroup(keeper, [others[i] for i in order], [sims[i] for i in order]))
    groups.sort(key=lambda g: (-len(g.items), g.keeper.id))
    return groups


def scan(reader: Any, dim: int, modalities: Sequence[str], threshold: float, progress: Any) -> list[DuplicateGroup]:
    """The near-duplicate groups of a catalogue snapshot (``reader``), per modality, of rows
    (``ItemRow``); ``progress``: an indexing-style progress (``start``, ``advance``)."""
    from .storage.store import vectors_from_blobs

    found: list[DuplicateGroup] = []
    counts = reader.modality_counts()
    for modality in modalities:
        ids: list[int] = []
        blobs: list[bytes] = []
        progress.start("reading", counts.get(modality, 0))
        for rows in reader.embedding_chunks(modality=modality):
            for item_id, blob in rows:
                if len(blob) == dim * 4:
                    ids.append(item_id)
                    blobs.append(blob)
            progress.advance(len(rows))
        vectors = vectors_from_blobs(blobs, dim)
        del blobs
        state = {"started": False, "done": 0}

        def tick(done: int, total: int, modality: str = modality) -> None:
            if not state["started"]:
                progress.start(f"{modality}s", total)
                state["started"] = True
            progress.advance(done - state["done"])
            state["done"] = done

        pairs = similar_pairs(vectors, threshold, progress=tick)
        if modality == "video":  # frames: videos are the duplicates, not moments of one video
            components = video_components(vectors, pairs, reader.items(ids), ids)
        else:
            components = groups_of(len(ids), pairs)
        wanted = [ids[p] for comp in components for p in comp]
        rows_by_id = reader.items(wanted)
        position = {ids[p]: p for comp in components for p in comp}
        members = [one_per_picture([rows_by_id[ids[p]] for p in comp]) for comp in components]
        found.extend(make_groups([m for m in members if len(m) > 1], lambda item_id: vectors[position[item_id]]))
    found.sort(key=lambda g: (-len(g.items), g.keeper.id))
    return found


def one_per_picture(rows: Sequence[Any]) -> list[Any]:
    """``rows`` with one row per picture: a JSONL record's image and the file it names (or two
    records naming one file) are one picture, not duplicates of each other; the file's own row
    stays, else the first."""
    from .media.documents import is_image_part, picture_of

    kept: dict[Any, Any] = {}
    for row in sorted(rows, key=lambda r: (is_image_part(r.locator), r.id)):
        kept.setdefault(picture_of(row) or ("item", row.id), row)
    ids = {row.id for row in kept.values()}
    return [row for row in rows if row.id in ids]


def collapse(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Ranked results collapsed: lists of row positions, each a group in rank order (its first
    the best-ranked, which stays), the lists ordered by their first member; every row appears
    once. As clip-retrieval: connected components of the pairs at or above ``threshold``."""
    n = len(vectors)
    if n == 0:
        return []
    sets = UnionFind(n)
    for a, b in similar_pairs(vectors, threshold).tolist():
        sets.union(a, b)
    by_root: dict[int, list[int]] = {}
    for i in range(n):
        by_root.setdefault(sets.find(i), []).append(i)
    return sorted(by_root.values(), key=lambda g: g[0])
