"""One search, parsed and checked once where it enters (the CLI, an HTTP schema, a Python
call) and carried to the end: ``SearchRequest``. And the ``Searcher`` protocol that ``Engine``
(in process) and ``Client`` (over HTTP) both implement, with the same signatures.

Light on purpose: the HTTP client imports this without NumPy's friends (FAISS, SQLAlchemy).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import filters as filters_mod
from ..errors import QueryError
from ..filters import Filters
from .query import ITEM, IMAGE, TEXT, TYPES, Hits, Item, QueryTerm, parse_query

if TYPE_CHECKING:  # pragma: no cover
    from ..progress import Progress
    from .query import DuplicateGroup

FUSIONS = ("none", "late", "early", "rrf")
MODES = ("vector", "lexical", "hybrid")
# The weights late and early fusion use unless told (chosen by `mmsearch eval`, BENCHMARKS.md).
DEFAULT_IMAGE_WEIGHT = 0.5
DEFAULT_TEXT_WEIGHT = 0.5

QueryInput = str | Path | QueryTerm | Sequence[str | Path | QueryTerm]

# Near-duplicates (``search.dupes``): what a threshold may be, and how much a query's collapse reads.
DEFAULT_THRESHOLD = 0.97
MIN_THRESHOLD = 0.5  # the lowest threshold taken: below it, "near-duplicate" means nothing
DEDUP_POOL_FACTOR = 4  # a query's collapse looks at most at this many times k hits...
DEDUP_MIN_POOL = 100  # ...or at this many, for small k

def check_threshold(value: Any, name: str = "threshold") -> float:
    """``value`` as a similarity threshold, or QueryError naming ``name`` and why."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QueryError(f"{name} must be a number from {MIN_THRESHOLD:g} to 1 (a cosine similarity), got {value!r}")
    if not MIN_THRESHOLD <= float(value) <= 1.0:
        raise QueryError(f"{name} must be from {MIN_THRESHOLD:g} to 1 (a cosine similarity), got {value:g}")
    return float(value)


def dedup_pool(k: int) -> int:
    """The most hits a query's collapse compares to find its k groups."""
    return max(DEDUP_MIN_POOL, DEDUP_POOL_FACTOR * int(k))


def dedup_threshold(dedup: bool | float) -> float | None:
    """The threshold a ``dedup`` argument asks for: None (off), True (the default) or a number."""
    if dedup is None or dedup is False:
        return None
    if dedup is True:
        return DEFAULT_THRESHOLD
    return check_threshold(dedup, "dedup")


def check_cutoff(value: Any) -> float | str | None:
    """'auto', a finite calibrated score, or None."""
    if value is None or value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"cutoff must be 'auto' or a calibrated score (a number), got {value!r}") from exc
    if not math.isfinite(number):
        raise QueryError(f"cutoff must be a finite number, got {value!r}")
    return number


