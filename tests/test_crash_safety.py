"""Crashes: SIGKILL at random points, Ctrl-C, full disk and read-only index folders never lose or corrupt an index."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PG_SLOW, PGVECTOR, Backend, make_image, wait_for_items
from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.errors import IndexWriteError
from mmsearch.settings import Settings

ENV = dict(os.environ, HF_HUB_OFFLINE="1", MMSEARCH_CHECKPOINT_SECONDS="0.05")


def build_corpus(root: Path, images: int, lines: int) -> Path:
    for i in range(images):
        make_image(root / f"d{i % 4}" / f"img{i:03d}.{'jpg' if i % 2 else 'png'}", seed=1000 + i, size=(64, 48))
    with open(root / "captions.jsonl", "w") as fh:
        for i in range(lines):
            fh.write(json.dumps({"text": f"caption number {i} about a {['cat', 'dog', 'boat', 'tree'][i % 4]}"}) + "\n")
    (root / "note.txt").write_text("a note about pasta")
    return root


def index_cmd(corpus: Path, idx: Path, tiny_model, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
            "--batch-size", "4", "--workers", "2", "-q", *extra]


def snapshot(idx: Path, backend=None) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    """(path, locator) -> (content hash, vector) of every item, read straight from the database
    (SQLite, or ``backend``'s PostgreSQL)."""
    rows = (backend or Backend("sqlite")).sql(
        idx, "SELECT i.path, i.locator, i.content_hash, e.vector FROM items i JOIN embeddings e ON e.item_id = i.id")
    return {(p, loc): (h, np.frombuffer(bytes(v), np.float32)) for p, loc, h, v in rows}


# Left by a kill and harmless: a temporary file (the next writer deletes it), and files on disk
# that changed after the killed run listed them (the next run indexes them).
AFTER_KILL = ("stray_temp", "changed_file", "vanished_file")


def assert_consistent(idx: Path, allow: tuple[str, ...] = ()) -> int:
    """The index opens, answers a query, and its rows and vectors agree exactly; returns item count."""
    report = check_folder(idx)
    assert all(p.kind in allow for p in report.problems), report.as_dict()
    with Engine(idx) as engine:
        hits = engine.search("a photo of a cat", k=5)
        assert len(hits) == min(5, report.items)
        assert all(engine.get(h.id) is not None for h in hits)
    return report.items


def assert_same_state(idx: Path, reference: dict, backend=None) -> None:
    state = snapshot(idx, backend)
    assert set(state) == set(reference)
    for key, (content_hash, vector) in reference.items():
        assert state[key][0] == content_hash
        assert np.allclose(state[key][1], vector, atol=1e-4), key


def mutate(corpus: Path, rng: random.Random, round_: int) -> None:
    """Give the next run work to do: change, delete and add files, rewrite some JSONL lines."""
    images = sorted(corpus.glob("d*/*.*"))
    for path in rng.sample(images, min(8, len(images))):
        make_image(path, seed=rng.randrange(10**6), size=(64, 48))
    for path in rng.sample(images, 2):
        path.unlink(missing_ok=True)
    for i in range(3):
        make_image(corpus / "d9" / f"r{round_}_{i}.png", seed=rng.randrange(10**6), size=(64, 48))
    lines = (corpus / "captions.jsonl").read_text().splitlines()
    for i in rng.sample(range(len(lines)), min(10, len(lines))):
        lines[i] = json.dumps({"text": f"rewritten caption {rng.randrange(10**6)}"})
    (corpus / "captions.jsonl").write_text("\n".join(lines) + "\n")


def _kill_loop(tmp_path, tiny_model, backend: Backend, kills: int, images: int, lines: int, seed: int) -> None:
    corpus = build_corpus(tmp_path / "corpus", images, lines)
    idx = tmp_path / "idx"
    rng = random.Random(seed)
    killed = 0
    for round_ in range(kills):
        if round_:
            mutate(corpus, rng, round_)
        gen_before = _generation(idx, backend)
        proc = subprocess.Popen(index_cmd(corpus, idx, tiny_model, *backend.index_args), env=backend.env(ENV),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ % 3 == 0:
            time.sleep(rng.uniform(0.05, 2.5))  # anywhere, start-up included
        else:  # somewhere in the writing phase: after the first commit of this run
            while _generation(idx, backend) == gen_before and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=120)
        if (idx / "manifest.json").exists():
            assert_consistent(idx, allow=AFTER_KILL)
            if backend.name == "pgvector":  # the vectors are in the database: never a file
                assert not list(idx.glob("vectors.g*"))
        else:  # killed before the index existed: no vectors file without a manifest
            assert not list(idx.glob("vectors.g*.faiss")) if idx.exists() else True
    assert killed >= kills // 2, f"only {killed} of {kills} runs were still going when killed"
    # Finish the work, then compare with one uninterrupted run over the final corpus.
    with open_engine(idx, tiny_model) as engine:
        engine.add([corpus])
    with open_engine(tmp_path / "ref", tiny_model, sqlite=True) as engine:  # the reference: never killed
        engine.add([corpus])
    reference = snapshot(tmp_path / "ref")
    assert assert_consistent(idx) == len(reference)
    assert_same_state(idx, reference, backend)
    with open_engine(idx, tiny_model) as engine:  # converged: one more run finds nothing to do
        report = engine.add([corpus])
    assert (report.added, report.updated, report.removed, report.reused) == (0, 0, 0, 0)


def open_engine(idx: Path, tiny_model, sqlite: bool = False) -> Engine:
    """An engine on ``idx`` (``sqlite``: with its own SQLite catalogue whatever MMSEARCH_DB says)."""
    settings = Settings.from_env().but(db=None) if sqlite else None
    return Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint), batch_size=4,
                  settings=settings)


