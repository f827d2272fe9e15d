"""HTTP API (`mmsearch serve`): search, items, thumbnails, errors, path safety, concurrency, client.

A real uvicorn server runs in a thread on a free loopback port over an index built with the tiny
real open_clip model; requests go through real sockets.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from conftest import make_image, set_item_path
from mmsearch import Engine, QueryTerm
from mmsearch.client import Client
from mmsearch.errors import QueryError, ServerError
from mmsearch.server import ServerThread, create_app
from mmsearch.server.thumbs import THUMBS_DIR

TEXTS = {
    "notes/pasta.txt": "a red pasta dish with fresh basil and tomato sauce",
    "notes/beach.md": "sunset over a quiet sandy beach",
}
CAPTIONS = ["a dog running on green grass", "a black cat sleeping on a sofa"]
SECRET = "top secret: this file lies outside every indexed root"


def _rotated_jpeg(path: Path) -> Path:
    """A 96x72 JPEG, left half red, right half blue, tagged EXIF orientation 6 (shown rotated 90°)."""
    img = Image.new("RGB", (96, 72), (220, 20, 20))
    img.paste((20, 20, 220), (48, 0, 96, 72))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, quality=95, exif=exif)
    return path


def build_corpus(base: Path) -> Path:
    root = base / "corpus"
    for i, name in enumerate(["a.jpg", "b.png", "c.webp", "sub/d.bmp", "sub/e.gif", "ünï cödé.jpg"]):
        make_image(root / name, seed=i)
    _rotated_jpeg(root / "rotated.jpg")
    for rel, text in TEXTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(CAPTIONS)))
    # Outside the root: a secret text and an image that a symlink inside the root points to.
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    make_image(outside / "elsewhere.jpg", seed=42)
    os.symlink(outside / "elsewhere.jpg", root / "link-out.jpg")
    return root


class Served:
    def __init__(self, base: Path, tiny_model):
        self.base = base
        self.root = build_corpus(base)
        self.index = base / "index"
        self.engine = Engine(self.index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint))
        self.engine.add([self.root])
        self.server = ServerThread(create_app(self.engine)).start()
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def item_id(self, rel: str, locator: str = "") -> int:
        path = str(self.root / rel)
        for hit in self.engine.search("anything", k=100):
            if hit.path == path and hit.locator == locator:
                return hit.id
        raise KeyError(rel)

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.engine.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    s = Served(tmp_path_factory.mktemp("served"), tiny_model)
    yield s
    s.close()


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of '..' or '%2F')."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- status and docs -----------------------------------------------------------------------------
def test_health_info_and_openapi(served):
    health = served.http.get("/api/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True and health["items"] == 11
    info = served.http.get("/api/info").json()
    assert (info["images"], info["texts"]) == (7, 4) and info["roots"] == [str(served.root)]
    schema = served.http.get("/openapi.json").json()
    assert {"/api/search", "/api/items/{item_id}/similar", "/api/items/{item_id}/thumbnail"} <= set(schema["paths"])
    assert "post" in schema["paths"]["/api/search"] and "get" in schema["paths"]["/api/search"]
    assert "/redoc" not in schema["paths"] and served.http.get("/redoc").status_code == 404


def test_docs_page_works_offline(served):
    """/docs loads Swagger UI from this server only (FastAPI's default pulls it from a CDN)."""
    docs = served.http.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert "http:" not in docs.text and "https:" not in docs.text and "//" not in docs.text.replace("<!doctype", "")
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert {"docs/assets/swagger-ui-bundle.js", "docs/assets/swagger-ui.css", "static/docs.js"} <= set(assets)
    for asset in assets:
        if not asset.startswith("data:"):
            response = served.http.get("/" + asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
    init = served.http.get("/static/docs.js").text
    assert "openapi.json" in init and "validatorUrl: null" in init


# -- searching -----------------------------------------------------------------------------------
def test_text_search_returns_ranked_hits_with_urls(served):
    answer = served.http.get("/api/search", params={"q": CAPTIONS[1], "k": 5}).json()
    hits = answer["hits"]
    assert answer["query"] == [{"kind": "text", "value": CAPTIONS[1], "weight": 1.0}]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    top = hits[0]
    assert top["text"] == CAPTIONS[1] and top["locator"] == "2" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["thumbnail_url"] is None and top["file_url"] == f"/api/items/{top['id']}/file"
    for hit in hits:
        assert (hit["thumbnail_url"] is not None) == (hit["modality"] == "image")

    images = served.http.get("/api/search", params={"q": "pasta", "k": 20, "type": "image"}).json()["hits"]
    assert len(images) == 7 and {h["modality"] for h in images} == {"image"}
    texts = served.http.get("/api/search", params={"q": "pasta", "k": 20, "type": "text"}).json()["hits"]
    assert len(texts) == 4 and {h["modality"] for h in texts} == {"text"}
    cut = served.http.get("/api/search", params={"q": CAPTIONS[0], "k": 20, "min_score": 0.999}).json()["hits"]
    assert [h["text"] for h in cut] == [CAPTIONS[0]]

    # A text term sent by POST is encoded as by GET and the library (the index's ONNX text
    # encoder), so the answers are the same to the last bit.
    posted = served.http.post("/api/search", data={"q": CAPTIONS[1], "k": "5"}).json()["hits"]
    assert [(h["id"], h["score"]) for h in posted] == [(h["id"], h["score"]) for h in hits]


def test_text_query_is_never_read_as_a_server_path(served):
    path = str(served.root / "a.jpg")
    answer = served.http.get("/api/search", params={"q": path, "k": 3}).json()
    assert answer["query"][0]["kind"] == "text"
    # Read as an image path, a.jpg would come back with cosine 1; as text it cannot.
    assert not any(h["path"] == path and h["score"] > 0.999 for h in answer["hits"])


def test_search_by_uploaded_image(served):
    data = (served.root / "b.png").read_bytes()
    files = {"images": ("query.png", data, "image/png")}
    hits = served.http.post("/api/search", files=files, data={"k": "3", "include_query": "true"}).json()["hits"]
    assert hits[0]["path"] == str(served.root / "b.png") and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # The same result as the library gives for the file itself.
    expected = served.engine.search(served.root / "b.png", k=3, include_query=True)
    assert [h["id"] for h in hits] == [h.id for h in expected]


def test_more_like_this(served):
    item = served.item_id("c.webp")
    hits = served.http.get(f"/api/items/{item}/similar", params={"k": 4, "type": "image"}).json()["hits"]
    assert item not in [h["id"] for h in hits] and len(hits) == 4
    assert [h["id"] for h in hits] == [h.id for h in served.engine.search(QueryTerm("item", str(item)), k=4, type="image")]
    with_self = served.http.get(f"/api/items/{item}/similar", params={"k": 1, "include_self": "true"}).json()["hits"]
    assert with_self[0]["id"] == item and with_self[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_weighted_combination_matches_the_library(served):
    item = served.item_id("a.jpg")
    terms = [
        {"kind": "text", "value": "a quiet beach", "weight": 2},
        {"kind": "item", "value": item, "weight": -0.5},
        {"kind": "image", "upload": 0, "weight": 1},
    ]
    files = [("images", ("q.webp", (served.root / "c.webp").read_bytes(), "image/webp"))]
    answer = served.http.post("/api/search", data={"terms": json.dumps(terms), "k": "6"}, files=files).json()
    assert [t["kind"] for t in answer["query"]] == ["text", "item", "image"]
    vector = served.engine.encode_query([
        QueryTerm("text", "a quiet beach", 2), QueryTerm("item", str(item), -0.5),
        QueryTerm("image", str(served.root / "c.webp"), 1),
    ])
    expected = served.engine.search_vector(vector, k=6, exclude={item})
    assert [h["id"] for h in answer["hits"]] == [h.id for h in expected]
    assert [h["score"] for h in answer["hits"]] == pytest.approx([h.score for h in expected], abs=1e-5)

    # Plain form fields make a combination too (each weight 1).
    both = served.http.post("/api/search", data={"q": "a quiet beach", "item": str(item), "k": "3"}).json()
    assert [t["kind"] for t in both["query"]] == ["text", "item"] and item not in [h["id"] for h in both["hits"]]


# -- items, thumbnails, files --------------------------------------------------------------------
def test_item_metadata_and_original_file(served):
    item = served.item_id("ünï cödé.jpg")
    meta = served.http.get(f"/api/items/{item}").json()
    assert meta["path"] == str(served.root / "ünï cödé.jpg") and (meta["width"], meta["height"]) == (96, 72)
    original = served.http.get(meta["file_url"])
    assert original.status_code == 200 and original.content == (served.root / "ünï cödé.jpg").read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    assert original.headers["x-content-type-options"] == "nosniff"
    text = served.http.get(f"/api/items/{served.item_id('notes/pasta.txt')}/file")
    assert text.headers["content-type"].startswith("text/plain") and text.text == TEXTS["notes/pasta.txt"]


def test_thumbnail_is_upright_sized_and_cached(served):
    item = served.item_id("rotated.jpg")
    response = served.http.get(f"/api/items/{item}/thumbnail", params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.size == (48, 64)  # 96x72 stored, EXIF says rotate: portrait
    with Image.open(served.root / "rotated.jpg") as img:
        expected = ImageOps.exif_transpose(img).convert("RGB").resize(thumb.size)
    diff = np.abs(np.asarray(thumb, np.float32) - np.asarray(expected, np.float32)).mean()
    assert diff < 12, f"thumbnail differs from the upright image (mean abs diff {diff:.1f})"
    cached = list((served.index / THUMBS_DIR).glob(f"{item}_*_64.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == response.content
    again = served.http.get(f"/api/items/{item}/thumbnail", params={"size": 64})
    assert again.content == response.content
    assert served.http.get(f"/api/items/{served.item_id('notes/beach.md')}/thumbnail").status_code == 404


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [
        ("GET", "/api/search", {"params": {"q": "x", "k": 0}}, 422, "k"),
        ("GET", "/api/search", {"params": {"q": "x", "k": "ten"}}, 422, "k"),
        ("GET", "/api/search", {"params": {"q": "x", "type": "audio"}}, 422, "type"),
        ("GET", "/api/search", {"params": {"q": "x", "min_score": "high"}}, 422, "min_score"),
        ("GET", "/api/search", {"params": {"k": 3}}, 422, "q"),
        ("GET", "/api/search", {"params": {"q": "   "}}, 422, "empty"),
        ("GET", "/api/items/987654", {}, 404, "987654"),
        ("GET", "/api/items/987654/similar", {}, 404, "987654"),
        ("GET", "/api/items/987654/thumbnail", {}, 404, "987654"),
        ("GET", "/api/items/987654/file", {}, 404, "987654"),
        ("GET", "/api/items/1/thumbnail", {"params": {"size": 5000}}, 422, "size"),
        ("POST", "/api/search", {"data": {"k": "3"}}, 422, "empty query"),
        ("POST", "/api/search", {"data": {"terms": "[{"}}, 422, "terms"),
        ("POST", "/api/search", {"data": {"terms": '[{"kind":"sound","value":"x"}]'}}, 422, "kind"),
        ("POST", "/api/search", {"data": {"terms": '[{"kind":"image","upload":3}]'}}, 422, "upload"),
        ("POST", "/api/search", {"data": {"terms": '[{"kind":"text","value":"x","weight":-1}]'}}, 422, "positive"),
        ("POST", "/api/search", {"data": {"terms": '[{"kind":"item","value":987654}]'}}, 404, "987654"),
        ("POST", "/api/search", {"data": {"terms": '[{"kind":"text","value":"x"},{"kind":"text","value":"x","weight":-1}]'}},
         400, "cancel"),
        ("POST", "/api/search", {"files": {"images": ("notes.txt", b"just some words", "image/png")}}, 415, "not an image"),
        ("POST", "/api/search", {"files": {"images": ("broken.jpg", b"\xff\xd8\xff\xe0broken", "image/jpeg")}}, 415, "broken.jpg"),
    ],
)
def test_errors_are_json_with_the_right_status(served, method, path, kwargs, status, words):
    response = served.http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["detail"]


def test_upload_size_limits(served):
    big = io.BytesIO()
    Image.new("RGB", (400, 400), (10, 200, 30)).save(big, "PNG")
    with TestClient(create_app(served.engine, max_upload_bytes=1000, preload=False, allowed_hosts=["testserver"])) as client:
        response = client.post("/api/search", files={"images": ("big.png", big.getvalue(), "image/png")})
        assert response.status_code == 413 and "limit of 1000 bytes" in response.json()["detail"]
        # A body over the whole-request limit is refused from its Content-Length, unread.
        response = client.post("/api/search", content=b"x" * 400_000, headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
        # Without a Content-Length (chunked), the body is counted as it arrives and cut off.
        chunks = iter([b"--b\r\n" + b"x" * 300_000, b"y" * 300_000])
        response = client.post("/api/search", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]


# -- path safety ---------------------------------------------------------------------------------
TRICKS = [
    "/api/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/items/%2Fetc%2Fpasswd/file",
    "/api/items/1%2F..%2F..%2Fsecret.txt/file",
    "/api/items/../../../../etc/passwd",
    "/api/items/1/file/../../../../etc/passwd",
    "/api/items/-1/file",
    "/api/items/0x1/file",
    "/api/items/1.0/file",
    "/api/items/%31%2e%30/file",
    "/api/items/%EF%BC%91/file",  # a full-width digit one
    "/api/file?path=/etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2Fetc%2Fpasswd",
    "/static/..%5C..%5Cserver.py",
    "//etc/passwd",
]


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_get_404(served, path):
    tricks = [path, path.replace("secret.txt", str(served.base / "outside" / "secret.txt").replace("/", "%2F"))]
    for attempt in tricks:
        status, body = raw_get(served.url, attempt)
        assert status == 404, (attempt, status, body[:200])
        assert b"root:" not in body and SECRET.encode() not in body


def test_symlink_out_of_the_roots_is_not_served(served):
    """One rule for indexing and serving: a symlink leading outside the library is not indexed
    (so no search shows it), and a row that names one (an index made before the rule) is not served."""
    hits = served.http.get("/api/search", params={"q": "anything", "k": 100}).json()["hits"]
    assert not any(h["path"].endswith("link-out.jpg") for h in hits)
    item = served.item_id("a.jpg")
    path = str(served.root / "a.jpg")
    try:
        set_item_path(served.engine.folder, item, str(served.root / "link-out.jpg"))
        assert served.http.get(f"/api/items/{item}").status_code == 200
        for what in ("file", "thumbnail"):
            response = served.http.get(f"/api/items/{item}/{what}")
            assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    finally:
        set_item_path(served.engine.folder, item, path)


def test_only_files_inside_the_roots_are_served_even_if_the_database_says_otherwise(served):
    item = served.item_id("notes/beach.md")
    path = str(served.root / "notes" / "beach.md")
    secret = str(served.base / "outside" / "secret.txt")
    sneaky = str(served.root / ".." / "outside" / "secret.txt")
    try:
        for bad in (secret, sneaky):
            set_item_path(served.engine.folder, item, bad)
            response = served.http.get(f"/api/items/{item}/file")
            assert response.status_code == 404 and SECRET not in response.text
    finally:
        set_item_path(served.engine.folder, item, path)
    assert served.http.get(f"/api/items/{item}/file").text == TEXTS["notes/beach.md"]


# -- concurrency ---------------------------------------------------------------------------------
def test_many_simultaneous_requests_all_answered_correctly(served):
    captions = {served.item_id("captions.jsonl", str(i + 1)): text for i, text in enumerate(CAPTIONS)}
    captions[served.item_id("notes/pasta.txt")] = TEXTS["notes/pasta.txt"]
    images = {served.item_id(rel): rel for rel in ("a.jpg", "b.png", "c.webp", "sub/d.bmp")}
    expected_similar = {i: [h.id for h in served.engine.search(QueryTerm("item", str(i)), k=3)] for i in images}
    thumbs = {i: served.http.get(f"/api/items/{i}/thumbnail").content for i in images}  # warm the cache

    def text_query(item_id: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            hits = http.get("/api/search", params={"q": captions[item_id], "k": 3}).json()["hits"]
        assert hits[0]["id"] == item_id and hits[0]["score"] > 0.999

    def similar(item_id: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            hits = http.get(f"/api/items/{item_id}/similar", params={"k": 3}).json()["hits"]
        assert [h["id"] for h in hits] == expected_similar[item_id]

    def upload(item_id: int) -> None:
        data = (served.root / images[item_id]).read_bytes()
        with httpx.Client(base_url=served.url, timeout=60) as http:
            hits = http.post("/api/search", files={"images": ("q", data)}, data={"k": "1", "include_query": "true"}).json()["hits"]
        assert hits[0]["id"] == item_id

    def thumbnail(item_id: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            assert http.get(f"/api/items/{item_id}/thumbnail").content == thumbs[item_id]

    jobs = []
    for round_ in range(6):
        jobs += [(text_query, i) for i in captions] + [(similar, i) for i in images]
        jobs += [(upload, i) for i in images] + [(thumbnail, i) for i in images]
    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(fn, arg) for fn, arg in jobs]:
            future.result()  # re-raises any failed check


def _keepalive_median_ms(url: str, path: str, n: int = 15) -> float:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.request("GET", path)
            conn.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return sorted(times)[n // 2]


def test_kept_alive_connections_answer_without_the_delayed_ack_wait(served):
    # Without TCP_NODELAY each answer on a reused connection waited ~40 ms for the client's ACK.
    assert served.server._socket.proto == socket.IPPROTO_TCP
    for path in ("/api/health", f"/api/items/{served.item_id('a.jpg')}/thumbnail"):
        assert _keepalive_median_ms(served.url, path) < 25


# -- the server follows index runs made elsewhere --------------------------------------------------
def test_thumbnails_of_an_index_inside_its_root_are_not_indexed(tmp_path, tiny_model):
    root = tmp_path / "photos"
    make_image(root / "a.jpg", seed=1)
    with Engine(root / "indexes" / "default", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        with TestClient(create_app(engine, preload=False, allowed_hosts=["testserver"])) as client:
            assert client.get(f"/api/items/{engine.search('x', k=1)[0].id}/thumbnail").status_code == 200
        assert list((engine.folder / THUMBS_DIR).iterdir())
        assert engine.add([root]).added == 0 and engine.info()["images"] == 1


def test_server_sees_items_indexed_by_another_engine(tmp_path, tiny_model):
    root = tmp_path / "photos"
    make_image(root / "one.jpg", seed=1)
    model = {"model": str(tiny_model.config), "pretrained": str(tiny_model.checkpoint)}
    with Engine(tmp_path / "idx", **model) as engine:
        engine.add([root])
        with ServerThread(create_app(engine)) as server, Client(server.url) as client:
            assert client.health()["items"] == 1
            make_image(root / "two.png", seed=2)
            with Engine(tmp_path / "idx", **model) as writer:  # like `mmsearch index` in another process
                writer.add([root])
            assert client.health()["items"] == 2
            hits = client.search_image(root / "two.png", k=1, include_query=True)
            assert hits[0].path == str(root / "two.png") and hits[0].score == pytest.approx(1.0, abs=1e-4)


# -- Python client -------------------------------------------------------------------------------
def test_python_client_against_the_real_server(served):
    with Client(served.url) as client:
        assert client.health()["status"] == "ok"
        assert client.info()["items"] == 11
        hits = client.search(CAPTIONS[0], k=2)
        assert hits[0].text == CAPTIONS[0] and hits[0].rank == 1 and hits[0].file_url.endswith("/file")

        # CLI syntax: a local image file is uploaded, texts are texts, weights apply.
        query_image = served.root / "sub" / "d.bmp"
        combined = client.search(f"0.5:a dog + {query_image}", k=5, include_query=True)
        vector = served.engine.encode_query([QueryTerm("text", "a dog", 0.5), QueryTerm("image", str(query_image))])
        assert [h.id for h in combined] == [h.id for h in served.engine.search_vector(vector, k=5)]

        by_bytes = client.search_image(query_image.read_bytes(), k=1, include_query=True)
        assert by_bytes[0].path == str(query_image)
        similar = client.similar(by_bytes[0].id, k=3, type="image")
        assert by_bytes[0].id not in [h.id for h in similar] and {h.modality for h in similar} == {"image"}

        meta = client.get(by_bytes[0].id)
        assert meta.path == str(query_image) and meta.thumbnail_url
        # Thumbnails come in fixed sizes: 32 is served by the 64-pixel one.
        assert Image.open(io.BytesIO(client.thumbnail(meta.id, size=32))).size == (64, 48)
        assert client.file(meta.id) == query_image.read_bytes()

        # As Engine.get: None for an item the index does not hold (it raised a 404 ServerError).
        assert client.get(987654) is None and served.engine.get(987654) is None
        # Options are checked before anything is sent, with Engine's error and message.
        with pytest.raises(QueryError, match="k must be an integer of at least 1"):
            client.search("cats", k=0)
        with pytest.raises(QueryError, match="k must be an integer of at least 1"):
            served.engine.search("cats", k=0)
        assert served.http.get("/api/search", params={"q": "cats", "k": 0}).status_code == 422

    with Client("http://127.0.0.1:9", timeout=2) as offline, pytest.raises(ServerError) as unreachable:
        offline.health()
    assert unreachable.value.status is None and "cannot reach" in str(unreachable.value)


# -- CLI -----------------------------------------------------------------------------------------
def test_serve_command_refuses_a_missing_index(cli, tmp_path):
    result = cli("serve", "--index", tmp_path / "nope", "--port", "0", ok=False)
    assert result.exit_code != 0 and "index not found" in result.stderr.lower()
    help_text = cli("serve", "--help").stdout
    assert "--host" in help_text and "--port" in help_text and "127.0.0.1" in help_text
