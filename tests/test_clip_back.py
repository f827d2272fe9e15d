"""clip-retrieval's back-end API from `mmsearch serve`: clip-retrieval 2.45's own ClipClient against
a real server process on loopback, and the exact request bodies its web front end sends.

The client comes from the clip-retrieval package installed without its dependencies
(`pip install --no-deps clip-retrieval==2.45.0`, done by `.ci/run`); its file is loaded alone,
as its package `__init__` imports Flask. Missing, the tests fail and say how to install it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import serve_process
from mmsearch import Engine, QueryTerm

PHOTOS = Path(__file__).parent / "data" / "photos"
TEXTS = ["a red pasta dish with basil", "a cat sleeping on a sofa", "a rocket launch at night"]


def clip_client_module():
    """clip_retrieval/clip_client.py, loaded from its file (never the package's __init__)."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("clip-retrieval is not installed: run `pip install --no-deps clip-retrieval==2.45.0` "
                    "(the test environment of .ci/run has it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "clip_client.py"
    loaded = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """A library (the sample photos, a near-copy of one, captions) indexed with the tiny model,
    served by `mmsearch serve` in a new process: (url, index, root)."""
    base = tmp_path_factory.mktemp("clipback")
    root = base / "photos"
    shutil.copytree(PHOTOS, root, ignore=shutil.ignore_patterns("*.md"))
    Image.open(root / "chelsea.jpg").save(root / "chelsea-copy.jpg", quality=70)
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    index = base / "photos-index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    with serving(index, base) as url:
        yield url, index, root


def serving(index: Path, base: Path):
    """`mmsearch serve --index INDEX` in a new process on a free loopback port: its URL."""
    return serve_process(index, base / "server.log")


def test_docs_client_block_runs_as_written(tmp_path, tiny_model):
    """The documentation's clip-retrieval block (docs/server.md), run as written in a new process
    (from the repository folder) against `mmsearch serve` of an index named as it says:
    clip-retrieval's package __init__ imports Flask, so the block must load the client from its
    file (issue 30 item 3)."""
    page = (Path(__file__).parents[1] / "docs" / "server.md").read_text(encoding="utf-8")
    section = page.split("## clip-retrieval's API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:8000" in block and 'indice_name="photos"' in block
    index = tmp_path / "photos"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([PHOTOS])
    with serving(index, tmp_path) as url:
        done = subprocess.run([sys.executable, "-c", block.replace("http://127.0.0.1:8000", url)],
                              capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120,
                              env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    path, similarity = done.stdout.split()
    assert Path(path).parent == PHOTOS and -1 <= float(similarity) <= 1


def expected(url: str, hits, num_images: int) -> list[dict]:
    """What clip_back answers for these hits: metadata (url, image_path, caption for texts) for
    the first num_images, then id and similarity."""
    out = []
    for n, hit in enumerate(hits):
        entry = {}
        if n < num_images:
            entry = {"url": f"{url}/api/items/{hit.id}/file", "image_path": hit.path}
            if hit.text is not None:
                entry["caption"] = hit.text
        out.append({**entry, "id": hit.id, "similarity": hit.score})
    return out


def test_clip_client_text_image_and_embedding_queries(served):
    url, index, root = served
    ClipClient = clip_client_module().ClipClient
    client = ClipClient(url=f"{url}/knn-service", indice_name="photos-index", num_images=4, deduplicate=False)
    with Engine(index) as engine:
        results = client.query(text="a cat")
        assert results == expected(url, engine.search(QueryTerm("text", "a cat"), k=4, type="image"), 4)
        assert list(results[0]) == ["url", "image_path", "id", "similarity"]

        by_image = client.query(image=str(root / "rocket.jpg"))
        data = (root / "rocket.jpg").read_bytes()
        assert by_image == expected(url, engine.search(QueryTerm("image", data), k=4, type="image"), 4)
        assert by_image[0]["image_path"] == str(root / "rocket.jpg") and by_image[0]["similarity"] > 0.999

        vector = engine.encode_query([QueryTerm("text", "a rocket")])
        by_vector = client.query(embedding_input=vector.tolist())  # floats through JSON: re-normalised
        want = expected(url, engine.search_vector(vector, k=4, type="image"), 4)
        assert [{**r, "similarity": 0} for r in by_vector] == [{**r, "similarity": 0} for r in want]
        assert [r["similarity"] for r in by_vector] == pytest.approx([r["similarity"] for r in want], abs=1e-6)

        texts = ClipClient(url=f"{url}/knn-service", indice_name="photos-index", num_images=2,
                           modality=clip_client_module().Modality.TEXT, deduplicate=False).query(text="pasta")
        assert texts == expected(url, engine.search(QueryTerm("text", "pasta"), k=2, type="text"), 2)
        assert all(r["caption"] in TEXTS for r in texts) and list(texts[0]) == ["url", "image_path", "caption", "id",
                                                                                "similarity"]


def test_clip_client_deduplicate_collapses_copies(served):
    url, index, root = served
    ClipClient = clip_client_module().ClipClient
    query = str(root / "chelsea.jpg")
    plain = ClipClient(url=f"{url}/knn-service", indice_name="photos-index", num_images=3, deduplicate=False).query(image=query)
    assert {Path(r["image_path"]).name for r in plain[:2]} == {"chelsea.jpg", "chelsea-copy.jpg"}
    collapsed = ClipClient(url=f"{url}/knn-service", indice_name="photos-index", num_images=3).query(image=query)
    data = (root / "chelsea.jpg").read_bytes()
    with Engine(index) as engine:
        want = engine.search(QueryTerm("image", data), k=3, type="image", dedup=0.94)
    assert collapsed == expected(url, want, 3)
    assert len({Path(r["image_path"]).name for r in collapsed} & {"chelsea.jpg", "chelsea-copy.jpg"}) == 1


def test_front_end_request_bodies_replayed_byte_for_byte(served):
    """The bodies clip-retrieval's front end (front/src/clip-service.js, 2.45) sends: JSON.stringify
    output, posted as text/plain. Answers are compared as bytes with what clip_back writes."""
    url, index, root = served
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    assert httpx.get(f"{url}/indices-list").content == b'["photos-index"]\n'
    config = httpx.get(f"{url}/config.json")
    assert config.content == json.dumps({"defaultBackend": url + "/", "defaultIndex": "", "urlColumn": "url"}).encode()
    body = ('{"text":"a cat","image":null,"image_url":null,"embedding_input":null,"modality":"image",'
            '"num_images":2,"indice_name":"photos-index","num_result_ids":5,"use_mclip":false,"deduplicate":true,'
            '"use_safety_model":true,"use_violence_detector":true,"aesthetic_score":"","aesthetic_weight":"0.5"}')
    answer = httpx.post(f"{url}/knn-service", content=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    with Engine(index) as engine:
        hits = engine.search(QueryTerm("text", "a cat"), k=5, type="image", dedup=0.94)
        assert answer.content == (json.dumps(expected(url, hits, 2)) + "\n").encode()
        results = answer.json()
        assert all("url" in r for r in results[:2]) and all(list(r) == ["id", "similarity"] for r in results[2:])

        # "Search with this image" on a result: the front end sends the result's url as image_url.
        again = ('{"text":"","image":null,"image_url":"' + results[0]["url"] + '","embedding_input":null,'
                 '"modality":"image","num_images":3,"indice_name":"photos-index","num_result_ids":3,"use_mclip":false,'
                 '"deduplicate":false,"use_safety_model":false,"use_violence_detector":false,"aesthetic_score":"",'
                 '"aesthetic_weight":"0.5"}')
        similar = httpx.post(f"{url}/knn-service", content=again, headers=headers)
        want = engine.search(QueryTerm("item", str(results[0]["id"])), k=3, type="image", include_query=True)
        assert similar.content == (json.dumps(expected(url, want, 3)) + "\n").encode()

        # An uploaded image: the front end sends the base64 part of a data URL.
        buffer = io.BytesIO()
        Image.open(root / "coffee.jpg").save(buffer, "PNG")
        upload = ('{"text":"","image":"' + base64.b64encode(buffer.getvalue()).decode() + '","image_url":null,'
                  '"embedding_input":null,"modality":"image","num_images":2,"indice_name":"photos-index",'
                  '"num_result_ids":2,"use_mclip":false,"deduplicate":false,"use_safety_model":false,'
                  '"use_violence_detector":false,"aesthetic_score":"9","aesthetic_weight":"0.5"}')
        by_upload = httpx.post(f"{url}/knn-service", content=upload, headers=headers).json()
        assert by_upload[0]["image_path"] == str(root / "coffee.jpg")

        # Scrolling on: metadata of the next ids.
        ids = [r["id"] for r in results[2:]]
        meta = httpx.post(f"{url}/metadata", content=json.dumps({"ids": ids, "indice_name": "photos-index"}),
                          headers=headers)
        want_meta = [{"id": i, "metadata": {"url": f"{url}/api/items/{i}/file", "image_path": engine.get(i).path}}
                     for i in ids]
        assert meta.content == (json.dumps(want_meta) + "\n").encode()
    assert httpx.post(f"{url}/metadata", content='{"ids":[],"indice_name":"photos-index"}').content == b"[]\n"


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"text":"a cat","modality":"image","num_images":3,"indice_name":"laion5B"}', 404,
     "unknown indice_name 'laion5B': this server serves 'photos-index'"),
    (b'{"text":"a cat","modality":"video","num_images":3}', 422, "modality must be 'image' or 'text'"),
    (b'{"text":"a cat","num_images":0}', 422, "num_images must be an integer from 1 to 10000"),
    (b'{"text":"a cat","num_images":3,"deduplicate":"yes"}', 422, "deduplicate must be true or false"),
    (b'{"image_url":"https://example.com/cat.jpg","num_images":3}', 422, "mmsearch downloads nothing"),
    (b'{"image":"%%%not base64","num_images":3}', 422, "image is not valid base64"),
    (b'{"image":"aGVsbG8=","num_images":3}', 415, "image: "),
    (b'{"embedding_input":[0.1, 0.2],"num_images":3}', 400, "query vector has dimension 2, index has 32"),
    (b'{"modality":"image","num_images":3}', 422, "give one of text, image, image_url or embedding_input"),
])
def test_bad_requests_get_one_clear_line(served, body, status, message):
    url, _, _ = served
    answer = httpx.post(f"{url}/knn-service", content=body)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text


