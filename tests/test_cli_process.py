"""The command line as a person meets it in a terminal: usage errors in one line, no abort while the
text encoder loads, --version and --help, \"no results\" with its reason, -0 for xargs, file
names that cannot rewrite the terminal, and JSON that is always valid UTF-8."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import IMAGE_COUNT, README, TEXT_COUNT, make_image, one_line, run

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- no abort, no traceback on a user error --------------------------------------------------
@pytest.mark.slow
def test_user_errors_never_abort_while_the_text_encoder_loads(tmp_path, midtext_model, corpus):
    """The ONNX text encoder loads in a thread while the CLI starts; a process that exits on an
    error meanwhile was aborted by onnxruntime ("terminate called...", exit 134) in about half
    the runs. A text tower of CLIP's size makes the load take long enough to show it."""
    idx = tmp_path / "idx"
    assert run("index", corpus, "-i", idx, *midtext_model.args, "-q").returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(idx, broken)
    for name in ("mmsearch.db-wal", "mmsearch.db-shm"):
        (broken / name).unlink(missing_ok=True)
    data = bytearray((broken / "mmsearch.db").read_bytes())
    data[100:] = os.urandom(len(data) - 100)
    (broken / "mmsearch.db").write_bytes(bytes(data))
    # Many text terms keep the loading thread busy encoding them when the error ends the process.
    many = " + ".join(["cat", "dog", "a red bus", "sunset over the sea", "a bowl of soup", "two people",
                       "a bird", "a tree", "snow", "a clock", "a boat", "a chair"])
    cases = [(["query", many, "-i", broken], 1), (["query", "cat", "-i", broken], 1),
             (["query", "--type", "foo", "cat", "-i", idx], 2), (["query", "cat", "+", "./missing.jpg", "-i", idx], 2)]
    for attempt in range(5):
        for args, code in cases:
            result = run(*args)
            assert result.returncode == code, (attempt, args, result.returncode, result.stderr)
            assert one_line(result.stderr).startswith("error:")


def test_usage_errors_are_one_line(tmp_path):
    for args in (["query", "cat", "--bogus"], ["query", "-k", "zero", "cat"], ["index", "--workers", "0"]):
        result = run(*args, "-i", tmp_path / "idx")
        assert result.returncode == 2
        assert one_line(result.stderr).startswith("error:")


# -- small things -----------------------------------------------------------------------------
def test_version_help_and_random_weights_said_once(tmp_path, tiny_model, corpus, cli, caplog):
    from mmsearch import __version__

    assert cli("--version").stdout.strip() == f"mmsearch {__version__}"
    for command in ("index", "query", "check", "info", "serve", "eval", "train"):
        assert "<bool>" not in cli(command, "--help").stdout, command
    assert "processes" in re.sub(r"\s+", " ", cli("index", "--help").stdout)
    idx = tmp_path / "idx"
    created = cli("index", corpus, "-i", idx, "--model", tiny_model.config, "--pretrained", "none", "-q")
    assert "random weights" in created.stderr
    caplog.clear()
    queried = cli("query", corpus / "a.jpg", "-i", idx)
    assert "random weights" not in queried.stderr
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


