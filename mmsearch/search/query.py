"""Query terms and hits.

A query is a list of weighted terms, each a text, an image file or an indexed item id
("more like this"). On the command line they read like rclip's: ``"2:beach" + ./dog.jpg - people``
(``+``/``-`` between terms, ``-`` subtracts the next term, ``W:`` sets a weight). The query vector
is the normalised weighted sum of the normalised term embeddings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..media.extensions import EXTENSIONS, HEIF_EXTENSIONS, VIDEO_EXTENSIONS
from ..errors import QueryError
from ..filters import item_date, iso
from ..fsutil import path_fields
from ..media.capabilities import has_moments
from ..media.documents import record_of, source_path
from ..media.exif import camera_name

TEXT, IMAGE, ITEM = "text", "image", "item"
TYPES = ("all", "image", "text", "video")

_WEIGHT_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)):(.*)$", re.S)
_INLINE_OP_RE = re.compile(r"\s+([+-])\s+")


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: ``kind`` is 'text', 'image' or 'item' (an item id, as text).

    An image term's ``value`` is a file path, or an image in memory: encoded bytes (decoded like
    an indexed file, within the same pixel cap) or a decoded ``PIL.Image.Image``.
    """

    kind: str
    value: Any
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in (TEXT, IMAGE, ITEM):
            raise QueryError(f"unknown query term kind {self.kind!r}")
        if self.kind == TEXT and (not isinstance(self.value, str) or not self.value.strip()):
            raise QueryError("empty text in query")
        if self.kind == ITEM and not isinstance(self.value, (str, int)):
            raise QueryError(f"an item term needs an item id, got {type(self.value).__name__}")
        if not np.isfinite(self.weight):
            raise QueryError(f"weight of {self.value!r} is not a finite number")

    @property
    def in_memory(self) -> bool:
        """True for an image given as bytes or a decoded image rather than a path."""
        return self.kind == IMAGE and not isinstance(self.value, (str, os.PathLike))


@dataclass(kw_only=True)
class Item:
    """One indexed item: what the catalogue stores of it (not its vector).

    ``path`` is the exact file name (a ``str`` with Python's surrogate escapes where the name
    is not UTF-8). The URL fields are filled by the HTTP client (``mmsearch.client``).
    """

    id: int
    modality: str
    path: str
    locator: str = ""
    text: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] | None = None
    # Videos: the moment (seconds from the start) this item or hit stands for, and for a hit
    # the segment of neighbouring frames that match almost as well (None for other items).
    t: float | None = None
    start: float | None = None
    end: float | None = None
    # When, where and with what it was taken (``mmsearch.filters``): ISO date-time (wall clock)
    # and its source ('exif', 'container' for a video's tags, or 'file': the file's time),
    # camera "Make Model", GPS position in decimal degrees.
    taken_at: str | None = None
    date_source: str | None = None
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    thumbnail_url: str | None = None
    file_url: str | None = None
    similar_url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields. ``path`` is valid UTF-8 (readable form); a name that is not valid
        UTF-8 also gets ``path_bytes``, the exact name in base64 (see ``fsutil.path_fields``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _URLS and not (f.name in _OPTIONAL and getattr(self, f.name) is None)}
        data.update(path_fields(self.path))
        data.update({name: getattr(self, name) for name in _URLS if getattr(self, name) is not None})
        return data


_URLS = ("thumbnail_url", "file_url", "similar_url")
_OPTIONAL = ("t", "start", "end", "taken_at", "date_source", "camera", "lat", "lon")  # left out when None


@dataclass(kw_only=True)
class Hit(Item):
    """One search result: an item, its rank and its score (cosine similarity)."""

    rank: int
    score: float
    # With ``dedup``: ids of the near-duplicates of this hit that were left out of the results.
    duplicates: list[int] | None = None
    # With fusion, a lexical mode or calibration (``search.fusion``): the raw cosine of this
    # item with the query, its calibrated score, and what matched: ``{"image": {"id", "cosine",
    # ...}, "text": {...}, "words": [...]}``.
    cosine: float | None = None
    calibrated: float | None = None
    matched: dict[str, Any] | None = None
    # A picture that a JSONL record names: that record, ``{"path": the .jsonl file, "line": "N"}``
    # (the hit is the picture file's item when the file is indexed too: one picture, one hit).
    record: dict[str, str] | None = None
    # When the index has several embedding spaces and more than one answered: the space whose
    # store the id belongs to (``search.spaces``; what each space scored is in ``matched``).
    space: str | None = None

    @property
    def file(self) -> str:
        """The file this hit shows: its own, or for a record's image the picture file it names."""
        return source_path(self.path, self.locator, self.meta)

    def as_dict(self) -> dict[str, Any]:
        data = {"rank": self.rank, "score": round(float(self.score), 6)}
        data.update({k: v for k, v in super().as_dict().items()
                     if k not in ("rank", "score", "duplicates", "record", *_FUSED)})
        if self.duplicates is not None:
            data["duplicates"] = list(self.duplicates)
        if self.record is not None:
            data["record"] = {**path_fields(self.record["path"]), "line": self.record["line"]}
        for name in _FUSED:
            value = getattr(self, name)
            if value is not None:
                data[name] = round(float(value), 6) if isinstance(value, float) else value
        return data


_FUSED = ("cosine", "calibrated", "matched", "space")


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


class Hits(list):
    """Search results: a list of ``Hit``, best first. When it is empty, ``why_empty`` says why
    (nothing scored above ``min_score``, no item under the folder, none of the type...)."""

    why_empty: str | None = None

    def __init__(self, hits=(), why_empty: str | None = None):
        super().__init__(hits)
        self.why_empty = why_empty


