"""clip-retrieval's back-end API (``clip_back.py`` 2.45), served beside mmsearch's own.

Tools, notebooks, clip-retrieval's ``ClipClient`` and its web front end talk to
``POST /knn-service``, ``POST /metadata``, ``GET /indices-list`` and ``GET /config.json``; these
routes answer them as clip_back does, byte for byte in form: its JSON (``json.dumps`` with its
default separators and ASCII escapes, then a newline, as flask-restful writes it), its field
names and order (a result's metadata, then ``id`` and ``similarity``), and only the first
``num_images`` results carrying metadata. Bodies are parsed whatever their content type: the
client and the front end send JSON without ``application/json``.

What maps to what: ``indice_name`` is the index folder's name (the only index served; omitted or
null: that one), ``modality`` is the result type (``image`` or ``text``), ``num_result_ids`` the
number of hits searched, ``deduplicate`` collapses near-duplicates (``mmsearch.search.dupes``, at
clip-retrieval's similarity 0.94; as the rest of mmsearch does, more hits are fetched so that
duplicates do not shorten the answer, up to ``dupes.dedup_pool``), ``embedding_input`` a query vector in the index's space,
``image`` a base64 image (decoded as uploads are, within their size and pixel limits). An
``image_url`` is used only when it is one of this server's own item URLs (the front end sends
those for "search with this image"); mmsearch downloads nothing. ``use_mclip``,
``use_safety_model``, ``use_violence_detector``, ``aesthetic_score`` and ``aesthetic_weight``
are accepted and ignored (mmsearch has no such models). A result's metadata: ``url`` (the item's
file on this server), ``image_path`` (the path on the server, valid UTF-8) and, for texts,
``caption`` (the text).

Errors are mmsearch's ``{"detail": "..."}`` with a 4xx status, where clip_back answers 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..search.dupes import CLIP_RETRIEVAL_THRESHOLD
from ..errors import QueryError
from ..search.query import IMAGE, ITEM, TEXT, Hit, QueryTerm, unit_vector
from .responses import text_safe
from .uploads import BASE64_OVERHEAD, Upload

MAX_RESULT_IDS = 10_000  # the front end asks for 3000 ids (and 10000 for its "download" button)
MAX_METADATA_IDS = 10_000
MAX_TEXT_CHARS = 2000
IGNORED = ("use_mclip", "use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight")
_OWN_FILE_URL = re.compile(r"/api/items/(\d{1,18})/file$")

router = APIRouter(tags=["clip-retrieval"])


def _answer(data: Any, status: int = 200) -> Response:
    """A body as flask-restful writes one: ``json.dumps`` defaults plus a newline."""
    return Response(json.dumps(data) + "\n", status_code=status, media_type="application/json")


def index_name(request: Request) -> str:
    return Path(request.app.state.server.engine.folder).name


def _body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"the body is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _count(data: dict[str, Any], name: str, default: int, limit: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise HTTPException(422, f"{name} must be an integer from 1 to {limit}, got {value!r}")
    return value


def _check_index(request: Request, data: dict[str, Any]) -> None:
    wanted, mine = data.get("indice_name"), index_name(request)
    if wanted is not None and wanted != mine:
        raise HTTPException(404, f"unknown indice_name {text_safe(str(wanted))!r}: this server serves {mine!r} "
                                 "(see /indices-list)")


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HTTPException(422, f"{name} must be true or false, got {value!r}")
    return value


def metadata(request: Request, hit: Any) -> dict[str, Any]:
    """clip-retrieval's metadata columns for an item: url, image_path, caption (texts only)."""
    meta: dict[str, Any] = {"url": f"{str(request.base_url).rstrip('/')}/api/items/{hit.id}/file",
                            "image_path": text_safe(hit.path)}
    if hit.text is not None:
        meta["caption"] = text_safe(hit.text)
    return meta


@router.get("/indices-list", summary="clip-retrieval: the index names (one: this server's index)")
def indices_list(request: Request) -> Response:
    return _answer([index_name(request)])


@router.get("/config.json", summary="clip-retrieval front end: default back end, index and URL column")
def config_json(request: Request) -> Response:
    # clip_front.py returns json.dumps(config) as a str: Flask sends it as text/html.
    config = {"defaultBackend": str(request.base_url), "defaultIndex": "", "urlColumn": "url"}
    return Response(json.dumps(config), media_type="text/html; charset=utf-8")


