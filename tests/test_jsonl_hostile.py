"""Hostile JSON Lines: a line nested too deeply to parse is skipped with its number and the
reason, and a record's ``image`` is read only where the library rule allows (inside the indexed
folders, or where --follow-links led). Real files, real ``python -m mmsearch`` processes."""

from __future__ import annotations

import json
import os

from conftest import make_image, run


def _index(corpus, idx, tiny_model, *extra):
    result = run("index", corpus, "-i", idx, *tiny_model.args, "--json", *extra)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout), result.stderr.decode()


def _skips(report: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped_files"]}


def test_deeply_nested_lines_are_skipped_and_the_run_goes_on(tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [
        json.dumps({"text": "a black cat on a sofa"}),
        "[" * 100_000 + "]" * 100_000,  # arrays 100,000 deep
        '{"a":' * 50_000 + "1" + "}" * 50_000,  # objects 50,000 deep
        json.dumps({"text": "deep but loadable", "meta": json.loads("[" * 500 + "]" * 500)}),
        json.dumps({"text": "a dog on green grass"}),
    ]
    (corpus / "hostile.jsonl").write_text("\n".join(lines) + "\n")
    (corpus / "note.txt").write_text("a note about pasta")
    make_image(corpus / "photo.png", seed=3)

    report, stderr = _index(corpus, tmp_path / "idx", tiny_model)
    skips = _skips(report)
    path = str(corpus / "hostile.jsonl")
    for number in (2, 3, 4):
        assert "nested" in skips[f"{path}:{number}"], skips
        assert f"hostile.jsonl:{number}" in stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr
    # Everything else was indexed: the two good lines, the note and the photo.
    assert report["added"] == 4, report
    result = run("query", "a black cat", "-i", tmp_path / "idx", "--json", "-k", "10")
    assert result.returncode == 0
    assert {h["path"] for h in json.loads(result.stdout)["hits"]} >= {path, str(corpus / "note.txt")}


def _library_with_outside_images(tmp_path):
    """A library whose JSONL names images inside it, and outside it in every way there is."""
    outside = tmp_path / "outside"
    make_image(outside / "secret.png", seed=7)
    corpus = tmp_path / "corpus"
    make_image(corpus / "pics" / "in.png", seed=1)
    os.symlink(outside / "secret.png", corpus / "pics" / "link.png")  # a symlink leading outside
    records = [
        {"text": "a picture inside the library", "image": "pics/in.png"},
        {"text": "absolute path", "image": str(outside / "secret.png")},
        {"text": "dot dot", "image": "../outside/secret.png"},
        {"text": "through a symlink", "image": "pics/link.png"},
        {"text": "passwords", "image": "/etc/passwd"},
        {"text": "environment", "image": "/proc/self/environ"},
        {"image": "../../../../../../../../etc/hostname"},
    ]
    (corpus / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return corpus, outside


def _image_rows(idx) -> dict[str, str]:
    """locator -> the image name the row's metadata holds, for every JSONL image part."""
    import sqlite3

    with sqlite3.connect(idx / "mmsearch.db") as conn:
        rows = conn.execute("SELECT locator, meta FROM items WHERE locator LIKE '%:image'").fetchall()
    return {locator: json.loads(meta)["image"] for locator, meta in rows}


def test_record_images_outside_the_library_are_skipped_and_named(tmp_path, tiny_model):
    corpus, outside = _library_with_outside_images(tmp_path)
    idx = tmp_path / "idx"
    report, stderr = _index(corpus, idx, tiny_model)
    skips = _skips(report)
    jsonl = str(corpus / "docs.jsonl")
    for line in range(2, 8):
        assert "outside the indexed folders" in skips[f"{jsonl}:{line}"], skips
        assert f"docs.jsonl:{line}" in stderr
        # --follow-links is named only where it would help: a symlink inside leading out.
        assert ("--follow-links" in skips[f"{jsonl}:{line}"]) == (line == 4)
    assert _image_rows(idx) == {"1:image": "pics/in.png"}
    # No search answers with anything learnt from outside: the only image is the inside one (the
    # texts keep their lines' fields, as written).
    result = run("query", "a picture", "-i", idx, "--json", "-k", "100")
    hits = json.loads(result.stdout)["hits"]
    # (the record's image is the indexed file pics/in.png: one picture, one hit, naming its record)
    images = [h for h in hits if h["modality"] == "image"]
    assert len(hits) == 7 and [(h["path"], h["locator"]) for h in images] == [(str(corpus / "pics" / "in.png"), "")], hits
    assert images[0]["record"]["path"] == jsonl and str(images[0]["record"]["line"]) == "1", images
    result = run("check", "-i", idx, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["state"] == "ok"

    # With --follow-links the symlink's target belongs to the library: that record's image is
    # read; paths that name places outside directly still are not.
    followed = tmp_path / "followed"
    report, _ = _index(corpus, followed, tiny_model, "--follow-links")
    assert _image_rows(followed) == {"1:image": "pics/in.png", "4:image": "pics/link.png"}
    assert f"{jsonl}:4" not in _skips(report) and f"{jsonl}:2" in _skips(report)

    # Indexed again without --follow-links, the JSONL file unchanged: its row for the symlinked
    # image now breaks the rule. check names it (damage, exit 1); --repair removes it.
    _index(corpus, followed, tiny_model)
    result = run("check", "-i", followed, "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["state"] == "damaged", doc
    problem, = doc["problems"]
    assert problem["kind"] == "outside_library" and problem["examples"] == [f"{jsonl}:4 -> pics/link.png"]
    result = run("check", "-i", followed, "--repair", "--json")
    assert result.returncode == 0, result.stdout
    assert _image_rows(followed) == {"1:image": "pics/in.png"}
    result = run("check", "-i", followed, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["state"] == "ok"
