"""One API, two ways in: the Engine in a program and the Client over HTTP share method names,
filters (``under`` too) and one hit type, so the same test runs against both. Searches run in
parallel, and an indexing report says where its time went."""

from __future__ import annotations

import json
import threading

import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT
from mmsearch import Engine, Hit, Item
from mmsearch.client import Client
from mmsearch.server import ServerThread, create_app


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    from conftest import JSONL_LINES, TEXTS, make_image

    root = tmp_path_factory.mktemp("api") / "corpus"
    for i, name in enumerate(["a.jpg", "b.png", "c.webp", "sub/d.bmp", "sub/e.gif", "sub/f.tiff"]):
        make_image(root / name, seed=i)
    for rel, text in TEXTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in JSONL_LINES) + "\n")
    index = root.parent / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


@pytest.fixture(scope="module", params=["engine", "client"])
def api(request, indexed):
    index, _ = indexed
    engine = Engine(index)
    if request.param == "engine":
        yield engine
    else:
        with ServerThread(create_app(engine, preload=False)) as server, Client(server.url) as client:
            yield client
    engine.close()


def test_search_similar_get_info_with_the_same_names_and_filters(api, indexed):
    _, root = indexed
    hits = api.search("a black cat sleeping on a sofa", k=3)
    assert all(type(h) is Hit for h in hits) and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].text == "a black cat sleeping on a sofa" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    images = api.search("anything", k=20, type="image", under=root / "sub")
    assert {h.path for h in images} == {str(root / "sub" / n) for n in ("d.bmp", "e.gif", "f.tiff")}
    none = api.search("anything", k=5, under=root / "nowhere")
    assert list(none) == [] and "no indexed items under" in none.why_empty
    cut = api.search("anything", k=5, min_score=0.9999, type="image")
    assert list(cut) == [] and "below the minimum score" in cut.why_empty
    more = api.similar(hits[0].id, k=2, type="text")
    assert hits[0].id not in [h.id for h in more] and all(h.modality == "text" for h in more)
    item = api.get(hits[0].id)
    assert type(item) is Item and item.path == hits[0].path and not hasattr(item, "rank")
    assert api.info()["items"] == IMAGE_COUNT + TEXT_COUNT


def test_both_ways_give_the_same_answers(indexed):
    index, root = indexed
    with Engine(index) as engine, ServerThread(create_app(engine, preload=False)) as server, Client(server.url) as client:
        for query, options in (("sunset over a quiet sandy beach", {}), ("a dog", {"type": "image", "k": 4}),
                               # an uploaded image is not known to be an indexed file: it is not left out
                               (str(root / "a.jpg"), {"k": 5, "include_query": True}),
                               ("pasta", {"under": root / "notes"})):
            mine, theirs = engine.search(query, **options), client.search(query, **options)
            assert [(h.id, h.path, h.rank) for h in mine] == [(h.id, h.path, h.rank) for h in theirs], query
            assert [h.score for h in theirs] == pytest.approx([h.score for h in mine], abs=1e-6), query


def test_dedup_gives_the_same_answers_both_ways(indexed):
    """--dedup through the Engine and through the HTTP API (GET text search, POST image search,
    similar): the same kept hits, ranks and collapsed ids."""
    index, root = indexed
    with Engine(index) as engine, ServerThread(create_app(engine, preload=False)) as server, Client(server.url) as client:
        item = engine.search("a dog", k=1)[0].id
        for call, args, options in (("search", ("a dog",), {"k": 3, "dedup": True}),
                                    ("search", ("a dog",), {"k": 3, "type": "image", "dedup": 0.5}),
                                    ("search", (str(root / "a.jpg"),), {"k": 2, "dedup": 0.8, "include_query": True}),
                                    ("similar", (item,), {"k": 2, "dedup": 0.6})):
            mine, theirs = getattr(engine, call)(*args, **options), getattr(client, call)(*args, **options)
            assert [(h.id, h.rank, h.duplicates) for h in mine] == [(h.id, h.rank, h.duplicates) for h in theirs], options
            assert all(isinstance(h.duplicates, list) for h in theirs)
        bad = client._http.get("/api/search", params={"q": "a dog", "dedup_threshold": 1.5})
        assert bad.status_code == 422 and "dedup_threshold" in bad.json()["detail"]


def test_searches_run_in_parallel(indexed):
    """A search holding its snapshot does not stop another from searching (the old engine held
    one lock across the vector search and the row fetch, so searches ran one at a time)."""
    index, _ = indexed
    with Engine(index) as engine:
        engine.search("warm up", k=1)
        holding, release, done = threading.Event(), threading.Event(), threading.Event()

        def hold() -> None:
            with engine.store.snapshot():
                holding.set()
                release.wait(30)

        def search() -> None:
            engine.search("a dog running on green grass", k=2)
            done.set()

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(30)
        searcher = threading.Thread(target=search)
        searcher.start()
        finished = done.wait(30)
        release.set()
        holder.join()
        searcher.join()
        assert finished, "the second search waited for the first"


def test_index_report_says_where_the_time_went(tmp_path, tiny_model, corpus, cli):
    report = json.loads(cli("index", corpus, "-i", tmp_path / "idx", *tiny_model.args, "--json").stdout)
    stages = report["stages"]
    assert set(stages) >= {"scan", "read", "plan", "decode", "encode", "write", "save"}
    assert all(seconds >= 0 for seconds in stages.values())
    assert sum(stages.values()) <= report["seconds"] + 0.05
