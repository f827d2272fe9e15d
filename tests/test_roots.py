"""Indexed folders: the options each one remembers, the one rule for symlinks (--follow-links),
and --under naming a folder as the user sees it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT, make_image
from mmsearch import Engine

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- a bare `mmsearch index` keeps each root's options ----------------------------------------
def test_bare_index_run_keeps_exclude_and_hidden(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    first = json.loads(cli("index", corpus, "-i", idx, *tiny_model.args, "--exclude", "*.png", "--hidden",
                           "--json").stdout)
    assert first["added"] == IMAGE_COUNT + TEXT_COUNT - 1 + 1  # b.png out, .hidden/secret.jpg in
    again = json.loads(cli("index", "-i", idx, "--json").stdout)
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, first["added"])
    roots = Engine(idx).roots()
    assert roots[0].exclude == ("*.png",) and roots[0].hidden is True


# -- symlinks: --follow-links and one rule for what is inside the library --------------------
@pytest.fixture
def linked(tmp_path):
    """A root holding a symlinked folder and a symlinked file that lead outside it, and a loop."""
    outside = tmp_path / "outside"
    make_image(outside / "trip" / "far.jpg", seed=31)
    make_image(outside / "lone.png", seed=32)
    root = tmp_path / "root"
    make_image(root / "home.jpg", seed=33)
    (root / "trip").symlink_to(outside / "trip", target_is_directory=True)
    (root / "lone.png").symlink_to(outside / "lone.png")
    (outside / "trip" / "back").symlink_to(outside, target_is_directory=True)  # a loop once followed
    return root


def test_links_outside_are_skipped_by_default_and_named(tmp_path, tiny_model, linked, cli):
    idx = tmp_path / "idx"
    result = cli("index", linked, "-i", idx, *tiny_model.args, "--json")
    report = json.loads(result.stdout)
    assert report["added"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped_files"]}
    assert "--follow-links" in reasons["trip"] and "--follow-links" in reasons["lone.png"]
    with Engine(idx) as engine:  # nothing from outside is returned, so nothing outside is served
        assert [Path(h.path).name for h in engine.search("x", k=10)] == ["home.jpg"]


def test_follow_links_indexes_them_remembers_and_names_loops(tmp_path, tiny_model, linked, cli):
    from mmsearch.library import inside_library

    idx = tmp_path / "idx"
    report = json.loads(cli("index", linked, "-i", idx, *tiny_model.args, "--follow-links", "--json").stdout)
    assert report["added"] == 3
    loops = [s for s in report["skipped_files"] if "loop" in s["reason"]]
    assert loops and loops[0]["path"].endswith("back")
    again = json.loads(cli("index", "-i", idx, "--json").stdout)  # remembered
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 3)
    with Engine(idx) as engine:
        roots = engine.roots()
        assert roots[0].follow_links
        hits = engine.search("x", k=10)
        assert {Path(h.path).name for h in hits} == {"home.jpg", "far.jpg", "lone.png"}
        # what a search returns is inside the library, so the server may serve it
        assert all(inside_library(h.path, roots) for h in hits)
    assert inside_library(str(tmp_path / "outside" / "secret.txt"), roots) is None


# -- odd filter values --------------------------------------------------------------------------
def test_nan_min_score_and_under_through_symlinks(tmp_path, tiny_model, corpus, cli):
    for value in ("nan", "inf", "-inf"):
        result = cli("query", "cat", "-i", tmp_path / "idx", "--min-score", value, ok=False)
        assert result.exit_code == 2 and "finite" in result.stderr
    real = tmp_path / "real"
    shutil.move(str(corpus), real)
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    idx = tmp_path / "idx"
    cli("index", link, "-i", idx, *tiny_model.args, "-q")  # indexed through a symlink
    with Engine(idx) as engine:
        for under in (link / "sub", real / "sub"):  # the folder as linked, and its real path
            hits = engine.search("x", k=20, under=under)
            assert {Path(h.path).name for h in hits} == {"d.bmp", "e.gif", "f.tiff"}, under
        alias = tmp_path / "alias"
        alias.symlink_to(real / "sub", target_is_directory=True)  # a symlink to a folder inside it
        assert len(engine.search("x", k=20, under=alias)) == 3
        with pytest.raises(Exception, match="finite"):
            engine.search("x", min_score=float("nan"))
