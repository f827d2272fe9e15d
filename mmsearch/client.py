"""A small Python client for a running ``mmsearch serve``.

    from mmsearch.client import Client

    with Client("http://127.0.0.1:8000") as client:
        for hit in client.search("red pasta dish", k=5, type="image"):
            print(hit.rank, f"{hit.score:.3f}", hit.path)
        client.search("2:beach + ./dog.jpg - people")   # CLI syntax; local images are uploaded
        client.similar(hits[0].id)                         # "more like this"
        client.search_image("photo.jpg")
        client.get(hits[0].id)                             # one item's metadata
        client.duplicates()                                # near-duplicate groups

It has the Engine's method names and filters (``search``, ``similar``, ``get``, ``info``,
``duplicates``, with ``k``, ``type``, ``min_score``, ``under``, ``dedup``, ``after``, ``before``,
``camera``, ``near``, ``sort``) and returns the same ``Hit``/``Item`` types, with the
server's URLs filled in (``thumbnail_url``, ``file_url``, ``similar_url``).

Errors the server reports become ``ServerError`` (with ``status`` and the server's message).
A server started with a token needs it: ``Client(url, token=...)`` or ``$MMSEARCH_TOKEN``.
Paths are the exact file names, as ``Engine`` gives them, also names that are not valid UTF-8
(the server sends those as base64 in ``path_bytes`` beside a readable ``path``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx

from .search.dupes import DuplicateGroup
from .errors import ServerError
from .fsutil import path_from_fields
from .search.query import IMAGE, TEXT, Hit, Hits, Item, QueryTerm, parse_query
from .settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
_ITEM_FIELDS = {f.name for f in fields(Item)}
_HIT_FIELDS = {f.name for f in fields(Hit)}


def _item(data: dict[str, Any], kind: type[Item] = Item) -> Item:
    names = _HIT_FIELDS if kind is Hit else _ITEM_FIELDS
    values = {k: v for k, v in data.items() if k in names}
    values["path"] = path_from_fields(data)  # the exact name, also when it is not valid UTF-8
    if isinstance(values.get("record"), dict):
        values["record"] = {**values["record"], "path": path_from_fields(values["record"])}
    image = (values.get("matched") or {}).get("image")
    if isinstance(image, dict) and "path" in image:
        values["matched"] = {**values["matched"], "image": {**image, "path": path_from_fields(image)}}
    return kind(**values)


class Client:
    """Calls one mmsearch server. ``url`` defaults to ``$MMSEARCH_URL`` or http://127.0.0.1:8000;
    ``token`` (default ``$MMSEARCH_TOKEN``) is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, settings: Settings | None = None):
        settings = settings or Settings.from_env()
        self.url = (url or settings.url or DEFAULT_URL).rstrip("/")
        token = token if token is not None else settings.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach mmsearch server at {self.url}: {exc}", status=None) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ServerError(f"{response.status_code}: {detail}", status=response.status_code)
        return response

    def _hits(self, response: httpx.Response) -> Hits:
        answer = response.json()
        return Hits([_item(h, Hit) for h in answer["hits"]], why_empty=answer.get("why_empty"))

    @staticmethod
    def _options(k: int, type: str, min_score: float | None, under: str | os.PathLike | None,
                 dedup: bool | float = False, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"k": k, "type": type}
        params.update(_filter_params(filters or {}))
        if min_score is not None:
            params["min_score"] = min_score
        if under is not None:
            params["under"] = os.fspath(under)
        if dedup is True:
            params["dedup"] = "true"
        elif dedup is not False and dedup is not None:
            params["dedup_threshold"] = dedup
        return params

    # -- status ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/health").json()

    def info(self) -> dict[str, Any]:
        """Index statistics (the same as ``Engine.info()``)."""
        return self._request("GET", "/api/info").json()

    # -- search ------------------------------------------------------------------------------
    def search(
        self,
        query: str | QueryTerm | Sequence[QueryTerm | str],
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | os.PathLike | None = None,
        include_query: bool = False,
        dedup: bool | float = False,
        fusion: str = "none",
        mode: str = "vector",
        image_weight: float | None = None,
        text_weight: float | None = None,
        calibrated: bool = False,
        cutoff: float | str | None = None,
        **filters: Any,
    ) -> Hits:
        """Search with a text, CLI-style terms (``"2:beach + ./dog.jpg"``) or ``QueryTerm`` objects.

        Image terms name files on *this* machine (or hold image bytes); they are uploaded. Item
        terms are ids of indexed items. A lone text is sent as text, never read as a path.
        ``under`` is a folder as the *server* sees it. ``filters``: Engine.search's ``after``,
        ``before``, ``camera``, ``near`` and ``sort``; ``fusion``, ``mode``, the weights,
        ``calibrated`` and ``cutoff``: as ``Engine.search``.
        """
        filters = _check_filters(filters)
        terms = self._terms(query)
        ranking = _ranking(fusion, mode, image_weight, text_weight, calibrated, cutoff)
        if len(terms) == 1 and terms[0].kind == TEXT and terms[0].weight > 0:
            params = {"q": terms[0].value, **self._options(k, type, min_score, under, dedup, filters), **ranking}
            return self._hits(self._request("GET", "/api/search", params=params))
        spec: list[dict[str, Any]] = []
        uploads: list[tuple[str, tuple[str, bytes, str]]] = []
        for term in terms:
            if term.kind == IMAGE:
                name, data = _image_bytes(term.value)
                spec.append({"kind": IMAGE, "upload": len(uploads), "weight": term.weight})
                uploads.append(("images", (name, data, "application/octet-stream")))
            else:
                spec.append({"kind": term.kind, "value": term.value, "weight": term.weight})
        return self._post_search(spec, uploads, k, type, min_score, under, include_query, dedup, filters, ranking)

    def search_image(
        self, image: str | os.PathLike | bytes, *, k: int = 10, type: str = "all",
        min_score: float | None = None, under: str | os.PathLike | None = None, include_query: bool = False,
        filename: str = "upload", dedup: bool | float = False, **filters: Any,
    ) -> Hits:
        """Search by an image: a local file path or the encoded image bytes."""
        filters = _check_filters(filters)
        name, data = _image_bytes(image, filename)
        return self._post_search([{"kind": IMAGE, "upload": 0, "weight": 1.0}],
                                 [("images", (name, data, "application/octet-stream"))],
                                 k, type, min_score, under, include_query, dedup, filters)

    def similar(self, item_id: int, *, k: int = 10, type: str = "all", min_score: float | None = None,
                under: str | os.PathLike | None = None, include_self: bool = False,
                dedup: bool | float = False, **filters: Any) -> Hits:
        """'More like this': the items nearest to indexed item ``item_id``."""
        filters = _check_filters(filters)
        params = {**self._options(k, type, min_score, under, dedup, filters), "include_self": include_self}
        return self._hits(self._request("GET", f"/api/items/{int(item_id)}/similar", params=params))

    def _post_search(self, spec: list[dict[str, Any]], uploads: list, k: int, type: str,
                     min_score: float | None, under: str | os.PathLike | None, include_query: bool,
                     dedup: bool | float = False, filters: dict[str, Any] | None = None,
                     ranking: dict[str, Any] | None = None) -> Hits:
        data = {"terms": json.dumps(spec), **self._options(k, type, min_score, under, dedup, filters),
                "include_query": include_query, **(ranking or {})}
        data = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in data.items()}
        return self._hits(self._request("POST", "/api/search", data=data, files=uploads or None))

    @staticmethod
    def _terms(query: str | QueryTerm | Sequence[QueryTerm | str]) -> list[QueryTerm]:
        if isinstance(query, QueryTerm):
            return [query]
        if isinstance(query, str):
            return parse_query([query])
        items = list(query)
        if all(isinstance(q, QueryTerm) for q in items):
            return items  # type: ignore[return-value]
        return parse_query([str(q) for q in items])

    # -- items -------------------------------------------------------------------------------
    def get(self, item_id: int) -> Item:
        """Stored metadata of one item (as ``Engine.get``)."""
        return _item(self._request("GET", f"/api/items/{int(item_id)}").json())

    def duplicates(self, *, threshold: float | None = None, type: str = "all",
                   limit: int = 100) -> list[DuplicateGroup]:
        """Groups of near-duplicate items (as ``Engine.duplicates``; the server returns at most
        ``limit`` groups, largest first)."""
        params: dict[str, Any] = {"type": type, "limit": limit}
        if threshold is not None:
            params["threshold"] = threshold
        answer = self._request("GET", "/api/duplicates", params=params).json()
        return [DuplicateGroup(_item(g["keeper"]), [_item(o) for o in g["others"]],
                               [float(o["similarity"]) for o in g["others"]]) for g in answer["groups"]]

    def thumbnail(self, item_id: int, size: int = 256) -> bytes:
        """JPEG bytes of an image item's thumbnail."""
        return self._request("GET", f"/api/items/{int(item_id)}/thumbnail", params={"size": size}).content

    def file(self, item_id: int) -> bytes:
        """The bytes of an item's original file."""
        return self._request("GET", f"/api/items/{int(item_id)}/file").content


