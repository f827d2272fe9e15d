"""The fused, hybrid and calibrated paths take what the plain vector path takes: date, camera and
place filters (pushed into the candidate search), ``sort``, ``dedup``, and a video hit's moment
and segment; through the Engine, the HTTP API, the Client and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime

import numpy as np
import pytest
from PIL import Image
from conftest import PG_SLOW, engines_per_filter_strategy
from test_photo_metadata import FILE_TIME, FILTERS, _set_mtime, build_library, paths

from mmsearch import Engine
from mmsearch.client import Client
from support.videogen import make_video, scene_frame
from mmsearch.search.query import parse_query
from mmsearch.server import ServerThread, create_app

# Every way to rank other than the plain one.
RANKINGS = ({"fusion": "late"}, {"fusion": "early"}, {"fusion": "rrf"}, {"mode": "hybrid"},
            {"fusion": "late", "mode": "hybrid"}, {"calibrated": True})
CAPTION = "a lighthouse on a rocky coast"


def captioned_photo(path, seed: int, caption: str, taken: str, make: str, model: str):
    """A photo whose EXIF holds a capture date, a camera and an ImageDescription caption (which
    becomes a text row of its own, with no capture metadata: it is dated by the file's time)."""
    rng = np.random.default_rng(seed)
    exif = Image.Exif()
    exif[0x010E], exif[0x010F], exif[0x0110] = caption, make, model
    exif.get_ifd(0x8769)[0x9003] = taken
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, exif=exif)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model):
    """The photo-metadata library, a copy of one photo (a near-duplicate for dedup), and a
    captioned Pixel photo taken in 2024 whose file (and so its caption) dates from 2020."""
    root = tmp_path_factory.mktemp("fused") / "library"
    files = build_library(root)
    files["copy"] = root / "paris-copy.jpg"
    shutil.copy2(files["paris"], files["copy"])
    files["captioned"] = captioned_photo(root / "captioned.jpg", 11, CAPTION, "2024:06:01 09:00:00", "Google",
                                         "Pixel 7")
    _set_mtime(files["captioned"], FILE_TIME)
    index = root.parent / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([root])
    # the caption is an item of its own; the copy reuses its twin's vector
    assert report.added + report.reused == len(files) + 1 and not report.skipped
    return index, root, files


def listed(hits):
    return [(h.id, round(h.score, 5)) for h in hits]


def alike(hits):
    """Hits as (file, score), a copy standing for its twin (they tie: any of the two may lead)."""
    return sorted((os.path.basename(h.path).replace("-copy", ""), round(h.score, 5)) for h in hits)


def test_each_ranking_takes_the_same_filters_as_the_vector_path(library):
    """Where a document is one item, late and early fusion score it by its cosine: with any
    filter they give the plain path's hits and scores; every other ranking gives the same hits
    when k holds them all."""
    index, _, files = library
    with Engine(index) as engine:
        documents = engine.search("x", k=50, fusion="late")
        assert {h.path for h in documents if "text" in h.matched and "image" in h.matched} == {str(files["captioned"])}
        for options in FILTERS:
            plain = engine.search("a photo", k=50, **options)
            for ranking in RANKINGS:
                got = engine.search("a photo", k=50, **options, **ranking)
                if "fusion" in ranking:  # documents: the captioned photo is one, filtered by its image
                    assert {h.path for h in got} - {str(files["captioned"])} == \
                        {h.path for h in plain} - {str(files["captioned"])}, (options, ranking)
                else:
                    assert {h.id for h in got} == {h.id for h in plain}, (options, ranking)
            for k in (1, 3):
                plain = engine.search("a photo", k=k, **options)
                for fusion in ("late", "early"):
                    if any(h.path == str(files["captioned"]) for h in plain):
                        continue  # a two-part document: its fused score is not its image's cosine
                    assert alike(engine.search("a photo", k=k, fusion=fusion, **options)) == alike(plain)


def test_every_way_of_pushing_a_filter_gives_the_same_fused_hits(library, monkeypatch):
    """SQLite's passing ids or the in-memory columns, over-fetching, exact scoring and the FAISS
    ID selector agree in the fused and hybrid paths too."""
    index, _, _ = library
    results = [[listed(engine.search("a photo", k=k, **f, **ranking))
                for f in FILTERS for k in (1, 3) for ranking in ({"fusion": "early"}, {"mode": "hybrid"})]
               for engine in engines_per_filter_strategy(index, monkeypatch)]
    assert all(r == results[0] for r in results[1:])
    assert all(results[0])


