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
from mmsearch import Engine, dupes
from mmsearch.errors import QueryError, TextInputError
from mmsearch.media.videogen import make_video
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
