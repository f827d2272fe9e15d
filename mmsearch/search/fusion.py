"""Ranking documents and words: late, early and reciprocal-rank fusion of a document's image and
text scores, and hybrid lexical + vector ranking.

A *document* is the set of items sharing a ``media.documents.doc_key`` (an image and its
caption, sidecar or JSONL text). Every search here starts from one vector search over all items
(a pool of ``pool_size(k)`` candidates, the one scan of the index) and, in the lexical modes,
one BM25 query of the full-text index; then every part of each candidate document is fetched
with its stored vector, and each document gets, for the query vector ``q``, the scores below.
Early fusion searches the document index instead of the item index when it holds the query's
snapshot at its weights (``storage.docindex``: one fused vector per document, so its candidates
are the best documents by early score itself); everything after the candidates is the same.

* ``s_image``, ``s_text``: the cosine of ``q`` with its image part and with its text part (the
  best one where a document has several);
* ``late``: ``(w_i s_image + w_t s_text) / (w_i + w_t)`` (a document with one part: that part's
  cosine);
* ``early``: ``q . normalise(w_i v_image + w_t v_text)``: the cosine with the document's fused
  vector, ``(w_i s_image + w_t s_text) / |w_i v_image + w_t v_text|``;
* ``rrf``: ``1/(K + rank by s_image) + 1/(K + rank by s_text)`` among the candidates (K = 60);
* ``none``: every item stands alone, scored by its cosine (a video by its best frame).

Capture filters (dates, camera, place) restrict the vector candidates to the items that pass
(``candidates.Candidates``, as a plain search), and a document passes as the part it is shown
by (its image, else its text); ``IndexSearcher`` widens the pool (x4) until k hits, or
k near-duplicate groups, survive.

``mode="hybrid"`` fuses the vector ranking with the BM25 ranking by reciprocal rank
(``1/(K + vector rank) + 1/(K + word rank)``); words found only by BM25 are scored by their
stored vectors too, so they get their true vector rank among the candidates. A query term that
names one thing (``exact_terms``: a code such as ``SKU-1002``, a file name) puts the units
holding it as a phrase ahead of all others (``EXACT_BONUS``): by rank fusion alone, a code among
words every document holds would lose to the best vector match. ``lexical`` ranks by BM25 alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import QueryError
from ..fsutil import path_fields
from ..media.capabilities import IMAGE, TEXT, capabilities, has_moments, on_side, with_moments
from ..media.documents import doc_key, is_image_part, picture_of, record_of, source_path
from ..storage.store import Snapshot, vectors_from_blobs
from .query import Hits, hit_of
from .candidates import EXACT
from .calibration import cutoff_z
from ..storage.lexical import query_words
from .request import FUSIONS, MODES, Ranking

# Reciprocal rank fusion's constant (Cormack et al. 2009): ranks beyond the first few count
# little, so one list's first hit is not drowned by the other's long tail.
RRF_K = 60
# Candidates per search: the vector index's best POOL_FACTOR x k (at least MIN_POOL), and as
# many BM25 matches; their documents' other parts are fetched from the catalogue.
MIN_POOL = 50
POOL_FACTOR = 5
MOMENTS = with_moments()  # a file of moments is one document: its key's second part names the modality
IMAGE_SIDE = on_side(IMAGE)  # pictures and video frames
PICTURES = on_side(IMAGE, in_documents=True)  # what a document's picture (a file, a record's image) can be
TEXT_SIDE = on_side(TEXT)


def pool_size(k: int) -> int:
    return max(MIN_POOL, POOL_FACTOR * k)


@dataclass
class Part:
    row: Any  # ItemRow
    cosine: float
    vector: np.ndarray | None = None
    z: float | None = None  # calibrated score (None: no calibration for its pair)
    score: float = 0.0  # what fusion uses: the calibrated score when asked, else the cosine


@dataclass
class Unit:
    """One ranked thing: a document (fusion) or an item (none)."""

    key: tuple
    parts: list[Part] = field(default_factory=list)
    lexical: float | None = None  # best BM25 score of its parts
    record: dict | None = None  # the JSONL record whose image it shows (``documents.record_of``)
    vector_score: float | None = None
    score: float = 0.0
    _best: dict = field(default_factory=dict, repr=False, compare=False)

    def best(self, side: tuple[str, ...]) -> Part | None:
        """Its best-scoring part of ``side``'s modalities (kept once its parts are complete:
        whoever replaces ``parts`` clears ``_best``)."""
        if side not in self._best:
            found = [p for p in self.parts if (p.row.modality in side)]
            self._best[side] = max(found, key=lambda p: p.score) if found else None
        return self._best[side]

    @property
    def image(self) -> Part | None:
        return self.best(IMAGE_SIDE)

    @property
    def text(self) -> Part | None:
        return self.best(TEXT_SIDE)

    @property
    def representative(self) -> Part:
        return self.image or self.text or self.parts[0]


def fuse_scores(s_image: float | None, s_text: float | None, fusion: str, weights: tuple[float, float],
                part_cosine: float | None = None) -> float:
    """A document's late or early fusion score from its parts' cosines (``part_cosine``: the
    cosine of its image vector with its text vector, early fusion only)."""
    wi, wt = weights
    if s_image is None or s_text is None:
        return float(s_image if s_text is None else s_text)
    if fusion == "late":
        return (wi * s_image + wt * s_text) / (wi + wt)
    if fusion == "early":
        norm = math.sqrt(max(wi * wi + wt * wt + 2 * wi * wt * float(part_cosine), 1e-12))
        return (wi * s_image + wt * s_text) / norm
    raise ValueError(fusion)


def rrf(ranks: list[int | None]) -> float:
    """Reciprocal rank fusion of 1-based ranks (None: absent from that list)."""
    return sum(1.0 / (RRF_K + r) for r in ranks if r is not None)


def _ranks(units: list[Unit], score: Callable[[Unit], float | None]) -> dict[int, int]:
    """1-based rank of each unit (by index) among those with a score, best first."""
    scored = [(s, i) for i, u in enumerate(units) if (s := score(u)) is not None]
    scored.sort(key=lambda x: (-x[0], x[1]))
    return {i: r for r, (_, i) in enumerate(scored, start=1)}


@dataclass
class Pool:
    """The ranked units of one query from a pool of ``size`` candidates, and whether a larger
    pool could add any (``exhausted``: every source returned fewer than it was asked for)."""

    units: list[Unit]
    size: int
    exhausted: bool


def search(snap: Snapshot, vector: np.ndarray, query_text: str | None, size: int, keep: Callable[[Any], bool],
           options: Ranking, calibration: Any = None, query_modality: str = TEXT,
           wanted: Any = None, source: Any = None, documents: Any = None) -> Pool:
    """Units ranked as ``options`` say, best first, from ``size`` vector candidates (and as
    many BM25 matches). ``keep`` filters item rows (type, folder, query items): a document keeps
    the parts that pass. ``wanted`` (``filters.Filters``) applies to each document as its
    representative shows it (its image, else its text: a photo is dated, placed and given a
    camera by its picture, never by its caption); ``source`` (``candidates.Candidates``) gives
    the vector candidates with the filter pushed into the search. ``documents``: the document
    index (``storage.docindex``, early fusion only) to take the vector candidates from instead
    of the item index; each candidate is its document's representative item (its image, else
    its text, or a video frame), and its document is read and scored as on the item path."""

    reader = snap.reader
    cosines: dict[int, float] = {}
    pool_rows: dict[int, Any] = {}
    exhausted = True
    fused = options.fusion != "none"
    total = source.total if source is not None else snap.total
    if documents is not None:
        allowed = source.allowed if source is not None else None
        total = len(allowed) if allowed is not None else documents.ntotal
    fetch = min(total, size)
    searching = pool = None
    parts: dict[tuple, list[Any]] = {}  # documents' parts (with vectors) by key
    looked_up: set[tuple] = set()  # the keys whose parts were read
    if options.mode == "hybrid" and fetch > 0:
        # The vector index searches in a thread while BM25 and its rows are read here: FAISS
        # and SQLite both release the GIL, so on two cores the words cost little wall time. The
        # search is over before this snapshot (whose read lock keeps the vector index
        # unchanged) can end.
        searching = _searcher().submit(_vector_pool, snap, source, vector, fetch, documents)
    elif options.mode == "vector" and fetch > 0:
        pool = _vector_pool(snap, source, vector, fetch, documents)
    try:
        lexical: dict[int, float] = {}
        lexical_rows: dict[int, Any] = {}
        if options.mode != "vector":
            if not query_text:
                raise QueryError(f"--mode {options.mode} needs words in the query (an image alone has none)")
            found = reader.lexical_search(query_text, size, every_word=options.mode == "lexical")
            exhausted = len(found) < size
            rows = reader.places_by_id([i for i, _ in found], vectors=not fused)
            for item_id, score in found:
                row = rows.get(item_id)
                if row is not None and keep(row):
                    lexical[item_id] = score
                    lexical_rows[item_id] = row
            if fused:  # their documents' parts too, while the vector search runs
                parts.update(reader.parts_of({k for k in (doc_key(r.path, r.locator, r.modality)
                                                           for r in lexical_rows.values()) if k[1] not in MOMENTS},
                                             vectors=True))
                looked_up.update(doc_key(r.path, r.locator, r.modality) for r in lexical_rows.values())
    finally:
        if searching is not None:
            pool = searching.result()
    unkept: set[tuple] = set()  # documents found by their representative, which ``keep`` drops
    if pool is not None:
        scores, ids = pool
        exhausted = exhausted and (fetch >= total or len(ids) < fetch)
        # Their vectors with them when the search gave no exact cosine and no document read follows.
        rows = reader.places_by_id(ids.tolist(), vectors=scores is None and not fused)
        for n, item_id in enumerate(ids.tolist()):
            row = rows.get(item_id)
            if row is not None and keep(row):
                if scores is not None:
                    cosines[item_id] = float(scores[n])
                pool_rows[item_id] = row
            elif row is not None and documents is not None and capabilities(row.modality).in_documents:
                unkept.add(doc_key(row.path, row.locator, row.modality))  # its other parts may pass
    for item_id, row in lexical_rows.items():
        pool_rows.setdefault(item_id, row)

    # Group into units; fetch the other parts of each document.
    units: dict[tuple, Unit] = {key: Unit(key) for key in unkept}
    part_of: dict[int, tuple] = {}
    for item_id, row in pool_rows.items():
        key = doc_key(row.path, row.locator, row.modality) if fused else (
            (row.path, row.modality) if has_moments(row.modality) else ("item", item_id))
        part_of[item_id] = key
        units.setdefault(key, Unit(key))
    rows_by_id = dict(pool_rows)
    blobs = {i: row.vector for i, row in rows_by_id.items() if row.vector is not None}
    if fused:
        parts.update(reader.parts_of([key for key in units if key[1] not in MOMENTS and key not in looked_up],
                                     vectors=True))
        for key, rows in parts.items():
            for row in rows:
                if row.vector is not None and row.id in rows_by_id:
                    blobs.setdefault(row.id, row.vector)
                if keep(row) and row.id not in rows_by_id:
                    rows_by_id[row.id] = row
                    part_of[row.id] = key
    # Vectors: every part's (fusion needs them all for exact scores), or only those of items
    # BM25 found that the vector pool did not hold.
    # Read with the places above where they could be; any others here (a video's frames).
    for item_id, blob in reader.vectors_by_id([i for i in rows_by_id if i not in blobs and (fused or i not in cosines)]):
        blobs[item_id] = blob
    vectors: dict[int, np.ndarray] = {}
    read = [(i, b) for i, b in blobs.items() if len(b) == snap.store.dim * 4]
    if read:
        matrix = vectors_from_blobs([b for _, b in read], snap.store.dim)
        sims = matrix @ np.asarray(vector, np.float32).reshape(-1)
        for (item_id, _), v, s in zip(read, matrix, sims.tolist()):
            vectors[item_id] = v
            cosines.setdefault(item_id, float(s))
    for item_id, row in rows_by_id.items():
        if item_id not in cosines:
            continue  # no vector (yet): not rankable
        unit = units[part_of[item_id]]
        part = Part(row, cosines[item_id], vectors.get(item_id))
        background = calibration.background(query_modality, row.modality) if calibration is not None else None
        if background is not None:
            part.z = background.z(part.cosine)
        part.score = part.z if options.calibrated and part.z is not None else part.cosine
        unit.parts.append(part)
        if item_id in lexical:
            unit.lexical = max(lexical[item_id], unit.lexical if unit.lexical is not None else -math.inf)
    _one_per_picture(reader, units)
    # In id order: ties in a ranking (copies of one file score alike) go to the lowest id, whatever
    # order the candidates came in.
    ranked = sorted((u for u in units.values() if u.parts), key=lambda u: u.representative.row.id)
    if wanted is not None and wanted.active:
        ranked = [u for u in ranked if wanted.matches(u.representative.row)]
    if options.cutoff is not None:
        ranked = [u for u in ranked if _passes(u, options.cutoff, calibration, query_modality)]
    _vector_scores(ranked, options)
    if options.mode == "vector":
        for u in ranked:
            u.score = u.vector_score
    else:
        vrank = _ranks(ranked, lambda u: u.vector_score)
        lrank = _ranks(ranked, lambda u: u.lexical)
        for i, u in enumerate(ranked):
            if options.mode == "lexical":
                u.score = u.lexical if u.lexical is not None else -math.inf
            else:
                u.score = rrf([vrank.get(i), lrank.get(i)])
        if options.mode == "lexical":
            ranked = [u for u in ranked if u.lexical is not None]
        elif terms := exact_terms(query_text):
            found = [u for u in ranked if u.lexical is not None]
            holders = reader.lexical_holding(terms, [p.row.id for u in found for p in u.parts])
            for u in found:
                if any(p.row.id in holders for p in u.parts):
                    u.score += EXACT_BONUS
    ranked.sort(key=lambda u: (-u.score, -(u.vector_score or 0.0)))  # stable: ties stay in id order
    return Pool(ranked, size, exhausted)


def _one_per_picture(reader: Any, units: dict[tuple, Unit]) -> None:
    """Join the units that show one picture: a JSONL record's image part names a file that is
    indexed too (or that another record names). The unit holding the file keeps it as its image
    and takes the record's other parts (its text); the record's own image part, the same
    picture, is dropped. The kept unit names the record (``Unit.record``)."""

    records = [p.row.id for u in units.values() for p in u.parts if p.row.modality in PICTURES
               and is_image_part(p.row.locator)]
    if not records:
        return
    full = reader.rows_by_id(records)  # their meta: the picture each names
    picture: dict[int, str] = {}
    for u in units.values():
        for p in u.parts:
            if p.row.modality in PICTURES:
                name = picture_of(full[p.row.id]) if p.row.id in full else p.row.path
                if name is not None:
                    picture[p.row.id] = name
    # Units showing a file first, so a record joins the file's unit (then by id: deterministic).
    order = sorted((u for u in units.values() if u.parts),
                   key=lambda u: (all(is_image_part(p.row.locator) for p in u.parts if p.row.id in picture),
                                  min(p.row.id for p in u.parts)))
    owner: dict[str, Unit] = {}
    for unit in order:
        shown = [picture[p.row.id] for p in unit.parts if p.row.id in picture]
        into = next((owner[name] for name in shown if name in owner and owner[name] is not unit), None)
        for p in unit.parts:
            if p.row.id in full and unit.record is None:
                unit.record = record_of(full[p.row.id])
        if into is None:
            for name in shown:
                owner.setdefault(name, unit)
            continue
        into.parts.extend(p for p in unit.parts if picture.get(p.row.id) not in shown)
        into.lexical = max((x for x in (into.lexical, unit.lexical) if x is not None), default=None)
        into.record = into.record or unit.record
        into._best.clear()
        unit.parts = []  # dropped: units without parts are never ranked


_SEARCHER: ThreadPoolExecutor | None = None


def _searcher() -> ThreadPoolExecutor:
    """The threads hybrid queries' vector searches run in (two: a server answers queries at once)."""
    global _SEARCHER
    if _SEARCHER is None:
        _SEARCHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mmsearch-vectors")
    return _SEARCHER