# -- "no results" says why --------------------------------------------------------------------
def test_no_results_says_why(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    result = cli("query", "cat", "-i", idx, "--min-score", "0.999", "--type", "image")
    assert re.search(r"no results: the best match scores -?0\.\d{4}, below the minimum score 0\.999", result.stderr)
    (tmp_path / "elsewhere").mkdir()
    result = cli("query", "cat", "-i", idx, "--under", tmp_path / "elsewhere")
    assert "no results: no indexed items under" in result.stderr and "elsewhere" in result.stderr
    doc = json.loads(cli("query", "cat", "-i", idx, "--under", tmp_path / "elsewhere", "--json").stdout)
    assert doc["hits"] == [] and doc["why_empty"].startswith("no indexed items under")


# -- -0 for xargs -0 ------------------------------------------------------------------------
def test_print0_gives_exact_names_and_the_readme_pipes_with_it(tmp_path, tiny_model, cli):
    root = tmp_path / "lib"
    make_image(root / "with space.jpg", seed=1)
    make_image(Path(os.fsdecode(bytes(root) + b"/caf\xe9.jpg")), seed=2)
    idx = tmp_path / "idx"
    cli("index", root, "-i", idx, *tiny_model.args, "-q")
    out = cli("query", "x", "-i", idx, "-0").stdout_bytes
    assert sorted(out.split(b"\0")[:-1]) == sorted([bytes(root) + b"/with space.jpg", bytes(root) + b"/caf\xe9.jpg"])
    assert "--paths -0 | xargs -0" in README.read_text(encoding="utf-8")


# -- file names that are not UTF-8 -------------------------------------------------------------
def test_json_output_is_valid_utf8_and_gives_back_exact_names(tmp_path, tiny_model, cli):
    root = tmp_path / "lib"
    names = [b"caf\xe9.jpg", b"\xff\xfe-odd.png", "Zoë.jpg".encode()]
    for i, raw in enumerate(names):
        make_image(Path(os.fsdecode(bytes(root) + b"/" + raw)), seed=i)
    idx = tmp_path / "idx"
    json.loads(cli("index", root, "-i", idx, *tiny_model.args, "--json").stdout_bytes.decode("utf-8"))
    # A real process: its stdout is strict UTF-8, as jq and strict parsers read it.
    result = run("query", "a photo", "-i", idx, "--json", "-k", "10")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.decode("utf-8"))  # raises on invalid UTF-8
    found = set()
    for hit in doc["hits"]:
        exact = base64.b64decode(hit["path_bytes"]) if "path_bytes" in hit else hit["path"].encode()
        found.add(os.path.basename(exact))
        assert os.path.exists(exact)
    assert found == set(names)
    latin = next(h for h in doc["hits"] if "path_bytes" in h and h["path"].endswith("caf\\xe9.jpg"))
    assert latin["path"].isprintable()  # a readable form beside the exact bytes
    # info and the table are valid UTF-8 too
    for args in (("info", "-i", idx, "--json"), ("query", "a photo", "-i", idx)):
        cli(*args).stdout_bytes.decode("utf-8")


# -- names that would rewrite the terminal ----------------------------------------------------
def test_control_characters_escaped_in_human_output(tmp_path, tiny_model, cli, monkeypatch):
    from mmsearch.cli.base import out as console

    # The table must not fold the long name (the test reads it whole): a wide console, whatever
    # width the test process was started with (pytest-xdist workers start with 80 columns).
    monkeypatch.setattr(console, "_width", 500)
    root = tmp_path / "lib"
    nasty = "evil\n\x1b[2J\x1b[31mred.jpg"
    make_image(root / nasty, seed=3)
    idx = tmp_path / "idx"
    cli("index", root, "-i", idx, *tiny_model.args, "-q")
    for args in (["--paths"], []):
        out = cli("query", "x", "-i", idx, *args).stdout_bytes
        assert b"\x1b" not in out and b"evil\\n\\x1b[2J\\x1b[31mred.jpg" in out
    exact = cli("query", "x", "-i", idx, "-0").stdout_bytes
    assert exact == os.fsencode(str(root / nasty)) + b"\0"
    doc = json.loads(cli("query", "x", "-i", idx, "--json").stdout)
    assert doc["hits"][0]["path"] == str(root / nasty)
    (root / nasty).unlink()
    skipped = cli("check", "-i", idx, ok=False)
    assert "\x1b" not in skipped.stderr + skipped.stdout


def test_info_shows_what_built_the_vectors_and_what_a_run_would_use_now(tmp_path, tiny_model, corpus):
    """An index built with MMSEARCH_IMAGE_ENCODER=onnx said 'indexing onnx-int8' when `info` ran
    without the variable: the environment's choice, not what built the vectors (issue 30 item 18)."""
    from conftest import ENV

    idx = tmp_path / "idx"
    built = run("index", corpus, "-i", idx, *tiny_model.args, "-q", env=dict(ENV, MMSEARCH_IMAGE_ENCODER="onnx"))
    assert built.returncode == 0, built.stderr
    now = dict(ENV, MMSEARCH_IMAGE_ENCODER="torch")
    info = json.loads(run("info", "-i", idx, "--json", env=now).stdout)
    assert info["encoded_with"] == {"images": ["onnx"], "texts": ["onnx"]}
    assert info["encoders"]["image"]["indexing"] == "torch"  # what a run would use now
    table = run("info", "-i", idx, env=now).stdout.decode()
    assert re.search(r"vectors by[\s│]+images onnx; texts onnx", table), table
    assert re.search(r"encoders now[\s│]+text onnx; images: indexing torch", table), table
    again = run("index", "-i", idx, "-q", env=now)  # nothing new: nothing encoded, nothing recorded
    assert again.returncode == 0
    make_image(corpus / "new.png", seed=77)
    assert run("index", "-i", idx, "-q", env=now).returncode == 0
    assert json.loads(run("info", "-i", idx, "--json").stdout)["encoded_with"]["images"] == ["onnx", "torch"]
