"""Two embedding spaces over one library: a query is encoded into each space that takes it and
their hits merge by calibrated score (two real tiny models, random weights, real indexes)."""

from __future__ import annotations

import pytest

from mmsearch import Engine, QueryError, QueryTerm
from mmsearch.search.request import SearchRequest


@pytest.fixture
def two_spaces(tmp_path, tiny_model, other_tiny_model, corpus):
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([corpus])
    second = index / "spaces" / "second"
    with Engine(second, model=str(other_tiny_model.config), pretrained=str(other_tiny_model.checkpoint)) as other:
        other.add([corpus / "sub"])  # another order than the index's: its ids are not the index's
        other.add([corpus])
    return index, second, corpus


def test_a_text_query_is_searched_in_every_space_and_merged_by_calibrated_score(two_spaces):
    index, second, corpus = two_spaces
    with Engine(index) as engine, Engine(second) as other:
        names = [space.name for space in engine.spaces]
        assert len(names) == 2 and names[1] == "second" and engine.spaces[0].primary
        request = SearchRequest.build("a red square", k=6)
        merged = engine.search(request)
        calibrated = request.but(ranking=request.ranking.__class__(calibrated=True))
        own = {(h.file, h.locator): h for h in engine.spaces[0].searcher.search(calibrated)}
        theirs = {(h.file, h.locator): h for h in other.search(calibrated)}

        assert [h.rank for h in merged] == list(range(1, 7))
        assert [h.score for h in merged] == sorted((h.score for h in merged), reverse=True)
        for hit in merged:
            key = (hit.file, hit.locator)
            found = hit.matched["spaces"]
            # Each space's own calibrated score is named; the hit scores the best of them.
            assert set(found) <= {names[0], "second"} and found
            scores = [own[key].calibrated if name == names[0] else theirs[key].calibrated for name in found]
            assert hit.score == pytest.approx(max(scores))
            for name, got in found.items():
                answer = own if name == names[0] else theirs
                assert got["calibrated"] == pytest.approx(answer[key].calibrated)
            # The hit names the space whose score it shows; its id is the index's own, also for
            # a part only the other space ranked high: get() shows that very part (the other
            # store numbers it differently).
            assert found[hit.space]["calibrated"] == pytest.approx(hit.score)
            assert engine.get(hit.id).path == hit.path
            assert engine.get(hit.id).locator == hit.locator
            if key in own:
                assert hit.id == own[key].id
        # The merge is no single space's ranking: the best of either space leads.
        best = max([*own.values(), *theirs.values()], key=lambda h: h.calibrated)
        assert merged[0].score == pytest.approx(best.calibrated)


def test_a_query_only_one_space_takes_stays_in_it(two_spaces):
    index, _, corpus = two_spaces
    with Engine(index) as engine:
        item = engine.search_image(corpus / "b.png", k=1, include_query=True)[0]
        assert "spaces" in (item.matched or {})  # an image query: both spaces take images
        # An item id is the index's own: only its space takes it, and ranks as it always did.
        similar = engine.similar(item.id, k=4)
        alone = engine.spaces[0].searcher.search(SearchRequest.build(QueryTerm("item", str(item.id)), k=4))
        assert [(h.id, h.score) for h in similar] == [(h.id, h.score) for h in alone]
        assert all(h.space is None and h.matched is None for h in similar)


def test_without_other_spaces_nothing_changes(built):
    idx, _ = built
    with Engine(idx) as engine:
        assert len(engine.spaces) == 1
        hits = engine.search("a red square", k=3)
        assert all(h.space is None and h.matched is None and h.calibrated is None for h in hits)
        assert "space" not in hits[0].as_dict()


def test_a_space_that_cannot_take_the_query_is_named(two_spaces):
    index, _, _ = two_spaces
    with Engine(index) as engine:
        only_text = [s.__class__(s.name, s.modalities, frozenset({"text"}), s.searcher, s.primary)
                     for s in engine.spaces]
        from mmsearch.search import spaces

        with pytest.raises(QueryError, match="no embedding space of this index takes image queries"):
            spaces.search(only_text, SearchRequest.build(QueryTerm("image", b"\x89PNG")))


def test_an_index_run_brings_every_space_forward_and_info_names_them(two_spaces, tiny_model):
    from conftest import make_image

    index, second, corpus = two_spaces
    make_image(corpus / "new.png", seed=42)
    with Engine(index) as engine:
        before = {space.name: space.searcher for space in engine.spaces}
        assert set(before) == {"main", "second"}
        report = engine.add([corpus])
        assert report.added == 1
        info = engine.info()
        assert info["spaces"]["second"]["items"] == engine.count()
        assert info["spaces"]["second"]["model"] != info["model"]["name"]
    with Engine(second) as other:
        assert str(corpus / "new.png") in {h.path for h in other.search("anything", k=50)}
    with Engine(index) as engine:
        found = engine.search_image(corpus / "new.png", k=1, include_query=True)[0]
        assert found.path == str(corpus / "new.png") and set(found.matched["spaces"]) == {"main", "second"}



def test_a_part_only_another_space_found_takes_the_index_own_id():
    """Unit check of the merge: the other store numbers items its own way, so a part only it
    ranked high is given the id the index holds it under, and one the index does not hold is left
    out (its id would name another item); what the index's own answer collapsed stays collapsed;
    a hit with no calibrated score ranks after those with one."""
    from mmsearch.search.query import Hit, Hits
    from mmsearch.search.spaces import Space, merge

    def hit(item_id, path, calibrated, duplicates=None, cosine=0.3):
        return Hit(id=item_id, modality="image", path=path, rank=1, cosine=cosine, calibrated=calibrated,
                   score=cosine if calibrated is None else calibrated, duplicates=duplicates)

    asked = []

    def locate(parts):
        asked.extend(parts)
        return {key: n for key, n in {("/lib/b.jpg", ""): 7, ("/lib/d.jpg", ""): 8, ("/lib/t.txt", ""): 9}.items()
                if key in parts}

    main = Space("main", ("image",), frozenset({"text"}), None, primary=True, locate=locate)
    other = Space("audio", ("image",), frozenset({"text"}), None)
    merged = merge([(main, Hits([hit(1, "/lib/a.jpg", 2.0, duplicates=[8])])),
                    (other, Hits([hit(99, "/lib/b.jpg", 3.0), hit(98, "/lib/c.jpg", 1.0), hit(97, "/lib/a.jpg", 0.5),
                                  hit(96, "/lib/d.jpg", 2.5), hit(95, "/lib/t.txt", None, cosine=0.9)]))], k=5)
    assert [(h.path, h.id, h.space, h.rank) for h in merged] == [
        ("/lib/b.jpg", 7, "audio", 1), ("/lib/a.jpg", 1, "main", 2), ("/lib/t.txt", 9, "audio", 3)]
    assert merged[1].matched["spaces"] == {"main": {"cosine": 0.3, "calibrated": 2.0},
                                           "audio": {"cosine": 0.3, "calibrated": 0.5}}
    assert sorted(asked) == [("/lib/b.jpg", ""), ("/lib/c.jpg", ""), ("/lib/d.jpg", ""), ("/lib/t.txt", "")]
