"""``/docs``: Swagger UI served from an installed package, so it works offline and under the
page's Content-Security-Policy (no CDN, no inline script).

The assets come from the ``swagger-ui-py`` package (a dependency), which bundles Swagger UI's
own build; its Python code is never imported. Without the package there is no ``/docs`` (the
schema stays at ``/openapi.json``) and ``docs_available()`` says so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
  <link rel="icon" href="data:,">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script src="static/docs.js"></script>
</body>
</html>
"""


def swagger_ui_folder() -> Path | None:
    """The folder of Swagger UI's built files in the installed ``swagger-ui-py``, or None."""
    try:
        spec = importlib.util.find_spec("swagger_ui")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "static"
        if all((folder / name).is_file() for name in ASSETS):
            return folder
    return None


def docs_available() -> bool:
    return swagger_ui_folder() is not None


def add_docs(app: FastAPI, title: str, headers: dict[str, str]) -> bool:
    """Serve ``/docs`` and its assets on ``app`` (built with ``docs_url=None``); False without the package."""
    folder = swagger_ui_folder()
    if folder is None:
        return False
    page = _PAGE.format(title=title.replace("&", "&amp;").replace("<", "&lt;"))

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    app.mount("/docs/assets", StaticFiles(directory=folder), name="docs-assets")
    return True
