"""What a hostile week of requests found (issue "nothing wrong, nothing lost, nothing outside",
second round): each test sends the attack to a real server on loopback (uvicorn in a thread, or
`mmsearch serve` in a subprocess) over an index built with the tiny real open_clip model, and
checks the answer is a clear 4xx or the right result, never a 5xx, a silent 0.0 or a model load.
"""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest

from conftest import make_image, one_line, run
from mmsearch import Engine
from mmsearch.search import dupes
from mmsearch.errors import QueryError, TextInputError
from support.videogen import make_video
from mmsearch.server import ServerThread, create_app
from mmsearch.settings import Settings

TEXTS = ["a red pasta dish with basil", "a cat sleeping on a sofa", "a rocket launch at night", "SKU-1002 shoe"]


def build(base, tiny_model, settings: Settings | None = None):
    """A small library (photos, texts, a JSONL of many short texts, a video) and its index."""
    root = base / "library"
    for i in range(6):
        make_image(root / f"photo{i}.jpg", seed=i, size=(120, 90))
    for n, text in enumerate(TEXTS):
        (root / f"note{n}.txt").write_text(text, encoding="utf-8")
    (root / "many.jsonl").write_text("".join(json.dumps({"text": f"note number {n} about item {n * 7}"}) + "\n"
                                             for n in range(400)))
    make_video(root / "clip.mp4", [1.0, 1.0], width=160, height=96, gop=5)
    index = base / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint), settings=settings) as engine:
        engine.add([root])
    return index, root


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model):
    return build(tmp_path_factory.mktemp("hostile"), tiny_model, Settings.from_env().but(db=None))


@pytest.fixture(scope="module")
def served(library):
    """The library's index served by a real uvicorn on loopback: (engine, url)."""
    index, _ = library
    with Engine(index, settings=Settings.from_env().but(db=None)) as engine, \
            ServerThread(create_app(engine)) as server:
        yield engine, server.url


