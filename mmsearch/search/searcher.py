"""The searcher: runs a ``SearchRequest`` over an index's store and query encoders, and gives
ranked hits (items, or documents when the request fuses), "more like this" and near-duplicate
groups. ``Engine`` holds one; it receives what it works on (the store, a preparation step, the
query encoder, the library's roots) and reads nothing else of the Engine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import filters as filters_mod
from ..errors import QueryError
from ..fsutil import display_path
from ..progress import NullProgress, Progress
from ..library import under_any, within
from ..media.capabilities import has_moments, on_side
from ..media.documents import is_image_part, picture_of, record_of
from ..storage import IndexStore, ItemRow
from ..storage import docindex
from ..storage.store import vectors_from_blobs
from . import dupes, fusion
from .calibration import Calibration
from .candidates import Candidates
from .query import IMAGE, ITEM, TEXT, Hit, Hits, QueryTerm, hit_of, item_of, query_image_paths, row_fields, unit_vector
from .request import SearchRequest, check_options

PICTURES = on_side(IMAGE, in_documents=True)  # what a picture file or a record's image can be

# A moment hit's segment (a video's frames): its neighbouring moments scoring at least best -
# SEGMENT_FRACTION x (best - the file's worst moment). Relative to the file's own spread, so it
# adapts to models whose cosines all lie close together.
SEGMENT_FRACTION = 0.25


class IndexSearcher:
    """Searches one index. ``store``: gives the index's current store (raising when it was never
    built); ``prepare``: called before a query is encoded (it reloads a store another process
    rewrote and refuses a model the index was not built with); ``encode``: query terms -> one
    query vector in the index's space; ``roots``: the library's roots (for ``under``)."""

    def __init__(self, store: Callable[[], IndexStore], prepare: Callable[[], None],
                 encode: Callable[[Sequence[QueryTerm]], np.ndarray], roots: Callable[[], list[Any]]):
        self._store = store
        self._prepare = prepare
        self._encode = encode
        self._roots = roots

    # -- requests --------------------------------------------------------------------------------
    def search(self, request: SearchRequest) -> Hits:
        """Ranked hits for a request with terms (texts, images, items)."""
        self._prepare()
        vector = self._encode(request.terms)
        exclude: set[Any] = set()
        if not request.include_query:
            exclude = set(query_image_paths(request.terms))
            exclude.update(request.item_ids)
            exclude.update(self._files_of_moments(request.item_ids))  # "more like this" on a video: other videos
        return self.run(request, vector, exclude=exclude, query_side=self._query_side(request.terms))

    def run(self, request: SearchRequest, vector: np.ndarray, *, words: str | None = None,
            exclude: set[Any] | frozenset = frozenset(), query_side: str = TEXT) -> Hits:
        """Ranked hits for a query vector already in the index's space, with the request's
        options; ``words`` (default: the request's texts) feed the full-text index and fusion;
        ``exclude``: paths and ids left out; ``query_side``: 'text' or 'image', the side of the
        query's strongest term, for calibration."""
        vector = unit_vector(vector)  # scores are cosines whatever its length
        words = request.words if words is None else words
        filters_mod.check_text(words, "query text")
        if not request.ranking.plain:
            hits = self._fused(request, vector, words, exclude, query_side)
        elif request.dedup is not None:
            hits = self._deduplicated(request, vector, exclude)
        else:
            hits = self._ranked(request, vector, exclude)
        filters_mod.sort_by_date(hits, request.sort)
        return hits

    def duplicates(self, threshold: float | None, type: str, progress: Progress | None = None
                   ) -> list[dupes.DuplicateGroup]:
        """Groups of near-duplicate items (see ``Engine.duplicates``)."""
        threshold = dupes.DEFAULT_THRESHOLD if threshold is None else dupes.check_threshold(threshold)
        check_options(type, 1, None)
        self._prepare()
        store = self._store()
        with store.read() as r:
            modalities = sorted(r.modality_counts()) if type == "all" else [type]
            groups = dupes.scan(r, store.dim, modalities, threshold, progress or NullProgress())
        return [dupes.DuplicateGroup(item_of(g.keeper), [item_of(o) for o in g.others], g.similarity) for g in groups]

    # -- the query's parts -----------------------------------------------------------------------
    def _query_side(self, terms: Sequence[QueryTerm]) -> str:
        """'text' or 'image': the side of the query's strongest positive term (an item term
        counts as its item's), for calibration."""
        term = max((t for t in terms if t.weight > 0), key=lambda t: t.weight)
        if term.kind == ITEM:
            with self._store().read() as r:
                row = r.items([int(term.value)]).get(int(term.value))
            return TEXT if row is not None and row.modality in on_side(TEXT) else IMAGE
        return TEXT if term.kind == TEXT else IMAGE

    def _files_of_moments(self, ids: list[int]) -> set[str]:
        """Paths of the files (videos) whose moments are item terms of the query."""
        if not ids:
            return set()
        with self._store().read() as r:
            return {row.path for row in r.items(ids).values() if has_moments(row.modality)}

    def _check_dim(self, vector: np.ndarray) -> IndexStore:
        store = self._store()
        if vector.shape[0] != store.dim:
            raise QueryError(f"query vector has dimension {vector.shape[0]}, index has {store.dim}")
        return store

    def _under_prefixes(self, under: str | Path) -> list[str]:
        """Stored-path prefixes for the folder ``under``: as given, and as found under each root
        whose real path holds its real path (a root indexed through a symlink, or a symlink to a
        folder inside a root)."""
        given = os.path.abspath(os.path.expanduser(str(under)))
        real = os.path.realpath(given)
        prefixes = [given]
        for root in self._roots():
            real_root = os.path.realpath(root.path)
            if within(real, real_root):
                rel = os.path.relpath(real, real_root)
                prefixes.append(root.path if rel == "." else os.path.join(root.path, rel))
        return list(dict.fromkeys(prefixes))

    # -- ranking ---------------------------------------------------------------------------------
    def _keep(self, request: SearchRequest, prefixes: list[str] | None, exclude: Any,
              check: bool = True) -> Callable[[Any], bool]:
        """Whether a stored row may be a hit: its type, folder and capture filters (unless the
        candidate source already applied them: ``check`` False) and not excluded."""
        type, wanted = request.type, request.filters

        def keep(item: Any) -> bool:
            if check and type != "all" and item.modality != type:
                return False
            if check and prefixes is not None and not under_any(item.path, prefixes):
                return False
            if check and wanted.active and not wanted.matches(item):
                return False
            return item.path not in exclude and item.id not in exclude

        return keep

    def _ranked(self, request: SearchRequest, vector: np.ndarray, exclude: Any) -> Hits:
        """Items by cosine, one hit per file for moments (a video's best frame stands for it) and
        per picture (a record's image and its file)."""
        k, type, min_score, wanted = request.k, request.type, request.min_score, request.filters
        self._prepare()
        store = self._check_dim(vector)
        prefixes = self._under_prefixes(request.under) if request.under else None

        # One snapshot: the vector index is synced to it and rows are read from it, so a
        # concurrent index run can never show a half-written state.
        with store.snapshot() as snap:
            source = Candidates(snap, vector, wanted, type if type != "all" else None, prefixes)
            check = not source.pushed  # pushed down: every candidate passes type, folder and filters
            filtered = (check and (type != "all" or prefixes is not None or wanted.active)) or bool(exclude)
            keep = self._keep(request, prefixes, exclude, check)
            total = source.total
            # Over-fetch when filters may discard candidates; widen until k hits survive.
            fetch = min(total, k * 4 + len(exclude) if filtered else k)
            while True:
                scores, ids = source.fetch(fetch)  # exact cosines
                rows = snap.reader.items(ids.tolist())
                hits = Hits()
                below: float | None = None  # best score of a candidate cut by min_score
                files: set[str] = set()  # a file of moments is shown by its best one
                pictures: dict[str, int] = {}  # a picture's place in hits (a record's image is its file)
                for score, item_id in zip(scores.tolist(), ids.tolist()):
                    item = rows.get(item_id)
                    if item is None or not keep(item):
                        continue
                    moments = has_moments(item.modality)
                    if moments:
                        if item.path in files:
                            continue
                        files.add(item.path)
                    picture = picture_of(item)
                    if picture is not None:
                        if picture in pictures:
                            _same_picture(hits, pictures[picture], item)
                            continue
                        pictures[picture] = len(hits)
                    if min_score is not None and score < min_score:
                        below = score
                        break
                    hit = hit_of(len(hits) + 1, score, item)
                    if moments:
                        _moment(hit, snap.reader.rows_with_vectors_of(item.path, item.modality), vector)
                    hits.append(hit)
                    if len(hits) == k:
                        break
                total = source.total  # an SQL search learns it when it returns fewer than asked
                if len(hits) >= k or fetch >= total or below is not None:
                    show_pictures(snap.reader, hits, keep)
                    if not hits:
                        hits.why_empty = _why_empty(snap.reader, snap.total, request, prefixes, below)
                    return hits
                fetch = min(total, fetch * 4)

    def _deduplicated(self, request: SearchRequest, vector: np.ndarray, exclude: Any) -> Hits:
        """The best ``k`` hits after collapsing near-duplicates: fetch more until ``k`` groups
        are found, nothing is left or ``dupes.dedup_pool(k)`` hits were compared (then fewer
        than ``k`` groups come back: the work stays bounded whatever the threshold)."""
        k, threshold = request.k, request.dedup
        limit = dupes.dedup_pool(k)
        fetch = min(k * 2, limit)
        while True:
            hits = self._ranked(request.but(k=fetch, dedup=None), vector, exclude)
            store = self._store()
            with store.read() as r:
                blobs = dict(r.embeddings([h.id for h in hits]))
            present = [h for h in hits if len(blobs.get(h.id, b"")) == store.dim * 4]
            vectors = vectors_from_blobs([blobs[h.id] for h in present], store.dim)
            groups = dupes.collapse(vectors, threshold)
            if len(groups) >= k or len(hits) < fetch or fetch >= limit:
                kept = Hits(why_empty=hits.why_empty)
                for group in groups[:k]:
                    first = present[group[0]]
                    kept.append(dataclasses.replace(first, rank=len(kept) + 1,
                                                    duplicates=[present[i].id for i in group[1:]]))
                return kept
            fetch = min(fetch * 4, limit)

    def _fused(self, request: SearchRequest, vector: np.ndarray, words: str | None, exclude: Any,
               query_side: str) -> Hits:
        """Ranked documents or items for a query vector and its words, as the request's ranking
        says; filters, dedup and sort as for items (a document passes the capture filters as the
        item it is shown by does: its image, else its text). A hit of moments carries its segment."""
        k, type, min_score, wanted, options = request.k, request.type, request.min_score, request.filters, request.ranking
        threshold = request.dedup
        self._prepare()
        store = self._check_dim(vector)
        prefixes = self._under_prefixes(request.under) if request.under else None
        # Fusion checks type and folder itself (the capture filters go to its candidate source).
        keep = self._keep(request.but(filters=filters_mod.Filters()), prefixes, exclude)
        with store.snapshot() as snap:
            calibration = None
            if options.calibrated or options.cutoff is not None:
                calibration = Calibration.from_dict(snap.reader.calibration())
                if calibration is None:
                    raise QueryError(f"{store.folder} has no score calibration yet: run `mmsearch index` once "
                                     "to measure it")
            # The filter's (or a small folder's) passing ids restrict the vector candidates, as in
            # ``_ranked``.
            source = Candidates(snap, vector, wanted, type if type != "all" else None, prefixes) \
                if wanted.active or prefixes else None
            documents = _document_index(snap, options, type)
            size = fusion.pool_size(k)
            # With dedup, bounded work whatever the threshold: at most dedup_pool(k) units compared.
            limit = max(size, dupes.dedup_pool(k)) if threshold is not None else None
            while True:  # widen the pool until k hits (groups, with dedup) survive or nothing is left
                pool = fusion.search(snap, vector, words, size, keep, options, calibration, query_side,
                                     wanted, source, documents)
                units = pool.units[:limit] if limit else pool.units  # hybrid pools hold up to two sizes
                below = next((u.score for u in units if min_score is not None and u.score < min_score), None)
                if below is not None:
                    units = [u for u in units if u.score >= min_score]
                groups = (_collapse(snap, units, threshold) if threshold is not None
                          else [[i] for i in range(len(units))])
                if len(groups) >= k or pool.exhausted or below is not None or (limit and size >= limit):
                    break
                size = min(size * 4, limit) if limit else size * 4
            shown = [units[g[0]] for g in groups[:k]]
            others = {units[g[0]].representative.row.id: [units[i].representative.row.id for i in g[1:]]
                      for g in groups[:k]} if threshold is not None else {}
            hits = fusion.to_hits(fusion.with_rows(snap.reader, shown), k, words, None, options)
            show_pictures(snap.reader, hits, keep)
            for hit in hits:
                if threshold is not None:
                    hit.duplicates = others.get(hit.id, [])
                if has_moments(hit.modality):
                    _moment(hit, snap.reader.rows_with_vectors_of(hit.path, hit.modality), vector)
            if not hits:
                hits.why_empty = _why_empty(snap.reader, snap.total, request, prefixes, below)
                if options.cutoff is not None and hits.why_empty == "no item passes the filters":
                    hits.why_empty = f"no hit stands out from the index's background scores (cutoff {options.cutoff})"
        return hits


def _collapse(snap: Any, units: list, threshold: float) -> list[list[int]]:
    """Near-duplicate groups of ranked fused units (``dupes.collapse``), compared by the vectors
    of the items they are shown by."""
    shown = [u.representative for u in units]
    missing = [p.row.id for p in shown if p.vector is None]
    blobs = dict(snap.reader.embeddings(missing)) if missing else {}
    dim = snap.store.dim
    matrix = np.zeros((len(shown), dim), np.float32)
    for n, part in enumerate(shown):
        blob = blobs.get(part.row.id, b"")
        if part.vector is not None:
            matrix[n] = part.vector
        elif len(blob) == dim * 4:
            matrix[n] = np.frombuffer(blob, np.float32)
    return dupes.collapse(matrix, threshold)


def _document_index(snap: Any, options: Any, type: str) -> Any:
    """The document index (``storage.docindex``) early fusion takes its candidates from, or None
    for the item index: it must hold this very snapshot at the weights asked, and every part
    must be rankable (``type`` 'all'; calibrated scores rank by another scale than its vectors)."""
    if options.fusion != "early" or type != "all" or options.calibrated:
        return None
    return docindex.for_query(snap, (options.image_weight, options.text_weight))


def _why_empty(reader: Any, total: int, request: SearchRequest, prefixes: list[str] | None,
               below: float | None) -> str:
    if total == 0:
        return "the index holds no searchable items"
    if below is not None:
        return f"the best match scores {below:.4f}, below the minimum score {request.min_score:g}"
    if prefixes is not None and not reader.any_item_under(prefixes):
        return f"no indexed items under {display_path(str(request.under))}"
    if request.type != "all" and not reader.any_item_of(request.type):
        return f"the index holds no {request.type} items"
    if request.filters.active:
        return f"no item passes the filters ({request.filters.describe()})"
    return "no item passes the filters"


def _moment(hit: Hit, frames: list[tuple[ItemRow, bytes]], vector: np.ndarray) -> None:
    """Give a video hit its segment: the run of frames around its best one (``hit.id``) scoring
    close to it (see SEGMENT_FRACTION); a frame stands for the time until the next kept one."""
    frames = sorted((f for f in frames if len(f[1]) == vector.size * 4),  # a damaged blob: check names it
                    key=lambda f: (f[0].meta or {}).get("t", 0.0))
    times = [float((row.meta or {}).get("t", 0.0)) for row, _ in frames]
    ids = [row.id for row, _ in frames]
    if hit.id not in ids:
        hit.start, hit.end = hit.t, hit.t
        return
    scores = np.stack([np.frombuffer(blob, np.float32) for _, blob in frames]) @ vector
    best = ids.index(hit.id)
    floor = scores[best] - SEGMENT_FRACTION * (scores[best] - scores.min())
    first = last = best
    while first > 0 and scores[first - 1] >= floor:
        first -= 1
    while last + 1 < len(frames) and scores[last + 1] >= floor:
        last += 1
    duration = (hit.meta or {}).get("duration")
    hit.start = times[first]
    hit.end = times[last + 1] if last + 1 < len(times) else float(duration if duration else times[last])


def show_pictures(reader: Any, hits: list[Hit], keep: Any) -> None:
    """Each image hit shown by its picture file where that file is indexed (and passes
    ``keep``), and naming the JSONL record that names it, if any: ``_same_picture`` joins the
    two when both are among the candidates; this finds the one that is not."""
    images = [h.id for h in hits if h.modality in PICTURES]
    if not images:
        return
    alike: dict[str, list[ItemRow]] = {}
    for row in reader.images_by_hash({r.content_hash for r in reader.rows_by_id(images).values()}):
        if (name := picture_of(row)) is not None:
            alike.setdefault(name, []).append(row)
    for n, hit in enumerate(hits):
        same = alike.get(hit.file, []) if hit.modality in PICTURES else []
        record = hit.record or next((record_of(r) for r in same if is_image_part(r.locator)), None)
        file = next((r for r in same if not is_image_part(r.locator) and keep(r)), None)
        if file is not None and file.id != hit.id:
            hits[n] = dataclasses.replace(hit, **row_fields(file))
        hits[n].record = record


def _same_picture(hits: Hits, n: int, row: ItemRow) -> None:
    """``row`` shows the picture ``hits[n]`` shows (a JSONL record's image and the file it
    names): one hit, shown by the file, naming the record."""
    kept = hits[n]
    record = kept.record or record_of(row)
    if record_of(row) is None and hits[n].modality in PICTURES and is_image_part(kept.locator):  # the file shows it
        hits[n] = hit_of(kept.rank, kept.score, row)
    hits[n].record = record
