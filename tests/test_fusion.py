"""Documents (JSONL records naming images, sidecars, embedded captions), late/early/RRF fusion
checked against scores computed by hand from the stored vectors, and hybrid lexical search."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
from conftest import new_database
from docs_corpus import CAPTIONS, SIDECAR, make_docs_corpus

from mmsearch import Engine, QueryError
from mmsearch.search.query import parse_query
from mmsearch.settings import Settings


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def docs(request, tmp_path_factory, tiny_model):
    """The documents corpus indexed with the tiny model: (index folder, corpus folder, report),
    its catalogue in SQLite, then in PostgreSQL (the folder remembers its database)."""
    base = tmp_path_factory.mktemp("docs")
    root = make_docs_corpus(base / "corpus")
    db = new_database(request.getfixturevalue("pg_server")) if request.param == "postgres" else None
    with Engine(base / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                settings=Settings.from_env().but(db=db)) as engine:
        report = engine.add([root])
    return base / "idx", root, report


def rows(engine):
    with engine.store.read() as r:
        return r.items(sorted(r.item_ids()))


def vectors(engine, ids):
    with engine.store.read() as r:
        return {i: np.frombuffer(b, np.float32) for i, b in r.embeddings(ids)}


def by_place(engine):
    return {(row.path, row.locator): row for row in rows(engine).values()}


def test_documents_from_all_three_sources(docs):
    idx, root, report = docs
    assert [(s.path.rsplit("/", 1)[-1], "not found" in s.reason) for s in report.skipped] == [("shoes.jsonl:4", True)]
    with Engine(idx) as engine:
        places = by_place(engine)
        shoes = str(root / "shop" / "shoes.jsonl")
        # A JSONL record naming an image: its text and its image, both rows of the JSONL file.
        assert places[(shoes, "1")].modality == "text" and places[(shoes, "1")].meta["sku"] == "INV-2024-0042"
        image = places[(shoes, "1:image")]
        assert image.modality == "image" and image.meta == {"image": "img/123.jpg"} and image.width == 96
        # The same picture indexed as a file and as a record's image share one vector.
        same = places[(str(root / "shop" / "img" / "123.jpg"), "")]
        v = vectors(engine, [image.id, same.id])
        assert np.allclose(v[image.id], v[same.id])
        # A record whose image is missing keeps its text; a record without image stays a text.
        assert (shoes, "4") in places and (shoes, "4:image") not in places and (shoes, "3") in places
        # Embedded captions (EXIF, XMP, IPTC): a caption row of the image file.
        for rel, caption in CAPTIONS.items():
            assert places[(str(root / rel), "caption")].text == caption
            assert places[(str(root / rel), "")].modality == "image"
        # A sidecar: two files, one document.
        hits = engine.search("fruit stall", k=20, fusion="late")
        market = [h for h in hits if h.path == str(root / SIDECAR[0])]
        assert len(market) == 1 and market[0].matched["text"]["text"] == SIDECAR[2]
        assert market[0].matched["text"]["source"] == "sidecar"
        # Every document appears once.
        keys = [(h.matched.get("image", {}).get("id"), h.matched.get("text", {}).get("id")) for h in hits]
        assert len(keys) == len(set(keys))
        # 2 records with images (each one document with the image file it names: one picture,
        # one result, shown by the file), 2 text-only records, 3 captioned images, 1 sidecar
        # pair, 1 image alone
        assert len(hits) == 9
        shop = [h for h in hits if h.record is not None]
        assert sorted((h.path, h.record["line"]) for h in shop) == [
            (str(root / "shop" / "img" / "123.jpg"), "1"), (str(root / "shop" / "img" / "456.png"), "2")]
        assert all(h.record["path"] == shoes and h.matched["text"]["source"] == "record" for h in shop)
        # Without fusion: every item, a picture once (17 items, 2 of them a record's image)
        assert len(engine.search("fruit stall", k=20)) == 15


def record_line(hit):
    """(file, line) of the JSONL record a hit shows: a text record, or the picture a record names."""
    if hit.record is not None:
        return hit.record["path"], hit.record["line"]
    return hit.path, hit.locator.split(":")[0]


def expected_documents(engine, root):
    """The documents of the corpus, written out by hand: (image row, text row) places."""
    shoes = str(root / "shop" / "shoes.jsonl")
    photos = {rel: str(root / rel) for rel in CAPTIONS}
    # A record's image is the image file it names: one document, shown by the file.
    docs = [((str(root / "shop" / "img" / "123.jpg"), ""), (shoes, "1")),
            ((str(root / "shop" / "img" / "456.png"), ""), (shoes, "2")), (None, (shoes, "3")),
            (None, (shoes, "4")), ((str(root / SIDECAR[0]), ""), (str(root / SIDECAR[1]), "")),
            ((str(root / "photos" / "alone.png"), ""), None)]
    docs += [((p, ""), (p, "caption")) for p in photos.values()]
    places = by_place(engine)
    return [(places[i].id if i else None, places[t].id if t else None) for i, t in docs]


@pytest.mark.parametrize("fusion", ["late", "early", "rrf"])
def test_fused_scores_match_hand_computation(docs, fusion):
    idx, root, _ = docs
    wi, wt = 0.3, 0.7
    query = "a lighthouse on the coast"
    with Engine(idx) as engine:
        q = engine.encode_query(parse_query(query))
        documents = expected_documents(engine, root)
        v = vectors(engine, [i for d in documents for i in d if i])
        cos = {i: float(v[i] @ q) for i in v}
        expected = {}
        if fusion == "rrf":
            def ranks(side):
                # ties go to the lowest id shown
                order = sorted((d for d in documents if d[side]), key=lambda d: (-cos[d[side]], d[0] or d[1]))
                return {d: r for r, d in enumerate(order, start=1)}
            ri, rt = ranks(0), ranks(1)
            for d in documents:
                expected[d] = sum(1 / (60 + r[d]) for r in (ri, rt) if d in r)
        for d in documents if fusion != "rrf" else ():
            i, t = d
            if i and t:
                if fusion == "late":
                    expected[d] = (wi * cos[i] + wt * cos[t]) / (wi + wt)
                else:
                    fused = wi * v[i] + wt * v[t]
                    expected[d] = float(q @ (fused / np.linalg.norm(fused)))
            else:
                expected[d] = cos[i or t]
        hits = engine.search(query, k=50, fusion=fusion, image_weight=wi, text_weight=wt)
        got = {(h.matched.get("image", {}).get("id"), h.matched.get("text", {}).get("id")): h.score for h in hits}
        assert set(got) == set(expected)
        for d, score in expected.items():
            assert got[d] == pytest.approx(score, abs=1e-5), d
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # The raw cosine of the item shown stays available.
        assert all(h.cosine == pytest.approx(cos[h.id], abs=1e-5) for h in hits)


def test_exact_tokens_and_meaning_in_hybrid(docs):
    idx, root, _ = docs
    with Engine(idx) as engine:
        shoes = str(root / "shop" / "shoes.jsonl")
        places = by_place(engine)
        # An invoice number held in a record's field finds that record first.
        for mode in ("lexical", "hybrid"):
            for fusion in ("none", "late"):
                hit = engine.search("INV-2024-0042", k=3, mode=mode, fusion=fusion)[0]
                assert record_line(hit) == (shoes, "1"), (mode, fusion)
                assert hit.matched["words"] == ["inv", "2024", "0042"]
        # A file name finds its file first; a word of a caption its image.
        hit = engine.search("market.txt", k=3, mode="hybrid", fusion="late")[0]
        assert hit.path == str(root / SIDECAR[0])
        top = engine.search("456.png", k=3, mode="lexical")
        assert {h.path.rsplit("/", 1)[-1] + h.locator for h in top[:3]} == {"456.png", "shoes.jsonl2"}
        assert next(h for h in top if h.path.endswith("456.png")).record == {"path": shoes, "line": "2"}
        hit = engine.search("kites", k=3, mode="hybrid", fusion="late")[0]
        assert hit.id == places[(str(root / "photos" / "xmp.jpg"), "")].id
        # A query none of whose words is indexed ranks by meaning alone: hybrid = vector order.
        query = "zebra quantum saxophone"
        assert engine.search(query, k=5, mode="lexical") == []
        vector = [h.id for h in engine.search(query, k=5, fusion="late")]
        assert [h.id for h in engine.search(query, k=5, mode="hybrid", fusion="late")] == vector
        with pytest.raises(QueryError, match="unknown mode"):
            engine.search("x", mode="fuzzy")
        with pytest.raises(QueryError, match="weights cannot both be 0"):
            engine.search("x", fusion="late", image_weight=0, text_weight=0)


def test_documents_follow_incremental_changes(backend, tmp_path, tiny_model):
    root = make_docs_corpus(tmp_path / "corpus")
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        before = len(rows(engine))
        assert engine.add([root]).added == 0  # unchanged
        # A renamed JSONL file: its records (texts and images) reuse their vectors.
        (root / "shop" / "shoes.jsonl").rename(root / "shop" / "products.jsonl")
        report = engine.add([root])
        assert (report.added, report.reused, report.removed) == (0, 6, 6)
        assert engine.search("INV-2024-0042", k=1, mode="lexical")[0].path.endswith("products.jsonl")
        # A deleted sidecar: the image stands alone; its words leave the full-text index.
        (root / SIDECAR[1]).unlink()
        engine.add([root])
        assert len(rows(engine)) == before - 1
        assert engine.search("Saturday", k=3, mode="lexical") == []
        hit = next(h for h in engine.search("market", k=20, fusion="late") if h.path == str(root / SIDECAR[0]))
        assert "text" not in hit.matched
        # A new caption in a file: the caption row changes with it.
        from docs_corpus import with_caption

        with_caption(root / "photos" / "exif.jpg", 20, "a red lighthouse at night", "exif")
        engine.add([root])
        assert engine.search("night", k=1, mode="lexical")[0].path == str(root / "photos" / "exif.jpg")
        assert engine.search("rocky", k=3, mode="lexical") == []


def test_check_is_clean_on_documents_and_repairs_an_image_part(tmp_path, tiny_model):
    from mmsearch.check import check_folder

    root = make_docs_corpus(tmp_path / "corpus")
    idx = tmp_path / "idx"
    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        places = by_place(engine)
        image = places[(str(root / "shop" / "shoes.jsonl"), "1:image")].id
        good = vectors(engine, [image])[image]
    report = check_folder(idx)
    assert report.ok, report
    with sqlite3.connect(idx / "mmsearch.db") as conn:  # a lost vector of a record's image
        conn.execute("DELETE FROM embeddings WHERE item_id = ?", (image,))
    from conftest import encoder_of

    report = check_folder(idx, repair=True, encoder_factory=encoder_of)
    with Engine(idx) as engine:
        assert np.allclose(vectors(engine, [image])[image], good, atol=1e-4)


def test_an_old_index_gets_its_full_text_index_on_open(docs, tmp_path):
    idx, _root, _ = docs
    old = tmp_path / "old"
    shutil.copytree(idx, old)
    if not (old / "mmsearch.db").exists():  # PostgreSQL: in its database (the copy names the same one)
        import psycopg

        from mmsearch.storage.location import linked_url

        url = linked_url(old).replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as conn:  # as an index from before the full-text index
            conn.execute("ALTER TABLE items DROP COLUMN fts")
        shutil.rmtree(old)
        old = idx
    else:
        with sqlite3.connect(old / "mmsearch.db") as conn:  # as an index from before the full-text index
            for name in ("items_fts_ai", "items_fts_ad", "items_fts_au"):
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute("DROP TABLE items_fts")
    with Engine(old) as engine:
        hit = engine.search("INV-2024-0042", k=1, mode="lexical")[0]
        assert hit.locator.startswith("1")


def test_an_exact_term_among_descriptive_words_still_finds_its_item_first(docs):
    from mmsearch.search.fusion import exact_terms
    from mmsearch.search.request import Ranking

    assert exact_terms("SKU-1002 shoe IMG_0042 holiday.mp4 2019") == ["SKU-1002", "IMG_0042", "holiday.mp4", "2019"]
    assert exact_terms("red running shoe, size 42 e.g. v2") == []  # words that describe
    idx, root, _ = docs
    with Engine(idx) as engine:
        shoes = str(root / "shop" / "shoes.jsonl")
        places = by_place(engine)
        lighthouse = places[(str(root / "photos" / "exif.jpg"), "")].id
        # The query's vector is the lighthouse photo's turned away from the invoice record's
        # parts, and most of its words are the lighthouse's caption: by rank fusion alone the
        # lighthouse wins; the invoice number's record holds the one exact term, so it comes first.
        record = [places[(shoes, "1")].id, places[(shoes, "1:image")].id]
        v = vectors(engine, [lighthouse, *record])
        vector = v[lighthouse] - v[record[0]] - v[record[1]]
        vector /= np.linalg.norm(vector)
        words = "INV-2024-0042 lighthouse on a rocky coast"
        for fusion in ("none", "late", "early", "rrf"):
            hits = engine.search_fused(vector, words, Ranking(fusion, "hybrid"), k=3)
            assert record_line(hits[0]) == (shoes, "1"), fusion
            assert hits[0].score > 1.0 > hits[1].score
        # Without the exact term the same query ranks the lighthouse first.
        hit = engine.search_fused(vector, "lighthouse coast", Ranking("late", "hybrid"), k=1)[0]
        assert hit.id == lighthouse


def test_json_and_cli_show_what_matched(docs, cli, monkeypatch):
    from mmsearch.cli import base

    monkeypatch.setattr(base.out, "_width", 200)  # room for the text column beside whole paths
    idx, root, _ = docs
    result = cli("query", "INV-2024-0042", "-i", idx, "--mode", "hybrid", "--fusion", "late", "--json", "-k", "2")
    doc = json.loads(result.stdout)
    first = doc["hits"][0]
    assert first["matched"]["words"] == ["inv", "2024", "0042"] and "cosine" in first
    assert first["matched"]["image"]["path"] == str(root / "shop" / "img" / "123.jpg")
    # The table shows a document hit (shown by its image) with its caption and the words matched.
    table = cli("query", "INV-2024-0042", "-i", idx, "--mode", "hybrid", "--fusion", "late", "-k", "1").stdout
    assert "123.jpg" in table or "1:image" in table
    assert "red running shoe, size 42" in table and "[inv 2024 0042]" in table
    result = cli("query", "x", "-i", idx, "--fusion", "sideways", ok=False)
    assert result.exit_code != 0 and "unknown fusion" in result.stderr


def test_server_and_client_expose_mode_and_fusion(docs):
    """The HTTP API and the client rank as the engine does, and a hit says what matched; a
    record's image part is served (thumbnail and file) from the image it names."""
    from mmsearch.client import Client
    from mmsearch.server import ServerThread, create_app

    idx, root, _ = docs
    with Engine(idx) as engine, ServerThread(create_app(engine)) as server, Client(server.url) as client:
        local = engine.search("INV-2024-0042 shoe", k=5, mode="hybrid", fusion="late", image_weight=0.3, text_weight=0.7)
        remote = client.search("INV-2024-0042 shoe", k=5, mode="hybrid", fusion="late", image_weight=0.3, text_weight=0.7)
        assert [(h.id, round(h.score, 5)) for h in remote] == [(h.id, round(h.score, 5)) for h in local]
        first = remote[0]
        image = root / "shop" / "img" / "123.jpg"
        # The record's image is the file it names: shown by the file, naming its record.
        assert first.path == str(image) and first.record == {"path": str(root / "shop" / "shoes.jsonl"), "line": "1"}
        assert first.matched["words"] == ["inv", "2024", "0042", "shoe"]
        assert first.matched["text"]["text"] == "red running shoe, size 42" and first.cosine is not None
        assert client.file(first.id) == image.read_bytes()
        assert client.thumbnail(first.id, size=64)[:2] == b"\xff\xd8"
        # Calibrated scores and the cutoff travel too; POST (an image term) takes the same options.
        cut = client.search("fishing boats in the harbour at dawn", k=5, cutoff="auto", calibrated=True)
        assert cut and all(h.calibrated is not None for h in cut)
        from mmsearch import QueryTerm

        terms = [QueryTerm("image", str(image)), QueryTerm("text", "red shoe")]
        posted = client.search(terms, k=3, fusion="rrf", mode="hybrid")  # an image term: POST
        # (by picture: the local search leaves the query's own file out, an upload cannot, so the
        # first picture is shown by its record's image here and by its file there)
        assert [h.file for h in posted] == [h.file for h in engine.search(terms, k=3, fusion="rrf", mode="hybrid")]
        bad = httpx_get(server.url, "/api/search", {"q": "x", "fusion": "sideways"})
        assert bad.status_code == 422


def httpx_get(url, path, params):
    import httpx

    return httpx.get(url + path, params=params)


def test_words_held_by_many_items_leave_the_bm25_query(docs, monkeypatch):
    """A word in more than COMMON_DF items says little and would make BM25 score every match:
    it is left out when a rarer word is there; alone, only --mode lexical still searches it."""
    from mmsearch.storage import lexical

    idx, root, _ = docs
    monkeypatch.setattr(lexical, "COMMON_DF", 3)  # "photos" names the folder of 8 items
    with Engine(idx) as engine:
        with engine.store.read() as r:
            found = engine.store.catalogue.lexical.search(r.session, "photos harbour", 50)
            assert [engine.get(i).path for i, _ in found] == [str(root / "photos" / "iptc.jpg")]
            assert engine.store.catalogue.lexical.search(r.session, "photos shop", 50) == []
            assert len(engine.store.catalogue.lexical.search(r.session, "photos shop", 50, every_word=True)) >= 3
        assert engine.search("photos shop", k=5, mode="lexical") != []
        vector = [h.id for h in engine.search("photos shop", k=5, fusion="late")]
        assert [h.id for h in engine.search("photos shop", k=5, mode="hybrid", fusion="late")] == vector
