"""What the server sends back when things go wrong, and JSON that is always valid UTF-8."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import IndexNotFoundError, MMSearchError, QueryError, TextInputError
from ..fsutil import json_safe, text_safe


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(json_safe({"detail": message, **extra}), status_code=status)


def clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors fit to send back: the offending input only as a short text (never the
    raw body, whatever its bytes), context values as text."""
    cleaned = []
    for item_error in errors:
        item = {k: v for k, v in item_error.items() if k in ("type", "loc", "msg")}
        value = item_error.get("input")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value[:200]).decode("utf-8", "replace")
        if isinstance(value, str):
            item["input"] = text_safe(value[:200])
        elif isinstance(value, (int, float, bool)) or value is None:
            item["input"] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        if isinstance(item_error.get("ctx"), dict):
            item["ctx"] = {str(k): v if isinstance(v, (int, bool)) else text_safe(str(v))
                           for k, v in item_error["ctx"].items()}
        item["loc"] = [p if isinstance(p, int) else text_safe(str(p)) for p in item.get("loc", ())]
        cleaned.append(item)
    return cleaned


def describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        where = list(e.get("loc", ()))
        loc = [str(p) for p in where if p not in ("query", "body", "path")]
        parts.append(f"{'.'.join(loc) or (where[0] if where else 'request')}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"detail": ...}``: bad requests 4xx, a missing index 503, library
    errors 500, with the library's one-line message."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = clean_errors(list(exc.errors()))
        return error(422, describe_validation(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error(exc.status_code, exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(TextInputError)
    async def _text_error(request: Request, exc: TextInputError) -> JSONResponse:
        return error(422, str(exc))  # a value no field may hold, as a validation error

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(IndexNotFoundError)
    async def _no_index(request: Request, exc: IndexNotFoundError) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(MMSearchError)
    async def _mmsearch_error(request: Request, exc: MMSearchError) -> JSONResponse:
        return error(500, str(exc))
