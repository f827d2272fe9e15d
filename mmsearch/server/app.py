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

import threading
from collections.abc import Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .clip_back import router as clip_back_router
from .docs import add_docs
from .responses import add_error_handlers
from .routes import PAGE_HEADERS, ServerState, router
from .security import HostGuard, TokenGuard, normalise_hosts
from .thumbs import DEFAULT_CACHE_BYTES, THUMBS_DIR, ThumbnailCache
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, FORM_OVERHEAD, BodyLimit, UploadDecoder, UploadLimits
from .schemas import MAX_UPLOADS

DECODE_SLOTS = 2  # images decoded at once (uploads and thumbnails): bounds the server's peak memory


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
    cors_origins: Iterable[str] = (),
) -> FastAPI:
    """A FastAPI app serving ``engine`` (an ``mmsearch.Engine``); the caller keeps ownership of it.

    ``max_upload_bytes`` bounds each uploaded image (``upload_limits`` also its pixels);
    ``preload`` loads the model at startup so the first query is as fast as the next.
    ``token``: when given, API requests need ``Authorization: Bearer <token>`` (or the page's
    session cookie). ``allowed_hosts``: host names accepted in the Host header besides the
    server's own address and, on loopback, ``localhost`` (``"*"`` accepts any); e.g.
    ``["testserver"]`` for Starlette's TestClient. ``thumbnail_cache_bytes`` bounds the
    thumbnail cache in ``<index>/.thumbs``. ``cors_origins``: web origins (``https://host``) whose
    pages may read the answers (CORS), e.g. clip-retrieval's front end served elsewhere; none by
    default, as any web page could otherwise read the library through a visitor's browser.
    """
    limits = upload_limits or UploadLimits(max_bytes=max_upload_bytes)
    slots = threading.BoundedSemaphore(DECODE_SLOTS)
    static_dir = Path(str(resources.files("mmsearch") / "static"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            engine.warm()  # the encoders queries use (ONNX where exported, no torch), before the first request
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
    app.state.server = ServerState(
        engine=engine, limits=limits, decoder=UploadDecoder(limits, slots),
        thumbs=ThumbnailCache(Path(engine.folder) / THUMBS_DIR, thumbnail_cache_bytes), decode_slots=slots,
        static_dir=static_dir,
    )
    app.state.thumbnails = app.state.server.thumbs
    # Outermost first: wrong host, then no token, then too large a body.
    app.add_middleware(BodyLimit, limit=limits.max_bytes * MAX_UPLOADS + FORM_OVERHEAD)
    if token:
        app.add_middleware(TokenGuard, token=token)
    app.add_middleware(HostGuard, allowed=normalise_hosts(allowed_hosts))
    origins = [o.rstrip("/") for o in cors_origins]
    if origins:  # outermost: browsers' preflights carry no token, and refusals need the header too
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.state.auth_required = bool(token)
    app.state.docs = add_docs(app, title, PAGE_HEADERS)
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(clip_back_router)  # clip-retrieval's back-end API (/knn-service, ...)
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
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