def test_metadata_refuses_bad_ids_and_unknown_ids_get_empty_metadata(served):
    url, _, _ = served
    bad = httpx.post(f"{url}/metadata", content=b'{"ids":["1"],"indice_name":"photos-index"}')
    assert bad.status_code == 422 and "ids must be a list of integer item ids" in bad.json()["detail"]
    unknown = httpx.post(f"{url}/metadata", content=b'{"ids":[999999],"indice_name":"photos-index"}')
    assert unknown.content == b'[{"id": 999999, "metadata": {}}]\n'


def test_cors_only_for_origins_named(served, cli):
    """clip-retrieval's front end served from another origin needs CORS to read the answers:
    given only for origins named with --cors-origin (any page could read the library otherwise)."""
    from mmsearch.server import ServerThread, create_app

    _, index, _ = served
    body = b'{"text":"a cat","modality":"image","num_images":1,"indice_name":"photos-index"}'
    front = "https://rom1504.github.io"
    with Engine(index) as engine:
        with ServerThread(create_app(engine, preload=False)) as plain:
            answer = httpx.post(f"{plain.url}/knn-service", content=body, headers={"Origin": front})
            assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
        with ServerThread(create_app(engine, preload=False, cors_origins=[front + "/"])) as server:
            answer = httpx.post(f"{server.url}/knn-service", content=body, headers={"Origin": front})
            assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == front
            other = httpx.post(f"{server.url}/knn-service", content=body, headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
    refused = cli("serve", "--cors-origin", "rom1504.github.io/clip", ok=False)
    assert refused.exit_code == 2 and "--cors-origin 'rom1504.github.io/clip': give an origin" in refused.stderr
