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
