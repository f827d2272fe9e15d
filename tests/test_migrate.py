"""`mmsearch migrate`: an index copied SQLite -> PostgreSQL -> SQLite keeps every row, id and
vector (nothing re-encoded), answers the same, passes `check`, and never overwrites a catalogue."""

from __future__ import annotations

import json

import numpy as np
from conftest import IMAGE_COUNT, TEXT_COUNT, Backend, make_image

from mmsearch import Engine
from mmsearch.settings import Settings

ITEMS = IMAGE_COUNT + TEXT_COUNT
SQL = "SELECT i.id, i.path, i.locator, i.content_hash, i.meta, e.vector FROM items i JOIN embeddings e ON e.item_id = i.id"


def _rows(idx, backend: Backend) -> dict:
    rows = {}
    for item_id, path, locator, content_hash, meta, vector in backend.sql(idx, SQL):
        meta = json.loads(meta) if isinstance(meta, str) else meta
        rows[item_id] = (path, locator, content_hash, meta, np.frombuffer(bytes(vector), np.float32).tobytes())
    return rows


def test_sqlite_to_postgres_and_back(tmp_path, tiny_model, corpus, cli, pg_url, monkeypatch):
    monkeypatch.delenv("MMSEARCH_DB", raising=False)
    sqlite_idx, pg_idx, back = tmp_path / "sqlite", tmp_path / "pg", tmp_path / "back"
    cli("index", corpus, "-i", sqlite_idx, *tiny_model.args, "-q")
    before = _rows(sqlite_idx, Backend("sqlite"))
    manifest = (sqlite_idx / "manifest.json").read_text()

    result = cli("migrate", "-i", sqlite_idx, "--to", pg_url, "--to-index", pg_idx, "--json")
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["rows"] == {"roots": 1, "items": ITEMS, "embeddings": ITEMS}
    assert _rows(pg_idx, Backend("postgres", pg_url)) == before  # ids, paths, metadata, vectors: the same
    assert (sqlite_idx / "manifest.json").read_text() == manifest  # the source is untouched
    assert not (pg_idx / "mmsearch.db").exists()

    # ... and back into a new SQLite folder.
    result = cli("migrate", "--db", pg_url, "-i", pg_idx, "--to", back, "--json")
    assert json.loads(result.stdout)["ok"]
    assert _rows(back, Backend("sqlite")) == before

    # The copies answer like the original, and the PostgreSQL one carries on indexing: a new
    # file gets a fresh id after the copied ones, nothing else is re-encoded.
    expected = json.loads(cli("query", "a black cat", "-i", sqlite_idx, "--json", "-k", "5").stdout)
    for idx, db in ((pg_idx, pg_url), (back, None)):
        args = ("--db", db) if db else ()
        got = json.loads(cli("query", "a black cat", "-i", idx, *args, "--json", "-k", "5").stdout)
        assert [(h["id"], round(h["score"], 5)) for h in got["hits"]] == \
            [(h["id"], round(h["score"], 5)) for h in expected["hits"]]
    make_image(corpus / "later.png", seed=4242)
    report = json.loads(cli("index", "-i", pg_idx, "--json").stdout)
    assert (report["added"], report["updated"], report["reused"], report["unchanged"]) == (1, 0, 0, ITEMS)
    with Engine(pg_idx, settings=Settings.from_env().but(db=pg_url)) as engine:
        new = engine.search(corpus / "later.png", k=1, include_query=True)[0]
        assert new.path.endswith("later.png") and new.id > max(before)
    assert cli("check", "-i", pg_idx).exit_code == 0

    # A database that already holds an index is never written over.
    result = cli("migrate", "-i", sqlite_idx, "--to", pg_url, "--to-index", tmp_path / "again", ok=False)
    assert result.exit_code == 1 and "already holds an mmsearch index" in result.stderr
    assert not (tmp_path / "again").exists()
