"""POST /api/search input: decompression bombs, the pixel budget, JSON bodies; the item shape.

A real uvicorn server runs in a thread on a loopback port over an index built with the tiny real
open_clip model; requests go through real sockets.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import make_image
from mmsearch import Engine
from mmsearch.server import ServerThread, create_app

CAPTIONS = ["a dog running on green grass", "a black cat sleeping on a sofa"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("uploads")
    root = base / "photos"
    for n, name in enumerate(["a.jpg", "b.png", "c.webp"]):
        make_image(root / name, seed=n)
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CAPTIONS))
    engine = Engine(base / "index", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint))
    engine.add([root])
    with ServerThread(create_app(engine)) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        yield http, engine, root
    engine.close()


def _bilevel_png(width: int, height: int) -> bytes:
    """A blank 1-bit PNG: a few KB on disk, width x height pixels once decoded."""
    out = io.BytesIO()
    Image.new("1", (width, height), 0).save(out, "PNG", optimize=True)
    return out.getvalue()


class PeakRSS:
    """Largest resident set size of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20

    @staticmethod
    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


BOMB = None


def _bomb() -> bytes:
    global BOMB
    if BOMB is None:
        BOMB = _bilevel_png(9400, 9400)  # 88 MP, under Pillow's own warning threshold
    return BOMB


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from /proc")
def test_decompression_bomb_uploads_are_refused_quickly_without_the_memory(server):
    http, _, _ = server
    bomb = _bomb()
    assert len(bomb) < 20_000
    files = [("images", (f"bomb{n}.png", bomb, "image/png")) for n in range(4)]
    with PeakRSS() as rss:
        started = time.perf_counter()
        response = http.post("/api/search", files=files)
        took = time.perf_counter() - started
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "bomb0.png" in detail and "9400x9400" in detail and "cap" in detail
    assert took < 1.5, f"refusing took {took:.2f} s"
    assert rss.growth_mb < 100, f"the server grew by {rss.growth_mb:.0f} MB"


def test_uploads_share_one_pixel_budget_per_request(server):
    http, _, _ = server
    twelve = _bilevel_png(4000, 3000)  # 12 MP each: under the per-image cap, over the budget as three
    one = http.post("/api/search", files=[("images", ("one.png", twelve, "image/png"))], data={"k": "1"})
    assert one.status_code == 200, one.text
    files = [("images", (f"p{n}.png", twelve, "image/png")) for n in range(3)]
    with PeakRSS() as rss:
        three = http.post("/api/search", files=files)
    assert three.status_code == 413 and "in all" in three.json()["detail"], three.text
    assert rss.growth_mb < 60, f"the server grew by {rss.growth_mb:.0f} MB before refusing"


