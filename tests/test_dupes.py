"""Near-duplicates: the pair scan (exact and partitioned), groups and their keeper, `mmsearch dupes`,
and `--dedup` on queries (the Engine/Client parity of dedup is in test_api.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import one_line, run
from mmsearch import Engine, QueryError
from mmsearch.search import dupes

PHOTOS = Path(__file__).parent / "data" / "photos"
# With the tiny random-weight model every photo lies within about 0.99 of every other (random
# weights see little), while re-encoded, resized and 3%-cropped copies stay above 0.999 of their
# original: the test threshold separates them on this model. The default (0.97) is for real weights.
COPIES = 0.998


def planted(n: int, dim: int, groups: int, seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """Clustered unit vectors with ``groups`` planted groups of 2-4 near-copies (cosine > 0.99)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    x = centres[rng.integers(0, 64, n)] * 0.3 + rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = []
    for g, start in enumerate(rng.choice(n // 4, groups, replace=False) * 4):
        size = 2 + g % 3
        for j in range(1, size):
            v = x[start] + rng.standard_normal(dim) * 0.05 / np.sqrt(dim) * 2
            x[start + j] = v / np.linalg.norm(v)
        truth.append(set(range(start, start + size)))
    return x.astype(np.float32), truth


def test_partitioned_scan_finds_the_groups_the_exact_scan_finds():
    x, truth = planted(12_000, 64, 150)
    exact = dupes.similar_pairs(x, 0.97, exact_max=len(x))
    partitioned = dupes.similar_pairs(x, 0.97)  # 12k > EXACT_MAX: the k-means partition
    assert len(x) > dupes.EXACT_MAX
    assert {frozenset(g) for g in dupes.groups_of(len(x), exact)} == {frozenset(g) for g in truth}
    assert {frozenset(g) for g in dupes.groups_of(len(x), partitioned)} == {frozenset(g) for g in truth}
    # A pair the partition compares from one side only (a query of a higher row against a
    # member of a lower one) is still reported, lowest row first.
    one_side = dupes._block_pairs(x[[6]], np.array([6]), x[[5, 6]], np.array([5, 6]), -1.0)
    assert [a.tolist() for a in one_side[:2]] == [[5], [6]]
    sims = np.einsum("ij,ij->i", x[partitioned[:, 0]], x[partitioned[:, 1]])
    assert (sims >= 0.97).all() and (partitioned[:, 0] < partitioned[:, 1]).all()


def test_chains_join_and_the_keeper_is_largest_then_oldest_then_lowest_id():
    assert dupes.groups_of(5, np.array([[0, 1], [1, 3]])) == [[0, 1, 3]]
    row = lambda i, w, h, t: SimpleNamespace(id=i, width=w, height=h, mtime_ns=t)  # noqa: E731
    members = [row(1, 100, 100, 5), row(2, 200, 100, 9), row(3, 200, 100, 7), row(4, 100, 200, 7), row(5, None, None, 1)]
    assert [m.id for m in sorted(members, key=dupes.keeper_key)] == [3, 4, 2, 1, 5]
    groups = dupes.make_groups([members[:2]], lambda i: np.eye(8, dtype=np.float32)[0])
    assert groups[0].keeper.id == 2 and [o.id for o in groups[0].others] == [1] and groups[0].similarity == [1.0]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), float("inf"), True, "0.9"])
