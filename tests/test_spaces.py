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
            # Ids are the index's own whenever its space holds the part: get() shows that part.
            if key in own:
                assert hit.id == own[key].id and hit.space == names[0]
                assert engine.get(hit.id).path == hit.path
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
