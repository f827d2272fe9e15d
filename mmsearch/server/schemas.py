"""Request and response shapes of the HTTP API (they document it in /openapi.json and /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..media.capabilities import modalities
from ..search.query import QueryTerm
from ..search.request import DEDUP_MIN_POOL, DEDUP_POOL_FACTOR, MIN_THRESHOLD, SearchRequest

MAX_UPLOADS = 4  # images in one combined query
MAX_TERMS = 16
MAX_K = 1000
MAX_TEXT_CHARS = 2000  # the tokenizer truncates long texts anyway; this only bounds the request

Modality = Literal[("all", *modalities())]  # the ``type`` a search takes: one modality, or all
Sort = Literal["relevance", "date", "date-asc"]  # mmsearch.filters.SORTS


class ItemOut(BaseModel):
    """An indexed item. ``path`` is always valid UTF-8: a file name that is not gets a readable
    form here (undecodable bytes as ``\\xNN``) and its exact bytes, base64, in ``path_bytes``."""

    id: int
    modality: str
    path: str
    path_bytes: str | None = Field(None, description="Base64 of the exact file name; only when it is not valid UTF-8")
    locator: str = ""
    text: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] | None = None
    t: float | None = Field(None, description="Videos: the moment (seconds from the start) of this frame or hit")
    start: float | None = Field(None, description="Video hits: start of the matching segment (seconds)")
    end: float | None = Field(None, description="Video hits: end of the matching segment (seconds)")
    taken_at: str | None = Field(None, description="When it was taken (ISO, wall clock): capture date, else file time")
    date_source: str | None = Field(None, description="Where taken_at comes from: exif, container (video tags) or file")
    camera: str | None = Field(None, description="Camera make and model (EXIF or video tags)")
    lat: float | None = Field(None, description="GPS latitude, decimal degrees (north positive)")
    lon: float | None = Field(None, description="GPS longitude, decimal degrees (east positive)")
    thumbnail_url: str | None = Field(None, description="JPEG thumbnail (images; videos: the frame at t)")
    file_url: str = Field(description="The original file")
    similar_url: str = Field(description="'More like this' search")


class HitOut(ItemOut):
    """A search result: an item with its rank and cosine similarity to the query."""

    rank: int
    score: float
    duplicates: list[int] | None = Field(None, description="With dedup: ids of this hit's near-duplicates left out")
    cosine: float | None = Field(None, description="With fusion, a lexical mode or calibration: the raw cosine of the item shown")
    calibrated: float | None = Field(None, description="Its calibrated score (against the index's background)")
    matched: dict[str, Any] | None = Field(None, description="What matched: the image and text parts (cosines) and the query's words found")
    record: dict[str, Any] | None = Field(None, description="A picture a JSONL record names: that record (path, path_bytes, line)")
    space: str | None = Field(None, description="When several embedding spaces answered: the space whose store the id belongs to")


class SearchOut(BaseModel):
    query: list[dict[str, Any]]
    k: int
    type: str
    min_score: float | None
    took_ms: float
    hits: list[HitOut]
    why_empty: str | None = Field(None, description="When there are no hits: why (the best score under min_score, "
                                                   "no item under the folder, none of the type)")


class HealthOut(BaseModel):
    status: str
    version: str
    model_loaded: bool
    items: int


class TermIn(BaseModel):
    """One weighted part of a combined query."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["text", "item", "image"]
    value: StrictStr | StrictInt | None = Field(None, description="text, or item id")
    upload: int | None = Field(None, ge=0, description="index into the uploaded `images` (kind 'image', multipart)")
    data: str | None = Field(None, description="the image file, base64 (kind 'image', JSON bodies)")
    weight: float = 1.0


class SearchOptions(BaseModel):
    """The options of every search (``GET /api/search``, ``/similar``, the ``POST`` body): one
    declaration, turned into the library's ``SearchRequest`` by ``to_request``."""

    k: int = Field(10, ge=1, le=MAX_K, description="Number of results")
    type: Modality = Field("all", description="Result type")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False, description="Leave out hits scoring below this cosine similarity")
    under: str | None = Field(None, max_length=4096, description="Only hits inside this folder (a path on the server)")
    dedup: bool = Field(False, description="Collapse near-duplicate hits (the best-ranked of each group stays)")
    dedup_threshold: float | None = Field(None, ge=MIN_THRESHOLD, le=1, allow_inf_nan=False, description="Cosine similarity for dedup, "
                                          f"from {MIN_THRESHOLD:g} to 1 (implies dedup) [default: 0.97]; at most "
                                          f"max({DEDUP_MIN_POOL}, {DEDUP_POOL_FACTOR} x k) hits are compared, so "
                                          "fewer than k groups may come back")
    after: str | None = Field(None, max_length=64, description="Only items taken on or after this date (YYYY-MM-DD, "
                                                               "YYYY-MM, YYYY or ISO date-time): capture date, else "
                                                               "the file's time")
    before: str | None = Field(None, max_length=64, description="Only items taken before this date (exclusive)")
    camera: str | None = Field(None, max_length=200, description="Only items from this camera: model, make or both "
                                                                 "('Pixel 7', 'Canon')")
    near: str | None = Field(None, max_length=100, description="Only items within KM of a GPS position: 'LAT,LON,KM' "
                                                               "(decimal degrees)")
    sort: Sort = Field("relevance", description="Order of the hits that pass the relevance cut (k, min_score): "
                                                "relevance, date (newest first) or date-asc")

    def filters(self) -> dict[str, Any]:
        """The capture filters and sort as ``SearchRequest.build`` takes them (blank: none)."""
        camera = self.camera if self.camera and self.camera.strip() else None
        return {"after": self.after or None, "before": self.before or None, "camera": camera,
                "near": self.near or None, "sort": self.sort}

    def dedup_option(self) -> bool | float:
        """``dedup`` as the library takes it: a threshold implies dedup."""
        return self.dedup_threshold if self.dedup_threshold is not None else self.dedup


