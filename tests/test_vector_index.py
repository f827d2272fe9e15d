"""Vector index types (flat, IVF-SQ8, IVF-PQ): round trips, recall, exact re-ranking, automatic
choice and growth rebuilds through the Engine and the CLI, integrity checks, GPU fallback."""

from __future__ import annotations

import json
import logging
import shutil

import faiss
import numpy as np
import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT, make_image
from mmsearch import Engine
from mmsearch.storage import vectors as vectors_mod
from mmsearch.check import check_folder
from mmsearch.storage import MANIFEST
from mmsearch.storage.store import vectors_from_blobs
from support.synthetic import clustered_queries, clustered_vectors
from mmsearch.storage.vectors import FLAT, IVF_PQ, IVF_SQ8, IndexPlan, VectorIndex, choose, needs_rebuild
from mmsearch.storage.vectorfiles import load_latest

DIM = 64


def build(kind: str, data: np.ndarray, ids: np.ndarray, nlist: int = 16) -> VectorIndex:
    plan = choose(len(data), data.shape[1], kind, nlist=nlist)
    index = VectorIndex.create(data.shape[1], plan, data if kind != FLAT else None)
    index.add(ids, data)
    return index


def reranked(index: VectorIndex, data: np.ndarray, position: dict, query: np.ndarray, k: int) -> np.ndarray:
    """What IndexStore.search does, with the float32 vectors taken from ``data``."""
    _, candidates = index.search(query, index.rerank_depth(k))
    exact = data[[position[int(i)] for i in candidates]] @ query
    return candidates[np.argsort(-exact)[:k]]


@pytest.fixture(scope="module")
def data():
    return clustered_vectors(3000, DIM, seed=3)


@pytest.mark.parametrize("kind", [FLAT, IVF_SQ8, IVF_PQ])
def test_round_trip_add_remove_search_save_load_ids(tmp_path, data, kind):
    ids = np.arange(len(data), dtype=np.int64) * 7 + 5  # item ids, not positions
    index = build(kind, data, ids)
    assert index.kind == kind and index.ntotal == len(data)
    assert sorted(index.ids().tolist()) == sorted(ids.tolist())
    _, found = index.search(data[10], 5)
    assert ids[10] in found.tolist()

    gone = ids[:100]
    assert index.remove(gone) == 100
    assert index.remove(gone) == 0
    assert set(index.ids().tolist()) == set(ids[100:].tolist())
    _, found = index.search(data[10], 50)
    assert not set(found.tolist()) & set(gone.tolist())

    index.add(ids[:10], data[:10])  # re-added (the store's sync removes and re-adds changed ids)
    index.gen = 3
    index.save(tmp_path, 3)
    loaded = load_latest(tmp_path)
    assert (loaded.kind, loaded.gen, loaded.ntotal, loaded.nlist, loaded.nprobe) == (
        kind, 3, index.ntotal, index.nlist, index.nprobe)
    assert loaded.mapped == (kind != FLAT)  # readers map IVF cells instead of reading them
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    a, b = index.search(data[3], 10), loaded.search(data[3], 10)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
    # A mapped index is copied into memory before it changes or is saved (FAISS would abort).
    mapped = load_latest(tmp_path)
    (tmp_path / "copy").mkdir()
    copy = mapped.save(tmp_path / "copy", 4)
    assert not mapped.mapped
    original = next(tmp_path.glob("vectors.g*.faiss"))
    original.rename(tmp_path / "moved")  # the copy must hold its data, not point at this file
    assert faiss.read_index(str(copy)).ntotal == index.ntotal
    (tmp_path / "moved").rename(original)
    mapped = load_latest(tmp_path)
    mapped.remove(ids[:5])
    mapped.add(ids[:5], data[:5])
    assert sorted(mapped.ids().tolist()) == sorted(index.ids().tolist())
    assert loaded.differing(ids[:10], data[:10]) == 0
    assert loaded.differing(ids[:10], data[10:20]) == 10
    # k beyond what the probed cells hold: more cells are probed until k results exist.
    assert len(loaded.search(data[0], loaded.ntotal, nprobe=1)[1]) == loaded.ntotal


