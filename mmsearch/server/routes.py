"""The HTTP API's routes. Each one reads the request, calls the Engine (the server's only way to
the index) and shapes the answer; what they share lives in the app's ``ServerState``."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, Response

from .. import __version__
from ..search.dupes import MIN_THRESHOLD
from ..media import BadInput, media_registry
from ..media.documents import source_path
from ..search.query import IMAGE, ITEM, TEXT, Hit, Item, QueryTerm
from .files import MAX_THUMBNAIL_SOURCE_BYTES, file_response, open_item_file
from .responses import json_safe, text_safe
from .schemas import (MAX_UPLOADS, HealthOut, ItemOut, Modality, SearchOptions, SearchOut, SimilarParams,
                      TextSearchParams, search_body_openapi, to_request)
from .thumbs import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, SourceKey, ThumbnailCache, fit_size
from .uploads import SearchForm, UploadDecoder, UploadLimits, from_form, from_json, query_fields

PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}

@dataclass
class ServerState:
    """What the routes share: the engine, the upload limits and decoder, the thumbnail cache."""

    engine: Any
    limits: UploadLimits
    decoder: UploadDecoder
    thumbs: ThumbnailCache
    decode_slots: threading.BoundedSemaphore  # decodes at once (uploads, thumbnails): bounds memory
    static_dir: Path


def server(request: Request) -> ServerState:
    return request.app.state.server


router = APIRouter()


# -- helpers -----------------------------------------------------------------------------------
def item_out(request: Request, item: Item) -> dict[str, Any]:
    """An item or hit as JSON, with the URLs of its thumbnail, file and similar items."""
    base = f"{request.scope.get('root_path', '').rstrip('/')}/api/items/{item.id}"
    data = item.as_dict()  # path: readable UTF-8; path_bytes: the exact name, when it is not UTF-8
    data["text"] = text_safe(data["text"]) if data["text"] is not None else None
    data["locator"] = text_safe(data["locator"])
    data["meta"] = json_safe(data["meta"])
    kinds = media_registry()
    has_thumbnail = kinds.thumbnailer(item.modality) or kinds.moment_thumbnailer(item.modality)
    data["thumbnail_url"] = f"{base}/thumbnail" if has_thumbnail else None
    data["file_url"] = f"{base}/file"
    data["similar_url"] = f"{base}/similar"
    return json_safe(data)  # nested fields too (what a fused hit matched), always valid UTF-8


def parse_id(item_id: str) -> int:
    # Ids arrive as path segments; anything but a plain decimal number is an unknown item.
    if not item_id.isascii() or not item_id.isdigit() or len(item_id) > 18:
        raise HTTPException(404, f"no item with id {item_id!r}")
    return int(item_id)


def find(request: Request, item_id: str | int) -> Item:
    number = parse_id(str(item_id))
    item = server(request).engine.get(number)
    if item is None:
        raise HTTPException(404, f"no item with id {number}")
    return item


def respond(request: Request, started: float, terms: list[dict[str, Any]], hits: list[Hit],
            options: SearchOptions) -> dict[str, Any]:
    answer = {
        "query": json_safe(terms), "k": options.k, "type": options.type, "min_score": options.min_score,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
        "hits": [item_out(request, h) for h in hits],
    }
    if not hits and getattr(hits, "why_empty", None):
        answer["why_empty"] = text_safe(hits.why_empty)
    return answer


# -- pages -------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
def index_page(request: Request) -> FileResponse:
    return FileResponse(server(request).static_dir / "index.html", media_type="text/html", headers=PAGE_HEADERS)


# -- status ------------------------------------------------------------------------------------
@router.get("/api/health", response_model=HealthOut, tags=["status"])
def health(request: Request) -> dict[str, Any]:
    """Liveness: the server answers and can read its index."""
    engine = server(request).engine
    return {"status": "ok", "version": __version__, "model_loaded": engine.model_loaded or engine.warmed, "items": engine.count()}


@router.get("/api/info", tags=["status"])
def info(request: Request) -> dict[str, Any]:
    """Index statistics: counts, roots, model, vector index, sizes."""
    return json_safe(jsonable_encoder(server(request).engine.info()))


@router.post("/api/session", status_code=204, tags=["status"])
def session_cookie(request: Request) -> Response:
    """Exchange the bearer token for the page's session cookie (HttpOnly, SameSite=Strict), so
    that thumbnails and links work in a browser. Without a token on the server: nothing to do."""
    response = Response(status_code=204)
    cookie = request.scope.get("state", {}).get("session_cookie")
    if cookie:
        response.headers["Set-Cookie"] = cookie
    return response


# -- search ------------------------------------------------------------------------------------
@router.get("/api/search", response_model=SearchOut, response_model_exclude_unset=True, tags=["search"])
def search_text(request: Request, params: Annotated[TextSearchParams, Query()]) -> dict[str, Any]:
    """Search by text. The text is never read as a file path."""
    started = time.perf_counter()
    if not params.q.strip():
        raise HTTPException(422, "q: empty text")
    hits = server(request).engine.search(to_request([QueryTerm(TEXT, params.q)], params))
    return respond(request, started, [{"kind": TEXT, "value": params.q, "weight": 1.0}], hits, params)


@router.get("/api/items/{item_id}/similar", response_model=SearchOut, response_model_exclude_unset=True,
            tags=["search"])
def similar(request: Request, item_id: str, params: Annotated[SimilarParams, Query()]) -> dict[str, Any]:
    """'More like this': items nearest to an indexed item."""
    started = time.perf_counter()
    number = find(request, item_id).id
    hits = server(request).engine.search(to_request([QueryTerm(ITEM, str(number))], params, params.include_self))
    return respond(request, started, [{"kind": ITEM, "value": number, "weight": 1.0}], hits, params)


@router.post("/api/search", response_model=SearchOut, response_model_exclude_unset=True, tags=["search"],
             openapi_extra=search_body_openapi())
async def search_combined(request: Request) -> dict[str, Any]:
    """Search by uploaded image(s), text, item ids, or a weighted combination of them.

    Send ``multipart/form-data`` (files in ``images``, ``terms`` as a JSON string) or
    ``application/json`` (the same fields; image terms carry the file as base64 ``data``).
    """
    started = time.perf_counter()
    limits = server(request).limits
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    query = query_fields(request.query_params)  # as GET reads them, never ignored
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        async with request.form(max_files=MAX_UPLOADS * 4, max_fields=64) as form:
            parsed = await run_in_threadpool(from_form, form, limits.max_bytes, query)
    elif kind == "application/json" or kind.endswith("+json") or kind in ("", "text/plain"):
        # No or a plain-text content type: JSON too, as some HTTP clients send it.
        body = await request.body()
        if kind in ("", "text/plain") and not body.strip() and query:
            body = b"{}"  # everything in the query string, as a GET would send it
        if kind in ("", "text/plain") and not body.lstrip().startswith(b"{"):
            raise HTTPException(415, "send the query as multipart/form-data (fields q, item, images, terms, k, "
                                     "type, min_score, include_query, under) or as application/json")
        parsed = await run_in_threadpool(from_json, body, limits.max_bytes, query)
    else:
        raise HTTPException(415, f"unsupported content type {kind!r}: send multipart/form-data or application/json")
    return await run_in_threadpool(run_search, request, started, parsed)


def run_search(request: Request, started: float, parsed: SearchForm) -> dict[str, Any]:
    state = server(request)
    wanted = {t.upload for t in parsed.terms if t.kind == IMAGE}
    # The encoder (ONNX where exported) is asked for its input size once every upload reads as an image.
    pictures = state.decoder.decode_all(parsed.uploads, wanted, lambda: state.engine.image_encoder.image_size) \
        if wanted else {}
    terms: list[QueryTerm] = []
    described: list[dict[str, Any]] = []
    for term in parsed.terms:
        if term.kind == TEXT:
            terms.append(QueryTerm(TEXT, str(term.value), term.weight))
            described.append({"kind": TEXT, "value": term.value, "weight": term.weight})
        elif term.kind == ITEM:
            number = find(request, term.value).id
            terms.append(QueryTerm(ITEM, str(number), term.weight))
            described.append({"kind": ITEM, "value": number, "weight": term.weight})
        else:  # an uploaded image, decoded here within the upload limits
            terms.append(QueryTerm(IMAGE, pictures[term.upload], term.weight))
            described.append({"kind": IMAGE, "upload": term.upload, "filename": parsed.uploads[term.upload].name,
                              "weight": term.weight})
    hits = state.engine.search(to_request(terms, parsed.options, parsed.options.include_query))
    return respond(request, started, described, hits, parsed.options)


# -- items -------------------------------------------------------------------------------------
@router.get("/api/duplicates", tags=["items"])
def duplicates(
    request: Request,
    threshold: float | None = Query(None, ge=MIN_THRESHOLD, le=1, allow_inf_nan=False, description="Cosine similarity at or above which "
                                    f"two items are near-duplicates, from {MIN_THRESHOLD:g} to 1 [default: 0.97]"),
    type: Modality = Query("all", description="Only groups of this type"),
    limit: int = Query(100, ge=1, le=10_000, description="Groups returned at most (largest first)"),
) -> dict[str, Any]:
    """Groups of near-duplicate items, as `mmsearch dupes`: each group's keeper (largest
    resolution, then oldest file) and the others with their similarity to it. A full scan of the
    index (seconds at 100k items, minutes at 1M)."""
    started = time.perf_counter()
    groups = server(request).engine.duplicates(threshold=threshold, type=type)
    shown = groups[:limit]
    return {
        "threshold": threshold, "type": type, "groups_total": len(groups),
        "duplicates_total": sum(len(g.others) for g in groups),
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
        "groups": [{"keeper": item_out(request, g.keeper),
                    "others": [dict(item_out(request, o), similarity=round(float(sim), 6))
                               for o, sim in zip(g.others, g.similarity)]} for g in shown],
    }


@router.get("/api/items/{item_id}", response_model=ItemOut, response_model_exclude_unset=True, tags=["items"])
def item_meta(request: Request, item_id: str) -> dict[str, Any]:
    """Stored metadata of one item."""
    return item_out(request, find(request, item_id))


@router.get("/api/items/{item_id}/thumbnail", tags=["items"], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(request: Request, item_id: str,
              size: int = Query(DEFAULT_SIZE, ge=MIN_SIZE, le=MAX_SIZE,
                                description="Longest side wanted; rounded up to 64, 128, 256, 512 or 1024")) -> Response:
    """A JPEG thumbnail (upright, longest side at most the size made), made on first request and cached."""
    state = server(request)
    item = find(request, item_id)
    maker = media_registry().thumbnailer(item.modality)
    at_moment = media_registry().moment_thumbnailer(item.modality)
    if maker is None and at_moment is None:
        raise HTTPException(404, f"item {item.id} is a {item.modality}, it has no thumbnail")
    made = fit_size(size)
    with open_item_file(item.id, source_path(item.path, item.locator, item.meta), state.engine.roots()) as opened:
        key = SourceKey.of(item.id, opened.stat)

        def make() -> bytes:
            caps = state.engine.settings  # indexing's decode caps (MMSEARCH_MAX_PIXELS, MMSEARCH_DECODE_TIMEOUT)
            with state.decode_slots:  # one of the few decodes at a time
                if at_moment is not None:  # a video: the frame at the item's moment, read from the descriptor
                    return at_moment(opened.fd, made, float((item.meta or {}).get("t", 0.0)), caps.max_pixels,
                                     caps.decode_timeout)
                return maker(opened.read_all(MAX_THUMBNAIL_SOURCE_BYTES), made, caps.max_pixels)

        try:
            data = state.thumbs.get_or_make(key, made, make)
        except (BadInput, ValueError) as exc:
            raise HTTPException(404, f"item {item.id} has no thumbnail: {exc}") from exc
        except OSError as exc:
            raise HTTPException(404, f"item {item.id} has no thumbnail: {exc.strerror or exc}") from exc
    return Response(data, media_type="image/jpeg",
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"})


@router.get("/api/items/{item_id}/file", tags=["items"], response_class=Response)
def original(request: Request, item_id: str) -> Response:
    """The original file of an item (for a JSONL line: the whole JSONL file)."""
    item = find(request, item_id)
    source = source_path(item.path, item.locator, item.meta)  # a JSONL record's image: that image
    opened = open_item_file(item.id, source, server(request).engine.roots())
    return file_response(opened, media_registry().media_type(opened.real_path), os.path.basename(source),
                         request.headers.get("range"))
