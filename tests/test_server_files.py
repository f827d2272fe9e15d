"""Serving indexed files and thumbnails: the symlink swap race, the bounded thumbnail cache,
formats that must never be decoded, and file names that are not valid UTF-8.

A real uvicorn server runs in a thread on a loopback port over an index built with the tiny real
open_clip model; requests go through real sockets, files are real files.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from conftest import make_image
from mmsearch import Engine
from mmsearch.client import Client
from mmsearch.fsutil import path_is_exact_text, printable_path
from mmsearch.server import ServerThread, create_app
from mmsearch.server.thumbs import THUMB_SIZES, THUMBS_DIR

RED, BLUE = (220, 30, 30), (30, 30, 220)
INSIDE_TEXT = "inside the library: a note about the red picture\n"
OUTSIDE_TEXT = "OUTSIDE SECRET " * 400  # longer than the inside note: a mix-up shows in the length too


def _engine(index: Path, tiny_model) -> Engine:
    return Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint))


def _ids(engine: Engine) -> dict[str, int]:
    return {os.path.basename(h.path) + (f":{h.locator}" if h.locator else ""): h.id
            for h in engine.search("anything", k=100)}


def _colour(jpeg: bytes) -> tuple[float, float, float]:
    return tuple(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32).mean(axis=(0, 1)))


def _is_blue(jpeg: bytes) -> bool:
    r, _, b = _colour(jpeg)
    return b > r


# -- the symlink swap race -----------------------------------------------------------------------
def test_folder_swapped_for_a_symlink_never_leaks_the_outside(tmp_path, tiny_model):
    """A thread swaps an indexed folder for a symlink to an outside folder (same file names) in a
    loop while clients fetch files and thumbnails: no answer may hold outside bytes or show the
    outside image, none may be a 5xx or truncated, and no cached thumbnail may be poisoned."""
    root, outside = tmp_path / "library", tmp_path / "outside"
    album = root / "album"
    album.mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (160, 120), RED).save(album / "pic.png")
    (album / "note.txt").write_text(INSIDE_TEXT)
    Image.new("RGB", (200, 150), BLUE).save(outside / "pic.png")
    (outside / "note.txt").write_text(OUTSIDE_TEXT)
    inside_pic, outside_pic = (album / "pic.png").read_bytes(), (outside / "pic.png").read_bytes()

    with _engine(tmp_path / "index", tiny_model) as engine:
        engine.add([root])
        ids = _ids(engine)
        pic, note = ids["pic.png"], ids["note.txt"]
        stop = threading.Event()
        parked = root / "album.parked"
        swaps = 0

        def swapper() -> None:
            nonlocal swaps
            while not stop.is_set():
                os.rename(album, parked)
                os.symlink(outside, album)
                time.sleep(0.0005)
                os.unlink(album)
                os.rename(parked, album)
                swaps += 1
                time.sleep(0.0002)

        problems: list[str] = []
        served = {"file": 0, "thumb": 0}

        def client(n: int, url: str) -> None:
            sizes = [64, 100, 128, 200, 256]
            with httpx.Client(base_url=url, timeout=30) as http:
                i = n
                while not stop.is_set():
                    i += 1
                    target = (pic, note)[i % 2]
                    what = "file" if i % 3 else "thumbnail"
                    if what == "thumbnail" and target == note:
                        target = pic
                    try:
                        r = http.get(f"/api/items/{target}/{what}", params={"size": sizes[i % 5]} if what != "file" else None)
                    except httpx.HTTPError as exc:  # a body cut short shows up here
                        problems.append(f"{what} {target}: {type(exc).__name__}: {exc}")
                        continue
                    if r.status_code >= 500:
                        problems.append(f"{what} {target}: {r.status_code} {r.text[:100]}")
                    elif r.status_code == 200 and what == "file":
                        served["file"] += 1
                        expected = inside_pic if target == pic else INSIDE_TEXT.encode()
                        if r.content != expected:
                            leak = r.content in (outside_pic, OUTSIDE_TEXT.encode()) or b"OUTSIDE" in r.content
                            problems.append(f"file {target}: {'OUTSIDE BYTES' if leak else 'wrong or truncated body'}")
                    elif r.status_code == 200:
                        served["thumb"] += 1
                        if _is_blue(r.content):
                            problems.append(f"thumbnail {target} size {sizes[i % 5]}: OUTSIDE IMAGE")
                    elif r.status_code != 404:
                        problems.append(f"{what} {target}: unexpected {r.status_code}")

        with ServerThread(create_app(engine)) as server:
            threads = [threading.Thread(target=swapper)] + [threading.Thread(target=client, args=(n, server.url))
                                                            for n in range(4)]
            for t in threads:
                t.start()
            # Run until the race has been exercised enough (counts, not a fixed time: under load
            # fewer requests fit in a second), with a generous ceiling.
            deadline = time.monotonic() + 60
            time.sleep(2.5)
            while time.monotonic() < deadline and not (swaps > 50 and served["file"] > 10 and served["thumb"] > 5):
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(timeout=30)
            assert not album.is_symlink() and album.is_dir()
            assert not problems, f"{len(problems)} bad answers of {sum(served.values())} served, e.g. {problems[:5]}"
            assert swaps > 50 and served["file"] > 10 and served["thumb"] > 5, (swaps, served)

            # Afterwards, with the folder in place, every cached thumbnail shows the inside image.
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for size in (64, 100, 128, 200, 256, 512):
                    r = http.get(f"/api/items/{pic}/thumbnail", params={"size": size})
                    assert r.status_code == 200 and not _is_blue(r.content), size
                assert http.get(f"/api/items/{pic}/file").content == inside_pic


def test_symlink_swapped_in_for_the_file_itself_is_refused(tmp_path, tiny_model):
    root = tmp_path / "library"
    make_image(root / "a.png", seed=1)
    (tmp_path / "secret.txt").write_text(OUTSIDE_TEXT)
    with _engine(tmp_path / "index", tiny_model) as engine:
        engine.add([root])
        item = _ids(engine)["a.png"]
        (root / "a.png").unlink()
        os.symlink(tmp_path / "secret.txt", root / "a.png")
        with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url) as http:
            for what in ("file", "thumbnail"):
                r = http.get(f"/api/items/{item}/{what}")
                assert r.status_code == 404 and b"OUTSIDE" not in r.content


# -- the thumbnail cache -------------------------------------------------------------------------
def _cache_files(index: Path) -> list[Path]:
    return sorted(p for p in (index / THUMBS_DIR).glob("*.jpg")) if (index / THUMBS_DIR).is_dir() else []


def test_thumbnail_sizes_are_rounded_up_to_a_few_fixed_ones(tmp_path, tiny_model):
    root = tmp_path / "photos"
    make_image(root / "big.jpg", seed=3, size=(1200, 900))
    index = tmp_path / "index"
    with _engine(index, tiny_model) as engine:
        engine.add([root])
        item = _ids(engine)["big.jpg"]
        with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            for size in range(32, 1025, 48):  # 21 distinct sizes
                r = http.get(f"/api/items/{item}/thumbnail", params={"size": size})
                assert r.status_code == 200
                longest = max(Image.open(io.BytesIO(r.content)).size)
                assert longest in THUMB_SIZES and longest >= size, (size, longest)
            assert http.get(f"/api/items/{item}/thumbnail", params={"size": 2000}).status_code == 422
    files = _cache_files(index)
    assert len(files) == len(THUMB_SIZES), [f.name for f in files]


def test_thumbnail_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path, tiny_model):
    root = tmp_path / "photos"
    for n in range(5):
        make_image(root / f"p{n}.jpg", seed=20 + n, size=(640, 480))
    index = tmp_path / "index"
    with _engine(index, tiny_model) as engine:
        engine.add([root])
        ids = _ids(engine)
        # Measure one thumbnail, then allow about three.
        with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            one = len(http.get(f"/api/items/{ids['p0.jpg']}/thumbnail").content)
        for f in _cache_files(index):
            f.unlink()
        limit = int(one * 3.5)
        app = create_app(engine, thumbnail_cache_bytes=limit)
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            def get(name: str) -> bytes:
                r = http.get(f"/api/items/{ids[name]}/thumbnail")
                assert r.status_code == 200
                return r.content

            first = {name: get(name) for name in ("p0.jpg", "p1.jpg", "p2.jpg")}
            get("p0.jpg")  # p0 used again: p1 is now the least recently used
            get("p3.jpg")
            get("p4.jpg")
            cached = {int(f.name.split("_")[0]) for f in _cache_files(index)}
            total = sum(f.stat().st_size for f in _cache_files(index))
            assert total <= limit and app.state.thumbnails.total_bytes == total
            assert ids["p0.jpg"] in cached and ids["p4.jpg"] in cached and ids["p1.jpg"] not in cached
            assert get("p1.jpg") == first["p1.jpg"]  # evicted thumbnails are made again on demand

    # A restarted server knows the cache on disk and keeps within the bound.
    with _engine(index, tiny_model) as engine:
        app = create_app(engine, thumbnail_cache_bytes=limit)
        assert app.state.thumbnails.total_bytes == sum(f.stat().st_size for f in _cache_files(index)) <= limit


# -- formats that are never decoded --------------------------------------------------------------
@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that records every run; Pillow looks for Ghostscript afresh."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    marker = tmp_path / "ghostscript-was-run"
    script = folder / "gs"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return marker


def _eps_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), RED).save(out, "EPS")
    return out.getvalue()


def test_eps_renamed_jpg_gets_no_thumbnail_and_never_reaches_ghostscript(tmp_path, tiny_model, fake_ghostscript):
    root = tmp_path / "photos"
    make_image(root / "real.jpg", seed=5)
    make_image(root / "trojan.jpg", seed=6)
    index = tmp_path / "index"
    with _engine(index, tiny_model) as engine:
        engine.add([root])
        item = _ids(engine)["trojan.jpg"]
        (root / "trojan.jpg").write_bytes(_eps_bytes())  # replaced after indexing
        with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            r = http.get(f"/api/items/{item}/thumbnail")
            assert r.status_code == 404 and "EPS" in r.json()["detail"], r.text
            files = http.post("/api/search", files={"images": ("doc.eps", _eps_bytes(), "application/postscript")})
            assert files.status_code == 415 and "EPS" in files.json()["detail"], files.text
            renamed = http.post("/api/search", files={"images": ("photo.jpg", _eps_bytes(), "image/jpeg")})
            assert renamed.status_code == 415 and "photo.jpg" in renamed.json()["detail"]
            assert http.get(f"/api/items/{_ids(engine)['real.jpg']}/thumbnail").status_code == 200
    assert not fake_ghostscript.exists(), fake_ghostscript.read_text()
    assert not any(f.name.startswith(f"{item}_") for f in _cache_files(index))


# -- file names that are not valid UTF-8 ---------------------------------------------------------
ODD_NAMES = [b"caf\xe9.jpg", b"\xff\xfe odd.png", b"ok \xc3\xa9t\xc3\xa9.jpg"]  # latin-1, junk, valid UTF-8


def test_names_that_are_not_utf8_through_every_endpoint_and_the_client(tmp_path, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    paths = {}
    for n, raw in enumerate(ODD_NAMES):
        path = os.fsdecode(os.fsencode(str(root)) + b"/" + raw)
        make_image(Path(path), seed=30 + n)
        paths[raw] = path
    note = os.fsdecode(os.fsencode(str(root)) + b"/notes-\xff.txt")
    Path(note).write_text("a note with an odd name")
    paths[b"notes-\xff.txt"] = note
    with _engine(tmp_path / "index", tiny_model) as engine:
        engine.add([root])
        by_path = {h.path: h.id for h in engine.search("anything", k=100)}
        assert set(by_path) == set(paths.values())
        with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            def check_hit(hit: dict) -> None:
                exact = next(p for p, i in by_path.items() if i == hit["id"])
                hit["path"].encode("utf-8")  # valid text
                if path_is_exact_text(exact):
                    assert hit["path"] == exact and "path_bytes" not in hit
                else:
                    assert base64.b64decode(hit["path_bytes"]) == os.fsencode(exact)
                    assert hit["path"] == printable_path(exact) and "\\x" in hit["path"]

            answer = http.get("/api/search", params={"q": "odd", "k": 10})
            assert answer.status_code == 200 and len(answer.json()["hits"]) == 4
            for hit in answer.json()["hits"]:
                check_hit(hit)
            for path, item in by_path.items():
                meta = http.get(f"/api/items/{item}")
                assert meta.status_code == 200
                check_hit(meta.json())
                similar = http.get(f"/api/items/{item}/similar", params={"k": 3})
                assert similar.status_code == 200
                for hit in similar.json()["hits"]:
                    check_hit(hit)
                original = http.get(f"/api/items/{item}/file")
                assert original.status_code == 200 and original.content == Path(path).read_bytes()
                disposition = original.headers["content-disposition"]
                assert disposition.isascii() and "filename*=UTF-8''" in disposition
                shown = unquote(disposition.split("filename*=UTF-8''", 1)[1], errors="strict")
                raw = os.fsencode(os.path.basename(path))
                assert shown == raw.decode("utf-8", errors="replace") or shown == raw.decode("cp1252", errors="replace")
                if raw == b"caf\xe9.jpg":
                    assert shown == "café.jpg"
                if path.endswith((".jpg", ".png")):
                    assert http.get(f"/api/items/{item}/thumbnail").status_code == 200
            posted = http.post("/api/search", json={"q": "odd", "k": 10})
            assert posted.status_code == 200
            for hit in posted.json()["hits"]:
                check_hit(hit)

            with Client(server.url) as client:
                remote = client.search("odd", k=10)
                assert {h.path for h in remote} == set(paths.values())
                for path, item in by_path.items():
                    assert client.get(item).path == path
                    assert client.file(item) == Path(path).read_bytes()
                    assert {h.path for h in client.similar(item, k=3)} <= set(paths.values())
