"""Query input of ``POST /api/search``: request size limit, form or JSON body, terms, uploaded images.

Uploaded images are decoded by ``corpus.decode_image`` exactly as indexing decodes files (same
formats, JPEG draft mode, reduction to the model's input size), under a lower pixel cap than
indexing and a pixel budget for the whole request, checked from the image headers before
anything is decoded: a small file that declares a huge image is refused in milliseconds.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import threading
import warnings
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile

from ..media.image import check_decode_size, decode_image, decoded_size, open_image
from ..media.records import BadInput
from ..search.query import IMAGE, ITEM, TEXT
from .schemas import MAX_TERMS, MAX_TEXT_CHARS, MAX_UPLOADS, RANKING, SearchIn, TermIn

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a full-size phone photo is 3-12 MB
# Decoded pixels (after JPEG draft reduction, which makes any camera JPEG small here): one
# upload at most 16 MP (48 MB as RGB; a PNG screenshot or scan of a page fits), all uploads of
# one request at most 32 MP. Indexing allows 64 MP (corpus.max_pixels) for files the user chose.
DEFAULT_UPLOAD_MAX_PIXELS = 16_000_000
DEFAULT_REQUEST_PIXEL_BUDGET = 32_000_000
FORM_OVERHEAD = 256 * 1024  # room for form fields and multipart boundaries on top of the images
BASE64_OVERHEAD = 4 / 3

_TERMS = TypeAdapter(list[TermIn])
# What Pillow raises for malformed headers, besides the errors open_image turns into BadInput.
_HEADER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError)


class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimit:
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
                    body = json.dumps({"detail": f"request body larger than the limit of {self.limit} bytes"}).encode()
                    await send({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
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


@dataclass
class Upload:
    """An uploaded query image, not yet decoded."""

    name: str
    data: bytes


@dataclass
class SearchForm:
    """A parsed ``POST /api/search``: checked terms (image terms index ``uploads``) and the options
    (``schemas.to_request`` makes the library's request once the images are decoded)."""

    terms: list[TermIn]
    uploads: list[Upload]
    options: SearchIn


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_UPLOAD_MAX_PIXELS
    request_pixels: int = DEFAULT_REQUEST_PIXEL_BUDGET


def _invalid(exc: ValidationError, *prefix: str) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *prefix, *e.get("loc", ()))} for e in exc.errors(include_url=False)]
    )


# The fields of ``SearchIn`` given as plain values (a form field, or the query string).
PLAIN_FIELDS = ("q", "item", "k", "type", "min_score", "include_query", "under", "dedup", "dedup_threshold",
                "after", "before", "camera", "near", "sort", *RANKING)


def query_fields(query: Any) -> dict[str, str]:
    """The query string of a POST, read as ``GET /api/search`` reads it (``?k=2&type=text``):
    every name a field of the search, each once; ``terms`` and ``images`` belong in the body.
    (It was ignored, so a POST answered as if ``k`` or ``after`` had never been given.)"""
    fields: dict[str, str] = {}
    for key in dict.fromkeys(query.keys()):
        values = query.getlist(key)
        if key not in PLAIN_FIELDS:
            where = "in the body" if key in ("terms", "images") else f"not a search field ({', '.join(PLAIN_FIELDS)})"
            raise HTTPException(422, f"{key}: {where}")
        if len(values) > 1:
            raise HTTPException(422, f"{key}: given {len(values)} times in the query string")
        if values[0] != "":
            fields[key] = values[0]
    return fields