@dataclass(frozen=True)
class Ranking:
    """How a search ranks: ``fusion`` (none, late, early, rrf), ``mode`` (vector, lexical,
    hybrid), the image and text weights of late and early fusion, ``calibrated`` (rank by
    calibrated scores, ``search.calibration``) and ``cutoff`` ('auto' or a calibrated score hits
    must reach)."""

    fusion: str = "none"
    mode: str = "vector"
    image_weight: float = DEFAULT_IMAGE_WEIGHT
    text_weight: float = DEFAULT_TEXT_WEIGHT
    calibrated: bool = False
    cutoff: float | str | None = None

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise QueryError(f"unknown fusion {self.fusion!r}: choose one of {', '.join(FUSIONS)}")
        if self.mode not in MODES:
            raise QueryError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        for name in ("image_weight", "text_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise QueryError(f"{name.replace('_', ' ')} must be a number of at least 0, got {value!r}")
        if self.image_weight + self.text_weight <= 0:
            raise QueryError("the image and text weights cannot both be 0")
        object.__setattr__(self, "cutoff", check_cutoff(self.cutoff))

    @classmethod
    def of(cls, fusion: str | None = "none", mode: str | None = "vector", image_weight: float | None = None,
           text_weight: float | None = None, calibrated: bool = False, cutoff: float | str | None = None) -> Ranking:
        """A ranking from optional values (None: the default)."""
        return cls(fusion or "none", mode or "vector",
                   DEFAULT_IMAGE_WEIGHT if image_weight is None else image_weight,
                   DEFAULT_TEXT_WEIGHT if text_weight is None else text_weight,
                   bool(calibrated), cutoff)

    @property
    def plain(self) -> bool:
        """True for the item-by-item vector ranking (no fusion, words or calibration)."""
        return self.fusion == "none" and self.mode == "vector" and not self.calibrated and self.cutoff is None


@dataclass(frozen=True)
class SearchRequest:
    """One search: its parsed terms and every option, checked.

    Build it with ``SearchRequest.build`` (the keywords of ``Engine.search``); ``Engine.search``
    and ``Client.search`` also take one directly. ``dedup`` is the similarity threshold near
    duplicates collapse at, or None.
    """

    terms: tuple[QueryTerm, ...] = ()  # none: a search by a vector the caller gives
    k: int = 10
    type: str = "all"
    min_score: float | None = None
    under: str | None = None
    include_query: bool = False
    dedup: float | None = None
    filters: Filters = field(default_factory=Filters)
    sort: str = filters_mod.RELEVANCE
    ranking: Ranking = field(default_factory=Ranking)

    def __post_init__(self) -> None:
        check_options(self.type, self.k, self.min_score, self.under)
        if self.terms and not any(term.weight > 0 for term in self.terms):
            raise QueryError("query needs at least one term with a positive weight")
        for term in self.terms:
            if term.kind == TEXT:
                filters_mod.check_text(term.value, "query text")
        filters_mod.check_sort(self.sort)

    @classmethod
    def build(
        cls,
        query: QueryInput | None,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | os.PathLike | None = None,
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
        option_prefix: str = "",
    ) -> SearchRequest:
        """Parse and check everything (see ``Engine.search``); ``query`` None: a search by a
        vector the caller gives (``Engine.search_vector``). ``option_prefix`` ('--' for the
        CLI) names the options in errors as the user typed them."""
        ranking = Ranking.of(fusion, mode, image_weight, text_weight, calibrated, cutoff)
        threshold = dedup_threshold(dedup)
        check_options(type, k, min_score, under, option_prefix)
        wanted = filters_mod.parse(after, before, camera, near, prefix=option_prefix)
        filters_mod.check_sort(sort, f"{option_prefix}sort" if option_prefix else "sort")
        terms = as_terms(query, force, names_are_words=ranking.mode != "vector") if query is not None else []
        return cls(tuple(terms), k=k, type=type, min_score=min_score,
                   under=os.fspath(under) if under is not None else None, include_query=bool(include_query),
                   dedup=threshold, filters=wanted, sort=sort, ranking=ranking)

    def but(self, **changes: Any) -> SearchRequest:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    @property
    def words(self) -> str | None:
        """The query's positive texts, for the full-text index and fusion."""
        return " ".join(term.value for term in self.terms if term.kind == TEXT and term.weight > 0) or None

    @property
    def item_ids(self) -> list[int]:
        return [int(term.value) for term in self.terms if term.kind == ITEM]


def check_options(type: str, k: int, min_score: float | None, under: Any = None, option_prefix: str = "") -> None:
    """The options every search shares: ``type``, ``k``, ``min_score`` and ``under`` (named in
    errors with ``option_prefix``, '--' on the command line)."""
    def name(field: str) -> str:
        return f"{option_prefix}{field.replace('_', '-')}" if option_prefix else field

    filters_mod.check_text(None if under is None else os.fspath(under), name("under"))
    if type not in TYPES:
        raise QueryError(f"unknown type {type!r}: choose one of {', '.join(TYPES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"{name('k')} must be an integer of at least 1, got {k!r}")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                  or not math.isfinite(min_score)):
        raise QueryError(f"{name('min_score')} must be a finite number, got {min_score!r}")


def as_terms(query: QueryInput, force: str | None = None, names_are_words: bool = False) -> list[QueryTerm]:
    """Query terms from a text (CLI syntax), a path (an image), ``QueryTerm`` objects or a list."""
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


class Searcher(ABC):
    """What a program can ask of an index, in process (``Engine``) or over HTTP (``Client``), in
    the local/remote pattern: the search methods and their options are written once, here, and
    each side implements how a checked request is answered (``search_request``) and the item
    methods, with the same signatures and return types (a test holds them equal)."""

    def search(
        self,
        query: QueryInput | SearchRequest,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | os.PathLike | None = None,
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
        paths, bytes or PIL images, item ids), a list of them, or a ``SearchRequest`` (then no
        other option: it carries its own).

        Strings are parsed like the CLI (``"2:beach + ./dog.jpg - people"``); ``force`` ('text'
        or 'image') reads every term as one kind. ``type`` restricts hits to 'image', 'text' or
        'video'; ``min_score`` drops weaker hits; ``under`` keeps hits below a folder. Images and
        items used as the query are left out of its results unless ``include_query``. ``dedup``
        collapses near-duplicate hits (True: at ``DEFAULT_THRESHOLD``; a number: at that cosine
        similarity): the best-ranked of each group stays and lists the others' ids in
        ``duplicates``; k hits are still returned while the index holds enough.

        Capture metadata filters (see ``mmsearch.filters``): ``after`` (inclusive) and
        ``before`` (exclusive) take dates (``date``, ``datetime`` or ISO text such as
        "2024-05-01") and compare with the item's capture date, or its file's time when it has
        none; ``camera`` names a camera's model, make or both ("Pixel 7", "Canon", "Google
        Pixel 7", any ASCII case); ``near`` is "LAT,LON,KM" or (lat, lon, km). ``sort``:
        'relevance', or 'date' (newest first) / 'date-asc' to order the hits that pass the
        relevance cut (``k``, ``min_score``) by date.

        ``fusion`` ('none', 'late', 'early', 'rrf') ranks documents (an image with its caption,
        sidecar or JSONL text) by both their vectors, with ``image_weight``/``text_weight``;
        ``mode`` ('vector', 'lexical', 'hybrid') adds the full-text index's BM25 ranking (see
        ``search.fusion``). ``calibrated`` ranks and scores by calibrated score
        (``search.calibration``: images and texts on one scale; the raw cosine stays in
        ``Hit.cosine``); ``cutoff`` ('auto' or a calibrated score) drops hits indistinguishable
        from the index's background.
        """
        options = dict(locals())
        del options["self"], options["query"]
        return self.search_request(request_of(query, options))

    def search_image(
        self,
        image: str | os.PathLike | bytes,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | os.PathLike | None = None,
        include_query: bool = False,
        dedup: bool | float = False,
        after: Any = None,
        before: Any = None,
        camera: str | None = None,
        near: Any = None,
        sort: str = filters_mod.RELEVANCE,
    ) -> Hits:
        """Search by one image: a file path or its encoded bytes (options as ``search``)."""
        term = QueryTerm(IMAGE, image if isinstance(image, (bytes, bytearray, memoryview)) else os.fspath(image))
        return self.search(term, k=k, type=type, min_score=min_score, under=under, include_query=include_query,
                           dedup=dedup, after=after, before=before, camera=camera, near=near, sort=sort)

    def similar(
        self,
        item_id: int,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | os.PathLike | None = None,
        include_self: bool = False,
        dedup: bool | float = False,
        after: Any = None,
        before: Any = None,
        camera: str | None = None,
        near: Any = None,
        sort: str = filters_mod.RELEVANCE,
    ) -> Hits:
        """'More like this': the items nearest to indexed item ``item_id`` (options as ``search``)."""
        return self.search(QueryTerm(ITEM, str(int(item_id))), k=k, type=type, min_score=min_score, under=under,
                           include_query=include_self, dedup=dedup, after=after, before=before, camera=camera,
                           near=near, sort=sort)

    @abstractmethod
    def search_request(self, request: SearchRequest) -> Hits:
        """The hits of a checked request."""

    @abstractmethod
    def get(self, item_id: int) -> Item | None:
        """The stored metadata of one item, or None when the index has no such item."""

    @abstractmethod
    def count(self) -> int:
        """How many items the index holds."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What is in the index: counts, roots, model, vector index, sizes."""

    @abstractmethod
    def duplicates(self, *, threshold: float | None = None, type: str = "all", limit: int | None = None,
                   progress: Progress | None = None) -> list[DuplicateGroup]:
        """Groups of near-duplicate items, largest first (at most ``limit``)."""


SEARCH_OPTIONS = ("k", "type", "min_score", "under", "include_query", "force", "dedup", "after", "before", "camera",
                  "near", "sort", "fusion", "mode", "image_weight", "text_weight", "calibrated", "cutoff")


def request_of(query: QueryInput | SearchRequest, options: dict[str, Any]) -> SearchRequest:
    """``query`` as a request: itself when it already is one (then no option may be given
    beside it: they would be silently ignored), else built from ``options``."""
    if isinstance(query, SearchRequest):
        given = {name for name, value in options.items() if value != _DEFAULTS[name]}
        if given:
            raise QueryError(f"a SearchRequest carries its own options: do not pass {', '.join(sorted(given))} beside it")
        return query
    return SearchRequest.build(query, **options)


_DEFAULTS = {"k": 10, "type": "all", "min_score": None, "under": None, "include_query": False, "force": None,
             "dedup": False, "after": None, "before": None, "camera": None, "near": None,
             "sort": filters_mod.RELEVANCE, "fusion": "none", "mode": "vector", "image_weight": None,
             "text_weight": None, "calibrated": False, "cutoff": None}

__all__ = ["FUSIONS", "MODES", "QueryInput", "Ranking", "SearchRequest", "Searcher", "as_terms", "check_cutoff",
           "check_options", "request_of"]