@pytest.mark.parametrize("kind", [IVF_SQ8, IVF_PQ])
def test_recall_after_exact_rerank_on_clustered_vectors(kind):
    data = clustered_vectors(20_000, 128, seed=1)
    queries = clustered_queries(100, 128, seed=1)
    ids = np.arange(len(data), dtype=np.int64)
    index = build(kind, data, ids, nlist=64)
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    position = {i: i for i in range(len(data))}
    recall = np.mean([
        len(set(reranked(index, data, position, q, 10).tolist()) & set(t.tolist())) / 10
        for q, t in zip(queries, truth)
    ])
    assert recall >= 0.9, recall



def test_a_selective_filter_keeps_its_recall(monkeypatch):
    """An ID selector letting 1% through: the best passing items lie farther from the query than
    the best items overall, so the IVF probes cells until they hold enough passing items
    (``vectors.selective_nprobe``); with the usual nprobe recall@10 fell (0.8 at 100k items in
    scripts/bench_filters.py)."""
    data = clustered_vectors(20_000, 128, seed=1)
    queries = clustered_queries(40, 128, seed=1)
    ids = np.arange(len(data), dtype=np.int64)
    index = build(IVF_SQ8, data, ids, nlist=256)
    allowed = np.sort(np.random.default_rng(5).choice(len(data), 200, replace=False)).astype(np.int64)
    truth = allowed[np.argsort(-(queries @ data[allowed].T), axis=1)[:, :10]]

    def recall() -> float:
        found = []
        for q, t in zip(queries, truth):
            _, candidates = index.search(q, index.rerank_depth(10), allowed=allowed)
            best = candidates[np.argsort(-(data[candidates] @ q))[:10]]
            found.append(len(set(best.tolist()) & set(t.tolist())) / 10)
        return float(np.mean(found))

    assert recall() >= 0.99
    monkeypatch.setattr(vectors_mod, "SCALE_NPROBE_BY_SHARE", False)
    assert recall() < 0.99  # the usual nprobe (0.95 here): the scaling is what keeps it

def test_synthetic_vectors_look_like_embeddings():
    data = clustered_vectors(2000, DIM, seed=0)
    queries = clustered_queries(50, DIM, seed=0)
    assert data.dtype == np.float32 and np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)
    assert np.array_equal(data, clustered_vectors(2000, DIM, seed=0))
    cos = data[:500] @ data[:500].T
    assert cos[np.triu_indices(500, 1)].mean() > 0.2  # a shared mean direction, unlike uniform vectors
    assert (queries @ data.T).max() < 0.9999  # queries are not copies of indexed vectors


def test_automatic_choice_and_rebuild_policy(monkeypatch):
    monkeypatch.delenv("MMSEARCH_FLAT_MAX", raising=False)
    assert choose(1000, 512).type == FLAT
    big = choose(1_000_000, 512, memory=64 << 30)
    assert (big.type, big.nlist, big.trained_for) == (IVF_SQ8, 1024, 1_000_000) and big.nprobe >= 16
    assert choose(1_000_000, 512, memory=1 << 30).type == IVF_PQ  # 8-bit codes would not fit comfortably
    with pytest.raises(vectors_mod.IndexTypeError):
        choose(10, 512, "hnsw")
    ivf = IndexPlan(IVF_SQ8, 256, 16, trained_for=60_000)
    assert needs_rebuild(ivf, 100_000, 512) is None
    assert needs_rebuild(ivf, 300_000, 512).nlist > 256  # grew well past its training
    assert needs_rebuild(ivf, 30_000, 512) is None  # hysteresis
    assert needs_rebuild(ivf, 10_000, 512).type == FLAT
    assert needs_rebuild(IndexPlan(FLAT), 60_000, 512, "flat") is None


# -- through the Engine ---------------------------------------------------------------------------
def open_engine(tmp_path, model, name="idx") -> Engine:
    return Engine(tmp_path / name, model=str(model.config), pretrained=str(model.checkpoint))


def exact_top(engine: Engine, query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    with engine.store.read() as r:
        rows = [row for chunk in r.embedding_chunks() for row in chunk]
    ids = np.array([r[0] for r in rows])
    scores = vectors_from_blobs([r[1] for r in rows], engine.store.dim) @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order].tolist(), scores[order]