@router.post("/metadata", summary="clip-retrieval: metadata of items by id")
async def metadata_service(request: Request) -> Response:
    data = _body(await request.body())
    ids = data.get("ids")
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise HTTPException(422, "ids must be a list of integer item ids")
    if len(ids) > MAX_METADATA_IDS:
        raise HTTPException(422, f"ids: at most {MAX_METADATA_IDS} per request")
    if not ids:
        return _answer([])
    _check_index(request, data)
    engine = request.app.state.server.engine

    def look_up() -> list[dict[str, Any]]:
        found = []
        for item_id in ids:
            item = engine.get(item_id) if 0 <= item_id < 2**63 else None
            found.append({"id": item_id, "metadata": metadata(request, item) if item is not None else {}})
        return found

    return _answer(await run_in_threadpool(look_up))


@router.post("/knn-service", summary="clip-retrieval: nearest items to a text, a base64 image or an embedding")
async def knn_service(request: Request) -> Response:
    data = _body(await request.body())
    return _answer(await run_in_threadpool(_knn, request, data))


def _knn(request: Request, data: dict[str, Any]) -> list[dict[str, Any]]:
    state = request.app.state.server
    engine = state.engine
    _check_index(request, data)
    modality = data.get("modality", "image")
    if modality not in ("image", "text"):
        raise HTTPException(422, f"modality must be 'image' or 'text', got {modality!r}")
    num_images = _count(data, "num_images", 100, MAX_RESULT_IDS)
    k = _count(data, "num_result_ids", num_images, MAX_RESULT_IDS)
    dedup = CLIP_RETRIEVAL_THRESHOLD if _flag(data, "deduplicate") else False
    text, image, image_url, embedding = (data.get(n) for n in ("text", "image", "image_url", "embedding_input"))
    options = {"k": k, "type": modality, "dedup": dedup}
    if text is not None and text != "":  # clip_back's order: text, then image or image_url, then embedding
        if not isinstance(text, str) or not text.strip():
            raise HTTPException(422, "text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(422, f"text longer than {MAX_TEXT_CHARS} characters")
        hits = engine.search(QueryTerm(TEXT, text), **options)
    elif image is not None:
        # As /api/search uploads: the image encoder queries use (ONNX where exported, no torch),
        # asked only once the data reads as an image.
        picture = _decode_image(state, image, lambda: engine.image_encoder.image_size)
        hits = engine.search(QueryTerm(IMAGE, picture), **options)
    elif image_url is not None:
        match = _OWN_FILE_URL.search(str(image_url).split("?", 1)[0]) if isinstance(image_url, str) else None
        if match is None or engine.get(int(match.group(1))) is None:
            raise HTTPException(422, "image_url: mmsearch downloads nothing; send the image as base64 in 'image' "
                                     "(URLs of this server's own items, /api/items/ID/file, are accepted)")
        hits = engine.search(QueryTerm(ITEM, match.group(1)), include_query=True, **options)
    elif embedding is not None:
        hits = engine.search_vector(_vector(embedding), **options)
    else:
        raise HTTPException(422, "give one of text, image, image_url or embedding_input")
    return [_result(request, n < num_images, hit) for n, hit in enumerate(hits)]


def _result(request: Request, with_metadata: bool, hit: Hit) -> dict[str, Any]:
    output = metadata(request, hit) if with_metadata else {}
    output["id"] = hit.id
    output["similarity"] = hit.score
    return output


def _vector(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value or len(value) > 65_536 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise HTTPException(422, "embedding_input must be a list of finite numbers")
    try:  # clip_back searches it as given; cosines need unit length (reached without overflow)
        return unit_vector(value, "embedding_input")
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from exc


def _decode_image(state: Any, value: Any, target: Callable[[], int]) -> Any:
    if not isinstance(value, str) or not value:
        raise HTTPException(422, "image must be a base64 string")
    if value.startswith("data:") and "," in value:  # a data URL, as FileReader.readAsDataURL gives
        value = value.split(",", 1)[1]
    limit = state.limits.max_bytes
    if len(value) > limit * BASE64_OVERHEAD + 4:
        raise HTTPException(413, f"image larger than the limit of {limit} bytes")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(422, "image is not valid base64") from exc
    return state.decoder.decode_all([Upload("image", raw)], {0}, target)[0]


__all__ = ["router", "IGNORED", "MAX_RESULT_IDS"]
