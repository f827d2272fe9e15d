"""Changing an index's model: a running engine follows it and never answers with the old model;
re-embedding keeps every item, those under an unavailable folder too."""

from __future__ import annotations

import json

import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT, make_image, run
from mmsearch import Engine
from mmsearch.check import check_folder

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- a long-lived engine after --reembed with another model ---------------------------------
def test_running_engine_follows_a_model_switch(built, other_tiny_model):
    idx, corpus = built
    with Engine(idx) as server_engine:  # what `mmsearch serve` holds
        before = server_engine.search("a dog running on green grass", k=1)[0]
        assert before.score == pytest.approx(1.0, abs=1e-4)
        result = run("index", corpus, "-i", idx, *other_tiny_model.args, "--reembed", "-q")
        assert result.returncode == 0, result.stderr
        after = server_engine.search("a dog running on green grass", k=1)[0]
        # the same item found with the new model's vectors, exactly as a fresh process finds it
        assert after.id == before.id and after.score == pytest.approx(1.0, abs=1e-4)
        assert server_engine.info()["model"]["pretrained"] == str(other_tiny_model.checkpoint)
        with Engine(idx) as fresh:
            assert fresh.search("sunset over a quiet sandy beach", k=3)[0].score == pytest.approx(
                server_engine.search("sunset over a quiet sandy beach", k=3)[0].score, abs=1e-5)


# -- --reembed while one root is unavailable ------------------------------------------------
def test_reembed_keeps_items_of_an_unavailable_folder(tmp_path, tiny_model, other_tiny_model, cli):
    disk, home = tmp_path / "disk", tmp_path / "home"
    for i in range(3):
        make_image(disk / f"d{i}.jpg", seed=40 + i)
        make_image(home / f"h{i}.png", seed=50 + i)
    idx = tmp_path / "idx"
    cli("index", disk, home, "-i", idx, *tiny_model.args, "-q")
    ids_before = {h.path: h.id for h in Engine(idx).search("x", k=10)}
    disk.rename(tmp_path / "unmounted")  # the disk is not mounted now
    report = json.loads(cli("index", "-i", idx, *other_tiny_model.args, "--reembed", "--json").stdout)
    assert (report["reembedded"], report["removed"]) == (3, 0)
    with Engine(idx) as engine:
        assert engine.info()["items"] == 6  # nothing under the unmounted disk was deleted
        assert {h.path for h in engine.search("x", k=10)} == {str(home / f"h{i}.png") for i in range(3)}
    notes = check_folder(idx).notes
    assert check_folder(idx).ok and any("wait for their vectors" in n for n in notes)
    (tmp_path / "unmounted").rename(disk)  # mounted again
    report = json.loads(cli("index", "-i", idx, "--json").stdout)
    assert (report["reembedded"], report["added"], report["removed"]) == (3, 0, 0)
    with Engine(idx) as engine:
        hits = engine.search("x", k=10)
        assert {h.path: h.id for h in hits} == ids_before  # same items, same ids, all searchable
    assert check_folder(idx).problems == []
