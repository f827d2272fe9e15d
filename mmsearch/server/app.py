"""``mmsearch serve``: an HTTP API and a web page over one loaded ``Engine``.

    from mmsearch import Engine
    from mmsearch.server import create_app

    app = create_app(Engine("indexes/photos"))   # any ASGI server can run it

The app holds one Engine, so the model is loaded once and warm queries only pay for encoding
the query and the vector search. ``Engine.search`` is thread-safe and re-syncs with the index
database on every call, so results follow index runs made while the server is up.

Security: files are only ever looked up by item id in the index database, never by a path a
client sends, and are served only when their real path (symlinks resolved) lies inside one of
the index's roots. Anything else is a 404.
"""

from __future__ import annotations

import io
import mimetypes
import os
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy import func, select

from . import __version__
from .corpus import _register_heif, to_rgb
from .db import Item, Root
from .errors import IndexNotFoundError, MMSearchError, QueryError, ServerError
from .query import IMAGE, ITEM, TEXT, Hit, QueryTerm, combine
from .thumbs import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, ThumbnailError, cached_thumbnail

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a full-size phone photo is 3-12 MB
MAX_UPLOADS = 4  # images in one combined query
MAX_TERMS = 16
MAX_K = 1000
MAX_TEXT_CHARS = 2000  # the tokenizer truncates long texts anyway; this only bounds the request
_FORM_OVERHEAD = 256 * 1024  # room for form fields and multipart boundaries on top of the images

Modality = Literal["all", "image", "text"]


# -- response models (they document the API in /openapi.json and /docs) ------------------------
class HitOut(BaseModel):
    rank: int
    score: float
    id: int
    modality: str
    path: str
    locator: str = ""
    text: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] | None = None
    thumbnail_url: str | None = Field(None, description="JPEG thumbnail (images only)")
    file_url: str = Field(description="The original file")
    similar_url: str = Field(description="'More like this' search")


class SearchOut(BaseModel):
    query: list[dict[str, Any]]
    k: int
    type: str
    min_score: float | None
    took_ms: float
    hits: list[HitOut]


class HealthOut(BaseModel):
    status: str
    version: str
    model_loaded: bool
    items: int


class TermIn(BaseModel):
    """One weighted part of a combined query."""

    kind: Literal["text", "item", "image"]
    value: str | int | None = Field(None, description="text, or item id")
    upload: int | None = Field(None, ge=0, description="index into the uploaded `images` (kind 'image')")
    weight: float = 1.0


_TERMS = TypeAdapter(list[TermIn])


# -- errors --------------------------------------------------------------------------------------
class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before reading them."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _error(413, f"request body larger than the limit of {self.limit} bytes")(scope, receive, send)
                    return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)  # FastAPI re-raises HTTPExceptions from body parsing
            return message

        await self.app(scope, limited, send)


# -- the app -------------------------------------------------------------------------------------
@dataclass
class _Found:
    item: Item
    roots: list[str]