def assert_exact(engine: Engine, k: int = 8) -> None:
    for text in ("a red pasta dish", "a dog on grass", "sunset"):
        query = engine.encode_query([vectors_query(text)])
        hits = engine.search_vector(query, k=k)
        ids, scores = exact_top(engine, query, k)
        assert np.allclose([h.score for h in hits], scores, atol=1e-5)
        assert [h.id for h in hits] == ids or np.allclose(scores[:-1], scores[1:], atol=1e-6).any()


def vectors_query(text):
    from mmsearch.search.query import TEXT, QueryTerm

    return QueryTerm(TEXT, text)


def saved_kind(engine: Engine) -> str:
    return load_latest(engine.folder).kind


def add_images(folder, start: int, count: int) -> None:
    for i in range(start, start + count):
        make_image(folder / f"grow/img{i}.png", seed=100 + i)


def test_growth_switches_flat_to_ivf_and_retrains(tmp_path, tiny_model, corpus, monkeypatch):
    monkeypatch.setenv("MMSEARCH_FLAT_MAX", "12")
    n0 = IMAGE_COUNT + TEXT_COUNT
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        assert engine.info()["vector_index"]["type"] == FLAT and saved_kind(engine) == FLAT
        add_images(corpus, 0, 4)
        engine.add([corpus])
        entry = engine.info()["vector_index"]
        assert (entry["type"], entry["requested"], entry["trained_for"], entry["items"]) == (IVF_SQ8, "auto", n0 + 4, n0 + 4)
        assert saved_kind(engine) == IVF_SQ8
        assert_exact(engine)

        monkeypatch.setattr(vectors_mod, "REGROW", 1.2)  # small growth now counts as "well past"
        add_images(corpus, 4, 4)
        engine.add([corpus])
        assert engine.info()["vector_index"]["trained_for"] == n0 + 8
        assert_exact(engine)

    monkeypatch.setenv("MMSEARCH_FLAT_MAX", "100")  # far above: back to exact search
    with open_engine(tmp_path, tiny_model) as engine:  # settings are read when an engine is made
        engine.add([corpus])
        assert engine.info()["vector_index"]["type"] == FLAT and saved_kind(engine) == FLAT


def test_ivf_stays_exact_after_adds_and_deletes(tmp_path, tiny_model, corpus, monkeypatch):
    monkeypatch.setenv("MMSEARCH_NLIST", "4")
    monkeypatch.setenv("MMSEARCH_NPROBE", "1")  # one cell: search must probe more to find k
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus], index_type=IVF_SQ8)
        add_images(corpus, 0, 30)
        engine.add([corpus])
        assert saved_kind(engine) == IVF_SQ8 and engine.info()["vector_index"]["nlist"] == 4
        assert_exact(engine, k=12)
        shutil.rmtree(corpus / "sub")
        for i in range(0, 30, 3):
            (corpus / f"grow/img{i}.png").unlink()
        make_image(corpus / "a.jpg", seed=777)  # changed: removed and re-added
        engine.add([corpus])
        assert_exact(engine, k=12)
        assert check_folder(engine.folder).problems == []
    # A fresh reader process sees the same.
    with open_engine(tmp_path, tiny_model) as engine:
        assert_exact(engine, k=12)


def test_reader_trusts_the_file_not_the_manifest(tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus], index_type=IVF_PQ)
    manifest_path = tmp_path / "idx" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["vector_index"] = {"type": "flat"}  # as if killed between saving the file and the manifest
    manifest_path.write_text(json.dumps(manifest))
    with open_engine(tmp_path, tiny_model) as engine:
        assert saved_kind(engine) == IVF_PQ
        assert_exact(engine)
        entry = engine.rebuild_vectors()  # the writer records what is really there
        assert entry["type"] == FLAT and saved_kind(engine) == FLAT