def test_json_body_search_matches_get_and_multipart(server):
    http, engine, root = server
    by_get = http.get("/api/search", params={"q": CAPTIONS[1], "k": 3}).json()["hits"]
    by_json = http.post("/api/search", json={"q": CAPTIONS[1], "k": 3})
    assert by_json.status_code == 200, by_json.text
    assert [(h["id"], h["score"]) for h in by_json.json()["hits"]] == [(h["id"], h["score"]) for h in by_get]

    item = next(h.id for h in engine.search("x", k=10) if h.path.endswith("a.jpg"))
    image = (root / "c.webp").read_bytes()
    terms = [{"kind": "text", "value": "a quiet beach", "weight": 2}, {"kind": "item", "value": item, "weight": -0.5}]
    multipart = http.post("/api/search", data={"terms": json.dumps(terms + [{"kind": "image", "upload": 0}]), "k": "5"},
                          files=[("images", ("q.webp", image, "image/webp"))]).json()
    as_json = http.post("/api/search", json={
        "terms": terms + [{"kind": "image", "data": base64.b64encode(image).decode()}], "k": 5,
    })
    assert as_json.status_code == 200, as_json.text
    assert [h["id"] for h in as_json.json()["hits"]] == [h["id"] for h in multipart["hits"]]
    assert [t["kind"] for t in as_json.json()["query"]] == ["text", "item", "image"]

    # A client that sends JSON without saying so (clip-retrieval's front end does) is understood too.
    unlabelled = http.post("/api/search", content=json.dumps({"q": CAPTIONS[0], "k": 1}).encode())
    assert unlabelled.status_code == 200 and unlabelled.json()["hits"][0]["text"] == CAPTIONS[0]


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"json": {"k": 3}}, 422, "empty query"),
        ({"json": {"text": "cats"}}, 422, "text: Extra inputs are not permitted"),
        ({"json": {"q": "cats", "k": 0}}, 422, "k:"),
        ({"json": {"terms": [{"kind": "image"}]}}, 422, "base64"),
        ({"json": {"terms": [{"kind": "image", "data": "@@@"}]}}, 422, "not valid base64"),
        ({"json": {"terms": [{"kind": "image", "data": base64.b64encode(b"words").decode()}]}}, 415, "not an image"),
        ({"content": b"{broken", "headers": {"content-type": "application/json"}}, 422, "invalid request"),
        ({"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 422, "Invalid JSON"),
        ({"json": {"terms": [{"kind": "item", "value": True}]}}, 422, "valid integer"),
        ({"json": [1, 2]}, 422, "object"),
        ({"content": b"q=cats", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        ({"content": b"<q>cats</q>", "headers": {"content-type": "application/xml"}}, 415, "multipart/form-data"),
    ],
)
def test_json_body_errors_are_clear(server, kwargs, status, words):
    http, _, _ = server
    response = http.post("/api/search", **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_item_metadata_has_its_own_shape(server):
    http, engine, root = server
    item = next(h for h in engine.search("x", k=10) if h.path.endswith("b.png"))
    meta = http.get(f"/api/items/{item.id}").json()
    assert "rank" not in meta and "score" not in meta
    assert meta["id"] == item.id and meta["path"] == str(root / "b.png") and meta["modality"] == "image"
    assert meta["thumbnail_url"].endswith("/thumbnail") and "path_bytes" not in meta
    schema = http.get("/openapi.json").json()
    item_schema = schema["paths"]["/api/items/{item_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert item_schema["$ref"].endswith("/ItemOut")
    assert "rank" not in schema["components"]["schemas"]["ItemOut"]["properties"]
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


# -- POST /api/search never drops an input silently (issue 30 item 8) -----------------------------
def test_post_reads_the_query_string_as_get_does(server):
    """`?k=2&type=text` on a POST was ignored with 200 (ten hits of every type); it counts now,
    with a form, a JSON body or no body at all; a bad value or unknown name is a 4xx naming it."""
    http, _, root = server
    png = (root / "b.png").read_bytes()
    form = http.post("/api/search?k=2&type=text", files=[("images", ("b.png", png, "image/png"))])
    assert form.status_code == 200, form.text
    hits = form.json()["hits"]
    assert len(hits) == 2 and {h["modality"] for h in hits} == {"text"}
    as_json = http.post("/api/search?k=1&type=image", json={"q": "a dog"})
    assert as_json.status_code == 200 and len(as_json.json()["hits"]) == 1
    assert as_json.json()["hits"][0]["modality"] == "image"
    bare = http.post("/api/search?q=a+dog&k=3")
    assert bare.status_code == 200 and len(bare.json()["hits"]) == 3
    for query, name in (("after=garbage", "after"), ("k=many", "k"), ("colour=red", "colour"),
                        ("terms=%5B%5D", "terms")):
        answer = http.post(f"/api/search?{query}", json={"q": "a dog"})
        assert answer.status_code in (400, 422) and name in answer.text, (query, answer.status_code, answer.text)
    both = http.post("/api/search?k=2", data={"q": "a dog", "k": "3"})
    assert both.status_code == 422 and "k" in both.json()["detail"]


def test_an_empty_terms_list_beside_an_upload_searches_the_upload(server):
    """`-F images=@x.png -F 'terms=[]'` answered "empty query" although an image was given."""
    http, _, root = server
    png = (root / "b.png").read_bytes()
    answer = http.post("/api/search", files=[("images", ("b.png", png, "image/png"))], data={"terms": "[]", "k": "1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["hits"][0]["path"].endswith("b.png")
    assert http.post("/api/search", json={"terms": []}).status_code == 422  # nothing at all: still empty
