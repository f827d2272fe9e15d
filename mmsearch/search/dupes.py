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

Thresholds are cosine similarities from ``MIN_THRESHOLD`` (0.5) to 1. ``DEFAULT_THRESHOLD`` (0.97) lies between the two
fixed points the peers publish: immich groups assets within cosine distance 0.01 (similarity
0.99: re-encodes and resizes only), clip-retrieval hides result duplicates above 0.94 (which also
joins shots of one scene taken seconds apart). Without the real model weights on the build
machine the value could not be tuned on real photos; see README "Near-duplicates".

Bounded work whatever the threshold: below ``MIN_THRESHOLD`` two items are not near-duplicates
by any model's measure (and a threshold near 0 joins everything, so a scan's pairs were all
n^2/2 pairs); pairs are joined into groups block by block, in numpy (``Components``), never one
pair at a time in Python nor all pairs held at once; and a query's collapse looks at most at
``dedup_pool(k)`` hits (``DEDUP_POOL_FACTOR`` times k), so a threshold under which every hit is
one group costs a bounded multiple of the plain query, not a scan of the index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..media.capabilities import has_moments
from ..storage.store import vectors_from_blobs
from ..media.documents import is_image_part, picture_of
from .query import DuplicateGroup
# The thresholds a request may ask for live with the request; named here too, where dupes are.
from .request import (DEDUP_MIN_POOL, DEDUP_POOL_FACTOR, DEFAULT_THRESHOLD, MIN_THRESHOLD,  # noqa: F401
                      check_threshold, dedup_pool, dedup_threshold)

CLIP_RETRIEVAL_THRESHOLD = 0.94  # clip-retrieval's clip_back.py get_non_uniques
EXACT_MAX = 4096  # below this many vectors, all pairs are compared directly
PROBES = 4  # cells each vector is compared with in a partitioned scan (at 1M planted: 3 cells split 15 of 10,000 groups)
_BLOCK = 512  # rows per matrix product (bounds memory: _BLOCK x cell or x n floats, and as many pairs)


class Components:
    """Connected components over 0..n-1, fed edges in numpy batches: no Python step per edge, so
    millions of pairs (every pair of a pool, at a low threshold) join in a few array passes."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)  # a forest: each root is its own parent

    def _roots(self, members: np.ndarray) -> np.ndarray:
        roots = self.parent[members]
        for _ in range(8):
            up = self.parent[roots]
            if np.array_equal(up, roots):
                return roots
            roots = up
        self._flatten()  # deep trees: every member pointed at its root, all at once
        return self.parent[members]

    def _flatten(self) -> None:
        parent = self.parent
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
        self.parent = parent

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the members of each pair (a[i], b[i])."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if not len(a):
            return
        ra, rb = self._roots(a), self._roots(b)
        apart = ra != rb
        if not apart.any():
            return
        # The roots these pairs join, numbered 0..m-1 (ascending), joined among themselves;
        # each then points at the smallest root of its component.
        roots, local = np.unique(np.concatenate([ra[apart], rb[apart]]), return_inverse=True)
        edges = int(apart.sum())
        self.parent[roots] = roots[_smallest_connected(len(roots), local[:edges], local[edges:])]

    def groups(self) -> list[list[int]]:
        """Sets of two or more members, each in ascending order, ordered by their first member."""
        self._flatten()
        return _sets(self.parent, 2)

    def all(self) -> list[list[int]]:
        """Every set, singletons too, each ascending, ordered by their first member."""
        self._flatten()
        return _sets(self.parent, 1)


def _smallest_connected(m: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """For each of 0..m-1, the smallest node connected to it by the edges (u[i], v[i]): labels
    lowered along edges, then by pointer jumping, until nothing changes (a few rounds)."""
    label = np.arange(m, dtype=np.int64)
    while True:
        low = np.minimum(label[u], label[v])
        lowered = label.copy()
        np.minimum.at(lowered, u, low)
        np.minimum.at(lowered, v, low)
        while True:
            up = lowered[lowered]
            if np.array_equal(up, lowered):
                break
            lowered = up
        if np.array_equal(lowered, label):
            return label
        label = lowered


def _sets(roots: np.ndarray, smallest: int) -> list[list[int]]:
    order = np.argsort(roots, kind="stable")  # members ascending within each root
    bounds = np.flatnonzero(np.diff(roots[order])) + 1
    sets = [part.tolist() for part in np.split(order, bounds) if len(part) >= smallest] if len(roots) else []
    return sorted(sets, key=lambda g: g[0])


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _block_pairs(q: np.ndarray, qpos: np.ndarray, x: np.ndarray, xpos: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (a, b), a < b, of the pairs of ``q`` rows and ``x`` rows at or above ``threshold``,
    and their similarities (a pair may be found from either side: a partitioned scan compares it
    once, in one direction)."""
    sims = q @ x.T
    rows, cols = np.nonzero(sims >= threshold)
    a, b = qpos[rows], xpos[cols]
    keep = a != b
    return np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep]), sims[rows[keep], cols[keep]]


