"""``mmsearch serve``: an HTTP API and a web page over one loaded ``Engine``.

    from mmsearch import Engine
    from mmsearch.server import create_app

    app = create_app(Engine("indexes/photos"))   # any ASGI server can run it

Modules: ``app`` (the FastAPI app and its routes), ``schemas`` (request and response shapes),
``uploads`` (query input and uploaded images), ``files`` (serving indexed files and thumbnails
from one open descriptor), ``security`` (Host header check, bearer token), ``docs`` (offline
Swagger UI), ``run`` (``serve`` and ``ServerThread``).
"""

from .app import create_app
from .docs import docs_available
from .run import ServerThread, serve, url_for
from .security import is_loopback_host, is_wildcard_host
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, UploadLimits

__all__ = ["create_app", "serve", "ServerThread", "DEFAULT_MAX_UPLOAD_BYTES", "UploadLimits", "docs_available",
           "is_loopback_host", "is_wildcard_host", "url_for"]
