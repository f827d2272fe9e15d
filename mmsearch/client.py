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
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .errors import QueryError, ServerError
from .fsutil import path_from_fields, path_is_exact_text
from .search.query import IMAGE, TEXT, DuplicateGroup, Hit, Hits, Item
from .search.request import Ranking, SearchRequest, Searcher, check_options, check_threshold
from .settings import Settings

if TYPE_CHECKING:  # pragma: no cover - the client never imports the indexing side
    from .progress import Progress

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


class Client(Searcher):
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

    # -- status ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/health").json()

    def info(self) -> dict[str, Any]:
        """Index statistics (the same as ``Engine.info()``)."""
        return self._request("GET", "/api/info").json()

    # -- search (``Searcher``: the options are written once there, ``Engine`` has the same) -------
    def search_request(self, request: SearchRequest) -> Hits:
        """The hits of a checked request, from the server. Image terms name files on *this*
        machine (or hold image bytes); they are uploaded. A lone text is sent as text, never
        read as a path; ``under`` is a folder as the *server* sees it."""
        try:
            return self._search(request)
        except ServerError as exc:
            if exc.status == 404:  # an item term the index does not hold: Engine's error too
                raise QueryError(str(exc).removeprefix("404: ")) from None
            raise

    def _search(self, request: SearchRequest) -> Hits:
        if request.under is not None and not path_is_exact_text(request.under):
            raise QueryError(f"under: {request.under!r} is not valid UTF-8 and cannot be sent to a server; "
                             "name the folder by a path that is")
        terms = request.terms
        if len(terms) == 1 and terms[0].kind == TEXT and terms[0].weight > 0:
            params = {"q": terms[0].value, **_fields(request)}
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
        data = {"terms": json.dumps(spec), **_fields(request), "include_query": request.include_query}
        data = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in data.items()}
        return self._hits(self._request("POST", "/api/search", data=data, files=uploads or None))

    # -- items -------------------------------------------------------------------------------
    def get(self, item_id: int) -> Item | None:
        """Stored metadata of one item (as ``Engine.get``), or None when the index has no such item."""
        try:
            return _item(self._request("GET", f"/api/items/{int(item_id)}").json())
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise

    def count(self) -> int:
        """How many items the index holds (as ``Engine.count``)."""
        return int(self.health()["items"])

    def duplicates(self, *, threshold: float | None = None, type: str = "all", limit: int | None = None,
                   progress: Progress | None = None) -> list[DuplicateGroup]:
        """Groups of near-duplicate items (as ``Engine.duplicates``; at most ``limit`` groups,
        largest first: the server's cap of 10,000 when None). ``progress``: told when the server's
        answer has come."""
        check_options(type, 1, None)  # as Engine checks them, before anything is sent
        params: dict[str, Any] = {"type": type, "limit": MAX_GROUPS if limit is None else limit}
        if threshold is not None:
            params["threshold"] = check_threshold(threshold)
        if progress is not None:
            progress.start("duplicates", 1)
        answer = self._request("GET", "/api/duplicates", params=params).json()
        if progress is not None:
            progress.advance(1)
        return [DuplicateGroup(_item(g["keeper"]), [_item(o) for o in g["others"]],
                               [float(o["similarity"]) for o in g["others"]]) for g in answer["groups"]]

    def thumbnail(self, item_id: int, size: int = 256) -> bytes:
        """JPEG bytes of an image item's thumbnail."""
        return self._request("GET", f"/api/items/{int(item_id)}/thumbnail", params={"size": size}).content

    def file(self, item_id: int) -> bytes:
        """The bytes of an item's original file."""
        return self._request("GET", f"/api/items/{int(item_id)}/file").content


MAX_GROUPS = 10_000  # the server's largest ``limit`` of /api/duplicates


def _fields(request: SearchRequest) -> dict[str, Any]:
    """A checked request's options as the server's fields, only those that differ from its
    defaults (dates as ISO text, near as "LAT,LON,KM")."""
    fields: dict[str, Any] = {"k": request.k, "type": request.type}
    if request.min_score is not None:
        fields["min_score"] = request.min_score
    if request.under is not None:
        fields["under"] = request.under
    if request.dedup is not None:
        fields["dedup_threshold"] = request.dedup
    wanted = request.filters
    for name in ("after", "before"):
        value = getattr(wanted, name)
        if value is not None:
            fields[name] = value.isoformat()
    if wanted.camera is not None:
        fields["camera"] = wanted.camera
    if wanted.near is not None:
        fields["near"] = f"{wanted.near.lat!r},{wanted.near.lon!r},{wanted.near.km!r}"
    if request.sort != "relevance":
        fields["sort"] = request.sort
    ranking, default = request.ranking, Ranking()
    for name in ("fusion", "mode", "image_weight", "text_weight", "calibrated", "cutoff"):
        value = getattr(ranking, name)
        if value != getattr(default, name):
            fields[name] = "true" if value is True else value
    return fields


def _image_bytes(image: Any, name: str = "upload") -> tuple[str, bytes]:
    """(file name, encoded bytes) of a query image given as a local path or as bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return name, bytes(image)
    if not isinstance(image, (str, os.PathLike)):
        raise QueryError("an image term for a server must be a file path or the image's bytes")
    path = Path(image).expanduser()
    if not path.is_file():
        raise QueryError(f"image not found: {image}")  # as Engine says it
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QueryError(f"cannot read query image {image}: {exc.strerror or exc}") from exc
    # The upload's name is only shown back; a name that is not UTF-8 goes with its bytes replaced.
    return os.fsencode(path.name).decode("utf-8", "replace"), data


__all__ = ["Client", "ServerError"]
