"""The FastAPI app: the JSON API and the web page over one loaded ``Engine``.

The app holds one Engine, so the model is loaded once and warm queries only pay for encoding
the query and the vector search. ``Engine.search`` is thread-safe and re-syncs with the index
database on every call, so results follow index runs made while the server is up.

Security: files are only ever looked up by item id in the index database, never by a path a
client sends; they are served only when they belong to the library (``library.inside_library``)
at the moment they are opened, from that one open descriptor (see ``files``). Requests must name
this server in their Host header and, with a token, carry it (see ``security``). Uploaded images
are decoded within pixel limits (see ``uploads``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import IndexNotFoundError, MMSearchError, QueryError
from ..fsutil import printable_path
from ..query import IMAGE, ITEM, TEXT, Hit, Item, QueryTerm
from .thumbs import DEFAULT_CACHE_BYTES, DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, THUMBS_DIR, SourceKey, ThumbnailCache, \
    ThumbnailError, fit_size, make_thumbnail
from .docs import add_docs
from .files import MAX_THUMBNAIL_SOURCE_BYTES, file_response, media_type_of, open_item_file
from .schemas import MAX_K, MAX_TEXT_CHARS, MAX_UPLOADS, HealthOut, ItemOut, Modality, SearchOut, search_body_openapi
from .security import HostGuard, TokenGuard, normalise_hosts
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, FORM_OVERHEAD, BodyLimit, SearchRequest, UploadDecoder, UploadLimits, \
    from_form, from_json

DECODE_SLOTS = 2  # images decoded at once (uploads and thumbnails): bounds the server's peak memory

PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


# -- JSON that is always valid UTF-8 -------------------------------------------------------------
def text_safe(text: str) -> str:
    """``text`` as valid Unicode: undecodable file-name bytes as ``\\xNN``, other lone surrogates as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return printable_path(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return text_safe(value)
    if isinstance(value, dict):
        return {text_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(json_safe({"detail": message, **extra}), status_code=status)


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors fit to send back: the offending input only as a short text (never the
    raw body, whatever its bytes), context values as text."""
    cleaned = []
    for error in errors:
        item = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
        value = error.get("input")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value[:200]).decode("utf-8", "replace")
        if isinstance(value, str):
            item["input"] = text_safe(value[:200])
        elif isinstance(value, (int, float, bool)) or value is None:
            item["input"] = value if not isinstance(value, float) or np.isfinite(value) else str(value)
        if isinstance(error.get("ctx"), dict):
            item["ctx"] = {str(k): v if isinstance(v, (int, bool)) else text_safe(str(v)) for k, v in error["ctx"].items()}
        item["loc"] = [p if isinstance(p, int) else text_safe(str(p)) for p in item.get("loc", ())]
        cleaned.append(item)
    return cleaned


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        where = list(e.get("loc", ()))
        loc = [str(p) for p in where if p not in ("query", "body", "path")]
        parts.append(f"{'.'.join(loc) or (where[0] if where else 'request')}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(
    engine: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    preload: bool = True,
    title: str = "mmsearch",
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    upload_limits: UploadLimits | None = None,
    thumbnail_cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FastAPI:
    """A FastAPI app serving ``engine`` (an ``mmsearch.Engine``); the caller keeps ownership of it.

    ``max_upload_bytes`` bounds each uploaded image (``upload_limits`` also its pixels);
    ``preload`` loads the model at startup so the first query is as fast as the next.
    ``token``: when given, API requests need ``Authorization: Bearer <token>`` (or the page's
    session cookie). ``allowed_hosts``: host names accepted in the Host header besides the
    server's own address and, on loopback, ``localhost`` (``"*"`` accepts any); e.g.
    ``["testserver"]`` for Starlette's TestClient. ``thumbnail_cache_bytes`` bounds the
    thumbnail cache in ``<index>/.thumbs``.
    """
    limits = upload_limits or UploadLimits(max_bytes=max_upload_bytes)
    hosts = normalise_hosts(allowed_hosts)
    slots = threading.BoundedSemaphore(DECODE_SLOTS)
    decoder = UploadDecoder(limits, slots)
    thumbs = ThumbnailCache(Path(engine.folder) / THUMBS_DIR, thumbnail_cache_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            engine.encoder  # noqa: B018 - load the model once, before the first request
        yield

    app = FastAPI(
        title=title,
        version=__version__,
        summary="Cross-modal search over images and texts: by text, by image, by example, or a weighted mix.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.thumbnails = thumbs
    # Outermost first: wrong host, then no token, then too large a body.
    app.add_middleware(BodyLimit, limit=limits.max_bytes * MAX_UPLOADS + FORM_OVERHEAD)
    if token:
        app.add_middleware(TokenGuard, token=token)
    app.add_middleware(HostGuard, allowed=hosts)
    app.state.auth_required = bool(token)
    static_dir = Path(str(resources.files("mmsearch") / "static"))
    app.state.docs = add_docs(app, title, PAGE_HEADERS)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_errors(list(exc.errors()))
        return _error(422, _describe_validation(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(IndexNotFoundError)
    async def _no_index(request: Request, exc: IndexNotFoundError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(MMSearchError)
    async def _mmsearch_error(request: Request, exc: MMSearchError) -> JSONResponse:
        return _error(500, str(exc))

    # -- helpers -----------------------------------------------------------------------------
    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def item_out(request: Request, hit: Item) -> dict[str, Any]:
        base = f"{prefix(request)}/api/items/{hit.id}"
        data = hit.as_dict()  # path: readable UTF-8; path_bytes: the exact name, when it is not UTF-8
        data["text"] = text_safe(data["text"]) if data["text"] is not None else None
        data["locator"] = text_safe(data["locator"])
        data["meta"] = json_safe(data["meta"])
        data["thumbnail_url"] = f"{base}/thumbnail" if hit.modality == IMAGE else None
        data["file_url"] = f"{base}/file"
        data["similar_url"] = f"{base}/similar"
        return data

    def parse_id(item_id: str) -> int:
        # Ids arrive as path segments; anything but a plain decimal number is an unknown item.
        if not item_id.isascii() or not item_id.isdigit() or len(item_id) > 18:
            raise HTTPException(404, f"no item with id {item_id!r}")
        return int(item_id)

    def find(item_id: str | int) -> Item:
        number = parse_id(str(item_id))
        item = engine.get(number)
        if item is None:
            raise HTTPException(404, f"no item with id {number}")
        return item

    def respond(request: Request, started: float, terms: list[dict[str, Any]], hits: list[Hit],
                k: int, type: str, min_score: float | None) -> dict[str, Any]:
        answer = {
            "query": json_safe(terms), "k": k, "type": type, "min_score": min_score,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "hits": [item_out(request, h) for h in hits],
        }
        if not hits and getattr(hits, "why_empty", None):
            answer["why_empty"] = text_safe(hits.why_empty)
        return answer

    # -- pages -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    # -- status ------------------------------------------------------------------------------
    @app.get("/api/health", response_model=HealthOut, tags=["status"])
    def health() -> dict[str, Any]:
        """Liveness: the server answers and can read its index."""
        return {"status": "ok", "version": __version__, "model_loaded": engine.model_loaded, "items": engine.count()}

    @app.get("/api/info", tags=["status"])
    def info() -> dict[str, Any]:
        """Index statistics: counts, roots, model, vector index, sizes."""
        return json_safe(jsonable_encoder(engine.info()))

    @app.post("/api/session", status_code=204, tags=["status"])
    def session_cookie(request: Request) -> Response:
        """Exchange the bearer token for the page's session cookie (HttpOnly, SameSite=Strict), so
        that thumbnails and links work in a browser. Without a token on the server: nothing to do."""
        response = Response(status_code=204)
        cookie = request.scope.get("state", {}).get("session_cookie")
        if cookie:
            response.headers["Set-Cookie"] = cookie
        return response

    # -- search ------------------------------------------------------------------------------
    @app.get("/api/search", response_model=SearchOut, response_model_exclude_unset=True, tags=["search"])
    def search_text(
        request: Request,
        q: str = Query(..., min_length=1, max_length=MAX_TEXT_CHARS, description="Text to search for"),
        k: int = Query(10, ge=1, le=MAX_K, description="Number of results"),
        type: Modality = Query("all", description="Result type"),
        min_score: float | None = Query(None, ge=-1.0, le=1.0, description="Leave out hits scoring below this cosine similarity"),
        under: str | None = Query(None, max_length=4096, description="Only hits inside this folder (a path on the server)"),
    ) -> dict[str, Any]:
        """Search by text. The text is never read as a file path."""
        started = time.perf_counter()
        if not q.strip():
            raise HTTPException(422, "q: empty text")
        hits = engine.search(QueryTerm(TEXT, q), k=k, type=type, min_score=min_score, under=under or None)
        return respond(request, started, [{"kind": TEXT, "value": q, "weight": 1.0}], hits, k, type, min_score)

    @app.get("/api/items/{item_id}/similar", response_model=SearchOut, response_model_exclude_unset=True,
             tags=["search"])
    def similar(
        request: Request,
        item_id: str,
        k: int = Query(10, ge=1, le=MAX_K),
        type: Modality = Query("all"),
        min_score: float | None = Query(None, ge=-1.0, le=1.0),
        include_self: bool = Query(False, description="Let the item appear in its own results"),
        under: str | None = Query(None, max_length=4096, description="Only hits inside this folder (a path on the server)"),
    ) -> dict[str, Any]:
        """'More like this': items nearest to an indexed item."""
        started = time.perf_counter()
        number = find(item_id).id
        hits = engine.similar(number, k=k, type=type, min_score=min_score, include_self=include_self, under=under or None)
        return respond(request, started, [{"kind": ITEM, "value": number, "weight": 1.0}], hits, k, type, min_score)

    @app.post("/api/search", response_model=SearchOut, response_model_exclude_unset=True, tags=["search"],
              openapi_extra=search_body_openapi())
    async def search_combined(request: Request) -> dict[str, Any]:
        """Search by uploaded image(s), text, item ids, or a weighted combination of them.

        Send ``multipart/form-data`` (files in ``images``, ``terms`` as a JSON string) or
        ``application/json`` (the same fields; image terms carry the file as base64 ``data``).
        """
        started = time.perf_counter()
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async with request.form(max_files=MAX_UPLOADS * 4, max_fields=64) as form:
                parsed = await run_in_threadpool(from_form, form, limits.max_bytes)
        elif kind == "application/json" or kind.endswith("+json") or kind in ("", "text/plain"):
            # No or a plain-text content type: JSON too, as some HTTP clients send it.
            body = await request.body()
            if kind in ("", "text/plain") and not body.lstrip().startswith(b"{"):
                raise HTTPException(415, "send the query as multipart/form-data (fields q, item, images, terms, k, "
                                         "type, min_score, include_query) or as application/json")
            parsed = await run_in_threadpool(from_json, body, limits.max_bytes)
        else:
            raise HTTPException(415, f"unsupported content type {kind!r}: send multipart/form-data or application/json")
        return await run_in_threadpool(run_search, request, started, parsed)

    def run_search(request: Request, started: float, parsed: SearchRequest) -> dict[str, Any]:
        wanted = {t.upload for t in parsed.terms if t.kind == IMAGE}
        pictures = decoder.decode_all(parsed.uploads, wanted, engine.encoder.image_size) if wanted else {}
        terms: list[QueryTerm] = []
        described: list[dict[str, Any]] = []
        for term in parsed.terms:
            if term.kind == TEXT:
                terms.append(QueryTerm(TEXT, str(term.value), term.weight))
                described.append({"kind": TEXT, "value": term.value, "weight": term.weight})
            elif term.kind == ITEM:
                number = find(term.value).id
                terms.append(QueryTerm(ITEM, str(number), term.weight))
                described.append({"kind": ITEM, "value": number, "weight": term.weight})
            else:  # an uploaded image, decoded here within the upload limits
                terms.append(QueryTerm(IMAGE, pictures[term.upload], term.weight))
                described.append({"kind": IMAGE, "upload": term.upload, "filename": parsed.uploads[term.upload].name,
                                  "weight": term.weight})
        hits = engine.search(terms, k=parsed.k, type=parsed.type, min_score=parsed.min_score,
                             include_query=parsed.include_query, under=parsed.under or None)
        return respond(request, started, described, hits, parsed.k, parsed.type, parsed.min_score)

    # -- items -------------------------------------------------------------------------------
    @app.get("/api/items/{item_id}", response_model=ItemOut, response_model_exclude_unset=True, tags=["items"])
    def item_meta(request: Request, item_id: str) -> dict[str, Any]:
        """Stored metadata of one item."""
        return item_out(request, find(item_id))

    @app.get("/api/items/{item_id}/thumbnail", tags=["items"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: str, size: int = Query(DEFAULT_SIZE, ge=MIN_SIZE, le=MAX_SIZE,
                                                  description="Longest side wanted; rounded up to 64, 128, 256, 512 or 1024")) -> Response:
        """A JPEG thumbnail (upright, longest side at most the size made), made on first request and cached."""
        item = find(item_id)
        if item.modality != IMAGE:
            raise HTTPException(404, f"item {item.id} is a {item.modality}, it has no thumbnail")
        made = fit_size(size)
        with open_item_file(item.id, item.path, engine.roots()) as opened:
            key = SourceKey.of(item.id, opened.stat)

            def make() -> bytes:
                with slots:  # one of the few decodes at a time
                    return make_thumbnail(opened.read_all(MAX_THUMBNAIL_SOURCE_BYTES), made)

            try:
                data = thumbs.get_or_make(key, made, make)
            except (ThumbnailError, ValueError) as exc:
                raise HTTPException(404, f"item {item.id} has no thumbnail: {exc}") from exc
            except OSError as exc:
                raise HTTPException(404, f"item {item.id} has no thumbnail: {exc.strerror or exc}") from exc
        return Response(data, media_type="image/jpeg",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"})

    @app.get("/api/items/{item_id}/file", tags=["items"], response_class=Response)
    def original(item_id: str) -> Response:
        """The original file of an item (for a JSONL line: the whole JSONL file)."""
        item = find(item_id)
        opened = open_item_file(item.id, item.path, engine.roots())
        return file_response(opened, media_type_of(opened.real_path, item.modality), os.path.basename(item.path))

    if token:
        _document_bearer(app)
    return app


def _document_bearer(app: FastAPI) -> None:
    """Tell /openapi.json (and so /docs' Authorize button) that the API wants a bearer token."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/api/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "PAGE_HEADERS"]
