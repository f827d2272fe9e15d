"""The mmsearch command line, the README example, and the query parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT, make_image
from mmsearch import QueryError, QueryTerm, parse_query

README = Path(__file__).resolve().parent.parent / "README.md"
HIT_FIELDS = {"rank", "score", "id", "modality", "path", "text"}


def test_index_query_info_json(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    result = cli("index", corpus, "--index", idx, *tiny_model.args, "--quiet")
    assert f"{IMAGE_COUNT + TEXT_COUNT} added, 0 updated, 0 reused, 0 removed, 0 skipped" in result.stdout

    result = cli("query", "a black cat sleeping on a sofa", "--index", idx, "--json", "-k", "3")
    doc = json.loads(result.stdout)
    assert len(doc["hits"]) == 3
    assert all(HIT_FIELDS <= set(hit) for hit in doc["hits"])
    top = doc["hits"][0]
    assert top["text"] == "a black cat sleeping on a sofa" and top["modality"] == "text" and top["rank"] == 1
    assert top["score"] == pytest.approx(1.0, abs=1e-4)

    result = cli("query", corpus / "b.png", "--index", idx, "--json", "--type", "image", "--include-self")
    hits = json.loads(result.stdout)["hits"]
    assert hits[0]["path"] == str(corpus / "b.png") and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {h["modality"] for h in hits} == {"image"} and len(hits) == IMAGE_COUNT

    result = cli("query", "pasta", "--index", idx, "--paths", "--type", "text")
    lines = result.stdout.splitlines()
    assert len(lines) == TEXT_COUNT and len(set(lines)) == TEXT_COUNT - 1  # a line per hit; two captions share captions.jsonl
    assert all(os.path.isabs(line) for line in lines)

    result = cli("query", "2:beach", "+", corpus / "a.jpg", "-", "people", "--index", idx)
    assert "score" in result.stdout and "a.jpg" not in result.stdout  # table; query image left out

    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert (info["images"], info["texts"], info["dim"]) == (IMAGE_COUNT, TEXT_COUNT, 32)
    assert info["roots"] == [str(corpus)] and info["model"]["pretrained"] == str(tiny_model.checkpoint)
    assert "items" in cli("info", "--index", idx).stdout


def test_index_summary_after_changes_and_env_index(tmp_path, tiny_model, corpus, cli, monkeypatch):
    monkeypatch.setenv("MMSEARCH_INDEX", str(tmp_path / "envidx"))
    cli("index", corpus, *tiny_model.args, "-q")
    os.rename(corpus / "a.jpg", corpus / "moved.jpg")
    (corpus / "notes" / "beach.md").unlink()
    result = cli("index", "-q")  # no path: refresh the known roots
    assert "0 added, 0 updated, 1 reused, 2 removed, 0 skipped" in result.stdout
    assert (tmp_path / "envidx" / "manifest.json").is_file()


def test_model_mismatch_cli(tmp_path, tiny_model, other_tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    result = cli("index", corpus, "-i", idx, *other_tiny_model.args, "-q", ok=False)
    assert result.exit_code == 1
    assert "error:" in result.stderr and "--reembed" in result.stderr and "Traceback" not in result.stderr
    result = cli("index", corpus, "-i", idx, *other_tiny_model.args, "-q", "--reembed")
    assert f"{IMAGE_COUNT + TEXT_COUNT} re-embedded, 0 added" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["query", "cat", "--type", "audio"], "unknown type"),
        (["query", "./missing.jpg"], "image not found"),
        (["query", "+"], "operator"),
        (["query", "-", "cat"], "positive weight"),
    ],
)
def test_bad_query_input(tmp_path, tiny_model, corpus, cli, args, message):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    result = cli(*args, "-i", idx, ok=False)
    assert result.exit_code != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_index_and_not_an_index(tmp_path, cli):
    result = cli("query", "cat", "-i", tmp_path / "nope", ok=False)
    assert result.exit_code == 1 and "index not found" in result.stderr
    (tmp_path / "folder").mkdir()
    result = cli("info", "-i", tmp_path / "folder", ok=False)
    assert result.exit_code == 1 and "not an mmsearch index" in result.stderr


def test_default_model_without_network_explains_local_weights(tmp_path, cli, corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    monkeypatch.delenv("MMSEARCH_MODEL", raising=False)
    result = cli("index", corpus, "-i", tmp_path / "idx", "-q", ok=False)
    assert result.exit_code == 1
    message = result.stderr
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message and "--pretrained" in message
    assert "Traceback" not in message and len(message.strip().splitlines()) == 1
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_unknown_model_name_suggests(tmp_path, cli, corpus):
    result = cli("index", corpus, "-i", tmp_path / "idx", "--model", "ViT-B-3", ok=False)
    assert result.exit_code == 1 and "unknown open_clip model" in result.stderr and "ViT-B-32" in result.stderr


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).with_name("mmsearch")
    assert script.is_file(), "pyproject.toml must install the mmsearch console script"
    for command in ([str(script), "--help"], [sys.executable, "-m", "mmsearch", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "index" in result.stdout and "query" in result.stdout


# -- the query parser ----------------------------------------------------------------------------

def test_parse_weights_operators_and_detection(tmp_path):
    image = make_image(tmp_path / "dog.jpg", seed=1)
    terms = parse_query(["2:beach", "+", str(image), "-", "0.5:people"])
    assert terms == [
        QueryTerm("text", "beach", 2.0),
        QueryTerm("image", str(image), 1.0),
        QueryTerm("text", "people", -0.5),
    ]
    assert parse_query([f"beach + {image} - people"]) == [
        QueryTerm("text", "beach", 1.0), QueryTerm("image", str(image), 1.0), QueryTerm("text", "people", -1.0),
    ]
    assert parse_query(["red pasta dish"]) == [QueryTerm("text", "red pasta dish", 1.0)]
    assert parse_query(["well-known jpg"]) == [QueryTerm("text", "well-known jpg", 1.0)]
    assert parse_query([str(image)], force="text") == [QueryTerm("text", str(image), 1.0)]


@pytest.mark.parametrize(
    "tokens, force",
    [([], None), (["  "], None), (["cat", "+"], None), (["-", "cat"], None), (["cat", "+", "+", "dog"], None),
     (["not/here.png"], None), (["cat"], "image"), (["0:cat"], None)],
)
def test_parse_errors(tokens, force):
    with pytest.raises(QueryError):
        parse_query(tokens, force)