Progress = Callable[[int, int], None]  # (done, total) of the comparison work


def pair_blocks(vectors: np.ndarray, threshold: float, *, probes: int = PROBES, exact_max: int = EXACT_MAX,
                seed: int = 0, progress: Progress | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Row pairs (a, b), a < b, of ``vectors`` whose cosine similarity is at least ``threshold``,
    with their similarities, block by block (a pair may come twice); exact below ``exact_max`` rows, else through a
    k-means partition (see the module's description)."""
    threshold = check_threshold(threshold)
    x = _normalised(vectors)
    n = len(x)
    tick = progress or (lambda done, total: None)
    if n < 2:
        return
    everyone = np.arange(n, dtype=np.int64)
    if n <= exact_max:
        for start in range(0, n, _BLOCK):
            rows = everyone[start:start + _BLOCK]
            yield _block_pairs(x[rows], rows, x[start:], everyone[start:], threshold)  # each pair once
            tick(min(n, start + _BLOCK), n)
        return
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
                yield _block_pairs(x[rows], rows, x[members], members, threshold)
        if cell % 64 == 63 or cell == cells - 1:
            tick(cell + 1, cells)


def similar_pairs(vectors: np.ndarray, threshold: float, *, probes: int = PROBES, exact_max: int = EXACT_MAX,
                  seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """Row pairs (an int64 array of shape (m, 2), a < b, each pair once) of ``vectors`` whose
    cosine similarity is at least ``threshold`` (``pair_blocks``, gathered)."""
    found = list(pair_blocks(vectors, threshold, probes=probes, exact_max=exact_max, seed=seed, progress=progress))
    if not found:
        return np.empty((0, 2), np.int64)
    pairs = np.stack([np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else np.empty((0, 2), np.int64)


def components(vectors: np.ndarray, threshold: float, *, progress: Progress | None = None,
               exact_max: int = EXACT_MAX, **options: Any) -> Components:
    """The rows of ``vectors`` joined by every pair at or above ``threshold``. Up to
    ``exact_max`` rows: a breadth-first walk of the boolean similarity matrix (n^2 bits, no list
    of pairs, whatever the threshold); above, the partition's pairs consumed block by block."""
    sets = Components(len(vectors))
    if len(vectors) <= exact_max:
        sets.parent = _dense_labels(_normalised(vectors), check_threshold(threshold), progress)
        return sets
    for a, b, _ in pair_blocks(vectors, threshold, progress=progress, exact_max=exact_max, **options):
        sets.add(a, b)
    return sets


def _dense_labels(x: np.ndarray, threshold: float, progress: Progress | None) -> np.ndarray:
    """For each row, the smallest row connected to it (each row's similar rows, transitively)."""
    n = len(x)
    similar = np.empty((n, n), dtype=bool)
    for start in range(0, n, _BLOCK):
        similar[start:start + _BLOCK] = x[start:start + _BLOCK] @ x.T >= threshold
        if progress is not None:
            progress(min(n, start + _BLOCK), n)
    label = np.full(n, -1, dtype=np.int64)
    alone = similar.sum(axis=1) - np.diagonal(similar) == 0
    label[alone] = np.flatnonzero(alone)  # no walk for rows similar to no other
    for first in np.flatnonzero(~alone).tolist():  # the smallest row not yet reached starts the next component
        if label[first] >= 0:
            continue
        label[first] = first
        frontier = np.array([first])
        while len(frontier):
            frontier = np.flatnonzero(similar[frontier].any(axis=0) & (label < 0))
            label[frontier] = first
    return label


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
    sets = Components(n)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    sets.add(pairs[:, 0], pairs[:, 1])
    return sets.groups()


def video_components(blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: dict[int, Any],
                     ids: Sequence[int]) -> list[list[int]]:
    """Groups of videos from blocks of pairs of their frames (positions into ``ids``, with their
    similarities; ``pair_blocks``): pairs within one video are dropped (a scene that returns),
    videos joined by any cross pair form a group, and each video is represented by its frame in
    the most similar cross pair it takes part in, so a copy of a video is one group of two whose
    similarity is that of its best-matching moment."""
    path_of = [rows[item_id].path for item_id in ids]
    names = sorted(set(path_of))
    node = {name: n for n, name in enumerate(names)}
    node_of = np.array([node[p] for p in path_of], np.int64)
    sets = Components(len(names))
    best_sim = np.full(len(names), -np.inf)
    best_frame = np.full(len(names), -1, np.int64)
    for a, b, sims in blocks:
        cross = node_of[a] != node_of[b]
        a, b, sims = a[cross], b[cross], sims[cross]
        if not len(a):
            continue
        sets.add(node_of[a], node_of[b])
        frames, scores = np.concatenate([a, b]), np.concatenate([sims, sims]).astype(np.float64)
        videos = node_of[frames]
        order = np.lexsort((frames, -scores, videos))  # per video: the most similar pair first
        firsts = order[np.r_[True, videos[order][1:] != videos[order][:-1]]]
        better = firsts[scores[firsts] > best_sim[videos[firsts]]]
        best_sim[videos[better]] = scores[better]
        best_frame[videos[better]] = frames[better]
    return [[int(best_frame[n]) for n in group] for group in sets.groups()]


# -- groups of items ---------------------------------------------------------------------------------
def keeper_key(item: Any) -> tuple:
    """Sort key choosing a group's keeper (smallest first): the largest resolution (pixels;
    items without a stored size count as 0), then the oldest file (modification time: the
    catalogue stores no capture date yet), then the lowest item id."""
    pixels = (item.width or 0) * (item.height or 0)
    return (-pixels, getattr(item, "mtime_ns", 0) or 0, item.id)


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

        if has_moments(modality):  # frames: videos are the duplicates, not moments of one video
            joined = video_components(pair_blocks(vectors, threshold, progress=tick), reader.items(ids), ids)
        else:
            joined = components(vectors, threshold, progress=tick).groups()
        wanted = [ids[p] for comp in joined for p in comp]
        rows_by_id = reader.items(wanted)
        position = {ids[p]: p for comp in joined for p in comp}
        members = [one_per_picture([rows_by_id[ids[p]] for p in comp]) for comp in joined]
        found.extend(make_groups([m for m in members if len(m) > 1], lambda item_id: vectors[position[item_id]]))
    found.sort(key=lambda g: (-len(g.items), g.keeper.id))
    return found


def one_per_picture(rows: Sequence[Any]) -> list[Any]:
    """``rows`` with one row per picture: a JSONL record's image and the file it names (or two
    records naming one file) are one picture, not duplicates of each other; the file's own row
    stays, else the first."""
    kept: dict[Any, Any] = {}
    for row in sorted(rows, key=lambda r: (is_image_part(r.locator), r.id)):
        kept.setdefault(picture_of(row) or ("item", row.id), row)
    ids = {row.id for row in kept.values()}
    return [row for row in rows if row.id in ids]


def collapse(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Ranked results collapsed: lists of row positions, each a group in rank order (its first
    the best-ranked, which stays), the lists ordered by their first member; every row appears
    once. As clip-retrieval: connected components of the pairs at or above ``threshold``."""
    if len(vectors) == 0:
        return []
    return components(vectors, threshold).all()