def test_a_document_is_filtered_by_its_image_and_scored_with_its_caption(library):
    """The caption row carries no camera and the file's 2020 date; the document is the photo's:
    a Pixel photo of 2024, scored by both its vectors."""
    index, _, files = library
    with Engine(index) as engine:
        q = engine.encode_query(parse_query(CAPTION))
        with engine.store.read() as r:
            rows = {row.locator: row for row in r.items(sorted(r.item_ids())).values()
                    if row.path == str(files["captioned"])}
            v = {loc: np.frombuffer(dict(r.embeddings([row.id]))[row.id], np.float32) for loc, row in rows.items()}
        expected = (float(v[""] @ q) + float(v["caption"] @ q)) / 2
        for options in ({"camera": "pixel 7"}, {"after": "2024-01-01"}, {"near": None, "after": "2024-05"}):
            hits = engine.search(CAPTION, k=10, fusion="late", **options)
            mine = [h for h in hits if h.path == str(files["captioned"])]
            assert len(mine) == 1 and mine[0].id == rows[""].id, options
            assert mine[0].matched["text"]["text"] == CAPTION
            assert mine[0].score == pytest.approx(expected, abs=1e-5)
            assert (mine[0].camera, mine[0].taken_at) == ("Google Pixel 7", "2024-06-01T09:00:00")
        # Dated by its image, never by its caption's file time.
        assert str(files["captioned"]) not in {h.path for h in engine.search(CAPTION, k=20, fusion="late",
                                                                            before="2021-01-01")}
        assert str(files["captioned"]) in {h.path for h in engine.search(CAPTION, k=20, before="2021-01-01")}


def test_sort_and_dedup_in_the_fused_path(library):
    index, _, files = library
    with Engine(index) as engine:
        for ranking in RANKINGS:
            best = engine.search("a red pasta dish", k=5, type="image", **ranking)
            newest = engine.search("a red pasta dish", k=5, type="image", sort="date", **ranking)
            assert {h.id for h in newest} == {h.id for h in best}, ranking
            assert [h.taken_at for h in newest] == sorted((h.taken_at for h in best), reverse=True)
            assert [h.rank for h in newest] == [1, 2, 3, 4, 5]
        plain = engine.search("a photo", k=20, dedup=0.999)
        pair = {str(files["paris"]), str(files["copy"])}
        kept = [h for h in plain if h.path in pair]
        assert len(kept) == 1 and len(kept[0].duplicates) == 1
        for ranking in RANKINGS:
            fused = engine.search("a photo", k=20, dedup=0.999, **ranking)
            mine = [h for h in fused if h.path in pair]
            assert len(mine) == 1 and len(mine[0].duplicates) == 1, ranking
            assert {mine[0].id, *mine[0].duplicates} == {kept[0].id, *kept[0].duplicates}
            without = engine.search("a photo", k=20, **ranking)
            assert len(without) == len(fused) + 1
        # k groups are still returned, past the collapsed copy
        assert len(engine.search("paris", k=9, dedup=0.999, fusion="late")) == 9


