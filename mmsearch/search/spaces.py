"""Embedding spaces: a query is encoded into every space of the index that can take it, and
hits from several spaces merge by calibrated score.

A space is a model, the modalities it embeds, its vector index and its query encoders; here it
is seen through its searcher (``IndexSearcher``, which owns the vector index through its store
and the query encoder) plus what it takes. The index's own space (CLIP: images, texts, video
frames) is the first; another (audio, with its own model) is a second store under the index's
``spaces/`` folder. Cosines of two models are not comparable, so when several spaces answer,
each ranks by its own calibrated score (``search.calibration``: a cosine against that space's
background) and the merge compares those. A file part found in several spaces is one hit, shown
by its best space, and ``hit.matched["spaces"]`` says what each space scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import QueryError
from .query import Hit, Hits, QueryTerm
from .request import SearchRequest
from .searcher import IndexSearcher


@dataclass(frozen=True)
class Space:
    """One embedding space of an index, as search sees it."""

    name: str
    modalities: tuple[str, ...]  # what its vectors embed
    takes: frozenset[str]  # the query term kinds its encoders take ('text', 'image', 'item')
    searcher: IndexSearcher
    primary: bool = False  # the index's own space: its item ids are the index's
    # The primary space's: the ids of file parts (path, locator) its catalogue holds.
    locate: Callable[[list[tuple[str, str]]], dict[tuple[str, str], int]] | None = None

    def can_take(self, terms: Sequence[QueryTerm]) -> bool:
        return all(term.kind in self.takes for term in terms)


def search(spaces: Sequence[Space], request: SearchRequest) -> Hits:
    """The request's hits from every space that takes all its terms: as that space ranks when one
    does; merged by calibrated score when several do."""
    taking = [space for space in spaces if space.can_take(request.terms)]
    if not taking:
        kinds = ", ".join(sorted({term.kind for term in request.terms}))
        raise QueryError(f"no embedding space of this index takes {kinds} queries")
    if len(taking) == 1:
        return taking[0].searcher.search(request)
    wanted = [space for space in taking if request.type == "all" or request.type in space.modalities]
    if len(wanted) == 1:
        return wanted[0].searcher.search(request)
    calibrated = request.but(ranking=dataclasses.replace(request.ranking, calibrated=True))
    return merge([(space, space.searcher.search(calibrated)) for space in wanted or taking], request.k)


def merge(answers: Sequence[tuple[Space, Hits]], k: int) -> Hits:
    """Hits of several spaces, each scored by its calibrated score, as one ranking: a file part
    (its path and locator; a file of moments as a whole) found by several spaces is one hit,
    shown by the space that scored it highest (``hit.space``), naming every space's scores in
    ``matched["spaces"]``. Hits with no calibrated score (a pair the space could not calibrate)
    rank after those with one: their cosine is on no common scale. Ids are always the index's own
    (the primary space's): a part only another space ranked is looked up in the index's
    catalogue, and one the index does not hold is left out (its id would name another item).
    A part that a kept hit lists among its near-duplicates (``dedup``) stays collapsed."""
    best: dict[tuple[str, str], Hit] = {}
    reasons: dict[tuple[str, str], dict[str, dict]] = {}
    own_id: dict[tuple[str, str], int] = {}
    collapsed: set[int] = set()  # the index's ids that its own answer collapsed into another hit
    for space, hits in answers:
        for hit in hits:
            key = (hit.file, hit.locator if hit.t is None else "")
            reasons.setdefault(key, {})[space.name] = {"cosine": hit.cosine, "calibrated": hit.calibrated}
            if space.primary:
                own_id[key] = hit.id
                collapsed.update(hit.duplicates or ())
            if key not in best or _rank_key(hit) > _rank_key(best[key]):
                best[key] = dataclasses.replace(hit, space=space.name)
    primary = next((s for s, _ in answers if s.primary), None)
    missing = [key for key in best if key not in own_id]
    if primary is not None and primary.locate is not None and missing:
        own_id.update(primary.locate(missing))  # parts another space found that the index holds too
    kept = [key for key in best if key in own_id and own_id[key] not in collapsed]
    ranked = sorted(kept, key=lambda key: _rank_key(best[key]), reverse=True)[:k]
    out = Hits()
    for n, key in enumerate(ranked, 1):
        hit = best[key]
        out.append(dataclasses.replace(hit, id=own_id[key], rank=n,
                                       matched={**(hit.matched or {}), "spaces": reasons[key]}))
    if not out:
        out.why_empty = next((hits.why_empty for _, hits in answers if hits.why_empty), None)
    return out


def _rank_key(hit: Hit) -> tuple[bool, float]:
    return (hit.calibrated is not None, hit.score)


__all__ = ["Space", "merge", "search"]
