"""Concurrency: one writer at a time; queries during an index run always see a whole committed state."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PG_SLOW, PGVECTOR, make_image
from mmsearch import Engine
from test_crash_safety import ENV, _generation, assert_consistent, build_corpus, index_cmd


def _start_writer(corpus: Path, idx: Path, tiny_model, backend, *extra: str, after: int = 0) -> subprocess.Popen:
    """An index run in a new process, returned once it has committed twice (past generation
    ``after``)."""
    proc = subprocess.Popen(index_cmd(corpus, idx, tiny_model, "--batch-size", "2", *extra), env=backend.env(ENV),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _generation(idx, backend) < after + 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"indexing ended before the test could overlap it: {proc.communicate()}"
    return proc


# (images, JSONL lines): a small corpus by default, the long one with -m slow.
SIZES = [pytest.param((16, 80), id="small"), pytest.param((40, 300), id="long", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_second_writer_fails_clearly_or_waits(backend, tmp_path, tiny_model, cli, size):
    corpus = build_corpus(tmp_path / "corpus", *size)
    total = sum(size) + 1
    idx = tmp_path / "idx"
    writer = _start_writer(corpus, idx, tiny_model, backend)
    result = cli("index", corpus, "-i", idx, *tiny_model.args, "-q", ok=False)
    running = writer.poll() is None
    assert result.exit_code == 1
    assert "another mmsearch process is writing" in result.stderr and "--wait" in result.stderr
    assert running, "the first run ended before the second tried: the refusal proves nothing"
    # With --wait the second run queues behind the first and then finds nothing left to do.
    result = cli("index", corpus, "-i", idx, *tiny_model.args, "--json", "--wait", "120")
    assert writer.wait(timeout=120) == 0, writer.stderr.read()
    report = json.loads(result.stdout)
    assert report["added"] == 0 and report["unchanged"] == total
    assert assert_consistent(idx) == total


@pytest.mark.parametrize("backend", ["sqlite", "postgres", PGVECTOR], indirect=True)
@pytest.mark.parametrize("size", SIZES)
def test_queries_during_indexing_see_committed_states(backend, tmp_path, tiny_model, size):
    corpus = build_corpus(tmp_path / "corpus", *size)
    total = sum(size) + 1 + 1  # the corpus and the seed image
    idx = tmp_path / "idx"
    # The reader is ready (index open, query encoded) before the writer starts, so its queries
    # overlap the run however fast the writer is and however loaded the machine.
    make_image(tmp_path / "seed" / "seed.png", seed=1)
    subprocess.run(index_cmd(tmp_path / "seed", idx, tiny_model, *backend.index_args), env=backend.env(ENV),
                   check=True, capture_output=True)
    seen_sizes: list[int] = []
    rounds = 0
    with Engine(idx) as engine:
        query = engine.encode_query(_terms("a cat"))
        store = engine.store
        assert len(engine.search("a cat", k=8)) == 1
        writer = _start_writer(corpus, idx, tiny_model, backend, *backend.index_args, after=_generation(idx, backend))
        while writer.poll() is None or rounds < 3:
            rounds += 1
            # 1. The public path: every hit is a stored row and its score is the cosine with that
            #    row's vector in the database (so FAISS and the rows belong to one state).
            hits = engine.search("a cat", k=8)
            assert hits, "no hits from a non-empty index"
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
            assert all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))
            with store.read() as r:
                rows = dict(r.embeddings([h.id for h in hits]))
            for hit in hits:
                assert hit.id in rows, f"hit {hit.id} has no row"
                assert abs(float(np.frombuffer(rows[hit.id], np.float32) @ query) - hit.score) < 1e-4
            # 2. One snapshot: vectors caught up to it hold exactly its rows, and an exhaustive
            #    search ranks all of them.
            with store.snapshot() as snap:
                vectors = snap.vectors
                db_ids = snap.reader.item_ids()
                assert set(vectors.ids().tolist()) == db_ids
                _, ids = vectors.search(query, len(db_ids))
                assert set(ids.tolist()) == db_ids
            seen_sizes.append(len(db_ids))
    assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert seen_sizes == sorted(seen_sizes), "a reader went back to an older state"
    assert len(set(seen_sizes)) >= 3, f"queries did not overlap the index run: {seen_sizes}"
    assert seen_sizes[-1] == total and assert_consistent(idx) == total


def _terms(text: str):
    from mmsearch import parse_query

    return parse_query([text])
