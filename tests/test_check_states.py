"""`mmsearch check` on what a hostile week leaves: damaged vector rows are named and repaired
while queries go on from the good rows; a repair converges; files that changed or vanished since
the last run make an index *out of date* (exit 0), never *damaged*. Real files and real
``python -m mmsearch`` processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import IMAGE_COUNT, TEXT_COUNT, run

ITEMS = IMAGE_COUNT + TEXT_COUNT


def _index(corpus: Path, idx: Path, tiny_model) -> None:
    result = run("index", corpus, "-i", idx, *tiny_model.args, "-q")
    assert result.returncode == 0, result.stderr.decode()


def _sql(idx: Path, statement: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(idx / "mmsearch.db", timeout=5) as conn:
        return conn.execute(statement, params).fetchall()


def _check(idx: Path, *extra: str) -> tuple[int, dict]:
    result = run("check", "-i", idx, "--json", *extra)
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def _hits(idx: Path, query: str = "a black cat") -> list[dict]:
    result = run("query", query, "-i", idx, "--json", "-k", "100")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)["hits"]


def _damage_line_vector(idx: Path, line: str, blob: bytes) -> int:
    """Write ``blob`` as the stored vector of captions.jsonl's line ``line``; its item id."""
    (item_id,), = _sql(idx, "SELECT id FROM items WHERE path LIKE '%captions.jsonl' AND locator = ?", (line,))
    _sql(idx, "UPDATE embeddings SET vector = ? WHERE item_id = ?", (blob, item_id))
    return item_id


def test_wrong_size_vector_without_vectors_file(tmp_path, tiny_model, corpus):
    idx = tmp_path / "idx"
    _index(corpus, idx, tiny_model)
    bad = _damage_line_vector(idx, "1", b"\x00\x11\x22\x33")
    for path in idx.glob("vectors.g*.faiss"):
        path.unlink()

    # check names the bad row (its item, file and line) and exits 1.
    code, doc = _check(idx)
    assert code == 1 and doc["ok"] is False and doc["state"] == "damaged"
    problem, = [p for p in doc["problems"] if p["kind"] == "bad_vector"]
    assert problem["examples"] == [f"item {bad}: {corpus / 'captions.jsonl'}:1"]
    assert [p["kind"] for p in doc["problems"]] == ["bad_vector"]  # nothing else is blamed

    # Queries answer from the good rows; an index run goes on.
    assert {h["id"] for h in _hits(idx)} == {i for (i,) in _sql(idx, "SELECT id FROM items")} - {bad}
    result = run("index", "-i", idx, "--json")
    assert result.returncode == 0, result.stderr.decode()

    # --repair re-embeds the row from its file; afterwards check says ok and every item answers.
    code, doc = _check(idx, "--repair")
    assert code == 0 and doc["ok"] and [p["kind"] for p in doc["problems"]] == ["bad_vector"]
    code, doc = _check(idx)
    assert code == 0 and doc["problems"] == [] and doc["state"] == "ok", doc
    assert len(_hits(idx)) == ITEMS


def test_repair_of_a_jsonl_record_converges(tmp_path, tiny_model, corpus):
    idx = tmp_path / "idx"
    _index(corpus, idx, tiny_model)
    _damage_line_vector(idx, "2", b"\x00\x00\xc0\x7f" * 32)  # NaNs, the right size
    code, doc = _check(idx, "--repair")
    assert code == 0 and [p["kind"] for p in doc["problems"]] == ["bad_vector"]
    # The repaired line's file is as it was: the next check finds nothing, the next repair
    # repairs nothing, and the row keeps the file's real mtime (it is not left "unfinished").
    for extra in ((), ("--repair",)):
        code, doc = _check(idx, *extra)
        assert code == 0 and doc["problems"] == [] and doc["state"] == "ok", doc
    mtimes = {m for (m,) in _sql(idx, "SELECT mtime_ns FROM items WHERE path LIKE '%captions.jsonl'")}
    assert mtimes == {(corpus / "captions.jsonl").stat().st_mtime_ns}


def test_deleted_photos_make_the_index_out_of_date_not_damaged(tmp_path, tiny_model, corpus):
    idx = tmp_path / "idx"
    _index(corpus, idx, tiny_model)
    (corpus / "a.jpg").unlink()
    (corpus / "sub" / "d.bmp").unlink()
    (corpus / "notes" / "pasta.txt").write_text("a bowl of green soup")  # edited since the run

    result = run("check", "-i", idx)
    assert result.returncode == 0, result.stderr.decode()
    assert ("out of date (2 vanished, 1 changed since the last index run; `mmsearch index` updates it)"
            in result.stdout.decode())
    assert "damaged" not in result.stdout.decode() and "--repair" not in result.stderr.decode()
    code, doc = _check(idx)
    assert code == 0 and doc["ok"] and doc["state"] == "out_of_date" and doc["problems"] == []
    assert {e["kind"]: e["files"] for e in doc["out_of_date"]} == {"vanished_file": 2, "changed_file": 1}

    # `mmsearch index` brings it up to date.
    result = run("index", "-i", idx, "-q")
    assert result.returncode == 0, result.stderr.decode()
    code, doc = _check(idx)
    assert code == 0 and doc["state"] == "ok" and doc["out_of_date"] == [] and doc["items"] == ITEMS - 2


def test_killed_first_run_blames_no_file(tmp_path, tiny_model):
    import os
    import signal
    import subprocess
    import sys

    from conftest import ENV, make_image, wait_for_items

    corpus = tmp_path / "corpus"
    for i in range(4):
        make_image(corpus / f"p{i}.png", seed=i)
    lines = 3000
    with open(corpus / "cat.jsonl", "w") as fh:
        for i in range(lines):
            fh.write(json.dumps({"text": f"caption {i} of a {['cat', 'dog', 'boat'][i % 3]}"}) + "\n")
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--batch-size", "4", "-q"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = wait_for_items(idx, proc, 40)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert 0 < got < lines, "the run was not killed while writing the JSONL file's lines"
    before = os.stat(corpus / "cat.jsonl").st_mtime_ns

    code, doc = _check(idx)
    assert os.stat(corpus / "cat.jsonl").st_mtime_ns == before  # the file never changed
    assert code == 0 and doc["ok"] and doc["problems"] == [], doc
    assert doc["state"] == "out_of_date"
    entry, = doc["out_of_date"]
    assert entry["kind"] == "unfinished_file" and entry["examples"] == [str(corpus / "cat.jsonl")]
    result = run("check", "-i", idx)
    assert "1 not finished by an interrupted run" in result.stdout.decode() and result.returncode == 0

    result = run("index", "-i", idx, "-q")  # resumes the first run
    assert result.returncode == 0, result.stderr.decode()
    code, doc = _check(idx)
    assert code == 0 and doc["state"] == "ok" and doc["items"] == 4 + lines, doc