def _vector_pool(snap: Snapshot, source: Any, vector: np.ndarray, fetch: int,
                 documents: Any = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The best ``fetch`` vector candidates: (exact cosines or None, ids). From a lossy index,
    ids only: their exact cosines come from the stored vectors read for every part anyway (one
    read instead of the snapshot's re-ranking read and that one). From the document index
    (``documents``), the representatives' ids only: its scores are fused cosines, not theirs."""
    if documents is not None:
        _, ids = documents.search(vector, fetch, allowed=source.allowed if source is not None else None)
        return None, ids
    if source is not None and source.mode == EXACT:
        return source.fetch(fetch)
    allowed = source.allowed if source is not None else None
    if snap.vectors.lossy:
        _, ids = snap.vectors.search(vector, fetch, allowed=allowed)
        return None, ids
    return snap.search(vector, fetch, allowed=allowed)


def with_rows(reader: Any, units: list[Unit]) -> list[Unit]:
    """``units`` with their parts' full item rows (text, meta, sizes) in place of the places
    ranking needed (read for the hits shown only)."""

    rows = reader.rows_by_id([p.row.id for u in units for p in u.parts])
    for unit in units:
        unit.parts = [dataclasses.replace(p, row=rows[p.row.id]) for p in unit.parts if p.row.id in rows]
        unit._best.clear()
    return [u for u in units if u.parts]


def _vector_scores(units: list[Unit], options: Ranking) -> None:
    weights = (float(options.image_weight), float(options.text_weight))
    if options.fusion in ("none",):
        for u in units:
            u.vector_score = max(p.score for p in u.parts)
        return
    if options.fusion == "rrf":
        by_image = _ranks(units, lambda u: u.image.score if u.image else None)
        by_text = _ranks(units, lambda u: u.text.score if u.text else None)
        for i, u in enumerate(units):
            u.vector_score = rrf([by_image.get(i), by_text.get(i)])
        return
    for u in units:
        image, text = u.image, u.text
        between = None
        if options.fusion == "early" and image is not None and text is not None:
            between = float(image.vector @ text.vector) if image.vector is not None and text.vector is not None else 0.0
        u.vector_score = fuse_scores(image.score if image else None, text.score if text else None,
                                     options.fusion, weights, between)


def _passes(unit: Unit, cutoff: float | str, calibration: Any, query_modality: str) -> bool:
    """Whether any part of ``unit`` reaches the cutoff of its modality pair."""
    for part in unit.parts:
        background = calibration.background(query_modality, part.row.modality) if calibration is not None else None
        threshold = cutoff_z(cutoff, background)
        if threshold is not None and part.z is not None and part.z >= threshold:
            return True
    return False


# Hybrid ranking: a unit holding one of the query's exact terms scores this much more than its
# reciprocal-rank score (at most 2/61), so it ranks ahead of every unit that holds none.
EXACT_BONUS = 1.0
_FILE_NAME = re.compile(r"\w\.[A-Za-z0-9]{2,5}$")


def exact_terms(query_text: str | None) -> list[str]:
    """The query's terms that name one thing (an invoice or product number, a file name): a
    whitespace-separated term holding a digit and at least three letters or digits
    (``INV-2024-0042``, ``SKU-1002``, ``IMG_0042``, ``2019``), or a name with an extension
    (``holiday.mp4``). ``42`` or ``shoe`` are not: they describe."""
    terms = []
    for term in (query_text or "").split():
        alnum = sum(ch.isalnum() for ch in term)
        if (any(ch.isdigit() for ch in term) and alnum >= 3) or _FILE_NAME.search(term):
            terms.append(term)
    return terms


def matched(unit: Unit, query_text: str | None) -> dict[str, Any]:
    """What a hit matched: its image and text parts with their cosines, and the query's words
    found in its texts and names."""
    out: dict[str, Any] = {}
    image, text = unit.image, unit.text
    if image is not None:
        row = image.row
        out["image"] = {"id": row.id, "cosine": round(image.cosine, 6),
                        **path_fields(source_path(row.path, row.locator, row.meta))}
        if image.z is not None:
            out["image"]["calibrated"] = round(image.z, 4)
    if text is not None:
        row = text.row
        out["text"] = {"id": row.id, "cosine": round(text.cosine, 6), "text": row.text,
                       "source": "caption" if row.locator == "caption" else "record" if row.locator else "sidecar"
                       if image is not None else "file"}
        if text.z is not None:
            out["text"]["calibrated"] = round(text.z, 4)
    if unit.lexical is not None and query_text:
        present = set()
        for p in unit.parts:
            meta = p.row.meta if isinstance(p.row.meta, dict) else {}
            fields = [p.row.text or "", p.row.path, *(v for v in meta.values() if isinstance(v, str))]
            present.update(query_words(" ".join(fields)))
        out["words"] = [w for w in dict.fromkeys(query_words(query_text)) if w in present]
    return out


def to_hits(units: list[Unit], k: int, query_text: str | None, min_score: float | None, options: Ranking):
    """The first ``k`` units as ``Hits`` (each shown by its image part, else its text part),
    with what matched; units scoring below ``min_score`` are left out."""
    hits = Hits()
    for unit in units:
        if min_score is not None and unit.score < min_score:
            break
        part = unit.representative
        hit = hit_of(len(hits) + 1, unit.score, part.row)
        hit.cosine = part.cosine
        hit.calibrated = part.z
        hit.record = unit.record or hit.record
        if not options.plain:
            hit.matched = matched(unit, query_text)
        hits.append(hit)
        if len(hits) == k:
            break
    return hits


__all__ = ["FUSIONS", "MODES", "Ranking", "Unit", "fuse_scores", "is_image_part", "matched", "rrf", "search"]