def test_cli_index_type_info_and_check(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "--index", idx, *tiny_model.args, "--index-type", "ivf-pq", "--quiet")
    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    entry = info["vector_index"]
    assert (entry["type"], entry["requested"], entry["code"]) == (IVF_PQ, IVF_PQ, "pq8x3")
    assert entry["nlist"] >= 1 and entry["rerank"] > 0 and entry["trained_for"] == IMAGE_COUNT + TEXT_COUNT
    assert "ivf-pq (nlist" in cli("info", "--index", idx).stdout
    cli("check", "--index", idx)
    hits = json.loads(cli("query", "red pasta dish", "--index", idx, "--json", "-k", "3").stdout)["hits"]
    assert len(hits) == 3

    # No new files, another type: the vectors are still rebuilt (from the database).
    cli("index", "--index", idx, "--index-type", "ivf-sq8", "--quiet")
    entry = json.loads(cli("info", "--index", idx, "--json").stdout)["vector_index"]
    assert (entry["type"], entry["requested"]) == (IVF_SQ8, IVF_SQ8)
    assert load_latest(idx).kind == IVF_SQ8
    cli("check", "--index", idx)

    bad = cli("index", "--index", idx, "--index-type", "hnsw", ok=False)
    assert bad.exit_code != 0 and "unknown vector index type" in bad.stderr


def test_check_detects_a_wrong_ivf_code(tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus], index_type=IVF_SQ8)
        vectors = engine.store.vectors()
        victim = int(vectors.ids()[0])
        vectors.remove([victim])
        vectors.add(np.array([victim]), -np.ones((1, engine.store.dim), np.float32) / np.sqrt(engine.store.dim))
        engine.store.save_vectors()  # a wrong code written by mmsearch itself: its checksum is recorded
        engine.store.update_manifest(vector_index={**engine.store.manifest["vector_index"], "trained_for": 1})
    report = check_folder(tmp_path / "idx")
    assert [p.kind for p in report.problems] == ["vector_mismatch"]
    check_folder(tmp_path / "idx", repair=True)
    assert check_folder(tmp_path / "idx").problems == []
    # The rebuilt index is described by the manifest again (what `info` shows).
    with open_engine(tmp_path, tiny_model) as engine:
        entry = engine.store.manifest["vector_index"]
        rebuilt = load_latest(engine.folder)
        assert (entry["type"], entry["nlist"], entry["trained_for"]) == (IVF_SQ8, rebuilt.nlist, rebuilt.ntotal)


# -- GPU ----------------------------------------------------------------------------------------
class _BrokenGpuIndex:
    def search(self, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")


@pytest.mark.parametrize("failure", ["clone", "search"])
def test_gpu_failure_falls_back_to_cpu(data, monkeypatch, caplog, failure):
    ids = np.arange(len(data), dtype=np.int64)
    index = build(IVF_SQ8, data, ids)
    expected = index.search(data[5], 10)
    calls = []

    def fake_to_gpu(cpu_index):
        calls.append(cpu_index)
        if failure == "clone":
            raise RuntimeError("no CUDA-capable device is detected")
        return _BrokenGpuIndex()

    monkeypatch.setattr(vectors_mod, "gpu_count", lambda: 1)
    monkeypatch.setattr(vectors_mod, "to_gpu", fake_to_gpu)
    with caplog.at_level(logging.WARNING, logger="mmsearch.vectors"):
        got = index.search(data[5], 10)
        again = index.search(data[5], 10)
    assert np.array_equal(got[1], expected[1]) and np.array_equal(again[1], expected[1])
    assert len(calls) == 1  # not retried on every query
    assert "GPU" in caplog.text or "gpu" in caplog.text.lower()


@pytest.mark.parametrize("value, used", [("0", False), ("OFF", False), ("no", False), ("1", True), (None, True)])
def test_gpu_can_be_disabled(data, monkeypatch, value, used):
    from mmsearch.settings import Settings

    calls = []
    monkeypatch.setattr(vectors_mod, "gpu_count", lambda: 1)
    monkeypatch.setattr(vectors_mod, "to_gpu", lambda cpu_index: calls.append(cpu_index) or cpu_index)
    if value is None:
        monkeypatch.delenv("MMSEARCH_FAISS_GPU", raising=False)
    else:
        monkeypatch.setenv("MMSEARCH_FAISS_GPU", value)
    settings = vectors_mod.VectorSettings(gpu=Settings.from_env().faiss_gpu)
    index = vectors_mod.VectorIndex(data.shape[1], settings=settings)
    index.add(np.arange(len(data), dtype=np.int64), data)
    index.search(data[5], 10)
    assert bool(calls) is used