# -- 1: near-duplicate collapse, bounded whatever the threshold ----------------------------------------
def test_thresholds_below_the_floor_are_refused_everywhere(served, library):
    engine, url = served
    index, _ = library
    with httpx.Client(base_url=url, timeout=60) as http:
        for path, params, field in (("/api/search", {"q": "red", "dedup_threshold": 0.0001}, "dedup_threshold"),
                                    ("/api/search", {"q": "red", "dedup_threshold": 0.0001, "fusion": "late"},
                                     "dedup_threshold"),
                                    ("/api/duplicates", {"threshold": 0.0001}, "threshold")):
            answer = http.get(path, params=params)
            assert answer.status_code == 422, (path, params, answer.text)
            assert field in answer.json()["detail"] and "0.5" in answer.json()["detail"]
        posted = http.post("/api/search", json={"q": "red", "dedup_threshold": 0.0001})
        assert posted.status_code == 422 and "dedup_threshold" in posted.json()["detail"]
        assert http.get("/api/search", params={"q": "red", "dedup_threshold": 0.5}).status_code == 200
        # The API docs say the valid range.
        spec = http.get("/openapi.json").json()
        described = [p for p in spec["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "dedup_threshold"]
        assert "from 0.5 to 1" in described[0]["description"]
    with pytest.raises(QueryError, match="from 0.5 to 1"):
        engine.search("red", dedup=0.0001)
    with pytest.raises(QueryError, match="from 0.5 to 1"):
        engine.duplicates(threshold=0.2)
    done = run("dupes", "-i", index, "--threshold", "0.0001")
    assert done.returncode == 2 and "--threshold must be from 0.5 to 1" in one_line(done.stderr), done.stderr
    helped = run("dupes", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "from 0.5 to 1" in " ".join(helped.replace("│", " ").split())


def test_a_threshold_joining_everything_compares_a_bounded_pool(served):
    # Under the tiny model's random weights every short text looks like every other: at the floor
    # all hits are one group, and the collapse must stop at dedup_pool(k) hits, not read the index.
    engine, url = served
    pool = 100  # dupes.dedup_pool(10): max(100, 4 x k)
    assert engine.count() > 400  # well over the pool: 400 JSONL texts and more
    for ranking in ({}, {"fusion": "late"}, {"mode": "hybrid"}):
        hits = engine.search("note number", k=10, type="text", dedup=0.5, **ranking)
        assert hits and sum(1 + len(h.duplicates) for h in hits) <= pool, ranking
        with httpx.Client(base_url=url, timeout=60) as http:
            answer = http.get("/api/search", params={"q": "note number", "type": "text", "dedup_threshold": 0.5,
                                                     **ranking})
        assert answer.status_code == 200
        assert sum(1 + len(h["duplicates"]) for h in answer.json()["hits"]) <= pool
    assert dupes.dedup_pool(10) == pool and dupes.dedup_pool(100) == 400


def test_components_join_pairs_as_union_find_does():
    rng = np.random.default_rng(7)
    for n, edges in ((1, 0), (50, 30), (400, 2000), (1000, 300)):
        pairs = rng.integers(0, n, size=(edges, 2))
        parent = list(range(n))  # the textbook union-find, one pair at a time

        def root(a: int) -> int:
            while parent[a] != a:
                a = parent[a]
            return a

        for a, b in pairs.tolist():
            parent[root(a)] = root(b)
        expected: dict[int, list[int]] = {}
        for i in range(n):
            expected.setdefault(root(i), []).append(i)
        sets = dupes.Components(n)
        for chunk in np.array_split(pairs, 3):  # fed in blocks, as a scan does
            sets.add(chunk[:, 0], chunk[:, 1])
        assert sets.all() == sorted(expected.values(), key=lambda g: g[0])
        assert sets.groups() == [g for g in sets.all() if len(g) > 1]
    # collapse: all rows, each group in rank order; a chain joins
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [-1.0, 0.0]])
    assert dupes.collapse(x, 0.95) == [[0, 2], [1, 3], [4]]


# -- 2: video thumbnails decoded within indexing's caps -------------------------------------------------
def test_video_and_image_thumbnails_respect_the_pixel_cap(tmp_path, tiny_model):
    index, root = build(tmp_path, tiny_model, Settings.from_env().but(db=None))
    capped = Settings.from_env().but(db=None, max_pixels=200_000)
    with Engine(index, settings=capped) as engine, ServerThread(create_app(engine)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        frame = next(h for h in engine.search("red", k=50, type="video"))
        photo = next(h for h in engine.search("red", k=50, type="image"))
        for item in (frame, photo):  # within the cap: thumbnails as usual
            assert http.get(f"/api/items/{item.id}/thumbnail", params={"size": 64}).status_code == 200
        # The files are swapped for larger ones of the same names (640x480: over the 200,000-pixel cap).
        make_video(root / "swap.mp4", [1.0, 1.0], width=640, height=480, gop=5)
        shutil.move(root / "swap.mp4", root / "clip.mp4")
        make_image(root / "swap.jpg", seed=99, size=(640, 480))
        shutil.move(root / "swap.jpg", root / photo.path.rsplit("/", 1)[1])
        for item in (frame, photo):
            answer = http.get(f"/api/items/{item.id}/thumbnail", params={"size": 128})
            assert answer.status_code == 404, (item.modality, answer.status_code)
            assert "200000-pixel decode cap" in answer.json()["detail"]


# -- 3: /knn-service images take the ONNX path, and a bad one loads nothing ---------------------------
def test_knn_service_image_loads_no_torch_model(library):
    index, root = library
    with Engine(index, settings=Settings.from_env().but(db=None)) as engine, \
            ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert engine.image_encoder.kind.startswith("onnx") and not engine.model_loaded
        for bad in ("AAAA", base64.b64encode(b"not an image at all").decode()):
            answer = http.post("/knn-service", content=json.dumps({"image": bad, "modality": "image"}))
            assert 400 <= answer.status_code < 500 and "image" in answer.json()["detail"]
            assert not engine.model_loaded, bad
        data = base64.b64encode((root / "photo1.jpg").read_bytes()).decode()
        answer = http.post("/knn-service", content=json.dumps({"image": data, "modality": "image", "num_images": 3}))
        assert answer.status_code == 200 and answer.json()
        assert not engine.model_loaded  # the ONNX image tower answered, as for /api/search uploads
        wanted = engine.search(root / "photo1.jpg", k=3, type="image", include_query=True)
        assert [r["id"] for r in answer.json()] == [h.id for h in wanted]


# -- 6: NUL characters, on SQLite and PostgreSQL --------------------------------------------------------
def test_nul_characters_are_refused_by_name(tmp_path, tiny_model, backend):
    index = tmp_path / "index"
    root = tmp_path / "library"
    make_image(root / "a.jpg", seed=1)
    (root / "note.txt").write_text("a note about a red car", encoding="utf-8")
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    with Engine(index) as engine, ServerThread(create_app(engine)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        cases = [({"q": "red\x00car", "mode": mode}, "query text") for mode in ("vector", "lexical", "hybrid")]
        cases += [({"q": "red\x00car", "mode": "hybrid", "fusion": "late"}, "query text"),
                  ({"q": "red", "under": "\x00"}, "under"), ({"q": "red", "under": f"{root}/\x00x"}, "under"),
                  ({"q": "red", "camera": "\x00"}, "camera"), ({"q": "red", "camera": "Pixel\x007"}, "camera")]
        for params, field in cases:
            answer = http.get("/api/search", params=params)
            assert answer.status_code == 422, (params, answer.status_code, answer.text)
            assert answer.json()["detail"].startswith(f"{field}: holds a NUL character"), answer.text
            posted = http.post("/api/search", json=params)
            assert posted.status_code == 422, (params, posted.text)
        item = engine.search("red", k=1)[0].id
        answer = http.get(f"/api/items/{item}/similar", params={"under": "\x00"})
        assert answer.status_code == 422 and "under" in answer.json()["detail"]
        knn = http.post("/knn-service", content=json.dumps({"text": "red\x00car"}))
        assert knn.status_code == 422 and "NUL" in knn.json()["detail"]
        # The Python API: the same narrow error, before any SQL runs.
        for call in (lambda: engine.search("red\x00", mode="lexical"), lambda: engine.search("red", under="\x00"),
                     lambda: engine.search("red", camera="a\x00b"),
                     lambda: engine.search_vector(np.ones(32, np.float32), under="a\x00")):
            with pytest.raises(TextInputError, match="holds a NUL character"):
                call()
        assert http.get("/api/search", params={"q": "red car", "mode": "hybrid"}).status_code == 200


# -- 7: Range headers with non-ASCII digits --------------------------------------------------------------
def test_range_headers_take_ascii_digits_only(served, library):
    engine, url = served
    _, root = library
    hit = next(h for h in engine.search("red", k=50, type="image") if h.path.endswith("photo2.jpg"))
    whole = (root / "photo2.jpg").read_bytes()
    with httpx.Client(base_url=url, timeout=60) as http:
        for header in (b"bytes=\xb2-", b"bytes=0-\xb3", b"bytes=-\xb9", b"bytes=\xb21-5"):
            answer = http.get(f"/api/items/{hit.id}/file", headers={"Range": header})
            assert answer.status_code == 200 and answer.content == whole, (header, answer.status_code)
        part = http.get(f"/api/items/{hit.id}/file", headers={"Range": "bytes=2-5"})
        assert part.status_code == 206 and part.content == whole[2:6]


# -- 8: cookies parsed as browsers send them --------------------------------------------------------------
def test_session_cookie_survives_an_unrelated_malformed_cookie(library):
    index, _ = library
    token = "hostile-cookie-token-7c1"
    with Engine(index, settings=Settings.from_env().but(db=None)) as engine, \
            ServerThread(create_app(engine, token=token, preload=False)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        made = http.post("/api/session", headers={"Authorization": f"Bearer {token}"})
        assert made.status_code == 204
        session = made.headers["set-cookie"].split(";", 1)[0]
        for header in (session, f'theme="dark; {session}', f'{session}; other="unbalanced',
                       f'a=b; tracker="x\\"y; {session}; c=[d]'):
            http.cookies.clear()
            answer = http.get("/api/info", headers={"Cookie": header})
            assert answer.status_code == 200, (header, answer.status_code)
        http.cookies.clear()
        assert http.get("/api/info", headers={"Cookie": 'theme="dark; x=y'}).status_code == 401


# -- 9: embeddings with huge finite components -------------------------------------------------------------
@pytest.mark.parametrize("scale", [3e38, 1e30, 1e308, 1e-300])
def test_large_embedding_components_normalise_like_any_others(served, scale):
    engine, url = served
    rng = np.random.default_rng(3)
    direction = rng.uniform(0.5, 1.0, 32)
    expected = engine.search_vector(direction, k=5)
    assert expected and all(h.score != 0.0 for h in expected)
    got = engine.search_vector(direction * scale, k=5)
    assert [h.id for h in got] == [h.id for h in expected]
    assert np.allclose([h.score for h in got], [h.score for h in expected], atol=1e-5)
    with httpx.Client(base_url=url, timeout=60) as http:
        answer = http.post("/knn-service", content=json.dumps({"embedding_input": (direction * scale).tolist(),
                                                                "num_images": 5, "modality": "image"}))
        plain = http.post("/knn-service", content=json.dumps({"embedding_input": direction.tolist(),
                                                               "num_images": 5, "modality": "image"}))
    assert answer.status_code == 200 and plain.status_code == 200
    assert [r["id"] for r in answer.json()] == [r["id"] for r in plain.json()] and answer.json()
    assert np.allclose([r["similarity"] for r in answer.json()], [r["similarity"] for r in plain.json()], atol=1e-5)
    assert all(r["similarity"] != 0.0 for r in answer.json())


def test_non_finite_or_zero_vectors_are_refused(served):
    engine, _ = served
    for bad in (np.full(32, np.inf), np.zeros(32), np.full(32, np.nan)):
        with pytest.raises(QueryError):
            engine.search_vector(bad, k=3)