@pytest.fixture(scope="module")
def video_index(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("fusedvideo")
    lib = base / "lib"
    lib.mkdir()
    make_video(lib / "holiday.mp4", [3.0, 5.0, 2.5, 6.0], gop=5)
    Image.fromarray(scene_frame((90, 90, 90), 96, 72, 0, False, 3)).save(lib / "photo.png")
    (lib / "photo.txt").write_text("a grey picture from the holiday")
    index = base / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([lib])
    return index, lib, base


@pytest.mark.parametrize("scene", [1, 3])
def test_a_video_hit_in_a_fused_query_carries_its_moment(video_index, scene):
    from support.videogen import COLOURS

    index, lib, base = video_index
    still = base / f"still{scene}.png"
    Image.fromarray(scene_frame(COLOURS[scene], 160, 96, 0, False, scene)).save(still)
    query = f"holiday + {still}"
    with Engine(index) as engine:
        plain = [h for h in engine.search(query, k=5) if h.modality == "video"]
        assert len(plain) == 1 and plain[0].start <= plain[0].t < plain[0].end
        moment = (plain[0].id, plain[0].t, plain[0].start, plain[0].end)
        for ranking in RANKINGS + ({"mode": "lexical"},):
            hits = engine.search(query, k=5, **ranking)
            video = [h for h in hits if h.modality == "video"]
            if ranking.get("mode") == "lexical":  # ranked by words: its frame is still the best one by cosine
                assert len(video) == 1 and video[0].start is not None and video[0].start <= video[0].t < video[0].end
                continue
            assert len(video) == 1, ranking
            assert (video[0].id, video[0].t, video[0].start, video[0].end) == moment, ranking


def test_client_cli_and_http_take_filters_with_fusion(library, cli):
    index, _, files = library
    engine = Engine(index)
    options = {"camera": "pixel 7", "sort": "date-asc"}
    try:
        with ServerThread(create_app(engine, preload=False)) as server, Client(server.url) as client:
            mine = engine.search(CAPTION, k=10, fusion="late", mode="hybrid", dedup=0.999, **options)
            theirs = client.search(CAPTION, k=10, fusion="late", mode="hybrid", dedup=0.999, **options)
            assert [(h.id, h.taken_at, h.camera) for h in mine] == [(h.id, h.taken_at, h.camera) for h in theirs]
            assert {name.replace("-copy", "") for name in paths(theirs)} == {"nyc.webp", "captioned.jpg", "paris.jpg"}
            assert [h.taken_at[:4] for h in theirs] == ["2022", "2024", "2024"]
            assert any(h.duplicates for h in theirs)  # paris.jpg and its copy
    finally:
        engine.close()
    result = cli("query", CAPTION, "-i", index, "--fusion", "early", "--camera", "pixel 7", "--after", "2023",
                 "--sort", "date", "--json")
    hits = json.loads(result.stdout)["hits"]
    assert [os.path.basename(h["path"]) for h in hits][:1] == ["captioned.jpg"]
    assert {os.path.basename(h["path"]) for h in hits} == {"captioned.jpg", "paris.jpg", "paris-copy.jpg"}
    assert all(h["taken_at"] >= "2023" for h in hits) and hits[0]["matched"]["text"]["text"] == CAPTION
    assert datetime.fromisoformat(hits[0]["taken_at"]) > datetime.fromisoformat(hits[-1]["taken_at"])


@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_fused_filters_on_either_catalogue(backend, tmp_path, tiny_model):
    """The fused path's reads (statements compiled once, vectors joined to rows) and the pushed
    filter, on SQLite and on PostgreSQL."""
    root = tmp_path / "library"
    build_library(root)
    captioned_photo(root / "captioned.jpg", 11, CAPTION, "2024:06:01 09:00:00", "Google", "Pixel 7")
    _set_mtime(root / "captioned.jpg", FILE_TIME)
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        for options in ({"camera": "pixel 7"}, {"after": "2022"}, {"near": "0,0,20000", "type": "image"}):
            plain = engine.search(CAPTION, k=20, **options)
            for fusion in ("late", "early", "rrf"):
                got = engine.search(CAPTION, k=20, fusion=fusion, sort="date", dedup=0.999, **options)
                assert {h.path for h in got} == {h.path for h in plain}, (options, fusion)
                assert [h.taken_at for h in got] == sorted((h.taken_at for h in got), reverse=True)
        mine = engine.search(CAPTION, k=5, fusion="late", camera="pixel 7")[0]
        assert mine.path == str(root / "captioned.jpg") and mine.matched["text"]["text"] == CAPTION


def test_the_page_sends_filters_and_order_with_fusion_and_words(library):
    """The page's Documents and Match selects with a camera filter and the date order (refused
    with HTTP 400 before the fused path took them), in a real headless Chromium."""
    from test_webui import CHROMIUM, CHROMIUM_ARGS, result_ids, status_has, sync_playwright

    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    index, _, files = library
    with Engine(index) as engine:
        expected = engine.search("a photo", k=10, camera="pixel 7", fusion="early", mode="hybrid", sort="date")
        assert [h.taken_at[:4] for h in expected] == ["2024", "2024", "2024", "2022"]
        with ServerThread(create_app(engine, preload=False)) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            try:
                page.goto(f"{server.url}/?q=a+photo&camera=pixel+7&fusion=early&mode=hybrid&sort=date")
                status_has(page, "4 results")
                assert page.locator("#fusion").input_value() == "early" and page.locator("#mode").input_value() == "hybrid"
                assert result_ids(page) == [str(h.id) for h in expected]
            finally:
                page.close()
                browser.close()
