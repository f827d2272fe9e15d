"""The Engine's searching half: ranked hits for queries, vectors and items, near-duplicate
groups, and the hit types' fields. ``Engine`` inherits it; everything here works on the Engine's
store and encoders (``self.store``, ``self.encode_query``), never on its own copies.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import dupes
from . import filters as filters_mod
from .candidates import Candidates
from .errors import QueryError
from .fsutil import display_path
from .indexing import NullProgress, Progress
from .library import under_any, within
from .media.documents import is_image_part, picture_of, record_of
from .media.exif import camera_name
from .media.video import VIDEO
from .query import IMAGE, ITEM, TEXT, TYPES, Hit, Hits, Item, QueryTerm, parse_query, query_image_paths, unit_vector
from .storage import ItemRow
from .storage.store import vectors_from_blobs

QueryInput = str | Path | QueryTerm | Sequence[str | Path | QueryTerm]

# A video hit's segment: its neighbouring frames scoring at least best - SEGMENT_FRACTION x
# (best - the video's worst frame). Relative to the video's own spread, so it adapts to models
# whose cosines all lie close together.
SEGMENT_FRACTION = 0.25


class Searching:
    """Search methods of ``Engine`` (see its docstring)."""

    def search(
        self,
        query: QueryInput,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | Path | None = None,
        include_query: bool = False,
        force: str | None = None,
        dedup: bool | float = False,
        after: Any = None,
        before: Any = None,
        camera: str | None = None,
        near: Any = None,
        sort: str = filters_mod.RELEVANCE,
        fusion: str = "none",
        mode: str = "vector",
        image_weight: float | None = None,
        text_weight: float | None = None,
        calibrated: bool = False,
        cutoff: float | str | None = None,
    ) -> Hits:
        """Ranked hits for ``query``: a text, an image path, a ``QueryTerm`` (texts, images as
        paths, bytes or PIL images, item ids), or a list of them.

        Strings are parsed like the CLI (``"2:beach + ./dog.jpg - people"``). ``type``
        restricts hits to 'image' or 'text'; ``min_score`` drops weaker hits; ``under`` keeps
        hits below a folder. Images and items used as the query are left out of its results
        unless ``include_query``. ``dedup`` collapses near-duplicate hits (True: at
        ``dupes.DEFAULT_THRESHOLD``; a number: at that cosine similarity): the best-ranked of each
        group stays and lists the others' ids in ``duplicates``; k hits are still returned while
        the index holds enough.

        Capture metadata filters (see ``mmsearch.filters``): ``after`` (inclusive) and
        ``before`` (exclusive) take dates (``date``, ``datetime`` or ISO text such as
        "2024-05-01") and compare with the item's capture date, or its file's time when it has
        none; ``camera`` names a camera's model, make or both ("Pixel 7", "Canon", "Google
        Pixel 7", any ASCII case); ``near`` is "LAT,LON,KM" or (lat, lon, km). ``sort``:
        'relevance', or 'date' (newest first) / 'date-asc' to order the hits that pass the
        relevance cut (``k``, ``min_score``) by date.

        ``fusion`` ('none', 'late', 'early', 'rrf') ranks documents
        (an image with its caption, sidecar or JSONL text) by both their vectors, with
        ``image_weight``/``text_weight``; ``mode`` ('vector', 'lexical', 'hybrid') adds the
        full-text index's BM25 ranking (see ``mmsearch.fusion``). ``calibrated`` ranks and
        scores by calibrated score (``mmsearch.calibration``: images and texts on one scale; the
        raw cosine stays in ``Hit.cosine``); ``cutoff`` ('auto' or a calibrated score) drops hits
        indistinguishable from the index's background.
        """
        options = _fusion_options(fusion, mode, image_weight, text_weight, calibrated, cutoff)
        dupes.dedup_threshold(dedup)  # bad values fail before the model loads
        _check_search_options(type, k, min_score, under)
        wanted = filters_mod.parse(after, before, camera, near)
        filters_mod.check_sort(sort)
        self.store.raise_if_never_indexed()  # before the model is loaded
        self._refresh()
        if self._requested is not None and not self._check_model():
            raise self._mismatch("query it with the model it was built with")
        terms = _as_terms(query, force, names_are_words=options.mode != "vector")
        for term in terms:
            if term.kind == TEXT:
                filters_mod.check_text(term.value, "query text")
        vector = self.encode_query(terms)
        exclude: set[Any] = set()
        if not include_query:
            exclude = set(query_image_paths(terms))
            exclude.update(int(term.value) for term in terms if term.kind == ITEM)
            exclude.update(self._videos_of(terms))  # "more like this" on a video: other videos
        if not options.plain:
            words = " ".join(term.value for term in terms if term.kind == TEXT and term.weight > 0) or None
            return self.search_fused(vector, words, options, k=k, type=type, min_score=min_score, under=under,
                                     exclude=exclude, query_modality=self._query_modality(terms), dedup=dedup,
                                     after=wanted.after, before=wanted.before, camera=wanted.camera,
                                     near=wanted.near, sort=sort)
        return self.search_vector(vector, k=k, type=type, min_score=min_score, under=under, exclude=exclude,
                                  dedup=dedup, after=wanted.after, before=wanted.before, camera=wanted.camera,
                                  near=wanted.near, sort=sort)

    def _query_modality(self, terms: Sequence[QueryTerm]) -> str:
        """'text' or 'image': the modality of the query's strongest positive term (an item term
        counts as its item's modality), for calibration."""
        term = max((t for t in terms if t.weight > 0), key=lambda t: t.weight)
        if term.kind == ITEM:
            row = self.get(int(term.value))
            return "text" if row is not None and row.modality == TEXT else IMAGE
        return TEXT if term.kind == TEXT else IMAGE

    def search_fused(self, vector: np.ndarray, words: str | None, options: Any, *, k: int = 10, type: str = "all",
                     min_score: float | None = None, under: str | Path | None = None,
                     exclude: set[Any] = frozenset(), query_modality: str = TEXT, dedup: bool | float = False,
                     after: Any = None, before: Any = None, camera: str | None = None, near: Any = None,
                     sort: str = filters_mod.RELEVANCE) -> Hits:
        """Ranked documents or items for a query vector and its words, as ``options``
        (``fusion.FusionOptions``) say; filters, ``dedup`` and ``sort`` as ``search_vector``
        (a document passes the capture filters as the item it is shown by does: its image,
        else its text). A video hit carries its segment, as in ``search_vector``."""
        from . import fusion

        _check_search_options(type, k, min_score, under)
        filters_mod.check_text(words, "query text")
        wanted = filters_mod.parse(after, before, camera, near)
        filters_mod.check_sort(sort)
        threshold = dupes.dedup_threshold(dedup)
        self._refresh()
        vector = unit_vector(vector)
        prefixes = self._under_prefixes(under) if under else None

        def keep(item: Any) -> bool:
            if type != "all" and item.modality != type:
                return False
            if prefixes is not None and not under_any(item.path, prefixes):
                return False
            return item.path not in exclude and item.id not in exclude

        with self.store.snapshot() as snap:
            if vector.shape[0] != self.store.dim:
                raise QueryError(f"query vector has dimension {vector.shape[0]}, index has {self.store.dim}")
            calibration = None
            if options.calibrated or options.cutoff is not None:
                from .calibration import Calibration

                calibration = Calibration.from_dict(snap.reader.calibration())
                if calibration is None:
                    raise QueryError(f"{self.folder} has no score calibration yet: run `mmsearch index` once "
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
                pool = fusion.search(snap, vector, words, size, keep, options, calibration, query_modality,
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
                if hit.modality == VIDEO:
                    _moment(hit, snap.reader.rows_with_vectors_of(hit.path, VIDEO), vector)
            if not hits:
                hits.why_empty = _why_empty(snap.reader, snap.total, type, under, prefixes, min_score, below, wanted)
                if options.cutoff is not None and hits.why_empty == "no item passes the filters":
                    hits.why_empty = f"no hit stands out from the index's background scores (cutoff {options.cutoff})"
        filters_mod.sort_by_date(hits, sort)
        return hits

    def _videos_of(self, terms: Sequence[QueryTerm]) -> set[str]:
        """Paths of the videos whose frames are item terms of the query."""
        ids = [int(term.value) for term in terms if term.kind == ITEM]
        if not ids:
            return set()
        with self.store.read() as r:
            return {row.path for row in r.items(ids).values() if row.modality == VIDEO}

    def similar(self, item_id: int, *, k: int = 10, type: str = "all", min_score: float | None = None,
                under: str | Path | None = None, include_self: bool = False, dedup: bool | float = False,
                **filters: Any) -> Hits:
        """'More like this': the items nearest to indexed item ``item_id`` (``filters``: the
        ``after``, ``before``, ``camera``, ``near`` and ``sort`` of ``search``)."""
        return self.search(QueryTerm(ITEM, str(int(item_id))), k=k, type=type, min_score=min_score, under=under,
                           include_query=include_self, dedup=dedup, **filters)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | Path | None = None,
        exclude: set[Any] = frozenset(),
        dedup: bool | float = False,
        after: Any = None,
        before: Any = None,
        camera: str | None = None,
        near: Any = None,
        sort: str = filters_mod.RELEVANCE,
    ) -> Hits:
        """Ranked hits for a query vector already in this index's space.

        ``under`` keeps hits inside a folder, named as the user sees it: through a symlink, or
        by the real path of a root that was indexed through one. When nothing is found,
        ``why_empty`` of the result says why. ``dedup``, ``after``, ``before``, ``camera``,
        ``near``, ``sort``: see ``search``.
        """
        _check_search_options(type, k, min_score, under)
        vector = unit_vector(vector)  # scores are cosines whatever its length
        wanted = filters_mod.parse(after, before, camera, near)
        filters_mod.check_sort(sort)
        threshold = dupes.dedup_threshold(dedup)
        if threshold is not None:
            hits = self._deduplicated(vector, k, threshold, type=type, min_score=min_score, under=under,
                                      exclude=exclude, after=wanted.after, before=wanted.before,
                                      camera=wanted.camera, near=wanted.near)
            filters_mod.sort_by_date(hits, sort)
            return hits
        hits = self._ranked(vector, k, type, min_score, under, exclude, wanted)
        filters_mod.sort_by_date(hits, sort)
        return hits

    def _ranked(self, vector: np.ndarray, k: int, type: str, min_score: float | None, under: Any,
                exclude: set[Any], wanted: filters_mod.Filters) -> Hits:
        self._refresh()
        vector = np.asarray(vector, np.float32).reshape(-1)
        store = self.store
        if vector.shape[0] != store.dim:
            raise QueryError(f"query vector has dimension {vector.shape[0]}, index has {store.dim}")
        prefixes = self._under_prefixes(under) if under else None

        # One snapshot: the vector index is synced to it and rows are read from it, so a
        # concurrent index run can never show a half-written state.
        with store.snapshot() as snap:
            source = Candidates(snap, vector, wanted, type if type != "all" else None, prefixes)
            check = not source.pushed  # pushed down: every candidate passes type, folder and filters
            filtered = (check and (type != "all" or prefixes is not None or wanted.active)) or bool(exclude)

            def keep(item: ItemRow) -> bool:
                if check and type != "all" and item.modality != type:
                    return False
                if check and prefixes is not None and not under_any(item.path, prefixes):
                    return False
                if check and wanted.active and not wanted.matches(item):
                    return False
                return item.path not in exclude and item.id not in exclude

            total = source.total
            # Over-fetch when filters may discard candidates; widen until k hits survive.
            fetch = min(total, k * 4 + len(exclude) if filtered else k)
            while True:
                scores, ids = source.fetch(fetch)  # exact cosines
                rows = snap.reader.items(ids.tolist())
                hits = Hits()
                below: float | None = None  # best score of a candidate cut by min_score
                videos: set[str] = set()  # a video's best frame stands for the video
                pictures: dict[str, int] = {}  # a picture's place in hits (a record's image is its file)
                for score, item_id in zip(scores.tolist(), ids.tolist()):
                    item = rows.get(item_id)
                    if item is None or not keep(item):
                        continue
                    if item.modality == VIDEO:
                        if item.path in videos:
                            continue
                        videos.add(item.path)
                    picture = picture_of(item)
                    if picture is not None:
                        if picture in pictures:
                            _same_picture(hits, pictures[picture], item)
                            continue
                        pictures[picture] = len(hits)
                    if min_score is not None and score < min_score:
                        below = score
                        break
                    hit = _hit(len(hits) + 1, score, item)
                    if item.modality == VIDEO:
                        _moment(hit, snap.reader.rows_with_vectors_of(item.path, VIDEO), vector)
                    hits.append(hit)
                    if len(hits) == k:
                        break
                total = source.total  # an SQL search learns it when it returns fewer than asked
                if len(hits) >= k or fetch >= total or below is not None:
                    show_pictures(snap.reader, hits, keep)
                    if not hits:
                        hits.why_empty = _why_empty(snap.reader, snap.total, type, under, prefixes, min_score, below,
                                                    wanted)
                    return hits
                fetch = min(total, fetch * 4)

    def _deduplicated(self, vector: np.ndarray, k: int, threshold: float, **options: Any) -> Hits:
        """The best ``k`` hits after collapsing near-duplicates: fetch more until ``k`` groups
        are found, nothing is left or ``dupes.dedup_pool(k)`` hits were compared (then fewer
        than ``k`` groups come back: the work stays bounded whatever the threshold)."""
        limit = dupes.dedup_pool(k)
        fetch = min(k * 2, limit)
        while True:
            hits = self.search_vector(vector, k=fetch, **options)
            with self.store.read() as r:
                blobs = dict(r.embeddings([h.id for h in hits]))
            present = [h for h in hits if len(blobs.get(h.id, b"")) == self.store.dim * 4]
            vectors = vectors_from_blobs([blobs[h.id] for h in present], self.store.dim)
            groups = dupes.collapse(vectors, threshold)
            if len(groups) >= k or len(hits) < fetch or fetch >= limit:
                kept = Hits(why_empty=hits.why_empty)
                for group in groups[:k]:
                    first = present[group[0]]
                    kept.append(dataclasses.replace(first, rank=len(kept) + 1,
                                                    duplicates=[present[i].id for i in group[1:]]))
                return kept
            fetch = min(fetch * 4, limit)

    def duplicates(self, *, threshold: float | None = None, type: str = "all",
                   progress: Progress | None = None) -> list[dupes.DuplicateGroup]:
        """Groups of near-duplicate items (cosine similarity at least ``threshold``, default
        ``dupes.DEFAULT_THRESHOLD``; chains join: a~b and b~c make one group), of one modality
        each (``type``: 'image', 'text', 'video' or 'all'; videos group as whole files, each shown by its best-matching frame). Each group's ``keeper`` is the item with the
        largest resolution, then the oldest file, then the lowest id; ``others`` carry their
        similarity to it. Largest groups first. ``progress`` receives the scan's progress."""
        threshold = dupes.DEFAULT_THRESHOLD if threshold is None else dupes.check_threshold(threshold)
        _check_search_options(type, 1, None)
        self.store.raise_if_never_indexed()
        self._refresh()
        with self.store.read() as r:
            modalities = sorted(r.modality_counts()) if type == "all" else [type]
            groups = dupes.scan(r, self.store.dim, modalities, threshold, progress or NullProgress())
        return [dupes.DuplicateGroup(_item(g.keeper), [_item(o) for o in g.others], g.similarity) for g in groups]

    def _under_prefixes(self, under: str | Path) -> list[str]:
        """Stored-path prefixes for the folder ``under``: as given, and as found under each root
        whose real path holds its real path (a root indexed through a symlink, or a symlink to a
        folder inside a root)."""
        given = os.path.abspath(os.path.expanduser(str(under)))
        real = os.path.realpath(given)
        prefixes = [given]
        for root in self.roots():
            real_root = os.path.realpath(root.path)
            if within(real, real_root):
                rel = os.path.relpath(real, real_root)
                prefixes.append(root.path if rel == "." else os.path.join(root.path, rel))
        return list(dict.fromkeys(prefixes))


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
    from .storage import docindex

    if options.fusion != "early" or type != "all" or options.calibrated:
        return None
    return docindex.for_query(snap, (options.image_weight, options.text_weight))


def _check_search_options(type: str, k: int, min_score: float | None, under: Any = None) -> None:
    filters_mod.check_text(under, "under")
    if type not in TYPES:
        raise QueryError(f"unknown type {type!r}: choose one of {', '.join(TYPES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be an integer of at least 1, got {k!r}")
    if min_score is not None and not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
        raise QueryError(f"min_score must be a finite number, got {min_score!r}")


def _fusion_options(fusion: str, mode: str, image_weight: float | None, text_weight: float | None,
                    calibrated: bool = False, cutoff: float | str | None = None) -> Any:
    from .calibration import check_cutoff
    from .fusion import DEFAULT_IMAGE_WEIGHT, DEFAULT_TEXT_WEIGHT, FusionOptions

    return FusionOptions(fusion or "none", mode or "vector",
                         DEFAULT_IMAGE_WEIGHT if image_weight is None else image_weight,
                         DEFAULT_TEXT_WEIGHT if text_weight is None else text_weight,
                         bool(calibrated), check_cutoff(cutoff))


def _why_empty(reader, total: int, type: str, under, prefixes, min_score, below, wanted=None) -> str:
    if total == 0:
        return "the index holds no searchable items"
    if below is not None:
        return f"the best match scores {below:.4f}, below the minimum score {min_score:g}"
    if prefixes is not None and not reader.any_item_under(prefixes):
        return f"no indexed items under {display_path(str(under))}"
    if type != "all" and not reader.any_item_of(type):
        return f"the index holds no {type} items"
    if wanted is not None and wanted.active:
        return f"no item passes the filters ({wanted.describe()})"
    return "no item passes the filters"


def _as_terms(query: QueryInput, force: str | None, names_are_words: bool = False) -> list[QueryTerm]:
    if isinstance(query, QueryTerm):
        return [query]
    if isinstance(query, Path):
        return [QueryTerm(IMAGE, str(query))]
    if isinstance(query, str):
        return parse_query([query], force, names_are_words)
    items = list(query)
    if items and all(isinstance(q, QueryTerm) for q in items):
        return items  # type: ignore[return-value]
    if any(isinstance(q, QueryTerm) for q in items):
        raise QueryError("mix of QueryTerm objects and strings: pass one kind")
    return parse_query([str(q) for q in items], force, names_are_words)


def _fields(row: ItemRow) -> dict[str, Any]:
    moment = (row.meta or {}).get("t") if row.modality == VIDEO else None
    when, source = filters_mod.item_date(row)
    return dict(id=row.id, modality=row.modality, path=row.path, locator=row.locator, text=row.text,
                width=row.width, height=row.height, meta=row.meta, t=moment, taken_at=filters_mod.iso(when),
                date_source=source, camera=camera_name(row.camera_make, row.camera_model), lat=row.lat, lon=row.lon)


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

    images = [h.id for h in hits if h.modality == "image"]
    if not images:
        return
    alike: dict[str, list[ItemRow]] = {}
    for row in reader.images_by_hash({r.content_hash for r in reader.rows_by_id(images).values()}):
        if (name := picture_of(row)) is not None:
            alike.setdefault(name, []).append(row)
    for n, hit in enumerate(hits):
        same = alike.get(hit.file, []) if hit.modality == "image" else []
        record = hit.record or next((record_of(r) for r in same if is_image_part(r.locator)), None)
        file = next((r for r in same if not is_image_part(r.locator) and keep(r)), None)
        if file is not None and file.id != hit.id:
            hits[n] = dataclasses.replace(hit, **_fields(file))
        hits[n].record = record


def _same_picture(hits: Hits, n: int, row: ItemRow) -> None:
    """``row`` shows the picture ``hits[n]`` shows (a JSONL record's image and the file it
    names): one hit, shown by the file, naming the record."""
    kept = hits[n]
    record = kept.record or record_of(row)
    if record_of(row) is None and hits[n].modality == "image" and is_image_part(kept.locator):  # the file shows it
        hits[n] = _hit(kept.rank, kept.score, row)
    hits[n].record = record


def _item(row: ItemRow) -> Item:
    return Item(**_fields(row))


def _hit(rank: int, score: float, row: ItemRow) -> Hit:
    return Hit(rank=rank, score=float(score), record=record_of(row), **_fields(row))