def create_app(
    engine: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    preload: bool = True,
    title: str = "mmsearch",
) -> FastAPI:
    """A FastAPI app serving ``engine`` (an ``mmsearch.Engine``); the caller keeps ownership of it.

    ``max_upload_bytes`` bounds each uploaded image; ``preload`` loads the model at startup so
    the first query is as fast as the next.
    """

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
    )
    app.state.engine = engine
    app.add_middleware(_BodyLimit, limit=max_upload_bytes * MAX_UPLOADS + _FORM_OVERHEAD)
    static_dir = Path(str(resources.files("mmsearch") / "static"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return _error(422, _describe_validation(errors), errors=jsonable_encoder(errors, custom_encoder={Exception: str}))

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

    def hit_out(request: Request, hit: Hit) -> dict[str, Any]:
        base = f"{prefix(request)}/api/items/{hit.id}"
        data = hit.as_dict()
        data["thumbnail_url"] = f"{base}/thumbnail" if hit.modality == IMAGE else None
        data["file_url"] = f"{base}/file"
        data["similar_url"] = f"{base}/similar"
        return data

    def parse_id(item_id: str) -> int:
        # Ids arrive as path segments; anything but a plain decimal number is an unknown item.
        if not item_id.isascii() or not item_id.isdigit() or len(item_id) > 18:
            raise HTTPException(404, f"no item with id {item_id!r}")
        return int(item_id)

    def find(item_id: str) -> _Found:
        number = parse_id(item_id)
        with engine.store.session() as session:
            item = session.get(Item, number)
            if item is None:
                raise HTTPException(404, f"no item with id {number}")
            roots = list(session.scalars(select(Root.path)))
        return _Found(item, roots)

    def servable(found: _Found) -> str:
        """The real path of the item's file, if it may be served; else 404."""
        real = _inside_roots(found.item.path, found.roots)
        if real is None:
            raise HTTPException(404, f"file of item {found.item.id} is not available")
        return real

    def respond(request: Request, started: float, terms: list[dict[str, Any]], hits: list[Hit],
                k: int, type: str, min_score: float | None) -> dict[str, Any]:
        return {
            "query": terms, "k": k, "type": type, "min_score": min_score,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "hits": [hit_out(request, h) for h in hits],
        }

    # -- pages -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    # -- status ------------------------------------------------------------------------------
    @app.get("/api/health", response_model=HealthOut, tags=["status"])
    def health() -> dict[str, Any]:
        """Liveness: the server answers and can read its index."""
        with engine.store.session() as session:
            items = session.scalar(select(func.count()).select_from(Item)) or 0
        return {"status": "ok", "version": __version__, "model_loaded": engine.model_loaded, "items": items}

    @app.get("/api/info", tags=["status"])
    def info() -> dict[str, Any]:
        """Index statistics: counts, roots, model, vector index, sizes."""
        return jsonable_encoder(engine.info())

    # -- search ------------------------------------------------------------------------------
    @app.get("/api/search", response_model=SearchOut, tags=["search"])
    def search_text(
        request: Request,
        q: str = Query(..., min_length=1, max_length=MAX_TEXT_CHARS, description="Text to search for"),
        k: int = Query(10, ge=1, le=MAX_K, description="Number of results"),
        type: Modality = Query("all", description="Result type"),
        min_score: float | None = Query(None, ge=-1.0, le=1.0, description="Leave out hits scoring below this cosine similarity"),
    ) -> dict[str, Any]:
        """Search by text. The text is never read as a file path."""
        started = time.perf_counter()
        if not q.strip():
            raise HTTPException(422, "q: empty text")
        hits = engine.search(QueryTerm(TEXT, q), k=k, type=type, min_score=min_score)
        return respond(request, started, [{"kind": TEXT, "value": q, "weight": 1.0}], hits, k, type, min_score)

    @app.get("/api/items/{item_id}/similar", response_model=SearchOut, tags=["search"])
    def similar(
        request: Request,
        item_id: str,
        k: int = Query(10, ge=1, le=MAX_K),
        type: Modality = Query("all"),
        min_score: float | None = Query(None, ge=-1.0, le=1.0),
        include_self: bool = Query(False, description="Let the item appear in its own results"),
    ) -> dict[str, Any]:
        """'More like this': items nearest to an indexed item."""
        started = time.perf_counter()
        number = find(item_id).item.id
        hits = engine.search(QueryTerm(ITEM, str(number)), k=k, type=type, min_score=min_score, include_query=include_self)
        return respond(request, started, [{"kind": ITEM, "value": number, "weight": 1.0}], hits, k, type, min_score)

    @app.post("/api/search", response_model=SearchOut, tags=["search"])
    def search_combined(
        request: Request,
        q: str | None = Form(None, max_length=MAX_TEXT_CHARS, description="A text term (weight 1)"),
        item: int | None = Form(None, ge=0, description="An item id term (weight 1)"),
        images: list[UploadFile] = File(default=[], description=f"Uploaded query images (at most {MAX_UPLOADS})"),
        terms: str | None = Form(
            None,
            description='JSON list of weighted terms, e.g. [{"kind":"text","value":"beach","weight":2},'
                        '{"kind":"item","value":12,"weight":-0.5},{"kind":"image","upload":0}]. '
                        "When given, q/item/images are only used through it.",
        ),
        k: int = Form(10, ge=1, le=MAX_K),
        type: Modality = Form("all"),
        min_score: float | None = Form(None, ge=-1.0, le=1.0),
        include_query: bool = Form(False, description="Let query items appear in the results"),
    ) -> dict[str, Any]:
        """Search by uploaded image(s), text, item ids, or a weighted combination of them."""
        started = time.perf_counter()
        images = [f for f in images if f.filename or f.size]  # browsers send an empty part for "no file"
        if len(images) > MAX_UPLOADS:
            raise HTTPException(422, f"images: at most {MAX_UPLOADS} uploads per query")
        wanted = _parse_terms(terms, q, item, len(images))
        pictures: dict[int, Image.Image] = {}
        for index in sorted({t.upload for t in wanted if t.kind == IMAGE}):
            pictures[index] = _decode_upload(images[index], max_upload_bytes)
        vectors: list[np.ndarray] = []
        described: list[dict[str, Any]] = []
        exclude: set[Any] = set()
        for term in wanted:
            if term.kind == TEXT:
                vectors.append(engine.encode_texts([str(term.value)])[0])
                described.append({"kind": TEXT, "value": term.value, "weight": term.weight})
            elif term.kind == ITEM:
                number = find(str(term.value)).item.id
                vectors.append(engine.encode_query([QueryTerm(ITEM, str(number))]))
                described.append({"kind": ITEM, "value": number, "weight": term.weight})
                exclude.add(number)
            else:
                vectors.append(engine.encoder.encode_images([pictures[term.upload]])[0])
                described.append({"kind": IMAGE, "upload": term.upload, "filename": images[term.upload].filename,
                                  "weight": term.weight})
        vector = combine(np.stack(vectors), [t.weight for t in wanted])
        hits = engine.search_vector(vector, k=k, type=type, min_score=min_score,
                                    exclude=set() if include_query else exclude)
        return respond(request, started, described, hits, k, type, min_score)

    # -- items -------------------------------------------------------------------------------
    @app.get("/api/items/{item_id}", response_model=HitOut, tags=["items"])
    def item_meta(request: Request, item_id: str) -> dict[str, Any]:
        """Stored metadata of one item."""
        hit = engine.get(parse_id(item_id))
        if hit is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return hit_out(request, hit)

    @app.get("/api/items/{item_id}/thumbnail", tags=["items"], response_class=FileResponse,
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: str, size: int = Query(DEFAULT_SIZE, ge=MIN_SIZE, le=MAX_SIZE)) -> FileResponse:
        """A JPEG thumbnail (upright, longest side ``size``), made on first request and cached."""
        found = find(item_id)
        if found.item.modality != IMAGE:
            raise HTTPException(404, f"item {found.item.id} is a {found.item.modality}, it has no thumbnail")
        real = servable(found)
        try:
            path = cached_thumbnail(engine.folder, found.item.id, found.item.content_hash, real, size)
        except ThumbnailError as exc:
            raise HTTPException(404, f"item {found.item.id}: {exc}") from exc
        return FileResponse(path, media_type="image/jpeg", headers={**_FILE_HEADERS, "Cache-Control": "private, max-age=60"})

    @app.get("/api/items/{item_id}/file", tags=["items"], response_class=FileResponse)
    def original(item_id: str) -> FileResponse:
        """The original file of an item (for a JSONL line: the whole JSONL file)."""
        found = find(item_id)
        real = servable(found)
        if found.item.modality == IMAGE:
            media_type = mimetypes.guess_type(real)[0] or "application/octet-stream"
        else:
            media_type = "text/plain; charset=utf-8"
        return FileResponse(real, media_type=media_type, filename=os.path.basename(found.item.path),
                            content_disposition_type="inline", headers=_FILE_HEADERS)

    return app


# Files from the index are shown, never run: no sniffing, and a sandbox should one be HTML-like.
_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
_PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
}


def _inside_roots(path: str, roots: list[str]) -> str | None:
    """``path`` with symlinks resolved, when it is a regular file inside one of ``roots``."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return None
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return real
    return None


def _parse_terms(raw: str | None, q: str | None, item: int | None, uploads: int) -> list[TermIn]:
    if raw is not None and raw.strip():
        try:
            terms = _TERMS.validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", "terms", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
            ) from exc
    else:
        terms = []
        if q is not None and q.strip():
            terms.append(TermIn(kind=TEXT, value=q))
        if item is not None:
            terms.append(TermIn(kind=ITEM, value=item))
        terms.extend(TermIn(kind=IMAGE, upload=i) for i in range(uploads))
    if not terms:
        raise HTTPException(422, "empty query: give q, item, images or terms")
    if len(terms) > MAX_TERMS:
        raise HTTPException(422, f"terms: at most {MAX_TERMS} terms per query")
    checked: list[TermIn] = []
    for n, term in enumerate(terms):
        where = f"terms[{n}]"
        if not np.isfinite(term.weight):
            raise HTTPException(422, f"{where}: weight must be a finite number")
        if term.kind == TEXT:
            if not isinstance(term.value, str) or not term.value.strip():
                raise HTTPException(422, f"{where}: a text term needs a non-empty string value")
            if len(term.value) > MAX_TEXT_CHARS:
                raise HTTPException(422, f"{where}: text longer than {MAX_TEXT_CHARS} characters")
        elif term.kind == ITEM:
            if isinstance(term.value, bool) or not (isinstance(term.value, int) or str(term.value).isdigit()):
                raise HTTPException(422, f"{where}: an item term needs an integer item id as value")
        else:
            upload = term.upload if term.upload is not None else (0 if uploads == 1 else None)
            if upload is None or upload >= uploads:
                raise HTTPException(422, f"{where}: an image term needs 'upload', the index of an uploaded image "
                                         f"({uploads} uploaded)")
            term = term.model_copy(update={"upload": upload})
        checked.append(term)
    if not any(t.weight > 0 for t in checked):
        raise HTTPException(422, "query needs at least one term with a positive weight")
    return checked


def _decode_upload(upload: UploadFile, limit: int) -> Image.Image:
    """An uploaded file decoded upright as RGB; 413 when too large, 415 when not an image."""
    name = upload.filename or "upload"
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{name}: upload larger than the limit of {limit} bytes")
    if not data:
        raise HTTPException(415, f"{name}: empty upload, not an image")
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.seek(0)
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(413, f"{name}: image has too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise HTTPException(415, f"{name}: not an image (unrecognised data)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(415, f"{name}: cannot decode image: {exc}") from exc


def serve(
    index: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    log_level: str = "info",
) -> None:
    """Open the index, load its model and serve the API and web page until interrupted."""
    import uvicorn

    from .engine import Engine

    with Engine(index, device=device) as engine:
        engine.info()  # fail now, with a one-line error, when the index does not exist
        app = create_app(engine, max_upload_bytes=max_upload_bytes)
        uvicorn.run(app, host=host, port=port, log_level=log_level)


class ServerThread:
    """Serve ``app`` from a background thread on ``host``:``port`` (0: a free port), e.g. in a notebook.

        with ServerThread(create_app(engine)) as server:
            print(server.url)
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn

        self._socket = socket.create_server((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="mmsearch-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["create_app", "serve", "ServerThread", "DEFAULT_MAX_UPLOAD_BYTES"]
