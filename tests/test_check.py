"""`mmsearch check`: each kind of damage is detected, and `--repair` fixes what it can."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGE_COUNT, PG_SLOW, TEXT_COUNT, make_image
from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder
from mmsearch.storage import writer_lock
from mmsearch.storage.vectors import saved_generations

ITEMS = IMAGE_COUNT + TEXT_COUNT


@pytest.fixture
def built(backend, tmp_path, tiny_model, corpus):
    """``corpus`` indexed, its catalogue in SQLite or PostgreSQL (``backend``)."""
    idx = tmp_path / "idx"
    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([corpus])
    assert check_folder(idx).problems == []
    return idx, corpus


def _encoder(store):
    return Encoder(ModelSpec.from_manifest(store.manifest["model"]), "cpu")


def _vectors_by_path(idx: Path, backend) -> dict[str, np.ndarray]:
    rows = backend.sql(idx, "SELECT i.path || ':' || i.locator, e.vector FROM items i JOIN embeddings e ON e.item_id = i.id")
    return {key: np.frombuffer(bytes(blob), np.float32) for key, blob in rows}


def _kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


def _repair_and_verify(idx: Path, kind: str, items: int = ITEMS) -> None:
    """Detected without repair (and nothing changed), fixed by repair, clean afterwards, queryable."""
    report = check_folder(idx)
    assert kind in _kinds(report) and not report.ok
    assert all(not p.repaired for p in report.problems)
    repaired = check_folder(idx, repair=True, encoder_factory=_encoder)
    assert kind in _kinds(repaired) and repaired.ok, repaired.as_dict()
    after = check_folder(idx)
    assert after.problems == [] and after.items == items, after.as_dict()
    with Engine(idx) as engine:
        assert len(engine.search("a dog", k=100)) == items


def test_missing_and_bad_vectors_are_reembedded(backend, built):
    idx, corpus = built
    original = _vectors_by_path(idx, backend)
    backend.sql(idx, "DELETE FROM embeddings WHERE item_id = (SELECT id FROM items WHERE path LIKE '%a.jpg')")
    backend.sql(idx, f"UPDATE embeddings SET vector = {backend.bytes_literal('00112233')} WHERE item_id = "
                     "(SELECT id FROM items WHERE path LIKE '%pasta.txt')")
    report = check_folder(idx)
    assert {"missing_vector", "bad_vector"} <= _kinds(report)
    _repair_and_verify(idx, "missing_vector")
    restored = _vectors_by_path(idx, backend)
    for key, vector in original.items():
        assert np.allclose(restored[key], vector, atol=1e-5), key


def test_orphan_vector_dropped(backend, built):
    idx, _ = built
    # Raw SQL with foreign keys unchecked, so the embedding outlives its item.
    backend.sql(idx, "DELETE FROM items WHERE path LIKE '%b.png'")
    report = check_folder(idx)
    assert {"orphan_vector", "vector_mismatch"} <= _kinds(report)
    _repair_and_verify(idx, "orphan_vector", items=ITEMS - 1)


# The same steps whatever the catalogue: PostgreSQL's run is with the slow tests.
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_damaged_vectors_file_rebuilt(built):
    idx, _ = built
    (_, path), = saved_generations(idx)
    path.write_bytes(path.read_bytes()[:100])
    _repair_and_verify(idx, "vectors_file")
    assert saved_generations(idx)


# The same steps whatever the catalogue: PostgreSQL's run is with the slow tests.
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_vectors_file_ahead_of_database(built):
    idx, _ = built
    (gen, path), = saved_generations(idx)
    path.rename(idx / f"vectors.g{gen + 5:010d}.faiss")
    _repair_and_verify(idx, "vectors_file")


# The same steps whatever the catalogue: PostgreSQL's run is with the slow tests.
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_vector_differing_from_database_detected(built):
    idx, _ = built
    # A wrong vector saved through the store (checksum recorded), as a bug in mmsearch itself
    # would write it; a file changed behind the manifest's back is caught by its checksum
    # (test_hardening.py).
    with Engine(idx) as engine, writer_lock(idx):
        vectors = engine.store.vectors()
        victim = int(vectors.ids()[0])
        vectors.remove([victim])
        wrong = np.random.default_rng(0).standard_normal((1, vectors.dim)).astype(np.float32)
        vectors.add(np.array([victim], np.int64), wrong / np.linalg.norm(wrong))
        engine.store.save_vectors()
    report = check_folder(idx)
    assert any(p.kind == "vector_mismatch" and "differ" in p.detail for p in report.problems)
    _repair_and_verify(idx, "vector_mismatch")


def test_generation_counter_behind_rows(backend, built):
    idx, _ = built
    backend.sql(idx, "UPDATE meta SET value = '1' WHERE key = 'generation'")
    _repair_and_verify(idx, "generation")


def test_vanished_and_changed_files(backend, built):
    idx, corpus = built
    (corpus / "sub" / "d.bmp").unlink()
    make_image(corpus / "c.webp", seed=1234)
    report = check_folder(idx)
    # Not damage: the index is out of date, and --repair brings it up to date like `index` would.
    assert report.ok and report.problems == [] and report.state == "out_of_date"
    assert {p.kind for p in report.outdated} == {"vanished_file", "changed_file"}
    repaired = check_folder(idx, repair=True, encoder_factory=_encoder)
    assert repaired.state == "repaired" and all(p.repaired for p in repaired.outdated)
    after = check_folder(idx)
    assert after.state == "ok" and after.outdated == [] and after.items == ITEMS - 1
    vectors = _vectors_by_path(idx, backend)
    assert not any("d.bmp" in key for key in vectors)
    # The changed image was re-embedded: a fresh index of the same file agrees.
    with Engine(idx) as engine:
        hit = engine.search(corpus / "c.webp", k=1, include_query=True)[0]
        assert hit.path.endswith("c.webp") and hit.score == pytest.approx(1.0, abs=1e-4)


# The same steps whatever the catalogue: PostgreSQL's run is with the slow tests.
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_stray_temp_files_removed(built):
    idx, _ = built
    (idx / ".vectors.g0000000099.faiss.x1y2.tmp").write_bytes(b"partial")
    (idx / ".manifest.json.abc.tmp").write_text("{")
    _repair_and_verify(idx, "stray_temp")
    assert not list(idx.glob("*.tmp")) and not list(idx.glob(".*.tmp"))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # damages the SQLite file itself
@pytest.mark.parametrize("damage, kind", [
    ("newer-schema", "schema"), ("database", "database"),
])
def test_unrepairable_damage_reported(built, cli, damage, kind):
    idx, _ = built
    manifest = idx / "manifest.json"
    if damage == "newer-schema":
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), schema_version=99)))
    else:
        for suffix in ("-wal", "-shm"):
            (idx / f"mmsearch.db{suffix}").unlink(missing_ok=True)
        db = idx / "mmsearch.db"
        data = bytearray(db.read_bytes())
        data[100:len(data)] = os.urandom(len(data) - 100)
        db.write_bytes(bytes(data))
    result = cli("check", "-i", idx, "--json", "--repair", ok=False)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and [p["kind"] for p in doc["problems"]] == [kind]
    assert doc["problems"][0]["repairable"] is False


# The same steps whatever the catalogue: PostgreSQL's run is with the slow tests.
@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)
def test_check_cli_exit_codes_and_text(backend, built, cli, tiny_model):
    idx, corpus = built
    result = cli("check", "-i", idx)
    assert "ok" in result.stdout and result.exit_code == 0
    (corpus / "a.jpg").unlink()
    result = cli("check", "-i", idx)  # a deleted photo: out of date, not damaged (exit 0)
    assert "vanished_file" in result.stderr and "a.jpg" in result.stderr
    assert "out of date (1 vanished, 0 changed since the last index run" in result.stdout
    backend.sql(idx, "DELETE FROM embeddings WHERE item_id = (SELECT min(id) FROM items)")
    result = cli("check", "-i", idx, ok=False)
    assert result.exit_code == 1 and "missing_vector" in result.stderr and "damaged" in result.stdout
    result = cli("check", "-i", idx, "--repair", "--json")
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["items"] == ITEMS - 1
    assert cli("check", "-i", idx, "--json").stdout and json.loads(cli("check", "-i", idx, "--json").stdout)["problems"] == []
    missing = cli("check", "-i", idx.parent / "absent", ok=False)
    if backend.db is None:
        assert missing.exit_code == 1 and "index not found" in missing.stderr
    else:  # a new folder for a shared catalogue is this machine's copy of it, checked like any
        assert missing.exit_code == 0 and f"({ITEMS - 1} items, 0 problem(s))" in missing.stdout
