"""Files that go bad after indexing, derived files swapped or damaged, damaged manifests: one policy
for index and check, never a silently wrong answer, every state in one line, repaired from the
database where it can be."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ENV, IMAGE_COUNT, TEXT_COUNT, encoder_of, make_image
from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.storage.vectors import saved_generations

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- a file corrupted after it was indexed ----------------------------------------------------
def test_corrupted_file_one_policy_for_index_and_check(built, cli, tiny_model):
    idx, corpus = built
    victim = corpus / "a.jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: no longer decodable
    report = json.loads(cli("index", "-i", idx, "--json").stdout)
    assert report["removed"] == 1 and any(s["path"] == str(victim) for s in report["skipped_files"])
    assert check_folder(idx).ok  # no stale item left for check to complain about forever
    # check --repair on the same situation says what it removed, and why
    make_image(victim, seed=0)
    cli("index", "-i", idx, "-q")
    victim.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    repaired = check_folder(idx, repair=True, encoder_factory=encoder_of)
    removed = [p for p in repaired.problems if p.kind == "unusable_file"]
    assert removed and removed[0].repaired and "a.jpg" in removed[0].examples[0]
    assert check_folder(idx).ok and check_folder(idx).items == ITEMS - 1


def test_unreadable_now_keeps_items(built):
    """A changed file that cannot be read now (permissions) keeps its item: no evidence it is bad.
    Root reads everything, so as root the run drops the capabilities that let it."""
    idx, corpus = built
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"]
    victim = corpus / "b.png"
    os.utime(victim, ns=(1, 1))  # changed, so it is read again
    victim.chmod(0)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "mmsearch", "index", "-i", str(idx), "--json"],
                              capture_output=True, env=ENV, timeout=180)
    finally:
        victim.chmod(0o644)
    report = json.loads(proc.stdout)
    assert report["removed"] == 0 and any("permission denied" in s["reason"] for s in report["skipped_files"])
    assert check_folder(idx).items == ITEMS


# -- derived files swapped or damaged -------------------------------------------------------
def test_vectors_file_swapped_or_flipped_is_never_used(tmp_path, tiny_model, corpus, cli):
    idx, other = tmp_path / "idx", tmp_path / "other"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    make_image(tmp_path / "o" / "x.jpg", seed=90)
    cli("index", tmp_path / "o", "-i", other, *tiny_model.args, "-q")
    (gen, mine), = saved_generations(idx)
    (_, theirs), = saved_generations(other)
    expected = [(h.id, round(h.score, 5)) for h in Engine(idx).search("a dog", k=ITEMS)]
    for damage in ("swap", "flip"):
        if damage == "swap":
            shutil.copy(theirs, mine)  # another index's file under this index's name
        else:
            data = bytearray(mine.read_bytes())
            data[len(data) // 2] ^= 0x40
            mine.write_bytes(bytes(data))
        with Engine(idx) as engine:  # right answers: the file is passed over, vectors rebuilt from the database
            assert [(h.id, round(h.score, 5)) for h in engine.search("a dog", k=ITEMS)] == expected
        report = check_folder(idx)
        assert [p.kind for p in report.problems] == ["vectors_file"], report.as_dict()
        assert check_folder(idx, repair=True).ok and check_folder(idx).problems == []


def test_onnx_encoder_swapped_for_another_models_is_refused(tmp_path, tiny_model, other_tiny_model, corpus, cli):
    idx, other = tmp_path / "idx", tmp_path / "other"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    cli("index", corpus, "-i", other, *other_tiny_model.args, "-q")
    mine = json.loads((idx / "manifest.json").read_text())["text_onnx"]
    theirs = json.loads((other / "manifest.json").read_text())["text_onnx"]
    for key in ("file", "data"):  # same architecture: same sizes, other weights
        assert (idx / mine[key]).stat().st_size == (other / theirs[key]).stat().st_size
        (idx / mine[key]).unlink()
        shutil.copy(other / theirs[key], idx / mine[key])
    with Engine(idx) as engine:  # queries use the torch model instead: the right answer
        hit = engine.search("a black cat sleeping on a sofa", k=1)[0]
        assert hit.text == "a black cat sleeping on a sofa" and hit.score == pytest.approx(1.0, abs=1e-4)
    report = check_folder(idx)
    assert [p.kind for p in report.problems] == ["onnx_text"]
    assert check_folder(idx, repair=True, encoder_factory=encoder_of).ok
    assert check_folder(idx).problems == []
    with Engine(idx) as engine:
        assert engine.encoders.onnx_text() is not None  # re-exported and used again


# -- damaged manifests: one line each, repaired from the database -----------------------------
@pytest.mark.parametrize("damage", ["dim", "no-model", "not-json", "gone"])
def test_damaged_manifest_one_line_and_repaired(built, cli, damage):
    idx, corpus = built
    manifest = idx / "manifest.json"
    data = json.loads(manifest.read_text())
    if damage == "dim":
        manifest.write_text(json.dumps(dict(data, dim=data["dim"] * 2)))
    elif damage == "no-model":
        del data["model"]
        manifest.write_text(json.dumps(data))
    elif damage == "not-json":
        manifest.write_text("{ not json")
    else:
        manifest.unlink()
    for args in (["query", "cat"], ["index", corpus], ["check"], ["info"]):
        result = cli(*args, "-i", idx, ok=False)
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) >= 1
        assert "check --repair" in result.stderr + result.stdout, (args, result.stderr)
    doc = json.loads(cli("check", "-i", idx, "--repair", "--json").stdout)
    assert doc["ok"] and doc["problems"][0]["kind"] == "manifest"
    assert cli("check", "-i", idx).exit_code == 0
    assert len(Engine(idx).search("a dog", k=100)) == ITEMS


def test_vectors_path_that_is_a_folder(built, cli):
    idx, _ = built
    (gen, path), = saved_generations(idx)
    path.unlink()
    path.mkdir()
    (path / "junk").write_text("x")
    result = cli("check", "-i", idx, "--repair", "--json")
    assert json.loads(result.stdout)["ok"]
    assert cli("check", "-i", idx).exit_code == 0
    assert len(Engine(idx).search("a dog", k=100)) == ITEMS


# -- info after repair, updated time ----------------------------------------------------------
def test_info_after_repair_and_updated_time(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    first = json.loads(cli("info", "-i", idx, "--json").stdout)
    (corpus / "a.jpg").unlink()
    cli("check", "-i", idx, "--repair", "--json")
    info = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert info["items"] == IMAGE_COUNT + TEXT_COUNT - 1 == info["vector_index"]["items"]
    time.sleep(1.1)  # the manifest's times have a resolution of one second
    make_image(corpus / "new.png", seed=77)
    cli("index", "-i", idx, "-q")
    later = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert later["updated_at"] > first["updated_at"]
    assert later["items"] == later["vector_index"]["items"] == IMAGE_COUNT + TEXT_COUNT


def test_check_repair_prints_every_line_in_the_cli_style(tmp_path, tiny_model, corpus, cli):
    """`check --repair` on a damaged vectors file: the library's warning about it comes as the
    CLI's own `warning: ...` line, never logging's raw `WARNING:mmsearch.storage.vectors:...`
    (issue 30 item 16)."""
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, "--model", tiny_model.config, "--pretrained", "none", "-q")
    (_, mine), = saved_generations(idx)
    data = bytearray(mine.read_bytes())
    data[len(data) // 2] ^= 0x40
    mine.write_bytes(bytes(data))
    (corpus / "a.jpg").write_bytes(b"not an image any more")  # a file gone bad: re-read, removed
    make_image(corpus / "b.png", seed=50)  # a changed file: re-embedded (the vectors are loaded then)
    done = subprocess.run([sys.executable, "-m", "mmsearch", "check", "--repair", "-i", str(idx)],
                          capture_output=True, text=True, env=ENV, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert not [line for line in lines if line.startswith(("WARNING:", "INFO:", "ERROR:"))], done.stderr
    assert all(re.match(r"([a-z_]+: |    )", line) for line in lines), done.stderr
    assert any(line.startswith("warning: vectors file passed over: ") for line in lines), done.stderr