_FILTERS = ("after", "before", "camera", "near", "sort")


def _check_filters(filters: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(filters) - set(_FILTERS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    return filters


def _filter_params(filters: dict[str, Any]) -> dict[str, str]:
    """The capture metadata filters as the server's fields: dates as ISO text, near as
    "LAT,LON,KM" (checked by the server, which answers a bad value with its one-line reason)."""
    params: dict[str, str] = {}
    for name in ("after", "before"):
        value = filters.get(name)
        if value is not None:
            params[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if filters.get("camera") is not None:
        params["camera"] = str(filters["camera"])
    near = filters.get("near")
    if near is not None:
        params["near"] = near if isinstance(near, str) else ",".join(
            str(v) for v in ((near.lat, near.lon, near.km) if hasattr(near, "km") else near))
    if filters.get("sort") not in (None, "relevance"):
        params["sort"] = str(filters["sort"])
    return params


def _ranking(fusion: str, mode: str, image_weight: float | None, text_weight: float | None, calibrated: bool,
             cutoff: float | str | None) -> dict[str, Any]:
    """The ranking options that differ from the server's defaults, as request fields."""
    fields: dict[str, Any] = {"fusion": fusion, "mode": mode, "image_weight": image_weight,
                              "text_weight": text_weight, "calibrated": "true" if calibrated else None, "cutoff": cutoff}
    defaults = {"fusion": "none", "mode": "vector"}
    return {k: v for k, v in fields.items() if v is not None and defaults.get(k) != v}


def _image_bytes(image: Any, name: str = "upload") -> tuple[str, bytes]:
    """(file name, encoded bytes) of a query image given as a local path or as bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return name, bytes(image)
    if not isinstance(image, (str, os.PathLike)):
        raise ServerError("an image term for a server must be a file path or the image's bytes", status=None)
    path = Path(image).expanduser()
    try:
        return path.name, path.read_bytes()
    except OSError as exc:
        raise ServerError(f"cannot read query image {image}: {exc.strerror or exc}", status=None) from exc


__all__ = ["Client", "ServerError"]