def _merged(body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """Body fields and query-string fields together; a field in both is refused (which to believe?)."""
    both = sorted(set(body) & set(query))
    if both:
        raise HTTPException(422, f"{both[0]}: given both in the query string and in the body")
    return {**body, **query}


def from_form(form: FormData, max_bytes: int, query: dict[str, str] | None = None) -> SearchForm:
    """A multipart (or url-encoded) form: fields as in ``SearchIn``, ``terms`` as a JSON string,
    files in ``images``; ``query``: fields from the query string (``query_fields``)."""
    fields: dict[str, Any] = {}
    for key in PLAIN_FIELDS:
        value = form.get(key)
        if isinstance(value, UploadFile):
            raise HTTPException(422, f"{key}: a form field, not a file")
        if value is not None and value != "":  # browsers send empty fields for blank inputs
            fields[key] = value
    fields = _merged(fields, query or {})
    raw_terms = form.get("terms")
    if isinstance(raw_terms, UploadFile):
        raise HTTPException(422, "terms: a form field, not a file")
    try:
        options = SearchIn.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    terms = None
    if raw_terms is not None and raw_terms.strip():
        try:
            terms = _TERMS.validate_json(raw_terms)
        except ValidationError as exc:
            raise _invalid(exc, "terms") from exc
    files = form.getlist("images")
    if any(not isinstance(f, UploadFile) for f in files):
        raise HTTPException(422, "images: must be files (multipart/form-data uploads)")
    files = [f for f in files if f.filename or f.size]  # browsers send an empty part for "no file"
    if len(files) > MAX_UPLOADS:
        raise HTTPException(422, f"images: at most {MAX_UPLOADS} uploads per query")
    uploads = [Upload(f.filename or f"upload {n}", _read_upload(f, max_bytes)) for n, f in enumerate(files)]
    if terms is not None and any(t.data is not None for t in terms):
        raise HTTPException(422, "terms: base64 'data' is for JSON bodies; upload files in 'images' and name them by 'upload'")
    return _checked(options, terms, uploads)


def from_json(body: bytes, max_bytes: int, query: dict[str, str] | None = None) -> SearchForm:
    """A JSON body: ``SearchIn``; image terms carry the file as base64 ``data``; ``query``: fields
    from the query string (``query_fields``)."""
    try:
        if query:
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise HTTPException(422, f"body: not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise HTTPException(422, "body: a JSON object of search fields")
            options = SearchIn.model_validate(_merged(data, query))
        else:
            options = SearchIn.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    uploads: list[Upload] = []
    terms = options.terms
    if terms is not None:
        converted = []
        for n, term in enumerate(terms):
            if term.kind == IMAGE:
                if term.data is None:
                    raise HTTPException(422, f"terms[{n}]: an image term in a JSON body needs 'data', the image file "
                                             "as base64 (or send multipart/form-data with files in 'images')")
                if len(term.data) > max_bytes * BASE64_OVERHEAD + 4:
                    raise HTTPException(413, f"terms[{n}]: image larger than the limit of {max_bytes} bytes")
                try:
                    data = base64.b64decode(term.data, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise HTTPException(422, f"terms[{n}]: 'data' is not valid base64") from exc
                if len(uploads) >= MAX_UPLOADS:
                    raise HTTPException(422, f"terms: at most {MAX_UPLOADS} images per query")
                term = term.model_copy(update={"data": None, "upload": len(uploads)})
                uploads.append(Upload(f"terms[{n}]", data))
            converted.append(term)
        terms = converted
    return _checked(options, terms, uploads)


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    name = upload.filename or "upload"
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{name}: upload larger than the limit of {limit} bytes")
    return data


def _checked(options: SearchIn, terms: list[TermIn] | None, uploads: list[Upload]) -> SearchForm:
    if not terms:  # none, or an empty list (`-F 'terms=[]'` beside an upload): the other fields make the query
        terms = []
        if options.q is not None and options.q.strip():
            terms.append(TermIn(kind=TEXT, value=options.q))
        if options.item is not None:
            terms.append(TermIn(kind=ITEM, value=options.item))
        terms.extend(TermIn(kind=IMAGE, upload=i) for i in range(len(uploads)))
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
            upload = term.upload if term.upload is not None else (0 if len(uploads) == 1 else None)
            if upload is None or upload >= len(uploads):
                raise HTTPException(422, f"{where}: an image term needs 'upload', the index of an uploaded image "
                                         f"({len(uploads)} uploaded)")
            term = term.model_copy(update={"upload": upload})
        checked.append(term)
    if not any(t.weight > 0 for t in checked):
        raise HTTPException(422, "query needs at least one term with a positive weight")
    return SearchForm(checked, uploads, options)


class UploadDecoder:
    """Decodes a request's uploaded images within the limits; at most ``slots`` decodes run at once."""

    def __init__(self, limits: UploadLimits, slots: threading.Semaphore):
        self.limits = limits
        self.slots = slots

    def decode_all(self, uploads: list[Upload], wanted: set[int], target: int | Callable[[], int]) -> dict[int, Image.Image]:
        """The uploads numbered in ``wanted``, decoded for a model whose input side is ``target``
        (or what ``target()`` returns, asked once every upload reads as an image: a request with
        a non-image loads no encoder).

        Every header is checked (size, format, pixel budget) before the first decode.
        """
        if callable(target):
            for index in sorted(wanted):
                self._check(uploads[index], 0, None)
            target = target()
        budget = self.limits.request_pixels
        for index in sorted(wanted):
            budget -= self._check(uploads[index], target, budget)
        pictures: dict[int, Image.Image] = {}
        for index in sorted(wanted):
            upload = uploads[index]
            with self.slots:
                try:
                    pictures[index] = decode_image(upload.data, target=target, limit=self.limits.max_pixels)
                except BadInput as exc:
                    raise HTTPException(415, f"{upload.name}: {exc}") from exc
        return pictures

    def _check(self, upload: Upload, target: int, budget: int | None) -> int:
        """Pixels ``upload`` will decode to; 413/415 when it cannot be decoded within the limits
        (``budget`` None: only that it reads as an image, 415)."""
        name = upload.name
        if not upload.data:
            raise HTTPException(415, f"{name}: empty upload, not an image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_image(upload.data) as img:  # reads the header only
                    if budget is None:
                        return 0
                    width, height = img.size
                    pixels = _decoded_pixels(img, target)
                    try:
                        check_decode_size(img, self.limits.max_pixels, target)
                    except BadInput as exc:
                        raise HTTPException(413, f"{name}: image too large to decode: {width}x{height} pixels, "
                                                 f"over the upload cap of {self.limits.max_pixels} pixels") from exc
        except Image.DecompressionBombError as exc:
            raise HTTPException(413, f"{name}: image has too many pixels ({exc})") from exc
        except BadInput as exc:
            raise HTTPException(415, f"{name}: {exc}") from exc
        except _HEADER_ERRORS as exc:
            raise HTTPException(415, f"{name}: cannot read the image header ({type(exc).__name__})") from exc
        if pixels > budget:
            raise HTTPException(413, f"{name}: the images of this request would decode to more than "
                                     f"{self.limits.request_pixels} pixels in all")
        return pixels


def _decoded_pixels(img: Image.Image, target: int) -> int:
    width, height = decoded_size(img, target)
    return width * height