@pytest.mark.parametrize("backend", [*PG_SLOW, PGVECTOR], indirect=True)
def test_sigkill_loop_consistent_and_converges(backend, tmp_path, tiny_model):
    _kill_loop(tmp_path, tiny_model, backend, kills=4, images=30, lines=60, seed=1)


@pytest.mark.slow
def test_sigkill_loop_long(backend, tmp_path, tiny_model):
    _kill_loop(tmp_path, tiny_model, backend, kills=40, images=300, lines=600, seed=2)


def _generation(idx: Path, backend=None) -> int:
    if backend is not None and backend.db is not None:
        try:
            return int(backend.sql(idx, "SELECT value FROM meta WHERE key = 'generation'")[0][0])
        except Exception:  # noqa: BLE001 - not created yet
            return 0
    try:
        with sqlite3.connect(f"file:{idx / 'mmsearch.db'}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    except (sqlite3.Error, TypeError):
        return 0


def test_sigint_saves_work_so_far(tmp_path, tiny_model):
    corpus = build_corpus(tmp_path / "corpus", 30, 40)
    idx = tmp_path / "idx"
    env = dict(ENV, MMSEARCH_CHECKPOINT_SECONDS="3600")  # only the interrupt handler saves vectors
    proc = subprocess.Popen(index_cmd(corpus, idx, tiny_model), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _generation(idx) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"indexing finished before it could be interrupted: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    # Lines of a JSONL file written before the interrupt are kept, the file marked unfinished.
    items = assert_consistent(idx, allow=("changed_file",))
    assert 0 < items < 71
    with Engine(idx) as engine:
        info = engine.info()
    assert info["vectors_up_to_date"], info  # the FAISS file was saved at the last committed generation
    report = json.loads(subprocess.run(index_cmd(corpus, idx, tiny_model, "--json"), check=True, env=ENV,
                                       capture_output=True, text=True, timeout=300).stdout)
    assert report["added"] + items == 71 and assert_consistent(idx) == 71, report
    assert report["updated"] == 0  # nothing saved before the interrupt was embedded again


# -- full disk and read-only folders -------------------------------------------------------------

@pytest.fixture
def indexed(tmp_path, tiny_model):
    """An index of a small corpus, plus new files waiting to be added."""
    corpus = build_corpus(tmp_path / "corpus", 8, 4)
    idx = tmp_path / "idx"
    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([corpus])
    for i in range(6):
        make_image(corpus / "new" / f"n{i}.png", seed=5000 + i)
    return corpus, idx


def _faiss_files(idx: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in idx.glob("vectors.g*.faiss")}


def test_disk_full_when_saving_vectors(indexed, monkeypatch, cli):
    """ENOSPC injected at the rename that publishes a new vectors file (the last write step)."""
    corpus, idx = indexed
    before_files, before = _faiss_files(idx), snapshot(idx)

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr("mmsearch.fsutil.os.replace", no_space)
    result = cli("index", corpus, "-i", idx, "-q", ok=False)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error:") and "No space left on device" in line
    monkeypatch.undo()
    # The previous vectors file is untouched, no temporary file is left, and the index is
    # consistent (the database committed the new rows; readers catch up from it).
    assert _faiss_files(idx) == before_files
    assert not [p for p in idx.iterdir() if p.name.endswith(".tmp")]
    assert assert_consistent(idx) == len(before) + 6
    assert set(before) <= set(snapshot(idx))


def _with_pragma(monkeypatch, sql: str) -> None:
    import mmsearch.storage.sqlite as db

    original = db._set_pragmas

    def patched(dbapi_connection, record):
        original(dbapi_connection, record)
        cursor = dbapi_connection.cursor()
        cursor.execute(sql)
        cursor.close()

    monkeypatch.setattr(db, "_set_pragmas", patched)


def test_database_full_keeps_previous_index(indexed, monkeypatch, tiny_model):
    """SQLite itself reports 'database or disk is full' (max_page_count caps the file at its size)."""
    corpus, idx = indexed
    before = snapshot(idx)
    with sqlite3.connect(idx / "mmsearch.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    _with_pragma(monkeypatch, f"PRAGMA max_page_count={pages}")
    for i in range(200):  # enough new rows to need new pages
        make_image(corpus / "more" / f"m{i}.png", seed=7000 + i, size=(32, 32))
    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        with pytest.raises(IndexWriteError, match="full"):
            engine.add([corpus])
    monkeypatch.undo()
    # Batches committed before the disk filled are kept whole; nothing earlier is lost.
    after = snapshot(idx)
    assert set(before) <= set(after) and len(after) < len(before) + 206
    assert assert_consistent(idx) == len(after)
    assert _faiss_files(idx)  # a complete vectors file is still there


def test_read_only_database_keeps_previous_index(indexed, monkeypatch, tiny_model, cli):
    """The database opened read-only (as in a read-only folder): SQLite refuses the first write."""
    corpus, idx = indexed
    before, before_files = snapshot(idx), _faiss_files(idx)
    _with_pragma(monkeypatch, "PRAGMA query_only=ON")
    result = cli("index", corpus, "-i", idx, "-q", ok=False)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "cannot write to the index" in line and "Traceback" not in line
    monkeypatch.undo()
    assert snapshot(idx).keys() == before.keys() and _faiss_files(idx) == before_files
    assert assert_consistent(idx) == len(before)


def test_first_ctrl_c_says_it_stops_after_the_batch(tmp_path, tiny_model):
    corpus = tmp_path / "c"
    for i in range(30):
        make_image(corpus / f"i{i:02d}.png", seed=300 + i, size=(64, 48))
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--batch-size", "1", "--workers", "1"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert wait_for_items(idx, proc, 2) < 30
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "stopping after the current batch (Ctrl-C again to stop now)" in err.decode()
    assert proc.returncode == 130
