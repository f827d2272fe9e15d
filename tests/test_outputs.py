"""What every output shows: file names that are not UTF-8 in every JSON output of every mode
(CLI in a new process and HTTP on a real loopback server), one result per picture when a JSONL
record names an image file that is indexed too, the table at 80 columns, query terms that look
like missing images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import make_image, run
from docs_corpus import make_docs_corpus

from mmsearch import Engine
from mmsearch.media.videogen import COLOURS, make_video

BAD_IMAGE = b"bad\xffname.jpg"
BAD_VIDEO = b"clip\xff.mp4"


def bad(folder: Path, name: bytes) -> str:
    return os.fsdecode(os.fsencode(str(folder)) + b"/" + name)


@pytest.fixture(scope="module")
def odd_library(tmp_path_factory, tiny_model):
    """The documents corpus plus a picture and a video whose names are not UTF-8 (the picture
    with a sidecar, so it is a document of two parts), indexed with the tiny model."""
    base = tmp_path_factory.mktemp("outputs")
    root = make_docs_corpus(base / "lib")
    picture = bad(root / "shop", BAD_IMAGE)
    make_image(Path(picture), seed=40)
    Path(bad(root / "shop", b"bad\xffname.txt")).write_text("red shoe on a shelf")
    make_video(bad(root, BAD_VIDEO), [1.0, 1.0], gop=5, colours=COLOURS[2:])
    with Engine(base / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([root])
    assert not [s for s in report.skipped if "bad" in s.path or "clip" in s.path]
    return base / "idx", root


# Every ranking the CLI and the API offer (each fusion, each mode, calibrated, dedup, video).
MODES = [
    {}, {"mode": "lexical"}, {"mode": "hybrid"}, {"fusion": "late"}, {"fusion": "early"}, {"fusion": "rrf"},
    {"mode": "hybrid", "fusion": "early"}, {"calibrated": True}, {"calibrated": True, "fusion": "late"},
    {"cutoff": "auto"}, {"dedup": True}, {"dedup": True, "fusion": "early"}, {"type": "video"},
    {"type": "image", "fusion": "early"},
]


def cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return args


def check_paths(doc, found: list[str]) -> None:
    """Every field naming a file (``path``, ``..._path``) is valid text; one that had to escape
    bytes carries the exact name in ``<key>_bytes``, which gives back the real file name."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if (key == "path" or key.endswith("_path")) and isinstance(value, str):
                if "\\x" in value:
                    assert f"{key}_bytes" in doc, (key, doc)
                    exact = os.fsdecode(__import__("base64").b64decode(doc[f"{key}_bytes"]))
                    assert os.path.lexists(exact), exact
                    found.append(exact)
            check_paths(value, found)
    elif isinstance(doc, list):
        for value in doc:
            check_paths(value, found)


def strict(data: bytes):
    return json.loads(data.decode("utf-8"))  # raises on any byte that is not UTF-8


@pytest.mark.slow
def test_every_json_output_holds_odd_names_as_valid_utf8(odd_library):
    idx, root = odd_library
    picture, video = bad(root / "shop", BAD_IMAGE), bad(root, BAD_VIDEO)
    seen: set[str] = set()
    nested: set[str] = set()
    for options in MODES:
        result = run("query", "red shoe", "-i", idx, "-k", "30", "--json", *cli_args(options))
        assert result.returncode == 0, (options, result.stderr.decode(errors="replace"))
        doc = strict(result.stdout)
        found: list[str] = []
        check_paths(doc, found)
        seen.update(found)
        for hit in doc["hits"]:
            check_paths(hit.get("matched") or {}, (inner := []))
            nested.update(inner)
    assert picture in seen and video in seen
    assert picture in nested  # the fused hits' "matched": {"image": {"path", "path_bytes"}}
    for command in (["dupes", "--json", "--threshold", "0.5"], ["info", "--json"], ["index", "--json", "-q"]):
        result = run(*command, "-i", idx)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        check_paths(strict(result.stdout), [])


@pytest.mark.slow
def test_the_api_and_the_client_answer_every_mode_with_odd_names(odd_library):
    from mmsearch.client import Client
    from mmsearch.server import ServerThread, create_app

    idx, root = odd_library
    picture = bad(root / "shop", BAD_IMAGE)
    with Engine(idx) as engine, ServerThread(create_app(engine)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http, Client(server.url) as client:
        seen: list[str] = []
        for options in MODES:
            params = {"q": "red shoe", "k": 30, **{k: str(v).lower() if v is True else v for k, v in options.items()}}
            answer = http.get("/api/search", params=params)
            assert answer.status_code == 200, (options, answer.text)
            check_paths(strict(answer.content), seen)
        assert picture in seen
        for path in ("/api/info", "/api/duplicates?threshold=0.5"):
            answer = http.get(path)
            if answer.status_code != 404:
                assert answer.status_code == 200, answer.text
                check_paths(strict(answer.content), [])
        hits = client.search("red shoe", k=30, fusion="early")
        mine = [h for h in hits if h.path == picture]
        assert mine and mine[0].matched["image"]["path"] == picture  # the exact name, back from the server
        # The file's download name: the undecodable byte read as Windows-1252 (README says so).
        answer = http.get(mine[0].file_url)
        assert answer.status_code == 200
        assert "filename*=UTF-8''bad%C3%BFname.jpg" in answer.headers["content-disposition"]