def test_thresholds_outside_0_1_are_refused(bad):
    with pytest.raises(QueryError, match="threshold"):
        dupes.check_threshold(bad)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_model):
    """The sample photos plus a re-encoded, a half-size and a slightly cropped copy of one of
    them; the re-encoded copy has the original's size and an older file time."""
    root = tmp_path_factory.mktemp("dupes") / "photos"
    shutil.copytree(PHOTOS, root, ignore=shutil.ignore_patterns("*.md"))
    original = Image.open(root / "chelsea.jpg")
    original.save(root / "chelsea-q60.jpg", quality=60)
    os.utime(root / "chelsea-q60.jpg", ns=(1_000_000_000, 1_000_000_000))
    original.resize((original.width // 2, original.height // 2)).save(root / "chelsea-half.png")
    w, h = original.size
    original.crop((w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100)).save(root / "chelsea-crop.webp")
    index = root.parent / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


def test_engine_groups_copies_and_keeps_the_oldest_of_the_largest(photos):
    index, root = photos
    with Engine(index) as engine:
        groups = engine.duplicates(threshold=COPIES)
        assert len(groups) == 1
        group = groups[0]
        assert Path(group.keeper.path).name == "chelsea-q60.jpg"  # 451x300 like chelsea.jpg, and older
        assert [Path(o.path).name for o in group.others][0] == "chelsea.jpg"
        assert {Path(o.path).name for o in group.others} == {"chelsea.jpg", "chelsea-half.png", "chelsea-crop.webp"}
        assert all(COPIES <= s <= 1.0001 for s in group.similarity)
        assert engine.duplicates(threshold=COPIES, type="text") == []


def test_http_api_and_client_list_the_same_groups_as_the_engine(photos):
    from mmsearch.client import Client
    from mmsearch.errors import ServerError
    from mmsearch.server import ServerThread, create_app

    index, _ = photos
    with Engine(index) as engine:
        expected = engine.duplicates(threshold=COPIES)
        server = ServerThread(create_app(engine)).start()
        try:
            with Client(server.url) as client:
                groups = client.duplicates(threshold=COPIES)
                assert [(g.keeper.id, [o.id for o in g.others]) for g in groups] == \
                       [(g.keeper.id, [o.id for o in g.others]) for g in expected]
                assert groups[0].similarity == pytest.approx(expected[0].similarity, abs=1e-5)
                assert groups[0].keeper.path == expected[0].keeper.path
                assert client.duplicates(threshold=COPIES, type="text") == []
                raw = client._request("GET", "/api/duplicates", params={"threshold": COPIES, "limit": 1}).json()
                assert raw["groups_total"] == 1 and raw["duplicates_total"] == 3
                assert raw["groups"][0]["keeper"]["thumbnail_url"].endswith("/thumbnail")
                # Checked on this side first, with Engine's error; the server refuses it too.
                for searcher in (client, engine):
                    with pytest.raises(QueryError, match="threshold must be from 0.5 to 1"):
                        searcher.duplicates(threshold=1.5)
                with pytest.raises(ServerError) as bad:
                    client._request("GET", "/api/duplicates", params={"threshold": 1.5})
                assert bad.value.status == 422 and "threshold" in str(bad.value)
        finally:
            server.stop()


def test_dupes_command_json_and_table(photos, cli):
    index, root = photos
    doc = json.loads(cli("dupes", "-i", index, "--threshold", COPIES, "--json").stdout)
    assert doc["threshold"] == COPIES and doc["duplicates"] == 3 and len(doc["groups"]) == 1
    keeper, others = doc["groups"][0]["keeper"], doc["groups"][0]["others"]
    assert keeper["path"] == str(root / "chelsea-q60.jpg") and (keeper["width"], keeper["height"]) == (451, 300)
    assert all(o["similarity"] >= COPIES for o in others)
    table = cli("dupes", "-i", index, "--threshold", COPIES, "-q").stdout
    assert "keep" in table and "chelsea-half.png" in table and "1 group(s), 3 near-duplicate(s)" in table
    assert "no near-duplicates found" in cli("dupes", "-i", index, "--threshold", 1.0, "-q").stderr


def test_dupes_command_refuses_bad_input_in_one_line(photos):
    index, _ = photos
    for value in ("1.5", "0", "nan"):
        done = run("dupes", "-i", index, "--threshold", value)
        assert done.returncode == 2 and "--threshold must be" in one_line(done.stderr), done.stderr
    done = run("dupes", "-i", index, "--type", "audio")
    assert done.returncode == 2 and "unknown type 'audio'" in one_line(done.stderr)


def test_videos_group_as_whole_files_and_a_returning_scene_is_not_a_duplicate(tmp_path, tiny_model):
    """Frames are the vectors of a video, but the duplicates are videos: a re-encoded, smaller copy
    joins its original (shown by the best-matching moment, the larger one kept); a scene that
    returns within one video, and another video, do not make groups."""
    from support.videogen import COLOURS, make_video

    root = tmp_path / "videos"
    root.mkdir()
    a, b, other = COLOURS[0], COLOURS[1], COLOURS[3]
    make_video(root / "trip.mp4", [2.0, 2.0, 2.0], colours=[a, b, a], gop=5)
    make_video(root / "trip-copy.webm", [2.0, 2.0, 2.0], colours=[a, b, a], codec="libvpx-vp9", width=128, height=80)
    make_video(root / "other.mp4", [3.0], colours=[other], gop=5)
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        groups = engine.duplicates(threshold=COPIES, type="video")
        assert len(groups) == 1
        group = groups[0]
        assert Path(group.keeper.path).name == "trip.mp4"  # 160x96 beats the 128x80 copy
        assert [Path(o.path).name for o in group.others] == ["trip-copy.webm"]
        assert group.similarity[0] >= COPIES
        assert engine.duplicates(threshold=COPIES) == groups  # 'all' includes videos, the same way


def test_query_dedup_collapses_copies_and_still_returns_k_hits(photos, cli):
    index, root = photos
    query = str(root / "chelsea.jpg")
    with Engine(index) as engine:
        plain = engine.search(query, k=4, type="image", include_query=True)
        assert {Path(h.path).name for h in plain} == {"chelsea.jpg", "chelsea-q60.jpg", "chelsea-half.png",
                                                      "chelsea-crop.webp"}
        collapsed = engine.search(query, k=4, type="image", include_query=True, dedup=COPIES)
        assert [h.rank for h in collapsed] == [1, 2, 3, 4] and collapsed[0].id == plain[0].id
        assert sorted(collapsed[0].duplicates) == sorted(h.id for h in plain[1:])
        assert all(h.duplicates == [] for h in collapsed[1:])
        assert not {h.id for h in plain[1:]} & {h.id for h in collapsed}
        assert all(h.duplicates is None for h in plain)
        with pytest.raises(QueryError, match="dedup"):
            engine.search(query, dedup=2.0)
    doc = json.loads(cli("query", query, "-i", index, "-k", 2, "--type", "image", "--include-self", "--dedup",
                         "--json").stdout)
    assert 1 <= len(doc["hits"]) <= 2 and "duplicates" in doc["hits"][0]


def test_dupes_json_is_utf8_with_exact_names_for_odd_bytes(tmp_path, tiny_model):
    """A file name that is not UTF-8 comes out readable in `path` and exact in `path_bytes`."""
    import base64

    from conftest import make_image

    root = tmp_path / "odd"
    make_image(root / "plain.png", seed=3)
    odd = os.fsencode(str(root)) + b"/caf\xe9.png"
    shutil.copyfile(root / "plain.png", os.fsdecode(odd))
    index = tmp_path / "idx"
    assert run("index", root, "-i", index, *tiny_model.args, "-q").returncode == 0
    done = run("dupes", "-i", index, "--threshold", 0.999, "--json")
    assert done.returncode == 0, done.stderr
    group = json.loads(done.stdout.decode("utf-8"))["groups"][0]
    names = {base64.b64decode(m["path_bytes"]) if "path_bytes" in m else os.fsencode(m["path"])
             for m in [group["keeper"], *group["others"]]}
    assert names == {odd, os.fsencode(str(root / "plain.png"))}