def _looks_like_image(value: str) -> bool:
    return os.path.splitext(value)[1].lower() in (EXTENSIONS | HEIF_EXTENSIONS)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(("~", ".")) or (os.altsep is not None and os.altsep in value)


def classify(value: str, force: str | None = None, names_are_words: bool = False) -> str:
    """'image' or 'text' for a raw term; ``force`` ('image'/'text') overrides detection. A term
    named like an image file (``nope.jpg``) that does not exist is an error (a mistyped name would
    otherwise search for its letters), unless ``force`` is 'text' or ``names_are_words`` (the
    lexical modes, where a file name is something to look for)."""
    if force == TEXT:
        return TEXT
    expanded = os.path.expanduser(value)
    if force == IMAGE:
        if not os.path.isfile(expanded):
            raise QueryError(f"image not found: {value}")
        return IMAGE
    if (os.path.splitext(value)[1].lower() in VIDEO_EXTENSIONS
            and (os.path.isfile(expanded) or _looks_like_path(value))):
        raise QueryError(f"{value} is a video: query with a still from it (an image file) or with words; "
                         "'more like this' on a video hit (the page's Similar, Engine.similar) finds related items")
    if _looks_like_image(value) and (os.path.isfile(expanded) or _looks_like_path(value) or not names_are_words):
        if not os.path.isfile(expanded):
            raise QueryError(f"image not found: {value} (a term named like an image is read as a file: "
                             "to search for these words, add --text)")
        return IMAGE
    return TEXT


def _split_inline(tokens: Sequence[str]) -> list[str]:
    """Turn ``["a + b", "-", "c"]`` into ``["a", "+", "b", "-", "c"]``."""
    out: list[str] = []
    for token in tokens:
        if token in ("+", "-"):
            out.append(token)
            continue
        out.extend(part for part in _INLINE_OP_RE.split(token) if part.strip())
    return out


def parse_query(tokens: Sequence[str] | str, force: str | None = None, names_are_words: bool = False) -> list[QueryTerm]:
    """Parse command-line style query tokens into weighted terms (``names_are_words``: see
    ``classify``)."""
    if isinstance(tokens, str):
        tokens = [tokens]
    if force not in (None, TEXT, IMAGE):
        raise QueryError(f"cannot force term type {force!r}")
    pieces = _split_inline(tokens)
    terms: list[QueryTerm] = []
    sign = 1.0
    expect_term = True
    for piece in pieces:
        if piece in ("+", "-"):
            if not expect_term and terms:
                sign = -1.0 if piece == "-" else 1.0
                expect_term = True
                continue
            if piece == "-" and not terms:
                sign = -1.0
                continue
            raise QueryError(f"unexpected {piece!r} in query: an operator must stand between two terms")
        weight = 1.0
        value = piece
        match = _WEIGHT_RE.match(piece)
        if match and match.group(2).strip():
            weight, value = float(match.group(1)), match.group(2)
        value = value.strip()
        if not value:
            raise QueryError("empty term in query")
        terms.append(QueryTerm(classify(value, force, names_are_words), value, sign * weight))
        sign, expect_term = 1.0, False
    if not terms:
        raise QueryError("empty query: give a text, an image path, or both")
    if expect_term:
        raise QueryError("query ends with an operator: add a term after it")
    if not any(term.weight > 0 for term in terms):
        raise QueryError("query needs at least one term with a positive weight")
    return terms


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Normalised weighted sum of normalised vectors (in float64, the weights scaled by the
    largest: only their ratios matter, and no finite weight overflows)."""
    w = np.asarray(weights, np.float64)
    peak = float(np.abs(w).max()) if len(w) else 0.0
    total = ((w / peak)[:, None] * np.asarray(vectors, np.float64)).sum(axis=0) if peak > 0 else np.zeros(1)
    norm = float(np.linalg.norm(total))
    if not norm >= 1e-6:  # NaN too
        raise QueryError("the query terms cancel out: change the weights")
    return (total / norm).astype(np.float32)


def unit_vector(vector: Any, name: str = "query vector") -> np.ndarray:
    """``vector`` (any sequence of numbers) at unit length, as float32: computed in float64 after
    dividing by its largest component, so that no finite input overflows (components of 3e38 or
    1e308 normalise like any others). QueryError for a non-finite component or the zero vector."""
    x = np.asarray(vector, np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise QueryError(f"{name}: every component must be a finite number")
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak == 0.0:
        raise QueryError(f"{name} is the zero vector: it has no direction to search")
    x = x / peak
    return (x / np.linalg.norm(x)).astype(np.float32)


def query_image_paths(terms: Sequence[QueryTerm]) -> set[str]:
    return {os.path.abspath(os.path.expanduser(os.fspath(t.value))) for t in terms if t.kind == IMAGE and not t.in_memory}


# -- hits and items from stored rows: the one place they are made (search and fusion alike) -------
def row_fields(row: Any) -> dict[str, Any]:
    """An ``Item``'s fields from a stored row (``storage.ItemRow``)."""
    moment = (row.meta or {}).get("t") if has_moments(row.modality) else None
    when, source = item_date(row)
    return dict(id=row.id, modality=row.modality, path=row.path, locator=row.locator, text=row.text,
                width=row.width, height=row.height, meta=row.meta, t=moment, taken_at=iso(when),
                date_source=source, camera=camera_name(row.camera_make, row.camera_model), lat=row.lat, lon=row.lon)


def item_of(row: Any) -> Item:
    """The ``Item`` a stored row shows."""
    return Item(**row_fields(row))


def hit_of(rank: int, score: float, row: Any) -> Hit:
    """A hit at ``rank`` with ``score`` shown by a stored row."""
    return Hit(rank=rank, score=float(score), record=record_of(row), **row_fields(row))
