"""What a new manifest says: when it was created (a timestamp, never the vector layout) and
where the vectors live (``vector_index``), for FAISS and ``--vectors pgvector`` alike."""

from __future__ import annotations

import json
from datetime import datetime

from conftest import run

from mmsearch.storage import IndexStore
from mmsearch.storage import pgvector as pgv


def _manifest(idx) -> dict:
    return json.loads((idx / "manifest.json").read_text())


def _is_timestamp(value) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def test_new_manifest_records_its_creation_time(tmp_path, tiny_model, corpus):
    idx = tmp_path / "idx"
    result = run("index", corpus, "-i", idx, *tiny_model.args, "-q")
    assert result.returncode == 0, result.stderr.decode()
    manifest = _manifest(idx)
    assert _is_timestamp(manifest["created_at"]), manifest["created_at"]
    assert manifest["vector_index"]["type"] != "pgvector"
    info = json.loads(run("info", "-i", idx, "--json").stdout)
    assert _is_timestamp(info["created_at"]) and info["vectors"] == "faiss"


def test_pgvector_manifest_states_its_layout_from_the_start(tmp_path, tiny_model, corpus, pg_url, pg_server):
    from conftest import new_database

    # Created and nothing indexed yet (a first run that stopped there): the manifest already says
    # where the vectors live, and when it was made.
    folder = tmp_path / "created"
    store = IndexStore.create(folder, {"name": "x", "fingerprint": "x"}, 8, db=pg_url, vectors=pgv.PGVECTOR)
    store.close()
    manifest = _manifest(folder)
    assert _is_timestamp(manifest["created_at"]), manifest["created_at"]
    assert manifest["vector_index"]["type"] == pgv.PGVECTOR

    idx = tmp_path / "idx"
    result = run("index", corpus, "-i", idx, "--db", new_database(pg_server), "--vectors", "pgvector",
                 *tiny_model.args, "-q")
    assert result.returncode == 0, result.stderr.decode()
    manifest = _manifest(idx)
    assert _is_timestamp(manifest["created_at"]), manifest["created_at"]
    assert manifest["vector_index"]["type"] == pgv.PGVECTOR