class RankedSearchOptions(SearchOptions):
    """A search's options with how its hits are ranked (fusion, words, calibration)."""

    fusion: Literal["none", "late", "early", "rrf"] = Field("none", description="Rank documents (an image with its caption, sidecar or JSONL text) by both vectors")
    mode: Literal["vector", "lexical", "hybrid"] = Field("vector", description="vector, lexical (BM25 over words and names) or hybrid (both, by reciprocal rank)")
    image_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False, description="Weight of a document's image in late and early fusion")
    text_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False, description="Weight of a document's text in late and early fusion")
    calibrated: bool = Field(False, description="Score and rank by calibrated score (raw cosine in 'cosine')")
    cutoff: str | None = Field(None, max_length=32, description="'auto' or a calibrated score: drop hits indistinguishable from the background")

    def ranking(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RANKING}


RANKING = ("fusion", "mode", "image_weight", "text_weight", "calibrated", "cutoff")  # how hits are ranked


class TextSearchParams(RankedSearchOptions):
    """``GET /api/search``: a text and the options."""

    q: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS, description="Text to search for")


class SimilarParams(SearchOptions):
    """``GET /api/items/{id}/similar``: the options of 'more like this'."""

    include_self: bool = Field(False, description="Let the item appear in its own results")


class SearchIn(RankedSearchOptions):
    """``POST /api/search`` as JSON (``Content-Type: application/json``): the multipart form's fields,
    with images given as base64 ``data`` in image terms."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="A text term (weight 1)")
    item: int | None = Field(None, ge=0, description="An item id term (weight 1)")
    terms: list[TermIn] | None = Field(
        None,
        description='Weighted terms, e.g. [{"kind":"text","value":"beach","weight":2},'
                    '{"kind":"item","value":12,"weight":-0.5},{"kind":"image","data":"<base64>"}]. '
                    "When given, q and item are only used through it.",
    )
    include_query: bool = Field(False, description="Let query items appear in the results")


def to_request(terms: list[QueryTerm], options: SearchOptions, include_query: bool = False) -> SearchRequest:
    """The library's request for decoded ``terms`` and the options the API received (a value the
    schema let through but the library refuses, such as a bad date, is a 422 naming the field)."""
    ranking = options.ranking() if isinstance(options, RankedSearchOptions) else {}
    return SearchRequest.build(terms, k=options.k, type=options.type, min_score=options.min_score,
                               under=options.under or None, include_query=include_query,
                               dedup=options.dedup_option(), **options.filters(), **ranking)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$defs`` references replaced by the definitions (for openapi_extra)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(schema)


def search_body_openapi() -> dict[str, Any]:
    """The request body of ``POST /api/search`` for the OpenAPI document: multipart or JSON."""
    form_fields = {
        "q": {"type": "string", "maxLength": MAX_TEXT_CHARS, "description": "A text term (weight 1)"},
        "item": {"type": "integer", "minimum": 0, "description": "An item id term (weight 1)"},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": f"Uploaded query images (at most {MAX_UPLOADS})"},
        "terms": {"type": "string", "description": 'JSON list of weighted terms, e.g. [{"kind":"text","value":"beach",'
                  '"weight":2},{"kind":"item","value":12,"weight":-0.5},{"kind":"image","upload":0}]. '
                  "When given, q/item/images are only used through it."},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
        "type": {"type": "string", "enum": ["all", *modalities()], "default": "all"},
        "min_score": {"type": "number", "minimum": -1, "maximum": 1},
        "include_query": {"type": "boolean", "default": False},
        "dedup": {"type": "boolean", "default": False},
        "dedup_threshold": {"type": "number", "minimum": MIN_THRESHOLD, "maximum": 1},
        "after": {"type": "string", "description": "Only items taken on or after this date (YYYY-MM-DD...)"},
        "before": {"type": "string", "description": "Only items taken before this date (exclusive)"},
        "camera": {"type": "string", "description": "Only items from this camera: model, make or both"},
        "near": {"type": "string", "description": "Only items within KM of a GPS position: 'LAT,LON,KM'"},
        "sort": {"type": "string", "enum": ["relevance", "date", "date-asc"], "default": "relevance"},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": form_fields}},
                "application/json": {"schema": _inline_refs(SearchIn.model_json_schema())},
            },
        }
    }
